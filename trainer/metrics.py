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
    Metric("lift_at", "lift", "lift", "purchase rate among the top k% of sessions by score over "
           "the overall rate (1 = no better than random)", True),
    Metric("capture_at", "capture", "capture", "share of all purchasing sessions found in the top "
           "k% of sessions by score", True),
)}
# What classification_metrics returns, in table order (ECE is computed apart: it needs bins).
METRIC_KEYS: tuple[str, ...] = ("roc_auc", "pr_auc", "log_loss", "brier", "mae", "accuracy", "f1")
# The top slices a marketing team targets, in percent of sessions by score.
TOP_PERCENTS: tuple[int, ...] = (1, 5, 10, 20)
# What marketing_metrics returns, in JSON order.
MARKETING_KEYS: tuple[str, ...] = ("n_sessions_at", "lift_at", "capture_at", "gains", "calibration_bins",
                                   "ece_deciles", "calibration_deciles")
# The keys of one calibration_table row, in JSON order.
CALIBRATION_KEYS: tuple[str, ...] = ("lo", "hi", "n_sessions", "mean_predicted", "observed_rate", "gap")


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


def _labels_and_scores(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``y`` as float 0/1 and ``p`` clipped to [0, 1], both flat.

    Raises:
        ValueError: ``y`` and ``p`` of different lengths.
    """
    y = np.asarray(y, np.float64).reshape(-1)
    p = np.clip(np.asarray(p, np.float64).reshape(-1), 0.0, 1.0)
    if len(y) != len(p):
        raise ValueError(f"{len(y)} labels but {len(p)} probabilities")
    return y, p


def _bin_sums(y: np.ndarray, p: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin: sessions, sum of labels, sum of probabilities (1.0 in the last bin)."""
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    which = np.minimum((p * bins).astype(np.int64), bins - 1)
    return (np.bincount(which, minlength=bins), np.bincount(which, y, bins),
            np.bincount(which, p, bins))


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error over ``bins`` equal-width probability bins.

    The mean of |share of positives - mean probability| over the non-empty bins, each
    weighted by its share of sessions. A probability of exactly 1.0 falls in the last bin.
    `calibration_table` lists the bins it sums.

    Args:
        y: 0/1 labels (N,).
        p: probabilities (N,), clipped to [0, 1].
        bins: number of bins on [0, 1].

    Returns:
        ECE in [0, 1]; NaN when there are no sessions.

    Raises:
        ValueError: ``bins`` < 1 or ``y`` and ``p`` of different lengths.
    """
    y, p = _labels_and_scores(y, p)
    count, sum_y, sum_p = _bin_sums(y, p, bins)
    if len(y) == 0:
        return float("nan")
    # sum_b n_b/N * |mean_y_b - mean_p_b| == sum_b |sum_y_b - sum_p_b| / N
    gap = np.abs(sum_y - sum_p)
    return float(gap[count > 0].sum() / len(y))


def calibration_table(y: np.ndarray, p: np.ndarray, bins: int = 10) -> list[dict]:
    """The bins behind `expected_calibration_error`, one dict per bin (keys CALIBRATION_KEYS).

    Bin b holds the probabilities in [b/bins, (b+1)/bins); the last bin also holds 1.0.
    ``gap`` is observed rate minus mean predicted probability (positive: the model
    under-predicts there), so ECE = sum of n_sessions/N * |gap|. An empty bin has
    ``n_sessions`` 0 and None for the means and the gap.

    Args:
        y: 0/1 labels (N,).
        p: probabilities (N,), clipped to [0, 1].
        bins: number of bins on [0, 1].

    Returns:
        ``bins`` dicts, lowest probabilities first.

    Raises:
        ValueError: ``bins`` < 1 or ``y`` and ``p`` of different lengths.

    Example:
        >>> calibration_table([0, 1, 1], [0.05, 0.5, 0.7], bins=2)[1]
        {'lo': 0.5, 'hi': 1.0, 'n_sessions': 2, 'mean_predicted': 0.6, 'observed_rate': 1.0, 'gap': 0.4}
    """
    y, p = _labels_and_scores(y, p)
    count, sum_y, sum_p = _bin_sums(y, p, bins)
    rows = []
    for b in range(bins):
        n = int(count[b])
        mean_p = float(sum_p[b] / n) if n else None
        rate = float(sum_y[b] / n) if n else None
        rows.append(dict(zip(CALIBRATION_KEYS, (b / bins, (b + 1) / bins, n, mean_p, rate,
                                                None if n == 0 else rate - mean_p), strict=True)))
    return rows


def calibration_deciles(y: np.ndarray, p: np.ndarray, groups: int = 10) -> list[dict]:
    """Calibration by deciles of the score: the sessions ordered by probability (ties in
    session order) and cut into ``groups`` groups of equal size (sizes differ by at most
    one), lowest first; keys CALIBRATION_KEYS, ``lo`` and ``hi`` the group's lowest and highest
    probability. Where equal-width bins put most sessions of a rare outcome in the first bin,
    every decile holds a tenth of them.

    Raises:
        ValueError: ``groups`` < 1 or ``y`` and ``p`` of different lengths.
    """
    if groups < 1:
        raise ValueError(f"groups {groups}: expected at least 1")
    y, p = _labels_and_scores(y, p)
    rows = []
    for part in np.array_split(np.argsort(p, kind="stable"), groups):
        n = len(part)
        if n == 0:
            rows.append(dict(zip(CALIBRATION_KEYS, (None, None, 0, None, None, None), strict=True)))
            continue
        mean_p, rate = float(p[part].mean()), float(y[part].mean())
        rows.append(dict(zip(CALIBRATION_KEYS, (float(p[part].min()), float(p[part].max()), n, mean_p, rate,
                                                rate - mean_p), strict=True)))
    return rows


def decile_ece(y: np.ndarray, p: np.ndarray, groups: int = 10) -> float | None:
    """Expected calibration error over `calibration_deciles`: sum of n/N * |gap|; None
    without sessions."""
    rows = calibration_deciles(y, p, groups)
    total = sum(r["n_sessions"] for r in rows)
    if not total:
        return None
    return float(sum(r["n_sessions"] * abs(r["gap"]) for r in rows if r["n_sessions"]) / total)


def top_count(n: int, percent: int) -> int:
    """How many sessions "the top ``percent``%" of ``n`` is: ceil(percent * n / 100).

    Integer arithmetic, so 7% of 100 is 7 (not 8 from 0.07 * 100 = 7.000000000000001). A
    non-empty slice of a non-empty set holds at least one session.

    Raises:
        ValueError: ``n`` < 0 or ``percent`` outside 0..100.
    """
    if n < 0 or not 0 <= percent <= 100:
        raise ValueError(f"top {percent}% of {n} sessions: need n >= 0 and percent in 0..100")
    return -(-percent * n // 100)


def rank_by_score(p: np.ndarray) -> np.ndarray:
    """Session indices from the highest score down; equal scores keep their input order.

    A stable sort, so a slice cut through tied scores takes the earlier sessions: the
    result is deterministic, and it is what a team mailing the top of a sorted list gets.
    """
    p = np.asarray(p, np.float64).reshape(-1)
    return np.argsort(-p, kind="stable")


def cumulative_gains(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The cumulative gains curve at every session: (share of sessions, share of purchases).

    Sessions are taken in `rank_by_score` order; point i (from 0) is the top i sessions, so
    both arrays have N + 1 points from (0, 0) to (1, 1). With no purchase the second array
    is all NaN.

    Raises:
        ValueError: ``y`` and ``p`` of different lengths.
    """
    y, p = _labels_and_scores(y, p)
    found = np.concatenate([[0.0], np.cumsum(y[rank_by_score(p)])])
    sessions = np.arange(len(y) + 1) / max(len(y), 1)
    total = found[-1]
    return sessions, (found / total if total > 0 else np.full(len(found), np.nan))


def lift_and_capture(y: np.ndarray, p: np.ndarray,
                     percents: tuple[int, ...] = TOP_PERCENTS) -> dict[str, dict[str, float | int | None]]:
    """Lift and capture rate of the top ``percents`` of sessions by score.

    The top k% is the first `top_count` (ceil(k * N / 100)) sessions of `rank_by_score`
    (highest score first, ties in input order). Lift is the purchase rate among them over
    the overall purchase rate; capture is the share of all purchasing sessions among them.

    Args:
        y: 0/1 labels (N,).
        p: probabilities (N,).
        percents: the slices, in whole percent (0..100).

    Returns:
        ``{"n_sessions_at": {"1%": n, ...}, "lift_at": {"1%": lift, ...}, "capture_at": {...}}``;
        lift and capture are None when there is no purchase (or no session) at all, or,
        for lift, when the slice is empty.

    Raises:
        ValueError: ``y`` and ``p`` of different lengths, or a percent outside 0..100.

    Example:
        >>> lift_and_capture([1, 0, 0, 0], [0.9, 0.1, 0.2, 0.3], (25,))["lift_at"]
        {'25%': 4.0}
    """
    y, p = _labels_and_scores(y, p)
    found = np.concatenate([[0.0], np.cumsum(y[rank_by_score(p)])])
    n, total = len(y), float(found[-1])
    out: dict[str, dict] = {"n_sessions_at": {}, "lift_at": {}, "capture_at": {}}
    for k in percents:
        key, top = f"{k}%", top_count(n, k)
        hits = float(found[top])
        out["n_sessions_at"][key] = top
        out["capture_at"][key] = hits / total if total > 0 else None
        # (hits / top) / (total / n), as one division of integers' products: exact ties.
        out["lift_at"][key] = hits * n / (top * total) if total > 0 and top > 0 else None
    return out


def gains_at_percents(y: np.ndarray, p: np.ndarray, step: int = 1) -> list[float] | None:
    """The cumulative gains curve sampled at 0%, step%, 2*step%, ..., 100% of sessions.

    Entry i is the capture rate of the top ``i * step``% (`top_count` sessions), so the
    list starts at 0.0 and ends at 1.0.

    Returns:
        The list, or None when there is no purchase to capture.

    Raises:
        ValueError: ``step`` not a divisor of 100, or ``y`` and ``p`` of different lengths.
    """
    if step < 1 or 100 % step:
        raise ValueError(f"step {step}: expected a divisor of 100 (1, 2, 4, 5, 10, ...)")
    y, p = _labels_and_scores(y, p)
    found = np.concatenate([[0.0], np.cumsum(y[rank_by_score(p)])])
    total = float(found[-1])
    if total <= 0:
        return None
    return [float(found[top_count(len(y), k)]) / total for k in range(0, 101, step)]


def marketing_metrics(y: np.ndarray, p: np.ndarray, bins: int = 10) -> dict:
    """The figures a marketing team reads, keyed as MARKETING_KEYS (`evaluate`, `compare` JSON).

    ``n_sessions_at``, ``lift_at``, ``capture_at``: `lift_and_capture` at TOP_PERCENTS;
    ``gains``: `gains_at_percents` at every 1% (101 points, None without a purchase);
    ``calibration_bins``: `calibration_table` with ``bins`` equal-width bins;
    ``ece_deciles`` and ``calibration_deciles``: the same by deciles of the score
    (`decile_ece`, `calibration_deciles`).

    Raises:
        ValueError: ``y`` and ``p`` of different lengths.
    """
    return {**lift_and_capture(y, p), "gains": gains_at_percents(y, p),
            "calibration_bins": calibration_table(y, p, bins),
            "ece_deciles": decile_ece(y, p, bins), "calibration_deciles": calibration_deciles(y, p, bins)}
