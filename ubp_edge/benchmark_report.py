"""The `benchmark --report` files: a Markdown table and a latency CDF plot per engine."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from trainer.files import write_bytes_atomic

COLUMNS = (("engine", "engine"), ("precision", "precision"), ("graph", "graph"),
           ("size_bytes", "size (KiB)"), ("cold_start_ms", "cold start (ms)"), ("rss_mb", "RSS (MB)"),
           ("rss_live_mb", "RSS, 10k live (MB)"), ("session_p50_us", "session p50 (us)"),
           ("session_p95_us", "p95"), ("session_p99_us", "p99"), ("session1_p50_us", "1 ev p50"),
           ("session10_p50_us", "10 ev p50"), ("session50_p50_us", "50 ev p50"),
           ("event_p50_us", "live event p50 (us)"), ("event_p99_us", "event p99"),
           ("sessions_per_s", "sessions/s"))


def _cell(key: str, value) -> str:
    if value is None:
        return ""
    if key == "size_bytes":
        return f"{value / 1024:.1f}"
    if isinstance(value, float):
        return f"{value:,.0f}" if key == "sessions_per_s" else f"{value:.1f}"
    return str(value)


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = ["# ubp-edge benchmark", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['system']}; Python {m['python']}, numpy "
             f"{m['numpy']}, ai-edge-litert {m['ai_edge_litert']}; {result['threads']} thread(s).",
             f"Sessions: {result['sessions']}. Latencies include the FeatureEncoder; whole sessions at "
             f"batch 1; cold start is import + load + first score in a fresh process.", "",
             "| " + " | ".join(label for _, label in COLUMNS) + " | ratio to best ubp-edge (session p50, 50 ev p50, sessions/s) |",
             "|" + "---|" * (len(COLUMNS) + 1)]
    for row in result["rows"]:
        ratios = row.get("ratio_to_best") or {}
        ratio = ", ".join("" if v is None else f"{v:.2f}" for v in ratios.values())
        cells = [_cell(k, row.get(k)) for k, _ in COLUMNS]
        if row["status"] != "ok":
            cells[3] = f"failed: {row['reason']}"
        lines.append("| " + " | ".join(cells) + f" | {ratio} |")
    lines += ["", "![latency CDF](latency_cdf.png)", ""]
    return "\n".join(lines)


def cdf_plot(samples: dict[str, list[float] | None]) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 5.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
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
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def write_report(result: dict, samples: dict, out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out_dir / "latency_cdf.png", cdf_plot(samples))
    import json
    write_bytes_atomic(out_dir / "benchmark.json", (json.dumps(result, indent=2) + "\n").encode())
    return write_bytes_atomic(out_dir / "benchmark.md", markdown(result).encode())
