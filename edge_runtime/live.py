"""Live sessions: one event in, the updated purchase probability out, in constant time.

Every artifact carries a second, one-event graph, its ``step`` signature (event, h, c ->
probability, h, c), built from the same weights. A LiveSession keeps the encoder's state
(last timestamp, items seen, counters) and the LSTM's h and c together, so each click costs
one encoder step and one small invoke, however long the session already is. A SessionStore holds many live
sessions by key, bounded in number (least recently used goes first) and in idle time, as
rows of columns rather than LiveSession objects (about 1.3 KB a session at 128 units, 1 KB
of it h and c); each of its events gives exactly the probability a LiveSession gives.

Memory is bounded: a live session holds fixed-size counters, the LSTM state and at most
edge_runtime.features.MAX_REMEMBERED_IDS 8-byte digests of item ids (and as many of
category ids); a store holds at most ``max_sessions`` of them, under keys of at most
MAX_KEY_CHARS characters.

Seams: `StepModel` (the step graph on its own interpreter and lock; Scorer.step_model loads
it), `LiveSession.push` (checks the event with edge_runtime.events.canonical_event) and
`push_event`, which go through the Scorer's public, locked and calibrated
`Scorer.score_step`, and `SessionStore`, which runs the encoder's `step_features` on its
columns and the StepModel under its lock, and, given an edge_runtime.tiers.TriggerRule, says
which tiers each event's session has just climbed into (`SessionStore.push_with_triggers`).
"""

from __future__ import annotations

import math
import threading
from array import array
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from edge_runtime.backends import INTERPRETER_ERRORS, make_interpreter
from edge_runtime.errors import ArtifactError, ConfigError, first_line
from edge_runtime.events import CART, Event, canonical_event, check_time, shown
from edge_runtime.features import (
    NO_CONTEXT,
    NO_CONTEXT_LOGS,
    NO_TARGETS,
    EncoderState,
    RememberedIds,
    id_digest,
)
from edge_runtime.native_logs import quiet_native

if TYPE_CHECKING:
    from edge_runtime.tiers import TriggerRule

# The longest session key a SessionStore holds: keys are kept (and echoed by `serve`), so
# their length is part of the store's memory bound.
MAX_KEY_CHARS = 512

# A push to a LiveSession runs under one of these locks, picked by the session's identity:
# the encoder state and h/c advance together even when two threads push to one session.
# A table rather than a lock per session: a process may hold thousands of sessions, and two
# sessions that share a lock only wait for each other's few microseconds.
_PUSH_LOCKS = tuple(threading.Lock() for _ in range(64))

# A SessionStore's LSTM states are allocated this many rows at a time (1 MB at 128 units):
# the store grows with its sessions, never beyond ``max_sessions`` rows, and never copies.
ROWS_PER_BLOCK = 1024


class StepModel:
    """The step graph of an artifact on its own interpreter: the model's ``step`` signature
    (edge_runtime.artifact.STEP_SIGNATURE), or, in an artifact of version 1, the only
    signature of the step model it carried in metadata.

    Inputs and outputs are found by the signature's names (event, h, c; probability, h, c)
    and then driven by tensor and subgraph index, which is cheaper per call than a
    SignatureRunner.
    """

    def __init__(self, model: bytes, backend: str, num_threads: int, source: str,
                 n_features: int | None = None, verified: bool = False,
                 signature: str | None = None) -> None:
        """Load and check the step graph.

        Args:
            model: the artifact's .tflite bytes (``signature`` names the step graph in it), or
                a version-1 artifact's step model (``signature`` None: its only signature).
            backend, num_threads, verified: as edge_runtime.backends.make_interpreter
                (``verified``: a verifying child has built and run this step graph).
            source: the artifact's name, for messages.
            n_features: the width the artifact's FeatureSpec gives an event; None skips the check.
            signature: the step graph's signature key; None for a model of one signature.

        Raises:
            ArtifactError: the graph does not load, lacks the event/h/c signature, has tensors
                of the wrong shape or type, or fails on a blank event.
        """
        self.source = source
        # Serialises the interpreter's calls: Scorer.score_step and a SessionStore take it.
        self.lock = threading.Lock()
        with quiet_native():  # the error raised here carries what the interpreter printed
            try:
                self._interpreter, self.backend = make_interpreter(model, backend, num_threads,
                                                                   verified=verified)
            except ArtifactError as e:
                raise type(e)(f"{source}: step graph: {e}") from None
        ports = self._signature_ports(signature)
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

    def _signature_ports(self, signature: str | None) -> dict[str, int]:
        """Tensor index of each port, found by the signature's names, and the signature's
        subgraph; ArtifactError without the event/h/c signature."""
        interp = self._interpreter
        try:
            signatures = interp._get_full_signature_list()
            key = next(iter(signatures)) if signature is None else signature
            sig = signatures[key]
            inputs, outputs = sig["inputs"], sig["outputs"]
            self._event, self._h_in, self._c_in = inputs["event"], inputs["h"], inputs["c"]
            self._p, self._h_out, self._c_out = outputs["probability"], outputs["h"], outputs["c"]
            self._calls = interp._interpreter  # set, invoke and get by subgraph index
            self._subgraph = self._calls.GetSubgraphIndexFromSignature(key) if signature else 0
            # A signature's subgraph other than the first is allocated when first used.
            self._details = interp.get_signature_runner(key) if signature else None
        except (StopIteration, KeyError, TypeError, AttributeError):
            raise ArtifactError(f"{self.source}: step graph lacks the event/h/c signature") from None
        except INTERPRETER_ERRORS as e:
            raise ArtifactError(f"{self.source}: step graph is corrupted: {first_line(e)}") from None
        return {"event": self._event, "h": self._h_in, "c": self._c_in,
                "probability": self._p, "h out": self._h_out, "c out": self._c_out}

    def _port_details(self) -> dict[int, dict]:
        """Tensor index -> details of the step signature's inputs and outputs."""
        if self._details is None:
            ports = (*self._interpreter.get_input_details(), *self._interpreter.get_output_details())
        else:
            runner = self._details
            ports = (*runner.get_input_details().values(), *runner.get_output_details().values())
        return {d["index"]: d for d in ports}

    def _check_ports(self, ports: dict[str, int]) -> dict[str, list[int]]:
        """The shape of each port; ArtifactError unless each is a float32 input or output.

        A damaged signature can name any tensor: each is checked here, so that pushing an
        event cannot fail on them later (or feed an array of the wrong size).
        """
        try:
            if self._details is not None:
                self._calls.AllocateTensors(self._subgraph)
            details = self._port_details()
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
        """One event: (probability, new h, new c), uncalibrated and unlocked: callers hold
        ``lock`` (Scorer.score_step, which also calibrates, and SessionStore.push).

        Args:
            x: the encoded event (F,), float32.
            h, c: the LSTM state, float32 (1, units) each.

        Raises:
            ArtifactError: the graph fails to run or returns outputs of the wrong shape.
        """
        calls, g = self._calls, self._subgraph
        try:
            calls.SetTensor(self._event, x.reshape(1, -1), g)
            calls.SetTensor(self._h_in, h, g)
            calls.SetTensor(self._c_in, c, g)
            calls.Invoke(g)
            p = calls.GetTensor(self._p, g)
            h, c = calls.GetTensor(self._h_out, g), calls.GetTensor(self._c_out, g)
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
    Slots and one (2, units) array for h and c keep it small: a process may hold thousands
    (a SessionStore holds its sessions in columns instead, and hands one out as a LiveSession
    on `SessionStore.end`).

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
            ArtifactError: the step graph fails to run (a damaged artifact); the session is
                left as it was.
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
        """`push_event` for a caller that already serialises the pushes to this session.

        Raises:
            ArtifactError: as `push`.
        """
        scorer, state = self.scorer, self.state
        before = (state.n, state.first_ts, state.last_ts, state.carts, len(state.items),
                  len(state.categories))
        x = scorer.encoder.step_event(state, event)
        try:
            p, self.hc = scorer.score_step(x, self.hc)
        except ArtifactError:  # the encoder state goes back: the session is as it was
            state.n, state.first_ts, state.last_ts, state.carts = before[:4]
            del state.items[before[4]:], state.categories[before[5]:]
            raise
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

    Memory. Sessions are rows of columns, not objects: a key maps to a row number; the
    session's LSTM state is a row of float32 blocks of ROWS_PER_BLOCK rows, its encoder
    counters and times entries of typed arrays, its remembered ids packed digests
    (edge_runtime.features.RememberedIds), its place in the LRU order two links. About
    1.3 KB a session at 128 units, 1 KB of it h and c. A session that ends frees its row for
    the next one, which starts blank. A pushed event gives exactly the probability a
    LiveSession gives (the encoder's `step_features` and the same step graph); `end` hands
    a session back as a LiveSession.

    Triggers. With a TriggerRule, each session also holds a bit mask of the triggers it has
    fired and not yet re-armed (a column like its counters; 8 bytes), and
    `push_with_triggers` returns the tiers each event's session climbs into. A session that
    starts (anew after an idle gap, or on a row another one left) starts with every trigger
    armed; one that its own push finds idle by the clock carries on with its mask, as it
    carries on with its LSTM state. ``triggers_fired`` counts the triggers fired.

    Args:
        scorer: the loaded artifact (edge_runtime.Scorer).
        max_sessions: the most sessions held; starting one more evicts the least recently used.
        idle_timeout: seconds without an event after which a session is dropped; None keeps
            sessions until they are evicted.
        triggers: the rule that decides when a session fires a tier's trigger
            (edge_runtime.tiers.TriggerRule); None: no triggers, ``push_with_triggers``
            returns none.

    Raises:
        ConfigError: max_sessions < 1 or idle_timeout <= 0 (`check_limits`, which a
            command calls first to name its options instead).
        ArtifactError: the scorer's artifact has no usable step graph.

    Example:
        >>> store = SessionStore(scorer, max_sessions=10_000, idle_timeout=1800)
        >>> p, gone = store.push("kiosk-7:42", {"ts": 1.7e9, "event": "view", "item": "sku1"})
    """

    def __init__(self, scorer, max_sessions: int = 10_000, idle_timeout: float | None = 1800.0,
                 triggers: TriggerRule | None = None) -> None:
        check_limits(max_sessions, idle_timeout)
        # Load and check the step graph now: a damaged or missing one is refused when the
        # store is made (before `serve` reads a line), not on the first event.
        self._step = scorer.step_model()
        self.scorer = scorer
        self.max_sessions = max_sessions
        self.idle_timeout = idle_timeout
        self.stats = StoreStats()
        self.triggers = triggers
        # Not a StoreStats field: those count what any store does, with or without triggers.
        self.triggers_fired = 0
        self._encoder = encoder = scorer.encoder
        self._lock = threading.Lock()
        self._rows: dict[str, int] = {}  # key -> row
        self._free: list[int] = []  # rows of ended sessions, reused before new ones are made
        # One entry a row. The LRU order, a list linked through the rows (-1 ends it): expiry
        # and eviction take the oldest first and stop at the first fresh one.
        self._keys: list[str | None] = []
        self._older = array("q")
        self._newer = array("q")
        self._oldest = self._newest = -1
        # The encoder's counters (EncoderState's), the session's last activity (its last
        # event's time, but never later than the clock), its last probability, its context
        # (None, or the vector and its logs from `FeatureEncoder.start`), its LSTM state.
        self._n = array("q")
        self._first_ts = array("d")
        self._last_ts = array("d")
        self._carts = array("q")
        self._seen = array("d")
        self._probability = array("d")
        # The triggers each session has fired and not re-armed (TriggerRule.update's mask).
        self._fired = array("q")
        self._contexts: list[tuple[np.ndarray, tuple[float, ...]] | None] = []
        self._block = min(ROWS_PER_BLOCK, max_sessions)
        self._hc: list[np.ndarray] = []  # blocks of (rows, 2, units): h, then c
        self._zero_hc = np.zeros((2, self._step.units), np.float32)
        self._zero_hc.setflags(write=False)
        # Digests only for the repeat features the spec has.
        self._items = RememberedIds() if encoder.tracks_items else None
        self._categories = RememberedIds() if encoder.tracks_categories else None
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
        return len(self._rows)

    def __contains__(self, key: str) -> bool:
        return key in self._rows

    def push(self, key: str, event: Mapping, context: Mapping | None = None
             ) -> tuple[float, list[tuple[str, str, int]]]:
        """Score ``event`` in session ``key`` (started on its first event).

        `push_with_triggers` without triggers: the session's trigger mask is left as it was
        (a trigger this score would fire stays armed, for the next `push_with_triggers`), so
        the two can be mixed without losing a trigger.

        Args:
            key, event, context: as `push_with_triggers`.

        Returns:
            (probability, sessions removed by this call), as `push_with_triggers`.

        Raises:
            ConfigError, ArtifactError: as `push_with_triggers`.
        """
        p, removed, _ = self._push(key, event, context, watch=False)
        return p, removed

    def push_with_triggers(self, key: str, event: Mapping, context: Mapping | None = None
                           ) -> tuple[float, list[tuple[str, str, int]], list[str]]:
        """Score ``event`` in session ``key`` (started on its first event) and say which
        tiers' triggers it fires.

        Args:
            key: the session key, at most MAX_KEY_CHARS characters.
            event: a canonical event dict (edge_runtime.events.canonical_event); its ``ts``
                also drives the idle timeout (see the class's note on the clock).
            context: user history for a session's first event (ignored afterwards).

        Returns:
            (probability, sessions removed by this call as (key, "lru" | "idle", events),
            fired): the removals are the session's own restart first, then the sessions the
            clock expired (oldest first), then the one evicted to make room; ``fired`` names
            the tiers whose trigger this event fires, lowest first (empty without a
            TriggerRule).

        Raises:
            ConfigError: the key is too long or the event is malformed; nothing changes
                (the rejection is counted in ``stats.rejected``).
            ArtifactError: the step graph fails to run; nothing changes.
        """
        return self._push(key, event, context, watch=True)

    def _push(self, key: str, event: Mapping, context: Mapping | None, watch: bool
              ) -> tuple[float, list[tuple[str, str, int]], list[str]]:
        """The one body of `push` and `push_with_triggers`; ``watch`` runs the TriggerRule."""
        try:
            if isinstance(key, str) and len(key) > MAX_KEY_CHARS:
                raise ConfigError(f"session key of {len(key):,} characters is longer than "
                                  f"{MAX_KEY_CHARS}: {shown(key)}")
            ts, code, item, category, price = canonical_event(event)
        except ConfigError:
            with self._lock:
                self.stats.rejected += 1
            raise
        timeout, items, categories = self.idle_timeout, self._items, self._categories
        with self._lock:
            # Nothing changes until the event is scored: a rejected or failed push neither
            # expires sessions nor starts one.
            row = self._rows.get(key)
            restarted = row is not None and timeout is not None and ts - self._last_ts[row] > timeout
            if row is None or restarted:
                try:
                    start = self._encoder.start(context)
                except ConfigError:  # a malformed context
                    self.stats.rejected += 1
                    raise
                n, first_ts, carts, hc, mask = 0, ts, 0, self._zero_hc, 0
                context_logs = start.context_logs
                last_ts = ts  # unused by the encoder for a first event
            else:
                n, first_ts, last_ts, carts, mask = (self._n[row], self._first_ts[row],
                                                     self._last_ts[row], self._carts[row],
                                                     self._fired[row])
                held = self._contexts[row]
                context_logs = NO_CONTEXT_LOGS if held is None else held[1]
                hc = self._hc[row // self._block][row % self._block]
            carts += code == CART
            encoder = self._encoder
            tables = encoder.tables
            item_digest = id_digest(item) if items is not None or tables else None
            repeat_item = n > 0 and items is not None and items.seen(row, item_digest)
            wanted = categories is not None or tables
            category_digest = id_digest(category) if category is not None and wanted else None
            repeat_category = (n > 0 and categories is not None and category_digest is not None
                               and categories.seen(row, category_digest))
            targets = encoder.target_values(item_digest, category_digest) if tables else NO_TARGETS
            x = encoder.step_features(ts, code, price, n, first_ts, last_ts, carts, repeat_item,
                                      repeat_category, context_logs, targets)
            step = self._step
            with step.lock:
                p, h, c = step(x, hc[0:1], hc[1:2])
            p = self.scorer.calibrated_one(p)
            # A pure step: nothing is written until the store changes below.
            mask, fired = (mask, []) if self.triggers is None or not watch \
                else self.triggers.update(mask, p)

            # The event is scored: from here on the store changes.
            removed = []
            if restarted:
                removed.append((key, "idle", self._n[row]))
                self.stats.expired_idle += 1
                self._remove(row)
            if key != self._lead_key:
                self._advance(key, ts)
            elif ts > self._lead_ts:
                self._lead_ts = ts
            if timeout is not None:
                # The session itself may be this old by the clock (its last event was ahead
                # of it): it is then reported idle, with this event counted, and carries on
                # as a session started anew (as when a store held LiveSession objects).
                self._expire(removed, -1 if n == 0 else row, n + 1)
            if n == 0 or key not in self._rows:
                self.stats.started += 1
                while len(self._rows) >= self.max_sessions:
                    oldest = self._oldest
                    removed.append((self._keys[oldest], "lru", self._n[oldest]))
                    self.stats.evicted_lru += 1
                    self._remove(oldest)
                if n == 0:
                    row = self._new_row(key, start)
                    hc = self._hc[row // self._block][row % self._block]
                self._rows[key] = row
                self._link_newest(row)
            elif row != self._newest:  # the most recently used now
                self._move_to_newest(row)
            hc[0] = h[0]
            hc[1] = c[0]
            self._n[row] = n + 1
            self._first_ts[row] = first_ts
            self._last_ts[row] = ts
            self._carts[row] = carts
            self._seen[row] = ts if ts < self._clock else self._clock
            self._probability[row] = p
            self._fired[row] = mask
            if items is not None and not repeat_item:
                items.remember(row, item_digest)
            if categories is not None and category_digest is not None and not repeat_category:
                categories.remember(row, category_digest)
            self.stats.pushed += 1
            self.triggers_fired += len(fired)
            return p, removed, fired

    def _new_row(self, key: str, start: EncoderState) -> int:
        """A row for a new session of ``key`` with context ``start`` (`FeatureEncoder.start`):
        a freed one, else one more. Its counters, times and state are written by the push."""
        context = None if start.context_logs is NO_CONTEXT_LOGS else (start.context, start.context_logs)
        if self._free:
            row = self._free.pop()
            self._keys[row] = key
            self._contexts[row] = context
            return row
        row = len(self._n)
        if row % self._block == 0:
            self._hc.append(np.zeros((self._block, 2, self._step.units), np.float32))
        for column in (self._n, self._first_ts, self._last_ts, self._carts, self._seen,
                       self._probability, self._fired, self._older, self._newer):
            column.append(0)
        self._keys.append(key)
        self._contexts.append(context)
        for ids in (self._items, self._categories):
            if ids is not None:
                ids.add_row()
        return row

    def _link_newest(self, row: int) -> None:
        newest = self._newest
        self._older[row], self._newer[row] = newest, -1
        if newest < 0:
            self._oldest = row
        else:
            self._newer[newest] = row
        self._newest = row

    def _move_to_newest(self, row: int) -> None:
        """`_unlink` then `_link_newest` for a row that is not the newest (one call a push)."""
        older, newer, newest = self._older[row], self._newer[row], self._newest
        if older < 0:
            self._oldest = newer
        else:
            self._newer[older] = newer
        self._older[newer] = older
        self._older[row], self._newer[row], self._newer[newest] = newest, -1, row
        self._newest = row

    def _unlink(self, row: int) -> None:
        older, newer = self._older[row], self._newer[row]
        if older < 0:
            self._oldest = newer
        else:
            self._newer[older] = newer
        if newer < 0:
            self._newest = older
        else:
            self._older[newer] = older

    def _remove(self, row: int) -> None:
        """Drop the session of ``row`` from the table and free the row; whoever takes it next
        starts blank (its digests are forgotten now, everything else written when taken)."""
        del self._rows[self._keys[row]]
        self._unlink(row)
        self._keys[row] = self._contexts[row] = None
        for ids in (self._items, self._categories):
            if ids is not None:
                ids.clear(row)
        self._free.append(row)

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
            row = self._rows.get(overtaken)
            if row is not None:
                self._seen[row] = min(self._last_ts[row], self._clock)
        elif ts > self._second_ts:
            self._second_ts = ts
            self._set_clock(ts)

    def _set_clock(self, now: float) -> None:
        if now <= self._clock:
            return
        if self._clock == -math.inf:
            # Sessions seen before the clock started (of one key) get their activity now.
            for row in self._rows.values():
                self._seen[row] = min(self._last_ts[row], now)
        self._clock = now

    def _expire(self, removed: list[tuple[str, str, int]], pushing: int = -1, events: int = 0) -> None:
        """Drop the sessions idle by the clock onto ``removed`` (``idle_timeout`` is set).

        ``pushing``: the row whose event is being pushed, which has ``events`` events with it:
        it leaves the table but keeps its row (the push puts it back).
        """
        clock, timeout = self._clock, self.idle_timeout
        # Least recently used first: the oldest activity is at the front of the order.
        while (row := self._oldest) >= 0 and clock - self._seen[row] > timeout:
            self.stats.expired_idle += 1
            if row == pushing:
                removed.append((self._keys[row], "idle", events))
                del self._rows[self._keys[row]]
                self._unlink(row)
            else:
                removed.append((self._keys[row], "idle", self._n[row]))
                self._remove(row)

    def events_of(self, key: str) -> int:
        """Events pushed so far in session ``key`` (0 when it is not held)."""
        with self._lock:
            row = self._rows.get(key)
            return self._n[row] if row is not None else 0

    def end(self, key: str) -> LiveSession | None:
        """Remove a session (e.g. after checkout) and return it as a LiveSession, which
        carries on from where the store left it; None when ``key`` is not held."""
        with self._lock:
            row = self._rows.get(key)
            if row is None:
                return None
            held = self._contexts[row]
            context, context_logs = (NO_CONTEXT, NO_CONTEXT_LOGS) if held is None else held
            state = EncoderState(context=context, context_logs=context_logs, n=self._n[row],
                                 first_ts=self._first_ts[row], last_ts=self._last_ts[row],
                                 carts=self._carts[row],
                                 items=self._items.packed(row) if self._items else bytearray(),
                                 categories=self._categories.packed(row) if self._categories
                                 else bytearray())
            live = LiveSession(scorer=self.scorer, state=state,
                               hc=self._hc[row // self._block][row % self._block].copy(),
                               probability=self._probability[row], events=self._n[row])
            self._remove(row)
            return live


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
