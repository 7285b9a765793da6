"""How a benchmark is shown: the terminal table (as plain data) and the ``--report`` files.

Both take their columns from `benchmarks.columns.COLUMNS`: the terminal table its
``short`` headers and compact cells, the Markdown report its ``label`` headers. The CLI
renders `terminal_table` with Rich; `write_report` writes ``benchmark.md`` (the table),
``benchmark.json`` (`BenchmarkResult.to_dict`) and ``latency_cdf.png`` (one CDF per row).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from benchmarks.columns import COLUMNS
from benchmarks.suite import BenchmarkResult
from trainer.figures import figure, png_bytes
from trainer.files import check_folder_writable, write_bytes_atomic, write_text_atomic

TERMINAL = tuple(c for c in COLUMNS if c.short is not None)
REPORT = tuple(c for c in COLUMNS if c.label is not None)


def terminal_table(result: BenchmarkResult) -> tuple[str, list[tuple[str, str]], list[list[str]]]:
    """The terminal table of a benchmark as plain data, for the CLI to render.

    Args:
        result: what `benchmarks.suite.run_benchmark` returned.

    Returns:
        ``(title, [(header, justify), ...], rows)``: the title line (CPU, cores, threads,
        sessions), one ``(header, "left" | "right")`` per column, each row's cells as str.
    """
    m = result.machine
    title = (f"{m['cpu']} ({m['cores']} cores), {result.threads} thread(s); "
             f"sessions: {result.sessions}")
    headers = [(c.short.format(live_sessions=result.live_sessions), c.justify) for c in TERMINAL]
    rows = []
    for row in result.rows:
        failed = row["status"] != "ok"
        rows.append(["failed" if failed and c.shows_failure and row.get(c.key) is None
                     else c.cell(row.get(c.key), compact=True) for c in TERMINAL])
    return title, headers, rows


def markdown(result: BenchmarkResult) -> str:
    """The report's Markdown: machine, sessions, one table row per benchmark row, the plot."""
    m = result.machine
    lines = ["# ubp-edge benchmark", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['system']}; Python {m['python']}, numpy "
             f"{m['numpy']}, ai-edge-litert {m['ai_edge_litert']}; {result.threads} thread(s).",
             f"Sessions: {result.sessions}. Latencies include the FeatureEncoder; whole sessions at "
             f"batch 1; batch figures score consecutive sessions 64 and 256 per call, encoder "
             f"included (peers run each batch in groups of similar length); the step invoke "
             f"is the live event's step graph alone; cold start is import + load + first score "
             f"in a fresh process.", "",
             "| " + " | ".join(c.label for c in REPORT) + " |",
             "|" + "---|" * len(REPORT)]
    for row in result.rows:
        failed = row["status"] != "ok"
        cells = [f"failed: {row['reason']}" if failed and c.shows_failure else c.cell(row.get(c.key))
                 for c in REPORT]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "![latency CDF](latency_cdf.png)", ""]
    return "\n".join(lines)


def cdf_plot(samples: dict[str, list[float] | None]) -> bytes:
    """A PNG of the whole-session latency CDF of every row that has samples."""
    fig, axes = figure(9, 5.5)
    ax = axes[0, 0]
    for label, values in samples.items():
        if not values:
            continue
        x = np.sort(np.asarray(values))
        ax.plot(x, np.arange(1, len(x) + 1) / len(x), label=label, linewidth=1.4)
    ax.set_xscale("log")
    ax.set_xlabel("whole-session latency, encoder included (microseconds, log scale)")
    ax.set_ylabel("share of sessions scored within")
    ax.set_title("Latency CDF per engine (replayed sessions, batch 1)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return png_bytes(fig)


REPORT_FILES = ("latency_cdf.png", "benchmark.json", "benchmark.md")


def report_files(out_dir: str | Path) -> list[Path]:
    """The files `write_report` writes into ``out_dir``, ``benchmark.md`` last (for the output
    guard, `trainer.files.check_outputs`, before minutes of measuring)."""
    return [Path(out_dir) / name for name in REPORT_FILES]


def write_report(result: BenchmarkResult, out_dir: str | Path) -> Path:
    """Write ``benchmark.md``, ``benchmark.json`` and ``latency_cdf.png`` into ``out_dir``.

    Args:
        result: what `benchmarks.suite.run_benchmark` returned.
        out_dir: the folder (created if missing); each file is written atomically.

    Returns:
        The path of ``benchmark.md``.

    Raises:
        OutputError: ``out_dir`` is a file or cannot be created, or a file in it cannot be
            written, naming the path.
    """
    out_dir = Path(out_dir)
    check_folder_writable(out_dir, "--report")
    png, js, md = report_files(out_dir)
    write_bytes_atomic(png, cdf_plot(result.samples))
    write_text_atomic(js, json.dumps(result.to_dict(), indent=2) + "\n")
    return write_text_atomic(md, markdown(result))
