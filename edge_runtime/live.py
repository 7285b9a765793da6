"""Live sessions: one event in, the updated purchase probability out, in constant time.

Every artifact carries a second, one-event graph ("step": event, h, c -> probability, h, c)
built from the same weights. A LiveSession keeps the encoder's state (last timestamp, items
seen, counters) and the LSTM's h and c together, so each click costs one encoder step and
one small invoke, however long the session already is. A SessionStore holds many live
sessions by key, bounded in number (least recently used goes first) and in idle time.

Memory is bounded: a live session holds fixed-size counters, the LSTM state and at most
edge_runtime.features.MAX_REMEMBERED_IDS 8-byte digests of item ids (and as many of
category ids); a store holds at most ``max_sessions`` of them, under keys of at most
MAX_KEY_CHARS characters.

Seams: `StepModel` (the step graph on its own interpreter; Scorer.step_model loads it),
`LiveSession.push` (checks the event with edge_runtime.events.canonical_event) and
`push_event`, which go through the Scorer's public, locked and calibrated
`Scorer.score_step`, and `SessionStore`.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from edge_runtime.backends import INTERPRETER_ERRORS, make_interpreter
from edge_runtime.errors import ArtifactError, ConfigError, first_line
from edge_runtime.events import Event, canonical_event, check_time, shown
from edge_runtime.features import EncoderState
from edge_runtime.native_logs import quiet_native

# The longest session key a SessionStore holds: keys are kept (and echoed by `serve`), so
# their length is part of the store's memory bound.
MAX_KEY_CHARS = 512

# A push to a LiveSession runs under one of these locks, picked by the session's identity:
# the encoder state and h/c advance together even when two threads push to one session.
# A table rather than a lock per session: a store holds thousands of sessions, and two
# sessions that share a lock only wait for each other's few microseconds.
_PUSH_LOCKS = tuple(threading.Lock() for _ in range(64))


class StepModel:
    """The step graph of an artifact on its own interpreter.

    Inputs and outputs are found by the signature's names (event, h, c; probability, h, c)
    and then driven by tensor index, which is cheaper per call than a SignatureRunner.
    """

    def __init__(self, model: bytes, backend: str, num_threads: int, source: str,
                 n_features: int | None = None) -> None:
        """Load and check the step graph.

        Args:
            model: the step graph's .tflite bytes.
            backend, num_threads: as edge_runtime.backends.make_interpreter.
            source: the artifact's name, for messages.
            n_features: the width the artifact's FeatureSpec gives an event; None skips the check.

        Raises:
            ArtifactError: the graph does not load, lacks the event/h/c signature, has tensors
                of the wrong shape or type, or fails on a blank event.
        """
        self.source = source
        with quiet_native():  # the error raised here carries what the interpreter printed
            try:
                self._interpreter, self.backend = make_interpreter(model, backend, num_threads)
            except ArtifactError as e:
                raise type(e)(f"{source}: step graph: {e}") from None
        ports = self._signature_ports()
        shape = self._check_ports(ports)
        self.units = shape["h"][1] if len(shape["h"]) == 2 else 0
        self.n_features = shape["event"][1] if len(shape["event"]) == 2 else 0
        expected = {"event": [1, n_features if n_features is not None else self.n_features],
                    "h": [1, self.units], "c": [1, self.units], "probability": [1, 1],
                    "h out": [1, self.units], "c out": [1, self.units]}
        for what, want in expected.items():
            if shape[what] != want or min(want) < 1:
                raise ArtifactError(f"{source}: step graph tensor {what!r} has shape "
                                    f"{shape[what]}, expected {want}")
        self._state_shape = (1, self.units)
        # One blank event now: a graph that cannot run is refused when the session starts.
        zeros = np.zeros((1, self.units), np.float32)
        p, _, _ = self(np.zeros(self.n_features, np.float32), zeros, zeros)
        if not np.isfinite(p):
            raise ArtifactError(f"{source}: step graph is corrupted: it scores a blank event {p}")

    def _signature_ports(self) -> dict[str, int]:
        """Tensor index of each port, found by the signature's names; ArtifactError without
        the event/h/c signature."""
        try:
            signatures = self._interpreter._get_full_signature_list()
            sig = next(iter(signatures.values()))
            inputs, outputs = sig["inputs"], sig["outputs"]
            self._event, self._h_in, self._c_in = inputs["event"], inputs["h"], inputs["c"]
            self._p, self._h_out, self._c_out = outputs["probability"], outputs["h"], outputs["c"]
        except (StopIteration, KeyError, TypeError, AttributeError):
            raise ArtifactError(f"{self.source}: step graph lacks the event/h/c signature") from None
        except INTERPRETER_ERRORS as e:
            raise ArtifactError(f"{self.source}: step graph is corrupted: {first_line(e)}") from None
        return {"event": self._event, "h": self._h_in, "c": self._c_in,
                "probability": self._p, "h out": self._h_out, "c out": self._c_out}

    def _check_ports(self, ports: dict[str, int]) -> dict[str, list[int]]:
        """The shape of each port; ArtifactError unless each is a float32 input or output.

        A damaged signature can name any tensor: each is checked here, so that pushing an
        event cannot fail on them later (or feed an array of the wrong size).
        """
        try:
            details = {d["index"]: d for d in (*self._interpreter.get_input_details(),
                                               *self._interpreter.get_output_details())}
        except INTERPRETER_ERRORS as e:
            raise ArtifactError(f"{self.source}: step graph is corrupted: {first_line(e)}") from None
        for what, index in ports.items():
            if index not in details:
                raise ArtifactError(f"{self.source}: step graph signature maps {what!r} to tensor "
                                    f"{index}, which is not an input or output of the graph")
            if np.dtype(details[index]["dtype"]) != np.float32:
                raise ArtifactError(f"{self.source}: step graph tensor {what!r} is "
                                    f"{np.dtype(details[index]['dtype']).name}, expected float32")
        return {what: [int(v) for v in details[index]["shape"]] for what, index in ports.items()}

    def __call__(self, x: np.ndarray, h: np.ndarray, c: np.ndarray
                 ) -> tuple[float, np.ndarray, np.ndarray]:
        """One event: (probability, new h, new c), uncalibrated and unlocked (Scorer.score_step
        adds both).

        Args:
            x: the encoded event (F,), float32.
            h, c: the LSTM state, float32 (1, units) each.

        Raises:
            ArtifactError: the graph fails to run or returns outputs of the wrong shape.
        """
        interp = self._interpreter
        try:
            interp.set_tensor(self._event, x.reshape(1, -1))
            interp.set_tensor(self._h_in, h)
            interp.set_tensor(self._c_in, c)
            interp.invoke()
            p = interp.get_tensor(self._p)
            h, c = interp.get_tensor(self._h_out), interp.get_tensor(self._c_out)
        except INTERPRETER_ERRORS as e:
            raise ArtifactError(f"{self.source}: step graph failed to run: "
                                f"{first_line(e)}") from None
        # Checked at load, but a damaged graph can resize its outputs when it runs.
        if p.size != 1 or h.shape != self._state_shape or c.shape != self._state_shape:
            raise ArtifactError(f"{self.source}: step graph failed to run: outputs of shapes "
                                f"{list(p.shape)}, {list(h.shape)}, {list(c.shape)}, expected "
                                f"[1, 1], {list(self._state_shape)}, {list(self._state_shape)}")
        return float(p.reshape(-1)[0]), h, c


@dataclass(eq=False, slots=True)
class LiveSession:
    """One session being scored click by click.

    Create it with `Scorer.start_session`; call `push` with each event (a dict with the
    canonical fields ``ts``, ``event``, ``item`` and optionally ``category`` and ``price``).
    Slots and one (2, units) array for h and c keep it small: a store holds thousands.

    Thread safety: a push is atomic (the encoder state, h and c and the counters advance
    together), so one session may be pushed from several threads; its events are then
    taken in the order the pushes get the session's lock.
    """

    scorer: object  # the Scorer: its encoder and its locked, calibrated score_step
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

        Args:
            event: a canonical event dict, checked by edge_runtime.events.canonical_event.

        Raises:
            ConfigError: the event breaks a rule of `canonical_event` (the message names the
                field and value); the session is left as it was.
            ArtifactError: the step graph fails to run (a damaged artifact).
        """
        return self.push_event(canonical_event(event))

    def push_event(self, event: Event) -> float:
        """`push` for an event `canonical_event` has already checked.

        Raises:
            ArtifactError: as `push`.
        """
        with _PUSH_LOCKS[(id(self) >> 4) % len(_PUSH_LOCKS)]:
            return self.step_locked(event)

    def step_locked(self, event: Event) -> float:
        """`push_event` for a caller that already serialises the pushes to this session (a
        SessionStore holds its own lock while it pushes).

        Raises:
            ArtifactError: as `push`.
        """
        scorer = self.scorer
        x = scorer.encoder.step_event(self.state, event)
        p, self.hc = scorer.score_step(x, self.hc)
        self.events += 1
        self.probability = float(p)
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
    behave alike and tests need no clock. Thread-safe: one lock guards the table, and a
    push holds it, so pushes (to one key or to many) are serialised.

    The clock. Times outside 2000..2100 are refused, as the readers refuse them
    (edge_runtime.events.canonical_event). The store's clock, which decides when a session
    has been idle too long, is the latest event time that two different session keys have
    reached; it never goes back. One session, whatever its device's clock says (a time in
    2099, a time zone hours off), cannot move it and so cannot expire the others, while a
    genuine pause in the stream is caught up as soon as two sessions have sent an event
    after it. A session's last activity is its last event's time, but never later than the
    clock: the time only it claims counts once another key has reached it. A session
    expires when the clock is more than ``idle_timeout`` past its last activity. Its own
    next event is judged by its own clock: coming more than ``idle_timeout`` after the
    session's previous event, it finds the session idle (reported so) and starts it afresh.
    Until two keys have sent an event nothing expires on the clock. Two keys with the same
    wrong clock (one device opening several sessions) do move it.

    Args:
        scorer: the loaded artifact (edge_runtime.Scorer).
        max_sessions: the most sessions held; starting one more evicts the least recently used.
        idle_timeout: seconds without an event after which a session is dropped; None keeps
            sessions until they are evicted.

    Raises:
        ConfigError: max_sessions < 1 or idle_timeout <= 0 (`check_limits`, which a
            command calls first to name its options instead).
        ArtifactError: the scorer's artifact has no usable step graph.

    Example:
        >>> store = SessionStore(scorer, max_sessions=10_000, idle_timeout=1800)
        >>> p, gone = store.push("kiosk-7:42", {"ts": 1.7e9, "event": "view", "item": "sku1"})
    """

    def __init__(self, scorer, max_sessions: int = 10_000, idle_timeout: float | None = 1800.0) -> None:
        check_limits(max_sessions, idle_timeout)
        # Load and check the step graph now: a damaged or missing one is refused when the
        # store is made (before `serve` reads a line), not on the first event.
        scorer.step_model()
        self.scorer = scorer
        self.max_sessions = max_sessions
        self.idle_timeout = idle_timeout
        self.stats = StoreStats()
        # key -> (session, its last activity: min(its last event's time, the clock)); least
        # recently used first, so expiry stops at the first fresh one from the front.
        self._sessions: OrderedDict[str, tuple[LiveSession, float]] = OrderedDict()
        self._lock = threading.Lock()
        # The clock: the key with the latest time and that time, and the latest time of any
        # other key (the clock follows the latter).
        self._lead_key: object = None
        self._lead_ts = -math.inf
        self._second_ts = -math.inf
        self._clock = -math.inf

    @property
    def clock(self) -> float | None:
        """The store's clock (Unix seconds), None until two session keys have sent an event."""
        return None if self._clock == -math.inf else self._clock

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, key: str) -> bool:
        return key in self._sessions

    def push(self, key: str, event: Mapping, context: Mapping | None = None
             ) -> tuple[float, list[tuple[str, str, int]]]:
        """Score ``event`` in session ``key`` (started on its first event).

        Args:
            key: the session key, at most MAX_KEY_CHARS characters.
            event: a canonical event dict (edge_runtime.events.canonical_event); its ``ts``
                also drives the idle timeout (see the class's note on the clock).
            context: user history for a session's first event (ignored afterwards).

        Returns:
            (probability, sessions removed by this call as (key, "lru" | "idle", events)):
            the session's own restart first, then the sessions the clock expired (oldest
            first), then the one evicted to make room.

        Raises:
            ConfigError: the key is too long or the event is malformed; nothing changes
                (the rejection is counted in ``stats.rejected``).
        """
        try:
            if isinstance(key, str) and len(key) > MAX_KEY_CHARS:
                raise ConfigError(f"session key of {len(key):,} characters is longer than "
                                  f"{MAX_KEY_CHARS}: {shown(key)}")
            checked = canonical_event(event)
        except ConfigError:
            with self._lock:
                self.stats.rejected += 1
            raise
        now = checked.ts
        sessions, timeout = self._sessions, self.idle_timeout
        with self._lock:
            # Nothing changes until the event is scored: a rejected or failed push neither
            # expires sessions nor starts one.
            entry = sessions.get(key)
            restarted = (entry is not None and timeout is not None
                         and now - entry[0].state.last_ts > timeout)
            if entry is None or restarted:
                try:
                    live = self.scorer.start_session(context)
                except ConfigError:  # a malformed context
                    self.stats.rejected += 1
                    raise
            else:
                live = entry[0]
            p = live.step_locked(checked)  # the store's lock serialises its sessions' pushes
            removed = []
            if restarted:
                del sessions[key]
                self.stats.expired_idle += 1
                removed.append((key, "idle", entry[0].events))
            if key != self._lead_key:
                self._advance(key, now)
            elif now > self._lead_ts:
                self._lead_ts = now
            if timeout is not None and sessions:
                self._expire(removed)
            if key not in sessions:
                self.stats.started += 1
                while len(sessions) >= self.max_sessions:
                    old_key, (old, _) = sessions.popitem(last=False)
                    self.stats.evicted_lru += 1
                    removed.append((old_key, "lru", old.events))
            sessions[key] = (live, now if now < self._clock else self._clock)
            sessions.move_to_end(key)
            self.stats.pushed += 1
            return p, removed

    def expire(self, now: float) -> list[tuple[str, str, int]]:
        """Move the clock to ``now`` (Unix seconds; it never goes back) and drop the sessions
        idle for longer than ``idle_timeout`` by it, e.g. from a timer on the wall clock.

        Returns:
            The sessions removed, as (key, "idle", events), oldest first.

        Raises:
            ConfigError: ``now`` is not a time within 2000..2100.
        """
        now = check_time(now)
        with self._lock:
            self._set_clock(now)
            removed: list[tuple[str, str, int]] = []
            if self.idle_timeout is not None:
                self._expire(removed)
            return removed

    def _advance(self, key: str, ts: float) -> None:
        """Move the clock with an event at ``ts`` of ``key``, which is not the leading key:
        to the latest time that two different keys have reached."""
        if ts > self._lead_ts:
            overtaken = self._lead_key
            self._second_ts, self._lead_key, self._lead_ts = self._lead_ts, key, ts
            self._set_clock(self._second_ts)
            # The former leader's time is now reached by another key: it counts in full.
            entry = self._sessions.get(overtaken)
            if entry is not None:
                self._sessions[overtaken] = (entry[0], min(entry[0].state.last_ts, self._clock))
        elif ts > self._second_ts:
            self._second_ts = ts
            self._set_clock(ts)

    def _set_clock(self, now: float) -> None:
        if now <= self._clock:
            return
        if self._clock == -math.inf:
            # Sessions seen before the clock started (of one key) get their activity now.
            for key, (live, _) in self._sessions.items():
                self._sessions[key] = (live, min(live.state.last_ts, now))
        self._clock = now

    def _expire(self, removed: list[tuple[str, str, int]]) -> None:
        """Drop the sessions idle by the clock onto ``removed`` (``idle_timeout`` is set)."""
        sessions, clock, timeout = self._sessions, self._clock, self.idle_timeout
        # Least recently used first: the oldest activity is at the front of the table.
        while sessions:
            key, (live, seen) = next(iter(sessions.items()))
            if not clock - seen > timeout:
                break
            del sessions[key]
            self.stats.expired_idle += 1
            removed.append((key, "idle", live.events))

    def events_of(self, key: str) -> int:
        """Events pushed so far in session ``key`` (0 when it is not held)."""
        entry = self._sessions.get(key)
        return entry[0].events if entry else 0

    def end(self, key: str) -> LiveSession | None:
        """Remove a session (e.g. after checkout) and return it."""
        with self._lock:
            entry = self._sessions.pop(key, None)
            return entry[0] if entry else None


def check_limits(max_sessions: int, idle_timeout: float | None,
                 names: tuple[str, str] = ("max_sessions", "idle_timeout")) -> None:
    """Check a SessionStore's bounds.

    Args:
        max_sessions, idle_timeout: as SessionStore.
        names: what the caller's user calls them, for the message (a command passes its
            options, ``("--max-sessions", "--idle-timeout")``).

    Raises:
        ConfigError: ``max_sessions`` is not a whole number >= 1, or ``idle_timeout`` is not
            a number of seconds > 0 (nor None); the message names the value.
    """
    if isinstance(max_sessions, (bool, np.bool_)) or not isinstance(max_sessions, (int, np.integer)) \
            or max_sessions < 1:
        raise ConfigError(f"{names[0]} must be a whole number >= 1, got {max_sessions!r}")
    if idle_timeout is None:
        return
    try:  # infinity is allowed: no session then times out
        ok = not isinstance(idle_timeout, (bool, np.bool_)) and float(idle_timeout) > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(f"{names[1]} must be a number of seconds > 0, got {idle_timeout!r}")
