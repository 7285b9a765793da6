"""Tests of trainer.metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from trainer.metrics import (
    METRIC_KEYS,
    PREFIX_BUCKETS,
    by_prefix_length,
    choose_threshold,
    classification_metrics,
)

Y = np.array([0, 0, 1, 1, 1])
P = np.array([0.1, 0.6, 0.4, 0.8, 0.9])


def f1_at(y, p, t) -> float:
    pred = np.asarray(p) >= t
    y = np.asarray(y).astype(bool)
    tp = int((pred & y).sum())
    fp = int((pred & ~y).sum())
    fn = int((~pred & y).sum())
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def test_classification_metrics_hand_computed():
    m = classification_metrics(Y, P, threshold=0.5)
    assert set(m) == set(METRIC_KEYS)
    # Brier = MSE of the probabilities: (0.01 + 0.36 + 0.36 + 0.04 + 0.01) / 5
    assert m["brier"] == pytest.approx(0.156, abs=1e-12)
    # MAE: (0.1 + 0.6 + 0.6 + 0.2 + 0.1) / 5
    assert m["mae"] == pytest.approx(0.32, abs=1e-12)
    # decisions at 0.5: [0, 1, 0, 1, 1] -> 3 of 5 right; TP 2, FP 1, FN 1 -> F1 = 2/3
    assert m["accuracy"] == pytest.approx(0.6, abs=1e-12)
    assert m["f1"] == pytest.approx(2 / 3, abs=1e-12)
    # ROC-AUC: 5 of the 6 (positive, negative) pairs are ordered right.
    assert m["roc_auc"] == pytest.approx(5 / 6, abs=1e-12)
    # Average precision: ranks 0.9(+) 0.8(+) 0.6(-) 0.4(+): 1/3*1 + 1/3*1 + 1/3*3/4
    assert m["pr_auc"] == pytest.approx(11 / 12, abs=1e-12)
    expected_ll = -(math.log(0.9) + math.log(0.4) + math.log(0.4) + math.log(0.8) + math.log(0.9)) / 5
    assert m["log_loss"] == pytest.approx(expected_ll, abs=1e-9)


def test_threshold_is_inclusive():
    # p == threshold counts as a positive decision.
    m = classification_metrics(np.array([1, 0]), np.array([0.5, 0.2]), threshold=0.5)
    assert m["accuracy"] == 1.0 and m["f1"] == 1.0


def test_accuracy_and_f1_depend_on_threshold():
    low = classification_metrics(Y, P, threshold=0.05)   # everything positive
    assert low["accuracy"] == pytest.approx(0.6) and low["f1"] == pytest.approx(0.75)
    high = classification_metrics(Y, P, threshold=0.95)  # nothing positive
    assert high["accuracy"] == pytest.approx(0.4) and high["f1"] == 0.0
    # threshold-free metrics are unchanged
    for k in ("roc_auc", "pr_auc", "log_loss", "brier", "mae"):
        assert low[k] == high[k]


@pytest.mark.parametrize("y", [[1, 1, 1], [0, 0, 0, 0]])
def test_aucs_none_with_one_class(y):
    y = np.array(y)
    p = np.linspace(0.2, 0.7, len(y))
    m = classification_metrics(y, p, threshold=0.5)
    assert m["roc_auc"] is None and m["pr_auc"] is None
    assert m["brier"] == pytest.approx(float(np.mean((p - y) ** 2)))
    assert m["mae"] == pytest.approx(float(np.mean(np.abs(p - y))))
    assert m["log_loss"] is not None and math.isfinite(m["log_loss"])
    assert m["accuracy"] == pytest.approx(float(np.mean((p >= 0.5) == y)))


def test_probabilities_are_clipped_to_unit_interval():
    m = classification_metrics(np.array([0, 1]), np.array([-0.5, 1.5]), threshold=0.5)
    assert m["brier"] == 0.0 and m["mae"] == 0.0 and m["accuracy"] == 1.0


def test_empty_input_gives_none():
    m = classification_metrics(np.array([], int), np.array([], float), threshold=0.5)
    assert all(m[k] is None for k in METRIC_KEYS)


# --------------------------------------------------------------------------- threshold

def brute_best_f1(y, p) -> float:
    return max(f1_at(y, p, t) for t in np.unique(p))


@pytest.mark.parametrize("seed", range(8))
def test_choose_threshold_maximises_f1(seed):
    rng = np.random.default_rng(seed)
    n = 60
    y = (rng.random(n) < 0.3).astype(int)
    y[0], y[1] = 0, 1
    p = np.clip(0.3 * y + rng.random(n) * 0.7, 0, 1).round(2)  # rounding makes ties in p
    t = choose_threshold(y, p)
    assert t in set(np.unique(p).tolist())
    assert f1_at(y, p, t) == pytest.approx(brute_best_f1(y, p), abs=1e-12)
    # classification_metrics agrees at that threshold
    assert classification_metrics(y, p, t)["f1"] == pytest.approx(f1_at(y, p, t), abs=1e-12)


def test_choose_threshold_small_example():
    # thresholds 0.1..0.9: best F1 at 0.4 (TP 3, FP 1 -> 6/7)
    t = choose_threshold(Y, P)
    assert f1_at(Y, P, t) == pytest.approx(brute_best_f1(Y, P))
    assert t == pytest.approx(0.4)
    assert f1_at(Y, P, 0.4) == pytest.approx(6 / 7)


@pytest.mark.parametrize("y", [[0, 0, 0], [1, 1]])
def test_choose_threshold_one_class_returns_half(y):
    assert choose_threshold(np.array(y), np.linspace(0.1, 0.9, len(y))) == 0.5


def test_choose_threshold_ties_prefer_higher_threshold():
    """BUG (trainer/metrics.py, choose_threshold): the docstring says F1 ties go to the higher
    threshold, but np.argmax over precision_recall_curve's ascending thresholds returns the
    first, i.e. the LOWEST, of the tied thresholds."""
    y = np.array([1, 0, 0, 1])
    p = np.array([0.1, 0.2, 0.3, 0.4])
    # F1 at 0.1 = 2/3 (everything positive), at 0.4 = 2/3 (one TP, no FP): a tie.
    assert f1_at(y, p, 0.1) == f1_at(y, p, 0.4) == brute_best_f1(y, p)
    assert choose_threshold(y, p) == pytest.approx(0.4)


# --------------------------------------------------------------------------- prefix buckets

def test_by_prefix_length_buckets_and_counts():
    lengths = np.array([1, 1, 2, 3, 3, 3, 4, 5, 6, 10, 10, 11, 50, 1000])
    y = np.array([1, 0, 1, 0, 0, 1, 1, 1, 0, 0, 1, 1, 0, 1])
    p = np.linspace(0.05, 0.95, len(y))
    out = by_prefix_length(y, p, lengths, threshold=0.5)
    assert list(out) == ["1", "2", "3", "4-5", "6-10", "11+"]
    assert [b[0] for b in PREFIX_BUCKETS] == list(out)
    counts = {k: (v["n_sessions"], v["n_positive"]) for k, v in out.items()}
    assert counts == {"1": (2, 1), "2": (1, 1), "3": (3, 1), "4-5": (2, 2), "6-10": (3, 1),
                      "11+": (3, 2)}
    # Each bucket's metrics are those of its sessions alone.
    sel = (lengths >= 6) & (lengths <= 10)
    expected = classification_metrics(y[sel], p[sel], 0.5)
    for k in expected:
        assert out["6-10"][k] == expected[k]
    # One-class buckets report AUCs as None.
    assert out["2"]["roc_auc"] is None and out["4-5"]["pr_auc"] is None
    assert out["1"]["roc_auc"] is not None


def test_by_prefix_length_empty_bucket_has_counts_only():
    out = by_prefix_length(np.array([1, 0]), np.array([0.9, 0.1]), np.array([1, 12]), 0.5)
    assert out["2"] == {"n_sessions": 0, "n_positive": 0}
    assert out["4-5"] == {"n_sessions": 0, "n_positive": 0}
    assert out["1"]["n_sessions"] == 1 and out["11+"]["n_sessions"] == 1
    assert sum(v["n_sessions"] for v in out.values()) == 2
