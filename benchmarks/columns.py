"""The benchmark's one column table: every figure of a benchmark row, described once.

`COLUMNS` lists every key of a row of `ubp-edge benchmark` (and of its ``--json`` output), in
row order, with what it means and how to show it. It drives three things that must agree:

- `ROW_KEYS`, the keys of every row (the JSON contract);
- the terminal table the CLI prints (`benchmarks.report.terminal_table`: headers from ``short``);
- the Markdown report (`benchmarks.report.markdown`: headers from ``label``).

A column with no ``short`` is left out of the terminal table, one with no ``label`` out of
the report; both still describe a row key. To add a figure, add a `Column` here and fill its
key in `benchmarks.suite`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["text", "size", "figure", "count", "ratios"]


@dataclass(frozen=True)
class Column:
    """One key of a benchmark row.

    Attributes:
        key: the row key (and JSON field).
        label: the Markdown report's header; None: not in the report.
        short: the terminal table's header (may use ``{live_sessions:,}``); None: not in the
            terminal table.
        description: what the figure is, for a person.
        kind: how a cell is written: ``text`` as is, ``size`` bytes in KiB, ``figure`` one
            decimal, ``count`` a whole number with thousands separators, ``ratios`` the
            ratios to the best ubp-edge row, two decimals each.
        shows_failure: on a failed row this cell says so (the report: ``failed: REASON``; the
            terminal: ``failed`` where the row has no figure).
    """

    key: str
    label: str | None
    short: str | None
    description: str
    kind: Kind = "figure"
    shows_failure: bool = False

    @property
    def justify(self) -> str:
        """``left`` for text columns, ``right`` for figures."""
        return "left" if self.kind == "text" else "right"

    def cell(self, value: object, *, compact: bool = False) -> str:
        """One cell's text; "" for a missing figure.

        Args:
            value: the row's value for this key.
            compact: the terminal's narrower form (sizes in whole KiB).
        """
        if value is None:
            return ""
        if self.kind == "ratios":
            return ", ".join("" if v is None else f"{v:.2f}" for v in value.values())
        if self.kind == "size":
            return f"{value / 1024:.0f}" if compact else f"{value / 1024:.1f}"
        if isinstance(value, float):
            return f"{value:,.0f}" if self.kind == "count" else f"{value:.1f}"
        return str(value)


# Row order. The terminal table and the report show the columns that have a header, in
# this order; the terminal leaves out the less used figures to fit a screen.
COLUMNS: tuple[Column, ...] = (
    Column("engine", "engine", "engine", "ubp-edge, or the peer engine (keras-eager, "
           "keras-function, onnxruntime, numpy)", kind="text"),
    Column("precision", "precision", "precision", "the artifact's precision (peers: float32, or "
           "dynamic for ONNX Runtime's int8 weights)", kind="text"),
    Column("graph", "graph", "graph", "the artifact's graph (fused or unrolled); empty for peers",
           kind="text"),
    Column("status", None, None, "ok, or failed (the reason says why)", kind="text"),
    Column("reason", None, None, "why the row failed; on an ok peer row, a note (the ONNX route)",
           kind="text"),
    Column("size_bytes", "size (KiB)", "KB", "the artifact's (or ONNX model's) size in bytes",
           kind="size", shows_failure=True),
    Column("cold_start_ms", "cold start (ms)", "cold ms", "import + load + first score in a fresh "
           "process, median of several (ms)"),
    Column("rss_mb", "RSS (MB)", "RSS MB", "peak resident memory of the cold-start process (MB)"),
    Column("rss_live_mb", "RSS, 10k live (MB)", "{live_sessions:,} live MB",
           "resident memory of a fresh process holding the live sessions (MB)"),
    Column("session_p50_us", "session p50 (us)", "sess p50", "whole replayed session at batch 1, "
           "encoder included: median (us)"),
    Column("session_p95_us", "p95", None, "whole replayed session: 95th percentile (us)"),
    Column("session_p99_us", "p99", "sess p99", "whole replayed session: 99th percentile (us)"),
    Column("session1_p50_us", "1 ev p50", None, "a 1-event session: median (us)"),
    Column("session10_p50_us", "10 ev p50", None, "a 10-event session: median (us)"),
    Column("session50_p50_us", "50 ev p50", "50ev p50", "a 50-event session: median (us)"),
    Column("event_p50_us", "live event p50 (us)", "event p50", "one event pushed to a live "
           "session (encoder step + LSTM step): median (us)"),
    Column("event_p95_us", None, None, "one live event: 95th percentile (us)"),
    Column("event_p99_us", "event p99", "event p99", "one live event: 99th percentile (us)"),
    Column("step_invoke_p50_us", "step invoke p50 (us)", "invoke p50", "a bare invoke of the "
           "step graph (StepModel.__call__ on preallocated arrays), measured beside the live "
           "event: median (us)"),
    Column("sessions_per_s", "sessions/s", "sess/s", "throughput in sessions per second: "
           "artifacts score the replayed sessions in one call, peers one session per call",
           kind="count"),
    Column("batch64_sessions_per_s", "batch 64 sessions/s", "b64/s", "sessions per second "
           "scoring the replayed sessions 64 at a time, encoder included", kind="count"),
    Column("batch256_sessions_per_s", "batch 256 sessions/s", "b256/s", "sessions per second "
           "scoring the replayed sessions 256 at a time, encoder included", kind="count"),
    Column("ratio_to_best", "ratio to best ubp-edge (session p50, 50 ev p50, sessions/s, batch 64, "
           "batch 256)", None, "each compared figure over the best ubp-edge row's (lower is "
           "better but for the throughputs); empty on a failed row", kind="ratios"),
)
ROW_KEYS: tuple[str, ...] = tuple(c.key for c in COLUMNS)

