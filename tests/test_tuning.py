"""`train --tune N` and `--ensemble K` (issue 14, item 3): the search keeps the best trial on
validation and says so in the run directory; an ensemble is one LSTM in one artifact."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edge_runtime.errors import ConfigError
from trainer.model import arrays_to_model, build_lstm, merge_members, weights_to_arrays
from trainer.train import TrainConfig, train
from trainer.tuning import SEARCH_SPACE, better, settings_of, trial_settings


def test_merged_members_give_the_sigmoid_of_their_mean_logit():
    import tf_keras as keras

    keras.utils.set_random_seed(4)
    members = [build_lstm(5, 6) for _ in range(3)]
    rng = np.random.default_rng(0)
    for m in members:
        m.get_layer("purchase").set_weights([rng.normal(size=(6, 1)).astype("f"),
                                             rng.normal(size=1).astype("f")])
    x = rng.normal(size=(4, 9, 5)).astype("f")
    logits = [np.log(p / (1 - p)) for p in (m.predict(x, verbose=0) for m in members)]
    want = 1 / (1 + np.exp(-np.mean(logits, axis=0)))
    merged = arrays_to_model(merge_members([weights_to_arrays(m) for m in members]), masking=True)
    assert merged.get_layer("lstm").units == 18
    np.testing.assert_allclose(merged.predict(x, verbose=0), want, atol=1e-6)


def test_members_of_other_shapes_are_refused():
    a, b = (weights_to_arrays(build_lstm(5, u)) for u in (4, 6))
    with pytest.raises(ValueError, match="member 1"):
        merge_members([a, b])


def test_trials_start_with_the_given_settings_and_are_distinct_and_seeded():
    config = TrainConfig(data="x", out="y", units=64, dropout=0.1)
    trials = trial_settings(config, 6, seed=3)
    assert trials[0] == settings_of(config) == {"units": 64, "dropout": 0.1, "learning_rate": 1e-3,
                                                "class_weight": "balanced", "prefixes": "random"}
    assert len({json.dumps(t, sort_keys=True) for t in trials}) == 6
    assert all(t[k] in SEARCH_SPACE[k] for t in trials for k in SEARCH_SPACE)
    assert trial_settings(config, 6, seed=3) == trials != trial_settings(config, 6, seed=4)


def test_better_compares_pr_auc_then_roc_auc():
    assert better({"pr_auc": 0.2, "roc_auc": 0.5}, {"pr_auc": 0.1, "roc_auc": 0.9})
    assert better({"pr_auc": 0.2, "roc_auc": 0.6}, {"pr_auc": 0.2, "roc_auc": 0.5})
    assert not better({"pr_auc": 0.2, "roc_auc": 0.5}, {"pr_auc": 0.2, "roc_auc": 0.5})
    assert better({"pr_auc": 0.0, "roc_auc": 0.0}, None)


@pytest.mark.parametrize("settings, message", [
    ({"tune": -1}, "--tune"), ({"ensemble": 0}, "--ensemble"), ({"ensemble": 9}, "--ensemble"),
    ({"dropout": 1.0}, "--dropout"), ({"tune": 2, "resume": True}, "--resume"),
    ({"prefixes": "some"}, "--prefixes"),
])
def test_impossible_settings_are_refused(settings, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(data="x", out="y", **settings)


def test_tuning_keeps_the_best_validation_trial_and_records_every_trial(tmp_path, synthetic_log):
    run = tmp_path / "run"
    report = train(TrainConfig(data=str(synthetic_log), out=str(run), units=8, epochs=1, max_len=20,
                               batch_size=64, seed=2, tune=3))
    tuning = json.loads((run / "tuning.json").read_text())
    assert [t["trial"] for t in tuning["trials"]] == [0, 1, 2]
    assert tuning["trials"][0]["settings"]["units"] == 8  # the configuration as given
    best = max(tuning["trials"], key=lambda t: (t["validation"]["pr_auc"], t["validation"]["roc_auc"]))
    assert tuning["chosen"] == best["settings"] == report["tuning"]["chosen"]
    config = json.loads((run / "config.json").read_text())
    assert {k: config[k] for k in SEARCH_SPACE} == best["settings"]
    arrays = np.load(run / "weights.npz")
    assert arrays["lstm_recurrent_kernel"].shape[0] == best["settings"]["units"]


def test_an_ensemble_is_one_lstm_that_converts_to_one_artifact(tmp_path, synthetic_log):
    from converters.tflite import convert_run

    run = tmp_path / "run"
    report = train(TrainConfig(data=str(synthetic_log), out=str(run), units=8, epochs=1, max_len=20,
                               batch_size=64, seed=1, ensemble=2))
    assert report["ensemble"]["units"] == 16 and report["ensemble"]["seeds"] == [1, 1001]
    assert len(report["ensemble"]["member_validation"]) == 2
    recurrent = np.load(run / "weights.npz")["lstm_recurrent_kernel"]
    assert recurrent.shape == (16, 64)
    # Block-diagonal: the first member's units read none of the second's.
    assert not recurrent[8:, :8].any() and not recurrent[:8, 24:32].any()
    assert recurrent[:8, :8].any() and recurrent[8:, 24:32].any()
    results = convert_run(run, ["float32", "dynamic"])
    assert [r.status for r in results] == ["ok", "ok"], [r.reason for r in results]
