"""`data inspect`: what is in a log, before anyone trains on it."""

from __future__ import annotations

import datetime as dt
import os

import numpy as np

from edge_runtime.events import EVENT_TYPES
from trainer.formats import FormatPreset
from trainer.readers import EventLog, read_log
from trainer.sessions import sessionize


def _utc(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def summarize_log(path: str | os.PathLike, preset: FormatPreset | None = None,
                  gap_minutes: float = 30.0, strict: bool = False) -> tuple[dict, EventLog]:
    """Read and sessionize a log; return its summary and the log.

    ``preset`` None detects the format from the file (a preset named by ``--format``
    is passed in already resolved).
    """
    log = read_log(path, preset=preset, strict=strict)
    sessions = sessionize(log, gap_minutes)
    counts = np.bincount(log.event, minlength=len(EVENT_TYPES))
    summary = {
        "path": str(path),
        "format": log.format,
        "rows_read": int(log.rows_read),
        "events": int(len(log)),
        "bad_rows": log.bad.summary(),
        "users": int(len(np.unique(log.user.codes))) if log.has_user_ids else None,
        "session_rule": ("the log's session ids" if sessions.gap_minutes is None
                         else f"per-user inactivity gap of {gap_minutes:g} min"),
        **sessions.summary(),
        "time_span_utc": [_utc(float(log.ts.min())), _utc(float(log.ts.max()))],
        "event_mix": {name: int(c) for name, c in zip(EVENT_TYPES, counts, strict=True)},
    }
    return summary, log
