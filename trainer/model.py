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


def build_lstm(n_features: int, units: int, masking: bool = True, dropout: float = 0.0,
               recurrent_dropout: float = 0.0):
    """LSTM(units) -> Dense(1, sigmoid) over (batch, time, n_features).

    Args:
        n_features: input width (FeatureSpec.n_features).
        units: LSTM units.
        masking: a Masking layer for zero-padded training batches. The export graph has
            none (it blocks fusion and crashes int8 calibration) and takes unpadded input.
        dropout, recurrent_dropout: as in Keras; 0 keeps the cuDNN-free fused path simple.
    """
    import tf_keras as keras

    inputs = keras.Input(shape=(None, n_features), name="events")
    x = keras.layers.Masking(mask_value=0.0)(inputs) if masking else inputs
    x = keras.layers.LSTM(units, dropout=dropout, recurrent_dropout=recurrent_dropout,
                          name="lstm")(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="purchase")(x)
    return keras.Model(inputs, outputs, name="ubp_lstm")


def weights_to_arrays(model) -> dict[str, np.ndarray]:
    lstm, dense = model.get_layer("lstm"), model.get_layer("purchase")
    kernel, recurrent, bias = lstm.get_weights()
    dense_kernel, dense_bias = dense.get_weights()
    return dict(zip(WEIGHT_NAMES, (kernel, recurrent, bias, dense_kernel, dense_bias), strict=True))


def arrays_to_model(arrays: dict[str, np.ndarray], masking: bool):
    """Rebuild a model from stored arrays (same weights, with or without the Masking layer)."""
    n_features, four_units = arrays["lstm_kernel"].shape
    model = build_lstm(n_features, four_units // 4, masking=masking)
    model.get_layer("lstm").set_weights([arrays[n] for n in WEIGHT_NAMES[:3]])
    model.get_layer("purchase").set_weights([arrays[n] for n in WEIGHT_NAMES[3:]])
    return model
