"""`ubp-edge compare`: every artifact of a run against float32 on the same sessions.

Pins the JSON contract (exact keys), float32 against itself (all deltas zero), a second
artifact (dynamic range, converted here from the tiny run), the budgets' exit codes, the
report files, a corrupt artifact as a failed row, the errors, and that the log is read
and encoded once however many artifacts there are.
"""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from converters.compare import (
    ARTIFACT_KEYS,
    BUCKET_KEYS,
    RESULT_KEYS,
    SPLITS,
    compare_run,
    parse_artifact_name,
)
from trainer.logsource import EventLogSource
from trainer.metrics import PREFIX_BUCKETS, expected_calibration_error
from trainer.rundir import SPLIT_NAMES
from ubp_edge.cli import app

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, ["compare", *[str(a) for a in args]])


def stderr_lines(result) -> list[str]:
    return [line for line in ANSI.sub("", result.stderr).splitlines() if line.strip()]


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def two_artifact_run(tiny_run, tmp_path_factory):
    """A copy of the tiny run with a dynamic-range artifact beside float32 (never mutated)."""
    from converters.tflite import convert_run

    run = tmp_path_factory.mktemp("compare") / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("model-*.tflite"))
    shutil.copy(tiny_run / "model-float32.tflite", run)
    rows = convert_run(run, ["dynamic"])
    assert [r.status for r in rows] == ["ok"], [r.reason for r in rows]
    return run


@pytest.fixture
def run_copy(two_artifact_run, tmp_path):
    """A throwaway copy a test may change."""
    run = tmp_path / "run"
    shutil.copytree(two_artifact_run, run)
    return run


@pytest.fixture(scope="module")
def result(two_artifact_run, synthetic_log):
    return compare_run(two_artifact_run, EventLogSource(synthetic_log))


def by_precision(result: dict) -> dict:
    return {a["precision"]: a for a in result["artifacts"]}


# ----------------------------------------------------------------------------- the JSON contract
@pytest.mark.slow
def test_json_keys_are_exactly_the_documented_ones(result):
    assert tuple(result) == RESULT_KEYS
    assert result["reference"] == "float32"
    for a in result["artifacts"]:
        assert tuple(a) == ARTIFACT_KEYS
        assert list(a["by_prefix_length"]) == [name for name, _, _ in PREFIX_BUCKETS]
        for bucket in a["by_prefix_length"].values():
            assert tuple(bucket) == BUCKET_KEYS
    for key in ("precision", "graph", "path", "status", "reason", "size_bytes", "size_ratio",
                "roc_auc", "delta_roc_auc", "pr_auc", "delta_pr_auc", "log_loss", "delta_log_loss",
                "brier", "delta_brier", "ece", "delta_ece", "accuracy", "delta_accuracy", "f1",
                "delta_f1", "flip_rate", "max_abs_diff", "mean_abs_diff", "spearman", "p50_us",
                "by_prefix_length"):
        assert key in ARTIFACT_KEYS, key


@pytest.mark.slow
def test_float32_against_itself_is_exact(result):
    ref = result["artifacts"][0]
    assert (ref["precision"], ref["graph"], ref["status"]) == ("float32", "fused", "ok")
    assert ref["size_ratio"] == 1.0
    assert ref["flip_rate"] == 0.0 and ref["max_abs_diff"] == 0.0 and ref["mean_abs_diff"] == 0.0
    assert ref["spearman"] == pytest.approx(1.0)
    for key in ARTIFACT_KEYS:
        if key.startswith("delta_") and ref[key.removeprefix("delta_")] is not None:
            assert ref[key] == 0.0, key
    for bucket in ref["by_prefix_length"].values():
        assert bucket["delta_roc_auc"] in (0.0, None)
    assert ref["p50_us"] > 0


@pytest.mark.slow
def test_a_second_artifact_gets_its_own_row(result, tiny_run):
    rows = by_precision(result)
    assert list(rows) == ["float32", "dynamic"]
    dyn = rows["dynamic"]
    assert dyn["status"] == "ok" and dyn["reason"] is None
    # TF quantises only weight tensors of >= 1024 elements: the 8-unit model barely shrinks
    assert dyn["size_ratio"] == pytest.approx(dyn["size_bytes"] / rows["float32"]["size_bytes"])
    assert 0 < dyn["size_ratio"] <= 1.05
    assert 0.0 <= dyn["flip_rate"] <= 1.0
    assert 0.0 <= dyn["max_abs_diff"] < 0.2
    assert dyn["delta_roc_auc"] == pytest.approx(dyn["roc_auc"] - rows["float32"]["roc_auc"])
    assert dyn["p50_us"] > 0
    # the same sessions: the run's test split, because this is the log it was trained on
    split = json.loads((tiny_run / "split.json").read_text())
    assert result["split"] == "test"
    assert result["n_sessions"] == split["test"]["sessions"]
    assert result["n_positive"] == split["test"]["positives"]
    assert sum(b["n_sessions"] for b in dyn["by_prefix_length"].values()) == result["n_sessions"]


@pytest.mark.slow
def test_figures_match_scoring_each_artifact_on_its_own(result, two_artifact_run, synthetic_log):
    """The same numbers as `score_log` + sklearn, artifact by artifact, on the test split."""
    from sklearn.metrics import roc_auc_score

    from edge_runtime.scorer import Scorer
    from trainer.scoring import score_log, split_keys

    keys = split_keys(two_artifact_run / "split.json", "test")
    source = EventLogSource(synthetic_log)
    scored = {name: score_log(Scorer.load(two_artifact_run / f"model-{name}.tflite"), source, only_keys=keys)
              for name in ("float32", "dynamic")}
    ref, dyn = scored["float32"], scored["dynamic"]
    rows = by_precision(result)
    t_ref, t_dyn = rows["float32"]["threshold"], rows["dynamic"]["threshold"]
    assert rows["dynamic"]["max_abs_diff"] == pytest.approx(
        float(np.abs(dyn.probability.astype(float) - ref.probability.astype(float)).max()), abs=1e-9)
    assert rows["dynamic"]["flip_rate"] == pytest.approx(
        float(np.mean((dyn.probability >= t_dyn) != (ref.probability >= t_ref))))
    for name, s in scored.items():
        assert rows[name]["roc_auc"] == pytest.approx(roc_auc_score(s.label, s.probability))
        assert rows[name]["ece"] == pytest.approx(expected_calibration_error(s.label, s.probability))


@pytest.mark.slow
def test_split_all_scores_every_scorable_session(two_artifact_run, synthetic_log, result):
    everything = compare_run(two_artifact_run, EventLogSource(synthetic_log), split="all")
    assert everything["split"] == "all"
    assert everything["n_sessions"] > result["n_sessions"]


@pytest.mark.slow
def test_log_is_read_and_encoded_once_for_all_artifacts(two_artifact_run, synthetic_log, monkeypatch):
    import trainer.dataset
    import trainer.readers

    calls = {"read": 0, "encode": 0}
    read, encode = trainer.readers.read_log, trainer.dataset.encode_sessions

    def counting_read(*a, **k):
        calls["read"] += 1
        return read(*a, **k)

    def counting_encode(*a, **k):
        calls["encode"] += 1
        return encode(*a, **k)

    monkeypatch.setattr(trainer.readers, "read_log", counting_read)
    monkeypatch.setattr(trainer.dataset, "encode_sessions", counting_encode)
    out = compare_run(two_artifact_run, EventLogSource(synthetic_log))
    assert len(out["artifacts"]) == 2
    assert calls == {"read": 1, "encode": 1}


# ----------------------------------------------------------------------------- the command
@pytest.mark.slow
def test_json_output_is_one_object(two_artifact_run, synthetic_log):
    r = invoke(two_artifact_run, "--data", synthetic_log, "--json")
    assert r.exit_code == 0, (r.stdout, r.stderr)
    obj = json.loads(r.stdout)
    assert tuple(obj) == RESULT_KEYS
    assert [a["precision"] for a in obj["artifacts"]] == ["float32", "dynamic"]


@pytest.mark.slow
def test_table_names_every_artifact_and_the_split(two_artifact_run, synthetic_log):
    r = invoke(two_artifact_run, "--data", synthetic_log)
    assert r.exit_code == 0, (r.stdout, r.stderr)
    text = ANSI.sub("", r.stdout)
    for word in ("float32", "dynamic", "ROC-AUC", "flip rate", "p50 µs", "the run's test split"):
        assert word in text, word
    assert "…" not in text  # not squeezed to 80 columns when captured


@pytest.mark.slow
def test_auc_budget_that_must_fail_exits_1_and_names_the_artifact(two_artifact_run, synthetic_log):
    r = invoke(two_artifact_run, "--data", synthetic_log, "--max-auc-drop", -1, "--json")
    assert r.exit_code == 1
    json.loads(r.stdout)  # the result is printed before the verdict
    lines = [line for line in stderr_lines(r) if "over budget" in line]
    assert any("model-dynamic.tflite" in line and "--max-auc-drop -1" in line for line in lines), lines
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_flip_budget_that_must_fail_exits_1(two_artifact_run, synthetic_log):
    r = invoke(two_artifact_run, "--data", synthetic_log, "--max-flip-rate", -1)
    assert r.exit_code == 1
    assert any("model-dynamic.tflite" in line and "flip rate" in line for line in stderr_lines(r))


@pytest.mark.slow
def test_generous_budgets_exit_0(two_artifact_run, synthetic_log):
    r = invoke(two_artifact_run, "--data", synthetic_log, "--max-auc-drop", 0.5, "--max-flip-rate", 0.9)
    assert r.exit_code == 0, (r.stdout, r.stderr)
    assert not [line for line in stderr_lines(r) if "over budget" in line]


@pytest.mark.slow
def test_report_writes_markdown_and_five_pngs(two_artifact_run, synthetic_log, tmp_path):
    out = tmp_path / "report"
    r = invoke(two_artifact_run, "--data", synthetic_log, "--report", out)
    assert r.exit_code == 0, (r.stdout, r.stderr)
    md = (out / "compare.md").read_text()
    for name in ("roc.png", "pr.png", "reliability.png", "auc_by_prefix.png", "scatter.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC), name
        assert len(data) > 5_000, (name, len(data))
        assert f"]({name})" in md, name
    assert "ubp-edge compare" in md and "--split test" in md and str(synthetic_log) in md
    assert "| dynamic | fused | ok |" in md
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporaries


@pytest.mark.slow
def test_report_into_a_file_is_one_error_line(two_artifact_run, synthetic_log, tmp_path):
    target = tmp_path / "a-file"
    target.write_text("x")
    r = invoke(two_artifact_run, "--data", synthetic_log, "--report", target)
    assert r.exit_code == 1
    errors = [line for line in stderr_lines(r) if line.startswith("error:")]
    assert len(errors) == 1 and str(target) in errors[0] and "not a directory" in errors[0]


@pytest.mark.slow
def test_corrupt_artifact_is_a_failed_row_and_the_others_compare(run_copy, synthetic_log):
    (run_copy / "model-int8.tflite").write_bytes(np.random.default_rng(0).bytes(4096))
    r = invoke(run_copy, "--data", synthetic_log, "--json")
    assert r.exit_code == 0, (r.stdout, r.stderr)
    rows = by_precision(json.loads(r.stdout))
    assert list(rows) == ["float32", "dynamic", "int8"]  # the precision table's order
    bad = rows["int8"]
    assert bad["status"] == "failed" and "model-int8.tflite" in bad["reason"]
    assert bad["roc_auc"] is None and bad["flip_rate"] is None and bad["by_prefix_length"] is None
    assert bad["size_bytes"] == 4096
    assert rows["float32"]["status"] == rows["dynamic"]["status"] == "ok"
    # a budget cannot be met by an artifact that did not score
    gated = invoke(run_copy, "--data", synthetic_log, "--max-auc-drop", 0.5)
    assert gated.exit_code == 1
    assert any("model-int8.tflite" in line for line in stderr_lines(gated) if "over budget" in line)


@pytest.mark.slow
def test_renamed_copy_is_refused_by_its_metadata(run_copy, synthetic_log):
    shutil.copy(run_copy / "model-float32.tflite", run_copy / "model-float16.tflite")
    result = compare_run(run_copy, EventLogSource(synthetic_log))
    rows = {a["path"].rsplit("/", 1)[-1]: a for a in result["artifacts"]}
    bad = rows["model-float16.tflite"]
    assert bad["status"] == "failed" and "does not match its metadata" in bad["reason"]
    assert "expected model-float32.tflite" in bad["reason"]
    assert rows["model-float32.tflite"]["status"] == "ok"


@pytest.mark.slow
def test_missing_float32_is_one_error_line(run_copy, synthetic_log):
    (run_copy / "model-float32.tflite").unlink()
    r = invoke(run_copy, "--data", synthetic_log)
    assert r.exit_code == 1
    assert isinstance(r.exception, SystemExit)
    lines = stderr_lines(r)
    assert len(lines) == 1 and lines[0].startswith("error:"), lines
    assert str(run_copy) in lines[0] and "ubp-edge convert" in lines[0]


@pytest.mark.slow
def test_corrupt_float32_is_one_error_line(run_copy, synthetic_log):
    (run_copy / "model-float32.tflite").write_bytes(b"not a model")
    r = invoke(run_copy, "--data", synthetic_log)
    assert r.exit_code == 1
    lines = stderr_lines(r)
    assert len(lines) == 1 and lines[0].startswith("error:") and "model-float32.tflite" in lines[0]


def test_missing_run_dir_is_one_error_line(tmp_path, synthetic_log):
    r = invoke(tmp_path / "nowhere", "--data", synthetic_log)
    assert r.exit_code == 1
    lines = stderr_lines(r)
    assert len(lines) == 1 and "no such run directory" in lines[0]


@pytest.mark.slow
def test_unknown_split_is_one_error_line(two_artifact_run, synthetic_log):
    r = invoke(two_artifact_run, "--data", synthetic_log, "--split", "holdout")
    assert r.exit_code == 1
    lines = stderr_lines(r)
    assert len(lines) == 1 and "--split 'holdout'" in lines[0] and "validation" in lines[0]


@pytest.mark.slow
def test_auto_split_on_another_log_uses_every_session(two_artifact_run, tmp_path):
    from trainer.synthetic import generate_events, write_canonical_csv

    other = tmp_path / "other.csv"
    write_canonical_csv(generate_events(n_users=40, days=3, seed=99), other)
    out = compare_run(two_artifact_run, EventLogSource(other))
    assert out["split"] == "all" and "does not hold the run's test split" in out["split_reason"]


# ----------------------------------------------------------------------------- pieces
@pytest.mark.parametrize("name, expected", [
    ("model-float32.tflite", ("float32", "fused")),
    ("model-int8-io.tflite", ("int8-io", "fused")),
    ("model-unrolled-int8.tflite", ("int8", "unrolled")),
    ("model-unrolled-int8-io.tflite", ("int8-io", "unrolled")),
    ("model-mystery.tflite", ("mystery", "fused")),
])
def test_artifact_names_parse_with_hyphenated_precisions(name, expected, tmp_path):
    assert parse_artifact_name(tmp_path / name) == expected


def test_split_choices_are_auto_all_and_the_run_directory_splits():
    assert list(SPLITS)[:2] == ["auto", "all"] and tuple(SPLITS)[2:] == SPLIT_NAMES


@pytest.mark.slow
def test_report_reproduces_the_log_options(two_artifact_run, synthetic_log, tmp_path):
    """The command in compare.md rebuilds the same source: --format csv with its mapping."""
    out = tmp_path / "report"
    r = invoke(two_artifact_run, "--data", synthetic_log, "--format", "csv", "--map",
               "user=user,time=ts,event=event,item=item,category=category,price=price",
               "--time-unit", "s", "--split", "all", "--report", out)
    assert r.exit_code == 0, (r.stdout, r.stderr)
    md = (out / "compare.md").read_text()
    assert (f"--data {synthetic_log} --format csv --map user=user,time=ts,event=event,item=item,"
            f"category=category,price=price --time-unit s --delimiter , --split all") in md


def test_ece_of_perfect_and_constant_predictions():
    assert expected_calibration_error([0, 1], [0.0, 1.0]) == 0.0
    assert expected_calibration_error([1, 1, 0, 0], [0.5] * 4) == 0.0
    # one bin: mean label 0.5, mean p 0.95
    assert expected_calibration_error([1, 0], [0.95, 0.95]) == pytest.approx(0.45)


def test_ece_weights_bins_by_their_share_of_sessions():
    y = [0, 0, 0, 1]
    p = [0.05, 0.05, 0.05, 0.55]  # bin 0: |0 - 0.05| over 3 sessions; bin 5: |1 - 0.55| over 1
    assert expected_calibration_error(y, p) == pytest.approx(0.75 * 0.05 + 0.25 * 0.45)
    assert expected_calibration_error([1], [1.0]) == 0.0  # p = 1 falls in the last bin
    assert np.isnan(expected_calibration_error([], []))
    with pytest.raises(ValueError):
        expected_calibration_error([1], [0.5], bins=0)


@pytest.mark.slow
@pytest.mark.parametrize("damage", [b"{\"test\": ", b"[1, 2]", b"{\"test\": {\"session_digests\": 7}}"])
def test_a_damaged_split_json_is_one_error_line_naming_it(run_copy, synthetic_log, damage):
    """Issue 10: split.json damaged is a RunDirError naming the file, for --split auto (the
    default) and a named split alike, never a traceback."""
    (run_copy / "split.json").write_bytes(damage)
    for split in ("auto", "test"):
        r = invoke(run_copy, "--data", synthetic_log, "--split", split)
        assert r.exit_code == 1, (r.stdout, r.stderr)
        errors = [line for line in stderr_lines(r) if line.startswith("error:")]
        assert len(errors) == 1 and str(run_copy / "split.json") in errors[0], stderr_lines(r)
        assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_a_report_over_the_log_is_refused_before_scoring(run_copy, synthetic_log, tmp_path):
    """Issue 10: --report DIR whose compare.md is the log (a hard link here) would replace it."""
    import os

    log = tmp_path / "log.csv"
    shutil.copy(synthetic_log, log)
    report = tmp_path / "report"
    report.mkdir()
    os.link(log, report / "compare.md")
    before = log.read_bytes()
    r = invoke(run_copy, "--data", log, "--report", report)
    assert r.exit_code == 1
    errors = [line for line in stderr_lines(r) if line.startswith("error:")]
    assert len(errors) == 1 and "--report" in errors[0] and "--data" in errors[0]
    assert log.read_bytes() == before


# ----------------------------------------------------------------------------- issue 14: marketing figures
MARKETING = ("n_sessions_at", "lift_at", "capture_at", "gains", "calibration_bins")
SLICES = ["1%", "5%", "10%", "20%"]


def check_marketing_keys(obj: dict) -> None:
    """The marketing keys of an `evaluate --json` report or a `compare --json` row."""
    for key in MARKETING:
        assert key in obj, key
    for key in ("n_sessions_at", "lift_at", "capture_at"):
        assert list(obj[key]) == SLICES, key
    n = obj.get("n_sessions") or sum(b["n_sessions"] for b in obj["by_prefix_length"].values())
    assert obj["n_sessions_at"] == {k: -(-int(k[:-1]) * n // 100) for k in SLICES}
    assert len(obj["gains"]) == 101 and obj["gains"][0] == 0.0 and obj["gains"][-1] == 1.0
    assert [obj["gains"][int(k[:-1])] for k in SLICES] == list(obj["capture_at"].values())
    bins = obj["calibration_bins"]
    assert [(b["lo"], b["hi"]) for b in bins] == [(i / 10, (i + 1) / 10) for i in range(10)]
    assert sum(b["n_sessions"] for b in bins) == n
    assert sum(b["n_sessions"] / n * abs(b["gap"]) for b in bins if b["n_sessions"]) == \
        pytest.approx(obj["ece"], abs=1e-9)


@pytest.mark.slow
def test_compare_json_carries_lift_capture_gains_and_calibration_bins(result):
    ref, dynamic = result["artifacts"]
    for a in (ref, dynamic):
        check_marketing_keys(a)
    assert ref["n_sessions_at"] == dynamic["n_sessions_at"]
    assert ref["n_sessions_at"]["1%"] == -(-result["n_sessions"] // 100)


@pytest.mark.slow
def test_a_failed_row_has_no_marketing_figures(run_copy, synthetic_log):
    (run_copy / "model-dynamic.tflite").write_bytes(b"not a model")
    rows = by_precision(compare_run(run_copy, EventLogSource(synthetic_log)))
    assert rows["dynamic"]["status"] == "failed"
    assert all(rows["dynamic"][k] is None for k in MARKETING)


@pytest.mark.slow
def test_evaluate_json_agrees_with_compare_on_the_same_split(two_artifact_run, synthetic_log, result):
    r = runner.invoke(app, ["evaluate", str(two_artifact_run / "model-float32.tflite"), "--data",
                            str(synthetic_log), "--split", "test", "--run-dir", str(two_artifact_run),
                            "--json"])
    assert r.exit_code == 0, (r.stdout, r.stderr)
    report = json.loads(r.stdout)
    check_marketing_keys(report)
    ref = result["artifacts"][0]
    assert report["n_sessions"] == result["n_sessions"]
    for key in MARKETING:
        assert report[key] == ref[key], key
    assert report["ece"] == pytest.approx(ref["ece"], abs=1e-12)


@pytest.mark.slow
def test_evaluate_and_compare_tables_show_lift_and_capture(two_artifact_run, synthetic_log):
    r = runner.invoke(app, ["evaluate", str(two_artifact_run / "model-float32.tflite"), "--data",
                            str(synthetic_log)])
    assert r.exit_code == 0, (r.stdout, r.stderr)
    text = ANSI.sub("", r.stdout)
    for word in ("lift", "capture", "ECE", "1%", "20%"):
        assert word in text, word
    r = invoke(two_artifact_run, "--data", synthetic_log)
    text = ANSI.sub("", r.stdout)
    assert "lift and capture" in text and "top 20% (n=" in text


@pytest.mark.slow
def test_report_draws_the_gains_png_and_the_marketing_tables(two_artifact_run, synthetic_log, tmp_path):
    from PIL import Image

    out = tmp_path / "report"
    r = invoke(two_artifact_run, "--data", synthetic_log, "--report", out)
    assert r.exit_code == 0, (r.stdout, r.stderr)
    with Image.open(out / "gains.png") as image:
        image.verify()  # a whole, valid PNG
    with Image.open(out / "gains.png") as image:
        assert image.format == "PNG"
        # two panels of the report's plots side by side at 110 dpi: (6.4 + 4.6) x 5.6 inches
        assert image.size == (1210, 616), image.size
    md = (out / "compare.md").read_text()
    assert "](gains.png)" in md
    assert "## Lift and capture of the top sessions" in md and "| top 1% (n=" in md
    assert "## Calibration by bin" in md
    assert "| bin | float32 | dynamic |" in md
