"""`ubp-edge compare RUN_DIR --data LOG`: every artifact of a run against float32."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from converters.compare import REFERENCE, SPLITS
from ubp_edge.console import (
    bad_rows_line,
    err,
    out,
    print_json,
    print_wide,
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
    TimeUnitOpt,
    log_inputs,
    log_source,
)

SPLIT_HELP = "; ".join(f"{name}: {meaning}" for name, meaning in SPLITS.items()) + " (RUN_DIR/split.json)."
# The summary table's first columns are names (left-aligned); the figures after them, right.
NAME_COLUMNS = 3


def compare(
    run_dir: Annotated[Path, typer.Argument(help=f"A run directory with model-{REFERENCE}.tflite and "
                                                 f"other artifacts from `ubp-edge convert`.")],
    data: Annotated[Path, typer.Option("--data", help="A labelled event log to score.")],
    format: FormatOpt = None, column_map: MapOpt = None, event_map: EventsOpt = None,
    time_unit: TimeUnitOpt = "auto", delimiter: DelimiterOpt = ",",
    split: Annotated[str, typer.Option("--split", help=SPLIT_HELP)] = "auto",
    as_json: JsonOpt = False,
    report: Annotated[Path | None, typer.Option(
        "--report", help="Write DIR/compare.md and its PNG plots (ROC, PR, reliability, "
                         "cumulative gains, AUC by prefix length, scatter).")] = None,
    max_auc_drop: Annotated[float | None, typer.Option(
        "--max-auc-drop", help=f"Exit 1 if an artifact's ROC-AUC is more than this below {REFERENCE}'s "
                               "(or an artifact failed).")] = None,
    max_flip_rate: Annotated[float | None, typer.Option(
        "--max-flip-rate", help="Exit 1 if an artifact flips more than this share of decisions "
                                "(0.01 = 1%) (or an artifact failed).")] = None,
    backend: BackendOpt = "auto",
) -> None:
    """Compare every artifact of a run with float32 on the same sessions: quality, drift, size, speed.

    Example: ubp-edge compare runs/taobao --data UserBehavior_sample.csv --format taobao --report out/
    """
    with user_errors():
        from trainer.files import check_outputs

        require("ubp-edge compare", "pyarrow", "sklearn", "scipy")
        if report is not None:
            require("ubp-edge compare --report", "matplotlib")
        from converters.compare import compare_inputs, gate, run_comparison
        from converters.compare_report import report_files

        source = log_source(data, format, column_map, event_map, time_unit, delimiter)
        check_outputs({"--data": log_inputs(source), "RUN_DIR": compare_inputs(run_dir)},
                      {"--report": report_files(report) if report is not None else None},
                      folders={"--report": report})
        comparison = run_comparison(run_dir, source, split, backend)
        result = comparison.to_dict()
        written = None
        if report is not None:
            from converters.compare_report import write_report

            command = shlex.join(["ubp-edge", "compare", str(run_dir), *source.cli_args(),
                                  "--split", result["split"],
                                  *(["--backend", backend] if backend != "auto" else []),
                                  "--report", str(report)])
            written = write_report(comparison, report, command)
        if as_json:
            print_json(result)
            if written:
                err.print(f"report: {written[-1]}", soft_wrap=True)
        else:
            print_comparison(result, f"{run_dir}: artifacts vs {result['reference']} on {data}", written)
        problems = gate(result, max_auc_drop, max_flip_rate)
        for line in problems:
            err.print(Text("over budget: ", style="bold red") + Text(line), soft_wrap=True)
        if problems:
            raise typer.Exit(1)


def print_comparison(result: dict, title: str, written: list[Path] | None) -> None:
    """The terminal view of a comparison: warnings on stderr, then on stdout the summary table,
    its footnote, why rows failed, the bad rows and where the report went.

    Args:
        result: the `compare --json` object (`Comparison.to_dict`).
        title: the table title's first line (run directory and log).
        written: the report files (compare.md last), if a report was written.
    """
    from converters.compare_report import COLUMNS, footnote, lift_rows, summary_rows

    for w in result["warnings"]:
        warn(w)
    table = Table(title=f"{title}\n{result['split']}: {result['split_reason']}; "
                        f"{result['n_sessions']:,} sessions, {result['n_positive']:,} with a purchase")
    for i, col in enumerate(COLUMNS):
        table.add_column(col, justify="left" if i < NAME_COLUMNS else "right")
    for a, cells in zip(result["artifacts"], summary_rows(result), strict=True):
        table.add_row(*cells, style=None if a["status"] == "ok" else "red")
    print_wide(table, 160)
    headers, rows = lift_rows(result)
    if rows:
        lift = Table(title="lift and capture of the top sessions by score (ties: session order)")
        for i, col in enumerate(headers):
            lift.add_column(col, justify="left" if i == 0 else "right")
        for cells in rows:
            lift.add_row(*cells)
        print_wide(lift, 160)
    note = footnote(result)
    if note:
        out.print(note, soft_wrap=True)
    for a in result["artifacts"]:
        if a["status"] != "ok":
            out.print(Text(f"{a['status']}: ", style="red") + Text(a["reason"] or ""), soft_wrap=True)
    out.print(bad_rows_line(result["bad_rows"], None))
    if written:
        out.print(f"report: {written[-1]} (+ {len(written) - 1} plots)", soft_wrap=True)
