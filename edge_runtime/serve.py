"""`ubp-edge serve`: JSON lines of events in, one JSON line per event with the updated score out.

Input, one object per line: ``{"session": KEY, "ts": ..., "event": ..., "item": ...,
"category": ..., "price": ..., "context": {...}}`` (category, price and context optional;
context is read on a session's first event). Lines end in ``\\n``, ``\\r\\n`` or ``\\r`` and
are UTF-8. Output, one line per input line, in order:

- a score:    ``{"session": KEY, "events": N, "probability": P, "decision": 0|1}``
- a trigger:  ``{"trigger": TIER, "session": KEY, "events": N, "probability": P, "tier": NOW}``
  right after the score line, one per tier whose trigger the event fires (lowest first),
  when the store has a TriggerRule (edge_runtime.tiers): TIER is the tier climbed into, NOW
  the tier P is in (TIER or a higher one), P the score line's number
- an error:   ``{"line": N, "error": "what is wrong"}``; the stream goes on. Every line
  gets one: a blank line, a line that is not UTF-8 or not JSON (a number of thousands of
  digits, arrays nested past Python's recursion limit), a line longer than MAX_LINE_BYTES
  (read in bounded memory, not kept), an event the store refuses.
- a removal:  ``{"session": KEY, "removed": "lru"|"idle", "events": N}`` before the line
  that caused it

Seams: `read_lines` (a binary stream -> lines, as they arrive), `serve_store` (lines -> a
SessionStore -> output lines), `serve_lines` (both for a Scorer). Standard library and
edge_runtime only, so it runs on the device as it is.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from edge_runtime.errors import ConfigError
from edge_runtime.events import shown
from edge_runtime.live import SessionStore
from edge_runtime.tiers import TriggerRule

# The longest input line read: longer ones get an error line and are dropped as they are
# read, so one line cannot take the device's memory. A real event line is well under 10 KB.
MAX_LINE_BYTES = 1 << 20


@dataclass(frozen=True)
class LongLine:
    """A line longer than the limit `read_lines` was given: only its size is kept."""

    size: int


def read_lines(stream: BinaryIO, max_line_bytes: int = MAX_LINE_BYTES,
               chunk_bytes: int = 1 << 16) -> Iterator[bytes | LongLine]:
    """The lines of a binary stream, each as soon as it is complete.

    Lines end at ``\\n``, ``\\r\\n`` or a lone ``\\r`` (a ``\\r\\n`` split between two reads
    is still one end); the ends are not returned, and a last line without one is. Reads
    take what the stream has (``read1``), so a client writing one line at a time gets its
    answer before it writes the next.

    Args:
        stream: e.g. ``sys.stdin.buffer``.
        max_line_bytes: a longer line is not kept: a LongLine with its size comes instead.
        chunk_bytes: the most read at a time.

    Returns:
        An iterator of bytes (a line) or LongLine.
    """
    read = getattr(stream, "read1", stream.read)
    held = bytearray()  # the start of the current line
    dropped = 0  # bytes of the current line dropped because it is too long
    after_cr = False  # the last read ended in \r: a \n starting the next is its pair
    while data := read(chunk_bytes):
        if after_cr and data[:1] == b"\n":
            data = data[1:]
        after_cr = data[-1:] == b"\r"
        # bytes.splitlines splits at exactly \n, \r\n and \r, in C.
        for part in data.splitlines(keepends=True):
            text = part.rstrip(b"\r\n")
            if dropped or len(held) + len(text) > max_line_bytes:
                dropped += len(held) + len(text)
                held.clear()
            elif held:
                held += text
            if len(text) == len(part):
                if not dropped and not held:
                    held += text  # the start of a line the next read ends
                continue
            if dropped:
                yield LongLine(dropped)
            elif held:
                yield bytes(held)
            else:
                yield text
            held.clear()
            dropped = 0
    if dropped:
        yield LongLine(dropped)
    elif held:
        yield bytes(held)


def serve_store(store: SessionStore, lines: Iterable[str | bytes | LongLine],
                emit: Callable[[str], None]) -> None:
    """Score a stream of event lines into ``store``; its ``stats`` count what happened.

    Every line gets its answer line (a score or an error, after the removals it caused,
    before the triggers it fired); only ``emit`` failing (stdout closed) or the input ending
    stops the loop.

    Args:
        store: the SessionStore (its Scorer's threshold makes the decision; its TriggerRule,
            if any, the triggers).
        lines: text or UTF-8 lines (e.g. `read_lines`), with or without their line end.
        emit: called with each output line (no trailing newline).

    Raises:
        ArtifactError: the model fails to run (a damaged artifact); nothing a line holds
            raises.
    """
    threshold = store.scorer.threshold
    tiers = None if store.triggers is None else store.triggers.tiers
    for number, line in enumerate(lines, start=1):
        try:
            key, record, context = _parse(line)
        except ConfigError as e:
            store.stats.rejected += 1
            emit(json.dumps({"line": number, "error": str(e)}))
            continue
        try:
            p, removed, fired = store.push_with_triggers(key, record, context)  # counts what it rejects
        except ConfigError as e:
            emit(json.dumps({"line": number, "error": str(e)}))
            continue
        for gone, why, events in removed:
            emit(json.dumps({"session": gone, "removed": why, "events": events}))
        events, shown_p = store.events_of(key), round(p, 6)
        emit(json.dumps({"session": key, "events": events, "probability": shown_p,
                         "decision": int(p >= threshold)}))
        if fired:
            now = tiers.tier_of(p)
            for tier in fired:
                emit(json.dumps({"trigger": tier, "session": key, "events": events,
                                 "probability": shown_p, "tier": now}))


def serve_lines(scorer, lines: Iterable[str | bytes | LongLine], emit: Callable[[str], None],
                max_sessions: int = 10_000, idle_timeout: float | None = 1800.0,
                triggers: TriggerRule | None = None) -> SessionStore:
    """Score a stream of event lines; return the store (its ``stats`` count what happened).

    Args:
        scorer: a loaded edge_runtime.Scorer.
        lines: text lines (e.g. a list), or `read_lines` of a binary stream.
        emit: called with each output line (no trailing newline).
        max_sessions, idle_timeout, triggers: as edge_runtime.SessionStore (with a
            TriggerRule, trigger lines follow the score lines, as `serve_store` says).

    Returns:
        The SessionStore, with the sessions still open.

    Raises:
        ConfigError: ``max_sessions`` or ``idle_timeout`` out of range.
        ArtifactError: as `serve_store`.
    """
    store = SessionStore(scorer, max_sessions=max_sessions, idle_timeout=idle_timeout,
                         triggers=triggers)
    serve_store(store, lines, emit)
    return store


def _parse(line: str | bytes | LongLine) -> tuple[str, dict, dict | None]:
    """(session key, event, context) of one input line; ConfigError saying what is wrong."""
    if isinstance(line, LongLine):
        raise ConfigError(f"line of {line.size:,} bytes is longer than the limit of "
                          f"{MAX_LINE_BYTES:,} bytes")
    if isinstance(line, (bytes, bytearray)):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"not UTF-8: byte 0x{line[e.start]:02x} at byte {e.start + 1} "
                              f"of the line") from None
    if line[:1] == "\ufeff":  # a byte order mark some editors put first
        line = line[1:]
    if not line or line.isspace():
        raise ConfigError("blank line")
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise ConfigError(f"not JSON: {e.msg} at column {e.colno}") from None
    except ValueError:  # an integer past Python's digit limit for str -> int
        limit = getattr(sys, "get_int_max_str_digits", lambda: 4300)()
        raise ConfigError(f"not JSON this server reads: a number of more than {limit:,} digits") from None
    except RecursionError:
        raise ConfigError("not JSON this server reads: arrays or objects nested too deep") from None
    if not isinstance(record, dict):
        raise ConfigError(f"expected a JSON object, got {type(record).__name__}")
    key = record.get("session")
    if key is None or isinstance(key, (dict, list, bool)):
        raise ConfigError(f"'session' must be a string or number, got {shown(key)}")
    key = key if type(key) is str else str(key)
    if not key or key.isspace():
        raise ConfigError(f"'session' is empty: {key!r}")
    context = record.get("context")
    if context is not None and not isinstance(context, dict):
        raise ConfigError(f"'context' must be an object, got {shown(context)}")
    return key, record, context
