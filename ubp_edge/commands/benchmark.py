"""`ubp-edge benchmark TARGET`: size, cold start, latency, throughput and memory of every
artifact, and with ``--peers`` of other engines on the same weights.

The measuring is `benchmarks.suite.run_benchmark`; this command builds its
`BenchmarkRequest`, shows a spinner while it runs and renders the result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.table import Table

from ubp_edge.console import err, print_json, print_wide, require, spinner, user_errors
from ubp_edge.options import (
    DelimiterOpt,
    EventsOpt,
    FormatOpt,
    JsonOpt,
    MapOpt,
    TimeUnitOpt,
    log_inputs,
    log_source,
)


def benchmark(
    target: Annotated[Path, typer.Argument(
        help="An artifact, or a run directory (every model-*.tflite in it).")],
    data: Annotated[Path | None, typer.Option(
        help="Replay this log's session lengths (default: the embedded synthetic sessions).")] = None,
    format: FormatOpt = None, column_map: MapOpt = None, event_map: EventsOpt = None,
    time_unit: TimeUnitOpt = "auto", delimiter: DelimiterOpt = ",",
    threads: Annotated[int, typer.Option(help="Interpreter threads.")] = 1,
    peers: Annotated[bool, typer.Option(
        "--peers", help="Also Keras, ONNX Runtime and NumPy on the same weights (needs the run "
                        "directory).")] = False,
    runs: Annotated[int, typer.Option(help="Timed calls per latency figure, at least.")] = 2000,
    live_sessions: Annotated[int, typer.Option(help="Live sessions held for the memory figure.")] = 10_000,
    as_json: JsonOpt = False,
    report: Annotated[Path | None, typer.Option(
        help="Write a Markdown table and latency CDF plots here.")] = None,
) -> None:
    """Measure every artifact on this machine: size, cold start, latency per session and per
    event, throughput, memory; one thread unless told otherwise."""
    with user_errors():
        from edge_runtime.errors import ConfigError
        from trainer.files import check_outputs

        # The replayed and the embedded sessions both go through the log readers.
        require("ubp-edge benchmark", "pyarrow")
        if report is not None:
            require("ubp-edge benchmark --report", "matplotlib")
        from benchmarks.measure import Effort
        from benchmarks.report import report_files, terminal_table, write_report
        from benchmarks.suite import BenchmarkRequest, run_benchmark

        bad = [f"{name} must be >= 1, got {value}" for name, value in
               (("--threads", threads), ("--runs", runs), ("--live-sessions", live_sessions)) if value < 1]
        if bad:
            raise ConfigError("; ".join(bad))
        # --format and its mapping describe --data; without a log they have nothing to read.
        source = (log_source(data, format, column_map, event_map, time_unit, delimiter)
                  if data is not None else None)
        targets = sorted(target.glob("model-*.tflite")) if target.is_dir() else [target]
        check_outputs({"--data": log_inputs(source) if source is not None else None, "TARGET": targets},
                      {"--report": report_files(report) if report is not None else None},
                      folders={"--report": report})
        effort = Effort(threads=threads, min_runs=runs, live_sessions=live_sessions)
        request = BenchmarkRequest(target=target, source=source, peers=peers, effort=effort)
        with spinner() as say:
            result = run_benchmark(request, say)
        if report is not None:
            err.print(f"report: {write_report(result, report)}")
        if as_json:
            print_json(result.to_dict())
            return
        title, columns, rows = terminal_table(result)
        table = Table(title=title, box=box.SIMPLE_HEAD)
        for header, justify in columns:
            table.add_column(header, justify=justify, no_wrap=True)
        for cells in rows:
            table.add_row(*cells)
        print_wide(table, 170)  # many columns: whole when written to a file or a pipe
