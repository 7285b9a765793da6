"""Distributed training (trainer.distribute): TF_CONFIG as cluster managers write it, the
shards split among workers by file with the same number of steps each, `--local-workers`
ending every worker with one line when one fails (and when the launcher is stopped), and, on
the Taobao sample, 2 local workers within 0.01 test ROC-AUC of one process."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from prep_fixtures import build_prep_dir
from typer.testing import CliRunner

from edge_runtime.errors import ConfigError, RunDirError
from trainer.distribute import (
    Cluster,
    WorkerError,
    check_shards,
    last_error_line,
    local_cluster,
    run_local_workers,
    split_shards,
    worker_streams,
)
from trainer.prepdir import PrepDir
from trainer.rundir import stage_dir
from trainer.train import TrainConfig
from ubp_edge.cli import app

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@pytest.fixture(scope="module")
def prep(tmp_path_factory, synthetic_log) -> Path:
    """The synthetic log prepared into 6 shards, 5 of them holding training sessions."""
    folder = tmp_path_factory.mktemp("distribute") / "prepared"
    build_prep_dir(synthetic_log, folder, max_len=20, shards=6)
    return folder


@pytest.fixture(autouse=True)
def no_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)


@pytest.fixture(autouse=True)
def own_temp(tmp_path, monkeypatch):
    """The launcher's folder (worker logs, kept when a worker fails) in the test's folder,
    for this process and the ones it starts."""
    folder = tmp_path / "temp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    monkeypatch.setenv("TMPDIR", str(folder))
    return folder


# --------------------------------------------------------------------------- TF_CONFIG

@pytest.mark.parametrize("tf_config, index, workers, chief", [
    # Kubernetes TFJob with a chief replica, and without one (worker 0 is the chief)
    ({"cluster": {"chief": ["job-chief-0:2222"], "worker": ["job-worker-0:2222", "job-worker-1:2222"]},
      "task": {"type": "worker", "index": 1}}, 2, 3, False),
    ({"cluster": {"chief": ["job-chief-0:2222"], "worker": ["job-worker-0:2222"]},
      "task": {"type": "chief", "index": 0}}, 0, 2, True),
    ({"cluster": {"worker": ["w0:2222", "w1:2222"]}, "task": {"type": "worker", "index": 0}}, 0, 2, True),
    # Vertex AI adds an environment and the trial; SageMaker a lone worker per host
    ({"cluster": {"chief": ["cmle-training-workerpool0-ab-0:2222"],
                  "worker": ["cmle-training-workerpool1-ab-0:2222"]},
      "environment": "cloud", "task": {"type": "worker", "index": 0, "trial": ""}, "job": "{}"}, 1, 2, False),
    ({"cluster": {"worker": ["algo-1:8890", "algo-2:8890"]}, "task": {"type": "worker", "index": 1}},
     1, 2, False),
])
def test_tf_config_of_cluster_managers(tf_config, index, workers, chief):
    cluster = Cluster.from_json(json.dumps(tf_config))
    assert (cluster.index, cluster.workers, cluster.is_chief) == (index, workers, chief)
    assert Cluster.from_json(cluster.tf_config()) == cluster


@pytest.mark.parametrize("text, shown", [
    ("{not json", "TF_CONFIG: not JSON"),
    ('{"cluster": {"worker": ["a:1"]}}', "TF_CONFIG: expected {\"cluster\""),
    ('{"cluster": {"worker": "a:1"}, "task": {"type": "worker", "index": 0}}',
     "cluster.worker must be a list"),
    ('{"cluster": {"worker": ["a:1"], "ps": ["p:1"]}, "task": {"type": "ps", "index": 0}}',
     "task type 'ps': `ubp-edge train --distribute multi-worker` runs on chief and worker tasks only"),
    ('{"cluster": {"worker": ["a:1"], "evaluator": ["e:1"]}, "task": {"type": "evaluator", "index": 0}}',
     "task type 'evaluator'"),
    ('{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 2}}',
     "task worker 2 is not in the cluster (2 worker addresses)"),
])
def test_a_wrong_tf_config_is_one_line_naming_it(text, shown):
    with pytest.raises(ConfigError) as caught:
        Cluster.from_json(text)
    assert shown in str(caught.value) and "\n" not in str(caught.value)


def test_without_tf_config_multi_worker_says_how_to_get_one():
    with pytest.raises(ConfigError, match=r"TF_CONFIG is not set; a cluster manager .* --local-workers N"):
        Cluster.from_env({})


@pytest.mark.parametrize("log, line", [
    ("noise\nerror: a.parquet: SHA-256 digest mismatch\n", "a.parquet: SHA-256 digest mismatch"),
    ("Traceback (most recent call last):\n  File \"x.py\", line 1\n"
     "tensorflow.python.framework.errors_impl.UnavailableError: peer gone\nAdditional GRPC info\n",
     "tensorflow.python.framework.errors_impl.UnavailableError: peer gone"),
    ("W0000 some log\nSegmentation fault\n", "Segmentation fault"),
    ("", "no output"),
])
def test_last_error_line_of_a_worker_log(log, line):
    assert last_error_line(log) == line


def test_local_cluster_numbers_workers_on_distinct_free_ports():
    clusters = local_cluster(3)
    addresses = clusters[0].addresses
    assert len(set(addresses)) == 3 and all(a.startswith("127.0.0.1:") for a in addresses)
    assert [c.index for c in clusters] == [0, 1, 2] and [c.is_chief for c in clusters] == [True, False, False]
    assert all(c.addresses == addresses for c in clusters)
    config = json.loads(clusters[2].tf_config())
    assert config == {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": 2}}


# --------------------------------------------------------------------------- shards per worker

def test_fewer_training_shards_than_workers_is_refused(prep):
    p = PrepDir.open(prep)
    assert len(split_shards(p, "train")) == 5
    check_shards(p, 5)
    with pytest.raises(ConfigError) as caught:
        check_shards(p, 6)
    message = str(caught.value)
    assert message.startswith(str(prep / "manifest.json"))
    assert "5 shard file(s) hold training sessions for 6 workers; prepare with --shards >= 9" in message


class _OneWorker:
    """A stand-in for a multi-worker strategy seen from worker ``index`` (one replica each):
    what `worker_streams` uses of it."""

    def __init__(self, index: int, workers: int):
        self.num_replicas_in_sync = workers
        self.index, self.workers = index, workers

    def distribute_datasets_from_function(self, dataset_fn):
        import tensorflow as tf

        return dataset_fn(tf.distribute.InputContext(self.workers, self.index, self.workers))


@pytest.mark.parametrize("workers", [2, 3])
def test_workers_split_the_shards_and_run_the_same_steps(prep, workers):
    """Per epoch, every training session once across the workers, each worker on its own
    shards in batches of its part of --batch-size, and every worker the same number of steps:
    its own batches, then empty ones (one time step, no session) up to the longest share."""
    p = PrepDir.open(prep)
    config = TrainConfig(data=str(prep), out="unused", batch_size=12 * workers).settled(p.settings)
    streams = [worker_streams(_OneWorker(k, workers), workers)(p, config, {0: 1.0, 1: 5.0})
               for k in range(workers)]
    steps = {s.train_steps for s in streams}
    assert len(steps) == 1, "every worker the same steps"
    steps = steps.pop()
    train = p.read_split("train", features=False)
    real_counts = []
    for s in streams:
        epochs = [(x.numpy(), y.numpy(), w.numpy()) for x, y, w in s.train(3).take(2 * steps)]
        for epoch in (epochs[:steps], epochs[steps:]):  # the stream repeats, reshuffled
            own = [b for b in epoch if len(b[1])]
            empty = [i for i, (x, _, w) in enumerate(epoch) if x.shape == (0, 1, p.n_features) and not len(w)]
            assert len(own) + len(empty) == steps
            if empty:  # spread through the epoch, not bunched at its end
                assert min(empty) < steps // 2 < max(empty)
            for x, y, w in own:
                assert x.shape[0] == len(y) == len(w) <= 12
                np.testing.assert_array_equal(w, np.where(y > 0.5, 5.0, 1.0))
        assert sorted(np.concatenate([y for _, y, _ in epochs[:steps]]).tolist()) == \
            sorted(np.concatenate([y for _, y, _ in epochs[steps:]]).tolist())
        real_counts.append(sum(len(y) for _, y, _ in epochs[:steps]))
    assert sum(real_counts) == len(train) and len(set(real_counts)) > 1  # some worker completed
    validation = [sum(len(y) for _, y in s.validation().take(s.validation_steps)) for s in streams]
    assert sum(validation) == p.counts["split"]["validation"]["sessions"]


def test_a_batch_the_replicas_cannot_share_is_refused(prep):
    p = PrepDir.open(prep)
    config = TrainConfig(data=str(prep), out="unused", batch_size=33).settled(p.settings)
    with pytest.raises(ConfigError, match=r"--batch-size 33: the 2 replicas of the cluster take equal parts "
                                          r"of a batch; give a multiple of 2"):
        worker_streams(_OneWorker(0, 2), 2)(p, config, {0: 1.0, 1: 1.0})


# --------------------------------------------------------------------------- local workers

# A stand-in worker: records its pid and TF_CONFIG, then does what FAKE_ROLE says for its index.
FAKE_WORKER = textwrap.dedent("""
    import json, os, sys, time, signal
    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    folder = os.environ["FAKE_FOLDER"]
    with open(os.path.join(folder, f"{index}.json"), "w") as f:
        json.dump({"pid": os.getpid(), "tf_config": os.environ["TF_CONFIG"], "tmp": os.environ["TMPDIR"],
                   "argv": sys.argv[1:]}, f)
    role = json.loads(os.environ["FAKE_ROLE"]).get(str(index), "sleep")
    if role == "sleep":
        time.sleep(300)
    elif role == "error":
        time.sleep(0.5)
        print("some TensorFlow noise", file=sys.stderr)
        print("error: shards/part-00001.parquet: SHA-256 digest mismatch", file=sys.stderr)
        sys.exit(1)
    elif role == "raise":
        time.sleep(0.5)
        raise ValueError("boom\\nsecond line of the message")
    elif role == "kill":
        time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGKILL)
""")


@pytest.fixture
def fake_worker(tmp_path, monkeypatch):
    script = tmp_path / "fake_worker.py"
    script.write_text(FAKE_WORKER)
    folder = tmp_path / "workers"
    folder.mkdir()
    monkeypatch.setenv("FAKE_FOLDER", str(folder))

    def roles(**by_index: str) -> list[str]:
        monkeypatch.setenv("FAKE_ROLE", json.dumps({k.lstrip("w"): v for k, v in by_index.items()}))
        return [sys.executable, str(script)]
    roles.folder = folder
    return roles


def _alive(pid: int) -> bool:
    """Whether a process runs (a zombie, killed but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in "ZX"


def _recorded(folder: Path, n: int, timeout: float = 30) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        files = [folder / f"{i}.json" for i in range(n)]
        if all(f.is_file() and f.stat().st_size for f in files):
            time.sleep(0.1)
            return [json.loads(f.read_text()) for f in files]
        time.sleep(0.05)
    raise AssertionError(f"the workers did not start within {timeout} s")


@pytest.mark.parametrize("role, line", [
    ("error", "worker 1 of 2 failed (exit code 1): shards/part-00001.parquet: SHA-256 digest mismatch"),
    ("raise", "worker 1 of 2 failed (exit code 1): ValueError: boom (its log: "),
    ("kill", "worker 1 of 2 failed (killed by SIGKILL): "),
])
def test_a_failing_worker_is_one_line_and_ends_the_others(tmp_path, prep, fake_worker, own_temp, role, line):
    command = fake_worker(w1=role)
    config = TrainConfig(data=str(prep), out=str(tmp_path / "run"))
    with pytest.raises(WorkerError) as caught:
        run_local_workers(config, 2, command=command)
    message = str(caught.value)
    assert message.startswith(line) and "\n" not in message and "Traceback" not in message, message
    records = _recorded(fake_worker.folder, 2)
    assert not any(_alive(r["pid"]) for r in records), "a worker outlived the launcher"
    log = Path(re.search(r"its log: (\S+)\)", message).group(1))
    assert log.is_file() and not Path(records[0]["tmp"]).exists()  # the log kept, temporary files not
    assert log.parent.parent == own_temp and log.name == "worker-1.log"
    clusters = [Cluster.from_json(r["tf_config"]) for r in records]
    assert [c.index for c in clusters] == [0, 1] and clusters[0].addresses == clusters[1].addresses
    assert records[0]["argv"] == records[1]["argv"]
    assert json.loads(Path(records[0]["argv"][0]).read_text())["data"] == str(prep)
    assert not (tmp_path / "run").exists()


LAUNCHER = textwrap.dedent("""
    import sys
    from trainer.distribute import run_local_workers
    from trainer.train import TrainConfig
    try:
        run_local_workers(TrainConfig(data=sys.argv[1], out=sys.argv[2]), 2, command=sys.argv[3:])
    except KeyboardInterrupt:
        sys.exit(130)
""")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_stopping_the_launcher_stops_its_workers(tmp_path, prep, fake_worker, sig):
    if sig == signal.SIGKILL and sys.platform != "linux":
        pytest.skip("workers end with a killed launcher through Linux's parent-death signal")
    command = fake_worker()
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(prep), str(tmp_path / "run"), *command],
                                cwd=Path(__file__).resolve().parents[1])
    try:
        records = _recorded(fake_worker.folder, 2)
        assert all(_alive(r["pid"]) for r in records)
        launcher.send_signal(sig)
        assert launcher.wait(timeout=30) == (-signal.SIGKILL if sig == signal.SIGKILL else 130)
        deadline = time.monotonic() + 10
        while any(_alive(r["pid"]) for r in records) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(r["pid"]) for r in records), f"a worker outlived the launcher ({sig.name})"
    finally:
        launcher.kill()
        launcher.wait()


# --------------------------------------------------------------------------- the command

runner = CliRunner()


def _error(result) -> str:
    stderr = ANSI.sub("", result.stderr)
    assert result.exit_code == 1, (result.exit_code, stderr, result.exception)
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    return errors[0]


@pytest.mark.parametrize("options, shown", [
    (["--distribute", "multi-worker"], "TF_CONFIG is not set"),
    (["--distribute", "ring"], "--distribute 'ring': expected mirrored or multi-worker"),
    (["--distribute", "mirrored", "--local-workers", "2"], "leave out --distribute mirrored"),
    (["--local-workers", "0"], "--local-workers must be a whole number >= 1, got 0"),
    (["--local-workers", "6"], "5 shard file(s) hold training sessions for 6 workers; "
                               "prepare with --shards >= 9"),
])
def test_distribute_options_are_checked(tmp_path, prep, options, shown):
    result = runner.invoke(app, ["train", "--data", str(prep), "--out", str(tmp_path / "run"), *options])
    assert shown in _error(result)
    assert not (tmp_path / "run").exists()


def test_multi_worker_needs_a_prepared_folder(tmp_path, synthetic_log, monkeypatch):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["127.0.0.1:1"]},
                                                "task": {"type": "worker", "index": 0}}))
    for options in (["--distribute", "multi-worker"], ["--local-workers", "2"]):
        result = runner.invoke(app, ["train", "--data", str(synthetic_log), "--out", str(tmp_path / "run"),
                                     *options])
        assert "is not a prepared folder" in _error(result) and "ubp-edge prepare" in _error(result)


# --------------------------------------------------------------------------- training

TINY = {"units": 8, "epochs": 2, "batch_size": 32, "seed": 1}


@pytest.mark.slow
def test_mirrored_on_one_cpu_trains_as_one_process(tmp_path, prep):
    from trainer.distribute import train_distributed
    from trainer.train import train

    one = train(TrainConfig(data=str(prep), out=str(tmp_path / "one"), **TINY))
    mirrored = train_distributed(TrainConfig(data=str(prep), out=str(tmp_path / "mirrored"), **TINY),
                                 "mirrored")
    assert mirrored["split"] == one["split"] and mirrored["epochs_run"] == one["epochs_run"]
    assert abs(mirrored["test"]["lstm"]["roc_auc"] - one["test"]["lstm"]["roc_auc"]) <= 0.01


def _child_pid(tf_index: int) -> int:
    """The pid of this process's child whose TF_CONFIG is task ``tf_index``."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) != os.getpid():
                continue
            env = (stat.parent / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for item in env:
            if item.startswith(b"TF_CONFIG="):
                if json.loads(item[len(b"TF_CONFIG="):])["task"]["index"] == tf_index:
                    return int(stat.parent.name)
    raise AssertionError(f"no worker {tf_index} among this process's children")


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="finds the worker to kill in /proc")
def test_a_dead_worker_loses_at_most_an_epoch_with_resume(tmp_path, prep):
    """Worker 1 killed after the first epoch: the launcher stops the chief and says how to
    continue; --resume on both workers restores the chief's checkpoint and trains on."""
    config = TrainConfig(data=str(prep), out=str(tmp_path / "run"), units=8, epochs=3, seed=1)
    epochs = []

    def kill_worker_1(epoch, total, logs):
        epochs.append((epoch, logs))
        if epoch == 1:
            os.kill(_child_pid(1), signal.SIGKILL)

    with pytest.raises(WorkerError) as caught:
        run_local_workers(config, 2, on_epoch=kill_worker_1)
    message = str(caught.value)
    assert message.startswith("worker 1 of 2 failed (killed by SIGKILL)"), message
    assert f"the last complete epoch is kept in {stage_dir(tmp_path / 'run')}: run the same command with " \
           f"--resume to continue" in message
    state = json.loads((stage_dir(tmp_path / "run") / "checkpoint" / "state.json").read_text())
    assert state["epoch"] >= 1 and not (tmp_path / "run").exists()

    resumed = []
    report = run_local_workers(TrainConfig(**{**config.to_dict(), "resume": True}), 2,
                               on_epoch=lambda epoch, total, logs: resumed.append(epoch))
    assert resumed == list(range(state["epoch"] + 1, 4))
    assert report["epochs_run"] == 3 and len(report["history"]["loss"]) == 3
    assert report["history"]["loss"][0] == pytest.approx(epochs[0][1]["loss"])
    assert (tmp_path / "run" / "weights.npz").is_file() and not stage_dir(tmp_path / "run").exists()


def test_resume_on_a_worker_that_cannot_see_the_chief_checkpoint(tmp_path, prep, monkeypatch):
    from trainer.distribute import copy_checkpoint

    with pytest.raises(RunDirError, match=r"no complete checkpoint of the chief in .* every worker sees"):
        copy_checkpoint(tmp_path / "run", tmp_path / "worker" / "run")


# Settings of the Taobao comparison: 20 shards give the 2 workers 7 training shards each (3,605
# and 3,600 sessions); units 64, batch 64, 6 epochs keep the seed-to-seed spread of the test
# ROC-AUC near 0.006 (units 32, 3 epochs: near 0.01, as large as the tolerance).
TAOBAO = {"shards": 20, "units": 64, "batch_size": 64, "epochs": 6, "seed": 0}


@pytest.mark.slow
@pytest.mark.real_data
def test_two_local_workers_match_one_process_on_taobao(tmp_path, taobao_path):
    """2 local workers (the real command, `--local-workers 2`) against one process with the
    same settings, on the Taobao sample prepared into shards: test ROC-AUC within 0.01."""
    from trainer.logsource import EventLogSource
    from trainer.prepare import PrepareConfig, prepare
    from trainer.train import train

    prepared = tmp_path / "prepared"
    prepare(PrepareConfig(source=EventLogSource(taobao_path, format="taobao"), out=str(prepared),
                          shards=TAOBAO["shards"]))
    settings = {k: v for k, v in TAOBAO.items() if k != "shards"}
    one = train(TrainConfig(data=str(prepared), out=str(tmp_path / "one"), **settings))
    options = [a for k, v in settings.items() for a in (f"--{k.replace('_', '-')}", str(v))]
    two = subprocess.run([sys.executable, "-m", "ubp_edge.cli", "train", "--data", str(prepared),
                          "--out", str(tmp_path / "two"), *options, "--local-workers", "2"],
                         capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-2000:]
    report = json.loads((tmp_path / "two" / "report.json").read_text())
    assert report["split"] == one["split"]
    assert abs(report["test"]["lstm"]["roc_auc"] - one["test"]["lstm"]["roc_auc"]) <= 0.01, \
        (report["test"]["lstm"]["roc_auc"], one["test"]["lstm"]["roc_auc"])
    names = {run: sorted(p.name for p in (tmp_path / run).iterdir()) for run in ("one", "two")}
    assert names["one"] == names["two"]
    config = json.loads((tmp_path / "two" / "config.json").read_text())
    assert config["out"] == str(tmp_path / "two") and config["units"] == TAOBAO["units"]
