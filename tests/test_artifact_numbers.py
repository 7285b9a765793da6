"""Every number of an artifact's metadata is finite and in its range, or the artifact is refused.

Re-sealed artifacts (their digest recomputed, as a tool or a person editing the metadata
would) whose metadata holds NaN, an infinity or a number out of its meaning: each is one
ArtifactError naming the key path and the value, through the library and through `serve`
(which used to load such a file and write ``"probability": NaN``, which is not JSON). The
shipped dynamic-range artifact is the base: no training needed.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from converters.metadata_writer import add_metadata, seal
from edge_runtime import ArtifactError, ArtifactInfo, Scorer
from edge_runtime.artifact import METADATA_NAME, NUMBER_RULES, check_numbers
from edge_runtime.tflite_reader import read_metadata

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "taobao-lstm128-dynamic.tflite"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
PLATT = '"calibration": {"method": "platt", "a": 1.0, "b": 0.0}'

# name -> (how the metadata JSON text changes: (old, new), phrase the message must hold)
FAULTS = {
    "utc-nan-token": (('"utc_offset_hours": 8.0', '"utc_offset_hours": NaN'),
                      "feature_spec.utc_offset_hours is the token NaN, which JSON does not allow"),
    "utc-infinity-token": (('"utc_offset_hours": 8.0', '"utc_offset_hours": -Infinity'),
                           "feature_spec.utc_offset_hours is the token -Infinity"),
    "utc-overflow": (('"utc_offset_hours": 8.0', '"utc_offset_hours": 1e999'),
                     "feature_spec.utc_offset_hours is inf; every number must be finite"),
    "utc-out-of-range": (('"utc_offset_hours": 8.0', '"utc_offset_hours": 15'),
                         "feature_spec.utc_offset_hours is 15, expected a number in [-14, 14]"),
    "utc-string-nan": (('"utc_offset_hours": 8.0', '"utc_offset_hours": "nan"'),
                       "feature_spec.utc_offset_hours is 'nan', expected a number in [-14, 14]"),
    "utc-boolean": (('"utc_offset_hours": 8.0', '"utc_offset_hours": true'),
                    "feature_spec.utc_offset_hours is True, expected a number"),
    "platt-a-nan": (('"calibration": null', PLATT.replace('"a": 1.0', '"a": NaN')),
                    "calibration.a is the token NaN, which JSON does not allow"),
    "platt-b-infinity": (('"calibration": null', PLATT.replace('"b": 0.0', '"b": Infinity')),
                         "calibration.b is the token Infinity"),
    "platt-a-negative": (('"calibration": null', PLATT.replace('"a": 1.0', '"a": -2.0')),
                         "calibration.a is -2.0, expected a number in (0, inf)"),
    "threshold-nan": (('"threshold": 0.', '"threshold": NaN, "x": 0.'),
                      "threshold is the token NaN"),
    "threshold-above-one": (('"threshold": 0.', '"threshold": 1.5, "x": 0.'),
                            "threshold is 1.5, expected a number in [0, 1]"),
    "mean-nan": (('"mean": [', '"mean": [NaN, '), "feature_spec.mean[0] is the token NaN"),
    "scale-zero": (('"scale": [', '"scale": [0.0, '),
                   "feature_spec.scale[0] is 0.0, expected a number in (0, inf)"),
    "scale-negative": (('"scale": [', '"scale": [-1, '),
                       "feature_spec.scale[0] is -1, expected a number in (0, inf)"),
    "max-len-zero": (('"max_len": 50', '"max_len": 0'),
                     "feature_spec.max_len is 0, expected a whole number in [1, 2147483647]"),
    "max-len-fraction": (('"max_len": 50', '"max_len": 50.5'),
                         "feature_spec.max_len is 50.5, expected a whole number"),
    "max-dt-zero": (('"max_dt_seconds": 86400.0', '"max_dt_seconds": 0'),
                    "feature_spec.max_dt_seconds is 0, expected a number in (0, inf)"),
    "provenance-nan": (('"provenance": {', '"provenance": {"note": NaN, '),
                       "provenance.note is the token NaN"),
    "provenance-huge-int": (('"provenance": {', '"provenance": {"note": ' + "9" * 400 + ", "),
                            "provenance.note is an integer beyond a float's range"),
    "provenance-5000-digits": (('"provenance": {', '"provenance": {"note": ' + "9" * 5000 + ", "),
                               "ubp-edge metadata is not valid JSON (ValueError: Exceeds the limit"),
    "provenance-nested-100000": (('"provenance": {', '"provenance": {"note": ' + "[" * 100_000
                                  + "]" * 100_000 + ", "),
                                 "ubp-edge metadata is not valid JSON (RecursionError"),
}


@pytest.fixture(scope="module")
def model() -> bytes:
    return MODEL.read_bytes()


def _with_text(model: bytes, old: str, new: str) -> bytes:
    text = read_metadata(model)[METADATA_NAME].decode("utf-8")
    assert text.count(old) == 1, old
    return seal(add_metadata(model, {METADATA_NAME: text.replace(old, new).encode("utf-8")}))


@pytest.fixture
def write(tmp_path, model):
    def write(name: str) -> Path:
        (old, new), _ = FAULTS[name]
        path = tmp_path / f"{name}.tflite"
        path.write_bytes(_with_text(model, old, new))
        return path
    return write


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_number_out_of_its_meaning_is_one_artifact_error_naming_it(fault, write):
    path = write(fault)
    with pytest.raises(ArtifactError) as caught:
        Scorer.load(path, verify=False)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and FAULTS[fault][1] in message, message
    assert "\n" not in message and len(message) < 400, message


@pytest.mark.parametrize("fault", ["utc-nan-token", "platt-a-nan", "scale-zero"])
def test_serve_refuses_the_artifact_before_reading_a_line(fault, write):
    path = write(fault)
    line = json.dumps({"session": "s", "ts": 1.5e9, "event": "view", "item": "1"}) + "\n"
    done = subprocess.run([sys.executable, "-m", "ubp_edge.cli", "serve", "--model", str(path)],
                          input=line, capture_output=True, text=True, timeout=120, cwd=ROOT)
    stderr = ANSI.sub("", done.stderr)
    assert done.returncode == 1, (done.returncode, stderr[-2000:])
    assert done.stdout == "" and "Traceback" not in stderr and "NaN" not in done.stdout
    lines = [x for x in stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), stderr
    assert str(path) in lines[0] and FAULTS[fault][1] in lines[0], lines[0]


def test_the_shipped_artifacts_pass(model):
    for path in sorted((ROOT / "models").glob("*.tflite")):
        check_numbers(json.loads(read_metadata(path.read_bytes())[METADATA_NAME]), str(path))


def test_check_numbers_names_the_path_of_numbers_built_in_python():
    meta = json.loads(read_metadata(MODEL.read_bytes())[METADATA_NAME])
    check_numbers(meta)
    meta["feature_spec"]["mean"] = [np.float32(0.5), np.float64("nan")]
    with pytest.raises(ArtifactError, match=r"^m: artifact metadata feature_spec\.mean\[1\] is nan;"):
        check_numbers(meta, "m")
    meta["feature_spec"]["mean"] = [0.0]
    meta["provenance"] = {"deep": [[[{"x": float("inf")}]]]}
    with pytest.raises(ArtifactError, match=r"provenance\.deep\[0\]\[0\]\[0\]\.x is inf"):
        check_numbers(meta, "m")
    meta["provenance"] = {"deep": "x" * 10_000}
    meta["threshold"] = "x" * 10_000  # shown cut short: a message stays one short line
    with pytest.raises(ArtifactError) as caught:
        check_numbers(meta, "m")
    assert len(str(caught.value)) < 200


def test_from_dict_checks_numbers_too():
    meta = json.loads(read_metadata(MODEL.read_bytes())[METADATA_NAME])
    meta["feature_spec"]["utc_offset_hours"] = float("nan")
    with pytest.raises(ArtifactError, match="feature_spec.utc_offset_hours is nan"):
        ArtifactInfo.from_dict(meta, "m")


def test_every_rule_names_its_meaning():
    for keys, rule in NUMBER_RULES.items():
        assert rule.meaning and rule.text().startswith(("a number in", "a whole number in")), keys
