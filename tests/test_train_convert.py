"""Training writes a complete run directory; conversion writes a validated float32 artifact."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from converters.precisions import PRECISIONS
from converters.tflite import artifact_path, convert_run
from edge_runtime.artifact import read_artifact
from edge_runtime.errors import ArtifactError, ConfigError, RunDirError
from edge_runtime.features import FeatureSpec
from edge_runtime.scorer import FUSED_LSTM_OP, Scorer
from trainer import rundir
from trainer.train import TrainConfig, train

pytestmark = pytest.mark.slow


def test_run_directory_holds_everything_convert_and_a_person_need(tiny_run):
    for name in (*rundir.REQUIRED, rundir.SPLIT, rundir.REPORT_MD):
        assert (tiny_run / name).is_file(), name
    report = json.loads((tiny_run / rundir.REPORT_JSON).read_text())
    for model in ("lstm", "logreg"):
        m = report["test"][model]
        assert 0.0 <= m["roc_auc"] <= 1.0 and 0.0 <= m["brier"] <= 1.0
    split = json.loads((tiny_run / rundir.SPLIT).read_text())
    keys = [set(split[p]["session_digests"]) for p in ("train", "validation", "test")]
    assert all(len(k) == split[p]["sessions"]
               for k, p in zip(keys, ("train", "validation", "test"), strict=True))
    assert not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2])
    assert split["validation_from_ts"] <= split["test_from_ts"]
    spec = FeatureSpec.from_dict(json.loads((tiny_run / rundir.SPEC).read_text()))
    weights = np.load(tiny_run / rundir.WEIGHTS)
    assert weights["lstm_kernel"].shape == (spec.n_features, 4 * 8)
    assert 0.0 < report["threshold"] < 1.0


def test_training_is_reproducible_with_a_seed(tmp_path, synthetic_log, tiny_run):
    again = tmp_path / "again"
    train(TrainConfig(data=str(synthetic_log), out=str(again), units=8, epochs=2, max_len=20,
                      batch_size=64, seed=1))
    a, b = np.load(tiny_run / rundir.WEIGHTS), np.load(again / rundir.WEIGHTS)
    for name in a.files:
        np.testing.assert_array_equal(a[name], b[name])


def test_train_refuses_to_overwrite_a_run_without_overwrite(tmp_path, synthetic_log):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(RunDirError, match="--overwrite"):
        train(TrainConfig(data=str(synthetic_log), out=str(out), units=4, epochs=1))
    assert (out / "keep.txt").read_text() == "precious"


def test_failed_training_leaves_no_run_directory(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("user,ts,event,item\nu1,1600000000,view,a\n")
    out = tmp_path / "run"
    with pytest.raises(ConfigError):  # one session cannot be split three ways
        train(TrainConfig(data=str(bad), out=str(out), units=4, epochs=1))
    assert not out.exists()
    assert not list(tmp_path.glob(".run.stage-*"))


@pytest.mark.parametrize("field, value, message", [
    ("units", 0, "--units must be a whole number >= 1, got 0"),
    ("epochs", -1, "--epochs must be a whole number >= 1, got -1"),
    ("batch_size", 2.5, "--batch-size must be a whole number >= 1, got 2.5"),
    ("learning_rate", 2.0, "--learning-rate must be in (0, 1), got 2.0"),
    ("gap_minutes", 0.0, "--gap-minutes must be > 0, got 0.0"),
    ("validation", 1.5, "--validation must be a share in (0, 1), got 1.5"),
    ("test", 0.9, "--validation 0.15 and --test 0.9 leave no training sessions"),
    ("seed", -1, "--seed must be a whole number in 0..2147483647, got -1"),
    ("class_weight", "weird", "--class-weight 'weird': expected none or balanced")])
def test_train_config_refuses_impossible_values_naming_the_option(field, value, message):
    # Issue 10: messages name options as typed (not `{'epochs': 0}` or `learning_rate=`).
    with pytest.raises(ConfigError) as caught:
        TrainConfig(data="x", out="y", **{field: value})
    assert str(caught.value) == message if field != "test" else str(caught.value).startswith(message)
    assert "{" not in str(caught.value)


def test_train_under_a_file_size_limit_is_one_line_and_leaves_no_stage(tmp_path, synthetic_log):
    """A full disk or a file-size limit while the run is written (here: its first epoch's
    checkpoint) is one line naming the file; the stage goes, nothing half-written stays."""
    import resource
    import subprocess
    import sys

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1500, 1500))

    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "ubp_edge.cli", "train", "--data", str(synthetic_log),
                           "--out", str(out), "--units", "8", "--epochs", "2", "--max-len", "20"],
                          capture_output=True, text=True, preexec_fn=limit,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})  # no .pyc cut at the limit
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cannot write (File too large" in errors[0], done.stderr
    assert sorted(os.listdir(tmp_path)) == [], os.listdir(tmp_path)


def test_artifact_is_one_fused_lstm_with_spec_and_threshold_inside(tiny_run, tiny_artifact):
    model, info = read_artifact(tiny_artifact)
    report = json.loads((tiny_run / rundir.REPORT_JSON).read_text())
    spec = FeatureSpec.from_dict(json.loads((tiny_run / rundir.SPEC).read_text()))
    assert info.spec == spec
    assert info.threshold == pytest.approx(report["threshold"])
    assert (info.precision, info.graph) == ("float32", "fused")
    assert info.provenance["session_gap_minutes"] == 30.0
    ops = Scorer.load(tiny_artifact).op_names()
    assert ops.count(FUSED_LSTM_OP) == 1
    assert "WHILE" not in ops and not any(op.startswith("Flex") for op in ops)


def test_artifact_scores_match_keras_on_test_sessions(tiny_run, tiny_artifact):
    parity = np.load(tiny_run / rundir.PARITY)
    scorer = Scorer.load(tiny_artifact)
    f, off = parity["features"], parity["offsets"]
    got = scorer.score_encoded(f[off[i]:off[i + 1]] for i in range(len(off) - 1))
    diff = np.max(np.abs(got - parity["keras_probability"]))
    assert diff <= PRECISIONS["float32"].max_abs_diff


def test_scores_do_not_depend_on_the_previous_session(tiny_run, tiny_artifact):
    # The fused op keeps h and c across invoke(); the scorer must reset them per session.
    parity = np.load(tiny_run / rundir.PARITY)
    f, off = parity["features"], parity["offsets"]
    sessions = [f[off[i]:off[i + 1]] for i in range(min(20, len(off) - 1))]
    scorer = Scorer.load(tiny_artifact)
    forward = scorer.score_encoded(sessions)
    backward = scorer.score_encoded(sessions[::-1])[::-1]
    fresh = np.array([Scorer.load(tiny_artifact).score_features(s) for s in sessions[:5]])
    np.testing.assert_array_equal(forward, backward)
    np.testing.assert_array_equal(forward[:5], fresh)


def test_convert_refuses_to_overwrite_an_artifact(tmp_path, tiny_run):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    before = artifact_path(run, "float32").read_bytes()
    [row] = convert_run(run, ["float32"])
    assert row.status == "failed" and "--overwrite" in row.reason
    assert artifact_path(run, "float32").read_bytes() == before
    [row] = convert_run(run, ["float32"], overwrite=True)
    assert row.status == "ok" and row.size_bytes == artifact_path(run, "float32").stat().st_size
    assert not list(run.glob(".*.tmp"))


def test_convert_fails_a_row_when_parity_breaks(tmp_path, tiny_run):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    parity = dict(np.load(run / rundir.PARITY))
    parity["keras_probability"] = parity["keras_probability"] + 0.01
    np.savez(run / rundir.PARITY, **parity)
    artifact_path(run, "float32").unlink()
    [row] = convert_run(run, ["float32"])
    assert row.status == "failed" and "differ from the Keras model" in row.reason
    assert not artifact_path(run, "float32").exists()


def test_convert_names_what_is_missing(tmp_path, tiny_run):
    with pytest.raises(RunDirError, match="no such run directory"):
        convert_run(tmp_path / "nope")
    run = shutil.copytree(tiny_run, tmp_path / "run")
    (run / rundir.WEIGHTS).unlink()
    with pytest.raises(RunDirError, match="weights.npz"):
        convert_run(run)
    with pytest.raises(ConfigError, match="unknown precision"):
        convert_run(tiny_run, ["float64"])


def test_artifact_of_another_version_is_refused(tmp_path, tiny_artifact):
    from converters.metadata_writer import add_metadata, seal
    from edge_runtime.artifact import METADATA_NAME
    from edge_runtime.tflite_reader import read_metadata

    model = tiny_artifact.read_bytes()
    meta = json.loads(read_metadata(model)[METADATA_NAME])
    meta["version"] = 99
    other = tmp_path / "other.tflite"
    other.write_bytes(seal(add_metadata(model, {METADATA_NAME: json.dumps(meta).encode()})))
    with pytest.raises(ArtifactError, match="version 99"):
        Scorer.load(other)
    # The same change without re-sealing is a damaged file, and says so.
    tampered = tmp_path / "tampered.tflite"
    tampered.write_bytes(add_metadata(model, {METADATA_NAME: json.dumps(meta).encode()}))
    with pytest.raises(ArtifactError, match="integrity digest"):
        Scorer.load(tampered)


def test_a_flipped_weight_byte_is_refused(tmp_path, tiny_artifact):
    model = bytearray(tiny_artifact.read_bytes())
    for position in (len(model) // 3, len(model) // 2, len(model) - 200):
        damaged = bytearray(model)
        damaged[position] ^= 0x01
        path = tmp_path / f"flip{position}.tflite"
        path.write_bytes(bytes(damaged))
        with pytest.raises(ArtifactError):
            Scorer.load(path)


# --------------------------------------------------------------- convert --tiers --tier-shares


def _convert_cli(*args: object):
    from typer.testing import CliRunner

    from ubp_edge.cli import app

    return CliRunner().invoke(app, ["convert", *map(str, args)])


def _one_error_line(result) -> str:
    import re

    stderr = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", result.stderr)
    assert result.exit_code == 1, (result.exit_code, result.stdout, stderr, result.exception)
    assert "Traceback" not in stderr + result.stdout
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), stderr
    return lines[0]


def test_convert_stores_tiers_cut_at_the_given_shares(tmp_path, tiny_run):
    from converters.tflite import ConversionRun

    run = shutil.copytree(tiny_run, tmp_path / "run")
    result = _convert_cli(run, "--precision", "float32", "--overwrite", "--tiers", "cold,hot",
                          "--tier-shares", "0.7,0.3", "--json")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    [row] = json.loads(result.stdout)["artifacts"]
    assert row["status"] == "ok" and row["reason"] is None, row
    scorer = Scorer.load(artifact_path(run, "float32"))
    tiers = scorer.info.intent_tiers()
    validation = ConversionRun(run).validation
    assert tiers.names == ("cold", "hot") and tiers.method == "shares"
    assert tiers.fitted_on == f"{len(validation):,} validation sessions"
    p = scorer.score_encoded(validation).astype(np.float64)
    below = int((p < tiers.cuts[0]).sum())
    assert abs(below - 0.7 * len(p)) <= 1, (below, len(p), tiers.cuts)
    # The same run with the default tiers: three names, equal expected buyers.
    assert read_artifact(artifact_path(tiny_run, "float32"))[1].intent_tiers().names == \
        ("browsing", "considering", "likely")


@pytest.mark.parametrize("args, phrases", [
    (["--tiers", "cold,hot", "--tier-shares", "0.5,0.6"],
     ["--tier-shares: tier shares must be 2 positive numbers summing to 1", "(cold, hot)", "[0.5, 0.6]"]),
    (["--tier-shares", "0.5,0.5"], ["--tier-shares: tier shares must be 3 positive numbers",
                                    "(browsing, considering, likely)"]),
    (["--tier-shares", "x"], ["--tier-shares: 'x' is not a number (e.g. 0.6,0.3,0.1)"]),
    (["--tiers", "cold,hot", "--tier-shares", "0.7,lots"], ["--tier-shares: 'lots' is not a number"]),
])
def test_convert_refuses_bad_tier_shares_in_one_line(tmp_path, tiny_run, args, phrases):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    before = artifact_path(run, "float32").read_bytes()
    line = _one_error_line(_convert_cli(run, "--precision", "float32", "--overwrite", *args))
    assert all(phrase in line for phrase in phrases), line
    assert artifact_path(run, "float32").read_bytes() == before  # refused before converting
