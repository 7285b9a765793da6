"""Score sessions on the device: numpy, a TFLite interpreter and the artifact, nothing else.

Seams: `Scorer.load` / `Scorer.from_bytes`; whole sessions through `score_sessions` (event
dicts), `score_encoded` / `score_features` (encoded arrays); one event at a time through
`start_session` (a LiveSession) or `score_step` (the locked, calibrated step the
LiveSession calls). The artifact's recalibration is `Scorer.calibration`, an
edge_runtime.calibration.PlattCalibration or None.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from edge_runtime.artifact import (
    STEP_METADATA_NAME,
    STEP_SIGNATURE,
    ArtifactInfo,
    parse_artifact,
    read_artifact,
)
from edge_runtime.backends import interpreter_class, make_interpreter
from edge_runtime.calibration import PlattCalibration
from edge_runtime.errors import ArtifactError, ConfigError
from edge_runtime.events import Event, canonical_event
from edge_runtime.features import FeatureEncoder, id_digests
from edge_runtime.live import LiveSession, StepModel
from edge_runtime.native_logs import quiet_native
from edge_runtime.tflite_reader import read_metadata, signature_keys
from edge_runtime.verify import Verdict, verify_model
from edge_runtime.whole_graph import ChunkedGraph, FusedGraph, whole_graph

FUSED_LSTM_OP = "UNIDIRECTIONAL_SEQUENCE_LSTM"
SHORT_SESSION = 16  # events; up to this, encoding one event at a time is faster (measured)


class Scorer:
    """A loaded artifact that scores whole sessions.

    Thread safety: a Scorer may be shared between threads; a lock serialises its interpreter
    calls (an interpreter holds tensors and, for the fused LSTM, state), the step graph's
    included. For scoring in parallel, load one Scorer per thread. Handles every precision and
    graph `ubp-edge convert` writes: int8 input/output is quantised here, and an artifact's
    recalibration (``calibration``, Platt scaling) is applied to its output.

    Example:
        >>> scorer = Scorer.load("runs/taobao/model-float32.tflite")
        >>> scorer.score_sessions([[{"ts": 1.5e9, "event": "view", "item": "42"}]])
        array([0.07...], dtype=float32)
    """

    def __init__(self, model: bytes, info: ArtifactInfo, backend: str, source: str,
                 num_threads: int = 1, verdict: Verdict | None = None) -> None:
        """Wrap an artifact's bytes (use `load` or `from_bytes` rather than this).

        The whole-session graph is built on first use when a verifying child has already
        built and run it (``verdict``): a process that only serves live sessions never pays
        for it (the unrolled graph's XNNPACK-packed weights are megabytes). Without a
        verdict it is built and checked now, so a broken graph is refused at load.

        Args:
            model: the artifact's bytes.
            info: the artifact's self-description.
            backend: the backend's name (edge_runtime.backends.BACKENDS).
            source: the artifact's name, for messages.
            num_threads: interpreter threads, for the step graph too.
            verdict: what edge_runtime.verify found, or None when the artifact was loaded
                without verification; a step graph it refused is never loaded here.

        Raises:
            ArtifactError: (without a verdict) the interpreter refuses the model, the graph's
                inputs and outputs are not the ones its spec and graph kind describe, or it
                cannot score a blank event.
        """
        self.info = info
        self._model = model
        # The live graph: the model's own `step` signature, or (an artifact of version 1) a
        # model of its own in a metadata entry. Which signature StepModel runs in those bytes.
        if STEP_SIGNATURE in signature_keys(model):
            self._step_bytes, self._step_signature = model, STEP_SIGNATURE
        else:
            self._step_bytes, self._step_signature = read_metadata(model).get(STEP_METADATA_NAME), None
        self._step: StepModel | None = None
        self._whole: FusedGraph | ChunkedGraph | None = None
        self._num_threads = num_threads
        self._lock = threading.Lock()
        self.backend = backend
        self.source = source
        self.verdict = verdict
        self._step_refusal = verdict.step_refusal(source) if verdict is not None else None
        self.encoder = FeatureEncoder.from_spec(info.spec)
        self.calibration = PlattCalibration.from_dict(info.calibration) if info.calibration else None
        if verdict is None:
            self._whole_graph()

    def _whole_graph(self) -> FusedGraph | ChunkedGraph:
        """The whole-session graph, built and checked on first use (callers hold no lock)."""
        if self._whole is None:
            with self._lock:
                if self._whole is None:
                    self._whole = self._build_whole()
        return self._whole

    def _build_whole(self) -> FusedGraph | ChunkedGraph:
        source, spec = self.source, self.info.spec
        with quiet_native():  # the error raised here carries what the interpreter printed
            try:
                interpreter, _ = make_interpreter(self._model, self.backend, self._num_threads,
                                                  verified=self.verdict is not None)
            except ArtifactError as e:
                raise type(e)(f"{source}: {e}") from None
        whole = whole_graph(interpreter, spec, self.info.graph, source, self.backend, self.info.precision)
        # One blank event through the graph now: a model that cannot run (a weight without
        # data, a broken kernel) is refused at load with the file's name, not mid-stream.
        p = whole.score_one(np.zeros((1, spec.n_features), np.float32))
        if not np.isfinite(p):
            raise ArtifactError(f"{source}: corrupted model: it scores a blank event {p}")
        return whole

    @classmethod
    def load(cls, path: str | Path, backend: str = "auto", num_threads: int = 1,
             verify: bool = True) -> Scorer:
        """Load an artifact file.

        The file is read once; those bytes are checked, verified and loaded.

        Args:
            path: a ``.tflite`` written by ``ubp-edge convert``.
            backend: ``auto`` (ai-edge-litert, else tflite-runtime, else tensorflow) or a name.
            num_threads: interpreter threads; 1 is the kiosk default.
            verify: as `from_bytes`: True (the default) runs the artifact in a child process
                before this one loads it, unless its verdict is cached.

        Raises:
            ArtifactError: the file is missing, corrupted, not ours or of another version, or
                the interpreter refuses or crashes on it (in the verifying child).
            ConfigError: the backend is unknown or not installed.
        """
        model, info = read_artifact(path)
        return cls.from_bytes(model, backend, num_threads, source=str(path), info=info,
                              verify=verify)

    @classmethod
    def from_bytes(cls, model: bytes, backend: str = "auto", num_threads: int = 1,
                   source: str = "artifact", info: ArtifactInfo | None = None,
                   verify: bool = True) -> Scorer:
        """Load an artifact held in memory (e.g. fresh from the converter).

        With ``verify`` (the default), the bytes are first loaded and run, whole and step
        graphs, in a child process (edge_runtime.verify), whose verdict is cached by the
        bytes' digest and the runtime: a file that would crash the interpreter kills the
        child, not this process, and becomes an ArtifactError naming the signal. A cached
        verdict costs well under a millisecond; a verification a fraction of a second.
        ``verify=False`` loads in this process at once, after the in-process checks only:
        for callers that run in a disposable process already (the verifying child itself,
        a converter's worker) or that trust the bytes.

        Args:
            model: the artifact's bytes.
            backend, num_threads: as `load`.
            source: its name in messages.
            info: its ArtifactInfo when already parsed; None reads it from ``model``.
            verify: verify in a child process first (or find the verdict in the cache).

        Raises:
            ArtifactError: as `load` (MalformedModelError when the graph check refuses it; the
                interpreter's captured output, or the verifying child's, is on the error,
                edge_runtime.native_logs).
            ConfigError: as `load`, or no child process can be started to verify it.
        """
        info = info or parse_artifact(model, source)
        verdict = verify_model(model, backend, num_threads, source) if verify else None
        _, name = interpreter_class(verdict.backend if verdict else backend)
        return cls(model, info, name, source, num_threads, verdict=verdict)

    @property
    def threshold(self) -> float:
        """The probability at or above which a session is called a purchase (recalibrated
        with the probabilities, so decisions match the float32 model's)."""
        return self.info.threshold

    def op_names(self) -> list[str]:
        """The operators of the graph's first subgraph, e.g. to check that the LSTM is one
        fused op (an unrolled graph's is chunk_1; converters.metadata_writer.operator_names
        lists every subgraph's)."""
        whole = self._whole_graph()
        with self._lock:
            return [op["op_name"] for op in whole.interpreter._get_ops_details()]

    def input_details(self) -> list[dict]:
        """The model's inputs as the interpreter describes them (name, shape, dtype,
        quantization), e.g. to see that an int8-io artifact takes int8."""
        whole = self._whole_graph()
        with self._lock:
            return whole.input_details()

    @property
    def chunk_steps(self) -> tuple[int, ...]:
        """The events of each chunk of an unrolled graph (e.g. 1, 2, 3, 4, 8, 16); () for a
        fused graph."""
        whole = self._whole_graph()
        return whole.steps if isinstance(whole, ChunkedGraph) else ()

    def _check(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        if x.ndim != 2 or x.shape[1] != self.info.spec.n_features or len(x) == 0:
            raise ConfigError(f"expected encoded events of shape (L>=1, {self.info.spec.n_features}), "
                              f"got {x.shape}")
        # The whole session, however long: the live path runs on past max_len (the training
        # window), and a session's batch score must be its live score.
        return x

    def _calibrated(self, p: np.ndarray) -> np.ndarray:
        return p if self.calibration is None else self.calibration.apply(p)

    def calibrated_one(self, p: float) -> float:
        """One raw probability through the artifact's recalibration (itself when it has none):
        what every scoring path returns, the live store's included."""
        if self.calibration is None:
            return p
        return float(self.calibration.apply(np.array([p], np.float32))[0])

    def score_features(self, x: np.ndarray, calibrated: bool = True) -> float:
        """Probability of a purchase for one encoded session (L, F), L >= 1, every event read.

        ``calibrated`` False skips the artifact's recalibration (for parity checks).
        """
        x = self._check(x)
        whole = self._whole_graph()
        with self._lock:
            p = whole.score_one(x)
        return self.calibrated_one(p) if calibrated else p

    def score_encoded(self, sessions: Iterable[np.ndarray], calibrated: bool = True,
                      batch_size: int = 64) -> np.ndarray:
        """Probabilities for encoded sessions, float32 (N,), every event of each read.

        The fused graph scores one session per invoke; the unrolled graph scores them in
        stages, each chunk of a stage for up to ``batch_size`` sessions in one invoke.
        Memory grows with ``batch_size`` (the chunks' tensors are sized for it): measured on
        LSTM(128), the whole graph and 2,000 sessions of 1-99 events took 34 MB more RSS at
        the default 64 and 67 MB more at 256, for 1.4x the sessions per second.
        """
        batch_size = _batch_size(batch_size)
        sessions = [self._check(x) for x in sessions]
        if not sessions:
            return np.zeros(0, np.float32)
        lengths = np.fromiter((len(x) for x in sessions), np.int64, count=len(sessions))
        return self._score_packed(np.concatenate(sessions), lengths, calibrated, batch_size)

    def _score_packed(self, events: np.ndarray, lengths: np.ndarray, calibrated: bool,
                      batch_size: int) -> np.ndarray:
        """Checked sessions, their events end to end (``events`` (sum L_i, F), ``lengths``)."""
        whole = self._whole_graph()
        with self._lock:
            p = whole.score_packed(events, lengths, batch_size)
        return self._calibrated(p) if calibrated else p

    @property
    def has_step(self) -> bool:
        """Whether the artifact carries the one-event graph for live sessions."""
        return self._step_bytes is not None

    def start_session(self, context: Mapping | None = None) -> LiveSession:
        """A new live session: push events one at a time, get the updated probability each time.

        Args:
            context: the user's history before this session (CONTEXT_FIELDS), or None.

        Raises:
            ArtifactError: the artifact has no step graph (converted by an older ubp-edge), or
                its step graph is damaged (does not load, wrong shapes, fails on a blank event).
        """
        return LiveSession(scorer=self, state=self.encoder.start(context),
                           hc=np.zeros((2, self.step_model().units), np.float32))

    def step_model(self) -> StepModel:
        """The artifact's one-event graph, loaded and checked on first use.

        A step graph the verifying child refused, or died on, is refused here with that
        message and never loaded into this process.

        Raises:
            ArtifactError: as start_session.
        """
        if self._step is None:
            if self._step_bytes is None:
                raise ArtifactError(f"{self.source}: no step graph for live scoring; "
                                    f"re-run `ubp-edge convert`")
            if self._step_refusal is not None:
                raise type(self._step_refusal)(str(self._step_refusal))
            with self._lock:
                if self._step is None:
                    # A verdict means the child built and ran this step graph through every
                    # gate (edge_runtime.backends.make_interpreter): do not build it twice.
                    self._step = StepModel(self._step_bytes, self.backend, self._num_threads,
                                           self.source, n_features=self.info.spec.n_features,
                                           verified=self.verdict is not None,
                                           signature=self._step_signature)
        return self._step

    def score_step(self, x: np.ndarray, hc: np.ndarray, calibrated: bool = True
                   ) -> tuple[float, np.ndarray]:
        """One encoded event through the step graph: the session's probability after it, and
        the LSTM state to pass with the next event. Locked like every interpreter call.

        Args:
            x: the encoded event (F,), from ``self.encoder.step``.
            hc: the LSTM state before it, float32 (2, units): row 0 h, row 1 c; zeros start
                a session.
            calibrated: False skips the artifact's recalibration (for parity checks).

        Returns:
            (probability, the new state (2, units)).

        Raises:
            ConfigError: ``x`` or ``hc`` of the wrong shape.
            ArtifactError: as start_session, or the step graph fails to run.
        """
        step = self.step_model()
        x, hc = np.asarray(x, np.float32), np.asarray(hc, np.float32)
        if x.size != step.n_features or hc.shape != (2, step.units):
            raise ConfigError(f"expected an encoded event of {step.n_features} features and a "
                              f"state of shape (2, {step.units}), got {x.shape} and {hc.shape}")
        with step.lock:  # the step graph's own interpreter, so its own lock (SessionStore's too)
            p, h, c = step(x, hc[0:1], hc[1:2])
        return (self.calibrated_one(p) if calibrated else p), np.concatenate((h, c))

    def encode_session(self, events: Sequence[Mapping], context: Mapping | None = None) -> np.ndarray:
        """Encode a time-ordered list of canonical event dicts with the artifact's spec.

        Every event is checked by edge_runtime.events.canonical_event, the live path's check,
        whatever the session's length, so a value is refused or read alike everywhere. Item
        and category ids are compared as text (1 and "1" are the same item), as in the live
        path; they become small integer codes here so the batch encoder sorts ints.

        Args:
            events: the session's events, each a mapping (``ts``, ``event``, ``item``,
                optionally ``category`` and ``price``).
            context: the user's history before the session (CONTEXT_FIELDS), or None.

        Returns:
            The normalised features, float32 (L, F).

        Raises:
            ConfigError: an empty session, or an event that breaks a rule of
                `canonical_event` (the message names its position, the field and the value).
        """
        checked = _checked_events(events)
        if len(checked) <= SHORT_SESSION:
            # The one-event path gives the same numbers (tested) and, at about 4 us an event,
            # beats the vectorised path's fixed cost on short sessions, the common case.
            state = self.encoder.start(context)
            return np.stack([self.encoder.step_event(state, e) for e in checked])
        return self._encode_checked(checked, [0, len(checked)], context)

    def encode_sessions(self, sessions: Iterable[Sequence[Mapping]],
                        contexts: Iterable[Mapping | None] | None = None) -> list[np.ndarray]:
        """Encode many sessions at once: every event checked as `encode_session` checks it,
        then one vectorised pass of the encoder over all of them (the same numbers as one
        session at a time, tested), which costs a batch a fraction of a session-by-session
        loop.

        Args:
            sessions: each a time-ordered list of canonical event dicts.
            contexts: optional user history per session, one (or None) per session.

        Returns:
            The normalised features of each session, float32 (L, F).

        Raises:
            ConfigError: ``contexts`` is not as long as ``sessions``, an empty session, a
                malformed context, or an event that breaks a rule of `canonical_event` (the
                message names the session's and the event's positions, the field and the value).
        """
        events, offsets = self._encode_packed(sessions, contexts)
        return np.split(events, offsets[1:-1]) if len(offsets) > 1 else []

    def _encode_packed(self, sessions: Iterable[Sequence[Mapping]],
                       contexts: Iterable[Mapping | None] | None) -> tuple[np.ndarray, np.ndarray]:
        """`encode_sessions`' features end to end: ``(events (sum L_i, F), offsets (N + 1,))``,
        session i in rows ``offsets[i]:offsets[i + 1]``; offsets ``[0]`` without sessions."""
        sessions = list(sessions)
        contexts = [None] * len(sessions) if contexts is None else list(contexts)
        if len(contexts) != len(sessions):
            raise ConfigError(f"{len(sessions)} sessions but {len(contexts)} contexts: give one "
                              f"context (or None) per session, or no contexts")
        checked, offsets, vectors = [], [0], []
        for position, (session, context) in enumerate(zip(sessions, contexts, strict=True), start=1):
            try:
                vectors.append(None if context is None else self.encoder.context_vector(context))
                checked.extend(_checked_events(session))
            except ConfigError as e:
                raise ConfigError(f"session {position}: {e}") from None
            offsets.append(len(checked))
        if not checked:
            return np.zeros((0, self.info.spec.n_features), np.float32), np.zeros(1, np.int64)
        context = None
        if any(v is not None for v in vectors):
            zero = self.encoder.context_vector(None)
            context = np.stack([zero if v is None else v for v in vectors])
        return self._encode_checked(checked, offsets, context), np.array(offsets, np.int64)

    def _encode_checked(self, checked: list[Event], offsets: list[int], context) -> np.ndarray:
        """The vectorised encoder over checked events of sessions ``offsets`` apart: (N, F).
        Ids become small integer codes, so the encoder sorts ints; they are compared as text
        within a session, so codes shared across sessions do no harm."""
        ts, codes, items, categories, prices = zip(*checked, strict=True)
        item_codes: dict[str, int] = {}
        category_codes: dict[str | None, int] = {None: -1}  # None: no category
        item = np.array([item_codes.setdefault(i, len(item_codes)) for i in items], np.int64)
        category = np.array([category_codes.setdefault(c, len(category_codes)) for c in categories], np.int64)
        digests = {}  # the target tables look ids up by digest: each distinct id hashed once
        fields = self.encoder.table_fields
        if "item" in fields:
            digests["item_digest"] = id_digests(list(item_codes))[item]
        if "category" in fields:
            known = id_digests([c for c in category_codes if c is not None])  # codes 1, 2, ...
            # No category (code -1) reads the zero digest, which the encoder leaves unlooked-up.
            digests["category_digest"] = np.r_[known, np.zeros(1, known.dtype)][
                np.where(category > 0, category - 1, len(known))]
        return self.encoder.encode_batch(
            np.array(offsets, np.int64), np.array(ts, np.float64), np.array(codes, np.int64),
            item, category, np.array(prices, np.float64), context, **digests)

    def score_sessions(self, sessions: Iterable[Sequence[Mapping]],
                       contexts: Iterable[Mapping | None] | None = None,
                       batch_size: int = 64) -> np.ndarray:
        """Probabilities for whole sessions given as lists of canonical event dicts.

        One session is encoded event by event (`encode_session`), many in one vectorised
        pass (`encode_sessions`); then scored as `score_encoded` scores them.

        Args:
            sessions: each a time-ordered list of events with ``ts``, ``event``, ``item`` and
                optionally ``category`` and ``price``.
            contexts: optional user history per session (edge_runtime.features.CONTEXT_FIELDS),
                one (or None) per session.
            batch_size: as `score_encoded`.

        Returns:
            float32 (N,) purchase probabilities.

        Raises:
            ConfigError: ``contexts`` is not as long as ``sessions``, or a session cannot be
                encoded (the message names the session's position).
        """
        sessions = list(sessions)
        batch_size = _batch_size(batch_size)
        if len(sessions) == 1 and contexts is None:  # the kiosk's case: the shortest path
            try:
                x = self.encode_session(sessions[0])
            except ConfigError as e:
                raise ConfigError(f"session 1: {e}") from None
            return np.array([self.score_features(x)], np.float32)
        events, offsets = self._encode_packed(sessions, contexts)
        if len(offsets) == 1:
            return np.zeros(0, np.float32)
        return self._score_packed(events, np.diff(offsets), True, batch_size)


def _batch_size(value: object) -> int:
    """``batch_size`` as an int >= 1 (numpy integers too); ConfigError naming it otherwise."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"batch_size must be a whole number >= 1, got {value!r}")
    return int(value)


def _checked_events(events: Iterable[Mapping]) -> list[Event]:
    """A session's events through `canonical_event`; ConfigError naming the event's position
    (or saying the session is empty)."""
    checked = []
    for position, event in enumerate(events, start=1):
        try:
            checked.append(canonical_event(event))
        except ConfigError as e:
            raise ConfigError(f"event {position} of the session: {e}") from None
    if not checked:
        raise ConfigError("a session needs at least one event to be scored")
    return checked
