"""The Keras LSTM, as tf_keras (Keras 2 API).

Only a tf_keras LSTM converts to TFLite's fused UNIDIRECTIONAL_SEQUENCE_LSTM op
(DESIGN: Keras 3 becomes a WHILE loop). TensorFlow is imported inside the functions,
so importing this module costs nothing.
"""

from __future__ import annotations

import numpy as np

# Weight names in the order `weights_to_arrays` writes them: the run directory stores these
# plain arrays (weights.npz), not a Keras file, so any tool can read them.
WEIGHT_NAMES = ("lstm_kernel", "lstm_recurrent_kernel", "lstm_bias", "dense_kernel", "dense_bias")


def build_lstm(n_features: int, units: int, masking: bool = True, dropout: float = 0.0):
    """LSTM(units) -> Dense(1, sigmoid) over (batch, time, n_features).

    Args:
        n_features: input width (FeatureSpec.n_features).
        units: LSTM units.
        masking: a Masking layer for zero-padded training batches. The export graph has
            none (it blocks fusion and crashes int8 calibration) and takes unpadded input.
        dropout: the LSTM's input dropout while training (the article's model has none);
            inference, and so every exported graph, is the same without it.

    Returns:
        An uncompiled tf_keras Model with layers named ``lstm`` and ``purchase``.
    """
    import tf_keras as keras

    inputs = keras.Input(shape=(None, n_features), name="events")
    x = keras.layers.Masking(mask_value=0.0)(inputs) if masking else inputs
    x = keras.layers.LSTM(units, dropout=dropout, name="lstm")(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="purchase")(x)
    return keras.Model(inputs, outputs, name="ubp_lstm")


def weights_to_arrays(model) -> dict[str, np.ndarray]:
    """The model's weights as plain arrays keyed by WEIGHT_NAMES (what weights.npz holds)."""
    lstm, dense = model.get_layer("lstm"), model.get_layer("purchase")
    kernel, recurrent, bias = lstm.get_weights()
    dense_kernel, dense_bias = dense.get_weights()
    return dict(zip(WEIGHT_NAMES, (kernel, recurrent, bias, dense_kernel, dense_bias), strict=True))


def arrays_to_model(arrays: dict[str, np.ndarray], masking: bool):
    """Rebuild a model from stored arrays (same weights, with or without the Masking layer).

    Args:
        arrays: WEIGHT_NAMES -> array, as `weights_to_arrays` wrote them.
        masking: as `build_lstm`.
    """
    n_features, four_units = arrays["lstm_kernel"].shape
    model = build_lstm(n_features, four_units // 4, masking=masking)
    model.get_layer("lstm").set_weights([arrays[n] for n in WEIGHT_NAMES[:3]])
    model.get_layer("purchase").set_weights([arrays[n] for n in WEIGHT_NAMES[3:]])
    return model


def merge_members(members: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """K trained LSTMs (their `weights_to_arrays`) as one LSTM of K x units, whose output is
    the sigmoid of the members' mean logit.

    Each member keeps its own block of units: the input kernel and bias are the members'
    side by side within each gate (Keras orders a kernel's columns i, f, c, o, each
    ``units`` wide), the recurrent kernel is block-diagonal (a member's units read only its
    own), and the output layer weighs each member's units by 1/K with the mean bias. So the
    ensemble is one graph of the LSTM every converter, quantizer and runtime already
    handles: one file, the same fused, unrolled and step graphs.

    Args:
        members: weight arrays of K models of equal shape (K >= 1).

    Returns:
        The merged weight arrays (WEIGHT_NAMES), float32.
    """
    k = len(members)
    n_features, four_units = members[0]["lstm_kernel"].shape
    units = four_units // 4
    total = k * units
    kernel = np.zeros((n_features, 4 * total), np.float32)
    recurrent = np.zeros((total, 4 * total), np.float32)
    bias = np.zeros(4 * total, np.float32)
    dense = np.zeros((total, 1), np.float32)
    for m, arrays in enumerate(members):
        if arrays["lstm_kernel"].shape != (n_features, four_units):
            raise ValueError(f"member {m} has kernel shape {arrays['lstm_kernel'].shape}, "
                             f"member 0 {(n_features, four_units)}")
        rows = slice(m * units, (m + 1) * units)
        for gate in range(4):
            theirs = slice(gate * units, (gate + 1) * units)
            ours = slice(gate * total + m * units, gate * total + (m + 1) * units)
            kernel[:, ours] = arrays["lstm_kernel"][:, theirs]
            recurrent[rows, ours] = arrays["lstm_recurrent_kernel"][:, theirs]
            bias[ours] = arrays["lstm_bias"][theirs]
        dense[rows] = arrays["dense_kernel"] / k
    dense_bias = np.mean([a["dense_bias"] for a in members], axis=0).astype(np.float32)
    return dict(zip(WEIGHT_NAMES, (kernel, recurrent, bias, dense, dense_bias), strict=True))

