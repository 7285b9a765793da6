"""Outputs never replace inputs, and a write that fails is one line (issue 10, classes 7 and 8).

- The output guard (`trainer.files.check_outputs`): an output that resolves to an input
  (the same path spelt otherwise, a symlink, a hard link, DIGINETICA's companion files, a run
  directory that holds the log, `score --out`'s quarantine file) is refused before anything is
  read, in one line naming both options; so is an output that cannot be written there
  (a directory, a device, /proc, /sys, a read-only folder) and `train --out .` or `sub/..`.
- The atomic writers turn every OSError of a write (no space left, a file-size limit,
  permissions, a read-only file system, a directory in the way) into one `OutputError`
  naming the path and the reason, and leave no temporary file.
- A damaged run directory (config.json, report.json, feature_spec.json, weights, parity
  sessions, split.json) is one RunDirError naming the file, from `RunDirectory` and
  `split_keys`, whichever command reads it.
- A command that needs an optional package this install lacks says which extra to install.
- Ctrl-C is one line and exit code 130.

No test here trains a model: the run directories are built by hand, and `score` uses the
reference artifact in models/.
"""

from __future__ import annotations

import errno
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edge_runtime.errors import RunDirError, UbpEdgeError
from edge_runtime.features import FeatureEncoder
from trainer import rundir
from trainer.files import (
    OutputError,
    atomic_open,
    check_outputs,
    same_file,
    write_bytes_atomic,
    write_json_atomic,
)
from trainer.scoring import split_keys
from ubp_edge.cli import app

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "taobao-lstm128-float32.tflite"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
LOG = (b"user,ts,event,item,category,price\n"
       + b"".join(b"u%d,%d,view,i%d,c1,9.5\nu%d,%d,purchase,i%d,c1,9.5\n"
                  % (u, 1700000000 + 100 * u, u, u, 1700000010 + 100 * u, u) for u in range(40)))
IS_ROOT = os.geteuid() == 0
runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def one_error_line(result, *names: str, code: int = 1) -> str:
    """Exit ``code``, no traceback, one stderr line starting with "error:" naming ``names``."""
    stderr = ANSI.sub("", result.stderr)
    assert result.exit_code == code, (result.exit_code, result.stdout, stderr, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in stderr + result.stdout
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    for name in names:
        assert name in errors[0], (name, errors[0])
    return errors[0]


def no_temporaries(folder: Path) -> None:
    left = [p.name for p in folder.rglob("*") if p.name.endswith(".tmp") or p.name.endswith(".partial")]
    assert not left, left


@pytest.fixture
def log(tmp_path) -> Path:
    path = tmp_path / "events.csv"
    path.write_bytes(LOG)
    return path


@pytest.fixture
def never_read(monkeypatch):
    """Reading any log fails the test: the guard must refuse before anything is read."""
    from trainer import logsource

    def read(self):
        raise AssertionError(f"{self.path} was read before the outputs were checked")

    monkeypatch.setattr(logsource.EventLogSource, "read", read)


# =========================================================================== the atomic writers

@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EFBIG, errno.EACCES, errno.EROFS,
                                  errno.EISDIR, errno.ENOTDIR, errno.EIO])
def test_a_failed_write_is_one_output_error_naming_the_path_and_leaves_nothing(tmp_path, code):
    target = tmp_path / "out.jsonl"
    with pytest.raises(OutputError) as caught, atomic_open(target) as f:
        f.write("partial\n")
        raise OSError(code, os.strerror(code))  # what f.write, flush or close raise
    message = str(caught.value)
    assert message.startswith(f"{target}: cannot write (") and "\n" not in message
    assert os.strerror(code).split(":")[0] in message or code == errno.EFBIG
    assert not target.exists()
    assert os.listdir(tmp_path) == []


def test_a_failed_rename_is_one_output_error_and_the_old_file_stays(tmp_path, monkeypatch):
    target = tmp_path / "report.json"
    target.write_text("old")

    def refuse(src, dst):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(src), None, str(dst))

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OutputError, match=re.escape(f"{target}: cannot write (Read-only file system)")):
        write_json_atomic(target, {"a": 1})
    assert target.read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["report.json"]


def test_an_oserror_about_another_file_in_the_block_is_not_called_a_write_error(tmp_path):
    with pytest.raises(FileNotFoundError), atomic_open(tmp_path / "out.txt") as f:
        f.write((tmp_path / "missing-input").read_text())
    assert os.listdir(tmp_path) == []


def test_ctrl_c_in_the_block_removes_the_temporary_file(tmp_path):
    with pytest.raises(KeyboardInterrupt), atomic_open(tmp_path / "out.txt") as f:
        f.write("x")
        raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


def test_writing_onto_a_directory_is_one_line(tmp_path):
    target = tmp_path / "scores.jsonl"
    target.mkdir()
    with pytest.raises(OutputError, match=re.escape(f"{target}: cannot write (Is a directory)")):
        write_bytes_atomic(target, b"x")
    assert os.listdir(tmp_path) == ["scores.jsonl"] and os.listdir(target) == []


@pytest.mark.parametrize("place", ["/proc", "/sys"])
def test_writing_into_proc_or_sys_is_one_line(place):
    if not Path(place).is_dir():
        pytest.skip(f"no {place} here")
    target = Path(place) / "ubp-edge-test" / "out.json"
    with pytest.raises(OutputError, match=re.escape(f"{target}: cannot write (")):
        write_json_atomic(target, {})


@pytest.mark.skipif(IS_ROOT, reason="root writes into read-only folders")
def test_writing_into_a_read_only_folder_is_one_line(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="Permission denied"):
            write_bytes_atomic(folder / "x.bin", b"x")
        with pytest.raises(OutputError, match="--out"):
            check_outputs({}, {"--out": folder / "x.bin"})
    finally:
        folder.chmod(0o755)


# A child under a file-size limit must not write .pyc files: they would be cut at the limit
# and break every later import of the module (seen when the tree had no __pycache__ yet).
NO_BYTECODE = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}

FSIZE_WRITER = textwrap.dedent("""
    import sys
    from trainer.files import OutputError, write_bytes_atomic
    try:
        write_bytes_atomic(sys.argv[1], b"x" * 1_000_000)
    except OutputError as e:
        print(e)
        sys.exit(3)
""")


def _file_size_limit(limit: int):
    def apply() -> None:
        # Python ignores SIGXFSZ, so a write past the limit fails with EFBIG: what a full disk
        # (ENOSPC) does too, without filling one.
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_file_size_limit_is_one_line_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "big.bin"
    done = subprocess.run([sys.executable, "-c", FSIZE_WRITER, str(target)], cwd=ROOT,
                          capture_output=True, text=True, env=NO_BYTECODE,
                          preexec_fn=_file_size_limit(10_000))
    assert done.returncode == 3, done.stderr
    assert done.stdout.strip() == f"{target}: cannot write (File too large: the process's file-size " \
                                  f"limit (ulimit -f) or the file system's)"
    assert os.listdir(tmp_path) == []


# =========================================================================== the output guard

def test_the_same_file_by_path_symlink_hard_link_and_dotdot(tmp_path, log):
    (tmp_path / "sub").mkdir()
    link = tmp_path / "link.csv"
    link.symlink_to(log)
    hard = tmp_path / "hard.csv"
    os.link(log, hard)
    for spelt in (log, tmp_path / "sub" / ".." / log.name, link, hard):
        assert same_file(spelt, log), spelt
        with pytest.raises(OutputError) as caught:
            check_outputs({"--data": log}, {"--out": spelt})
        line = str(caught.value)
        assert f"--out {spelt} is --data {log}" in line and "choose another --out" in line
    assert not same_file(tmp_path / "other.csv", log)
    assert log.read_bytes() == LOG


def test_a_folder_replaced_whole_may_not_hold_an_input_the_cwd_or_be_the_root(tmp_path, log,
                                                                              monkeypatch):
    with pytest.raises(OutputError, match=f"--out {tmp_path} holds --data {log}"):
        check_outputs({"--data": log}, replaced={"--out": tmp_path})
    monkeypatch.chdir(tmp_path)
    for out in (".", "sub/..", str(tmp_path), str(tmp_path.parent)):
        with pytest.raises(OutputError, match="is the current directory or holds it"):
            check_outputs({}, replaced={"--out": out})
    with pytest.raises(OutputError, match="is the root directory"):
        check_outputs({}, replaced={"--out": "/"})
    check_outputs({"--data": log}, replaced={"--out": tmp_path / "runs" / "new"})  # fine
    assert sorted(os.listdir(tmp_path)) == ["events.csv"]  # the probes leave nothing


def test_two_outputs_that_are_one_file_and_outputs_that_are_not_files(tmp_path):
    with pytest.raises(OutputError, match="are one file"):
        check_outputs({}, {"--out": tmp_path / "a.jsonl", "--quarantine": tmp_path / "x" / ".." / "a.jsonl"})
    with pytest.raises(OutputError, match=f"--quarantine {tmp_path}: is a directory"):
        check_outputs({}, {"--quarantine": tmp_path})
    with pytest.raises(OutputError, match="/dev/null: exists and is not a regular file"):
        check_outputs({}, {"--quarantine": Path("/dev/null")})
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is not a directory"):
        check_outputs({}, {"--out": tmp_path / "file" / "scores.jsonl"})
    with pytest.raises(OutputError, match=f"--report {tmp_path / 'file'}: exists and is not a directory"):
        check_outputs({}, folders={"--report": tmp_path / "file"})


# =========================================================================== through the CLI

def test_score_out_over_the_log_is_refused_before_reading(tmp_path, log, never_read):
    line = one_error_line(invoke("score", "--model", MODEL, "--data", log, "--out", log), "--out", "--data")
    assert "would replace the input" in line
    assert log.read_bytes() == LOG
    assert sorted(os.listdir(tmp_path)) == ["events.csv"]


@pytest.mark.parametrize("how", ["symlink", "hard link", "dotdot"])
def test_score_out_over_the_log_by_another_name_is_refused(tmp_path, log, never_read, how):
    out = tmp_path / "scores.csv"
    if how == "symlink":
        out.symlink_to(log)
    elif how == "hard link":
        os.link(log, out)
    else:
        (tmp_path / "d").mkdir()
        out = tmp_path / "d" / ".." / log.name
    one_error_line(invoke("score", "--model", MODEL, "--data", log, "--out", out), "--out", "--data")
    assert log.read_bytes() == LOG


def test_score_out_whose_quarantine_file_is_the_log_is_refused(tmp_path, never_read):
    data = tmp_path / "scores.jsonl.quarantine.jsonl"
    data.write_bytes(LOG)
    one_error_line(invoke("score", "--model", MODEL, "--data", data, "--out", tmp_path / "scores.jsonl"),
                   "--out's bad rows", "--data")
    assert data.read_bytes() == LOG


def test_score_out_over_a_diginetica_companion_file_is_refused(tmp_path, never_read):
    views = tmp_path / "train-item-views.csv"
    views.write_text("sessionId;userId;itemId;timeframe;eventdate\n1;NA;5;10;2016-05-09\n")
    purchases = tmp_path / "train-purchases.csv"
    purchases.write_text("sessionId;userId;timeframe;eventdate;ordernumber;itemId\n")
    before = purchases.read_bytes()
    for fmt in (["--format", "diginetica"], []):  # named, or left to detection
        one_error_line(invoke("score", "--model", MODEL, "--data", views, *fmt, "--out", purchases),
                       "--out", "--data", str(purchases))
    assert purchases.read_bytes() == before


def test_quarantine_over_the_log_or_the_model_is_refused(tmp_path, log, never_read):
    one_error_line(invoke("data", "inspect", log, "--quarantine", log), "--quarantine", "the log")
    model = tmp_path / "model.tflite"
    shutil.copy(MODEL, model)
    one_error_line(invoke("evaluate", model, "--data", log, "--quarantine", log), "--quarantine", "--data")
    one_error_line(invoke("evaluate", model, "--data", log, "--quarantine", model),
                   "--quarantine", "the artifact")
    assert log.read_bytes() == LOG and model.read_bytes() == MODEL.read_bytes()


def test_train_out_holding_the_log_is_refused_before_reading(tmp_path, never_read):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    data = run / "events.csv"
    data.write_bytes(LOG)
    line = one_error_line(invoke("train", "--data", data, "--out", run, "--overwrite"), "--out", "--data")
    assert "would delete the input" in line
    assert data.read_bytes() == LOG


@pytest.mark.parametrize("out", [".", "sub/.."])
def test_train_out_naming_the_current_directory_is_refused_before_reading(tmp_path, log, never_read,
                                                                          monkeypatch, out):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    for extra in ([], ["--overwrite"]):
        one_error_line(invoke("train", "--data", log, "--out", out, *extra), f"--out {out}",
                       "current directory")
    assert sorted(os.listdir(tmp_path)) == ["events.csv", "sub"]  # no .partial stage anywhere
    assert not any(p.name.endswith(".partial") for p in tmp_path.parent.iterdir())


def test_train_api_refuses_sub_dotdot_before_reading(tmp_path, log, monkeypatch):
    import trainer.prepare
    from trainer import train as train_module

    def read_log(*args, **kwargs):
        raise AssertionError("read before --out was checked")

    monkeypatch.setattr(trainer.prepare, "prepare", read_log)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    with pytest.raises(OutputError, match="current directory"):
        train_module.train(train_module.TrainConfig(data=str(log), out="sub/..", epochs=1))
    data = tmp_path / "data" / "events.csv"
    data.parent.mkdir()
    shutil.copy(log, data)
    (data.parent / "x").mkdir()
    with pytest.raises(OutputError, match="holds --data"):
        train_module.train(train_module.TrainConfig(data=str(data), out=str(data.parent / "x" / ".."),
                                                    epochs=1))


def test_train_overwrite_replaces_run_directories_only(tmp_path, log, never_read):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "keep.jpg").write_bytes(b"precious")
    one_error_line(invoke("train", "--data", log, "--out", folder, "--overwrite"), str(folder),
                   "not a run directory")
    assert (folder / "keep.jpg").read_bytes() == b"precious"


@pytest.mark.parametrize("place", ["/sys/ubp-edge-run", "/proc/ubp-edge-run"])
def test_train_out_in_an_unwritable_place_is_one_line_before_reading(log, never_read, place):
    if not Path(place).parent.is_dir():
        pytest.skip(f"no {Path(place).parent} here")
    one_error_line(invoke("train", "--data", log, "--out", place), f"--out {place}", "cannot write")


def test_compare_and_benchmark_reports_over_an_input_are_refused(tmp_path, log, never_read):
    report = tmp_path / "report"
    report.mkdir()
    os.link(log, report / "compare.md")
    one_error_line(invoke("compare", tmp_path / "run", "--data", log, "--report", report),
                   "--report", "--data")
    (report / "benchmark.json").symlink_to(MODEL)
    one_error_line(invoke("benchmark", MODEL, "--report", report), "--report", "TARGET")
    assert log.read_bytes() == LOG


@pytest.mark.parametrize("where", ["a directory", "/sys", "/proc", "under a file"])
def test_score_out_that_cannot_be_written_is_one_line_before_reading(tmp_path, log, never_read, where):
    out = {"a directory": tmp_path / "scores.jsonl", "/sys": Path("/sys/scores.jsonl"),
           "/proc": Path("/proc/scores.jsonl"), "under a file": log / "scores.jsonl"}[where]
    if where == "a directory":
        out.mkdir()
    if not out.parent.exists() and where != "under a file":
        pytest.skip(f"no {out.parent} here")
    one_error_line(invoke("score", "--model", MODEL, "--data", log, "--out", out), f"--out {out}")


def test_data_generate_onto_a_directory_is_one_line(tmp_path):
    one_error_line(invoke("data", "generate", tmp_path), str(tmp_path), "is a directory")


def test_score_under_a_file_size_limit_is_one_line_and_leaves_nothing(tmp_path, log):
    out = tmp_path / "out" / "scores.jsonl"
    done = subprocess.run([sys.executable, "-m", "ubp_edge.cli", "score", "--model", str(MODEL),
                           "--data", str(log), "--out", str(out)], cwd=ROOT, capture_output=True,
                          text=True, env=NO_BYTECODE, preexec_fn=_file_size_limit(1000))
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {out}: cannot write (File too large: the process's file-size limit "
                      f"(ulimit -f) or the file system's)"], done.stderr
    assert "Traceback" not in done.stderr
    assert os.listdir(out.parent) == []


def test_quarantine_under_a_file_size_limit_is_one_line(tmp_path):
    data = tmp_path / "bad.csv"
    data.write_bytes(LOG + b"".join(b"u1,not-a-time,view,i1,c1,1.0\n" for _ in range(500)))
    quarantine = tmp_path / "q.jsonl"
    done = subprocess.run([sys.executable, "-m", "ubp_edge.cli", "data", "inspect", str(data),
                           "--quarantine", str(quarantine)], cwd=ROOT, capture_output=True, text=True,
                          env=NO_BYTECODE, preexec_fn=_file_size_limit(len(data.read_bytes()) + 4096))
    assert done.returncode == 1, done.stderr
    assert f"error: {quarantine}: cannot write (File too large" in done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(os.listdir(tmp_path)) == ["bad.csv"]


# =========================================================================== damaged run directories

@pytest.fixture
def hand_made_run(tmp_path) -> Path:
    """A run directory that RunDirectory accepts, built without training: 2 features, 3 units."""
    run = tmp_path / "run"
    run.mkdir()
    encoder = FeatureEncoder(features=("log_dt_prev", "is_view"))
    spec = encoder.fit(np.arange(8, dtype=float).reshape(4, 2)).spec()
    f, u = spec.n_features, 3
    rng = np.random.default_rng(0)
    weights = {"lstm_kernel": (f, 4 * u), "lstm_recurrent_kernel": (u, 4 * u), "lstm_bias": (4 * u,),
               "dense_kernel": (u, 1), "dense_bias": (1,)}
    np.savez(run / rundir.WEIGHTS, **{k: rng.normal(size=s).astype(np.float32) for k, s in weights.items()})
    parity = {}
    for part in ("test", "validation", "calibration"):
        sessions = [rng.normal(size=(n, f)).astype(np.float32) for n in (1, 3, 2)]
        prefix = rundir.PARITY_PARTS[part]
        parity |= rundir.ragged(part, sessions)
        parity[f"{prefix}label"] = np.array([0, 1, 0], np.float32)
        if part != "calibration":
            parity[f"{prefix}keras_probability"] = np.array([0.1, 0.8, 0.3], np.float32)
    np.savez(run / rundir.PARITY, **parity)
    write_json_atomic(run / rundir.SPEC, spec.to_dict())
    write_json_atomic(run / rundir.CONFIG, {"data": "events.csv", "gap_minutes": 30.0})
    write_json_atomic(run / rundir.REPORT_JSON, {"threshold": 0.4, "data": {"format": "canonical"},
                                                 "test": {"lstm": {"roc_auc": 0.7}}})
    digests = {name: {"session_digests": ["0123456789abcdef"]} for name in rundir.SPLIT_NAMES}
    write_json_atomic(run / rundir.SPLIT, digests)
    assert rundir.RunDirectory(run).units == u
    return run


def _json(value):
    return lambda path: path.write_text(json.dumps(value))


def _npz(change):
    def damage(path):
        arrays = dict(np.load(path))
        change(arrays)
        np.savez(path, **arrays)
    return damage


def _object_array(arrays):
    arrays["lstm_bias"] = np.array([{"a": 1}], dtype=object)


DAMAGES = {
    "config.json: not JSON": (rundir.CONFIG, lambda p: p.write_bytes(b"{\"data\": ")),
    "config.json: not UTF-8": (rundir.CONFIG, lambda p: p.write_bytes(b"\xff\xfe{}")),
    "config.json: a list": (rundir.CONFIG, _json([1, 2])),
    "config.json: nested too deep": (rundir.CONFIG, lambda p: p.write_text("[" * 100_000)),
    "config.json: no data": (rundir.CONFIG, _json({"gap_minutes": 30})),
    "config.json: negative gap": (rundir.CONFIG, _json({"data": "x.csv", "gap_minutes": -1})),
    "config.json: a directory": (rundir.CONFIG, lambda p: (p.unlink(), p.mkdir())),
    "report.json: no threshold": (rundir.REPORT_JSON, _json({"data": {"format": "x"}})),
    "report.json: NaN threshold": (rundir.REPORT_JSON, lambda p: p.write_text(
        '{"threshold": NaN, "data": {"format": "x"}, "test": {"lstm": {"roc_auc": null}}}')),
    "report.json: threshold 7": (rundir.REPORT_JSON, _json(
        {"threshold": 7, "data": {"format": "x"}, "test": {"lstm": {"roc_auc": None}}})),
    "report.json: test is a list": (rundir.REPORT_JSON, _json(
        {"threshold": 0.5, "data": {"format": "x"}, "test": []})),
    "feature_spec.json: garbage": (rundir.SPEC, _json({"version": 1, "features": 3})),
    "feature_spec.json: other version": (rundir.SPEC, _json({"version": 9})),
    "weights.npz: truncated": (rundir.WEIGHTS, lambda p: p.write_bytes(p.read_bytes()[:300])),
    "weights.npz: random bytes": (rundir.WEIGHTS, lambda p: p.write_bytes(os.urandom(2000))),
    "weights.npz: a flipped byte": (rundir.WEIGHTS, lambda p: p.write_bytes(
        p.read_bytes()[:100] + bytes([p.read_bytes()[100] ^ 0xFF]) + p.read_bytes()[101:])),
    "weights.npz: pickled objects": (rundir.WEIGHTS, _npz(_object_array)),
    "weights.npz: wrong shape": (rundir.WEIGHTS, _npz(lambda a: a.update(
        lstm_recurrent_kernel=np.zeros((5, 12), np.float32)))),
    "weights.npz: 1-D kernel": (rundir.WEIGHTS, _npz(lambda a: a.update(
        lstm_kernel=np.zeros(12, np.float32)))),
    "weights.npz: NaN": (rundir.WEIGHTS, _npz(lambda a: a["dense_bias"].fill(np.nan))),
    "weights.npz: text": (rundir.WEIGHTS, _npz(lambda a: a.update(dense_bias=np.array(["x"])))),
    "parity_sessions.npz: truncated": (rundir.PARITY, lambda p: p.write_bytes(p.read_bytes()[:500])),
    "parity_sessions.npz: offsets past the rows": (rundir.PARITY, _npz(lambda a: a.update(
        offsets=np.array([0, 1, 4, 99], np.int64)))),
    "parity_sessions.npz: offsets backwards": (rundir.PARITY, _npz(lambda a: a.update(
        offsets=np.array([0, 4, 1, 6], np.int64)))),
    "parity_sessions.npz: labels short": (rundir.PARITY, _npz(lambda a: a.update(
        validation_label=np.array([1.0], np.float32)))),
    "parity_sessions.npz: label 2": (rundir.PARITY, _npz(lambda a: a.update(
        label=np.array([0, 2, 0], np.float32)))),
    "parity_sessions.npz: probability 1.5": (rundir.PARITY, _npz(lambda a: a.update(
        keras_probability=np.array([0.1, 1.5, 0.2], np.float32)))),
    "parity_sessions.npz: features of another width": (rundir.PARITY, _npz(lambda a: a.update(
        calibration_features=np.zeros((6, 5), np.float32)))),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_run_directory_is_one_run_dir_error_naming_the_file(hand_made_run, damage):
    name, apply = DAMAGES[damage]
    apply(hand_made_run / name)
    with pytest.raises(RunDirError) as caught:
        rundir.RunDirectory(hand_made_run)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 400
    assert name in message or (name == rundir.WEIGHTS and "weights take" in message), message


@pytest.mark.parametrize("damage", ["config.json: not JSON", "weights.npz: truncated",
                                    "parity_sessions.npz: offsets past the rows"])
def test_convert_on_a_damaged_run_is_one_line_naming_the_file(hand_made_run, damage):
    name, apply = DAMAGES[damage]
    apply(hand_made_run / name)
    one_error_line(invoke("convert", hand_made_run, "--precision", "float32"), str(hand_made_run / name))


SPLIT_DAMAGES = {
    "not JSON": lambda p: p.write_bytes(b"\x00\x01"),
    "a list": _json([]),
    "the split is a string": _json({"test": "all"}),
    "digests are a number": _json({"test": {"session_digests": 5}}),
    "digests hold numbers": _json({"test": {"session_digests": [1, 2]}}),
    "missing": lambda p: p.unlink(),
}


@pytest.mark.parametrize("damage", list(SPLIT_DAMAGES))
def test_a_damaged_split_json_is_one_run_dir_error_naming_it(hand_made_run, damage, log):
    manifest = hand_made_run / rundir.SPLIT
    SPLIT_DAMAGES[damage](manifest)
    with pytest.raises(RunDirError, match=re.escape(str(manifest))):
        split_keys(manifest, "test")
    one_error_line(invoke("evaluate", MODEL, "--data", log, "--split", "test", "--run-dir", hand_made_run),
                   str(manifest))


def test_split_json_of_another_version_and_an_unknown_split(hand_made_run):
    from edge_runtime.errors import ConfigError

    manifest = hand_made_run / rundir.SPLIT
    with pytest.raises(ConfigError, match="--split 'holdout': expected train, validation or test"):
        split_keys(manifest, "holdout")
    manifest.write_text(json.dumps({"test": {"sessions": 3}}))
    with pytest.raises(ConfigError, match="another version"):
        split_keys(manifest, "test")


# =========================================================================== optional packages

# (command line, the module it needs that is "missing", the extra the message names)
NEEDS = [
    (["data", "inspect", "{log}"], "pyarrow", "data"),
    (["score", "--model", str(MODEL), "--data", "{log}"], "pyarrow", "data"),
    (["evaluate", str(MODEL), "--data", "{log}"], "sklearn", "data"),
    (["compare", "{tmp}", "--data", "{log}"], "scipy", "data"),
    (["compare", "{tmp}", "--data", "{log}", "--report", "{tmp}/r"], "matplotlib", "data"),
    (["benchmark", str(MODEL)], "pyarrow", "data"),
    (["benchmark", str(MODEL), "--report", "{tmp}/r"], "matplotlib", "data"),
    (["train", "--data", "{log}", "--out", "{tmp}/run"], "tensorflow", "train"),
    (["train", "--data", "{log}", "--out", "{tmp}/run"], "sklearn", "data"),
    (["convert", "{tmp}/run"], "tf_keras", "train"),
]


@pytest.mark.parametrize(("args", "module", "extra"), NEEDS, ids=[f"{a[0]}-{m}" for a, m, _ in NEEDS])
def test_a_command_whose_optional_package_is_missing_says_which_extra_to_install(
        tmp_path, log, monkeypatch, args, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # what `pip install .` without the extra gives
    line = one_error_line(invoke(*[a.format(log=log, tmp=tmp_path) for a in args]),
                          f"pip install 'ubp-edge[{extra}]'", "which is not installed")
    assert f"ubp-edge {args[0]}" in line
    assert log.read_bytes() == LOG


def test_a_missing_optional_package_found_late_is_still_one_line(log, monkeypatch):
    import trainer.summary

    def summarize(_source):
        raise ModuleNotFoundError("No module named 'matplotlib'", name="matplotlib")

    monkeypatch.setattr(trainer.summary, "summarize_log", summarize)
    one_error_line(invoke("data", "inspect", log), "matplotlib", "pip install 'ubp-edge[data]'")


def test_a_missing_module_that_is_not_an_extra_stays_a_traceback(log, monkeypatch):
    import trainer.summary

    def summarize(_source):
        raise ModuleNotFoundError("No module named 'trainer.gone'", name="trainer.gone")

    monkeypatch.setattr(trainer.summary, "summarize_log", summarize)
    result = invoke("data", "inspect", log)
    assert isinstance(result.exception, ModuleNotFoundError)  # a broken install is a bug


BLOCKED_RUN = textwrap.dedent("""
    import importlib.abc, sys
    BLOCKED = set(sys.argv[1].split(","))

    class Uninstalled(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Uninstalled())
    sys.argv = ["ubp-edge", *sys.argv[2:]]
    from ubp_edge.cli import main
    main()
""")


def test_score_data_in_a_runtime_only_install_is_one_line(log):
    """The issue's case, in a real process where pyarrow cannot be imported at all."""
    done = subprocess.run([sys.executable, "-c", BLOCKED_RUN, "pyarrow,sklearn,matplotlib,tensorflow",
                           "score", "--model", str(MODEL), "--data", str(log)], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "ModuleNotFoundError" not in done.stderr
    assert done.stderr.strip() == ("error: ubp-edge score needs pyarrow (reads event logs), which is not "
                                   "installed: pip install 'ubp-edge[data]'")


# =========================================================================== Ctrl-C

@pytest.mark.parametrize("command", ["score", "evaluate", "data"])
def test_ctrl_c_is_one_line_and_exit_130(log, monkeypatch, command):
    import trainer.scoring
    import trainer.summary

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer.scoring, "score_log", interrupted)
    monkeypatch.setattr(trainer.summary, "summarize_log", interrupted)
    args = {"score": ["score", "--model", MODEL, "--data", log],
            "evaluate": ["evaluate", MODEL, "--data", log], "data": ["data", "inspect", log]}[command]
    result = invoke(*args)
    assert result.exit_code == 130, (result.stdout, result.stderr, result.exception)
    stderr = ANSI.sub("", result.stderr)
    assert stderr.strip() == "interrupted" and "Traceback" not in stderr


def test_ctrl_c_in_train_before_its_first_epoch_and_in_convert(tmp_path, log, monkeypatch):
    import converters.tflite
    import trainer.train

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer.train, "train", interrupted)
    monkeypatch.setattr(converters.tflite, "convert_run", interrupted)
    result = invoke("train", "--data", log, "--out", tmp_path / "run")
    assert result.exit_code == 130 and "Traceback" not in result.stderr
    assert ANSI.sub("", result.stderr).splitlines()[-1] == "interrupted before the first epoch ended; " \
                                                           "nothing to resume"
    result = invoke("convert", tmp_path / "run")
    assert result.exit_code == 130
    assert ANSI.sub("", result.stderr).strip() == "interrupted; the artifacts written so far are complete"


def test_an_error_is_a_ubp_edge_error():
    assert issubclass(OutputError, UbpEdgeError)
