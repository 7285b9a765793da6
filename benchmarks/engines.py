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

Every peer scores one session per call at batch 1 (``score``) and many sessions per call
(``score_batch``), both checked against the Keras probabilities. A batch is scored batched,
as the artifacts' `Scorer.score_encoded` groups sessions by length: the sessions are sorted by
length and cut into groups (`length_groups`), each group padded to its longest session and run
as one call that takes every session's own length, so the padding changes no score: the ONNX
``LSTM`` op's ``sequence_lens`` (a graph with a dynamic batch, `onnx_by_hand` ``batched``),
the Keras LSTM layer's ``mask`` and `numpy_lstm_batch`'s per-session lengths.

TensorFlow, tf2onnx, onnx and onnxruntime are imported inside the functions that use them, so
that a runtime-only install can import this module (its peers then fail with the reason).

Seams: the run directory is read through `trainer.rundir.RunDirectory`; each peer's parity
tolerance is its precision's ``max_abs_diff`` in `converters.precisions.PRECISIONS` (the
bound every artifact of that precision is held to); ONNX files are written through
`trainer.files`. `build_peers` goes in named stages: `keras_peers`, `onnx_peers`, `numpy_peer`,
each row checked by `check_parity` at batch 1 and in batches of ``PARITY_BATCHES``.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from converters.graphs import numpy_cell, sigmoid
from converters.precisions import PRECISIONS
from edge_runtime.errors import ConfigError, first_line
from trainer.files import atomic_path, write_bytes_atomic
from trainer.rundir import RunDirectory

PARITY_SESSIONS = 300
# check_parity scores the parity sessions in consecutive batches of these sizes too, the
# sizes `ubp-edge benchmark` times (benchmarks.measure.BATCH_SIZES).
PARITY_BATCHES = (64, 256)
ONNX_OPSET = 17
# How much padding a group of a batch may carry (padded cells over real ones, minus 1) in
# the engines whose recurrence runs every row of a group to its longest session (ONNX
# Runtime's LSTM, Keras). Measured on 3,000 replayed Taobao prefixes, ONNX Runtime float32,
# one thread, encoder excluded, sessions/s at batch 64 and 256: all padded to the longest
# 25k and 13k; one group per length 73k and 72-97k; 25% padding 102-110k and 120-129k; 100%
# 86-101k and 74-104k. The NumPy peer steps only the sessions still running (no padding
# cost), so it takes each batch whole.
PAD_SLACK = 0.25

ScorePadded = Callable[[np.ndarray, np.ndarray], np.ndarray]


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
        score_batch: many encoded sessions -> probabilities ``(N,)``, batched (`batched`);
            None unless ok.
        max_abs_diff: max |p - p_keras| over the parity sessions checked, at batch 1 and in
            batches (the larger).
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


def length_groups(lengths: Sequence[int], slack: float = PAD_SLACK) -> list[np.ndarray]:
    """A batch's sessions in groups of similar length, each group to be run padded.

    The sessions are taken shortest first; a group grows while its padded cells (its size
    times its longest length) stay within ``1 + slack`` times its real cells (the sum of its
    lengths). Fewer, larger groups amortise a call's fixed cost; less padding wastes fewer
    steps in an engine that runs every row to the longest.

    Args:
        lengths: each session's length, >= 1.
        slack: the padding allowed, as a share of the real cells; ``math.inf``: one group.

    Returns:
        Index arrays into ``lengths`` (each sorted by length), covering every index once.

    Example:
        >>> [g.tolist() for g in length_groups([5, 1, 1, 4], slack=0.25)]
        [[1, 2], [3, 0]]
    """
    order = np.argsort(np.asarray(lengths, np.int64), kind="stable")
    groups, start, real = [], 0, 0
    for k, i in enumerate(order):
        length = int(lengths[i])
        if k > start and (k - start + 1) * length > (1 + slack) * (real + length):
            groups.append(order[start:k])
            start, real = k, 0
        real += length
    if len(order):
        groups.append(order[start:])
    return groups


def padded(sessions: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Encoded sessions zero-padded to the longest: ``(x [N, L_max, F] float32, lengths [N]
    int32)``."""
    lengths = np.array([len(x) for x in sessions], np.int32)
    x = np.zeros((len(sessions), int(lengths.max()), sessions[0].shape[1]), np.float32)
    for i, session in enumerate(sessions):
        x[i, :len(session)] = session
    return x, lengths


def batched(score_padded: ScorePadded, slack: float = PAD_SLACK
            ) -> Callable[[list[np.ndarray]], np.ndarray]:
    """``score_batch`` from a padded-batch call: the sessions in `length_groups`, one call each.

    Args:
        score_padded: ``(x [B, L, F], lengths [B])`` -> probabilities ``(B,)``, exact for every
            row whatever the padding (each row runs its own length).
        slack: as `length_groups`.

    Returns:
        ``score_batch(sessions)``: encoded sessions ``(L_i, F)`` -> probabilities ``(N,)``
        float64, in the sessions' order.
    """
    def score_batch(sessions: list[np.ndarray]) -> np.ndarray:
        sessions = [np.asarray(x, np.float32) for x in sessions]
        out = np.empty(len(sessions), np.float64)
        for group in length_groups([len(x) for x in sessions], slack):
            out[group] = np.asarray(score_padded(*padded([sessions[i] for i in group]))).reshape(-1)
        return out
    return score_batch


@dataclass(frozen=True)
class _LstmArrays:
    """The run's weights as float32 arrays, for the NumPy forward passes."""

    kernel: np.ndarray  # (F, 4U)
    recurrent: np.ndarray  # (U, 4U)
    bias: np.ndarray  # (4U,)
    dense_kernel: np.ndarray  # (U,)
    dense_bias: np.float32

    @classmethod
    def of(cls, arrays: dict[str, np.ndarray]) -> _LstmArrays:
        return cls(np.asarray(arrays["lstm_kernel"], np.float32),
                   np.asarray(arrays["lstm_recurrent_kernel"], np.float32),
                   np.asarray(arrays["lstm_bias"], np.float32),
                   np.asarray(arrays["dense_kernel"], np.float32).reshape(-1),
                   np.float32(np.asarray(arrays["dense_bias"], np.float32).reshape(-1)[0]))

    @property
    def units(self) -> int:
        return self.recurrent.shape[0]

    def step(self, z: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One LSTM step from the gates' pre-activations ``z (..., 4U)``: the new (h, c)."""
        return numpy_cell(z, c)


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
    w = _LstmArrays.of(arrays)
    n_features = w.kernel.shape[0]

    def score(x: np.ndarray) -> float:
        x = np.asarray(x, np.float32)
        if x.ndim != 2 or x.shape[1] != n_features:
            raise ConfigError(f"expected one session of shape (L, {n_features}), got {x.shape}")
        projected = x @ w.kernel + w.bias
        h = np.zeros(w.units, np.float32)
        c = np.zeros(w.units, np.float32)
        for z_x in projected:
            h, c = w.step(z_x + h @ w.recurrent, c)
        return float(sigmoid(h @ w.dense_kernel + w.dense_bias))

    return score


def numpy_lstm_batch(arrays: dict[str, np.ndarray]) -> ScorePadded:
    """`numpy_lstm` over a padded batch, each session run for its own length.

    The rows are taken longest first, so that at step t the sessions still running are the
    first ``active`` rows: one input projection over every real cell, then one
    ``h[:active] @ U`` per step; nothing is computed for a padded cell (a finished session's h
    is its last step's).

    Args:
        arrays: as `numpy_lstm`.

    Returns:
        ``score_padded(x, lengths)``: ``x [B, L, F]`` zero-padded, ``lengths [B]`` (each
        1..L) -> probabilities ``(B,)`` float64.

    Raises:
        ConfigError (from ``score_padded``): ``x`` not ``[B, L, F]``, or lengths that do not
            fit it.
    """
    w = _LstmArrays.of(arrays)
    n_features = w.kernel.shape[0]

    def score_padded(x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        x, lengths = np.asarray(x, np.float32), np.asarray(lengths, np.int64).reshape(-1)
        if x.ndim != 3 or x.shape[2] != n_features or len(lengths) != len(x) or not len(x) \
                or lengths.min() < 1 or lengths.max() > x.shape[1]:
            raise ConfigError(f"expected a padded batch (B, L, {n_features}) with B lengths in "
                              f"1..L, got {x.shape} and lengths {lengths.tolist()[:8]}")
        order = np.argsort(-lengths, kind="stable")
        steps = lengths[order]
        longest = int(steps[0])
        # active[t]: how many sessions (the longest first) have a step t.
        active = np.searchsorted(-steps, -np.arange(1, longest + 1), side="right")
        # The real cells only, time-major: step t's rows are the first active[t] sessions, a
        # slice of one input projection over all of them (no padded cell is projected).
        real = np.arange(longest)[:, None] < steps[None, :]
        projected = x[order, :longest].transpose(1, 0, 2)[real] @ w.kernel + w.bias
        starts = np.concatenate([[0], np.cumsum(active)])
        h = np.zeros((len(x), w.units), np.float32)
        c = np.zeros((len(x), w.units), np.float32)
        for t, n in enumerate(active):
            z = projected[starts[t]:starts[t] + n] + h[:n] @ w.recurrent
            h[:n], c[:n] = w.step(z, c[:n])
        p = np.empty(len(x), np.float64)
        p[order] = sigmoid(h @ w.dense_kernel + w.dense_bias)
        return p

    return score_padded


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
    """The tf_keras model without masking and its tf.functions, built once per build_peers.

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
        lstm, dense = model.get_layer("lstm"), model.get_layer("purchase")

        @tf.function(input_signature=self.signature, reduce_retracing=True)
        def score(events):
            return model(events, training=False)

        def padded_batch(events, lengths):
            # The LSTM layer's mask: a padded step keeps the state, so a row's last output is
            # its session's last step (the training model's Masking layer does the same).
            mask = tf.sequence_mask(lengths, tf.shape(events)[1])
            return dense(lstm(events, mask=mask, training=False))

        self.function = score
        self.padded_batch = padded_batch
        self.batch_function = tf.function(padded_batch, input_signature=[
            tf.TensorSpec([None, None, self.n_features], tf.float32, name="events"),
            tf.TensorSpec([None], tf.int32, name="lengths")])

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

    def batch_score(self, eager: bool) -> ScorePadded:
        """A padded batch ``(x [B, L, F], lengths [B])`` -> probabilities ``(B,)``, the LSTM
        masked past each session's length; eagerly or through a tf.function."""
        run = self.padded_batch if eager else self.batch_function
        tf = self.tf

        def score_padded(x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
            return run(tf.constant(x), tf.constant(lengths, tf.int32)).numpy().reshape(-1)
        return score_padded


def onnx_via_tf2onnx(keras: KerasModels) -> bytes:
    """The Keras model's tf.function as an ONNX model (tf2onnx, opset ``ONNX_OPSET``)."""
    import tf2onnx

    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    proto, _ = tf2onnx.convert.from_function(keras.function, input_signature=keras.signature,
                                             opset=ONNX_OPSET)
    return proto.SerializeToString()


def onnx_by_hand(arrays: dict[str, np.ndarray], batched: bool = False) -> bytes:
    """The same model as an ONNX graph written with onnx.helper, no TensorFlow needed.

    ``events [1, L, F]`` -> Transpose -> ``LSTM`` (time-major) -> last h ``[1, U]`` -> MatMul
    -> Add -> Sigmoid -> ``probability [1, 1]``. ONNX orders the gates i, o, f, c (Keras:
    i, f, c, o) and stores W as ``[directions, 4U, F]``, R as ``[directions, 4U, U]``, B as
    ``[directions, 8U]`` (input bias then recurrent bias; Keras has one bias, the other is 0).

    Args:
        arrays: the run's weights.
        batched: a dynamic batch, ``events [N, L, F]`` zero-padded and ``lengths [N]`` int32
            fed to the LSTM's ``sequence_lens``: each row's last h is its own last step's, so
            the padding changes no score; ``probability [N, 1]``.
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
    batch = "N" if batched else 1
    inputs = [helper.make_tensor_value_info("events", TensorProto.FLOAT, [batch, "L", n_features])]
    lstm_inputs = ["time_major", "W", "R", "B"]
    if batched:
        inputs.append(helper.make_tensor_value_info("lengths", TensorProto.INT32, [batch]))
        lstm_inputs.append("lengths")
    nodes = [
        helper.make_node("Transpose", ["events"], ["time_major"], perm=[1, 0, 2]),
        helper.make_node("LSTM", lstm_inputs, ["", "h_last"],
                         hidden_size=units),  # default activations: Sigmoid, Tanh, Tanh as Keras
        helper.make_node("Squeeze", ["h_last", "axis0"], ["h"]),
        helper.make_node("MatMul", ["h", "dense_kernel"], ["logit_no_bias"]),
        helper.make_node("Add", ["logit_no_bias", "dense_bias"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["probability"]),
    ]
    graph = helper.make_graph(
        nodes, "ubp_lstm", inputs,
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, [batch, 1])],
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


def ort_session(model_path: Path, threads: int):
    """An ONNX Runtime session on ``model_path``: CPU, ``threads`` intra-op threads,
    sequential, every graph optimisation."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


def ort_score(model_path: Path, threads: int) -> Callable[[np.ndarray], float]:
    """An ONNX Runtime session on ``model_path`` (`ort_session`) as ``score(x)``: one encoded
    session ``(L, F)`` -> its probability."""
    session = ort_session(model_path, threads)
    input_name = session.get_inputs()[0].name
    outputs = [session.get_outputs()[0].name]

    def score(x: np.ndarray) -> float:
        return float(session.run(outputs, {input_name: np.asarray(x, np.float32)[None]})[0][0, 0])
    return score


def ort_batch_score(model_path: Path, threads: int) -> ScorePadded:
    """An ONNX Runtime session on a batched graph (`onnx_by_hand` ``batched``, or its dynamic
    quantization) as ``score_padded(x [B, L, F], lengths [B])`` -> probabilities ``(B,)``."""
    session = ort_session(model_path, threads)
    outputs = [session.get_outputs()[0].name]

    def score_padded(x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        feed = {"events": np.asarray(x, np.float32), "lengths": np.asarray(lengths, np.int32)}
        return session.run(outputs, feed)[0].reshape(-1)
    return score_padded


def _max_diff(got: np.ndarray, expected: np.ndarray) -> float:
    if not np.isfinite(got).all():
        return float("inf")
    return float(np.max(np.abs(got - expected))) if len(got) else 0.0


def check_parity(peer: Peer, sessions: list[np.ndarray], expected: np.ndarray) -> Peer:
    """Score the parity sessions at batch 1 (``score``) and in consecutive batches of each
    ``PARITY_BATCHES`` size (``score_batch``); a peer off the Keras probabilities by more
    than its precision's ``max_abs_diff`` on either path becomes failed, with the figure and
    the path in its reason.

    Args:
        peer: an ok peer (``score`` and ``score_batch`` set).
        sessions: encoded test sessions (of different lengths: the batches are padded).
        expected: the Keras probabilities of ``sessions``.

    Returns:
        ``peer``, with ``max_abs_diff`` set (the larger of the two paths; failed where it is off).
    """
    paths = {"batch 1": np.array([peer.score(x) for x in sessions], np.float64)}
    for size in PARITY_BATCHES:
        paths[f"batches of {size}"] = np.concatenate(
            [peer.score_batch(sessions[i:i + size]) for i in range(0, len(sessions), size)]
            or [np.zeros(0)])
    diffs = {path: _max_diff(got, expected) for path, got in paths.items()}
    worst = max(diffs, key=diffs.get)
    diff = peer.max_abs_diff = diffs[worst]
    allowed = PRECISIONS[peer.precision].max_abs_diff
    if not diff <= allowed:
        note = f"; {peer.reason}" if peer.reason else ""
        peer.status, peer.score, peer.score_batch = "failed", None, None
        peer.reason = (f"scores differ from the Keras model by up to {diff:.3g} on "
                       f"{len(sessions)} test sessions, {worst} (allowed {allowed:g}){note}")
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
        eager = engine == "keras-eager"
        score = keras.eager_score() if eager else keras.function_score()
        return Peer(engine, "float32", "ok", reason=keras.thread_note, score=score,
                    score_batch=batched(keras.batch_score(eager)))

    return [_checked(engine, "float32", lambda engine=engine: build(engine), parity)
            for engine in ("keras-eager", "keras-function")]


def onnx_peers(weights: dict[str, np.ndarray], keras: KerasModels | None, keras_error: str | None,
               folder: Path, threads: int, parity: Parity) -> list[Peer]:
    """The ``onnxruntime`` rows: ``float32`` (tf2onnx, else the hand-written graph) and
    ``dynamic`` (its dynamic quantization), their .onnx files written into ``folder``.

    Batches run on a second model of each precision: the hand-written graph with a dynamic
    batch and ``sequence_lens`` (`onnx_by_hand` ``batched``), and its dynamic quantization.
    A row's ``size_bytes`` is its batch-1 model's.
    """
    float_path, dynamic_path = folder / "model-float32.onnx", folder / "model-dynamic.onnx"
    batch_float_path = folder / "model-float32-batch.onnx"
    batch_dynamic_path = folder / "model-dynamic-batch.onnx"
    route: list[str] = []
    batch_route = f"batches: onnx.helper LSTM graph with sequence_lens, opset {ONNX_OPSET}"

    def float_peer() -> Peer:
        model_bytes, how = onnx_float(weights, keras, keras_error)
        route.append(how)
        write_bytes_atomic(float_path, model_bytes)
        write_bytes_atomic(batch_float_path, onnx_by_hand(weights, batched=True))
        score = ort_score(float_path, threads)
        return Peer("onnxruntime", "float32", "ok", reason=f"{how}; {batch_route}",
                    size_bytes=len(model_bytes), score=score,
                    score_batch=batched(ort_batch_score(batch_float_path, threads)))

    rows = [_checked("onnxruntime", "float32", float_peer, parity)]

    def dynamic_peer() -> Peer:
        if not route:
            raise RuntimeError(f"no float32 ONNX model to quantize ({rows[-1].reason})")
        quantize_dynamic(float_path, dynamic_path)
        quantize_dynamic(batch_float_path, batch_dynamic_path)
        score = ort_score(dynamic_path, threads)
        return Peer("onnxruntime", "dynamic", "ok",
                    reason=f"quantize_dynamic QInt8 of the {route[0].split(',')[0]} model; "
                           f"{batch_route}, quantized alike",
                    size_bytes=dynamic_path.stat().st_size, score=score,
                    score_batch=batched(ort_batch_score(batch_dynamic_path, threads)))

    rows.append(_checked("onnxruntime", "dynamic", dynamic_peer, parity))
    return rows


def numpy_peer(weights: dict[str, np.ndarray], parity: Parity) -> Peer:
    """The ``numpy`` row: `numpy_lstm` on the run's weights, `numpy_lstm_batch` for batches
    (each batch whole: it steps only the sessions still running)."""
    def build() -> Peer:
        return Peer("numpy", "float32", "ok", score=numpy_lstm(weights),
                    score_batch=batched(numpy_lstm_batch(weights), slack=math.inf))

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
            returning (the sessions hold the models in memory). It holds the batch-1 models
            ``model-{float32,dynamic}.onnx`` and the batched ones ``model-*-batch.onnx``.

    Returns:
        Five Peer rows; ``score`` and ``score_batch`` are set on the ok ones (each checked at
        batch 1 and in batches, `check_parity`).

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
