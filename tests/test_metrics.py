"""Tests of trainer.metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from trainer.metrics import (
    CALIBRATION_KEYS,
    MARKETING_KEYS,
    METRIC_KEYS,
    PREFIX_BUCKETS,
    TOP_PERCENTS,
    by_prefix_length,
    calibration_deciles,
    calibration_table,
    choose_threshold,
    classification_metrics,
    cumulative_gains,
    decile_ece,
    expected_calibration_error,
    gains_at_percents,
    lift_and_capture,
    marketing_metrics,
    rank_by_score,
    top_count,
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


# --------------------------------------------------------------------------- lift, capture, gains
# Issue 14: the top k% is ceil(k * N / 100) sessions, highest score first, ties in input order.

def test_top_count_is_an_exact_ceiling():
    assert [top_count(100, k) for k in (0, 1, 7, 20, 100)] == [0, 1, 7, 20, 100]  # 0.07*100 > 7
    assert [top_count(250, k) for k in (1, 5, 10, 20)] == [3, 13, 25, 50]
    assert top_count(0, 20) == 0 and top_count(1, 1) == 1


@pytest.mark.parametrize("n, percent", [(-1, 5), (10, 101), (10, -1)])
def test_top_count_refuses_impossible_slices_naming_them(n, percent):
    with pytest.raises(ValueError, match=f"top {percent}% of {n} sessions"):
        top_count(n, percent)


def test_lift_and_capture_hand_computed_with_n_not_divisible_by_100():
    # N = 30, 6 buyers (rate 0.2). Scores descend with the index, so the ranking is the input order.
    y = np.zeros(30, int)
    y[[0, 2, 3, 10, 20, 29]] = 1
    p = np.linspace(0.99, 0.01, 30)
    m = lift_and_capture(y, p)
    # ceil(0.3)=1, ceil(1.5)=2, ceil(3)=3, ceil(6)=6 sessions
    assert m["n_sessions_at"] == {"1%": 1, "5%": 2, "10%": 3, "20%": 6}
    # top 1: 1 buyer; top 2: 1; top 3: 2; top 6: 3
    assert m["capture_at"] == {"1%": 1 / 6, "5%": 1 / 6, "10%": 2 / 6, "20%": 3 / 6}
    assert m["lift_at"]["1%"] == pytest.approx(5.0, abs=1e-12)          # (1/1) / 0.2
    assert m["lift_at"]["5%"] == pytest.approx(2.5, abs=1e-12)          # (1/2) / 0.2
    assert m["lift_at"]["10%"] == pytest.approx(10 / 3, abs=1e-12)      # (2/3) / 0.2
    assert m["lift_at"]["20%"] == pytest.approx(2.5, abs=1e-12)         # (3/6) / 0.2


def test_ties_are_broken_by_input_order():
    # Four sessions tie at 0.5; the top 1 of 4 (25%) is the first of them in the input.
    p = np.array([0.5, 0.5, 0.5, 0.5])
    assert list(rank_by_score(p)) == [0, 1, 2, 3]
    first = lift_and_capture(np.array([1, 0, 0, 0]), p, (25, 50))
    last = lift_and_capture(np.array([0, 0, 0, 1]), p, (25, 50))
    assert first["capture_at"] == {"25%": 1.0, "50%": 1.0} and first["lift_at"]["25%"] == 4.0
    assert last["capture_at"] == {"25%": 0.0, "50%": 0.0} and last["lift_at"]["25%"] == 0.0
    # Ties below a higher score: the higher one leads, the tied ones follow in input order.
    assert list(rank_by_score([0.2, 0.7, 0.2, 0.9, 0.2])) == [3, 1, 0, 2, 4]


def test_a_slice_with_no_purchase_has_lift_and_capture_zero():
    y = np.array([0] * 10 + [1] * 2)
    p = np.linspace(0.9, 0.1, 12)  # the buyers are scored lowest
    m = lift_and_capture(y, p, (10, 20, 50))
    assert m["n_sessions_at"] == {"10%": 2, "20%": 3, "50%": 6}
    assert m["capture_at"] == {"10%": 0.0, "20%": 0.0, "50%": 0.0}
    assert m["lift_at"] == {"10%": 0.0, "20%": 0.0, "50%": 0.0}


def test_all_positives_give_lift_one_and_capture_the_slice_share():
    y, p = np.ones(40, int), np.linspace(0, 1, 40)
    m = lift_and_capture(y, p)
    assert m["n_sessions_at"] == {"1%": 1, "5%": 2, "10%": 4, "20%": 8}
    assert m["lift_at"] == {"1%": 1.0, "5%": 1.0, "10%": 1.0, "20%": 1.0}
    assert m["capture_at"] == {"1%": 1 / 40, "5%": 2 / 40, "10%": 4 / 40, "20%": 8 / 40}


@pytest.mark.parametrize("y", [[0, 0, 0], []])
def test_no_purchase_leaves_lift_capture_and_gains_undefined(y):
    y = np.array(y, int)
    p = np.linspace(0.1, 0.3, len(y))
    m = marketing_metrics(y, p)
    assert list(m) == list(MARKETING_KEYS)
    assert all(v is None for v in m["lift_at"].values())
    assert all(v is None for v in m["capture_at"].values())
    assert m["gains"] is None
    assert np.isnan(cumulative_gains(y, p)[1]).all()


def test_lengths_must_match_naming_both():
    with pytest.raises(ValueError, match="3 labels but 2 probabilities"):
        lift_and_capture([1, 0, 0], [0.2, 0.1])


@pytest.mark.parametrize("seed", range(5))
def test_gains_are_monotonic_bounded_and_end_at_one(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 400))
    y = (rng.random(n) < 0.2).astype(int)
    y[0] = 1
    p = rng.random(n).round(1)  # many ties
    gains = gains_at_percents(y, p)
    assert len(gains) == 101 and gains[0] == 0.0 and gains[-1] == 1.0
    assert min(gains) >= 0.0 and max(gains) <= 1.0 and np.all(np.diff(gains) >= 0)
    sessions, found = cumulative_gains(y, p)
    assert len(sessions) == n + 1 and sessions[0] == 0.0 and sessions[-1] == 1.0
    assert found[0] == 0.0 and found[-1] == 1.0 and np.all(np.diff(found) >= 0)
    # Each sampled point is the curve at ceil(k * N / 100) sessions, and capture agrees.
    m = lift_and_capture(y, p)
    for k in TOP_PERCENTS:
        assert gains[k] == found[top_count(n, k)] == m["capture_at"][f"{k}%"]
        # Capture never beats perfect ranking, and lift times the slice share is capture.
        assert m["capture_at"][f"{k}%"] <= min(1.0, m["n_sessions_at"][f"{k}%"] / y.sum())
        assert m["lift_at"][f"{k}%"] * m["n_sessions_at"][f"{k}%"] / n == pytest.approx(
            m["capture_at"][f"{k}%"], abs=1e-12)
    assert lift_and_capture(y, p, (100,))["capture_at"]["100%"] == 1.0


def test_gains_hand_computed_and_step():
    y = np.array([1, 0, 1, 0])
    p = np.array([0.9, 0.8, 0.7, 0.1])
    s, found = cumulative_gains(y, p)
    assert list(s) == [0, 0.25, 0.5, 0.75, 1.0] and list(found) == [0, 0.5, 0.5, 1.0, 1.0]
    # at 0, 25, 50, 75, 100%: ceil gives 0, 1, 2, 3, 4 sessions
    assert gains_at_percents(y, p, step=25) == [0.0, 0.5, 0.5, 1.0, 1.0]
    with pytest.raises(ValueError, match="step 3"):
        gains_at_percents(y, p, step=3)


# --------------------------------------------------------------------------- calibration bins

def test_calibration_table_hand_computed_and_sums_to_ece():
    y = np.array([0, 0, 1, 1, 0, 1])
    p = np.array([0.05, 0.15, 0.15, 0.55, 0.95, 1.0])
    table = calibration_table(y, p, bins=4)
    assert [tuple(r) for r in table] == [CALIBRATION_KEYS] * 4
    assert [(r["lo"], r["hi"], r["n_sessions"]) for r in table] == [
        (0.0, 0.25, 3), (0.25, 0.5, 0), (0.5, 0.75, 1), (0.75, 1.0, 2)]
    assert table[0]["mean_predicted"] == pytest.approx(0.35 / 3)
    assert table[0]["observed_rate"] == pytest.approx(1 / 3)
    assert table[0]["gap"] == pytest.approx(1 / 3 - 0.35 / 3)
    assert table[1]["mean_predicted"] is None and table[1]["gap"] is None
    assert table[2]["gap"] == pytest.approx(0.45)
    # 1.0 falls in the last bin: its mean is (0.95 + 1.0) / 2, half of the two bought.
    assert table[3]["mean_predicted"] == pytest.approx(0.975) and table[3]["observed_rate"] == 0.5
    ece = sum(r["n_sessions"] / len(y) * abs(r["gap"]) for r in table if r["n_sessions"])
    assert ece == pytest.approx(expected_calibration_error(y, p, bins=4), abs=1e-12)


def test_calibration_table_refuses_zero_bins():
    with pytest.raises(ValueError, match="bins must be >= 1, got 0"):
        calibration_table([1], [0.5], bins=0)


def test_calibration_deciles_hold_a_tenth_of_the_sessions_each_and_sum_to_their_ece():
    rng = np.random.default_rng(5)
    p = rng.beta(1, 12, size=1003)  # rare outcome: most probabilities below 0.1
    y = (rng.random(1003) < p * 1.3).astype(int)
    rows = calibration_deciles(y, p)
    assert [r["n_sessions"] for r in rows] == [101, 101, 101] + [100] * 7
    assert all(set(r) == set(CALIBRATION_KEYS) for r in rows)
    order = np.argsort(p, kind="stable")
    first = order[:101]
    assert rows[0]["lo"] == p.min() and rows[0]["hi"] == p[first].max()
    assert rows[0]["mean_predicted"] == pytest.approx(p[first].mean())
    assert rows[0]["observed_rate"] == pytest.approx(y[first].mean())
    assert all(a["hi"] <= b["lo"] for a, b in zip(rows, rows[1:], strict=False))
    ece = sum(r["n_sessions"] * abs(r["gap"]) for r in rows) / 1003
    assert decile_ece(y, p) == pytest.approx(ece)
    # Equal-width bins put most of these sessions in one bin; deciles do not.
    assert calibration_table(y, p)[0]["n_sessions"] > 500


def test_calibration_deciles_of_few_sessions_and_of_none():
    rows = calibration_deciles([1, 0, 0], [0.9, 0.1, 0.2])
    assert [r["n_sessions"] for r in rows] == [1, 1, 1] + [0] * 7
    assert rows[0]["observed_rate"] == 0.0 and rows[2]["observed_rate"] == 1.0
    assert rows[3]["gap"] is None
    assert decile_ece([], []) is None

