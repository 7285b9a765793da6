"""The pieces every report page is made of: a matplotlib figure drawn off screen, its PNG
bytes, and a Markdown table (`compare --report`, `explain --report`).

matplotlib is imported inside `figure`, on its Agg canvas through the object-oriented
`Figure` API (no pyplot, no global backend switch), so importing this module costs nothing
and plotting works without a display.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

DPI = 110


def figure(width: float, height: float, rows: int = 1, cols: int = 1, **kw):
    """A constrained-layout Figure of ``width`` x ``height`` inches and its axes, always a
    2-D array (``rows`` x ``cols``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False, **kw)
    return fig, axes


def png_bytes(fig) -> bytes:
    """The figure as PNG bytes, for `trainer.files.write_bytes_atomic`."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right_from: int = 0) -> str:
    """A Markdown table; columns from ``right_from`` on are right-aligned (figures), and a
    ``|`` inside a cell is escaped."""
    def esc(cell: str) -> str:
        return str(cell).replace("|", "\\|")

    align = ["---" if i < right_from else "---:" for i in range(len(headers))]
    lines = ["| " + " | ".join(esc(h) for h in headers) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
