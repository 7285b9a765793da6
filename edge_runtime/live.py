"""Live sessions: one event in, the updated purchase probability out, in constant time.

Every artifact carries a second, one-event graph ("step": event, h, c -> probability, h, c)
built from the same weights. A LiveSession keeps the encoder's state (last timestamp, items
seen, counters) and the LSTM's h and c together, so each click costs one encoder step and
one small invoke, however long the session already is. A SessionStore holds many live
sessions by key, bounded in number (least recently used goes first) and in idle time.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from edge_runtime.backends import make_interpreter
from edge_runtime.errors import ArtifactError, ConfigError
from edge_runtime.features import EncoderState


class StepModel:
    """The step graph of an artifact on its own interpreter.

    Inputs and outputs are found by the signature's names (event, h, c; probability, h, c)
    and then driven by tensor index, which is cheaper per call than a SignatureRunner.
    """

    def __init__(self, model: bytes, backend: str, num_threads: int, source: str) -> None:
        try:
            self._interpreter, self.backend = make_interpreter(model, backend, num_threads)
        except ArtifactError as e:
            raise ArtifactError(f"{source}: step graph: {e}") from None
        signatures = self._interpreter._get_full_signature_list()
        try:
            sig = next(iter(signatures.values()))
            inputs, outputs = sig["inputs"], sig["outputs"]
            self._event, self._h_in, self._c_in = inputs["event"], inputs["h"], inputs["c"]
            self._p, self._h_out, self._c_out = outputs["probability"], outputs["h"], outputs["c"]
        except (StopIteration, KeyError, TypeError):
            raise ArtifactError(f"{source}: step graph lacks the event/h/c signature") from None
        details = {d["index"]: d for d in self._interpreter.get_input_details()}
        self.units = int(details[self._h_in]["shape"][1])
        self.n_features = int(details[self._event]["shape"][1])

    def __call__(self, x: np.ndarray, h: np.ndarray, c: np.ndarray
                 ) -> tuple[float, np.ndarray, np.ndarray]:
        interp = self._interpreter
        interp.set_tensor(self._event, x.reshape(1, -1))
        interp.set_tensor(self._h_in, h)
        interp.set_tensor(self._c_in, c)
        interp.invoke()
        return (float(interp.get_tensor(self._p)[0, 0]), interp.get_tensor(self._h_out),
                interp.get_tensor(self._c_out))


@dataclass(eq=False, slots=True)
class LiveSession:
    """One session being scored click by click.

    Create it with `Scorer.start_session`; call `push` with each event (a dict with the
    canonical fields ``ts``, ``event``, ``item`` and optionally ``category`` and ``price``).
    Slots and one (2, units) array for h and c keep it small: a store holds thousands.
    """

    scorer: object  # the Scorer: its encoder, step model, calibration and lock
    state: EncoderState
    hc: np.ndarray  # row 0: h, row 1: c
    probability: float | None = None
    events: int = 0

    @property
    def h(self) -> np.ndarray:
        return self.hc[0:1]

    @property
    def c(self) -> np.ndarray:
        return self.hc[1:2]

    def push(self, event: Mapping) -> float:
        """Add one event; return the purchase probability of the session so far.

        Raises:
            ConfigError: a missing field, a non-numeric ts or an unknown event type; the
                session is left as it was.
        """
        scorer = self.scorer
        x = scorer.encoder.step(self.state, event)
        with scorer._lock:
            p, h, c = scorer._step(x, self.hc[0:1], self.hc[1:2])
        self.hc = np.concatenate((h, c))
        self.events += 1
        self.probability = float(scorer._calibrate_one(p))
        return self.probability


@dataclass
class StoreStats:
    """What a SessionStore has done since it was created."""

    pushed: int = 0
    started: int = 0
    evicted_lru: int = 0
    expired_idle: int = 0
    rejected: int = 0


class SessionStore:
    """Many live sessions by key: LRU-bounded, with an idle timeout.

    Time is the events' own ``ts`` (seconds), so replaying a log and serving live clicks
    behave alike and tests need no clock. Thread-safe: one lock guards the table.

    Args:
        scorer: the loaded artifact (edge_runtime.Scorer).
        max_sessions: the most sessions held; starting one more evicts the least recently used.
        idle_timeout: seconds without an event after which a session is dropped; None keeps
            sessions until they are evicted.

    Example:
        >>> store = SessionStore(scorer, max_sessions=10_000, idle_timeout=1800)
        >>> p, gone = store.push("kiosk-7:42", {"ts": 1.7e9, "event": "view", "item": "sku1"})
    """

    def __init__(self, scorer, max_sessions: int = 10_000, idle_timeout: float | None = 1800.0) -> None:
        if max_sessions < 1:
            raise ConfigError(f"max_sessions must be >= 1, got {max_sessions}")
        if idle_timeout is not None and not idle_timeout > 0:
            raise ConfigError(f"idle_timeout must be > 0 seconds or None, got {idle_timeout}")
        self.scorer = scorer
        self.max_sessions = max_sessions
        self.idle_timeout = idle_timeout
        self.stats = StoreStats()
        self._sessions: OrderedDict[str, tuple[LiveSession, float]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, key: str) -> bool:
        return key in self._sessions

    def push(self, key: str, event: Mapping, context: Mapping | None = None
             ) -> tuple[float, list[tuple[str, str, int]]]:
        """Score ``event`` in session ``key`` (started on its first event).

        Args:
            key: the session key.
            event: a canonical event dict; its ``ts`` also drives the idle timeout.
            context: user history for a session's first event (ignored afterwards).

        Returns:
            (probability, sessions removed by this call as (key, "lru" | "idle", events)).

        Raises:
            ConfigError: the event is malformed; nothing changes.
        """
        try:
            now = float(event["ts"])
        except (KeyError, TypeError, ValueError):
            self.stats.rejected += 1
            raise ConfigError(f"event {dict(event)!r} has no numeric 'ts'") from None
        with self._lock:
            removed = self._expire(now)
            entry = self._sessions.get(key)
            if entry is None:
                live = self.scorer.start_session(context)
                fresh = True
            else:
                live, fresh = entry[0], False
            try:
                p = live.push(event)
            except ConfigError:
                self.stats.rejected += 1
                raise
            if fresh:
                self.stats.started += 1
                while len(self._sessions) >= self.max_sessions:
                    old_key, (old, _) = self._sessions.popitem(last=False)
                    self.stats.evicted_lru += 1
                    removed.append((old_key, "lru", old.events))
            self._sessions[key] = (live, now)
            self._sessions.move_to_end(key)
            self.stats.pushed += 1
            return p, removed

    def expire(self, now: float) -> list[tuple[str, str, int]]:
        """Drop sessions idle for longer than ``idle_timeout`` at time ``now`` (Unix seconds)."""
        with self._lock:
            return self._expire(now)

    def _expire(self, now: float) -> list[tuple[str, str, int]]:
        if self.idle_timeout is None:
            return []
        removed = []
        # Least recently used first: the oldest activity is at the front of the table.
        while self._sessions:
            key, (live, seen) = next(iter(self._sessions.items()))
            if now - seen <= self.idle_timeout:
                break
            del self._sessions[key]
            self.stats.expired_idle += 1
            removed.append((key, "idle", live.events))
        return removed

    def events_of(self, key: str) -> int:
        """Events pushed so far in session ``key`` (0 when it is not held)."""
        entry = self._sessions.get(key)
        return entry[0].events if entry else 0

    def end(self, key: str) -> LiveSession | None:
        """Remove a session (e.g. after checkout) and return it."""
        with self._lock:
            entry = self._sessions.pop(key, None)
            return entry[0] if entry else None
