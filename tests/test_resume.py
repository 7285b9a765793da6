"""A `train` killed with SIGKILL mid-run resumes from its last checkpoint with --resume;
a `convert` killed mid-way leaves no partial artifact and no worker behind; Ctrl-C in
`train` and `convert` is one line and exit code 130 (train keeps its stage for --resume).
Real processes, real signals."""

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


def _state(pid: int) -> str | None:
    """A process's state letter (``Z`` for a zombie), None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if parent == pid:
                found.append(int(entry))
    return found


def _mentioning(text: str) -> list[int]:
    """Live processes whose command line mentions ``text``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _state(int(entry)) not in (None, "Z"):
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if text.encode() in f.read():
                        found.append(int(entry))
            except OSError:
                continue
    return found


def _convert_with_its_calibration_child(run: Path) -> tuple[subprocess.Popen, list[int]]:
    """Start `convert --precision int8` (calibrated: it runs in a child process) and wait for
    the child to exist; return the convert process and its children."""
    proc = subprocess.Popen([sys.executable, "-m", "ubp_edge.cli", "convert", str(run), "--precision",
                             "int8", "--overwrite"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 300
    while not (children := _children(proc.pid)):
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "convert never started its calibration child"
        time.sleep(0.05)
    time.sleep(1.5)  # the child is importing TensorFlow or calibrating
    assert proc.poll() is None and all(_state(pid) not in (None, "Z") for pid in children)
    return proc, children


def _all_gone(pids: list[int], timeout: float = 30) -> list[int]:
    """Wait (bounded) until every pid has ended; return those still alive."""
    deadline = time.monotonic() + timeout
    alive = pids
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [pid for pid in alive if _state(pid) not in (None, "Z")]  # a zombie has ended
    return alive


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to see processes")
def test_a_killed_convert_leaves_no_worker_behind(tmp_path, tiny_run):
    import shutil

    run = shutil.copytree(tiny_run, tmp_path / "run")
    proc, children = _convert_with_its_calibration_child(run)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _all_gone(children) == [], "a worker of the killed convert is still running"
    assert _all_gone(_mentioning(str(run)), timeout=5) == []
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to see processes")
def test_ctrl_c_in_convert_is_one_line_exit_130_and_stops_its_worker(tmp_path, tiny_run):
    import shutil

    run = shutil.copytree(tiny_run, tmp_path / "run")
    before = (run / "model-float32.tflite").read_bytes()
    proc, children = _convert_with_its_calibration_child(run)
    os.kill(proc.pid, signal.SIGINT)  # the terminal's Ctrl-C
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert [line for line in stderr.splitlines() if line.strip()] == [
        "interrupted; the artifacts written so far are complete"]
    assert _all_gone(children) == []
    assert (run / "model-float32.tflite").read_bytes() == before
    assert not (run / "model-int8.tflite").exists()


def test_ctrl_c_in_train_is_one_line_exit_130_and_resume_continues(tmp_path, synthetic_log):
    out = tmp_path / "run"
    args = [*TRAIN, "--data", str(synthetic_log), "--out", str(out)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    state = stage_dir(out) / "checkpoint" / "state.json"
    _wait_for(state, proc)
    os.kill(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert (f"interrupted; the last complete epoch is kept in {stage_dir(out)}: run the same command "
            f"with --resume to continue") in stderr
    assert stage_dir(out).is_dir() and not out.exists()
    resumed = subprocess.run([*args, "--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((out / "report.json").read_text())["epochs_run"] == 6
