"""Live sessions: one event in, the updated purchase probability out, in constant time.

Every artifact carries a second, one-event graph ("step": event, h, c -> probability, h, c)
built from the same weights. A LiveSession keeps the encoder's state (last timestamp, items
seen, counters) and the LSTM's h and c together, so each click costs one encoder step and
one small invoke, however long the session already is. A SessionStore holds many live
sessions by key, bounded in number (least recently used goes first) and in idle time.

Seams: `StepModel` (the step graph on its own interpreter; Scorer.step_model loads it),
`LiveSession.push`, which goes through the Scorer's public, locked and calibrated
`Scorer.score_step`, and `SessionStore`.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from edge_runtime.backends import INTERPRETER_ERRORS, make_interpreter
from edge_runtime.errors import ArtifactError, ConfigError, first_line
from edge_runtime.features import EncoderState
from edge_runtime.native_logs import quiet_native


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

        Raises:
            ConfigError: a missing field, a non-numeric ts or an unknown event type; the
                session is left as it was.
            ArtifactError: the step graph fails to run (a damaged artifact).
        """
        scorer = self.scorer
        x = scorer.encoder.step(self.state, event)
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
    behave alike and tests need no clock. Thread-safe: one lock guards the table.

    Args:
        scorer: the loaded artifact (edge_runtime.Scorer).
        max_sessions: the most sessions held; starting one more evicts the least recently used.
        idle_timeout: seconds without an event after which a session is dropped; None keeps
            sessions until they are evicted.

    Raises:
        ConfigError: max_sessions < 1 or idle_timeout <= 0.
        ArtifactError: the scorer's artifact has no usable step graph.

    Example:
        >>> store = SessionStore(scorer, max_sessions=10_000, idle_timeout=1800)
        >>> p, gone = store.push("kiosk-7:42", {"ts": 1.7e9, "event": "view", "item": "sku1"})
    """

    def __init__(self, scorer, max_sessions: int = 10_000, idle_timeout: float | None = 1800.0) -> None:
        if max_sessions < 1:
            raise ConfigError(f"max_sessions must be >= 1, got {max_sessions}")
        if idle_timeout is not None and not idle_timeout > 0:
            raise ConfigError(f"idle_timeout must be > 0 seconds or None, got {idle_timeout}")
        # Load and check the step graph now: a damaged or missing one is refused when the
        # store is made (before `serve` reads a line), not on the first event.
        scorer.step_model()
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
            # Nothing changes until the event is known to be good: a rejected line neither
            # expires sessions (their removal would go unreported, and a NaN or infinite
            # ts would empty the table) nor starts one. A session that has itself timed out
            # starts afresh, as if it had been expired first.
            entry = self._sessions.get(key)
            if entry is not None and self._is_idle(entry[1], now) and key in self._idle_keys(now):
                entry = None
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
            removed = self._expire(now)
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

    def _is_idle(self, seen: float, now: float) -> bool:
        return self.idle_timeout is not None and now - seen > self.idle_timeout

    def _idle_keys(self, now: float) -> list[str]:
        """The keys `_expire(now)` would drop, without dropping them."""
        keys = []
        for key, (_, seen) in self._sessions.items():
            if not self._is_idle(seen, now):
                break
            keys.append(key)
        return keys

    def _expire(self, now: float) -> list[tuple[str, str, int]]:
        removed = []
        # Least recently used first: the oldest activity is at the front of the table.
        while self._sessions:
            key, (live, seen) = next(iter(self._sessions.items()))
            if not self._is_idle(seen, now):
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
