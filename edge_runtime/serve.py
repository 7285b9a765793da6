"""`ubp-edge serve`: JSON lines of events in, one JSON line per event with the updated score out.

Input, one object per line: ``{"session": KEY, "ts": ..., "event": ..., "item": ...,
"category": ..., "price": ..., "context": {...}}`` (category, price and context optional;
context is read on a session's first event). Output, one line per input line, in order:

- a score:    ``{"session": KEY, "events": N, "probability": P, "decision": 0|1}``
- an error:   ``{"line": N, "error": "what is wrong"}``; the stream goes on
- a removal:  ``{"session": KEY, "removed": "lru"|"idle", "events": N}`` before the line
  that caused it

Standard library and edge_runtime only, so it runs on the device as it is.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable

from edge_runtime.errors import ConfigError
from edge_runtime.live import SessionStore


def serve_lines(scorer, lines: Iterable[str], emit: Callable[[str], None],
                max_sessions: int = 10_000, idle_timeout: float | None = 1800.0) -> SessionStore:
    """Score a stream of event lines; return the store (its ``stats`` count what happened).

    Args:
        scorer: a loaded edge_runtime.Scorer.
        lines: text lines, e.g. ``sys.stdin``.
        emit: called with each output line (no trailing newline).
        max_sessions, idle_timeout: as edge_runtime.SessionStore.
    """
    store = SessionStore(scorer, max_sessions=max_sessions, idle_timeout=idle_timeout)
    threshold = scorer.threshold
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            key, record, context = _parse(line)
        except ConfigError as e:
            store.stats.rejected += 1
            emit(json.dumps({"line": number, "error": str(e)}))
            continue
        try:
            p, removed = store.push(key, record, context)  # counts what it rejects
        except ConfigError as e:
            emit(json.dumps({"line": number, "error": str(e)}))
            continue
        for gone, why, events in removed:
            emit(json.dumps({"session": gone, "removed": why, "events": events}))
        emit(json.dumps({"session": key, "events": store.events_of(key),
                         "probability": round(p, 6), "decision": int(p >= threshold)}))
    return store


def _parse(line: str) -> tuple[str, dict, dict | None]:
    """(session key, event, context) of one input line; ConfigError saying what is wrong."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise ConfigError(f"not JSON: {e.msg} at column {e.colno}") from None
    if not isinstance(record, dict):
        raise ConfigError(f"expected a JSON object, got {type(record).__name__}")
    key = record.get("session")
    if key is None or isinstance(key, (dict, list, bool)):
        raise ConfigError(f"'session' must be a string or number, got {key!r}")
    context = record.get("context")
    if context is not None and not isinstance(context, dict):
        raise ConfigError(f"'context' must be an object, got {context!r}")
    return str(key), record, context
