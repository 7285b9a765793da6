"""Explaining a score on the device (edge_runtime.explain): a session's live trajectory and
each event's change to it, the feature groups, and occlusion importance through the runtime.

The artifact is conftest's tiny float32 run; the sessions are seeded synthetic event dicts,
as a device sends them.
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from converters.metadata_writer import add_metadata, seal
from edge_runtime import ArtifactError, Scorer
from edge_runtime.artifact import METADATA_NAME
from edge_runtime.calibration import PlattCalibration
from edge_runtime.events import EVENT_TYPES
from edge_runtime.explain import (
    FEATURE_GROUPS,
    Trajectory,
    empty_session_probability,
    feature_groups,
    occlusion_importance,
    trajectory,
)
from edge_runtime.features import CONTEXT_FEATURES
from edge_runtime.tflite_reader import read_metadata

pytestmark = pytest.mark.slow  # the tiny run is trained and converted once per session


def _session(rng: np.random.Generator, length: int) -> list[dict]:
    """``length`` events of one shopper: views mostly, some carts and favourites, a purchase
    now and then, over a few items and categories, with prices on some."""
    ts = 1.7e9 + float(rng.integers(0, 86_400))
    events = []
    for _ in range(length):
        ts += float(rng.exponential(60.0))
        event = {"ts": ts, "event": str(rng.choice(EVENT_TYPES, p=[0.7, 0.15, 0.1, 0.05])),
                 "item": str(rng.integers(0, 12)), "category": str(rng.integers(0, 4))}
        if rng.random() < 0.5:
            event["price"] = float(rng.uniform(1.0, 200.0))
        events.append(event)
    return events


@pytest.fixture(scope="module")
def scorer(tiny_artifact) -> Scorer:
    return Scorer.load(tiny_artifact)


@pytest.fixture(scope="module")
def sessions() -> list[list[dict]]:
    """Sessions of 1 to 20 events (the tiny run's max_len): short ones encoded one event at
    a time, those over 16 by the vectorised encoder."""
    rng = np.random.default_rng(17)
    lengths = [1, 2, 3, 5, 8, 13, 16, 17, 20, 20, 4, 11]
    return [_session(rng, n) for n in lengths]


@pytest.fixture(scope="module")
def encoded(scorer, sessions) -> list[np.ndarray]:
    return [scorer.encode_session(events) for events in sessions]


# --- the trajectory ------------------------------------------------------------------------


def test_the_trajectory_is_the_live_score_after_each_event(scorer, sessions, encoded):
    worst = 0.0
    for events, x in zip(sessions, encoded, strict=True):
        traj = trajectory(scorer, x)
        live = scorer.start_session()
        pushed = np.array([live.push(e) for e in events], np.float32)
        assert traj.probability.dtype == np.float32 and traj.probability.shape == (len(events),)
        assert np.array_equal(traj.probability, pushed), (len(events), traj.probability - pushed)
        assert traj.final == pushed[-1] == live.probability
        whole = np.array([scorer.score_features(x[:t + 1]) for t in range(len(x))])
        worst = max(worst, float(np.abs(traj.probability - whole).max()))
    assert worst <= 1e-5, worst


def test_a_recalibrated_trajectory_is_calibrated_from_its_baseline_on(tiny_artifact, tmp_path,
                                                                     scorer, sessions, encoded):
    """As a quantised artifact's: the scores and the baseline both through the Platt map."""
    platt = PlattCalibration(a=1.7, b=0.4)
    model = tiny_artifact.read_bytes()
    meta = json.loads(read_metadata(model)[METADATA_NAME])
    raw = np.float32(meta["empty_session_probability"])
    meta["calibration"] = platt.to_dict()
    meta["empty_session_probability"] = float(platt.apply(np.array([raw]))[0])
    path = tmp_path / "recalibrated.tflite"
    path.write_bytes(seal(add_metadata(model, {METADATA_NAME: json.dumps(meta).encode()})))
    recalibrated = Scorer.load(path, verify=False)
    for events, x in list(zip(sessions, encoded, strict=True))[:4]:
        traj = trajectory(recalibrated, x)
        live = recalibrated.start_session()
        assert np.array_equal(traj.probability, [live.push(e) for e in events])
        assert np.array_equal(traj.probability, platt.apply(trajectory(scorer, x).probability))
        assert traj.baseline == meta["empty_session_probability"] != float(raw)
        _sums(traj)


def test_the_baseline_is_the_empty_session_score(scorer, encoded):
    stored = scorer.info.empty_session_probability
    assert stored is not None and 0.0 < stored < 1.0
    assert empty_session_probability(scorer.info) == stored
    for x in encoded[:3]:
        traj = trajectory(scorer, x)
        assert traj.baseline == stored and np.float32(traj.baseline) == traj.baseline


def _sums(traj: Trajectory) -> None:
    """The changes add up exactly to final - baseline: in order, with fsum, after JSON."""
    deltas = traj.deltas
    assert deltas.dtype == np.float64 and deltas.shape == traj.probability.shape
    target = traj.final - traj.baseline
    as_list = [float(d) for d in deltas]
    assert sum(as_list) == target, (sum(as_list), target)
    assert math.fsum(as_list) == target
    back = json.loads(json.dumps({"baseline": traj.baseline, "final": traj.final,
                                  "deltas": as_list}))
    assert sum(back["deltas"]) == back["final"] - back["baseline"] == target
    assert math.fsum(back["deltas"]) == target
    running = 0.0  # every running sum is exact: the score after that event less the baseline
    for t, d in enumerate(back["deltas"]):
        running += d
        assert running == float(traj.probability[t]) - traj.baseline


def test_the_changes_add_up_exactly(scorer, encoded):
    for x in encoded:
        _sums(trajectory(scorer, x))


@pytest.mark.parametrize("seed", range(5))
def test_the_changes_add_up_exactly_for_any_float32_scores(seed):
    rng = np.random.default_rng(seed)
    # Scores across many binades (down to 2**-27), where a sum of float64s could round.
    p = np.exp2(rng.uniform(-27.0, 0.0, 300)).astype(np.float32)
    p[p >= 1.0] = np.float32(0.999)
    traj = Trajectory(float(np.float32(p[0] / 3)), p)
    _sums(traj)


def test_top_orders_by_the_size_of_the_change_ties_in_event_order():
    # Dyadic scores, so the changes are exact: +.25, -.25, +.25, -.25, +.125, 0, +.25
    traj = Trajectory(0.5, np.array([0.75, 0.5, 0.75, 0.5, 0.625, 0.625, 0.875], np.float32))
    assert traj.deltas.tolist() == [0.25, -0.25, 0.25, -0.25, 0.125, 0.0, 0.25]
    assert traj.top(3).tolist() == [0, 1, 2]
    assert traj.top(5).tolist() == [0, 1, 2, 3, 6]
    assert traj.top(100).tolist() == [0, 1, 2, 3, 6, 4, 5]
    assert traj.top(0).tolist() == [] and traj.top(-2).tolist() == []


def test_top_on_real_trajectories(scorer, encoded):
    for x in encoded:
        traj = trajectory(scorer, x)
        order = traj.top(len(x))
        assert sorted(order.tolist()) == list(range(len(x)))
        size = np.abs(traj.deltas)[order]
        assert np.all(size[:-1] >= size[1:]), size
        for a, b in zip(order[:-1], order[1:], strict=True):
            assert abs(traj.deltas[a]) > abs(traj.deltas[b]) or a < b
        assert traj.top(3).tolist() == order[:3].tolist()


def test_an_artifact_without_the_empty_session_score_names_convert(tiny_artifact, tmp_path, encoded):
    model = tiny_artifact.read_bytes()
    meta = json.loads(read_metadata(model)[METADATA_NAME])
    del meta["empty_session_probability"]
    path = tmp_path / "older.tflite"
    path.write_bytes(seal(add_metadata(model, {METADATA_NAME: json.dumps(meta).encode()})))
    older = Scorer.load(path, verify=False)  # it loads and scores: only explaining needs it
    assert older.info.empty_session_probability is None
    assert older.score_features(encoded[0]) == Scorer.load(tiny_artifact).score_features(encoded[0])
    with pytest.raises(ArtifactError) as caught:
        trajectory(older, encoded[0])
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and "re-run `ubp-edge convert`" in message, message
    assert "empty-session score" in message and "\n" not in message
    with pytest.raises(ArtifactError, match="^phone: .*re-run `ubp-edge convert`"):
        empty_session_probability(older.info, "phone")


# --- feature groups and occlusion -----------------------------------------------------------


def test_every_feature_of_the_spec_is_in_exactly_one_group(scorer):
    spec = scorer.info.spec
    groups = feature_groups(spec)
    assert [g[0] for g in groups] == [name for name, _ in FEATURE_GROUPS]  # the tiny spec has all
    columns = np.concatenate([g[2] for g in groups])
    assert sorted(columns.tolist()) == list(range(len(spec.features)))
    for _, features, cols in groups:
        assert tuple(spec.features[c] for c in cols) == features


def test_a_group_the_spec_lacks_is_left_out():
    features = ("is_view", "is_cart", "log_dt_prev", *CONTEXT_FEATURES, "tod_cos")
    groups = feature_groups(SimpleNamespace(features=features))
    assert [(name, f, c.tolist()) for name, f, c in groups] == [
        ("event type", ("is_view", "is_cart"), [0, 1]),
        ("time since previous event", ("log_dt_prev",), [2]),
        ("time of day", ("tod_cos",), [2 + len(CONTEXT_FEATURES) + 1]),
        ("user history", CONTEXT_FEATURES, list(range(3, 3 + len(CONTEXT_FEATURES)))),
    ]
    assert feature_groups(SimpleNamespace(features=("something_else",))) == []


@pytest.fixture(scope="module")
def importance(scorer, encoded):
    return occlusion_importance(scorer, encoded, batch_size=5)


def test_one_row_per_group_largest_change_first(scorer, encoded, importance):
    groups = feature_groups(scorer.info.spec)
    assert sorted(r.group for r in importance) == sorted(g[0] for g in groups)
    assert len(importance) == len(groups)
    sizes = [r.mean_abs_change for r in importance]
    assert sizes == sorted(sizes, reverse=True), sizes
    assert sizes[0] > 0.0
    features = {name: f for name, f, _ in groups}
    for row in importance:
        assert row.features == features[row.group] and row.sessions == len(encoded)
        assert set(row.to_dict()) == {"group", "features", "mean_abs_change", "std_abs_change",
                                      "p90_abs_change", "mean_change", "sessions"}
        json.dumps(row.to_dict())  # plain numbers


def test_the_figures_are_those_of_occluding_by_hand(scorer, encoded, importance):
    base = scorer.score_encoded(encoded).astype(np.float64)
    by_name = {r.group: r for r in importance}
    for name, _, columns in feature_groups(scorer.info.spec):
        occluded = []
        for x in encoded:
            y = x.copy()
            y[:, columns] = 0.0
            occluded.append(y)
        change = base - np.array([scorer.score_features(y) for y in occluded], np.float64)
        size = np.abs(change)
        row = by_name[name]
        assert row.mean_abs_change == pytest.approx(size.mean(), abs=1e-7), name
        assert row.mean_change == pytest.approx(change.mean(), abs=1e-7), name
        assert row.std_abs_change == pytest.approx(size.std(), abs=1e-7), name
        assert row.p90_abs_change == pytest.approx(np.quantile(size, 0.9), abs=1e-7), name
        assert row.mean_abs_change >= abs(row.mean_change) - 1e-12
        assert 0.0 <= row.p90_abs_change <= size.max() + 1e-12
        assert row.std_abs_change >= 0.0


def test_occluding_is_reading_the_training_mean_of_the_raw_features(scorer, encoded, importance):
    """The occluded input built from RAW features: back from the normalised space with the
    spec's mean and scale, the group's raw columns set to their training mean, normalised
    again, scored through the runtime. Not a copy of the code's shortcut (zeros): a group
    occluded at another value (its raw zero, say) or a spec read wrongly shows here."""
    spec = scorer.info.spec
    mean, scale = np.asarray(spec.mean, np.float64), np.asarray(spec.scale, np.float64)
    assert np.any(mean != 0.0) and np.any(scale != 1.0)  # so raw and normalised differ
    base = scorer.score_encoded(encoded).astype(np.float64)
    by_name = {r.group: r for r in importance}
    for name, features, columns in feature_groups(spec):
        occluded = []
        for x in encoded:
            raw = x.astype(np.float64) * scale + mean
            raw[:, columns] = mean[columns]
            occluded.append(((raw - mean) / scale).astype(np.float32))
        change = base - scorer.score_encoded(occluded).astype(np.float64)
        row = by_name[name]
        assert row.features == features
        assert abs(row.mean_abs_change - np.abs(change).mean()) <= 1e-6, (name, row, change)
        assert abs(row.mean_change - change.mean()) <= 1e-6, (name, row)


def test_a_group_already_at_its_mean_does_not_move_the_score(scorer, encoded):
    columns = {name: cols for name, _, cols in feature_groups(scorer.info.spec)}
    blank = []
    for x in encoded:
        y = x.copy()
        y[:, columns["price"]] = 0.0
        y[:, columns["time of day"]] = 0.0
        blank.append(y)
    rows = occlusion_importance(scorer, blank)
    by_name = {r.group: r for r in rows}
    for name in ("price", "time of day"):
        row = by_name[name]
        assert (row.mean_abs_change, row.std_abs_change, row.p90_abs_change, row.mean_change) \
            == (0.0, 0.0, 0.0, 0.0), row
    moved = [r for r in rows if r.mean_abs_change > 0]
    assert moved and rows[:len(moved)] == moved  # the groups that move scores come first
    still = [r.group for r in rows[len(moved):]]  # ties: in FEATURE_GROUPS order
    assert still == [name for name, _ in FEATURE_GROUPS if name in still]
    assert {"price", "time of day"} <= set(still)


def test_every_row_is_consistent(importance):
    for row in importance:
        assert row.mean_abs_change >= abs(row.mean_change)
        assert 0.0 <= row.p90_abs_change and row.std_abs_change >= 0.0
        assert all(math.isfinite(v) for v in (row.mean_abs_change, row.std_abs_change,
                                               row.p90_abs_change, row.mean_change))


def test_no_sessions_no_rows(scorer):
    assert occlusion_importance(scorer, []) == []

