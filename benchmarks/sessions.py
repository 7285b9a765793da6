"""The sessions a benchmark scores, as the event dicts a device would send.

Both sources go the same way: an `EventLog` is sessionized by `trainer.sessions.sessionize`
and each scorable session's prefix (its events before the first purchase, as training and
scoring see them) becomes a list of event dicts:

- `replayed_sessions`: a real log, given as an `EventLogSource` (``benchmark --data``);
- `synthetic_sessions`: the embedded default, a seeded log of `trainer.synthetic`.

`fixed_length_sessions` cuts sessions of exactly N events out of either, for the
per-length figures; `consecutive_batches` slices them into full batches, for the batch
figures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from edge_runtime.events import EVENT_CODE, PROBE_SESSION
from trainer.logsource import EventLogSource
from trainer.quarantine import BadRows
from trainer.readers import EventLog, Ids
from trainer.sessions import DEFAULT_GAP_MINUTES, sessionize
from trainer.synthetic import generate_events

REPLAY_LIMIT = 3000
SYNTHETIC_USERS, SYNTHETIC_DAYS, SYNTHETIC_SEED = 150, 5, 11


def prefix_events(log: EventLog, limit: int | None = None,
                  gap_minutes: float = DEFAULT_GAP_MINUTES) -> list[list[dict]]:
    """The scorable session prefixes of a log, in session start order, as event dicts.

    Args:
        log: canonical events.
        limit: the most sessions returned (the first by start time); None for all.
        gap_minutes: the inactivity gap that ends a session (logs without session ids).

    Returns:
        One list of canonical event dicts per session (`EventLog.event_dicts`).
    """
    sessions = sessionize(log, gap_minutes)
    return [log.event_dicts(sessions.prefix_events(int(s)))
            for s in np.flatnonzero(sessions.scorable)[:limit]]


def replayed_sessions(source: EventLogSource, limit: int = REPLAY_LIMIT) -> list[list[dict]]:
    """Scorable prefixes of a real log, read with its source's settings.

    Args:
        source: the log and how to read it; its ``gap_minutes`` where given, else 30.
        limit: the most sessions replayed (the first by start time).

    Returns:
        One list of event dicts per session (see `prefix_events`).

    Raises:
        DataError: the log cannot be read.
    """
    return prefix_events(source.read(), limit, source.session_gap(DEFAULT_GAP_MINUTES))


def synthetic_log(n_users: int = SYNTHETIC_USERS, days: int = SYNTHETIC_DAYS,
                  seed: int = SYNTHETIC_SEED) -> EventLog:
    """A seeded synthetic log (`trainer.synthetic.generate_events`) as an in-memory EventLog."""
    ev = generate_events(n_users=n_users, days=days, seed=seed)
    n = len(ev["ts"])

    def ids(values: np.ndarray) -> Ids:
        names, codes = np.unique(values.astype(str), return_inverse=True)
        return Ids(codes.astype(np.int64), names.astype(object))

    return EventLog(
        source="synthetic", format="canonical", user=ids(ev["user"]), session=None,
        ts=ev["ts"], event=np.array([EVENT_CODE[e] for e in ev["event"]], np.int8),
        item=ids(ev["item"]), category=ids(ev["category"]), price=ev["price"],
        line=np.arange(1, n + 1), rows_read=n, bad=BadRows("synthetic"), utc_offset_hours=0.0,
        has_user_ids=True)


def synthetic_sessions(n_users: int = SYNTHETIC_USERS) -> list[list[dict]]:
    """The embedded default: the scorable prefixes of a seeded synthetic log.

    Args:
        n_users: users of the synthetic log (5 days of browsing each).

    Returns:
        One list of event dicts per session (see `prefix_events`).
    """
    return prefix_events(synthetic_log(n_users))


def fixed_length_sessions(sessions: Sequence[Sequence[Mapping]], length: int, count: int = 200
                          ) -> list[list[dict]]:
    """Sessions of exactly ``length`` events, cut from the given ones (stitched if short),
    with timestamps re-spaced so that every event is 30 s after the one before.

    Args:
        sessions: the sessions to cut from (`PROBE_SESSION` when there is none).
        length: events per session.
        count: how many sessions.

    Returns:
        ``count`` lists of ``length`` event dicts.
    """
    pool = [dict(e) for s in sessions for e in s] or [dict(e) for e in PROBE_SESSION]
    out = []
    for k in range(count):
        # 7919 (a prime) spreads the cuts over the pool so that the sessions differ.
        start = (k * 7919) % len(pool)
        events = [dict(pool[(start + i) % len(pool)]) for i in range(length)]
        for i, e in enumerate(events):
            e["ts"] = 1.7e9 + 86400 * k + 30.0 * i
        out.append(events)
    return out


def consecutive_batches(sessions: Sequence[Sequence[Mapping]], size: int, at_least: int = 0
                        ) -> list[list]:
    """The sessions in consecutive batches of ``size``, in their order, cycled so that every
    batch is full and every session is in one at least.

    Args:
        sessions: the sessions (any items: event dicts or encoded arrays).
        size: sessions per batch, >= 1.
        at_least: the fewest sessions in all the batches together (cycling as needed).

    Returns:
        ``ceil(max(at_least, len(sessions)) / size)`` lists of ``size`` sessions; none
        without sessions.

    Example:
        >>> consecutive_batches(["a", "b", "c"], 2)
        [['a', 'b'], ['c', 'a']]
    """
    n = len(sessions)
    if not n:
        return []
    count = -(-max(at_least, n) // size)
    return [[sessions[(k * size + i) % n] for i in range(size)] for k in range(count)]
