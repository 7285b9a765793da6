"""`ubp-edge prepare`: an event log of any size -> PREP_DIR, the encoded sessions `train` reads."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ubp_edge.console import bad_rows_line, err, out, require, user_errors
from ubp_edge.options import (
    DelimiterOpt,
    EventsOpt,
    FormatOpt,
    GapOpt,
    MapOpt,
    StrictOpt,
    TimeUnitOpt,
    log_inputs,
    log_source,
)

EPILOG = ("Both engines write the same sessions for the same log: compare two preparations by "
          "manifest.json's content_digest. Then: ubp-edge train --data PREP_DIR --out RUN.")


def prepare(
    data: Annotated[Path, typer.Option("--data", help="The event log (CSV, JSON lines, Parquet; gzip).")],
    out_dir: Annotated[Path, typer.Option("--out", help="PREP_DIR to create.")],
    format: FormatOpt = None, column_map: MapOpt = None, event_map: EventsOpt = None,
    time_unit: TimeUnitOpt = "auto", delimiter: DelimiterOpt = ",",
    engine: Annotated[str, typer.Option(
        help="local: out of core on this machine; spark: per-user work on a Spark cluster.")] = "local",
    spark_master: Annotated[str, typer.Option(
        help="--engine spark: the master URL (local[2], yarn, k8s://...).")] = "local[2]",
    shards: Annotated[int | None, typer.Option(
        help="Shard files to write (default: 262,144 sessions each).")] = None,
    max_len: Annotated[int, typer.Option(help="Events per session kept for training (the last ones).")] = 50,
    gap_minutes: GapOpt = 30.0,
    validation: Annotated[float, typer.Option(help="Validation share of sessions (by start time).")] = 0.15,
    test: Annotated[float, typer.Option(help="Test share of sessions (the latest).")] = 0.15,
    context: Annotated[bool, typer.Option(
        help="User-history features when the log has user ids.")] = True,
    target_stats: Annotated[bool, typer.Option(
        "--target-stats/--no-target-stats",
        help="Learn each category's (and, where the log is dense enough, item's) purchase rate "
             "and popularity on the training split, out of fold, as features shipped in the "
             "artifact (keyed hashes, no id in clear).")] = True,
    strict: StrictOpt = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing PREP_DIR.")] = False,
) -> None:
    """Validate, sessionize, label, split and encode a log into compressed shards, out of core."""
    with user_errors():
        from trainer.files import check_outputs
        from trainer.rundir import check_target

        require("ubp-edge prepare", "pyarrow", "duckdb", *(["pyspark"] if engine == "spark" else []))
        from trainer.prepare import MANIFEST, QUARANTINE, PrepareConfig
        from trainer.prepare import prepare as run_prepare

        source = log_source(data, format, column_map, event_map, time_unit, delimiter, strict, gap_minutes)
        config = PrepareConfig(source=source, out=str(out_dir), engine=engine, shards=shards,
                               gap_minutes=gap_minutes, validation=validation, test=test,
                               max_len=max_len, use_context=context, target_stats=target_stats,
                               overwrite=overwrite, spark_master=spark_master)
        check_outputs({"--data": log_inputs(source)}, replaced={"--out": out_dir})
        check_target(out_dir, overwrite, marker=MANIFEST)
        with err.status("preparing") as status:
            manifest = run_prepare(config, on_stage=lambda message: status.update(message))
        render_manifest(manifest, out_dir / QUARANTINE)
        out.print(f"prepared log {out_dir} ({manifest['engine']} engine); content digest "
                  f"{manifest['content_digest'][:16]}")


def render_manifest(manifest: dict, quarantine: Path) -> None:
    """What `prepare` prints: what was read, the split, the shards."""
    c = manifest["counts"]
    out.print(f"{c['rows_read']:,} rows, {c['events']:,} events, {c['sessions']:,} sessions "
              f"({c['sessions_with_purchase']:,} with a purchase, "
              f"{c['sessions_excluded_empty_prefix']:,} excluded: purchase first)")
    out.print(bad_rows_line(c["bad_rows"], quarantine if c["bad_rows"]["total"] else None))
    n = len(manifest["shards"])
    table = Table(title=f"{n} shard{'s' if n != 1 else ''}, "
                        f"{sum(s['bytes'] for s in manifest['shards']):,} bytes, "
                        f"{len(manifest['feature_spec']['features'])} features")
    for column in ("split", "sessions", "with purchase"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for name, part in c["split"].items():
        table.add_row(name, f"{part['sessions']:,}", f"{part['positives']:,}")
    out.print(table)
