"""`data inspect`: what is in a log, before anyone trains on it."""

from __future__ import annotations

import datetime as dt

import numpy as np

from edge_runtime.events import EVENT_TYPES
from trainer.logsource import EventLogSource
from trainer.readers import EventLog
from trainer.sessions import DEFAULT_GAP_MINUTES, sessionize


def _utc(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def summarize_log(source: EventLogSource) -> tuple[dict, EventLog]:
    """Read and sessionize a log; return its summary and the log.

    Args:
        source: the log and how to read it (its gap, else the 30-minute default).

    Raises:
        DataError: the log cannot be read, or a bad row with ``source.strict``.
    """
    log = source.read()
    sessions = sessionize(log, source.session_gap(DEFAULT_GAP_MINUTES))
    counts = np.bincount(log.event, minlength=len(EVENT_TYPES))
    summary = {
        "path": str(source.path),
        "format": log.format,
        "rows_read": int(log.rows_read),
        "events": int(len(log)),
        "bad_rows": log.bad.summary(),
        "users": int(len(np.unique(log.user.codes))) if log.has_user_ids else None,
        "session_rule": ("the log's session ids" if sessions.gap_minutes is None
                         else f"per-user inactivity gap of {sessions.gap_minutes:g} min"),
        **sessions.summary(),
        "time_span_utc": [_utc(float(log.ts.min())), _utc(float(log.ts.max()))],
        "event_mix": {name: int(c) for name, c in zip(EVENT_TYPES, counts, strict=True)},
    }
    return summary, log
