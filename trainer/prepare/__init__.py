"""`prepare`: an event log of any size -> PREP_DIR, the encoded sessions `train` streams.

One pass does what `train` did in memory before the model: validate (bad rows counted and
quarantined), sessionize, label, user history, time split, fit the encoder's normalisation
on the training split, encode. The stages and who runs them:

1. read + validate in blocks (`blocks.LogReader`), both engines;
2. per set of whole users, the session records (`records.session_records`): the local
   engine over hash buckets on disk (`local`), the Spark engine in
   ``groupBy(...).applyInArrow`` on executors (`spark_engine`);
3. time split, target tables learned on the training split (`targets`), exact
   normalisation, encoding and shards in canonical order (`finish`), both engines, out of
   core (a range-partitioned sort in pyarrow).

PREP_DIR is built in a staging folder beside it and renamed into place when complete, so a
killed `prepare` leaves no partial PREP_DIR and is simply run again.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from edge_runtime.errors import ConfigError
from edge_runtime.features import TARGET_FEATURES, FeatureEncoder, default_features, target_field
from trainer.files import check_outputs
from trainer.logsource import EventLogSource
from trainer.prepare.blocks import DEFAULT_BLOCK_BYTES, LogReader
from trainer.prepare.finish import SplitPlan, batches, fit_normalisation, sort_records, write_sessions
from trainer.prepare.local import ReadTally, bucket_count, bucket_records, partition, shared_session_ids
from trainer.prepare.records import RecordSettings
from trainer.prepare.targets import FOLDS, learn_tables
from trainer.prepdir import FORMAT_VERSION, MANIFEST, QUARANTINE, PrepWriter, sha256_file, write_manifest
from trainer.rundir import staged_run_dir
from trainer.sessions import DEFAULT_GAP_MINUTES, share_problems

WORK = "work"  # scratch inside the stage: buckets, records, sort ranges; removed at the end


class Engine(StrEnum):
    """Where the per-user stage runs."""

    LOCAL = "local"
    SPARK = "spark"


@dataclass(frozen=True)
class PrepareConfig:
    """Everything that determines a preparation (written into the manifest's settings).

    Attributes:
        source: the log and how to read it.
        out: PREP_DIR.
        engine: local (out of core, one machine) or spark.
        shards: how many shard files (None: about SESSIONS_PER_SHARD sessions each).
        gap_minutes, validation, test, max_len, use_context: as `train`'s options.
        target_stats: learn category (and item) target tables on the training split and add
            their features (trainer.prepare.targets), where the log is dense enough.
        overwrite: replace an existing PREP_DIR.
        spark_master: the Spark master URL for ``--engine spark``.
        block_bytes: log text validated at a time.
    """

    source: EventLogSource
    out: str
    engine: Engine = Engine.LOCAL
    shards: int | None = None
    gap_minutes: float = DEFAULT_GAP_MINUTES
    validation: float = 0.15
    test: float = 0.15
    max_len: int = 50
    use_context: bool = True
    target_stats: bool = True
    overwrite: bool = False
    spark_master: str = "local[2]"
    block_bytes: int = DEFAULT_BLOCK_BYTES
    buckets: int | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        problems = []
        try:
            object.__setattr__(self, "engine", Engine(self.engine))
        except ValueError:
            problems.append(f"--engine {self.engine!r}: expected {' or '.join(e.value for e in Engine)}")
        if self.shards is not None and (isinstance(self.shards, bool) or not isinstance(self.shards, int)
                                        or self.shards < 1):
            problems.append(f"--shards must be a whole number >= 1, got {self.shards!r}")
        if not self.gap_minutes > 0:
            problems.append(f"--gap-minutes must be > 0, got {self.gap_minutes}")
        if isinstance(self.max_len, bool) or not isinstance(self.max_len, int) or self.max_len < 1:
            problems.append(f"--max-len must be a whole number >= 1, got {self.max_len!r}")
        problems += share_problems(self.validation, self.test)
        if problems:
            raise ConfigError("; ".join(problems))

    def settings(self) -> dict:
        """The manifest's ``settings``: what `train` must not contradict."""
        return {"gap_minutes": self.gap_minutes, "validation": self.validation, "test": self.test,
                "max_len": self.max_len, "use_context": self.use_context,
                "target_stats": self.target_stats}


Stage = Callable[[str], None]


def prepare(config: PrepareConfig, on_stage: Stage | None = None) -> dict:
    """Prepare a log into PREP_DIR (see the module docstring).

    Returns:
        The manifest (also written as PREP_DIR/manifest.json).

    Raises:
        DataError: the log cannot be read, has no valid row, or a bad row with ``--strict``.
        ConfigError: impossible settings, a split that would be empty, a Spark problem.
        RunDirError, OutputError: PREP_DIR exists (without ``overwrite``), is not a prepared
            log, holds the log, or cannot be written.
    """
    stage = on_stage or (lambda _msg: None)
    path = Path(config.source.path)
    check_outputs({"--data": path}, replaced={"--out": config.out})
    with staged_run_dir(Path(config.out), config.overwrite, marker=MANIFEST) as tmp:
        work = tmp / WORK
        work.mkdir()
        stage("reading and validating the log")
        if config.engine is Engine.SPARK:
            from trainer.prepare.spark_engine import check_spark_input

            check_spark_input(path)  # before a pipe is opened and its first bytes taken
        reader = LogReader(config.source)
        if config.engine is Engine.SPARK:
            from trainer.prepare.spark_engine import spark_records

            records, tally, counts = spark_records(reader, config, work, tmp / QUARANTINE, stage)
        else:
            records, tally, counts = _local_records(reader, config, work, tmp / QUARANTINE, stage)

        stage("time split and normalisation")
        ordered = work / "sorted.arrow"
        n = sort_records(records, ordered, work / "ranges")
        plan = SplitPlan.of(n, config.validation, config.test)
        features = default_features(tally.has_price, tally.has_category,
                                    config.use_context and tally.has_user_ids)
        tables, by_fold = None, None
        if config.target_stats:
            stage("target tables on the training split")
            fields = ("category", "item") if tally.has_category else ("item",)
            tables = learn_tables(batches(ordered), plan.sizes["train"], plan.sizes["validation"], fields)
            features += tuple(f for f in TARGET_FEATURES if target_field(f) in tables.fields)

        def encoder_of(chosen) -> FeatureEncoder:
            return FeatureEncoder(features, utc_offset_hours=reader.preset.utc_offset_hours,
                                  max_len=config.max_len, tables=chosen)

        encoder = encoder_of(tables.shipped if tables else ())
        if tables and tables.shipped:
            by_fold = [encoder_of(tables.by_fold[f]) for f in range(FOLDS)]
        stage("normalisation")
        plan = fit_normalisation(ordered, plan, encoder, by_fold)

        stage("encoding into shards")
        from trainer.dataset import BASELINE_FEATURES

        writer = PrepWriter(tmp, len(features), BASELINE_FEATURES, shards=config.shards,
                            total_sessions=n if config.shards else None)
        per_split = write_sessions(ordered, plan, encoder, writer, by_fold=by_fold)
        shards, content_digest = writer.close()
        shutil.rmtree(work)
        manifest = {
            "format_version": FORMAT_VERSION,
            "engine": config.engine.value,
            "input": {"path": str(path), "format": reader.preset.name, **_input_checksum(path)},
            "settings": config.settings(),
            "counts": {"rows_read": tally.rows_read, "bad_rows": tally.bad_summary(),
                       "events": counts["events"], "sessions": counts["sessions"],
                       "sessions_with_purchase": counts["sessions_with_purchase"],
                       "sessions_excluded_empty_prefix": counts["sessions_excluded_empty_prefix"],
                       "sessions_scorable": counts["sessions_scorable"], "split": per_split},
            "has_user_ids": tally.has_user_ids,
            "time_span_utc": counts["time_span_utc"],
            "split_rule": {"rule": "by session start; a session belongs to exactly one split",
                           "validation_from_ts": plan.validation_from_ts,
                           "test_from_ts": plan.test_from_ts},
            "feature_spec": encoder.spec().to_dict(),
            "target_tables": tables.summary() if tables else None,
            "baseline_features": list(BASELINE_FEATURES),
            "shards": shards,
            "content_digest": content_digest,
        }
        write_manifest(tmp, manifest)
    return manifest


def _local_records(reader: LogReader, config: PrepareConfig, work: Path, quarantine: Path,
                   stage: Stage) -> tuple[list[Path], ReadTally, dict]:
    """The local engine: hash buckets, then each bucket's session records."""
    n_buckets = config.buckets or bucket_count(Path(config.source.path))
    buckets, tally = partition(reader, work / "buckets", quarantine, n_buckets, config.block_bytes,
                               on_block=lambda rows: stage(f"reading and validating the log "
                                                           f"({rows:,} rows)"))
    tally.check(reader.path, reader.preset.name, reader.kind)
    settings = RecordSettings.for_log(tally, config.gap_minutes, config.max_len, config.use_context,
                                      reader.preset.utc_offset_hours,
                                      shared_session_ids(buckets) if tally.log_sessions else frozenset())
    out = work / "records.parquet"
    counts = bucket_records(buckets, settings, out,
                            on_bucket=lambda k, n: stage(f"sessions, labels, features (bucket {k}/{n})"))
    return [out], tally, counts


def _input_checksum(path: Path) -> dict:
    """Size and SHA-256 of the input file (None for a pipe, which cannot be read twice)."""
    if not path.is_file():
        return {"bytes": None, "sha256": None}
    size, digest = sha256_file(path)
    return {"bytes": size, "sha256": digest}
