"""Bad rows: counted by reason, kept verbatim, written aside. Nothing is dropped silently.

`BadRows` is what the readers in `trainer.readers` fill; `EventLog.bad` carries it to
`train`, which writes it as the run directory's quarantine.jsonl, and to every summary
that counts bad rows by reason.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from edge_runtime.errors import DataError, located
from trainer.files import atomic_open

# Raw text kept per bad row: enough to find and fix it, bounded so a pathological
# 10 MB line cannot blow up the quarantine file.
MAX_RAW_CHARS = 2000
# Characters JSON leaves unescaped but str.splitlines() and some editors break lines at:
# escaped, so that the file has one row per line whichever way it is split.
LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


@dataclass
class BadRows:
    """Accumulates rows a reader rejected, with the physical line and the reason."""

    source: str
    counts: Counter = field(default_factory=Counter)
    rows: list[dict] = field(default_factory=list)

    def add(self, line: int | None, reason: str, raw: str, detail: str = "",
            source: str | None = None) -> None:
        """Record one bad row.

        Args:
            line: 1-based physical line (or row number for Parquet), None if unknown.
            reason: a short machine-readable reason, e.g. ``bad_timestamp``.
            raw: the row as read (decoded with replacement characters if needed).
            detail: what was wrong with which value, for a person.
            source: the file the row came from, when not ``self.source`` (DIGINETICA
                purchases are read from a second file).
        """
        self.counts[reason] += 1
        self.rows.append({"source": source or self.source, "line": line, "reason": reason,
                          "detail": detail, "raw": raw[:MAX_RAW_CHARS]})

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def first_message(self) -> str:
        """One line naming the first bad row: file, line, reason and value."""
        if not self.rows:
            return f"{self.source}: no bad rows"
        row = min(self.rows, key=lambda r: (r["line"] is None, r["line"] or 0))
        what = row["detail"] or f"{row['reason']}: {row['raw']!r}"
        return located(row["source"], row["line"], f"bad row ({row['reason']}): {what}")

    def summary(self) -> dict:
        return {"total": self.total, "by_reason": dict(sorted(self.counts.items()))}

    def raise_if_strict(self, strict: bool) -> None:
        """With --strict any bad row is fatal: raise DataError naming the first one."""
        if strict and self.total:
            raise DataError(f"{self.first_message()} ({self.total} bad rows; --strict)")

    def write(self, path: str | os.PathLike) -> Path | None:
        """Write the bad rows as JSON lines, in line order, atomically.

        Args:
            path: the quarantine file; its folder is created if needed.

        Returns:
            ``path``, or None when there are no bad rows (then nothing is written).
        """
        if not self.rows:
            return None
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path, "w") as f:
            f.writelines(self.lines())
        return path

    def lines(self) -> list[str]:
        """The bad rows as quarantine lines (JSON, one per row), in line order."""
        return [json.dumps(row, ensure_ascii=False).translate(LINE_BREAKS) + "\n"
                for row in sorted(self.rows, key=lambda r: (r["line"] is None, r["line"] or 0))]

    def shift_lines(self, offset: int) -> None:
        """Add ``offset`` to every row's line: the rows of a block read on its own take the
        lines they have in the whole file."""
        for row in self.rows:
            if row["line"] is not None:
                row["line"] += offset
