"""The CLI's error contract: every fault a person can act on is one line on stderr that
starts with "error:" and names the file or value, exit code 1, no traceback. Plus the
JSON outputs of `evaluate`, `data inspect` and `convert`, and `score --out x.csv`.

The installed typer (0.29) vendors click and its CliRunner keeps stderr apart
(`result.stderr`); rich's Console(stderr=True) resolves sys.stderr at print time, so the
in-process runner sees it. One test also runs the real entry point in a subprocess.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from ubp_edge.cli import app

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
HEADER = b"user,ts,event,item,category,price\n"
GOOD = HEADER + (b"u1,1700000000,view,i1,c1,9.5\nu1,1700000010,cart,i1,c1,9.5\n"
                 b"u2,1700000020,view,i2,c2,1.0\nu2,1700000030,purchase,i2,c2,1.0\n")

runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def assert_user_error(result, *names: str) -> str:
    """Exit 1, no traceback, exactly one stderr line starting with "error:" naming ``names``."""
    stderr = ANSI.sub("", result.stderr)
    assert result.exit_code == 1, (result.exit_code, result.stdout, stderr, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in stderr and "Traceback" not in result.stdout
    errors = [line for line in stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, stderr
    line = errors[0]
    assert line.startswith("error:"), line
    for name in names:
        assert name in line, (name, line)
    return line


@pytest.fixture
def good_csv(tmp_path):
    path = tmp_path / "good.csv"
    path.write_bytes(GOOD)
    return path


# =========================================================================== data inspect

def test_inspect_missing_file(tmp_path):
    path = tmp_path / "missing.csv"
    line = assert_user_error(invoke("data", "inspect", path), str(path))
    assert "no such file" in line


def test_inspect_directory(tmp_path):
    line = assert_user_error(invoke("data", "inspect", tmp_path), str(tmp_path))
    assert "is a directory" in line


def test_inspect_empty_file(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_bytes(b"")
    line = assert_user_error(invoke("data", "inspect", path), str(path))
    assert "empty file" in line


def test_inspect_truncated_gzip(tmp_path):
    data = gzip.compress(GOOD * 200)
    path = tmp_path / "log.csv.gz"
    path.write_bytes(data[:len(data) // 2])
    line = assert_user_error(invoke("data", "inspect", path), str(path))
    assert "ends early" in line or "truncated" in line


def test_inspect_unknown_format(good_csv):
    line = assert_user_error(invoke("data", "inspect", good_csv, "--format", "nope"), "'nope'")
    for name in ("taobao", "rees46", "diginetica", "otto", "retailrocket", "canonical", "csv"):
        assert name in line


def test_inspect_format_csv_without_map(good_csv):
    assert_user_error(invoke("data", "inspect", good_csv, "--format", "csv"), "--format csv", "--map")


def test_inspect_map_without_format_csv(good_csv):
    assert_user_error(invoke("data", "inspect", good_csv, "--map", "user=user"), "--map", "--format csv")


def test_inspect_bad_map_pair(good_csv):
    assert_user_error(invoke("data", "inspect", good_csv, "--format", "csv", "--map", "user"),
                      "--map", "'user'")


def test_inspect_strict_names_the_bad_line(tmp_path):
    path = tmp_path / "onebad.csv"
    path.write_bytes(GOOD + b"u3,abc,view,i3,c3,2.0\n")
    line = assert_user_error(invoke("data", "inspect", path, "--strict"), f"{path}:6")
    assert "bad_timestamp" in line and "--strict" in line


def test_inspect_undetectable_format(tmp_path):
    path = tmp_path / "odd.csv"
    path.write_bytes(b"a,b,c\n1,2,3\n")
    assert_user_error(invoke("data", "inspect", path), f"{path}:1", "--format")


def test_inspect_no_valid_row(tmp_path):
    path = tmp_path / "allbad.csv"
    path.write_bytes(HEADER + b"u1,1700000000,teleport,i1,c1,1\n")
    assert_user_error(invoke("data", "inspect", path), str(path), "unknown_event")


def test_inspect_jsonl_with_non_utf8_bytes_is_not_a_traceback(tmp_path):
    """A JSONL line with invalid UTF-8 inside a string: quarantined (exit 0) or a one-line
    error; never an uncaught pyarrow exception."""
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"user": "u1", "ts": 1700000000, "event": "view", "item": "a"}\n'
                     b'{"user": "u\xff", "ts": 1700000001, "event": "view", "item": "b"}\n')
    result = invoke("data", "inspect", path, "--json")
    if result.exit_code == 0:
        assert json.loads(result.stdout)["bad_rows"]["by_reason"] == {"non_utf8": 1}
    else:
        assert_user_error(result, str(path))


def test_entry_point_in_subprocess(tmp_path):
    """The real `python -m ubp_edge.cli`: stderr is one "error:" line, stdout empty."""
    path = tmp_path / "missing.csv"
    proc = subprocess.run([sys.executable, "-m", "ubp_edge.cli", "data", "inspect", str(path)],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "NO_COLOR": "1", "TERM": "dumb"})
    assert proc.returncode == 1
    assert proc.stdout == ""
    stderr = ANSI.sub("", proc.stderr).strip()
    assert "Traceback" not in stderr
    assert stderr.splitlines() == [f"error: {path}: no such file"]


# =========================================================================== train

def test_train_into_non_empty_dir_without_overwrite(tmp_path, synthetic_log):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    line = assert_user_error(invoke("train", "--data", synthetic_log, "--out", out), str(out))
    assert "--overwrite" in line
    assert (out / "keep.txt").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no stage left behind


def test_train_map_without_format_csv_is_refused(tmp_path, good_csv):
    """`--map` without `--format csv` is a ConfigError in `data inspect`, `score` and
    `evaluate`; `train` must refuse it too rather than silently ignore the mapping.
    (The tiny log cannot be split, so if --map is ignored this still fails fast.)"""
    result = invoke("train", "--data", good_csv, "--out", tmp_path / "run", "--map", "user=user")
    assert_user_error(result, "--map", "--format csv")


def test_train_bad_setting(tmp_path, good_csv):
    assert_user_error(invoke("train", "--data", good_csv, "--out", tmp_path / "run", "--units", "0"),
                      "units")


# Issue 10: option errors name the options as typed, with the value, never Python syntax.
@pytest.mark.parametrize(("args", "expected"), [
    (["train", "--data", "{log}", "--out", "{tmp}/run", "--epochs", "0"],
     "error: --epochs must be a whole number >= 1, got 0"),
    (["train", "--data", "{log}", "--out", "{tmp}/run", "--batch-size", "0", "--patience", "0"],
     "error: --batch-size must be a whole number >= 1, got 0; --patience must be a whole number >= 1, got 0"),
    (["train", "--data", "{log}", "--out", "{tmp}/run", "--class-weight", "heavy"],
     "error: --class-weight 'heavy': expected none or balanced"),
    (["train", "--data", "{log}", "--out", "{tmp}/run", "--learning-rate", "3"],
     "error: --learning-rate must be in (0, 1), got 3.0"),
    (["convert", "{tmp}", "--precision", "int9"],
     "error: --precision int9: unknown precision, expected one of float32, float16, dynamic, int8, "
     "int8-io, 16x8"),
    (["convert", "{tmp}", "--graph", "looped"],
     "error: --graph looped: unknown graph, expected fused or unrolled"),
    (["compare", "{tmp}", "--data", "{log}", "--split", "x"],
     "error: --split 'x': expected one of auto, all, train, validation, test"),
    (["benchmark", "{tmp}", "--runs", "0", "--live-sessions", "-5"],
     "error: --runs must be >= 1, got 0; --live-sessions must be >= 1, got -5"),
    (["data", "generate", "{tmp}/x.csv", "--users", "0", "--seed", "-1"],
     "error: --users must be a whole number >= 1, got 0; --seed must be a whole number >= 0, got -1"),
])
def test_option_errors_name_the_option_as_typed(tmp_path, good_csv, args, expected):
    result = invoke(*[a.format(log=good_csv, tmp=tmp_path) for a in args])
    line = assert_user_error(result)
    assert line == expected
    assert not re.search(r"[{}\[\]]|_", line.replace("--", "").replace("int8-io", "")), line


# =========================================================================== convert

def test_convert_missing_run_dir(tmp_path):
    run = tmp_path / "norun"
    line = assert_user_error(invoke("convert", run), str(run))
    assert "no such run directory" in line


def test_convert_incomplete_run_dir(tmp_path):
    run = tmp_path / "incomplete"
    run.mkdir()
    (run / "config.json").write_text("{}")
    line = assert_user_error(invoke("convert", run), str(run))
    assert "missing" in line and "weights.npz" in line and "'config.json'" not in line


# =========================================================================== score

def test_score_missing_model(tmp_path, good_csv):
    model = tmp_path / "missing.tflite"
    line = assert_user_error(invoke("score", "--model", model, "--data", good_csv), str(model))
    assert "no such artifact file" in line


def test_score_model_is_a_directory(tmp_path, good_csv):
    assert_user_error(invoke("score", "--model", tmp_path, "--data", good_csv), str(tmp_path))


def test_score_random_bytes_model(tmp_path, good_csv):
    model = tmp_path / "random.tflite"
    model.write_bytes(bytes(range(256)) * 4)
    line = assert_user_error(invoke("score", "--model", model, "--data", good_csv), str(model))
    assert "not a TFLite flatbuffer" in line


def test_score_tiny_file_model(tmp_path, good_csv):
    model = tmp_path / "short.tflite"
    model.write_bytes(b"TFL")
    line = assert_user_error(invoke("score", "--model", model, "--data", good_csv), str(model))
    assert "not a TFLite flatbuffer" in line


@pytest.mark.slow
def test_score_tflite_without_our_metadata(tmp_path, good_csv):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    tf = pytest.importorskip("tensorflow")
    keras = pytest.importorskip("tf_keras")
    model = keras.Sequential([keras.layers.Input((4,)), keras.layers.Dense(1, activation="sigmoid")])
    path = tmp_path / "plain.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    line = assert_user_error(invoke("score", "--model", path, "--data", good_csv), str(path))
    assert "without ubp-edge metadata" in line


# =========================================================================== with the tiny model

@pytest.mark.slow
def test_evaluate_missing_data(tmp_path, tiny_artifact):
    data = tmp_path / "missing.csv"
    line = assert_user_error(invoke("evaluate", tiny_artifact, "--data", data), str(data))
    assert "no such file" in line


@pytest.mark.slow
def test_score_bad_out_suffix(tmp_path, tiny_artifact, synthetic_log):
    out = tmp_path / "scores.txt"
    assert_user_error(invoke("score", "--model", tiny_artifact, "--data", synthetic_log, "--out", out),
                      str(out))
    assert not out.exists()


@pytest.mark.slow
def test_evaluate_json(tiny_artifact, synthetic_log):
    result = invoke("evaluate", tiny_artifact, "--data", synthetic_log, "--json")
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    lines = [x for x in result.stdout.splitlines() if x.strip()]
    assert len(lines) == 1, result.stdout
    report = json.loads(lines[0], parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert isinstance(report, dict)
    keys = {"n_sessions", "n_positive", "n_excluded_empty_prefix", "roc_auc", "pr_auc", "log_loss",
            "brier", "mae", "accuracy", "f1", "by_prefix_length", "bad_rows"}
    assert keys <= set(report), keys - set(report)
    assert list(report["by_prefix_length"]) == ["1", "2", "3", "4-5", "6-10", "11+"]
    assert sum(b["n_sessions"] for b in report["by_prefix_length"].values()) == report["n_sessions"]
    assert report["bad_rows"] == {"total": 0, "by_reason": {}}
    assert 0 < report["n_positive"] < report["n_sessions"]
    for k in ("roc_auc", "pr_auc", "accuracy", "f1", "brier", "mae"):
        assert 0.0 <= report[k] <= 1.0, (k, report[k])


@pytest.mark.slow
def test_score_out_csv_one_line_per_session(tmp_path, tiny_artifact, synthetic_log):
    from trainer.readers import read_log
    from trainer.sessions import sessionize

    out = tmp_path / "x.csv"
    result = invoke("score", "--model", tiny_artifact, "--data", synthetic_log, "--out", out)
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    with open(out, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["session", "events_scored", "probability", "decision"]
    n_sessions = len(sessionize(read_log(synthetic_log), 30.0))
    assert len(rows) - 1 == n_sessions
    keys = [r[0] for r in rows[1:]]
    assert len(set(keys)) == len(keys)
    for _, events, p, decision in rows[1:]:
        if p == "":
            assert events == "0" and decision == ""
        else:
            assert 0.0 <= float(p) <= 1.0 and decision in ("0", "1") and int(events) >= 1
    assert not (tmp_path / "x.csv.quarantine.jsonl").exists()  # no bad rows, nothing written


# =========================================================================== other JSON outputs

def test_inspect_json(good_csv):
    result = invoke("data", "inspect", good_csv, "--json")
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    lines = [x for x in result.stdout.splitlines() if x.strip()]
    assert len(lines) == 1
    summary = json.loads(lines[0])
    keys = {"path", "format", "rows_read", "events", "bad_rows", "users", "session_rule", "sessions",
            "sessions_with_purchase", "sessions_excluded_empty_prefix", "sessions_scorable",
            "time_span_utc", "event_mix", "seconds", "events_per_second", "quarantine"}
    assert keys <= set(summary), keys - set(summary)
    assert summary["format"] == "canonical"
    assert summary["rows_read"] == summary["events"] == 4
    assert summary["users"] == 2 and summary["sessions"] == 2
    assert summary["sessions_with_purchase"] == 1
    assert summary["event_mix"] == {"view": 2, "cart": 1, "fav": 0, "purchase": 1}
    assert summary["bad_rows"] == {"total": 0, "by_reason": {}}
    assert summary["quarantine"] is None


def test_inspect_json_with_quarantine(tmp_path):
    path = tmp_path / "log.csv"
    path.write_bytes(GOOD + b"u3,abc,view,i3,c3,2.0\nx,y\n")
    q = tmp_path / "bad.jsonl"
    result = invoke("data", "inspect", path, "--json", "--quarantine", q)
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    summary = json.loads(result.stdout)
    assert summary["bad_rows"] == {"total": 2, "by_reason": {"bad_timestamp": 1, "wrong_field_count": 1}}
    assert summary["rows_read"] == summary["events"] + 2
    assert summary["quarantine"] == str(q)
    rows = [json.loads(x) for x in q.read_text().splitlines()]
    assert [(r["line"], r["reason"]) for r in rows] == [(6, "bad_timestamp"), (7, "wrong_field_count")]


@pytest.mark.slow
def test_convert_json_overwrite(tmp_path, tiny_run):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    result = invoke("convert", run, "--precision", "float32", "--json", "--overwrite")
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    lines = [x for x in result.stdout.splitlines() if x.strip()]
    assert len(lines) == 1
    report = json.loads(lines[0])
    assert list(report) == ["artifacts"]
    [artifact] = report["artifacts"]
    assert {"precision", "path", "size_bytes", "status", "reason"} <= set(artifact)
    assert artifact["precision"] == "float32"
    assert artifact["status"] == "ok" and artifact["reason"] is None
    assert artifact["path"] == str(run / "model-float32.tflite")
    assert artifact["size_bytes"] == (run / "model-float32.tflite").stat().st_size > 0


@pytest.mark.slow
def test_convert_existing_artifact_without_overwrite(tmp_path, tiny_run):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before = (run / "model-float32.tflite").read_bytes()
    result = invoke("convert", run, "--precision", "float32", "--json")
    assert result.exit_code == 1
    [artifact] = json.loads(result.stdout)["artifacts"]
    assert artifact["status"] == "failed" and "--overwrite" in artifact["reason"]
    assert (run / "model-float32.tflite").read_bytes() == before


# =========================================================================== tables that drive help

def test_data_formats_lists_the_format_table():
    from trainer.formats import CUSTOM_FORMAT, PRESETS

    result = runner.invoke(app, ["data", "formats"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, (result.stdout, result.stderr)
    text = ANSI.sub("", result.stdout)
    for preset in PRESETS.values():
        line = next((x for x in text.splitlines() if x.split()[:1] == [preset.name]), None)
        assert line is not None and preset.description in line, (preset.name, text)
    assert CUSTOM_FORMAT in text and "--map" in text


@pytest.mark.parametrize("command", ["score", "evaluate", "compare", "data inspect", "train",
                                     "export-spec"])
def test_log_options_help_names_every_format_and_backend(command):
    from edge_runtime.backends import BACKENDS
    from trainer.formats import FORMAT_NAMES

    result = runner.invoke(app, [*command.split(), "--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0
    text = ANSI.sub("", result.stdout)
    for name in FORMAT_NAMES:
        assert name in text, name
    if command in ("score", "evaluate", "compare"):
        for name in BACKENDS:
            assert name in text, name


def test_convert_help_describes_every_precision():
    from converters.precisions import GRAPHS, PRECISIONS

    result = runner.invoke(app, ["convert", "--help"], env={"COLUMNS": "400"})
    text = " ".join(ANSI.sub("", result.stdout).split())
    for p in PRECISIONS.values():
        assert f"{p.name}: {p.description}" in text, p.name
    for graph in GRAPHS:
        assert graph in text, graph


def test_verbose_is_a_global_option(good_csv):
    result = invoke("--verbose", "data", "inspect", good_csv, "--json")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert json.loads(result.stdout)["events"] == 4


def test_gap_minutes_must_be_positive(good_csv):
    assert_user_error(invoke("data", "inspect", good_csv, "--gap-minutes", "0"), "--gap-minutes", "0")


# =========================================================================== scores to a stream

def test_write_scores_streams_jsonl_and_csv(good_csv):
    """write_scores writes to any text stream; a session with a purchase first has empty cells."""
    import io

    import numpy as np

    from trainer.logsource import EventLogSource
    from trainer.scoring import ScoredLog, scores_format, write_scores
    from trainer.sessions import sessionize

    log = EventLogSource(good_csv).read()
    sessions = sessionize(log, 30.0)
    index = np.flatnonzero(sessions.scorable)
    scored = ScoredLog(log, sessions, index, np.full(len(index), 0.75))
    jsonl, table = io.StringIO(), io.StringIO()
    assert write_scores(scored, 0.5, jsonl) == len(sessions)
    rows = [json.loads(x) for x in jsonl.getvalue().splitlines()]
    assert [r["probability"] for r in rows if r["events_scored"]] == [0.75] * len(index)
    assert all(r["decision"] == 1 for r in rows if r["events_scored"])
    assert write_scores(scored, 0.5, table, scores_format("x.csv")) == len(sessions)
    lines = table.getvalue().split("\n")
    assert lines[0] == "session,events_scored,probability,decision" and lines[-1] == ""
    assert len(lines) == len(sessions) + 2


@pytest.mark.slow
def test_score_to_stdout_is_the_jsonl_file(tmp_path, tiny_artifact, synthetic_log):
    to_stdout = invoke("score", "--model", tiny_artifact, "--data", synthetic_log)
    assert to_stdout.exit_code == 0, (to_stdout.stdout, to_stdout.stderr)
    out = tmp_path / "scores.jsonl"
    to_file = invoke("score", "--model", tiny_artifact, "--data", synthetic_log, "--out", out)
    assert to_file.exit_code == 0, (to_file.stdout, to_file.stderr)
    assert to_stdout.stdout == out.read_text()
    assert to_file.stdout == ""
