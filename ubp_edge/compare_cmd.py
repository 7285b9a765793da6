"""`ubp-edge compare RUN_DIR --data LOG`: every artifact of a run against float32.

Registered in `ubp_edge.cli` with ``app.command("compare")(compare_cmd.compare)``. The CLI
helpers are imported inside the command, so this module can be imported before or after
`ubp_edge.cli` without a cycle.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer

SPLIT_HELP = ("auto: the run's test split when the log holds it, else every scorable session; "
              "all; or train, validation, test from RUN_DIR/split.json.")


def compare(
    run_dir: Annotated[Path, typer.Argument(help="A run directory with model-float32.tflite and "
                                                 "other artifacts from `ubp-edge convert`.")],
    data: Annotated[Path, typer.Option("--data", help="A labelled event log to score.")],
    format: Annotated[str | None, typer.Option(
        "--format", "-f", help="taobao, rees46, diginetica, otto, retailrocket, canonical, or csv "
                               "(with --map); default: detected from the first line.")] = None,
    column_map: Annotated[str | None, typer.Option(
        "--map", help="--format csv: canonical=source columns, e.g. user=visitorid,time=timestamp,"
                      "event=event,item=itemid")] = None,
    event_map: Annotated[str | None, typer.Option(
        "--events", help="--format csv: canonical=source event values, e.g. cart=addtocart")] = None,
    time_unit: Annotated[str, typer.Option("--time-unit", help="--format csv: s, ms, datetime or auto.")] = "auto",
    delimiter: Annotated[str, typer.Option("--delimiter", help="--format csv: field separator.")] = ",",
    split: Annotated[str, typer.Option("--split", help=SPLIT_HELP)] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
    report: Annotated[Path | None, typer.Option(
        "--report", help="Write DIR/compare.md and its PNG plots (ROC, PR, reliability, "
                         "AUC by prefix length, scatter).")] = None,
    max_auc_drop: Annotated[float | None, typer.Option(
        "--max-auc-drop", help="Exit 1 if an artifact's ROC-AUC is more than this below float32's "
                               "(or an artifact failed).")] = None,
    max_flip_rate: Annotated[float | None, typer.Option(
        "--max-flip-rate", help="Exit 1 if an artifact flips more than this share of decisions "
                                "(0.01 = 1%) (or an artifact failed).")] = None,
    backend: Annotated[str, typer.Option(
        "--backend", help="auto, ai-edge-litert, tflite-runtime or tensorflow.")] = "auto",
) -> None:
    """Compare every artifact of a run with float32 on the same sessions: quality, drift, size, speed.

    Example: ubp-edge compare runs/taobao --data UserBehavior_sample.csv --format taobao --report out/
    """
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from ubp_edge.cli import _bad_rows_line, _preset, _print_json, err, out, user_errors

    with user_errors():
        from converters.compare import gate, run_comparison
        from converters.compare_report import COLUMNS, footnote, summary_rows

        comparison = run_comparison(run_dir, data, format,
                                    _preset(format, column_map, event_map, time_unit, delimiter),
                                    split, backend)
        result = comparison.to_dict()
        written = None
        if report is not None:
            from converters.compare_report import write_report

            command = _command_line(run_dir, data, format, column_map, event_map, time_unit,
                                    delimiter, result["split"], backend, report)
            written = write_report(comparison, report, command)
        if as_json:
            _print_json(result)
            if written:
                err.print(f"report: {written[-1]}", soft_wrap=True)
        else:
            for w in result["warnings"]:
                err.print(Text("warning: ", style="yellow") + Text(w), soft_wrap=True)
            table = Table(title=f"{run_dir}: artifacts vs {result['reference']} on {data}\n"
                                f"{result['split']}: {result['split_reason']}; "
                                f"{result['n_sessions']:,} sessions, {result['n_positive']:,} with a purchase")
            for i, col in enumerate(COLUMNS):
                table.add_column(col, justify="left" if i < 3 else "right")
            for a, cells in zip(result["artifacts"], summary_rows(result), strict=True):
                table.add_row(*cells, style=None if a["status"] == "ok" else "red")
            # Piped or captured output has no terminal to wrap for: print the table whole
            # rather than Rich's 80-column default with every cell cut to an ellipsis.
            wide = out if out.is_terminal else Console(width=max(out.width, 160))
            wide.print(table)
            note = footnote(result)
            if note:
                out.print(note, soft_wrap=True)
            for a in result["artifacts"]:
                if a["status"] != "ok":
                    out.print(Text(f"{a['status']}: ", style="red") + Text(a["reason"] or ""),
                              soft_wrap=True)
            out.print(_bad_rows_line(result["bad_rows"], None))
            if written:
                out.print(f"report: {written[-1]} (+ {len(written) - 1} plots)", soft_wrap=True)
        problems = gate(result, max_auc_drop, max_flip_rate)
        for line in problems:
            err.print(Text("over budget: ", style="bold red") + Text(line), soft_wrap=True)
        if problems:
            raise typer.Exit(1)


def _command_line(run_dir, data, format, column_map, event_map, time_unit, delimiter, split,
                  backend, report) -> str:
    """The command that reproduces this comparison (the split as it was resolved)."""
    args = ["ubp-edge", "compare", str(run_dir), "--data", str(data)]
    if format:
        args += ["--format", format]
    if column_map:
        args += ["--map", column_map]
    if event_map:
        args += ["--events", event_map]
    if format == "csv":
        args += ["--time-unit", time_unit, "--delimiter", delimiter]
    args += ["--split", split]
    if backend != "auto":
        args += ["--backend", backend]
    args += ["--report", str(report)]
    return shlex.join(args)
