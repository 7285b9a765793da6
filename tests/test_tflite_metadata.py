"""TFLite Model.metadata: the conversion-time writer and the standard-library reader; the standard
TFLite metadata (TFLITE_METADATA), read back here, by the LiteRT interpreter and by Netron."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from converters.metadata_writer import add_metadata, seal
from converters.tflite_metadata import (
    STANDARD_METADATA_NAME,
    add_standard_metadata,
    check_standard_metadata,
    graph_signatures,
    pack_standard_metadata,
    read_standard_metadata,
    standard_metadata,
    unpack_standard_metadata,
)
from edge_runtime.errors import ArtifactError
from edge_runtime.tflite_reader import read_metadata

KEY = "ubp_edge"


@pytest.fixture(scope="module")
def model() -> bytes:
    """A tiny LSTM classifier with a dynamic time axis, as the converters produce it."""
    import tensorflow as tf
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    net = tf_keras.Sequential([
        tf_keras.layers.Input(shape=(None, 3), batch_size=1),
        tf_keras.layers.LSTM(4),
        tf_keras.layers.Dense(1, activation="sigmoid"),
    ])
    fn = tf.function(lambda x: net(x), input_signature=[tf.TensorSpec([1, None, 3], tf.float32)])
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], net)
    return converter.convert()


@pytest.fixture(scope="module")
def payload() -> bytes:
    spec = {
        "spec_version": 1,
        "features": [{"name": f"feature_{i}", "kind": "float", "scale": i / 7} for i in range(60)],
        "threshold": 0.4375,
        "provenance": {"run": "2024-01-01T00:00:00Z", "note": "ünïcödé ✓"},
    }
    data = json.dumps(spec, ensure_ascii=False).encode("utf-8")
    assert len(data) > 2000
    return data


@pytest.fixture(scope="module")
def tagged(model: bytes, payload: bytes) -> bytes:
    return add_metadata(model, {KEY: payload})


def _run(model_content: bytes, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=model_content)
    inp = interp.get_input_details()[0]
    interp.resize_tensor_input(inp["index"], list(x.shape))
    interp.allocate_tensors()
    interp.reset_all_variables()
    interp.set_tensor(inp["index"], x)
    interp.invoke()
    return interp.get_tensor(interp.get_output_details()[0]["index"]).copy()


def _expect_artifact_error_or_dict(data: bytes) -> None:
    try:
        result = read_metadata(data)
    except ArtifactError:
        return
    assert isinstance(result, dict)
    assert all(isinstance(k, str) and isinstance(v, bytes) for k, v in result.items())


# --- writer + reader -------------------------------------------------------------------

def test_round_trip_returns_entries_exactly(model: bytes, payload: bytes) -> None:
    entries = {KEY: payload, "empty": b"", "binary": bytes(range(256))}
    out = read_metadata(add_metadata(model, entries))
    for name, value in entries.items():
        assert out[name] == value
    # The converter's own entries survive unchanged.
    original = read_metadata(model)
    assert {"min_runtime_version", "CONVERSION_METADATA"} <= original.keys()
    for name, value in original.items():
        assert out[name] == value


def test_output_has_file_identifier(tagged: bytes) -> None:
    assert tagged[4:8] == b"TFL3"


def test_replacing_an_entry_keeps_one_copy(tagged: bytes, payload: bytes) -> None:
    from ai_edge_litert import schema_py_generated as schema

    new = b'{"threshold": 0.9}'
    replaced = add_metadata(tagged, {KEY: new})
    assert read_metadata(replaced)[KEY] == new
    names = [m.name for m in schema.ModelT.InitFromPackedBuf(replaced, 0).metadata]
    assert names.count(KEY.encode()) == 1
    assert payload not in replaced  # the old payload is gone, not orphaned
    # Replacing twice in a row is stable too.
    again = add_metadata(replaced, {KEY: payload})
    assert read_metadata(again)[KEY] == payload
    assert len(again) <= len(tagged) + 64


def test_rewritten_model_runs_identically(model: bytes, tagged: bytes) -> None:
    x = np.random.default_rng(7).standard_normal((1, 5, 3)).astype(np.float32)
    expected = _run(model, x)
    np.testing.assert_array_equal(_run(tagged, x), expected)


def test_buffers_stay_16_byte_aligned(tagged: bytes) -> None:
    from ai_edge_litert import schema_py_generated as schema

    m = schema.Model.GetRootAs(tagged, 0)
    checked = 0
    for i in range(m.BuffersLength()):
        buf = m.Buffers(i)
        if buf.DataLength():
            start = buf._tab.Vector(buf._tab.Offset(4))
            assert start % 16 == 0, f"buffer {i} data starts at {start}"
            checked += 1
    assert checked >= 2


def test_model_without_our_metadata(model: bytes) -> None:
    out = read_metadata(model)
    assert isinstance(out, dict)
    assert KEY not in out


def test_reader_accepts_bytearray_and_memoryview(tagged: bytes, payload: bytes) -> None:
    assert read_metadata(bytearray(tagged))[KEY] == payload
    assert read_metadata(memoryview(tagged))[KEY] == payload


def test_writer_rejects_non_tflite() -> None:
    with pytest.raises(ArtifactError, match="not a TFLite flatbuffer"):
        add_metadata(b"\x00" * 64, {KEY: b"x"})


# --- reader robustness -----------------------------------------------------------------

@pytest.mark.parametrize("data", [b"", b"\x00" * 7, b"TFL3TFL"], ids=["empty", "7-zero-bytes", "7-bytes"])
def test_too_short_raises(data: bytes) -> None:
    with pytest.raises(ArtifactError, match="not a TFLite flatbuffer"):
        read_metadata(data)


def test_wrong_identifier_raises(tagged: bytes) -> None:
    with pytest.raises(ArtifactError, match="file identifier"):
        read_metadata(tagged[:4] + b"TFL2" + tagged[8:])


def test_random_bytes_raise() -> None:
    rng = random.Random(1234)
    for case in range(200):
        size = rng.choice([8, 9, 12, 16, 31, 64, 100, 1000, 5000])
        data = bytearray(rng.randbytes(size))
        if case % 2:  # half of them get past the identifier check to exercise the walker
            data[4:8] = b"TFL3"
        with pytest.raises(ArtifactError):
            read_metadata(bytes(data))


def test_truncated_model_raises(tagged: bytes) -> None:
    rng = random.Random(99)
    lengths = sorted({8, 9, 16, len(tagged) - 1} | set(rng.sample(range(17, len(tagged) - 1), 46)))
    assert len(lengths) == 50
    for length in lengths:
        with pytest.raises(ArtifactError):
            read_metadata(tagged[:length])


def test_truncated_converter_output_raises(model: bytes) -> None:
    rng = random.Random(98)
    for length in sorted({len(model) - 1} | set(rng.sample(range(0, len(model) - 1), 49))):
        with pytest.raises(ArtifactError):
            read_metadata(model[:length])


def test_single_byte_flips_never_crash(tagged: bytes) -> None:
    rng = random.Random(4321)
    for _ in range(200):
        data = bytearray(tagged)
        pos = rng.randrange(len(data))
        data[pos] ^= rng.randrange(1, 256)
        _expect_artifact_error_or_dict(bytes(data))


def test_flips_in_the_header_region_never_crash(tagged: bytes) -> None:
    # The root table, vtables and offset vectors live near the start of the file,
    # so flips there exercise the offset checks rather than payload bytes.
    rng = random.Random(555)
    for _ in range(200):
        data = bytearray(tagged)
        pos = rng.randrange(min(len(data), 512))
        data[pos] ^= 1 << rng.randrange(8)
        _expect_artifact_error_or_dict(bytes(data))


def test_hostile_offsets_raise() -> None:
    # Root offset past the end, and a root table whose soffset points before byte 0.
    with pytest.raises(ArtifactError):
        read_metadata(b"\xff\xff\xff\x7fTFL3" + b"\x00" * 8)
    with pytest.raises(ArtifactError):
        read_metadata(b"\x08\x00\x00\x00TFL3" + b"\x00\x00\x00\x40" + b"\x00" * 8)


def _with_external_entry(model: bytes, name: str, value: bytes) -> bytes:
    """`model` plus an entry whose buffer lives after the flatbuffer (offset/size), as
    the converter lays out models over 2 GB."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    def pack(offset: int) -> bytes:
        m = schema.ModelT.InitFromPackedBuf(model, 0)
        m.buffers.append(schema.BufferT(offset=offset, size=len(value)))
        m.metadata.append(schema.MetadataT(name=name, buffer=len(m.buffers) - 1))
        builder = flatbuffers.Builder(1024)
        builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())

    size = len(pack(2))  # a non-default placeholder, so the real offset packs the same size
    packed = pack(size)
    assert len(packed) == size
    return packed + value


def test_reader_follows_external_buffer_offsets(model: bytes, payload: bytes) -> None:
    external = _with_external_entry(model, KEY, payload)
    assert read_metadata(external)[KEY] == payload
    with pytest.raises(ArtifactError, match="does not fit"):
        read_metadata(external[:-1])


def test_writer_inlines_external_buffers(model: bytes, payload: bytes) -> None:
    external = _with_external_entry(model, "outside", payload)
    out = add_metadata(external, {KEY: b"inline"})
    assert read_metadata(out) == {**read_metadata(model), "outside": payload, KEY: b"inline"}


# --- standard TFLite metadata (converters.tflite_metadata) --------------------------------

# Netron's own TensorFlow Lite reader (the `netron` package's tflite.js, run by Node.js): what
# Netron shows for a file -- the model's name, version, description, author and licence, and
# per subgraph each input and output with its description and denotation.
NETRON_READER = r"""
import * as fs from 'fs';
import * as flatbuffers from './flatbuffers.js';
import * as tflite from './tflite.js';

const data = new Uint8Array(fs.readFileSync(process.argv[2]));
const types = new Map(JSON.parse(fs.readFileSync(new URL('./tflite-metadata.json', import.meta.url)))
    .map((t) => [t.name, t]));
const metadata = {
    type: (name) => types.get(name) || { name: String(name) },
    attribute: (type, name) =>
        ((types.get(type) || {}).attributes || []).find((a) => a.name === name) || null,
};
let position = 0;
const stream = {
    get position() { return position; }, length: data.length, seek: (p) => { position = p; },
    read: (n) => { const s = data.subarray(position, position + n); position += n; return s; },
    peek: (n) => data.subarray(position, position + (n === undefined ? data.length : n)),
};
const context = {
    identifier: 'model.tflite', stream, type: 'tflite.flatbuffers',
    value: flatbuffers.BinaryReader.open(data),
    require: (id) => import(`${id}.js`), metadata: async () => metadata,
};
const model = await new tflite.ModelFactory().open(context);
const port = (a) => ({ tensor: a.name, description: a.value[0].description,
                       type: a.value[0].type.toString(), denotation: a.value[0].type.denotation || '' });
console.log(JSON.stringify({
    name: model.name, version: model.version, description: model.description,
    metadata: Object.fromEntries(model.metadata.map((m) => [m.name, m.value])),
    graphs: model.modules.map((g) => ({ name: g.name, signatures: g.signatures.map((s) => s.name),
                                        inputs: g.inputs.map(port), outputs: g.outputs.map(port) })),
}));
"""
NETRON_FILES = ("tflite.js", "tflite-schema.js", "flatbuffers.js", "flexbuffers.js", "zip.js",
                "tflite-metadata.json")

FEATURES = ("is_view", "is_cart", "log_dt_prev", "tod_sin")
UNITS = 3


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    f, u = len(FEATURES), UNITS
    shapes = {"lstm_kernel": (f, 4 * u), "lstm_recurrent_kernel": (u, 4 * u), "lstm_bias": (4 * u,),
              "dense_kernel": (u, 1), "dense_bias": (1,)}
    return {k: (0.5 * rng.standard_normal(s)).astype(np.float32) for k, s in shapes.items()}


def _convert(functions, trackables, int8_io: bool = False) -> bytes:
    """Several concrete functions in one flatbuffer, one signature each (named after each)."""
    import tensorflow as tf

    root = tf.Module()
    root.parts = list(trackables)
    converter = tf.lite.TFLiteConverter.from_concrete_functions(functions, root)
    if int8_io:
        rng = np.random.default_rng(5)

        def representative():
            for _ in range(20):
                yield {"event": rng.standard_normal((1, len(FEATURES))).astype(np.float32),
                       "h": rng.uniform(-1, 1, (1, UNITS)).astype(np.float32),
                       "c": rng.uniform(-2, 2, (1, UNITS)).astype(np.float32)}

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = converter.inference_output_type = tf.int8
    return converter.convert()


@pytest.fixture(scope="module")
def unrolled_model() -> bytes:
    """The layout of an unrolled artifact with its live graph: signatures chunk_1 ... chunk_16
    and step, seven subgraphs of one flatbuffer."""
    from converters.graphs import step_function, unrolled_score_functions

    chunks, module = unrolled_score_functions(_arrays())
    step, step_module = step_function(_arrays())
    return _convert([*chunks, step], [module, step_module])


@pytest.fixture(scope="module")
def fused_model() -> bytes:
    """The layout of a fused artifact with its live graph: signatures score and step."""
    from converters.graphs import fused_score_function, step_function

    score, keras_model = fused_score_function(_arrays())
    step, step_module = step_function(_arrays())
    return _convert([score, step], [keras_model, step_module])


def _info(graph: str, calibration: dict | None = None, precision: str = "float32"):
    from edge_runtime.artifact import ArtifactInfo
    from edge_runtime.features import FeatureSpec

    spec = FeatureSpec(features=FEATURES, mean=(0.5, 0.1, 3.0, 0.0), scale=(0.25, 0.3, 2.0, 0.7),
                       utc_offset_hours=8.0, max_len=20)
    return ArtifactInfo(spec=spec, threshold=0.3125, precision=precision, graph=graph,
                        calibration=calibration,
                        provenance={"run_dir": "tiny", "created_utc": "2026-01-02T03:04:05+00:00",
                                    "training_data": "sessions.csv", "training_format": "canonical",
                                    "session_gap_minutes": 30.0, "test_roc_auc_keras": 0.61234,
                                    "ubp_edge": "0.1.0", "tensorflow": "2.21.0"})


def _subgraph_ports(model_bytes: bytes) -> list[tuple[list[str], list[str], list[str]]]:
    """(signature keys, input names, output names) per subgraph, in the subgraph's own tensor
    order: names from the LiteRT interpreter's signature runners, order from the flatbuffer."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=model_bytes)
    m = schema.Model.GetRootAs(model_bytes, 0)
    out = []
    for i in range(m.SubgraphsLength()):
        keys = [m.SignatureDefs(k).SignatureKey().decode() for k in range(m.SignatureDefsLength())
                if m.SignatureDefs(k).SubgraphIndex() == i]
        runner = interp.get_signature_runner(keys[0])
        by_index = {d["index"]: name for name, d in runner.get_input_details().items()}
        by_index_out = {d["index"]: name for name, d in runner.get_output_details().items()}
        sg = m.Subgraphs(i)
        out.append((keys, [by_index[int(t)] for t in sg.InputsAsNumpy()],
                    [by_index_out[int(t)] for t in sg.OutputsAsNumpy()]))
    return out


def _run_every_signature(model_bytes: bytes) -> dict[str, dict[str, np.ndarray]]:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=model_bytes)
    rng = np.random.default_rng(11)
    results = {}
    for key in sorted(interp.get_signature_list()):
        runner = interp.get_signature_runner(key)
        inputs = {}
        for name, d in runner.get_input_details().items():
            shape = [dim if dim > 0 else (5 if i == 1 else 1)
                     for i, dim in enumerate(d["shape_signature"])]
            inputs[name] = rng.standard_normal(shape).astype(np.float32)
        results[key] = {k: v.copy() for k, v in runner(**inputs).items()}
    return results


def _netron(tmp_path, model_bytes: bytes) -> dict:
    import importlib.util
    import shutil
    import subprocess

    node = shutil.which("node")
    spec = importlib.util.find_spec("netron")
    if node is None:
        pytest.skip("Node.js is not on PATH: Netron's reader cannot run")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the netron package is not installed (pip install -e '.[dev]')")
    root = spec.submodule_search_locations[0]
    work = tmp_path / "netron"
    work.mkdir(exist_ok=True)
    for name in NETRON_FILES:
        shutil.copy(os.path.join(root, name), work / name)
    (work / "package.json").write_text('{"type": "module"}')
    (work / "read.js").write_text(NETRON_READER)
    (work / "model.tflite").write_bytes(model_bytes)
    done = subprocess.run([node, str(work / "read.js"), str(work / "model.tflite")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


@pytest.mark.slow
def test_every_field_reads_back(unrolled_model: bytes) -> None:

    info = _info("unrolled")
    out = add_standard_metadata(unrolled_model, info)
    entry = read_metadata(out)[STANDARD_METADATA_NAME]
    assert entry[4:8] == b"M001"
    meta = read_standard_metadata(out)
    assert meta == standard_metadata(unrolled_model, info)
    assert meta["name"] == "ubp-edge purchase intent (float32, unrolled)"
    assert meta["version"] == "tiny@2026-01-02T03:04:05+00:00"
    assert meta["author"] == "ubp-edge"
    assert "sessions.csv" in meta["license"]
    assert meta["min_parser_version"] == "1.0.0"
    for words in ("ends in a purchase", f"LSTM of {UNITS} units", "Precision float32",
                  "Graph unrolled", "in run 'tiny' on sessions.csv (canonical format, sessions "
                  "split at 30-minute gaps)", "Test ROC AUC 0.6123", "TensorFlow 2.21.0",
                  "chunk_1, chunk_16, chunk_2, chunk_3, chunk_4, chunk_8, step", "'ubp_edge'"):
        assert words in meta["description"], words
    # Explicit author and licence win over the defaults.
    chosen = standard_metadata(unrolled_model, info, author="Shop ML team", licence="Apache-2.0")
    assert (chosen["author"], chosen["license"]) == ("Shop ML team", "Apache-2.0")


@pytest.mark.slow
@pytest.mark.parametrize("which", ["unrolled", "fused"])
def test_every_subgraph_is_described_in_its_own_tensor_order(which: str, unrolled_model: bytes,
                                                            fused_model: bytes) -> None:

    model_bytes = unrolled_model if which == "unrolled" else fused_model
    out = add_standard_metadata(model_bytes, _info(which))
    check_standard_metadata(out)
    described = read_standard_metadata(out)["subgraph_metadata"]
    ports = _subgraph_ports(out)
    keys = [k[0] for k, _, _ in ports]
    assert keys == (["chunk_1", "chunk_16", "chunk_2", "chunk_3", "chunk_4", "chunk_8", "step"]
                    if which == "unrolled" else ["score", "step"])
    assert len(described) == len(ports)
    for d, (sig_keys, inputs, outputs) in zip(described, ports, strict=True):
        assert d["name"] == sig_keys[0]
        assert [t["name"] for t in d["input_tensor_metadata"]] == inputs
        assert [t["name"] for t in d["output_tensor_metadata"]] == outputs
        for t in d["input_tensor_metadata"] + d["output_tensor_metadata"]:
            assert t["content"] == {"content_properties_type": "FeatureProperties",
                                    "content_properties": {}}
            assert "not a tensor ubp-edge describes" not in t["description"]
    by_key = {d["name"]: d for d in described}
    step = by_key["step"]
    assert step["description"].startswith("One event (live scoring)")
    event = next(t for t in step["input_tensor_metadata"] if t["name"] == "event")
    assert f"float32 [1, {len(FEATURES)}]" in event["description"]
    assert ", ".join(FEATURES) in event["description"] and "UTC+8 h" in event["description"]
    assert event["dimension_names"] == ["batch", "feature"]
    h_in = next(t for t in step["input_tensor_metadata"] if t["name"] == "h")
    assert "zeros at a session's start" in h_in["description"]
    assert f"[1, {UNITS}]" in h_in["description"]
    probability = next(t for t in step["output_tensor_metadata"] if t["name"] == "probability")
    assert "before calibration" in probability["description"]
    assert "no calibration" in probability["description"] and "0.3125" in probability["description"]
    if which == "unrolled":
        chunk = by_key["chunk_16"]
        assert chunk["description"].startswith("Chunk of 16 events")
        assert "(20 events: 16, 4)" in chunk["description"]
        events = next(t for t in chunk["input_tensor_metadata"] if t["name"] == "events")
        assert f"float32 [B, 16, {len(FEATURES)}]" in events["description"]
    else:
        events = by_key["score"]["input_tensor_metadata"][0]
        assert by_key["score"]["description"].startswith("Whole session")
        assert f"float32 [1, L, {len(FEATURES)}]" in events["description"]
        assert "trained on the last 20" in events["description"]
        assert events["dimension_names"] == ["batch", "event", "feature"]


def test_unknown_names_get_a_generic_description(model: bytes) -> None:

    out = add_standard_metadata(model, _info("fused"))
    check_standard_metadata(out)
    (only,) = read_standard_metadata(out)["subgraph_metadata"]
    assert only["name"] == "serving_default"
    assert "not a graph ubp-edge describes" in only["description"]
    for t in only["input_tensor_metadata"] + only["output_tensor_metadata"]:
        assert "not a tensor ubp-edge describes" in t["description"]
        assert "dimension_names" not in t


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated")  # the converter's calibrator
def test_calibration_and_int8_ports_are_described() -> None:
    from converters.graphs import step_function

    step, module = step_function(_arrays())
    quantized = _convert([step], [module], int8_io=True)
    (graph,) = graph_signatures(quantized)
    ports = {p.name: p for p in graph.inputs + graph.outputs}
    out = add_standard_metadata(quantized, _info("unrolled", {"method": "platt", "a": 1.25, "b": -0.5},
                                                 precision="int8-io"))
    (only,) = read_standard_metadata(out)["subgraph_metadata"]
    tensors = only["input_tensor_metadata"] + only["output_tensor_metadata"]
    texts = {t["name"]: t["description"] for t in tensors}
    scale, zero = ports["event"].quantization
    assert ports["event"].dtype == "int8"
    sign = f"q - {zero}" if zero >= 0 else f"q + {-zero}"
    assert f"Stored as int8: value = {scale:.9g} * ({sign}); quantise values into it" in texts["event"]
    assert "dequantise it" in texts["probability"]
    assert "a = 1.25, b = -0.5" in texts["probability"]
    assert "calibrated probability is at least 0.3125" in texts["probability"]


@pytest.mark.slow
def test_digest_covers_the_entry_and_our_entries_survive(unrolled_model: bytes) -> None:
    from edge_runtime.artifact import METADATA_NAME, parse_artifact, verify_digest
    from edge_runtime.tflite_reader import metadata_spans

    info = _info("unrolled", {"method": "platt", "a": 1.1, "b": 0.05})
    labelled = add_metadata(unrolled_model, {METADATA_NAME: info.to_bytes(), "ubp_edge_other": b"x"})
    sealed = seal(add_standard_metadata(seal(labelled)))  # info read back from the model's entry
    verify_digest(sealed)
    assert parse_artifact(sealed) == info
    entries = read_metadata(sealed)
    assert entries[METADATA_NAME] == info.to_bytes() and entries["ubp_edge_other"] == b"x"
    assert read_standard_metadata(sealed)["subgraph_metadata"][0]["name"] == "chunk_1"
    start, end = metadata_spans(sealed)[STANDARD_METADATA_NAME]
    for pos in (start, start + 4, (start + end) // 2, end - 1):
        damaged = bytearray(sealed)
        damaged[pos] ^= 0x01
        with pytest.raises(ArtifactError, match="do not match the integrity digest"):
            verify_digest(bytes(damaged))


@pytest.mark.slow
def test_conversion_relabelling_rewrites_it_from_the_new_entry(unrolled_model: bytes) -> None:
    # converters.tflite relabels a sealed artifact (step graph, recalibration): add_metadata
    # leaves the old digest stale until seal, and the TFLite metadata must follow the new info.
    from edge_runtime.artifact import METADATA_NAME, verify_digest

    def labelled(model_bytes: bytes, entries: dict[str, bytes]) -> bytes:
        return seal(add_standard_metadata(add_metadata(model_bytes, entries)))

    first = labelled(unrolled_model, {METADATA_NAME: _info("unrolled").to_bytes()})
    recalibrated = _info("unrolled", {"method": "platt", "a": 1.5, "b": 0.25})
    second = labelled(first, {METADATA_NAME: recalibrated.to_bytes()})
    verify_digest(second)
    assert "a = 1.5, b = 0.25" in json.dumps(read_standard_metadata(second))
    assert read_standard_metadata(second) == standard_metadata(second, recalibrated)
    with pytest.raises(ArtifactError, match="no 'ubp_edge' metadata entry"):
        add_standard_metadata(unrolled_model)


@pytest.mark.slow
def test_rewriting_replaces_the_entry(unrolled_model: bytes) -> None:
    from ai_edge_litert import schema_py_generated as schema


    first = add_standard_metadata(unrolled_model, _info("unrolled"))
    second = add_standard_metadata(first, _info("unrolled", {"method": "platt", "a": 2.0, "b": 0.0}))
    names = [m.name for m in schema.ModelT.InitFromPackedBuf(second, 0).metadata]
    assert names.count(STANDARD_METADATA_NAME.encode()) == 1
    assert "a = 2, b = 0" in json.dumps(read_standard_metadata(second))
    assert len(second) <= len(first) + 256  # the old entry is gone, not orphaned


@pytest.mark.slow
@pytest.mark.parametrize("which", ["unrolled", "fused"])
def test_every_signature_scores_the_same(which: str, unrolled_model: bytes, fused_model: bytes) -> None:

    model_bytes = unrolled_model if which == "unrolled" else fused_model
    before = _run_every_signature(model_bytes)
    after = _run_every_signature(add_standard_metadata(model_bytes, _info(which)))
    assert before.keys() == after.keys() and len(before) >= 2
    for key in before:
        assert before[key].keys() == after[key].keys()
        for name in before[key]:
            np.testing.assert_array_equal(after[key][name], before[key][name])


@pytest.mark.slow
def test_netron_shows_the_model_and_every_input(tmp_path, unrolled_model: bytes) -> None:

    out = add_standard_metadata(unrolled_model, _info("unrolled"))
    meta = read_standard_metadata(out)
    shown = _netron(tmp_path, out)
    assert shown["name"] == meta["name"] and shown["version"] == meta["version"]
    assert meta["description"] in shown["description"]
    assert shown["metadata"]["author"] == meta["author"]
    assert shown["metadata"]["license"] == meta["license"]
    assert [g["name"] for g in shown["graphs"]] == [d["name"] for d in meta["subgraph_metadata"]]
    for graph, d in zip(shown["graphs"], meta["subgraph_metadata"], strict=True):
        assert graph["signatures"] == [d["name"]]
        for direction in ("inputs", "outputs"):
            described = d[f"{direction[:-1]}_tensor_metadata"]
            assert [p["description"] for p in graph[direction]] == [t["description"] for t in described]
            assert {p["denotation"] for p in graph[direction]} == {"Feature"}
        # Input tensors are named after the signature's names (chunk_1_events:0, step_h:0):
        # Netron pairs each with the description of the same name.
        for p, t in zip(graph["inputs"], d["input_tensor_metadata"], strict=True):
            assert p["tensor"].endswith(f"_{t['name']}:0"), (p["tensor"], t["name"])
        # Outputs are named PartitionedCall:N; the probability is the one of shape [B, 1]
        # (the state is [B, UNITS]), so its description must sit on that tensor.
        for p in graph["outputs"]:
            is_probability = p["type"] == "float32[-1,1]" or p["type"] == "float32[1,1]"
            assert p["description"].startswith("Purchase probability") == is_probability, p


def test_reference_artifact_gains_metadata_and_scores_the_same(tmp_path, capsys) -> None:
    from edge_runtime.artifact import parse_artifact
    from edge_runtime.scorer import Scorer

    source = Path(__file__).resolve().parents[1] / "models" / "taobao-lstm128-dynamic.tflite"
    original = source.read_bytes()
    out = seal(add_standard_metadata(original))
    check_standard_metadata(out)
    assert parse_artifact(out) == parse_artifact(original)
    meta = read_standard_metadata(out)
    assert meta["name"] == "ubp-edge purchase intent (dynamic, fused)"
    assert "UserBehavior_sample.csv (taobao format" in meta["description"]
    rng = np.random.default_rng(2)
    width = Scorer.from_bytes(original).info.spec.n_features
    sessions = [rng.standard_normal((n, width)).astype(np.float32) for n in (1, 3, 17, 60)]
    expected = Scorer.from_bytes(original).score_encoded(sessions)
    np.testing.assert_array_equal(Scorer.from_bytes(out).score_encoded(sessions), expected)
    # The maintainer's check prints what it reads back.
    from converters.tflite_metadata import main

    (tmp_path / "m.tflite").write_bytes(out)
    main([str(tmp_path / "m.tflite")])
    assert json.loads(capsys.readouterr().out)[STANDARD_METADATA_NAME] == meta


def test_check_refuses_metadata_of_another_graph(model: bytes) -> None:

    with pytest.raises(ArtifactError, match="no TFLITE_METADATA entry"):
        check_standard_metadata(model)
    described = add_standard_metadata(model, _info("fused"))
    entry = read_metadata(described)[STANDARD_METADATA_NAME]

    meta = unpack_standard_metadata(entry)
    meta["subgraph_metadata"][0]["input_tensor_metadata"][0]["name"] = "events"
    with pytest.raises(ArtifactError, match=r"subgraph 0 \(serving_default\) inputs are \['events'\]"):
        check_standard_metadata(add_metadata(model, {STANDARD_METADATA_NAME: pack_standard_metadata(meta)}))
    meta["subgraph_metadata"].append(meta["subgraph_metadata"][0])
    with pytest.raises(ArtifactError, match="describes 2 subgraphs, the model has 1"):
        check_standard_metadata(add_metadata(model, {STANDARD_METADATA_NAME: pack_standard_metadata(meta)}))


def test_pack_and_unpack_refuse_what_they_do_not_know() -> None:

    with pytest.raises(ValueError, match=r"ModelMetadata has no fields \['nam'\]"):
        pack_standard_metadata({"nam": "x"})
    with pytest.raises(ValueError, match="ModelMetadata.associated_files is not written"):
        pack_standard_metadata({"associated_files": []})
    with pytest.raises(ValueError, match="'ImageProperty' not in"):
        pack_standard_metadata({"subgraph_metadata": [{"input_tensor_metadata": [
            {"content": {"content_properties_type": "ImageProperty", "content_properties": {}}}]}]})
    with pytest.raises(ArtifactError, match="file identifier is b'TFL3', expected b'M001'"):
        unpack_standard_metadata(b"\x0c\x00\x00\x00TFL3" + b"\x00" * 16)
    data = pack_standard_metadata({"name": "n", "subgraph_metadata": [{"name": "s"}]})
    assert unpack_standard_metadata(data) == {"name": "n", "subgraph_metadata": [{"name": "s"}]}
    with pytest.raises(ArtifactError, match="damaged TFLite metadata"):
        unpack_standard_metadata(data[:12])
