"""`train --data PREP_DIR`: the same run directory as from a log (convert works on it), the
data counts from the manifest, settings the PREP_DIR fixed cannot be contradicted, and a
damaged shard stops training with one line naming it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from prep_fixtures import build_prep_dir, write_small_log

from edge_runtime.errors import ConfigError, DataError
from trainer import rundir
from trainer.prepdir import PrepDir
from trainer.train import TrainConfig, train

TINY = {"units": 8, "epochs": 2, "batch_size": 32, "seed": 1}


@pytest.fixture(scope="module")
def small_log(tmp_path_factory):
    return write_small_log(tmp_path_factory.mktemp("train_prep_log"))


@pytest.fixture(scope="module")
def prep(tmp_path_factory, small_log):
    folder = tmp_path_factory.mktemp("train_prep") / "prepared"
    build_prep_dir(small_log, folder, max_len=20)
    return folder


@pytest.fixture(scope="module")
def prep_run(tmp_path_factory, prep):
    run = tmp_path_factory.mktemp("train_prep_runs") / "from_prep"
    report = train(TrainConfig(data=str(prep), out=str(run), **TINY))
    return run, report


@pytest.mark.slow
def test_a_run_trained_from_a_prep_dir_converts_and_records_the_manifest(prep, prep_run):
    from converters.tflite import convert_run

    run, report = prep_run
    p = PrepDir.open(prep)
    assert json.loads((run / rundir.SPEC).read_text()) == p.manifest["feature_spec"]
    split = json.loads((run / rundir.SPLIT).read_text())
    for name in rundir.SPLIT_NAMES:
        assert split[name]["session_digests"] == p.read_split(name, features=False).key_digest.tolist()
        assert report["split"][name] == p.counts["split"][name]
    assert split["test_from_ts"] == p.manifest["split_rule"]["test_from_ts"]
    data = report["data"]
    assert data["prepared"] == str(prep) and data["events"] == p.counts["events"]
    assert data["bad_rows"]["total"] == 1 and (run / rundir.QUARANTINE).read_bytes() == \
        (prep / "quarantine.jsonl").read_bytes()
    config = json.loads((run / rundir.CONFIG).read_text())
    assert (config["max_len"], config["gap_minutes"], config["use_context"]) == (20, 30.0, True)
    assert not (run / "checkpoint").exists() and not (run / "prepared").exists()
    run_dir = rundir.RunDirectory(run)
    test = p.read_split("test")
    assert len(run_dir.sessions("test")) == len(test)
    for got, want in zip(run_dir.sessions("test"), test.encoded, strict=True):
        np.testing.assert_array_equal(got, want)
    results = convert_run(run, ["float32"])
    assert [r.status for r in results] == ["ok"], [r.reason for r in results]


@pytest.mark.slow
def test_a_log_trains_through_the_same_preparation_as_its_prep_dir(tmp_path, small_log, prep_run):
    """train --data LOG prepares into its staging folder (trainer.prepare), then trains as
    from that PREP_DIR: the same sessions, split and encoding, and with the same seed the
    same weights."""
    from trainer.logsource import EventLogSource
    from trainer.prepare import PrepareConfig, prepare

    prepared = tmp_path / "prepared"
    prepare(PrepareConfig(source=EventLogSource(small_log), out=str(prepared), max_len=20))
    runs = {"prep": tmp_path / "from_prep", "log": tmp_path / "from_log"}
    train(TrainConfig(data=str(prepared), out=str(runs["prep"]), **TINY))
    train(TrainConfig(data=str(small_log), out=str(runs["log"]), max_len=20, **TINY))
    for name in (rundir.SPLIT, rundir.SPEC, rundir.PARITY):
        assert (runs["prep"] / name).read_bytes() == (runs["log"] / name).read_bytes(), name
    a, b = np.load(runs["prep"] / rundir.WEIGHTS), np.load(runs["log"] / rundir.WEIGHTS)
    for name in a.files:
        np.testing.assert_array_equal(a[name], b[name])
    # The split is the fixture's (today's in-memory path) too.
    assert json.loads((runs["log"] / rundir.SPLIT).read_text()) == \
        json.loads((prep_run[0] / rundir.SPLIT).read_text())
    assert sorted(p.name for p in runs["log"].iterdir()) == sorted(p.name for p in runs["prep"].iterdir())


@pytest.mark.parametrize("setting, value, shown", [
    ("max_len", 50, "--max-len 50 (the prepared folder has max_len 20)"),
    ("gap_minutes", 10.0, "--gap-minutes 10.0 (the prepared folder has gap_minutes 30.0)"),
    ("validation", 0.2, "--validation 0.2 (the prepared folder has validation 0.15)"),
    ("use_context", False, "--context/--no-context False (the prepared folder has use_context True)"),
])
def test_a_setting_the_prep_dir_fixed_cannot_be_contradicted(tmp_path, prep, setting, value, shown):
    with pytest.raises(ConfigError) as caught:
        train(TrainConfig(data=str(prep), out=str(tmp_path / "run"), **{setting: value}, **TINY))
    message = str(caught.value)
    assert message.startswith(str(prep / "manifest.json")) and shown in message, message
    assert not (tmp_path / "run").exists()


def test_another_format_or_strict_with_bad_rows_is_refused(tmp_path, prep):
    with pytest.raises(ConfigError, match=r"--format taobao: .* was prepared from a canonical log"):
        train(TrainConfig(data=str(prep), out=str(tmp_path / "run"), max_len=20, format="taobao", **TINY))
    # --strict on a PREP_DIR whose log had a bad row says what --strict on the log says.
    from trainer.readers import read_log

    with pytest.raises(DataError) as on_log:
        read_log(PrepDir.open(prep).manifest["input"]["path"], strict=True)
    with pytest.raises(DataError) as on_prep:
        train(TrainConfig(data=str(prep), out=str(tmp_path / "run"), strict=True, **TINY))
    assert str(on_prep.value) == str(on_log.value) and "bad row (bad_timestamp)" in str(on_log.value)


def test_a_damaged_shard_stops_training_before_it_starts(tmp_path, prep):
    copy = tmp_path / "prepared"
    shutil.copytree(prep, copy)
    shard = copy / "shards" / "part-00000.parquet"
    shard.write_bytes(shard.read_bytes()[:-1] + b"\x00")
    with pytest.raises(DataError) as caught:
        train(TrainConfig(data=str(copy), out=str(tmp_path / "run"), **TINY))
    assert str(caught.value).startswith(str(shard)) and "the shard is damaged" in str(caught.value)
    assert not (tmp_path / "run").exists() and not rundir.stage_dir(tmp_path / "run").exists()


@pytest.mark.slow
def test_the_cli_trains_from_a_prep_dir(tmp_path, prep):
    import subprocess
    import sys

    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "ubp_edge.cli", "train", "--data", str(prep), "--out",
                           str(out), "--units", "8", "--epochs", "1"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "test split" in done.stdout and (out / rundir.WEIGHTS).is_file()
    bad = subprocess.run([sys.executable, "-m", "ubp_edge.cli", "train", "--data", str(prep), "--out",
                          str(tmp_path / "other"), "--max-len", "30"], capture_output=True, text=True)
    assert bad.returncode == 1 and "--max-len 30 (the prepared folder has max_len 20)" in bad.stderr
    assert "Traceback" not in bad.stderr
