"""Platt recalibration of an artifact's probabilities: the one logit map of ubp-edge.

Quantisation shifts a model's probabilities a little; `convert` fits a Platt map
``p' = sigmoid(a * logit(p) + b)`` that brings a quantised artifact's validation
probabilities back onto the float32 model's, stores it in the artifact (ArtifactInfo's
``calibration`` entry, ``{"method": "platt", "a": .., "b": ..}``) and moves the decision
threshold through the same map, so that no decision changes. The Scorer applies it to every
probability it returns.

Seams: `PlattCalibration` (``apply``, ``apply_threshold``, ``fit``, ``to_dict`` /
``from_dict``) and `logit`, with PROBABILITY_CLIP, the one clip that keeps logits finite.
numpy only: `fit` (used by `convert`) solves its two-parameter logistic regression itself,
so edge_runtime never needs scikit-learn.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from edge_runtime.errors import ArtifactError, ConfigError

# Probabilities are clipped to [PROBABILITY_CLIP, 1 - PROBABILITY_CLIP] before a logit or a
# log-loss, so that a saturated output (0.0 or 1.0) maps to a large finite number.
PROBABILITY_CLIP = 1e-7
PLATT = "platt"
# `fit` keeps a map only when it lowers the cross-entropy to the reference probabilities by
# at least this much: below it, quantisation did not shift them enough to matter.
MIN_IMPROVEMENT = 1e-4
# The inverse strength of the fit's L2 penalty on the slope: all but unregularised, as the
# scikit-learn LogisticRegression(C=1e6) the fit replaces.
FIT_C = 1e6


def clip_probability(p):
    """``p`` clipped to [PROBABILITY_CLIP, 1 - PROBABILITY_CLIP], in its own float type."""
    return np.clip(p, PROBABILITY_CLIP, 1 - PROBABILITY_CLIP)


def logit(p):
    """log(p / (1 - p)) of probabilities, finite for 0 and 1 (see PROBABILITY_CLIP).

    Args:
        p: a probability or an array of them; float32 stays float32.

    Returns:
        The logits, of ``p``'s shape.
    """
    p = np.asarray(p)
    if not np.issubdtype(p.dtype, np.floating):
        p = p.astype(np.float64)
    return np.log(clip_probability(p) / np.clip(1 - p, PROBABILITY_CLIP, 1))


def cross_entropy(p_reference: np.ndarray, q: np.ndarray) -> float:
    """Mean binary cross-entropy of probabilities ``q`` against soft targets ``p_reference``."""
    target = clip_probability(np.asarray(p_reference, np.float64))
    q = clip_probability(np.asarray(q, np.float64))
    return float(-np.mean(target * np.log(q) + (1 - target) * np.log(1 - q)))


@dataclass(frozen=True)
class PlattCalibration:
    """The map ``p -> sigmoid(a * logit(p) + b)``; monotone increasing when ``a > 0``.

    Attributes:
        a: the slope on the logit scale.
        b: the intercept on the logit scale.

    Example:
        >>> cal = PlattCalibration(a=1.1, b=-0.05)
        >>> cal.apply(np.array([0.2, 0.7], np.float32))
        array([0.1796..., 0.7017...], dtype=float32)
    """

    a: float
    b: float

    def __post_init__(self) -> None:
        if not (np.isfinite(self.a) and np.isfinite(self.b)):
            raise ConfigError(f"a Platt calibration needs finite a and b, got a={self.a}, "
                              f"b={self.b}")

    def apply(self, p: np.ndarray) -> np.ndarray:
        """Recalibrated probabilities.

        Args:
            p: probabilities (any shape); float32 in, float32 out.

        Returns:
            The mapped probabilities, float32.
        """
        z = self.a * logit(p) + self.b
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)

    def apply_threshold(self, threshold: float) -> float:
        """A decision threshold moved through the same map, computed in float64: a session
        at or above the old threshold is at or above the new one after `apply`.

        Args:
            threshold: a probability in [0, 1].

        Returns:
            The mapped threshold.
        """
        z = self.a * float(logit(np.float64(threshold))) + self.b
        return float(1.0 / (1.0 + np.exp(-z)))

    @classmethod
    def fit(cls, p: np.ndarray, p_reference: np.ndarray) -> PlattCalibration | None:
        """The map that brings probabilities ``p`` onto ``p_reference`` (a quantised artifact's
        validation probabilities onto the float32 model's), or None when it would not help.

        The target is the float32 output, not the labels: recalibration undoes what
        quantisation did and leaves the float model's own calibration alone. (a, b) minimise
        the cross-entropy of ``sigmoid(a * logit(p) + b)`` to the soft targets ``p_reference``
        plus ``a**2 / (2 * FIT_C)``, the objective of scikit-learn's
        ``LogisticRegression(C=FIT_C)`` on the two weighted copies of every session
        (y=1 with weight p_ref, y=0 with 1 - p_ref) this replaces; solved here by Newton's
        method in numpy, so edge_runtime needs no scikit-learn. The map is kept only when it
        lowers that cross-entropy by at least MIN_IMPROVEMENT.

        Args:
            p: the probabilities to correct (N,).
            p_reference: the probabilities they should match (N,).

        Returns:
            The fitted PlattCalibration, or None (also for no sessions).
        """
        z = logit(np.asarray(p, np.float64)).reshape(-1)
        target = clip_probability(np.asarray(p_reference, np.float64)).reshape(-1)
        if len(z) == 0 or len(z) != len(target):
            return None
        a, b = _newton_logistic(z, target)
        before = cross_entropy(target, p)
        after = cross_entropy(target, 1.0 / (1.0 + np.exp(-(a * z + b))))
        if not (np.isfinite(a) and np.isfinite(b) and after < before - MIN_IMPROVEMENT):
            return None
        return cls(a, b)

    def to_dict(self) -> dict:
        """``{"method": "platt", "a": a, "b": b}``: the artifact's ``calibration`` entry."""
        return {"method": PLATT, "a": self.a, "b": self.b}

    @classmethod
    def from_dict(cls, d: Mapping) -> PlattCalibration:
        """The map stored in an artifact's ``calibration`` entry.

        Args:
            d: ``{"method": "platt", "a": .., "b": ..}``.

        Raises:
            ArtifactError: another method, or a and b not finite.
            KeyError, TypeError, ValueError: a field missing or not a number
                (ArtifactInfo.from_dict names the file and calls the metadata malformed).
        """
        method = str(d["method"])
        if method != PLATT:
            raise ArtifactError(f"calibration method {method!r} not in [{PLATT!r}]")
        try:
            return cls(float(d["a"]), float(d["b"]))
        except ConfigError as e:
            raise ArtifactError(str(e)) from None


def _newton_logistic(z: np.ndarray, target: np.ndarray, iterations: int = 100
                     ) -> tuple[float, float]:
    """(a, b) minimising sum CE(target, sigmoid(a z + b)) + a**2 / (2 FIT_C), by Newton's
    method with step halving (the objective is convex; a handful of steps from the identity
    map a=1, b=0 reach machine precision)."""
    def objective(a: float, b: float) -> float:
        u = a * z + b
        # CE = log(1 + e^u) - t u, written to stay finite for large |u|.
        return float(np.sum(np.logaddexp(0.0, u) - target * u) + a * a / (2 * FIT_C))

    a, b = 1.0, 0.0
    current = objective(a, b)
    for _ in range(iterations):
        q = 1.0 / (1.0 + np.exp(-(a * z + b)))
        r, w = q - target, q * (1.0 - q)
        gradient = np.array([np.dot(r, z) + a / FIT_C, np.sum(r)])
        hessian = np.array([[np.dot(w, z * z) + 1.0 / FIT_C, np.dot(w, z)],
                            [np.dot(w, z), np.sum(w) + 1e-12]])
        try:
            step = np.linalg.solve(hessian, gradient)
        except np.linalg.LinAlgError:
            break
        scale = 1.0
        while scale > 1e-6:
            trial = objective(a - scale * step[0], b - scale * step[1])
            if trial <= current:
                break
            scale /= 2
        else:
            break  # no step lowers the objective: at the optimum, to rounding
        a, b = a - scale * step[0], b - scale * step[1]
        improvement, current = current - trial, trial
        if improvement <= 1e-15 * max(1.0, abs(current)):
            break
    return float(a), float(b)
