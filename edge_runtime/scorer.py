"""Score sessions on the device: numpy, a TFLite interpreter and the artifact, nothing else."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from edge_runtime.artifact import ArtifactInfo, parse_artifact, read_artifact
from edge_runtime.backends import make_interpreter
from edge_runtime.errors import ArtifactError, ConfigError
from edge_runtime.events import EVENT_CODE
from edge_runtime.features import FeatureEncoder

FUSED_LSTM_OP = "UNIDIRECTIONAL_SEQUENCE_LSTM"


class Scorer:
    """A loaded artifact that scores whole sessions.

    Not thread-safe: an interpreter holds its tensors and LSTM state; use one Scorer per
    thread.

    Example:
        >>> scorer = Scorer.load("runs/taobao/model-float32.tflite")
        >>> scorer.score_sessions([[{"ts": 1.5e9, "event": "view", "item": "42"}]])
        array([0.07...], dtype=float32)
    """

    def __init__(self, interpreter, info: ArtifactInfo, backend: str, source: str) -> None:
        self.info = info
        self.backend = backend
        self.source = source
        self.encoder = FeatureEncoder.from_spec(info.spec)
        self._interpreter = interpreter
        inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ArtifactError(f"{source}: expected 1 input and 1 output, found "
                                f"{len(inputs)} and {len(outputs)}")
        shape = list(inputs[0]["shape_signature"])
        if len(shape) != 3 or shape[2] != info.spec.n_features:
            raise ArtifactError(f"{source}: model input {shape} does not take "
                                f"{info.spec.n_features} features as its spec says")
        self._input = inputs[0]["index"]
        self._output = outputs[0]["index"]
        self._length = int(inputs[0]["shape"][1])

    @classmethod
    def load(cls, path: str | Path, backend: str = "auto", num_threads: int = 1) -> Scorer:
        """Load an artifact file.

        Args:
            path: a ``.tflite`` written by ``ubp-edge convert``.
            backend: ``auto`` (ai-edge-litert, else tflite-runtime, else tensorflow) or a name.
            num_threads: interpreter threads; 1 is the kiosk default.

        Raises:
            ArtifactError: the file is missing, corrupted, not ours or of another version.
            ConfigError: the backend is unknown or not installed.
        """
        model, info = read_artifact(path)
        return cls.from_bytes(model, backend, num_threads, source=str(path), info=info)

    @classmethod
    def from_bytes(cls, model: bytes, backend: str = "auto", num_threads: int = 1,
                   source: str = "artifact", info: ArtifactInfo | None = None) -> Scorer:
        info = info or parse_artifact(model, source)
        try:
            interpreter, name = make_interpreter(model, backend, num_threads)
        except ArtifactError as e:
            raise ArtifactError(f"{source}: {e}") from None
        return cls(interpreter, info, name, source)

    @property
    def threshold(self) -> float:
        return self.info.threshold

    def op_names(self) -> list[str]:
        """The graph's operators, e.g. to check that the LSTM is one fused op."""
        return [op["op_name"] for op in self._interpreter._get_ops_details()]

    def score_features(self, x: np.ndarray) -> float:
        """Probability of a purchase for one encoded session (L, F), L >= 1."""
        x = np.asarray(x, np.float32)
        if x.ndim != 2 or x.shape[1] != self.info.spec.n_features or len(x) == 0:
            raise ConfigError(f"expected encoded events of shape (L>=1, {self.info.spec.n_features}), "
                              f"got {x.shape}")
        x = x[-self.info.spec.max_len:]
        interp = self._interpreter
        if len(x) != self._length:
            # The fused graph takes an unpadded [1, L, F] input (DESIGN): resizing costs a few
            # microseconds and only happens when the length changes.
            interp.resize_tensor_input(self._input, [1, len(x), x.shape[1]])
            interp.allocate_tensors()
            self._length = len(x)
        # The fused LSTM keeps h and c in variable tensors across invoke(): clear them per session.
        interp.reset_all_variables()
        interp.set_tensor(self._input, x[None])
        interp.invoke()
        return float(interp.get_tensor(self._output).reshape(-1)[0])

    def score_encoded(self, sessions: Iterable[np.ndarray]) -> np.ndarray:
        """Probabilities for encoded sessions, float32 (N,)."""
        return np.array([self.score_features(x) for x in sessions], np.float32)

    def encode_session(self, events: Sequence[Mapping], context: Mapping | None = None) -> np.ndarray:
        """Encode a time-ordered list of canonical event dicts with the artifact's spec."""
        if len(events) == 0:
            raise ConfigError("a session needs at least one event to be scored")
        try:
            ts = np.array([float(e["ts"]) for e in events])
            kinds = [e["event"] for e in events]
            codes = np.array([EVENT_CODE[k] if isinstance(k, str) else int(k) for k in kinds])
            item = np.array([str(e["item"]) for e in events], object)
        except KeyError as e:
            raise ConfigError(f"event without field or with unknown type: {e.args[0]!r}") from None
        category = np.array([("" if e.get("category") is None else str(e["category"]))
                             for e in events], object)
        price = np.array([np.nan if e.get("price") is None else float(e["price"]) for e in events])
        return self.encoder.encode(ts, codes, item, category, price, context)

    def score_sessions(self, sessions: Iterable[Sequence[Mapping]],
                       contexts: Iterable[Mapping | None] | None = None) -> np.ndarray:
        """Probabilities for whole sessions given as lists of canonical event dicts.

        Args:
            sessions: each a time-ordered list of events with ``ts``, ``event``, ``item`` and
                optionally ``category`` and ``price``.
            contexts: optional user history per session (edge_runtime.features.CONTEXT_FIELDS).

        Returns:
            float32 (N,) purchase probabilities.
        """
        sessions = list(sessions)
        contexts = [None] * len(sessions) if contexts is None else list(contexts)
        return self.score_encoded(self.encode_session(s, c) for s, c in zip(sessions, contexts))
