"""The quality bar on real data: on the Taobao sample the LSTM beats the logistic-regression
baseline in ROC-AUC on the test split, and the edge runtime reproduces the Keras figures."""

from __future__ import annotations

import pytest

from converters.tflite import convert_run
from edge_runtime.scorer import Scorer
from trainer.logsource import EventLogSource
from trainer.scoring import evaluation_report, score_log, split_keys
from trainer.train import TrainConfig, train

pytestmark = [pytest.mark.real_data, pytest.mark.slow]


@pytest.fixture(scope="module")
def taobao_run(tmp_path_factory, taobao_path):
    run = tmp_path_factory.mktemp("taobao") / "run"
    report = train(TrainConfig(data=str(taobao_path), out=str(run), format="taobao"))
    rows = convert_run(run, ["float32", "dynamic", "int8"])
    assert [r.status for r in rows] == ["ok"] * 3, [r.reason for r in rows]
    return run, report


def test_lstm_beats_logistic_regression_on_taobao_test_split(taobao_run):
    _, report = taobao_run
    lstm, logreg = report["test"]["lstm"], report["test"]["logreg"]
    assert lstm["n_sessions"] == logreg["n_sessions"] > 1000
    assert lstm["roc_auc"] > logreg["roc_auc"], (lstm["roc_auc"], logreg["roc_auc"])


def test_edge_runtime_reproduces_the_keras_test_metrics(taobao_run, taobao_path):
    run, report = taobao_run
    scorer = Scorer.load(run / "model-float32.tflite")
    source = EventLogSource(taobao_path, "taobao")
    scored = score_log(scorer, source, only_keys=split_keys(run / "split.json", "test"))
    metrics = evaluation_report(scored, scorer.threshold)
    assert metrics["n_sessions"] == report["test"]["lstm"]["n_sessions"]
    for key in ("roc_auc", "pr_auc", "log_loss", "brier", "f1"):
        assert metrics[key] == pytest.approx(report["test"]["lstm"][key], abs=1e-4), key


def test_quantized_taobao_artifacts_meet_the_size_target(taobao_run):
    run, _ = taobao_run
    reference = (run / "model-float32.tflite").stat().st_size
    for precision in ("dynamic", "int8"):
        assert (run / f"model-{precision}.tflite").stat().st_size <= 0.35 * reference, precision
