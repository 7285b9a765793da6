"""`ubp-edge export-spec`: the spec and golden vectors a native client implements against.

Two promises, each tested the way the issue asks. golden.jsonl holds what the runtime
computes: every number is read back through edge_runtime (encode_session, score_encoded,
the calibration, a live session) and must agree to 1e-6; nothing is recomputed here.
spec.json alone is enough to rebuild the features: a child process that imports only json
and numpy evaluates the spec's formulas with its constants and must find golden.jsonl's
features (and, for a spec of every feature, the encoder's) to 1e-6.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from converters.export_spec import (
    CONTEXT_MEANINGS,
    FEATURE_FORMULAS,
    GOLDEN_FILE,
    QUANTISATION,
    SPEC_FILE,
    calibration_contract,
    export_spec,
    feature_contract,
    mixed_lengths,
)
from edge_runtime.calibration import PlattCalibration
from edge_runtime.events import EVENT_CODE, EVENT_TYPES, MAX_TS, MIN_TS
from edge_runtime.features import (
    CONTEXT_FIELDS,
    FEATURE_LAYOUT,
    MAX_REMEMBERED_IDS,
    FeatureEncoder,
    FeatureSpec,
    id_digests,
)
from edge_runtime.scorer import Scorer
from edge_runtime.target_stats import TargetTable
from edge_runtime.whole_graph import TensorPort, chunk_plan
from ubp_edge.cli import app

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-6
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

# A native encoder written from spec.json alone: json and numpy, nothing of ubp-edge. It
# evaluates each feature's and each state variable's expression with the spec's vocabulary
# (numpy for the functions), normalises with the spec's mean and scale, and prints how far
# it lands from golden.jsonl's features, session by session.
NATIVE_ENCODER = r"""
import hashlib, json, sys
import numpy as np

spec = json.load(open(sys.argv[1]))
tables = spec.get("target_tables", {})


def lookup(field, id):  # target_tables.lookup, in words there, with hashlib here
    table = tables[field]
    if id is None:
        return table["fallback"]
    digest = hashlib.blake2b(id.encode("utf-8"), digest_size=8).digest()
    keyed = hashlib.blake2b(digest, key=bytes.fromhex(table["key"]), digest_size=table["hash_bytes"])
    return table["entries"].get(str(int.from_bytes(keyed.digest(), "big")), table["fallback"])


def text(id):  # spec["events"]["fields"]["item"], in code
    if isinstance(id, float) and id.is_integer() and abs(id) < 1e15:
        id = int(id)
    return str(id).strip()


vocabulary = {"log1p": np.log1p, "log": np.log, "exp": np.exp, "sin": np.sin, "cos": np.cos,
              "isfinite": np.isfinite, "min": min, "max": max, "len": len, "set": set, "pi": np.pi,
              "lookup": lookup, **spec["constants"]}
no_builtins = {"__builtins__": {}}
mean = np.array([f["mean"] for f in spec["features"]])
scale = np.array([f["scale"] for f in spec["features"]])
diffs = []
for line in open(sys.argv[2]):
    session = json.loads(line)
    context = {name: 0.0 for name in spec["context"]["fields"]}
    context.update(session.get("context") or {})
    state = {k: eval(v["initial"], no_builtins, vocabulary) for k, v in spec["state"].items()}
    rows = []
    for e in session["events"]:
        category = e.get("category")
        if category is not None and not str(category).strip():
            category = None
        here = {**vocabulary, **context, **state, "ts": float(e["ts"]),
                "code": spec["events"]["event_codes"].get(e["event"], e["event"]),
                "item": text(e["item"]), "category": None if category is None else text(category),
                "price": e.get("price")}
        raw = np.array([eval(f["raw"], no_builtins, here) for f in spec["features"]], np.float64)
        rows.append(((raw - mean) / scale).astype(np.float32))
        state = {k: eval(v["update"], no_builtins, here) for k, v in spec["state"].items()}
    diffs.append(float(np.abs(np.array(rows) - np.array(session["features"], np.float32)).max()))
print(json.dumps({"max_abs_diff": diffs, "edge_runtime_loaded": "edge_runtime" in sys.modules,
                  "modules": sorted(m for m in sys.modules if m.split(".")[0] in ("ubp_edge", "trainer"))}))
"""


def native_rebuild(spec_path: Path, golden_path: Path) -> list[float]:
    """Run NATIVE_ENCODER in a child process; the max |difference| of each session's features."""
    done = subprocess.run([sys.executable, "-c", NATIVE_ENCODER, str(spec_path), str(golden_path)],
                          capture_output=True, text=True, timeout=120, cwd="/")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert not report["edge_runtime_loaded"] and not report["modules"], report
    return report["max_abs_diff"]


def check_golden(scorer: Scorer, golden_path: Path) -> list[dict]:
    """Every number of golden.jsonl against the runtime; the records."""
    records = [json.loads(line) for line in golden_path.read_text().splitlines()]
    assert records
    for r in records:
        events, context = r["events"], r.get("context")
        assert r["length"] == len(events) == len(r["features"]) == len(r["trajectory"])
        x = scorer.encode_session(events, context)
        np.testing.assert_allclose(np.array(r["features"], np.float32), x, rtol=0, atol=TOLERANCE)
        raw = scorer.score_encoded([x], calibrated=False)[0]
        assert r["model_output"] == pytest.approx(float(raw), abs=TOLERANCE)
        whole = scorer.score_sessions([events], contexts=[context])[0]
        assert r["probability"] == pytest.approx(float(whole), abs=TOLERANCE)
        live = scorer.start_session(context)
        np.testing.assert_allclose(r["trajectory"], [live.push(e) for e in events], rtol=0, atol=TOLERANCE)
    return records


# =========================================================================== the formulas

def test_every_feature_and_context_field_has_a_formula():
    assert set(FEATURE_FORMULAS) == set(FEATURE_LAYOUT)
    assert all(f.words.strip() and f.raw.strip() for f in FEATURE_FORMULAS.values())
    assert list(CONTEXT_MEANINGS) == list(CONTEXT_FIELDS)


def _edge_case_sessions() -> list[tuple[list[dict], dict | None]]:
    """Sessions that reach every branch of the formulas: no or blank category, no price,
    a negative gap, a gap past max_dt_seconds, numeric ids equal to text ones, midnight on
    the shop's clock, negative context, and more distinct items than a session remembers."""
    t = 1.7e9
    short = [
        {"ts": t, "event": "view", "item": 1, "category": "c1", "price": 12.5},
        {"ts": t + 40, "event": "cart", "item": "1", "category": "  ", "price": None},
        {"ts": t + 30, "event": "fav", "item": "2", "price": 0.0},  # 10 s back in time
        {"ts": t + 30 + 5000, "event": 1, "item": "2", "category": "c1", "price": 3.0},
        {"ts": t + 9000, "event": "purchase", "item": 1.5, "category": "", "price": 7.0},
        {"ts": 1_700_006_400.0 - 5.5 * 3600, "event": "view", "item": "x", "category": "c2"},
    ]
    distinct = MAX_REMEMBERED_IDS + 6
    long = [{"ts": t + i, "event": "view", "item": f"i{i}", "category": f"c{i}"} for i in range(distinct)]
    # Back to an id remembered, then to the first id past the cap and to the last one: a
    # repeat, then two that are not.
    long += [{"ts": t + distinct + k, "event": "cart", "item": f"i{i}", "category": f"c{i}"}
             for k, i in enumerate((3, MAX_REMEMBERED_IDS, distinct - 1), start=1)]
    return [(short, {"prior_sessions": 3, "prior_purchases": -2, "open_cart_items": 1.5}),
            (short[:1], None), (long, {"prior_sessions": 0})]


def test_spec_of_every_feature_rebuilds_the_encoder_in_a_process_without_ubp_edge(tmp_path):
    """Every formula against FeatureEncoder, through the written spec: a missing entry, a
    wrong constant or a wrong branch shows here."""
    rng = np.random.default_rng(3)
    # Target tables that know some of the sessions' ids (every third), not the others.
    tables = tuple(TargetTable.build(field, bytes(range(16)),
                                     id_digests([f"{field[0]}{i}" for i in range(0, 60, 3)]),
                                     rng.integers(2, 50, 20), rng.integers(0, 2, 20), 0.07)
                   for field in ("category", "item"))
    spec = FeatureSpec(FEATURE_LAYOUT, tuple(rng.normal(size=len(FEATURE_LAYOUT))),
                       tuple(rng.uniform(0.3, 2.0, size=len(FEATURE_LAYOUT))),
                       utc_offset_hours=5.5, max_len=20, max_dt_seconds=3600.0, tables=tables)
    encoder = FeatureEncoder.from_spec(spec)
    (tmp_path / "spec.json").write_text(json.dumps(feature_contract(spec)))
    lines = []
    for events, context in _edge_case_sessions():
        state = encoder.start(context)
        x = np.stack([encoder.step(state, e) for e in events])
        lines.append(json.dumps({"events": events, "context": context, "features": x.tolist()}))
    (tmp_path / "golden.jsonl").write_text("\n".join(lines) + "\n")
    diffs = native_rebuild(tmp_path / "spec.json", tmp_path / "golden.jsonl")
    assert len(diffs) == 3 and max(diffs) <= TOLERANCE, diffs


def test_feature_contract_refuses_a_feature_without_a_formula(monkeypatch):
    import converters.export_spec as module

    spec = FeatureSpec(("is_view", "log_price"), (0.0, 0.0), (1.0, 1.0))
    monkeypatch.setattr(module, "FEATURE_FORMULAS",
                        {k: v for k, v in FEATURE_FORMULAS.items() if k != "log_price"})
    with pytest.raises(module.ConfigError, match="log_price"):
        module.feature_contract(spec)


def _evaluate(expression: str, **names):
    vocabulary = {"log": np.log, "exp": np.exp, "min": np.minimum, "max": np.maximum,
                  "round_half_even": np.round}
    return eval(expression, {"__builtins__": {}}, {**vocabulary, **names})


def test_calibration_expression_is_the_runtime_map():
    cal = PlattCalibration(a=1.3, b=-0.2)
    contract = calibration_contract(cal.to_dict())
    assert (contract["a"], contract["b"]) == (1.3, -0.2)
    p = np.array([0.0, 1e-9, 0.01, 0.15, 0.5, 0.93, 1 - 1e-9, 1.0], np.float32)
    ours = _evaluate(contract["expression"], p=p.astype(np.float64), a=contract["a"], b=contract["b"],
                     probability_clip=contract["probability_clip"])
    np.testing.assert_allclose(ours, cal.apply(p), rtol=0, atol=TOLERANCE)
    assert calibration_contract(None) is None


def test_quantisation_expressions_are_the_runtime_ports():
    port = TensorPort({"index": 0, "dtype": np.int8, "quantization": (0.05, -3)})
    x = np.array([-9.0, -0.125, -0.075, 0.0, 0.025, 0.075, 0.1234, 6.5, 20.0], np.float32)
    q = _evaluate(QUANTISATION["to_model"], x=x, scale=np.float32(port.scale), zero_point=port.zero_point)
    np.testing.assert_array_equal(q.astype(np.int8), port.to_model(x))
    back = _evaluate(QUANTISATION["from_model"], q=port.to_model(x).astype(np.float32),
                     scale=np.float32(port.scale), zero_point=np.float32(port.zero_point))
    np.testing.assert_array_equal(back.astype(np.float32), port.from_model(port.to_model(x)))


def test_mixed_lengths_spreads_over_lengths_and_keeps_the_longest():
    lengths = np.array([1] * 60 + [2] * 20 + [3] * 10 + list(range(4, 40)) + [97])
    picked = mixed_lengths(lengths, 10)
    assert len(picked) == len(set(picked.tolist())) == 10
    chosen = lengths[picked]
    assert chosen.min() == 1 and chosen.max() == 97 and list(chosen) == sorted(chosen)
    assert len(set(chosen.tolist())) >= 6
    np.testing.assert_array_equal(mixed_lengths(lengths[:5], 9), np.arange(5))
    assert len(mixed_lengths(lengths, 1)) == 1


# =========================================================================== the export

@pytest.fixture(scope="module")
def exported(tiny_artifact, tmp_path_factory):
    """The tiny artifact's spec and golden vectors from the embedded synthetic log."""
    from benchmarks.sessions import synthetic_log

    out = tmp_path_factory.mktemp("export")
    result = export_spec(tiny_artifact, out, synthetic_log(), sessions=12,
                         data_label="the embedded synthetic log")
    return result, json.loads((out / SPEC_FILE).read_text())


def test_golden_numbers_are_the_runtimes(exported, tiny_artifact):
    result, spec = exported
    records = check_golden(Scorer.load(tiny_artifact), result.golden_path)
    lengths = [r["length"] for r in records]
    assert len(records) == result.sessions == spec["golden"]["sessions"] == 12
    assert lengths == sorted(lengths) and result.longest == max(lengths)


def test_golden_sessions_are_the_logs_scorable_prefixes(exported):
    """The sessions are cut as benchmarks.sessions.prefix_events cuts them (the same
    sessionizer and prefixes), the longest included."""
    from benchmarks.sessions import synthetic_sessions

    result, _ = exported
    def by_name(events: list[dict]) -> str:  # event codes or names, compared as names
        return json.dumps([{**e, "event": EVENT_TYPES[e["event"]] if isinstance(e["event"], int)
                            else e["event"]} for e in events])

    sessions = synthetic_sessions()
    prefixes = {by_name(s) for s in sessions}
    longest = max(len(s) for s in sessions)
    records = [json.loads(line) for line in result.golden_path.read_text().splitlines()]
    for r in records:
        assert by_name(r["events"]) in prefixes
    assert max(r["length"] for r in records) == longest


def test_spec_alone_rebuilds_the_golden_features(exported):
    result, _ = exported
    diffs = native_rebuild(result.spec_path, result.golden_path)
    assert len(diffs) == result.sessions and max(diffs) <= TOLERANCE, diffs


def test_spec_describes_the_artifact(exported, tiny_artifact):
    import hashlib

    from edge_runtime.artifact import read_artifact
    from edge_runtime.backends import make_interpreter

    _, spec = exported
    model, info = read_artifact(tiny_artifact)
    assert spec["artifact"]["sha256"] == hashlib.sha256(model).hexdigest()
    assert [f["name"] for f in spec["features"]] == list(info.spec.features)
    assert [f["mean"] for f in spec["features"]] == list(info.spec.mean)
    assert [f["scale"] for f in spec["features"]] == list(info.spec.scale)
    assert spec["constants"]["max_dt_seconds"] == info.spec.max_dt_seconds
    assert spec["max_len"]["value"] == info.spec.max_len
    assert spec["decision"]["threshold"] == info.threshold
    assert spec["calibration"] == calibration_contract(info.calibration)
    assert spec["events"]["event_codes"] == EVENT_CODE
    assert f"{MIN_TS:.0f}..{MAX_TS:.0f}" in spec["events"]["fields"]["ts"]
    assert spec["context"]["used"] == info.spec.uses_context
    interpreter, _ = make_interpreter(model)
    described = spec["model"]["models"]["artifact"]
    assert set(described) == set(interpreter.get_signature_list())
    whole = spec["model"]["whole_session"]
    assert whole["kind"] == info.graph == "fused"
    assert list(described[whole["signature"]]["inputs"]) == ["events"]
    assert described[whole["signature"]]["inputs"]["events"]["shape"][-1] == info.spec.n_features
    live = spec["model"]["live"]
    step = spec["model"]["models"][live["model"]][live["signature"]]
    assert sorted(step["inputs"]) == ["c", "event", "h"]
    units = Scorer.load(tiny_artifact).step_model().units
    assert spec["model"]["units"] == step["inputs"]["h"]["shape"][-1] == units
    assert spec["golden"]["synthetic"] is True and "synthetic" in spec["golden"]["source"]


def test_spec_carries_the_artifacts_intent(exported, tiny_artifact):
    """The "intent" block: the empty-session score and the tiers, as the artifact stores
    them (ArtifactInfo), exact after the JSON round trip."""
    from edge_runtime.artifact import read_artifact
    from edge_runtime.tiers import IntentTiers

    _, spec = exported
    _, info = read_artifact(tiny_artifact)
    intent = spec["intent"]
    assert info.empty_session_probability is not None and info.tiers is not None
    assert intent["empty_session_probability"] == info.empty_session_probability
    assert intent["tiers"] == info.tiers
    assert IntentTiers.from_dict(intent["tiers"]) == info.intent_tiers()
    assert intent["rule"] and "hysteresis" in intent["rule"]


def test_spec_of_an_artifact_without_tiers_says_null(tiny_artifact, tmp_path):
    from benchmarks.sessions import synthetic_log
    from converters.metadata_writer import add_metadata, seal
    from edge_runtime.artifact import METADATA_NAME
    from edge_runtime.tflite_reader import read_metadata

    model = tiny_artifact.read_bytes()
    meta = json.loads(read_metadata(model)[METADATA_NAME])
    del meta["tiers"]
    older = tmp_path / "older.tflite"
    older.write_bytes(seal(add_metadata(model, {METADATA_NAME: json.dumps(meta).encode()})))
    result = export_spec(older, tmp_path / "out", synthetic_log(), sessions=2)
    intent = json.loads(result.spec_path.read_text())["intent"]
    assert intent["tiers"] is None
    assert intent["empty_session_probability"] == meta["empty_session_probability"]


def test_calibrated_artifact_golden_probabilities_are_calibrated(tiny_artifact, tmp_path):
    """An artifact with a Platt map (the tiny run's quantised artifacts need none): the
    golden probability is the map of model_output, as the runtime and the spec compute it."""
    from dataclasses import replace

    from benchmarks.sessions import synthetic_log
    from converters.metadata_writer import add_metadata, seal
    from edge_runtime.artifact import METADATA_NAME, read_artifact

    model, info = read_artifact(tiny_artifact)
    cal = PlattCalibration(a=1.4, b=0.3)
    info = replace(info, calibration=cal.to_dict(), threshold=cal.apply_threshold(info.threshold))
    artifact = tmp_path / "calibrated.tflite"
    artifact.write_bytes(seal(add_metadata(model, {METADATA_NAME: info.to_bytes()})))
    result = export_spec(artifact, tmp_path / "out", synthetic_log(), sessions=4)
    records = check_golden(Scorer.load(artifact), result.golden_path)
    contract = json.loads(result.spec_path.read_text())["calibration"]
    assert contract == json.loads(json.dumps(calibration_contract(info.calibration)))
    output = np.array([r["model_output"] for r in records])
    by_spec = _evaluate(contract["expression"], p=output, a=contract["a"], b=contract["b"],
                        probability_clip=contract["probability_clip"])
    np.testing.assert_allclose([r["probability"] for r in records], by_spec, rtol=0, atol=TOLERANCE)
    assert np.abs(output - by_spec).max() > 1e-3  # the map moved them


# =========================================================================== the command

runner = CliRunner()


def _error_line(result) -> str:
    stderr = ANSI.sub("", result.stderr)
    assert result.exit_code == 1, (result.exit_code, result.stdout, stderr, result.exception)
    assert "Traceback" not in stderr + result.stdout
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), stderr
    return lines[0]


def test_command_writes_both_files_and_says_the_sessions_are_synthetic(tiny_artifact, tmp_path):
    out = tmp_path / "native"
    result = runner.invoke(app, ["export-spec", str(tiny_artifact), "--out", str(out), "--sessions", "3"])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    text = " ".join(ANSI.sub("", result.stdout).split())
    assert (out / SPEC_FILE).is_file() and (out / GOLDEN_FILE).is_file()
    assert "synthetic" in text and "--data" in text and "3 (" in text
    assert len((out / GOLDEN_FILE).read_text().splitlines()) == 3
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_command_refuses_a_missing_artifact(tmp_path):
    missing = tmp_path / "none.tflite"
    line = _error_line(runner.invoke(app, ["export-spec", str(missing), "--out", str(tmp_path / "o")]))
    assert str(missing) in line and "no such artifact" in line


def test_command_refuses_an_unreadable_log(tiny_artifact, tmp_path):
    missing = tmp_path / "no-log.csv"
    line = _error_line(runner.invoke(app, ["export-spec", str(tiny_artifact), "--out", str(tmp_path / "o"),
                                           "--data", str(missing)]))
    assert str(missing) in line
    assert not (tmp_path / "o" / SPEC_FILE).exists()


def test_command_refuses_a_log_with_nothing_to_score(tiny_artifact, tmp_path):
    log = tmp_path / "bought.csv"  # every session's first event is its purchase
    log.write_text("user,ts,event,item\nu1,1700000000,purchase,i1\nu2,1700000100,purchase,i2\n")
    line = _error_line(runner.invoke(app, ["export-spec", str(tiny_artifact), "--out", str(tmp_path / "o"),
                                           "--data", str(log)]))
    assert str(log) in line and "no session" in line


@pytest.mark.parametrize("count", ["0", "-2"])
def test_command_refuses_fewer_than_one_session(tiny_artifact, tmp_path, count):
    line = _error_line(runner.invoke(app, ["export-spec", str(tiny_artifact), "--out", str(tmp_path),
                                           "--sessions", count]))
    assert "--sessions" in line and count in line


def test_command_refuses_a_format_without_a_log(tiny_artifact, tmp_path):
    line = _error_line(runner.invoke(app, ["export-spec", str(tiny_artifact), "--out", str(tmp_path),
                                           "--format", "taobao"]))
    assert "--data" in line


# =========================================================================== real data, other graphs

def test_reference_artifact_on_the_taobao_sample(taobao_path, tmp_path):
    """The models/ reference artifact (it reads user-history context) on real sessions."""
    from trainer.logsource import EventLogSource

    artifact = ROOT / "models" / "taobao-lstm128-dynamic.tflite"
    result = export_spec(artifact, tmp_path, EventLogSource(taobao_path, format="taobao"), sessions=6)
    records = check_golden(Scorer.load(artifact), result.golden_path)
    assert not result.synthetic and str(taobao_path) in result.source
    assert all(set(r["context"]) == set(CONTEXT_FIELDS) for r in records)
    assert any(r["context"]["prior_sessions"] > 0 for r in records)
    assert max(native_rebuild(result.spec_path, result.golden_path)) <= TOLERANCE


@pytest.mark.slow
def test_unrolled_and_calibrated_artifacts(quantized_run, tmp_path):
    """The unrolled graph's chunks and an int8-io artifact's quantised ports, and every
    calibration the run's artifacts carry, through export and back."""
    from benchmarks.sessions import synthetic_log
    from edge_runtime.artifact import read_artifact

    run, rows = quantized_run
    log = synthetic_log()
    recalibrated = sorted(Path(r.path) for r in rows.values() if r.status == "ok" and r.recalibrated)
    for path in (run / "model-unrolled-int8-io.tflite", *recalibrated[:1]):
        out = tmp_path / path.stem
        result = export_spec(path, out, log, sessions=5)
        spec = json.loads(result.spec_path.read_text())
        _, info = read_artifact(path)
        check_golden(Scorer.load(path), result.golden_path)
        assert spec["calibration"] == calibration_contract(info.calibration)
        if info.calibration is not None:
            assert spec["calibration"]["a"] == info.calibration["a"]
            assert spec["calibration"]["expression"]
        if info.graph == "unrolled":
            whole = spec["model"]["whole_session"]
            described = spec["model"]["models"]["artifact"]
            assert whole["signatures"][0] == "chunk_1" and all(k in described for k in whole["signatures"])
            steps = [int(k.removeprefix("chunk_")) for k in whole["signatures"]]
            assert whole["chunk_plan_examples"]["23"] == chunk_plan(23, steps)
            events = described["chunk_1"]["inputs"]["events"]
            assert events["dtype"] == "int8" and events["quantization"]["scale"] > 0
            assert math.isfinite(events["quantization"]["zero_point"])
