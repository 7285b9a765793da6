"""Every precision on every backend (issue 13): the README's backend table, cell by cell.

Each artifact of `quantized_run` (every precision and graph the converter writes) is loaded
and scored, whole sessions and live sessions, on ai-edge-litert (the reference), on
tflite-runtime 2.14.0 in its own virtual environment (numpy < 2, Python <= 3.11), and on
TensorFlow's tf.lite; each cell must match ai-edge-litert within the precision's parity
tolerances (converters.precisions.PRECISIONS: ``max_abs_diff`` whole, ``step_max_abs_diff``
live). Then the other side of it: a model that needs a newer runtime than the backend's
(its ``min_runtime_version``) is refused by name before any interpreter sees it, and
`doctor` reports each backend's runtime, whether it meets the artifact's, and the
signatures it lists.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from converters.precisions import GRAPHS, PRECISIONS
from converters.tflite import artifact_path
from edge_runtime.tflite_reader import min_runtime_version, version_tuple

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
LEGACY = ROOT / ".venv-tflite-runtime"
LEGACY_RUNTIME = "2.14.0"
REFERENCE = "ai-edge-litert"
OTHERS = ("tflite-runtime", "tensorflow")
# Every precision and graph the converter writes (16x8 writes none: min_runtime None).
CELLS = [(p, g) for p in PRECISIONS for g in GRAPHS
         if PRECISIONS[p].min_runtime and not PRECISIONS[p].refusal(g)]
# A min_runtime_version between tflite-runtime 2.14 and ai-edge-litert 2.3.0's runtime (2.22),
# and one beyond every runtime here.
BETWEEN, BEYOND = "2.17.0", "99.0"


def legacy_python() -> Path:
    """A virtual environment with tflite-runtime 2.14.0 (numpy < 2, Python <= 3.11), made once."""
    python = LEGACY / "bin" / "python"
    if python.exists():
        return python
    if sys.version_info[:2] > (3, 11):
        pytest.skip("tflite-runtime 2.14.0 has no wheel for Python > 3.11")
    made = subprocess.run([sys.executable, "-m", "venv", str(LEGACY)], capture_output=True, text=True)
    if made.returncode == 0:
        made = subprocess.run([str(python), "-m", "pip", "install", "-q", f"tflite-runtime=={LEGACY_RUNTIME}",
                               "numpy<2"], capture_output=True, text=True, timeout=600)
    if made.returncode != 0:
        pytest.skip(f"tflite-runtime cannot be installed here: {made.stderr.strip()[-300:]}")
    return python


# Run by each backend's Python: every artifact of the job loaded (verified in a child process
# unless the job says not to) and scored whole one session at a time, whole as one batch of
# mixed lengths, and live event by event; then `doctor` on the job's artifacts. One JSON
# object on stdout. Imports edge_runtime only, as a device would.
PROBE = r"""
import json, sys
from edge_runtime import Scorer
from edge_runtime.errors import UbpEdgeError

def measure(path, backend, sessions, verify):
    try:
        s = Scorer.load(path, backend=backend, verify=verify)
        out = {"backend": s.backend,
               "whole": [float(s.score_sessions([ev])[0]) for ev in sessions],
               "batch": [float(p) for p in s.score_sessions(sessions)]}
    except UbpEdgeError as e:
        return {"error": f"{type(e).__name__}: {e}"}
    try:
        live = []
        for ev in sessions:
            session = s.start_session()
            live.append([float(session.push(e)) for e in ev])
        out["live"] = live
    except UbpEdgeError as e:
        out["live_error"] = f"{type(e).__name__}: {e}"
    return out

job = json.load(sys.stdin)
result = {b: {p: measure(p, b, job["sessions"], b not in job["unverified"]) for p in job["paths"]}
          for b in job["backends"]}
if job["doctor"]:
    from edge_runtime.doctor import doctor
    result["doctor"] = {p: doctor(p, backends=tuple(job["backends"])) for p in job["doctor"]}
result["tensorflow imported"] = "tensorflow" in sys.modules
print(json.dumps(result))
"""


def run_probe(python: Path | str, backends: list[str], paths: list[Path], sessions: list, *,
              doctor: list[Path] = (), unverified: tuple[str, ...] = ()) -> dict:
    job = {"backends": backends, "paths": [str(p) for p in paths], "sessions": sessions,
           "doctor": [str(p) for p in doctor], "unverified": list(unverified)}
    done = subprocess.run([str(python), "-c", PROBE], input=json.dumps(job), capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def sessions(synthetic_log) -> list[list[dict]]:
    """14 synthetic sessions of 1 to 20 events (the tiny model's max_len): every chunk of the
    unrolled graph, alone and chained, as canonical event dicts."""
    from trainer.readers import read_log
    from trainer.sessions import sessionize

    log = read_log(synthetic_log)
    found = sessionize(log)
    lengths = np.diff(found.offsets)
    chosen: list[list[dict]] = []
    for want in (1, 2, 3, 4, 5, 7, 8, 9, 12, 15, 16, 17, 19, 20):
        s = int(np.argmax(lengths >= want))
        ev = found.order[found.offsets[s]:found.offsets[s + 1]][:want]
        chosen.append([{"ts": float(log.ts[e]), "event": int(log.event[e]), "item": str(log.item.values()[e]),
                        "category": None if log.category is None else str(log.category.values()[e]),
                        "price": None if log.price is None else float(log.price[e])} for e in ev])
    assert [len(s) for s in chosen] == [1, 2, 3, 4, 5, 7, 8, 9, 12, 15, 16, 17, 19, 20]
    return chosen


def _with_min_runtime(model: bytes, version: str) -> bytes:
    from converters.metadata_writer import add_metadata

    return add_metadata(model, {"min_runtime_version": version.encode().ljust(16, b"\0")})


@pytest.fixture(scope="module")
def needing(tmp_path_factory, tiny_artifact) -> dict[str, Path]:
    """The tiny float32 artifact re-sealed with min_runtime_version BETWEEN and BEYOND; and,
    in the layout of version 1 (the step graph a model of its own in a metadata entry), one
    whose step graph alone says BETWEEN."""
    from artifact_layouts import split_step, version_1

    from converters.metadata_writer import seal

    folder = tmp_path_factory.mktemp("needing")
    model = tiny_artifact.read_bytes()
    paths = {}
    for version in (BETWEEN, BEYOND):
        paths[version] = folder / f"needs-{version}.tflite"
        paths[version].write_bytes(seal(_with_min_runtime(model, version)))
    _, step = split_step(model)
    paths["v1 step"] = folder / "v1-step-needs.tflite"
    paths["v1 step"].write_bytes(version_1(model, _with_min_runtime(step, BETWEEN)))
    return paths


@pytest.fixture(scope="module")
def measured(quantized_run, sessions, needing) -> dict:
    """backend -> artifact path -> what PROBE measured: tflite-runtime 2.14 in its virtual
    environment, ai-edge-litert and tf.lite in a fresh process of this one's. tf.lite loads
    without the verifying child, which would import TensorFlow again for each of 13 models
    (about 4 s each); its in-process gates still run (edge_runtime.backends.make_interpreter)."""
    run, rows = quantized_run
    assert {k for k, r in rows.items() if r.status == "ok"} >= {(g, p) for p, g in CELLS}, \
        {k: r.reason for k, r in rows.items() if r.status != "ok"}
    paths = [artifact_path(run, p, g) for p, g in CELLS]
    extra = list(needing.values())
    legacy = run_probe(legacy_python(), ["tflite-runtime"], paths + extra, sessions,
                       doctor=[artifact_path(run, "dynamic", "fused"), needing[BETWEEN]])
    here = run_probe(sys.executable, [REFERENCE, "tensorflow"], paths + extra, sessions,
                     doctor=[artifact_path(run, "int8", "unrolled")], unverified=("tensorflow",))
    return {**here, "tflite-runtime": legacy["tflite-runtime"], "legacy doctor": legacy["doctor"],
            "legacy imported tensorflow": legacy["tensorflow imported"]}


def test_quantized_run_exercises_the_hybrid_kernels(quantized_run):
    """The matrix means something for dynamic range only if its weights are quantized:
    TensorFlow leaves float any weight under 1,024 elements (an LSTM of 8 units), and then
    the dynamic artifacts and the int8 step graphs hold no hybrid op (min_runtime_version
    1.14.0 instead of 2.3.0). `quantized_run` needs a model of 64 units or more."""
    from edge_runtime.doctor import needed_runtime

    for graph in GRAPHS:
        model = artifact_path(quantized_run[0], "dynamic", graph).read_bytes()
        assert needed_runtime(model) == "2.3.0", f"{graph}: no hybrid op; see the docstring"


def _worst(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def _live_worst(a: list[list[float]], b: list[list[float]]) -> float:
    return max(_worst(x, y) for x, y in zip(a, b, strict=True))



@pytest.mark.parametrize(("precision", "graph"), CELLS)
def test_reference_backend_scores_whole_and_live(measured, quantized_run, precision, graph):
    """The ai-edge-litert column: whole sessions (one by one and as one batch of mixed
    lengths) and live sessions, each live trajectory ending where the whole score is."""
    got = measured[REFERENCE][str(artifact_path(quantized_run[0], precision, graph))]
    assert "error" not in got and "live_error" not in got, got
    p = PRECISIONS[precision]
    assert np.isfinite(got["whole"]).all() and np.isfinite(np.concatenate(got["live"])).all()
    assert _worst(got["batch"], got["whole"]) <= p.max_abs_diff
    assert _worst([t[-1] for t in got["live"]], got["whole"]) <= p.step_max_abs_diff


@pytest.mark.parametrize("backend", OTHERS)
@pytest.mark.parametrize(("precision", "graph"), CELLS)
def test_every_precision_scores_on_every_backend(measured, quantized_run, backend, precision, graph):
    """The tflite-runtime 2.14 and tf.lite columns: within the precision's tolerances of
    ai-edge-litert, whole (one by one and batched) and live, event by event; or, where the
    precision's measured minimum runtime is newer than the backend's, refused by name."""
    path = str(artifact_path(quantized_run[0], precision, graph))
    got, ref = measured[backend][path], measured[REFERENCE][path]
    p = PRECISIONS[precision]
    if backend == "tflite-runtime" and version_tuple(p.min_runtime) > version_tuple(LEGACY_RUNTIME):
        assert got.get("error", "").startswith(f"ArtifactError: {path}: needs a TFLite runtime >= "), got
        return
    assert "error" not in got and "live_error" not in got, got
    assert got["backend"] == backend
    assert _worst(got["whole"], ref["whole"]) <= p.max_abs_diff
    assert _worst(got["batch"], ref["whole"]) <= p.max_abs_diff
    assert _live_worst(got["live"], ref["live"]) <= p.step_max_abs_diff
    if precision == "float32":  # the same float kernels: no tolerance to spend
        assert _worst(got["whole"], ref["whole"]) <= 1e-5
        assert _live_worst(got["live"], ref["live"]) <= 1e-5


def test_tflite_runtime_scores_without_tensorflow(measured):
    assert measured["legacy imported tensorflow"] is False


@pytest.mark.parametrize(("precision", "graph"), CELLS)
def test_min_runtime_version_agrees_with_what_was_measured(quantized_run, precision, graph):
    """The converter's min_runtime_version (the step graph's included) is no newer than the
    precision's measured minimum runtime, so no backend that runs the artifact is refused."""
    from edge_runtime.doctor import needed_runtime

    model = artifact_path(quantized_run[0], precision, graph).read_bytes()
    need = needed_runtime(model)
    assert need is not None and version_tuple(need) <= version_tuple(PRECISIONS[precision].min_runtime)


def test_dynamic_range_dense_weights_are_per_tensor():
    """The lever that lets tflite-runtime 2.14 load dynamic-range graphs: TF 2.21 quantizes
    dense weights per channel (FULLY_CONNECTED version 12, runtime 2.17) unless told not to.
    Full-integer whole graphs keep per-channel weights (FULLY_CONNECTED version 4 loads)."""
    class Converter:
        class target_spec:  # noqa: N801 - the attribute's name on a TFLiteConverter
            supported_types: list = []
            supported_ops: list = []

    for name, precision in PRECISIONS.items():
        converter = Converter()
        precision.configure(converter, representative_dataset=lambda: iter(()))
        per_tensor = getattr(converter, "_experimental_disable_per_channel_quantization_for_dense_layers",
                             False)
        assert per_tensor is (name == "dynamic") is precision.dynamic_range, name


def test_a_precision_without_a_measured_runtime_writes_no_artifact(quantized_run):
    _, rows = quantized_run
    for name, precision in PRECISIONS.items():
        if precision.min_runtime is None:
            assert all(rows[(g, name)].status != "ok" for g in GRAPHS), name


def test_a_model_needing_a_newer_runtime_is_refused_by_name(measured, needing):
    """tflite-runtime 2.14 refuses min_runtime_version 2.17.0 by name, before any interpreter
    error; ai-edge-litert (TFLite 2.22.0-dev0) loads it and refuses 99.0; tf.lite (2.21.0) too."""
    def refusal(path, version, who):
        return (f"ArtifactError: {path}: needs a TFLite runtime >= {version} (its min_runtime_version); "
                f"{who} is older: use ai-edge-litert, or convert the model again (the README's backend "
                f"table gives each precision's minimum runtime)")

    between, beyond = str(needing[BETWEEN]), str(needing[BEYOND])
    assert measured["tflite-runtime"][between] == {
        "error": refusal(between, BETWEEN, f"tflite-runtime {LEGACY_RUNTIME}")}
    assert measured["tflite-runtime"][beyond]["error"].startswith(f"ArtifactError: {beyond}: needs")
    assert "live" in measured[REFERENCE][between] and "live" in measured["tensorflow"][between]
    assert measured[REFERENCE][beyond] == {
        "error": refusal(beyond, BEYOND, "ai-edge-litert 2.3.0 (TFLite 2.22.0-dev0)")}
    import tensorflow as tf

    assert measured["tensorflow"][beyond] == {
        "error": refusal(beyond, BEYOND, f"tensorflow {tf.__version__}")}


def test_a_version_1_step_graph_needing_a_newer_runtime_is_refused_when_it_starts(measured, needing):
    """In the layout of version 1 the step graph is a model of its own with its own entry:
    tflite-runtime 2.14 still scores whole sessions, and refuses live ones by name."""
    path = str(needing["v1 step"])
    got = measured["tflite-runtime"][path]
    assert "error" not in got and "live" not in got, got
    assert got["live_error"].startswith(f"ArtifactError: {path}: step graph: needs a TFLite runtime "
                                        f">= {BETWEEN} (its min_runtime_version); tflite-runtime "
                                        f"{LEGACY_RUNTIME} is older"), got
    assert "live" in measured[REFERENCE][path]


def test_doctor_on_tflite_runtime(measured, quantized_run, needing):
    """`doctor` where tflite-runtime 2.14 is the only interpreter: its runtime, whether it meets
    the artifact's min_runtime_version, the signatures it lists, whole and live."""
    path = str(artifact_path(quantized_run[0], "dynamic", "fused"))
    report = measured["legacy doctor"][path]
    [row] = report["backends"]
    assert report["min_runtime_version"] == "2.3.0"  # hybrid ops, per-tensor dense weights
    assert (row["name"], row["version"], row["runtime"]) == ("tflite-runtime", LEGACY_RUNTIME, LEGACY_RUNTIME)
    assert (row["meets"], row["loads"], row["scores"], row["live"]) == (True, True, True, True), row
    assert sorted(row["signatures"]) == sorted(report["signatures"])  # what the file holds
    for signature in row["signatures"].values():
        assert signature["inputs"] and signature["outputs"]
    report = measured["legacy doctor"][str(needing[BETWEEN])]
    [row] = report["backends"]
    assert report["min_runtime_version"] == BETWEEN
    assert (row["meets"], row["loads"], row["live"], row["signatures"]) == (False, False, False, None)
    assert "needs a TFLite runtime >= 2.17.0" in row["detail"]


def test_doctor_reports_runtime_meets_and_signatures_per_backend(measured, quantized_run):
    path = str(artifact_path(quantized_run[0], "int8", "unrolled"))
    report = measured["doctor"][path]
    rows = {r["name"]: r for r in report["backends"]}
    assert report["min_runtime_version"] == "2.3.0"  # the int8 model's step graph: dynamic range
    assert rows[REFERENCE]["runtime"] == "2.22.0-dev0" and rows["tensorflow"]["runtime"] == "2.21.0"
    for row in rows.values():
        assert (row["meets"], row["loads"], row["scores"], row["live"]) == (True, True, True, True), row
        assert sorted(row["signatures"]) == sorted(report["signatures"])
    assert {k for k in report["signatures"] if k.startswith("chunk_")}


# ------------------------------------------------------------------ without a backend's run


def test_min_runtime_version_is_read_from_the_model(tiny_artifact):
    from converters.metadata_writer import seal
    from edge_runtime.errors import MalformedModelError

    model = tiny_artifact.read_bytes()
    assert min_runtime_version(model) == "1.14.0"  # float32: every op at version 1
    assert min_runtime_version(_with_min_runtime(model, "")) is None
    with pytest.raises(MalformedModelError, match=r"min_runtime_version is b'2\.x\\x00"):
        min_runtime_version(seal(_with_min_runtime(model, "2.x")))


def test_version_tuple_compares_runtime_versions():
    assert version_tuple("2.22.0-dev0") == (2, 22) > version_tuple("2.17.0") == (2, 17)
    assert version_tuple("2.3") == version_tuple("2.3.0") < version_tuple("2.14.0")
    assert version_tuple("1.14.0") < version_tuple("2.3.0")


def test_tflite_runtime_runs_a_fused_float16_graph_without_its_delegate(quantized_run):
    """tflite-runtime 2.14's XNNPACK delegate got the fused float16 graph wrong after a resize
    (by up to 0.58 on the Taobao run): that model alone is built on its built-in kernels there;
    the float16 cells of the matrix above hold it to ai-edge-litert's scores."""
    from edge_runtime.backends import delegate_fault

    run, _ = quantized_run
    for precision, graph in CELLS:
        model = artifact_path(run, precision, graph).read_bytes()
        fault = delegate_fault(model, "tflite-runtime")
        assert (fault is not None) is ((precision, graph) == ("float16", "fused")), (precision, graph)
        assert delegate_fault(model, REFERENCE) is None and delegate_fault(model, "tensorflow") is None


def test_an_unknown_runtime_lacking_an_op_version_says_what_the_model_needs(tiny_artifact, monkeypatch):
    """Where the backend's runtime is not known (an ai-edge-litert release not in
    LITERT_RUNTIMES) nothing is refused beforehand; the interpreter's "Didn't find op" error
    then carries the model's min_runtime_version."""
    import flatbuffers

    from converters.metadata_writer import add_metadata, tflite_schema
    from edge_runtime import backends
    from edge_runtime.errors import ArtifactError
    from edge_runtime.tflite_reader import FILE_IDENTIFIER

    schema = tflite_schema()
    m = schema.ModelT.InitFromPackedBuf(tiny_artifact.read_bytes(), 0)
    for code in m.operatorCodes:
        code.version = 99  # an op version no runtime has
    builder = flatbuffers.Builder(1 << 20)
    builder.Finish(m.Pack(builder), file_identifier=FILE_IDENTIFIER)
    model = add_metadata(bytes(builder.Output()), {})
    monkeypatch.setattr(backends, "LITERT_RUNTIMES", {})
    with pytest.raises(ArtifactError, match=r"^ai-edge-litert cannot load the model: Didn't find op for "
                                            r"builtin opcode .* \(the model needs a TFLite runtime >= "
                                            r"1\.14\.0, its min_runtime_version; this is ai-edge-litert "
                                            r"2\.3\.0\)$"):
        backends.make_interpreter(model, REFERENCE)


def test_runtime_version_of_each_backend():
    from edge_runtime.backends import LITERT_RUNTIMES, interpreter_class, runtime_version

    interpreter_class(REFERENCE)
    assert runtime_version(REFERENCE) == LITERT_RUNTIMES["2.3.0"] == "2.22.0-dev0"


def test_doctor_table_shows_runtime_and_meets(tiny_artifact):
    """The rendering of the new fields: the artifact's line, the TFLite and meets columns, the
    signatures each backend lists."""
    from rich.console import Console

    from ubp_edge.commands.serve import artifact_line, backends_table, signature_lines

    report = {"artifact": "m.tflite", "min_runtime_version": "2.3.0", "signatures": ["score", "step"],
              "backends": [
                  {"name": "ai-edge-litert", "importable": True, "version": "2.3.0", "runtime": "2.22.0-dev0",
                   "meets": True, "loads": True, "scores": True, "live": True, "probability": 0.1,
                   "signatures": {"score": {"inputs": ["events"], "outputs": ["probability"]},
                                  "step": {"inputs": ["c", "event", "h"],
                                           "outputs": ["c", "h", "probability"]}}},
                  {"name": "tflite-runtime", "importable": True, "version": "2.14.0", "runtime": "2.14.0",
                   "meets": False, "loads": False, "scores": False, "live": False, "probability": None,
                   "signatures": None},
                  {"name": "tensorflow", "importable": False, "version": None, "runtime": None}]}
    assert artifact_line(report) == ("m.tflite: needs a TFLite runtime >= 2.3.0 (its min_runtime_version); "
                                     "signatures in the file: score, step")
    console = Console(width=80, record=True)
    console.print(backends_table(report, Path("m.tflite")))
    text = console.export_text()
    assert "TFLite" in text and "meets" in text
    assert [line.split() for line in text.splitlines() if "-runtime" in line or "-litert" in line] == [
        ["ai-edge-litert", "2.3.0", "2.22.0-dev0", "yes", "yes", "yes", "yes", "0.1000"],
        ["tflite-runtime", "2.14.0", "2.14.0", "no", "no", "no", "no"]]
    assert signature_lines(report) == ["signatures (ai-edge-litert): score (events -> probability); "
                                       "step (c, event, h -> c, h, probability)"]
