"""The peer engines of `ubp-edge benchmark --peers`: the same weights, run by other engines.

Every peer scores the same encoded sessions with the weights of one run directory, so its
latency can stand beside the TFLite artifacts' and its scores can be checked against the
Keras probabilities the trainer stored (``parity_sessions.npz``, test sessions):

- ``keras-eager``: the tf_keras model rebuilt without its Masking layer, called eagerly.
- ``keras-function``: the same model inside a ``tf.function`` of signature ``[1, None, F]``.
- ``onnxruntime`` ``float32``: an ONNX model run by ONNX Runtime. Route: tf2onnx converts the
  ``tf.function`` (opset 17; it becomes one ONNX ``LSTM`` op); where tf2onnx is not installed
  or fails, the graph is written by hand with ``onnx.helper`` (``LSTM`` + ``MatMul`` + ``Add``
  + ``Sigmoid``), which needs no TensorFlow. The row's ``reason`` names the route taken.
- ``onnxruntime`` ``dynamic``: ``quantize_dynamic`` (int8 weights) of that float model.
- ``numpy``: a plain float32 forward pass (:func:`numpy_lstm`), also a parity reference that
  needs neither TensorFlow nor a TFLite interpreter.

All peers take one session per call at batch 1, as the fused TFLite graph does. TensorFlow,
tf2onnx, onnx and onnxruntime are imported inside the functions that use them, so that a
runtime-only install can import this module (its peers then fail with the reason).

Seams: the run directory is read through `trainer.rundir.RunDirectory`; each peer's parity
tolerance is its precision's ``max_abs_diff`` in `converters.precisions.PRECISIONS` (the
bound every artifact of that precision is held to); ONNX files are written through
`trainer.files`. `build_peers` goes in named stages: `keras_peers`, `onnx_peers`, `numpy_peer`,
each row checked by `check_parity`.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from converters.precisions import PRECISIONS
from edge_runtime.errors import ConfigError, first_line
from trainer.files import atomic_path, write_bytes_atomic
from trainer.rundir import RunDirectory

PARITY_SESSIONS = 300
ONNX_OPSET = 17


@dataclass
class Peer:
    """One row of `ubp-edge benchmark --peers`.

    Attributes:
        engine: ``keras-eager``, ``keras-function``, ``onnxruntime`` or ``numpy``.
        precision: ``float32``, or ``dynamic`` (ONNX Runtime dynamic int8 quantization).
        status: ``ok`` or ``failed``.
        reason: why the row failed (the first line of the error, or the parity figure); on an
            ok row, a note where there is one (the ONNX route; TensorFlow threads not applied).
        size_bytes: the serialized model's size where there is one (the ONNX file), else None.
        score: one encoded session ``(L, F)`` float32 -> probability, batch 1; None unless ok.
        score_batch: many sessions -> probabilities ``(N,)``; None unless ok.
        max_abs_diff: max |p - p_keras| over the parity sessions checked.
    """

    engine: str
    precision: str
    status: str
    reason: str | None = None
    size_bytes: int | None = None
    score: Callable[[np.ndarray], float] | None = None
    score_batch: Callable[[list[np.ndarray]], np.ndarray] | None = None
    max_abs_diff: float | None = None

    @property
    def name(self) -> str:
        return self.engine if self.engine != "onnxruntime" else f"{self.engine}-{self.precision}"

    def to_dict(self) -> dict:
        """The row without its callables, for JSON reports."""
        return {"engine": self.engine, "precision": self.precision, "status": self.status,
                "reason": self.reason, "size_bytes": self.size_bytes,
                "max_abs_diff": self.max_abs_diff}


def _looped(score: Callable[[np.ndarray], float]) -> Callable[[list[np.ndarray]], np.ndarray]:
    """score_batch as a loop over score: every peer's graph (like the fused TFLite one) is
    batch 1 over unpadded sessions, so a loop is the simplest batch that is exactly right."""
    def score_batch(sessions: list[np.ndarray]) -> np.ndarray:
        return np.array([score(x) for x in sessions], np.float64)
    return score_batch


def _sigmoid(z: np.ndarray) -> np.ndarray:
    # The same function as 1 / (1 + exp(-z)), without overflow warnings for large |z|.
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def numpy_lstm(arrays: dict[str, np.ndarray]) -> Callable[[np.ndarray], float]:
    """A plain float32 NumPy forward pass of the run's LSTM(U) -> Dense(1, sigmoid).

    The Keras LSTM's arithmetic (gate order input, forget, cell, output; sigmoid recurrent
    activation, tanh activation; zero initial state): the input projections of all steps in
    one matmul, then one ``h @ U`` per step.

    Args:
        arrays: the run's weights (``trainer.model.WEIGHT_NAMES``), as in ``weights.npz``.

    Returns:
        ``score(x)``: one encoded session ``(L, F)`` -> its probability.

    Raises:
        ConfigError (from ``score``): a session that is not ``(L, F)``.

    Example:
        >>> score = numpy_lstm(dict(np.load("runs/taobao/weights.npz")))
        >>> score(np.zeros((5, 15), np.float32))
    """
    kernel = np.asarray(arrays["lstm_kernel"], np.float32)
    recurrent = np.asarray(arrays["lstm_recurrent_kernel"], np.float32)
    bias = np.asarray(arrays["lstm_bias"], np.float32)
    dense_kernel = np.asarray(arrays["dense_kernel"], np.float32).reshape(-1)
    dense_bias = np.float32(np.asarray(arrays["dense_bias"], np.float32).reshape(-1)[0])
    n_features, four_units = kernel.shape
    units = four_units // 4

    def score(x: np.ndarray) -> float:
        x = np.asarray(x, np.float32)
        if x.ndim != 2 or x.shape[1] != n_features:
            raise ConfigError(f"expected one session of shape (L, {n_features}), got {x.shape}")
        projected = x @ kernel + bias
        h = np.zeros(units, np.float32)
        c = np.zeros(units, np.float32)
        for z_x in projected:
            z = z_x + h @ recurrent
            i = _sigmoid(z[:units])
            f = _sigmoid(z[units:2 * units])
            g = np.tanh(z[2 * units:3 * units])
            o = _sigmoid(z[3 * units:])
            c = f * c + i * g
            h = o * np.tanh(c)
        return float(_sigmoid(h @ dense_kernel + dense_bias))

    return score


def _set_tf_threads(tf, threads: int) -> str | None:
    """Set TensorFlow's op threads; a note when TF already runs with other settings."""
    threading = tf.config.threading
    if (threading.get_intra_op_parallelism_threads() == threads
            and threading.get_inter_op_parallelism_threads() == threads):
        return None
    try:
        threading.set_intra_op_parallelism_threads(threads)
        threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        # Settable only before TensorFlow's runtime starts (e.g. not after training in-process).
        return (f"TensorFlow was already initialised (intra-op "
                f"{threading.get_intra_op_parallelism_threads() or 'default'}, inter-op "
                f"{threading.get_inter_op_parallelism_threads() or 'default'} threads); "
                f"threads={threads} not applied")
    return None


class KerasModels:
    """The tf_keras model without masking and its tf.function, built once per build_peers.

    Raises:
        ImportError: no TensorFlow / tf_keras here (a runtime-only install).
    """

    def __init__(self, arrays: dict[str, np.ndarray], threads: int) -> None:
        import tensorflow as tf

        from trainer.model import arrays_to_model

        self.tf = tf
        self.thread_note = _set_tf_threads(tf, threads)
        self.model = arrays_to_model(arrays, masking=False)
        self.n_features = arrays["lstm_kernel"].shape[0]
        self.signature = [tf.TensorSpec([1, None, self.n_features], tf.float32, name="events")]
        model = self.model

        @tf.function(input_signature=self.signature, reduce_retracing=True)
        def score(events):
            return model(events, training=False)

        self.function = score

    def eager_score(self) -> Callable[[np.ndarray], float]:
        """One encoded session -> probability, the model called eagerly."""
        model = self.model

        def score(x: np.ndarray) -> float:
            return float(model(np.asarray(x, np.float32)[None], training=False)[0, 0])
        return score

    def function_score(self) -> Callable[[np.ndarray], float]:
        """One encoded session -> probability, through the tf.function."""
        function = self.function

        def score(x: np.ndarray) -> float:
            return float(function(np.asarray(x, np.float32)[None])[0, 0])
        return score


def onnx_via_tf2onnx(keras: KerasModels) -> bytes:
    """The Keras model's tf.function as an ONNX model (tf2onnx, opset ``ONNX_OPSET``)."""
    import tf2onnx

    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    proto, _ = tf2onnx.convert.from_function(keras.function, input_signature=keras.signature,
                                             opset=ONNX_OPSET)
    return proto.SerializeToString()


def onnx_by_hand(arrays: dict[str, np.ndarray]) -> bytes:
    """The same model as an ONNX graph written with onnx.helper, no TensorFlow needed.

    ``events [1, L, F]`` -> Transpose -> ``LSTM`` (time-major) -> last h ``[1, U]`` -> MatMul
    -> Add -> Sigmoid -> ``probability [1, 1]``. ONNX orders the gates i, o, f, c (Keras:
    i, f, c, o) and stores W as ``[directions, 4U, F]``, R as ``[directions, 4U, U]``, B as
    ``[directions, 8U]`` (input bias then recurrent bias; Keras has one bias, the other is 0).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    kernel = np.asarray(arrays["lstm_kernel"], np.float32)
    recurrent = np.asarray(arrays["lstm_recurrent_kernel"], np.float32)
    bias = np.asarray(arrays["lstm_bias"], np.float32)
    n_features, four_units = kernel.shape
    units = four_units // 4

    def onnx_order(w: np.ndarray) -> np.ndarray:
        i, f, c, o = np.split(w, 4, axis=-1)
        return np.concatenate([i, o, f, c], axis=-1)

    initializers = [
        numpy_helper.from_array(onnx_order(kernel).T[None].copy(), "W"),
        numpy_helper.from_array(onnx_order(recurrent).T[None].copy(), "R"),
        numpy_helper.from_array(np.concatenate([onnx_order(bias), np.zeros(four_units, np.float32)])
                                [None], "B"),
        numpy_helper.from_array(np.asarray(arrays["dense_kernel"], np.float32).reshape(units, 1),
                                "dense_kernel"),
        numpy_helper.from_array(np.asarray(arrays["dense_bias"], np.float32).reshape(1), "dense_bias"),
        numpy_helper.from_array(np.array([0], np.int64), "axis0"),
    ]
    nodes = [
        helper.make_node("Transpose", ["events"], ["time_major"], perm=[1, 0, 2]),
        helper.make_node("LSTM", ["time_major", "W", "R", "B"], ["", "h_last"],
                         hidden_size=units),  # default activations: Sigmoid, Tanh, Tanh as Keras
        helper.make_node("Squeeze", ["h_last", "axis0"], ["h"]),
        helper.make_node("MatMul", ["h", "dense_kernel"], ["logit_no_bias"]),
        helper.make_node("Add", ["logit_no_bias", "dense_bias"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["probability"]),
    ]
    graph = helper.make_graph(
        nodes, "ubp_lstm",
        [helper.make_tensor_value_info("events", TensorProto.FLOAT, [1, "L", n_features])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, [1, 1])],
        initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
                              producer_name="ubp-edge")
    onnx.checker.check_model(model)
    return model.SerializeToString()


def onnx_float(arrays: dict[str, np.ndarray], keras: KerasModels | None,
               keras_error: str | None) -> tuple[bytes, str]:
    """The float32 ONNX model and the route taken: tf2onnx, else by hand with the reason.

    Returns:
        ``(model bytes, route)``, e.g. ``"tf2onnx 1.17.0, opset 17"``.
    """
    try:
        if keras is None:
            raise RuntimeError(f"no TensorFlow model ({keras_error})")
        import tf2onnx

        return onnx_via_tf2onnx(keras), f"tf2onnx {tf2onnx.__version__}, opset {ONNX_OPSET}"
    except Exception as e:  # tf2onnx raises many types; the hand-written graph needs none of it
        return onnx_by_hand(arrays), (f"onnx.helper graph, opset {ONNX_OPSET} "
                                      f"(tf2onnx: {first_line(e, with_type=True)})")


def quantize_dynamic(float_path: Path, out: Path) -> None:
    """ONNX Runtime's dynamic quantization (int8 weights) of ``float_path``, written to
    ``out`` atomically."""
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as ort_quantize_dynamic

    # quantize_dynamic logs "consider pre-processing" on the root logger at every call;
    # measured here, quant_pre_process leaves this graph unchanged, so the advice is noise.
    root = logging.getLogger()
    quiet = _DropMessage("pre-processing before quantization")
    root.addFilter(quiet)
    try:
        with atomic_path(out) as tmp:
            ort_quantize_dynamic(float_path, tmp, weight_type=QuantType.QInt8)
    finally:
        root.removeFilter(quiet)


class _DropMessage(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def ort_score(model_path: Path, threads: int) -> Callable[[np.ndarray], float]:
    """An ONNX Runtime session on ``model_path`` (CPU, ``threads`` intra-op threads, sequential)
    as ``score(x)``: one encoded session ``(L, F)`` -> its probability."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    outputs = [session.get_outputs()[0].name]

    def score(x: np.ndarray) -> float:
        return float(session.run(outputs, {input_name: np.asarray(x, np.float32)[None]})[0][0, 0])
    return score


def check_parity(peer: Peer, sessions: list[np.ndarray], expected: np.ndarray) -> Peer:
    """Score the parity sessions; a peer off the Keras probabilities by more than its
    precision's ``max_abs_diff`` becomes failed, with the figure in its reason.

    Args:
        peer: an ok peer (``score_batch`` set).
        sessions: encoded test sessions.
        expected: the Keras probabilities of ``sessions``.

    Returns:
        ``peer``, with ``max_abs_diff`` set (and failed where it is off).
    """
    got = peer.score_batch(sessions)
    diff = float(np.max(np.abs(got - expected))) if len(got) else 0.0
    if not np.isfinite(got).all():
        diff = float("inf")
    peer.max_abs_diff = diff
    allowed = PRECISIONS[peer.precision].max_abs_diff
    if not diff <= allowed:
        note = f"; {peer.reason}" if peer.reason else ""
        peer.status, peer.score, peer.score_batch = "failed", None, None
        peer.reason = (f"scores differ from the Keras model by up to {diff:.3g} on "
                       f"{len(sessions)} test sessions (allowed {allowed:g}){note}")
    return peer


def _limit_blas_threads(threads: int) -> None:
    """Cap NumPy's BLAS threads for the whole process (as threads= does for the engines)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # without it, OPENBLAS_NUM_THREADS set before starting decides
        return
    threadpool_limits(limits=threads, user_api="blas")


@dataclass(frozen=True)
class Parity:
    """The test sessions every peer is checked on, with the Keras model's probabilities."""

    sessions: list[np.ndarray]
    expected: np.ndarray

    @classmethod
    def of(cls, run: RunDirectory) -> Parity:
        sessions = run.sessions("test")[:PARITY_SESSIONS]
        return cls(sessions, np.asarray(run.keras_probability("test")[:len(sessions)], np.float64))


def _checked(engine: str, precision: str, build: Callable[[], Peer], parity: Parity) -> Peer:
    """Build one peer and check it; any engine's error becomes its row, so the others go on."""
    try:
        peer = build()
    except Exception as e:
        return Peer(engine, precision, "failed", reason=first_line(e, with_type=True))
    try:
        return check_parity(peer, parity.sessions, parity.expected)
    except Exception as e:
        return Peer(engine, precision, "failed", reason=f"scoring: {first_line(e, with_type=True)}",
                    size_bytes=peer.size_bytes)


def keras_models(weights: dict[str, np.ndarray], threads: int) -> tuple[KerasModels | None, str | None]:
    """The Keras models, or None and why not (no TensorFlow here: the keras rows fail)."""
    try:
        return KerasModels(weights, threads), None
    except Exception as e:  # a runtime-only install has no TensorFlow; the other peers go on
        return None, first_line(e, with_type=True)


def keras_peers(keras: KerasModels | None, keras_error: str | None, parity: Parity) -> list[Peer]:
    """The ``keras-eager`` and ``keras-function`` rows (failed with ``keras_error`` without
    TensorFlow)."""
    def build(engine: str) -> Peer:
        if keras is None:
            raise RuntimeError(keras_error)
        score = keras.eager_score() if engine == "keras-eager" else keras.function_score()
        return Peer(engine, "float32", "ok", reason=keras.thread_note, score=score,
                    score_batch=_looped(score))

    return [_checked(engine, "float32", lambda engine=engine: build(engine), parity)
            for engine in ("keras-eager", "keras-function")]


def onnx_peers(weights: dict[str, np.ndarray], keras: KerasModels | None, keras_error: str | None,
               folder: Path, threads: int, parity: Parity) -> list[Peer]:
    """The ``onnxruntime`` rows: ``float32`` (tf2onnx, else the hand-written graph) and
    ``dynamic`` (its dynamic quantization), their .onnx files written into ``folder``."""
    float_path, dynamic_path = folder / "model-float32.onnx", folder / "model-dynamic.onnx"
    route: list[str] = []

    def float_peer() -> Peer:
        model_bytes, how = onnx_float(weights, keras, keras_error)
        route.append(how)
        write_bytes_atomic(float_path, model_bytes)
        score = ort_score(float_path, threads)
        return Peer("onnxruntime", "float32", "ok", reason=how, size_bytes=len(model_bytes),
                    score=score, score_batch=_looped(score))

    rows = [_checked("onnxruntime", "float32", float_peer, parity)]

    def dynamic_peer() -> Peer:
        if not route:
            raise RuntimeError(f"no float32 ONNX model to quantize ({rows[-1].reason})")
        quantize_dynamic(float_path, dynamic_path)
        score = ort_score(dynamic_path, threads)
        return Peer("onnxruntime", "dynamic", "ok",
                    reason=f"quantize_dynamic QInt8 of the {route[0].split(',')[0]} model",
                    size_bytes=dynamic_path.stat().st_size, score=score, score_batch=_looped(score))

    rows.append(_checked("onnxruntime", "dynamic", dynamic_peer, parity))
    return rows


def numpy_peer(weights: dict[str, np.ndarray], parity: Parity) -> Peer:
    """The ``numpy`` row: `numpy_lstm` on the run's weights."""
    def build() -> Peer:
        score = numpy_lstm(weights)
        return Peer("numpy", "float32", "ok", score=score, score_batch=_looped(score))

    return _checked("numpy", "float32", build, parity)


def build_peers(run_dir: str | os.PathLike, threads: int = 1,
                workdir: str | os.PathLike | None = None) -> list[Peer]:
    """Build every peer on one run's weights and check each against the stored Keras scores.

    Rows, in order: keras-eager, keras-function, onnxruntime float32, onnxruntime dynamic,
    numpy. A peer that cannot be built (TensorFlow or onnxruntime missing, a converter error)
    is a row with status "failed" and the first line of the error, and the others go on; so
    is one whose max |p - p_keras| over the first ``PARITY_SESSIONS`` test sessions exceeds
    its precision's ``max_abs_diff`` (`converters.precisions.PRECISIONS`).

    Args:
        run_dir: a directory written by `ubp-edge train`.
        threads: op threads for TensorFlow (intra and inter; only if its runtime has not
            started yet, otherwise the keras rows say so in ``reason``), ONNX Runtime (intra;
            inter is 1) and NumPy's BLAS (process-wide, through threadpoolctl when installed).
        workdir: where the .onnx files are written; default a temporary folder removed before
            returning (the sessions hold the models in memory).

    Returns:
        Five Peer rows; ``score`` and ``score_batch`` are set on the ok ones.

    Raises:
        RunDirError: the run directory is missing, incomplete or unreadable.
        ConfigError: ``threads`` < 1.

    Example:
        >>> for p in build_peers("runs/taobao"):
        ...     print(p.engine, p.precision, p.status, p.max_abs_diff)
    """
    if not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads must be an integer >= 1, got {threads!r}")
    run = RunDirectory(run_dir)
    parity = Parity.of(run)
    _limit_blas_threads(threads)
    keras, keras_error = keras_models(run.weights, threads)
    peers = keras_peers(keras, keras_error, parity)
    with tempfile.TemporaryDirectory(prefix="ubp-edge-peers-") as tmp:
        folder = Path(workdir) if workdir is not None else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        peers += onnx_peers(run.weights, keras, keras_error, folder, threads, parity)
    peers.append(numpy_peer(run.weights, parity))
    return peers
