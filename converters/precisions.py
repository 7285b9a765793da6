"""The precision table: one row per artifact precision. `convert`, `compare` and `benchmark`
iterate it; parity tolerances against the Keras model live here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class OpsSet(StrEnum):
    BUILTINS = "builtins"         # float kernels (with int8 weights for dynamic range)
    INT8 = "int8"                 # full-integer kernels only
    INT16X8 = "16x8"              # int16 activations, int8 weights


@dataclass(frozen=True)
class Precision:
    """One way to convert the trained weights.

    Attributes:
        name: the value of ``--precision`` and the artifact's file suffix.
        description: one line for tables and ``--help``.
        optimize: apply the converter's default optimisation (weight quantisation).
        float16_weights: store weights as float16.
        ops: which kernels the graph may use.
        int8_io: the model's input and output are int8 (the runtime quantises for the caller).
        max_abs_diff: the largest |p_artifact - p_keras| accepted on the test sessions. It is a
            guard against a broken conversion, not the accuracy verdict: `compare` judges that.
        step_precision: the precision of the live one-event graph shipped inside the artifact.
            Full-integer precisions keep the step's state in float (dynamic range): with h and c
            re-quantized at every event the score drifted by up to 0.26 (DESIGN).
        step_max_abs_diff: the largest |p_step - p_whole_prefix| accepted when a session's
            events are pushed one at a time, against the same artifact scoring each prefix whole.
        not_for: graphs this precision is not converted to, each with the measured reason
            (the row says it as "unsupported").
        min_runtime: the oldest TFLite runtime its artifacts are measured to load and score
            on, whole and live, both graphs (tests/test_legacy_runtime.py: tflite-runtime
            2.14.0, the oldest the tests run); None when no artifact of it is written to
            measure. The artifact's own ``min_runtime_version`` entry, which TensorFlow's
            converter derives from the op versions, may be older: 2.3.0 for dynamic range,
            1.14.0 for float32 (edge_runtime.backends refuses by name a backend older than
            that entry).
    """

    name: str
    description: str
    optimize: bool = False
    float16_weights: bool = False
    ops: OpsSet = OpsSet.BUILTINS
    int8_io: bool = False
    max_abs_diff: float = 1e-4
    step_precision: str = ""
    step_max_abs_diff: float = 1e-5
    not_for: tuple[tuple[str, str], ...] = ()
    min_runtime: str | None = "2.14.0"

    def refusal(self, graph: str) -> str | None:
        """Why this precision is not converted to ``graph``, or None when it is."""
        return dict(self.not_for).get(graph)

    @property
    def live_precision(self) -> str:
        return self.step_precision or self.name

    @property
    def needs_calibration(self) -> bool:
        return self.ops is not OpsSet.BUILTINS

    @property
    def dynamic_range(self) -> bool:
        """int8 weights with float kernels (hybrid ops): the dynamic precision, and the step
        graph of the full-integer ones (their ``live_precision``)."""
        return self.optimize and not self.float16_weights and not self.needs_calibration

    @property
    def quantized(self) -> bool:
        return self.optimize

    def configure(self, converter, representative_dataset=None) -> None:
        """Set a `tf.lite.TFLiteConverter`'s options for this precision.

        Args:
            converter: the converter, before ``convert()``.
            representative_dataset: the calibration generator (calibrated precisions only).
        """
        import tensorflow as tf

        if self.optimize:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if self.float16_weights:
            converter.target_spec.supported_types = [tf.float16]
        if self.needs_calibration:
            converter.representative_dataset = representative_dataset
            converter.target_spec.supported_ops = [
                tf.lite.OpsSet.TFLITE_BUILTINS_INT8 if self.ops is OpsSet.INT8 else
                tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
        if self.dynamic_range:
            # Per-tensor dense weights: TF 2.21 quantizes them per channel by default, which
            # makes FULLY_CONNECTED version 12 (hybrid per-channel, runtime >= 2.17), and
            # tflite-runtime 2.14 refuses the model ("Didn't find op for builtin opcode
            # 'FULLY_CONNECTED' version '12'"). Per tensor it is version 9 (runtime 2.3.0),
            # for no measurable loss on the Taobao run (README, "Backends"): the unrolled
            # graph's max |p - p_keras| 0.0046 against 0.0027 (allowed 0.05), the same test
            # ROC-AUC, no decision flipped, 27% smaller. The LSTM op was per tensor already.
            converter._experimental_disable_per_channel_quantization_for_dense_layers = True
        if self.int8_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8


# Tolerances measured on the Taobao run (LSTM(128), 1,544 test sessions): float16 2e-4,
# dynamic 4.4e-3, int8 0.10 (fused); each bound leaves room for other data and seeds.
PRECISIONS: dict[str, Precision] = {p.name: p for p in [
    Precision("float32", "float32 weights and activations", max_abs_diff=1e-4),
    Precision("float16", "float16 weights, float32 compute", optimize=True, float16_weights=True,
              max_abs_diff=5e-3, step_max_abs_diff=5e-3),
    Precision("dynamic", "int8 weights, float activations (dynamic range)", optimize=True,
              max_abs_diff=0.05, step_max_abs_diff=0.05),
    Precision("int8", "full integer, calibrated; float input and output", optimize=True,
              ops=OpsSet.INT8, max_abs_diff=0.3, step_precision="dynamic", step_max_abs_diff=0.3),
    Precision("int8-io", "full integer with int8 input and output", optimize=True,
              ops=OpsSet.INT8, int8_io=True, max_abs_diff=0.3, step_precision="dynamic",
              step_max_abs_diff=0.3),
    Precision("16x8", "int16 activations, int8 weights, calibrated", optimize=True,
              ops=OpsSet.INT16X8, max_abs_diff=0.05, step_precision="dynamic",
              step_max_abs_diff=0.1,
              # Measured on the Taobao run: the same chunk alone in its own model is within
              # 8e-5 at 16x8, and int8 calibrates the same samples fine.
              not_for=(("unrolled", "TF 2.21's calibrator gets the 16x8 ranges of a model of "
                                    "several signatures wrong (scores off by up to 0.61)"),),
              # Nothing to measure: TF 2.21 refuses the fused graph too ("Quantization to
              # 16x8-bit not yet supported for op: 'UNIDIRECTIONAL_SEQUENCE_LSTM'").
              min_runtime=None),
]}

GRAPHS: tuple[str, ...] = ("fused", "unrolled")
