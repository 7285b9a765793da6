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


def build_lstm(n_features: int, units: int, masking: bool = True):
    """LSTM(units) -> Dense(1, sigmoid) over (batch, time, n_features), without dropout.

    Args:
        n_features: input width (FeatureSpec.n_features).
        units: LSTM units.
        masking: a Masking layer for zero-padded training batches. The export graph has
            none (it blocks fusion and crashes int8 calibration) and takes unpadded input.

    Returns:
        An uncompiled tf_keras Model with layers named ``lstm`` and ``purchase``.
    """
    import tf_keras as keras

    inputs = keras.Input(shape=(None, n_features), name="events")
    x = keras.layers.Masking(mask_value=0.0)(inputs) if masking else inputs
    x = keras.layers.LSTM(units, name="lstm")(x)
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
