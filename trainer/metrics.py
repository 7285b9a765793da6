"""Classification metrics of purchase probabilities, with scikit-learn where it fits.

The user's article names MSE, MAE and accuracy; `brier` is the MSE of the probabilities.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

PREFIX_BUCKETS: tuple[tuple[str, int, int], ...] = (
    ("1", 1, 1), ("2", 2, 2), ("3", 3, 3), ("4-5", 4, 5), ("6-10", 6, 10), ("11+", 11, 1 << 62))


@dataclass(frozen=True)
class Metric:
    """One quality figure: its JSON key, how tables and reports name it, which way is better.

    Attributes:
        key: the key in every JSON report (``evaluate --json``, ``compare --json``, report.json).
        label: its name in reports and wide tables (``log-loss``).
        short: its name in narrow terminal tables (``logloss``).
        description: one line for help texts and report legends.
        higher_is_better: True for scores (AUC, F1), False for losses and errors.
    """

    key: str
    label: str
    short: str
    description: str
    higher_is_better: bool


# The one table of metric names: the CLI's tables, the training report and `compare` read it.
METRICS: dict[str, Metric] = {m.key: m for m in (
    Metric("roc_auc", "ROC-AUC", "ROC-AUC", "area under the ROC curve: how well scores rank buyers "
           "above browsers", True),
    Metric("pr_auc", "PR-AUC", "PR-AUC", "average precision: ranking quality where buyers are rare",
           True),
    Metric("log_loss", "log-loss", "logloss", "binary cross-entropy of the probabilities", False),
    Metric("brier", "Brier (MSE)", "Brier", "mean squared error of the probabilities (the "
           "article's MSE)", False),
    Metric("mae", "MAE", "MAE", "mean absolute error of the probabilities", False),
    Metric("accuracy", "accuracy", "acc", "share of sessions decided right at the threshold", True),
    Metric("f1", "F1", "F1", "F1 of the purchase decision at the threshold", True),
    Metric("ece", "ECE", "ECE", "expected calibration error over 10 equal-width bins", False),
)}
# What classification_metrics returns, in table order (ECE is computed apart: it needs bins).
METRIC_KEYS: tuple[str, ...] = ("roc_auc", "pr_auc", "log_loss", "brier", "mae", "accuracy", "f1")


def choose_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The probability threshold that maximises F1 (ties: the higher threshold)."""
    from sklearn.metrics import precision_recall_curve

    y = np.asarray(y)
    if y.min() == y.max():
        return 0.5
    precision, recall, thresholds = precision_recall_curve(y, p)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    scores = f1[:-1]  # thresholds ascend; the last maximum is the highest threshold
    best = len(scores) - 1 - int(np.argmax(scores[::-1]))
    return float(thresholds[best])


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def roc_auc_or_none(y: np.ndarray, p: np.ndarray) -> float | None:
    """ROC-AUC of probabilities ``p`` for 0/1 labels ``y``; None unless both classes occur."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y)
    return _finite(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else None


def classification_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict:
    """ROC-AUC, PR-AUC, log-loss, Brier (MSE), MAE, accuracy and F1 at ``threshold``.

    AUCs are None when only one class is present.
    """
    from sklearn.metrics import (
        accuracy_score,
        average_precision_score,
        brier_score_loss,
        f1_score,
        log_loss,
        roc_auc_score,
    )

    y = np.asarray(y, np.int64)
    p = np.clip(np.asarray(p, np.float64), 0.0, 1.0)
    both = len(np.unique(y)) == 2
    decision = (p >= threshold).astype(np.int64)
    return {
        "roc_auc": _finite(roc_auc_score(y, p)) if both else None,
        "pr_auc": _finite(average_precision_score(y, p)) if both else None,
        "log_loss": _finite(log_loss(y, p, labels=[0, 1])) if len(y) else None,
        "brier": _finite(brier_score_loss(y, p)) if len(y) else None,
        "mae": _finite(np.abs(y - p).mean()) if len(y) else None,
        "accuracy": _finite(accuracy_score(y, decision)) if len(y) else None,
        "f1": _finite(f1_score(y, decision, zero_division=0)) if len(y) else None,
    }


def by_prefix_length(y: np.ndarray, p: np.ndarray, lengths: np.ndarray, threshold: float) -> dict:
    """Metrics per prefix-length bucket (1, 2, 3, 4-5, 6-10, 11+ events)."""
    out = {}
    for name, lo, hi in PREFIX_BUCKETS:
        sel = (lengths >= lo) & (lengths <= hi)
        entry = {"n_sessions": int(sel.sum()), "n_positive": int(np.asarray(y)[sel].sum())}
        if sel.any():
            entry.update(classification_metrics(np.asarray(y)[sel], np.asarray(p)[sel], threshold))
        out[name] = entry
    return out


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error over ``bins`` equal-width probability bins.

    The mean of |share of positives - mean probability| over the non-empty bins, each
    weighted by its share of sessions. A probability of exactly 1.0 falls in the last bin.

    Args:
        y: 0/1 labels (N,).
        p: probabilities (N,), clipped to [0, 1].
        bins: number of bins on [0, 1].

    Returns:
        ECE in [0, 1]; NaN when there are no sessions.

    Raises:
        ValueError: ``bins`` < 1 or ``y`` and ``p`` of different lengths.
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    y = np.asarray(y, np.float64).reshape(-1)
    p = np.clip(np.asarray(p, np.float64).reshape(-1), 0.0, 1.0)
    if len(y) != len(p):
        raise ValueError(f"{len(y)} labels but {len(p)} probabilities")
    if len(y) == 0:
        return float("nan")
    which = np.minimum((p * bins).astype(np.int64), bins - 1)
    count = np.bincount(which, minlength=bins)
    gap = np.abs(np.bincount(which, y, bins) - np.bincount(which, p, bins))  # per-bin sums
    # sum_b n_b/N * |mean_y_b - mean_p_b| == sum_b |sum_y_b - sum_p_b| / N
    return float(gap[count > 0].sum() / len(y))
