"""Sessions, labels, user-history context and the time-ordered split.

A session is the log's own session id where it has one, else a run of one user's events
with no gap longer than ``gap_minutes``. The label is whether the session contains a
purchase; the model's input is the events before the first purchase. Sessions whose
first event is a purchase have an empty prefix: they are counted, never scored.

Seams: `sessionize` (EventLog -> Sessions), `user_history` (the context features),
`time_split` (Sessions -> Split, whose parts are named by trainer.rundir.SPLIT_NAMES), `key_digests`
(what split.json and `compare` match sessions by).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from edge_runtime.errors import ConfigError
from edge_runtime.events import CART, PURCHASE
from edge_runtime.features import CONTEXT_FIELDS
from trainer.readers import EventLog
from trainer.rundir import SPLIT_NAMES

DEFAULT_GAP_MINUTES = 30.0


@dataclass
class Sessions:
    """Every session of a log, events contiguous and time-ordered.

    Attributes:
        log: the EventLog the sessions index into.
        order: event indices of the log, session after session.
        offsets: session ``s`` is ``order[offsets[s]:offsets[s+1]]``.
        key: a stable key per session (the log's session id, else ``user@start``).
        user_code: the user of each session (code into ``log.user.names``).
        start, end: first and last timestamp of each session.
        prefix_len: events before the first purchase (all events when there is none).
        label: 1 when the session contains a purchase.
        context: (n_sessions, len(CONTEXT_FIELDS)) user history before each session's start.
    """

    log: EventLog
    order: np.ndarray
    offsets: np.ndarray
    key: np.ndarray
    user_code: np.ndarray
    start: np.ndarray
    end: np.ndarray
    prefix_len: np.ndarray
    label: np.ndarray
    context: np.ndarray
    gap_minutes: float | None

    def __len__(self) -> int:
        return len(self.key)

    @property
    def scorable(self) -> np.ndarray:
        """Sessions with at least one event before their first purchase."""
        return self.prefix_len > 0

    def prefix_events(self, s: int) -> np.ndarray:
        """Log indices of session ``s``'s events before its first purchase."""
        a = self.offsets[s]
        return self.order[a:a + self.prefix_len[s]]

    def user_of(self, s: int) -> str | None:
        """The user id of session ``s`` as the log wrote it; None where the log has no user
        ids (its sessions' users are then their session ids, not people)."""
        return str(self.log.user.names[self.user_code[s]]) if self.log.has_user_ids else None

    def summary(self) -> dict:
        return {
            "sessions": int(len(self)),
            "sessions_with_purchase": int(self.label.sum()),
            "sessions_excluded_empty_prefix": int((~self.scorable).sum()),
            "sessions_scorable": int(self.scorable.sum()),
        }


def sessionize(log: EventLog, gap_minutes: float = DEFAULT_GAP_MINUTES,
               use_log_sessions: bool = True, shared_sessions: set[str] | None = None) -> Sessions:
    """Group a log's events into sessions and label them.

    Args:
        log: canonical events.
        gap_minutes: the inactivity gap that ends a session, used when the log has no
            session ids (or ``use_log_sessions`` is False).
        use_log_sessions: use the log's own session id where it has one.
        shared_sessions: the log's session ids that hold events of more than one user, when
            ``log`` is a part of the whole log (a partition of users): their sessions are keyed
            ``SESSION@USER``. None: found in ``log`` itself.

    Returns:
        Sessions, ordered by start time (ties by key).

    Raises:
        ConfigError: a non-positive gap.
    """
    if not gap_minutes > 0:
        raise ConfigError(f"--gap-minutes must be > 0, got {gap_minutes}")
    n = len(log)
    idx = np.arange(n)
    if use_log_sessions and log.session is not None:
        # Stable sort: equal timestamps keep file order, which is the log's own order. A session
        # id never joins two people: where user ids name people, its events of each user are a
        # session of their own (elsewhere the user is the session's stand-in: DIGINETICA
        # purchases carry no user id where the views have one).
        people = log.user.codes if log.has_user_ids else np.zeros(n, np.int64)
        order = np.lexsort((idx, log.ts, people, log.session.codes))
        group, person = log.session.codes[order], people[order]
        new = np.r_[True, (group[1:] != group[:-1]) | (person[1:] != person[:-1])]
        gap = None
    else:
        order = np.lexsort((idx, log.ts, log.user.codes))
        u, t = log.user.codes[order], log.ts[order]
        new = np.r_[True, (u[1:] != u[:-1]) | (np.diff(t) > gap_minutes * 60.0)]
        gap = gap_minutes
    offsets = np.r_[np.flatnonzero(new), n].astype(np.int64)
    first = order[offsets[:-1]]
    last = order[offsets[1:] - 1]
    start, end = log.ts[first], log.ts[last]
    user_code = log.user.codes[first]
    if gap is None:
        key = _log_session_keys(log, first, shared_sessions)
    else:
        key = _unique_keys([f"{u}@{int(s)}" for u, s in zip(log.user.names[user_code], start, strict=True)])

    # Reorder sessions by start time so that splits and reports read chronologically.
    by_start = np.lexsort((key.astype(str), start))
    lengths = np.diff(offsets)[by_start]
    moved = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    order = order[np.repeat(offsets[:-1][by_start] - moved[:-1], lengths) + np.arange(n)]
    offsets = moved
    key, user_code, start, end = key[by_start], user_code[by_start], start[by_start], end[by_start]

    label, prefix_len = _labels(log.event[order], offsets)
    sessions = Sessions(log=log, order=order, offsets=offsets, key=key, user_code=user_code,
                        start=start, end=end, prefix_len=prefix_len, label=label,
                        context=np.zeros((len(lengths), len(CONTEXT_FIELDS)), np.float64),
                        gap_minutes=gap)
    if log.has_user_ids:
        sessions.context = user_history(sessions)
    return sessions


def _labels(events: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per session (events ``offsets[s]:offsets[s+1]``): 1 when it holds a purchase (int8),
    and the number of events before its first purchase (all of them when there is none)."""
    lengths = np.diff(offsets)
    n = len(events)
    is_buy = events == PURCHASE
    session_of = np.repeat(np.arange(len(lengths)), lengths)
    label = np.zeros(len(lengths), np.int8)
    label[session_of[is_buy]] = 1
    pos = np.arange(n) - offsets[session_of] if n else np.zeros(0, np.int64)
    first_buy = np.full(len(lengths), -1, np.int64)
    # The first purchase of each session: the smallest position among its purchases.
    buy_sessions, buy_pos = session_of[is_buy], pos[is_buy]
    if len(buy_sessions):
        rev = np.argsort(buy_pos)[::-1]
        first_buy[buy_sessions[rev]] = buy_pos[rev]
    return label, np.where(first_buy >= 0, first_buy, lengths).astype(np.int64)


def _log_session_keys(log: EventLog, first: np.ndarray, shared: set[str] | None) -> np.ndarray:
    """Keys of log sessions (first event of each at ``first``): the session id, or
    ``SESSION@USER`` for an id that holds events of several people (REES46 has one)."""
    names = log.session.names[log.session.codes[first]]
    if not log.has_user_ids:
        return names
    if shared is None:
        per_id = np.bincount(log.session.codes[first], minlength=len(log.session.names))
        spans = per_id[log.session.codes[first]] > 1
    else:
        spans = np.isin(names.astype(str), np.array(sorted(shared), dtype=str)) if shared else \
            np.zeros(len(names), bool)
    if not spans.any():
        return names
    users = log.user.names[log.user.codes[first]]
    return np.array([f"{k}@{u}" if span else k for k, u, span in zip(names, users, spans, strict=True)],
                    object)


def shared_session_ids(log: EventLog) -> set[str]:
    """The log's session ids that hold events of more than one user (where ids name people)."""
    if log.session is None or len(log) == 0 or not log.has_user_ids:
        return set()
    pairs = np.unique(np.stack([log.session.codes, log.user.codes]), axis=1)
    per_id = np.bincount(pairs[0], minlength=len(log.session.names))
    return set(log.session.names[np.flatnonzero(per_id > 1)].tolist())


def key_digests(keys: np.ndarray) -> np.ndarray:
    """A 16-hex-digit SHA-256 digest per session key. Keys of gap sessions hold user ids;
    what the run directory stores is the digest, which matches a key without revealing it."""
    return np.array([hashlib.sha256(str(k).encode("utf-8")).hexdigest()[:16] for k in keys], dtype=str)


def _unique_keys(keys: list[str]) -> np.ndarray:
    """Keys made unique by a ``#n`` suffix (two sessions of a user in one second)."""
    seen: dict[str, int] = {}
    out = []
    for key in keys:
        n = seen.get(key, 0)
        seen[key] = n + 1
        out.append(key if n == 0 else f"{key}#{n}")
    return np.array(out, object)


def user_history(sessions: Sessions) -> np.ndarray:
    """Per session, what the same user did before that session started.

    Columns follow edge_runtime.features.CONTEXT_FIELDS: sessions the user started earlier,
    the user's purchases, and items carted and not bought, counting only events with a
    timestamp before this session's start. Nothing leaks from the session itself, nor from
    an earlier session that overlaps it (logs with their own session ids can overlap).

    Vectorised: events and session starts are merged in (user, time) order, a start before
    the events of its own second, and running sums are read at each start. "Carted and not
    bought" is a set per user (a cart adds the item, a purchase removes it), so each cart or
    purchase contributes +1, -1 or 0 by what the same user last did to the same item.
    """
    log = sessions.log
    out = np.zeros((len(sessions), len(CONTEXT_FIELDS)), np.float64)
    n_events, n_sessions = len(log), len(sessions)
    if n_sessions == 0:
        return out
    users, items, events = log.user.codes, log.item.codes, log.event
    is_buy = events == PURCHASE
    # Open-cart changes: carts and purchases of one (user, item), in the order they happened.
    touch = np.flatnonzero((events == CART) | is_buy)
    touch = touch[np.lexsort((touch, log.ts[touch], items[touch], users[touch]))]
    touch_user, touch_item = users[touch], items[touch]
    same_item = np.r_[False, (touch_user[1:] == touch_user[:-1]) & (touch_item[1:] == touch_item[:-1])]
    cart = events[touch] == CART
    was_open = np.r_[False, cart[:-1]] & same_item
    delta = np.zeros(n_events, np.int64)
    delta[touch] = np.where(cart, ~was_open, -was_open.astype(np.int64))

    # Events and session starts in one (user, time) order; at equal times the start first.
    merged_user = np.r_[users, sessions.user_code]
    order = np.lexsort((np.r_[np.ones(n_events, np.int8), np.zeros(n_sessions, np.int8)],
                        np.r_[log.ts, sessions.start], merged_user))
    buys = np.cumsum(np.r_[is_buy.astype(np.int64), np.zeros(n_sessions, np.int64)][order])
    open_cart = np.cumsum(np.r_[delta, np.zeros(n_sessions, np.int64)][order])
    at = np.empty(len(order), np.int64)
    at[order] = np.arange(len(order))
    here = at[n_events:]  # each session's place in the merged order
    user_first = np.searchsorted(merged_user[order], sessions.user_code, side="left")
    before = user_first - 1

    def since_user_start(running: np.ndarray) -> np.ndarray:
        return running[here] - np.where(before >= 0, running[np.maximum(before, 0)], 0)

    # Sessions the user started strictly earlier: the first of its (user, start) group's rank.
    by_user = np.lexsort((sessions.start, sessions.user_code))
    u, t = sessions.user_code[by_user], sessions.start[by_user]
    new_user = np.r_[True, u[1:] != u[:-1]]
    new_time = new_user | np.r_[True, t[1:] != t[:-1]]
    rank = np.arange(n_sessions)
    group_first = np.maximum.accumulate(np.where(new_time, rank, 0))
    user_start = np.maximum.accumulate(np.where(new_user, rank, 0))
    earlier = np.empty(n_sessions, np.int64)
    earlier[by_user] = group_first - user_start
    out[:, 0] = earlier
    out[:, 1] = since_user_start(buys)
    out[:, 2] = since_user_start(open_cart)
    return out


@dataclass(frozen=True)
class Split:
    """Session indices of a time-ordered split, and the start times that cut it."""

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    validation_from: float
    test_from: float

    def parts(self) -> dict[str, np.ndarray]:
        """Session indices per split name, in SPLIT_NAMES order."""
        return {name: getattr(self, name) for name in SPLIT_NAMES}

    def manifest(self, sessions: Sessions) -> dict:
        """What split.json holds: the rule, the cut times, and per split its session count,
        purchasing sessions and session-key digests (no raw ids)."""
        def part(ix: np.ndarray) -> dict:
            return {"sessions": int(len(ix)), "positives": int(sessions.label[ix].sum()),
                    "session_digests": key_digests(sessions.key[ix]).tolist()}
        return {"rule": "by session start; a session belongs to exactly one split",
                "session_digests": "first 16 hex digits of SHA-256 of the session key "
                                   "(trainer.sessions.key_digests); no raw user ids are stored",
                "validation_from_ts": self.validation_from, "test_from_ts": self.test_from,
                **{name: part(ix) for name, ix in self.parts().items()}}


def share_problems(validation: float, test: float) -> list[str]:
    """What is wrong with the split shares ``--validation`` and ``--test`` (none: []), for the
    configuration checks of `prepare` and `train`."""
    problems = [f"--{name} must be a share in (0, 1), got {value}"
                for name, value in (("validation", validation), ("test", test)) if not 0 < value < 1]
    if not problems and not validation + test < 1:
        problems.append(f"--validation {validation} and --test {test} leave no training sessions "
                        f"(their sum must be below 1)")
    return problems


def split_sizes(n: int, validation: float, test: float) -> tuple[int, int, int]:
    """Sessions in the train, validation and test parts of ``n`` scorable sessions (the
    in-memory split and `prepare`'s, which counts before it sorts, use this one rule).

    Raises:
        ConfigError: a part would be empty.
    """
    n_test = int(round(n * test))
    n_val = int(round(n * validation))
    n_train = n - n_val - n_test
    if min(n_train, n_val, n_test) < 1:
        raise ConfigError(f"{n} scorable sessions cannot be split {1 - validation - test:.2f}/"
                          f"{validation:.2f}/{test:.2f}: a split would be empty")
    return n_train, n_val, n_test


def time_split(sessions: Sessions, validation: float = 0.15, test: float = 0.15) -> Split:
    """Split scorable sessions by start time: the oldest train, then validation, then test.

    Args:
        sessions: sessions ordered by start (as `sessionize` returns them).
        validation, test: fractions of the scorable sessions.

    Raises:
        ConfigError: fractions outside (0, 1) or leaving no training data.
    """
    if not (0 < validation < 1 and 0 < test < 1 and validation + test < 1):
        raise ConfigError(f"split fractions validation={validation}, test={test}: each must be in "
                          f"(0, 1) and their sum below 1")
    ix = np.flatnonzero(sessions.scorable)
    ix = ix[np.argsort(sessions.start[ix], kind="stable")]
    n_train, n_val, _ = split_sizes(len(ix), validation, test)
    train, val, tst = ix[:n_train], ix[n_train:n_train + n_val], ix[n_train + n_val:]
    return Split(train, val, tst, float(sessions.start[val[0]]), float(sessions.start[tst[0]]))
