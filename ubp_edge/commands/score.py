"""`ubp-edge score` and `ubp-edge evaluate`: an artifact on a log, through the edge runtime.

Neither loads TensorFlow: the log goes through `trainer.scoring` (readers, sessionizer,
the artifact's own FeatureEncoder) and the artifact through `edge_runtime.Scorer`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ubp_edge.console import (
    METRIC_COLUMNS,
    bad_rows_line,
    err,
    metric_cells,
    out,
    print_json,
    require,
    user_errors,
    warn,
)
from ubp_edge.options import (
    BackendOpt,
    DelimiterOpt,
    EventsOpt,
    FormatOpt,
    JsonOpt,
    MapOpt,
    ModelArg,
    ModelGapOpt,
    ModelOpt,
    QuarantineOpt,
    RunDirOpt,
    SplitOpt,
    StrictOpt,
    TimeUnitOpt,
    log_inputs,
    log_source,
    split_digests,
)

# Where `score --out FILE` puts the log's bad rows: FILE + this.
QUARANTINE_SUFFIX = ".quarantine.jsonl"


def score(
    model: ModelOpt,
    data: Annotated[Path, typer.Option("--data", help="The event log to score.")],
    out_file: Annotated[Path | None, typer.Option(
        "--out", help="Scores file (.jsonl or .csv; with --engine .parquet or .jsonl); "
                      "default: stdout as JSONL.")] = None,
    format: FormatOpt = None, column_map: MapOpt = None, event_map: EventsOpt = None,
    time_unit: TimeUnitOpt = "auto", delimiter: DelimiterOpt = ",",
    gap_minutes: ModelGapOpt = None,
    backend: BackendOpt = "auto",
    strict: StrictOpt = False,
    engine: Annotated[str | None, typer.Option(
        help="Logs bigger than memory: local (out of core) or spark; default: in memory.")] = None,
    spark_master: Annotated[str, typer.Option(
        help="--engine spark: the master URL (local[2], yarn, k8s://...).")] = "local[2]",
) -> None:
    """Score every session of a log on the edge runtime (no TensorFlow): one line per session."""
    with user_errors():
        from trainer.files import check_outputs

        if engine is not None:
            score_at_scale_command(model, data, out_file, log_source(
                data, format, column_map, event_map, time_unit, delimiter, strict, gap_minutes),
                engine, spark_master, backend)
            return
        require("ubp-edge score", "pyarrow")
        from edge_runtime.scorer import Scorer
        from trainer.scoring import score_log, scores_format, write_scores, write_scores_file

        source = log_source(data, format, column_map, event_map, time_unit, delimiter, strict,
                            gap_minutes)
        quarantine = None
        if out_file is not None:
            scores_format(out_file)  # a wrong suffix is refused before the log is read
            quarantine = out_file.with_name(out_file.name + QUARANTINE_SUFFIX)
        check_outputs({"--data": log_inputs(source), "--model": model},
                      {"--out": out_file, "--out's bad rows": quarantine})
        scorer = Scorer.load(model, backend=backend)
        started = time.perf_counter()
        scored = score_log(scorer, source)
        seconds = time.perf_counter() - started
        for w in scored.warnings:
            warn(w)
        if out_file is None:
            write_scores(scored, scorer.threshold, sys.stdout)
            written = None
        else:
            write_scores_file(scored, scorer.threshold, out_file)
            written = scored.log.bad.write(quarantine)
        err.print(f"scored {len(scored.index):,} sessions ({len(scored.sessions) - len(scored.index):,} "
                  f"with nothing before their first purchase) in {seconds:.2f} s with "
                  f"{scorer.backend}" + (f" -> {out_file}" if out_file else ""), soft_wrap=True)
        err.print(bad_rows_line(scored.log.bad.summary(), written))


def score_at_scale_command(model: Path, data: Path, out_file: Path | None, source, engine: str,
                           spark_master: str, backend: str) -> None:
    """`score --engine local|spark`: every session of a log bigger than memory, in bounded
    memory, into a Parquet or JSON lines file (trainer.scoring_at_scale)."""
    from edge_runtime.errors import ConfigError
    from trainer.files import check_outputs

    require("ubp-edge score --engine", "pyarrow", "duckdb", *(["pyspark"] if engine == "spark" else []))
    from trainer.scoring_at_scale import score_at_scale

    if out_file is None or out_file.suffix.lower() not in (".parquet", ".jsonl"):
        raise ConfigError(f"--engine {engine} writes a file: pass --out ending in .parquet or .jsonl"
                          + (f", not {out_file}" if out_file is not None else ""))
    quarantine = out_file.with_name(out_file.name + QUARANTINE_SUFFIX)
    check_outputs({"--data": log_inputs(source), "--model": model},
                  {"--out": out_file, "--out's bad rows": quarantine})
    with err.status("scoring") as status:
        result = score_at_scale(model, source, out_file, engine=engine, master=spark_master,
                                quarantine=quarantine, backend=backend,
                                on_stage=lambda message: status.update(message))
    for w in result.warnings:
        warn(w)
    err.print(f"scored {result.sessions:,} sessions in {result.seconds:.2f} s ({result.engine} engine) "
              f"-> {out_file}", soft_wrap=True)
    err.print(bad_rows_line(result.tally.bad_summary(), result.quarantine))


def evaluate(
    model: ModelArg,
    data: Annotated[Path, typer.Option("--data", help="A labelled event log.")],
    format: FormatOpt = None, column_map: MapOpt = None, event_map: EventsOpt = None,
    time_unit: TimeUnitOpt = "auto", delimiter: DelimiterOpt = ",",
    gap_minutes: ModelGapOpt = None,
    backend: BackendOpt = "auto",
    quarantine: QuarantineOpt = None,
    split: SplitOpt = None, run_dir: RunDirOpt = None,
    strict: StrictOpt = False, as_json: JsonOpt = False,
) -> None:
    """Metrics of an artifact on a log's labelled sessions, scored through the edge runtime."""
    with user_errors():
        from trainer.files import check_outputs

        require("ubp-edge evaluate", "pyarrow", "sklearn", "scipy")
        from edge_runtime.scorer import Scorer
        from trainer.scoring import evaluation_report, score_log

        source = log_source(data, format, column_map, event_map, time_unit, delimiter, strict,
                            gap_minutes)
        keys, manifest = split_digests(split, run_dir)
        check_outputs({"--data": log_inputs(source), "the artifact": model, "--run-dir": manifest},
                      {"--quarantine": quarantine})
        scorer = Scorer.load(model, backend=backend)
        scored = score_log(scorer, source, only_keys=keys)
        report = evaluation_report(scored, scorer.threshold)
        report["split"] = split
        written = scored.log.bad.write(quarantine) if quarantine else None
        report["quarantine"] = str(written) if written else None
        if as_json:
            print_json(report)
            return
        for w in scored.warnings:
            warn(w)
        out.print(metrics_table(report, f"{model.name} on {data}"))
        if report["lift_at"]:
            out.print(lift_table(report))
        out.print(bad_rows_line(report["bad_rows"], written))


def lift_table(report: dict) -> Table:
    """Lift and capture at the top slices of sessions by score, and the ECE.

    Args:
        report: the `evaluate` JSON dict, with `trainer.metrics.marketing_metrics`'s keys.

    Returns:
        A small Rich table: one row per top slice (its sessions, lift, capture).
    """
    ece = report.get("ece")
    deciles = report.get("ece_deciles")
    table = Table(title="top sessions by score" + ("" if ece is None else f", ECE {ece:.4f}")
                  + ("" if deciles is None else f" (by decile {deciles:.4f})"),
                  caption="top k%: ceil(k*N/100) sessions; ties in session order")
    for name in ("top", "sessions", "lift", "capture"):
        table.add_column(name, justify="left" if name == "top" else "right")
    for k, n in report["n_sessions_at"].items():
        lift, capture = report["lift_at"][k], report["capture_at"][k]
        table.add_row(k, f"{n:,}", "n/a" if lift is None else f"{lift:.2f}x",
                      "n/a" if capture is None else f"{100 * capture:.1f}%")
    return table


def metrics_table(report: dict, title: str) -> Table:
    """Metrics overall and by prefix length (events before the purchase).

    Args:
        report: `trainer.scoring.evaluation_report`'s dict.
        title: the first title line (artifact and log).

    Returns:
        The Rich table: one bold row for all sessions, then one per prefix-length bucket.
    """
    table = Table(title=f"{title}\n{report['n_sessions']:,} sessions, {report['n_positive']:,} with a "
                        f"purchase, {report['n_excluded_empty_prefix']:,} excluded (purchase first); "
                        f"threshold {report['threshold']:.4f}")
    table.add_column("prefix")
    table.add_column("n", justify="right")
    for _, label in METRIC_COLUMNS:
        table.add_column(label, justify="right")
    table.add_row("all", f"{report['n_sessions']:,}", *metric_cells(report, 3), style="bold")
    for bucket, m in report["by_prefix_length"].items():
        table.add_row(bucket, f"{m['n_sessions']:,}", *metric_cells(m, 3))
    return table
