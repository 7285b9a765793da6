"""A `train` killed with SIGKILL mid-run resumes from its last checkpoint with --resume;
a `convert` killed mid-way leaves no partial artifact. Real processes, real signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainer.rundir import stage_dir

pytestmark = pytest.mark.slow
TRAIN = [sys.executable, "-m", "ubp_edge.cli", "train", "--units", "8", "--epochs", "6",
         "--patience", "6", "--max-len", "20", "--batch-size", "64", "--seed", "3"]


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else "exited"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_train_killed_mid_run_resumes_from_its_last_epoch(tmp_path, synthetic_log):
    out = tmp_path / "run"
    args = [*TRAIN, "--data", str(synthetic_log), "--out", str(out)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    state = stage_dir(out) / "checkpoint" / "state.json"
    _wait_for(state, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists(), "a killed run must not leave a run directory"
    done_epochs = json.loads(state.read_text())["epoch"]
    assert 1 <= done_epochs < 6

    again = subprocess.run(args, capture_output=True, text=True)  # without --resume: starts afresh
    assert again.returncode == 0, again.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["epochs_run"] == 6 and not stage_dir(out).exists()

    # Kill a second run, then resume it: it finishes the remaining epochs only.
    out2 = tmp_path / "run2"
    args2 = [*TRAIN, "--data", str(synthetic_log), "--out", str(out2)]
    proc = subprocess.Popen(args2, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    state2 = stage_dir(out2) / "checkpoint" / "state.json"
    _wait_for(state2, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = json.loads(state2.read_text())["epoch"]
    resumed = subprocess.run([*args2, "--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads((out2 / "report.json").read_text())
    assert report["epochs_run"] == 6
    assert len(report["history"]["loss"]) == 6 and killed_at < 6
    assert (out2 / "weights.npz").is_file() and not (out2 / "checkpoint").exists()


def test_resume_refuses_other_settings_and_missing_runs(tmp_path, synthetic_log):
    out = tmp_path / "run"
    nothing = subprocess.run([*TRAIN, "--data", str(synthetic_log), "--out", str(out), "--resume"],
                             capture_output=True, text=True)
    assert nothing.returncode == 1 and "nothing to resume" in nothing.stderr
    proc = subprocess.Popen([*TRAIN, "--data", str(synthetic_log), "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for(stage_dir(out) / "checkpoint" / "state.json", proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    other = subprocess.run([*TRAIN[:-2], "--seed", "4", "--data", str(synthetic_log), "--out", str(out),
                            "--resume"], capture_output=True, text=True)
    assert other.returncode == 1 and "seed" in other.stderr and "Traceback" not in other.stderr


def test_convert_killed_mid_way_leaves_no_partial_artifact(tmp_path, tiny_run):
    import shutil

    run = shutil.copytree(tiny_run, tmp_path / "run")
    (run / "model-float32.tflite").unlink()
    proc = subprocess.Popen([sys.executable, "-m", "ubp_edge.cli", "convert", str(run),
                             "--graph", "fused,unrolled"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    time.sleep(6)  # mid-way: TensorFlow loaded, some precisions converting
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    from edge_runtime import Scorer

    for path in run.iterdir():
        assert not path.name.endswith(".tmp"), f"temporary file left: {path.name}"
        if path.suffix == ".tflite":
            Scorer.load(path)  # every artifact that exists is complete and verifies
