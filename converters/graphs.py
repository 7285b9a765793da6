"""Export graphs built from the trained weights, as TensorFlow concrete functions.

- ``fused``: a tf_keras LSTM without its Masking layer, batch 1, any length ``[1, L, F]``;
  it converts to the single UNIDIRECTIONAL_SEQUENCE_LSTM op (DESIGN) and is fed unpadded
  sessions.
- ``unrolled``: the same LSTM written out step by step in plain ops (FULLY_CONNECTED,
  LOGISTIC, TANH, MUL, ADD) over a fixed ``T = max_len``, any batch ``[B, T, F]`` plus a
  ``[B, T, 1]`` mask that holds the state through padding. XNNPACK runs these ops fast on
  x86 and they quantize without the fused op's restrictions; the file is larger.
- ``step``: one event with the LSTM state in and out, for live sessions; every artifact
  carries it (edge_runtime.live.StepModel runs it).

Seams: `score_function(graph, weights, max_len)` and `step_function(weights)`, each a
(concrete function, trackable) pair for `converters.tflite.to_tflite`. TensorFlow is imported
inside them.
"""

from __future__ import annotations

import numpy as np


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


def unrolled_score_function(arrays: dict[str, np.ndarray], max_len: int):
    """(concrete function, trackable module) of the unrolled graph over ``max_len`` steps."""
    import tensorflow as tf

    module, n_features, units = _weights(arrays)

    @tf.function(input_signature=[tf.TensorSpec([None, max_len, n_features], tf.float32, name="events"),
                                  tf.TensorSpec([None, max_len, 1], tf.float32, name="mask")])
    def score(events, mask):
        batch = tf.shape(events)[0]
        # Input projections of all steps in one matmul; only h @ U stays in the loop.
        projected = tf.reshape(tf.matmul(tf.reshape(events, [-1, n_features]), module.kernel)
                               + module.bias, [-1, max_len, 4 * units])
        h = tf.zeros([batch, units])
        c = tf.zeros([batch, units])
        for t in range(max_len):
            h_new, c_new = _cell(tf, projected[:, t, :] + tf.matmul(h, module.recurrent), c)
            m = mask[:, t, :]
            c = c + m * (c_new - c)
            h = h + m * (h_new - h)
        return {"probability": tf.sigmoid(tf.matmul(h, module.dense_kernel) + module.dense_bias)}

    return score.get_concrete_function(), module


def score_function(graph: str, arrays: dict[str, np.ndarray], max_len: int):
    """The (concrete function, trackable) of export graph ``graph``.

    Args:
        graph: ``fused`` or ``unrolled`` (converters.precisions.GRAPHS).
        arrays: the run's weights (trainer.model.WEIGHT_NAMES).
        max_len: the unrolled graph's steps (FeatureSpec.max_len).
    """
    if graph == "fused":
        return fused_score_function(arrays)
    return unrolled_score_function(arrays, max_len)


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
