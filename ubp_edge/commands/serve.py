"""`ubp-edge serve` (score a stream of events) and `ubp-edge doctor` (what this machine runs)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.table import Table
from rich.text import Text

from ubp_edge.console import err, out, print_json, user_errors
from ubp_edge.options import BackendOpt, JsonOpt, ModelOpt

DOCTOR_COLUMNS = ("backend", "version", "loads", "scores", "live", "p")


def serve(
    model: ModelOpt,
    max_sessions: Annotated[int, typer.Option(
        help="Live sessions held; the least recently used goes first.")] = 10_000,
    idle_timeout: Annotated[float, typer.Option(
        help="Seconds of event time without a click before a session is dropped.")] = 1800.0,
    backend: BackendOpt = "auto",
) -> None:
    """Score a stream: JSON lines of events on stdin, one JSON line per event on stdout.

    Input lines: {"session": KEY, "ts": ..., "event": "view|cart|fav|purchase", "item": ...,
    ["category", "price", "context"]}. Output: the updated probability per event, an error line
    for a malformed one (the stream goes on), and a line when a session is evicted or times out.
    """
    with user_errors():
        from edge_runtime.scorer import Scorer
        from edge_runtime.serve import serve_lines

        scorer = Scorer.load(model, backend=backend)

        def emit(line: str) -> None:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

        store = serve_lines(scorer, sys.stdin, emit, max_sessions=max_sessions,
                            idle_timeout=idle_timeout)
        stats = store.stats
        err.print(f"served {stats.pushed:,} events in {stats.started:,} sessions; "
                  f"{stats.rejected:,} lines rejected, {stats.evicted_lru:,} sessions evicted (LRU), "
                  f"{stats.expired_idle:,} timed out; {len(store):,} still open", soft_wrap=True)


def doctor(
    artifact: Annotated[Path | None, typer.Argument(
        help="An artifact to load and score with each backend.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Interpreters this machine has (and their versions), numpy, Python, platform; with an
    artifact, whether it loads, scores and scores live on each."""
    with user_errors():
        from edge_runtime.artifact import read_artifact
        from edge_runtime.doctor import doctor as run_doctor

        if artifact is not None:
            read_artifact(artifact)  # a missing or corrupted file is an error, not a table row
        report = run_doctor(artifact)
        if as_json:
            print_json(report)
            return
        out.print(f"Python {report['python']} on {report['platform']}; numpy {report['numpy']}")
        out.print(backends_table(report, artifact))
        for row in report["backends"]:
            if row.get("detail"):
                out.print(Text(f"{row['name']}: {row['detail']}"), soft_wrap=True)


def backends_table(report: dict, artifact: Path | None) -> Table:
    """One row per backend of `edge_runtime.doctor.doctor`'s report.

    Args:
        report: the doctor report.
        artifact: the artifact it was run with, if any (named in the title).

    Returns:
        The Rich table: version, and whether the artifact loads, scores and scores live.
    """
    table = Table(title=f"backends{'' if artifact is None else f' for {artifact}'}", box=box.SIMPLE_HEAD)
    for col in DOCTOR_COLUMNS:
        table.add_column(col, no_wrap=True)
    for row in report["backends"]:
        def mark(value, importable=row["importable"]):
            return "" if value is None or not importable else ("yes" if value else "no")
        table.add_row(row["name"], row["version"] or "not installed", mark(row.get("loads")),
                      mark(row.get("scores")), mark(row.get("live")),
                      "" if row.get("probability") is None else f"{row['probability']:.4f}")
    return table
