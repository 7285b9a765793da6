"""TFLite Model.metadata: the conversion-time writer and the standard-library reader."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from converters.metadata_writer import add_metadata
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
