"""The precision table: one row per artifact precision, iterated by convert (and later
compare and benchmark). Parity tolerances against the Keras model live here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Precision:
    """One way to convert the trained weights.

    Attributes:
        name: the value of ``--precision`` and the artifact's file suffix.
        description: one line for tables and --help.
        configure: sets the converter's options (optimizations, types, calibration).
        max_abs_diff: the largest |p_tflite - p_keras| accepted on the test sessions.
    """

    name: str
    description: str
    configure: Callable
    max_abs_diff: float


def _float32(converter, calibration=None) -> None:
    del converter, calibration  # the converter's defaults are float32


PRECISIONS: dict[str, Precision] = {p.name: p for p in [
    Precision("float32", "float32 weights and activations", _float32, max_abs_diff=1e-4),
]}
