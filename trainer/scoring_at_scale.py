"""Score every session of a log larger than memory, through the edge runtime, on one machine
or on Spark executors.

`ubp-edge score` (trainer.scoring.score_log) reads the log whole. `score_at_scale` gives the
same probabilities in bounded memory, with `prepare`'s per-user stage:

- ``local``: the log's blocks are validated and hash-partitioned by user into Arrow IPC
  buckets (`trainer.prepare.local.partition`), then each bucket, which holds all events of
  its users, becomes session records (`trainer.prepare.records.session_records`, with the
  artifact's features and gap) and is scored by one Scorer;
- ``spark``: the same validation and per-user stage in Spark
  (`trainer.prepare.spark_engine`: ``groupBy(bucket).applyInArrow``); each Python worker
  loads the artifact once (`Scorer.from_bytes`, from a broadcast of the bytes the driver
  verified), so executors need no copy of the file.

A record's raw features are what the artifact's FeatureEncoder computes on the same prefix,
and normalising them with the artifact's spec is the encoder's own arithmetic, so every
probability equals `score_log`'s. The scores of the buckets are sorted by (session start,
session key) with DuckDB, out of core, which is `score`'s order, and written as Parquet or
JSON lines (OUTPUT_SCHEMA: one row per scorable session; a session whose first event is a
purchase has nothing to score and no row).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from edge_runtime.errors import ConfigError
from edge_runtime.scorer import Scorer
from trainer.files import atomic_open, atomic_path
from trainer.logsource import EventLogSource
from trainer.prepare.blocks import DEFAULT_BLOCK_BYTES, LogReader
from trainer.prepare.local import ReadTally, bucket_count, partition, read_bucket, shared_session_ids
from trainer.prepare.records import (
    COUNT_KEYS,
    RecordSettings,
    partition_column,
    record_rows,
    session_records,
)
from trainer.scoring import model_session_gap

OUTPUT_SCHEMA = pa.schema([
    ("session", pa.string()),       # the session key, as `ubp-edge score` writes it
    ("key_digest", pa.string()),    # trainer.sessions.key_digests: matches split.json, no user id
    ("start", pa.float64()),        # Unix seconds of the session's first event
    ("prefix_len", pa.int64()),     # events before the first purchase (score's events_scored)
    ("events", pa.int64()),         # events the model read: all of the prefix (= prefix_len), as live
    ("label", pa.int8()),           # 1: the session holds a purchase
    ("probability", pa.float32()),  # the artifact's output (calibrated when it carries one)
    ("decision", pa.int8()),        # probability >= the artifact's threshold
])
# What a Spark bucket task returns: where its scores are, and its counts.
BUCKET_SUMMARY = "bucket long, path string, " + ", ".join(f"{key} long" for key in COUNT_KEYS)
SORT_BATCH_ROWS = 65_536


class Engine(StrEnum):
    LOCAL = "local"
    SPARK = "spark"


class OutputFormat(StrEnum):
    PARQUET = "parquet"
    JSONL = "jsonl"


# Output file suffix -> format, when none is given.
OUTPUT_SUFFIXES = {".parquet": OutputFormat.PARQUET, ".pq": OutputFormat.PARQUET,
                   ".jsonl": OutputFormat.JSONL, ".json": OutputFormat.JSONL,
                   ".ndjson": OutputFormat.JSONL}


def output_format(out: str | os.PathLike, given: str | None = None) -> OutputFormat:
    """The format of a scores file: ``given``, else the one its suffix names.

    Raises:
        ConfigError: an unknown format, or no format given and a suffix that names none.
    """
    if given is not None:
        try:
            return OutputFormat(given)
        except ValueError:
            raise ConfigError(f"--output-format {given!r}: expected parquet or jsonl") from None
    kind = OUTPUT_SUFFIXES.get(Path(out).suffix.lower())
    if kind is None:
        raise ConfigError(f"--out {out}: use a .parquet or .jsonl file name (or give the format)")
    return kind


@dataclass(frozen=True)
class ScoreSettings:
    """What a bucket needs to be scored (picklable: it travels to Spark executors).

    Attributes:
        records: the session settings: the artifact's features, clock and gap, whole prefixes.
        threshold: the artifact's decision threshold.
        backend: the interpreter the driver loaded the artifact with.
        source: the artifact's name, for messages.
    """

    records: RecordSettings
    threshold: float
    backend: str
    source: str


@dataclass
class ScaleResult:
    """What `score_at_scale` did.

    Attributes:
        out: the scores file.
        sessions: scorable sessions scored (rows written).
        counts: the log's counts (events, sessions, with purchase, excluded, scorable).
        tally: rows read, bad rows by reason, the log's flags.
        quarantine: the bad rows' file, or None (none, or not asked for).
        warnings: what the log lacks that the artifact expects, one sentence each.
        seconds: wall time, reading to the last row written.
        engine: local or spark.
    """

    out: Path
    sessions: int
    counts: dict
    tally: ReadTally
    quarantine: Path | None
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    engine: str = "local"


def score_at_scale(model: str | os.PathLike, source: EventLogSource, out: str | os.PathLike,
                   engine: str = "local", format: str | None = None, master: str = "local[2]",
                   quarantine: str | os.PathLike | None = None, backend: str = "auto",
                   buckets: int | None = None, block_bytes: int = DEFAULT_BLOCK_BYTES,
                   on_stage: Callable[[str], None] | None = None) -> ScaleResult:
    """Score every scorable session of a log through the edge runtime, in bounded memory.

    Args:
        model: the ``.tflite`` artifact.
        source: the log and how to read it; its gap, else the artifact's, cuts sessions.
        out: the scores file (Parquet or JSON lines), written atomically.
        engine: ``local`` (one process, hash buckets on disk) or ``spark``.
        format: ``parquet`` or ``jsonl``; None: from ``out``'s suffix.
        master: the Spark master for ``engine="spark"``.
        quarantine: where the log's bad rows go (JSON lines); None keeps only their counts.
        backend: the interpreter (as `Scorer.load`).
        buckets: how many buckets of users (None: one per 8 MB of log text, and for Spark at
            least one per core).
        block_bytes: log text validated at a time (a Spark task's range).
        on_stage: reports progress, one line per stage.

    Returns:
        ScaleResult.

    Raises:
        DataError: the log cannot be read, has no valid row, or a bad row with ``--strict``.
        ArtifactError: the artifact is missing or damaged.
        ConfigError: an unknown engine or format, no pyspark or Java for Spark.
        OutputError: ``out`` cannot be written. SparkJobError: Spark failed.

    Example:
        >>> score_at_scale("models/taobao-lstm128-float32.tflite",
        ...                EventLogSource("UserBehavior.csv", format="taobao"), "scores.parquet")
    """
    from edge_runtime.artifact import read_artifact

    started = time.perf_counter()
    stage = on_stage or (lambda _what: None)
    try:
        engine = Engine(engine)
    except ValueError:
        raise ConfigError(f"--engine {engine!r}: expected local or spark") from None
    out = Path(out)
    kind = output_format(out, format)
    model_bytes, info = read_artifact(model)
    scorer = Scorer.from_bytes(model_bytes, backend, source=str(model), info=info)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.work-", dir=out.parent))
    try:
        stage("reading and validating the log")
        reader = LogReader(source)
        bad_rows = work / "quarantine.jsonl"
        if engine is Engine.SPARK:
            parts, tally, counts = _spark_scores(reader, scorer, model_bytes, source, master, work,
                                                 bad_rows, buckets, block_bytes, stage)
        else:
            parts, tally, counts = _local_scores(reader, scorer, source, work, bad_rows, buckets,
                                                 block_bytes, stage)
        stage("sorting the scores by session start")
        n = write_sorted(parts, out, kind, work / "sort")
        kept = None
        if quarantine is not None and bad_rows.exists():
            kept = Path(quarantine)
            with atomic_path(kept) as tmp:
                shutil.copyfile(bad_rows, tmp)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return ScaleResult(out, n, counts, tally, kept, log_warnings(source, scorer, tally),
                       time.perf_counter() - started, engine.value)


def record_settings(scorer: Scorer, source: EventLogSource, tally: ReadTally,
                    shared: frozenset[str]) -> RecordSettings:
    """The artifact's session settings: its features and clock; the gap asked for, else the
    artifact's own (as `score`); every event of each prefix (no window: the spec's max_len is
    the training window, and a session's score must be its live score however long it is)."""
    spec = scorer.info.spec
    return RecordSettings(gap_minutes=source.session_gap(model_session_gap(scorer)), window=None,
                          features=tuple(spec.features), utc_offset_hours=spec.utc_offset_hours,
                          has_user_ids=tally.has_user_ids, log_sessions=tally.log_sessions,
                          shared_sessions=shared, max_dt_seconds=spec.max_dt_seconds)


def log_warnings(source: EventLogSource, scorer: Scorer, tally: ReadTally) -> list[str]:
    """What the log lacks that the artifact expects (the warnings of `score`)."""
    spec = scorer.info.spec
    warnings = []
    if spec.uses_context and not tally.has_user_ids:
        warnings.append(f"{source.path}: the model uses user-history context but this log has no "
                        f"user ids; context is zero for every session")
    if "log_price" in spec.features and not tally.has_price:
        warnings.append(f"{source.path}: the model uses prices but this log has none")
    return warnings


def score_events(events: pa.Table, settings: ScoreSettings, scorer: Scorer) -> tuple[pa.Table, dict]:
    """Every scorable session of a set of whole users, scored (OUTPUT_SCHEMA rows).

    Args:
        events: EVENT_SCHEMA rows, all events of the users (or log sessions) they hold.
        settings: the artifact's session settings and threshold.
        scorer: the loaded artifact.

    Returns:
        (the scores, unsorted; the counts of `session_records`).
    """
    import pyarrow.compute as pc

    if settings.records.has_category:
        # A log without categories has them null; "" is "no category" to the encoder, as
        # `score` treats a log without a category column.
        events = events.set_column(events.schema.get_field_index("category"), "category",
                                   pc.fill_null(events.column("category"), ""))
    records, counts = session_records(events, settings.records)
    return score_records(records, scorer, settings.threshold), counts


def score_records(records: pa.Table, scorer: Scorer, threshold: float) -> pa.Table:
    """Session records (RECORD_SCHEMA) normalised with the artifact's spec and scored."""
    n = records.num_rows
    raw, lengths = record_rows(records, scorer.encoder)
    rows = scorer.encoder.normalise(raw)
    offsets = np.r_[0, np.cumsum(lengths)]
    probability = scorer.score_encoded([rows[offsets[k]:offsets[k + 1]] for k in range(n)])
    return pa.table([
        records.column("key"), records.column("key_digest"), records.column("start"),
        records.column("prefix_len"), pa.array(lengths.astype(np.int64)),
        records.column("label"), pa.array(probability, pa.float32()),
        pa.array((probability >= threshold).astype(np.int8)),
    ], schema=OUTPUT_SCHEMA)


def _local_scores(reader: LogReader, scorer: Scorer, source: EventLogSource, work: Path, bad_rows: Path,
                  buckets: int | None, block_bytes: int,
                  stage: Callable[[str], None]) -> tuple[list[Path], ReadTally, dict]:
    """The local engine: hash buckets by user on disk, then each bucket scored in memory."""
    n_buckets = buckets or bucket_count(Path(source.path))
    files, tally = partition(reader, work / "buckets", bad_rows, n_buckets, block_bytes)
    tally.check(reader.path, reader.preset.name, reader.kind)
    shared = shared_session_ids(files) if tally.log_sessions else frozenset()
    settings = ScoreSettings(record_settings(scorer, source, tally, shared), scorer.threshold,
                             scorer.backend, scorer.source)
    totals: dict = {}
    scores = work / "scores.parquet"
    with pq.ParquetWriter(scores, OUTPUT_SCHEMA, compression="lz4") as writer:
        for k, path in enumerate(files):
            stage(f"scoring sessions (bucket {k + 1}/{len(files)})")
            table, counts = score_events(read_bucket(path), settings, scorer)
            writer.write_table(table)
            _add_counts(totals, counts)
            path.unlink()  # scored: give the disk back as we go
    return [scores], tally, totals


def _add_counts(totals: dict, counts: dict) -> None:
    for key in COUNT_KEYS:
        totals[key] = totals.get(key, 0) + int(counts.get(key, 0))


def _spark_scores(reader: LogReader, scorer: Scorer, model_bytes: bytes, source: EventLogSource, master: str,
                  work: Path, bad_rows: Path, buckets: int | None, block_bytes: int,
                  stage: Callable[[str], None]) -> tuple[list[Path], ReadTally, dict]:
    """The Spark engine: validation tasks, then ``groupBy(bucket).applyInArrow`` scoring."""
    from pyspark.sql import SparkSession

    from trainer.prepare.spark_engine import bucket_map, shared_sessions, spark_events
    from trainer.spark_session import spark_errors, spark_session

    started = SparkSession.getActiveSession() is None
    spark = spark_session(master, app="ubp-edge score")
    try:
        with spark_errors("score"):
            event_files, tally = spark_events(spark, reader, work / "events", bad_rows, block_bytes)
            events = spark.read.parquet(*[str(p) for p in event_files])
            shared = shared_sessions(events) if tally.log_sessions else frozenset()
            settings = ScoreSettings(record_settings(scorer, source, tally, shared), scorer.threshold,
                                     scorer.backend, scorer.source)
            n_buckets = buckets or max(bucket_count(Path(source.path)), spark.sparkContext.defaultParallelism)
            stage(f"scoring sessions (Spark, {n_buckets} buckets of users)")
            model = spark.sparkContext.broadcast(model_bytes)
            task = functools.partial(scores_of_bucket, settings=settings, model=model,
                                     folder=str(work / "scores"))
            summaries = bucket_map(events, partition_column(tally.has_user_ids, tally.log_sessions),
                                   n_buckets, task, BUCKET_SUMMARY)
            model.destroy()
    finally:
        if started:
            spark.stop()
    totals: dict = {}
    for row in summaries:
        _add_counts(totals, row)
    return [Path(row["path"]) for row in summaries], tally, totals


# Per Python worker: the artifact, loaded once for every bucket this worker scores.
_SCORER: list = [None, None]


def _worker_scorer(settings: ScoreSettings, model) -> Scorer:
    """The artifact in this worker, from the broadcast bytes; the driver verified them, so it
    is loaded here without a verifying child process."""
    import hashlib

    data = model.value
    digest = hashlib.sha256(data).hexdigest()
    if _SCORER[0] != digest:
        _SCORER[:] = [digest, Scorer.from_bytes(data, settings.backend, source=settings.source, verify=False)]
    return _SCORER[1]


def scores_of_bucket(bucket: int, events: pa.Table, settings: ScoreSettings, model, folder: str) -> pa.Table:
    """A Spark task: a bucket's sessions scored and written as Parquet; one summary row back."""
    table, counts = score_events(events, settings, _worker_scorer(settings, model))
    path = Path(folder) / f"scores-{bucket:05d}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="lz4")
    return pa.table({"bucket": [bucket], "path": [str(path)],
                     **{key: pa.array([int(counts.get(key, 0))], pa.int64()) for key in COUNT_KEYS}})


# DuckDB's memory for sorting the scores (flat rows, which it spills past this).
SORT_MEMORY = os.environ.get("UBP_EDGE_SORT_MEMORY", "256MB")


def write_sorted(parts: list[Path], out: Path, kind: OutputFormat, scratch: Path) -> int:
    """The scores of all parts, sorted by (start, session) with DuckDB (out of core), written
    to ``out`` atomically as Parquet or JSON lines.

    Returns:
        The number of rows written.
    """
    import duckdb

    scratch.mkdir(parents=True, exist_ok=True)
    ordered = scratch / "sorted.parquet"
    con = duckdb.connect()
    try:
        con.execute(f"SET memory_limit='{SORT_MEMORY}'")
        con.execute(f"SET temp_directory='{_sql_text(scratch)}'")
        con.execute("SET preserve_insertion_order=true")
        con.execute(f"COPY (SELECT * FROM read_parquet(?) ORDER BY start, session) TO '{_sql_text(ordered)}' "
                    f"(FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE {SORT_BATCH_ROWS})",
                    [[str(p) for p in parts]])
    finally:
        con.close()
    file = pq.ParquetFile(ordered)
    n = file.metadata.num_rows
    if kind is OutputFormat.PARQUET:
        with atomic_path(out) as tmp, pq.ParquetWriter(tmp, OUTPUT_SCHEMA, compression="zstd") as writer:
            for batch in file.iter_batches(batch_size=SORT_BATCH_ROWS):
                writer.write_table(pa.Table.from_batches([batch]).cast(OUTPUT_SCHEMA))
    else:
        with atomic_open(out, "w") as f:
            for batch in file.iter_batches(batch_size=SORT_BATCH_ROWS):
                for row in batch.to_pylist():
                    row["probability"] = round(float(row["probability"]), 6)  # as `score` writes it
                    f.write(json.dumps(row) + "\n")
    return n


def _sql_text(path: Path) -> str:
    return str(path).replace("'", "''")

