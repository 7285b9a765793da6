"""Export graphs built from the trained weights, as TensorFlow concrete functions.

- ``fused``: a tf_keras LSTM without its Masking layer, batch 1, any length ``[1, L, F]``;
  it converts to the single UNIDIRECTIONAL_SEQUENCE_LSTM op (DESIGN) and is fed unpadded
  sessions.
- ``unrolled``: the same LSTM written out step by step in plain ops (FULLY_CONNECTED,
  LOGISTIC, TANH, MUL, ADD), as chunks of CHUNK_STEPS events with the state in and out, each
  a signature (``chunk_T``) of one flatbuffer, any batch ``[B, T, F]``. The runtime chains
  chunks to score a session of any length without padding, and runs each chunk for many
  sessions at once (edge_runtime.whole_graph). XNNPACK runs the whole of each chunk (it never
  takes the fused op), and the plain ops quantize without the fused op's restrictions.
- ``step``: one event with the LSTM state in and out, for live sessions; every artifact
  carries it (edge_runtime.live.StepModel runs it).

Seams: `score_function(graph, weights)` (concrete functions, trackable) and
`step_function(weights)` (concrete function, trackable), for `converters.tflite.to_tflite`;
the same cell in NumPy (`numpy_cell`, `reference_states`: calibration states, the NumPy peer);
CHUNK_STEPS. TensorFlow is imported inside them; the chunks' signature keys are
edge_runtime.whole_graph's `chunk_key`, the names the runtime looks for.
"""

from __future__ import annotations

import numpy as np

from edge_runtime.whole_graph import chunk_key, chunk_plan


def _weights(arrays: dict[str, np.ndarray]):
    """(module holding the weights as constants, n_features, units)."""
    import tensorflow as tf

    n_features, four_units = arrays["lstm_kernel"].shape
    module = tf.Module()
    module.kernel = tf.constant(arrays["lstm_kernel"])
    module.recurrent = tf.constant(arrays["lstm_recurrent_kernel"])
    module.bias = tf.constant(arrays["lstm_bias"])
    module.dense_kernel = tf.constant(arrays["dense_kernel"])
    module.dense_bias = tf.constant(arrays["dense_bias"])
    return module, n_features, four_units // 4


def _cell(tf, z, c):
    """One LSTM step from the pre-activations ``z = x W + h U + b``: (new h, new c).
    Keras gate order: input, forget, cell candidate, output."""
    i, f, g, o = tf.split(z, 4, axis=1)
    c_new = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
    return tf.sigmoid(o) * tf.tanh(c_new), c_new


def fused_score_function(arrays: dict[str, np.ndarray]):
    """(concrete function, trackable model) of the fused graph."""
    import tensorflow as tf

    from trainer.model import arrays_to_model

    model = arrays_to_model(arrays, masking=False)
    n_features = arrays["lstm_kernel"].shape[0]

    @tf.function(input_signature=[tf.TensorSpec([1, None, n_features], tf.float32, name="events")])
    def score(events):
        return {"probability": model(events, training=False)}

    return score.get_concrete_function(), model


# The unrolled graph's chunks: a session of L events runs through the chunks of
# edge_runtime.whole_graph.chunk_plan(L), longest first, the state passed from one to the next:
# sessions of 1-4 events (most: replayed Taobao prefixes have a median of 3) take one invoke,
# 50 events four (16, 16, 16, 2). Measured against 1..8, 16, 32 (84 steps in all, against 34
# here; the classic Interpreter's XNNPACK packs a copy of the weights per step): 50 events 79
# against 82 us, 5 events 13.4 against 9.6 us, the dynamic file 312 against 460 KB.
CHUNK_STEPS: tuple[int, ...] = (1, 2, 3, 4, 8, 16)


def unrolled_score_functions(arrays: dict[str, np.ndarray]):
    """(concrete functions, trackable module) of the unrolled graph: one chunk per CHUNK_STEPS.

    Chunk ``T`` takes ``events [B, T, F]`` and the state ``h``, ``c`` ``[B, U]`` and returns
    ``probability [B, 1]`` and the new ``h``, ``c``. The input projections of its T steps are
    one FULLY_CONNECTED over ``[B*T, F]``; only ``h @ U`` stays in the loop. Measured on
    LSTM(128) (DESIGN): XNNPACK then takes the whole chunk (the fused LSTM op it never
    takes), and a batch dimension is free. The steps are unstacked along time (UNPACK):
    slicing a ``[B, T, 4U]`` tensor step by step with STRIDED_SLICE left part of the graph
    outside the delegate and ran 2.3x slower.
    """
    import tensorflow as tf

    module, n_features, units = _weights(arrays)
    functions = []
    for steps in CHUNK_STEPS:
        def chunk(events, h, c, steps=steps):
            projected = tf.reshape(tf.matmul(tf.reshape(events, [-1, n_features]), module.kernel)
                                   + module.bias, [-1, steps, 4 * units])
            for z in tf.unstack(projected, axis=1):
                h, c = _cell(tf, z + tf.matmul(h, module.recurrent), c)
            p = tf.sigmoid(tf.matmul(h, module.dense_kernel) + module.dense_bias)
            return {"probability": p, "h": h, "c": c}

        chunk.__name__ = chunk_key(steps)  # the converter names each signature after its function
        signature = [tf.TensorSpec([None, steps, n_features], tf.float32, name="events"),
                     tf.TensorSpec([None, units], tf.float32, name="h"),
                     tf.TensorSpec([None, units], tf.float32, name="c")]
        functions.append(tf.function(chunk, input_signature=signature).get_concrete_function())
    return functions, module


def score_function(graph: str, arrays: dict[str, np.ndarray]):
    """The (concrete functions, trackable) of export graph ``graph``.

    Args:
        graph: ``fused`` or ``unrolled`` (converters.precisions.GRAPHS).
        arrays: the run's weights (trainer.model.WEIGHT_NAMES).

    Returns:
        (a list of concrete functions, one per signature of the artifact, the trackable that
        holds their weights), for `converters.tflite.to_tflite`.
    """
    if graph == "fused":
        concrete, model = fused_score_function(arrays)
        return [concrete], model
    return unrolled_score_functions(arrays)


def step_function(arrays: dict[str, np.ndarray]):
    """(concrete function, trackable module) of the one-event graph for live sessions.

    ``event [1, F]``, ``h [1, U]``, ``c [1, U]`` -> ``probability [1, 1]``, new ``h``, new ``c``:
    the same weights and gate arithmetic as the other graphs, with the LSTM state passed in
    and out explicitly so a device keeps it per session and pays one step per click.
    """
    import tensorflow as tf

    module, n_features, units = _weights(arrays)

    @tf.function(input_signature=[tf.TensorSpec([1, n_features], tf.float32, name="event"),
                                  tf.TensorSpec([1, units], tf.float32, name="h"),
                                  tf.TensorSpec([1, units], tf.float32, name="c")])
    def step(event, h, c):
        z = tf.matmul(event, module.kernel) + tf.matmul(h, module.recurrent) + module.bias
        h_new, c_new = _cell(tf, z, c)
        p = tf.sigmoid(tf.matmul(h_new, module.dense_kernel) + module.dense_bias)
        return {"probability": p, "h": h_new, "c": c_new}

    return step.get_concrete_function(), module


def reference_states(arrays: dict[str, np.ndarray], x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The LSTM's float32 state after each event of one encoded session, in NumPy.

    Args:
        arrays: the run's weights.
        x: one encoded session (L, F).

    Returns:
        (h, c), each (L + 1, units): row t is the state after the first t events (row 0 zeros).
    """
    kernel, recurrent, bias = arrays["lstm_kernel"], arrays["lstm_recurrent_kernel"], arrays["lstm_bias"]
    units = recurrent.shape[0]
    h = np.zeros((len(x) + 1, units), np.float32)
    c = np.zeros((len(x) + 1, units), np.float32)
    projected = x.astype(np.float32) @ kernel + bias
    for t in range(len(x)):
        h[t + 1], c[t + 1] = numpy_cell(projected[t] + h[t] @ recurrent, c[t])
    return h, c


def sigmoid(z: np.ndarray) -> np.ndarray:
    """The logistic function in NumPy, without overflow warnings for large |z|."""
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def numpy_cell(z: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`_cell` in NumPy: one LSTM step from the pre-activations ``z (..., 4U)`` and the cell
    state ``c (..., U)``: (new h, new c). Keras gate order: input, forget, cell, output."""
    u = z.shape[-1] // 4  # slices, not np.split: a few microseconds less a step
    c = sigmoid(z[..., u:2 * u]) * c + sigmoid(z[..., :u]) * np.tanh(z[..., 2 * u:3 * u])
    return sigmoid(z[..., 3 * u:]) * np.tanh(c), c


STREAM_WINDOWS = 20  # a chunk with fewer samples than this gets as many from the stream


def chunk_samples(arrays: dict[str, np.ndarray], sessions: list[np.ndarray]):
    """Calibration samples of the unrolled graph: ``(signature key, inputs)`` pairs.

    Every chunk has its own tensors, so every chunk needs samples: each session's chunks at
    the places the runtime runs them (`chunk_plan`), with the true state before each. A
    chunk that few sessions reach (16 events of short sessions) also gets windows of the
    sessions laid end to end, with the state run over that stream: the activations' ranges
    are those of real events and real states.

    Args:
        arrays: the run's weights.
        sessions: encoded calibration sessions (L, F).

    Yields:
        (``chunk_T``, {"events": [1, T, F], "h": [1, U], "c": [1, U]}), float32.
    """
    def sample(x: np.ndarray, h: np.ndarray, c: np.ndarray, end: int, steps: int):
        return chunk_key(steps), {"events": x[None, end - steps:end].astype(np.float32),
                                  "h": h[None, end - steps], "c": c[None, end - steps]}

    seen = dict.fromkeys(CHUNK_STEPS, 0)
    for x in sessions:
        h, c = reference_states(arrays, x)
        end = 0
        for steps in chunk_plan(len(x), CHUNK_STEPS):
            end += steps
            seen[steps] += 1
            yield sample(x, h, c, end, steps)
    missing = [steps for steps, n in seen.items() if n < STREAM_WINDOWS]
    if missing and sessions:
        stream = np.concatenate(sessions)
        h, c = reference_states(arrays, stream)
        for steps in missing:
            for end in np.linspace(steps, len(stream), STREAM_WINDOWS).astype(int):
                if end >= steps:
                    yield sample(stream, h, c, int(end), steps)
