"""The PREP_DIR format (trainer.prepdir): what PrepWriter writes PrepDir reads back in
canonical order, the content digest does not depend on sharding, a damaged shard or manifest
is refused with one line naming it, and the tf.data stream batches sessions by length."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pytest
from prep_fixtures import build_prep_dir, write_small_log

from edge_runtime.errors import DataError
from trainer.dataset import BASELINE_FEATURES, aggregate_features, encode_sessions, new_encoder, raw_sessions
from trainer.prepdir import (
    MANIFEST,
    SHARD_SCHEMA,
    ContentDigest,
    PrepDir,
    PrepWriter,
    length_buckets,
    predict_by_length,
    write_manifest,
)
from trainer.readers import read_log
from trainer.sessions import key_digests, sessionize, time_split


@pytest.fixture(scope="module")
def small_log(tmp_path_factory):
    return write_small_log(tmp_path_factory.mktemp("prep_log"))


@pytest.fixture(scope="module")
def prep(tmp_path_factory, small_log):
    folder = tmp_path_factory.mktemp("prep") / "prepared"
    build_prep_dir(small_log, folder, max_len=20, sessions_per_shard=150)
    return folder


@pytest.fixture
def prep_copy(tmp_path, prep):
    shutil.copytree(prep, tmp_path / "copy")
    return tmp_path / "copy"


def test_reader_returns_what_the_in_memory_path_computes_in_canonical_order(small_log, prep):
    log = read_log(small_log)
    sessions = sessionize(log)
    split = time_split(sessions)
    encoder = new_encoder(sessions, 20)
    encoder.fit(np.concatenate(raw_sessions(sessions, split.train, encoder, window=20)))
    p = PrepDir.open(prep)
    assert len(p.shards) > 3 and p.spec == encoder.spec()
    assert p.baseline_names == list(BASELINE_FEATURES)
    assert p.counts["bad_rows"]["total"] == 1 and p.quarantine is not None
    for name, index in split.parts().items():
        part = p.read_split(name)
        assert part.key_digest.tolist() == key_digests(sessions.key[index]).tolist()
        np.testing.assert_array_equal(part.label, sessions.label[index])
        np.testing.assert_array_equal(part.start, sessions.start[index])
        np.testing.assert_array_equal(part.prefix_len, sessions.prefix_len[index])
        expected = encode_sessions(sessions, index, encoder, window=20)
        assert len(part.encoded) == len(expected)
        for got, want in zip(part.encoded, expected, strict=True):
            np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(part.baseline, aggregate_features(sessions, index)[0])
    assert p.recompute_content_digest() == p.content_digest
    together = p.read_splits(features=("test",))  # one pass, as training loads them
    assert together["train"].values is None and together["validation"].values is None
    for name, part in together.items():
        alone = p.read_split(name)
        np.testing.assert_array_equal(part.key_digest, alone.key_digest)
        np.testing.assert_array_equal(part.lengths, alone.lengths)
        np.testing.assert_array_equal(part.baseline, alone.baseline)
    np.testing.assert_array_equal(together["test"].values, p.read_split("test").values)
    assert [sum(c.values()) for c in p.split_counts()] == [s["sessions"] for s in p.shards]


def test_content_digest_does_not_depend_on_how_sessions_fall_into_shards(tmp_path, small_log, prep):
    one = build_prep_dir(small_log, tmp_path / "one", max_len=20)
    three = build_prep_dir(small_log, tmp_path / "three", max_len=20, shards=3)
    many = PrepDir.open(prep)
    assert len(one["shards"]) == 1 and len(three["shards"]) == 3
    assert one["content_digest"] == three["content_digest"] == many.content_digest
    assert {s["sessions"] for s in three["shards"]} <= {one["shards"][0]["sessions"] // 3,
                                                         one["shards"][0]["sessions"] // 3 + 1}
    other = build_prep_dir(small_log, tmp_path / "other", max_len=19)
    assert other["content_digest"] != one["content_digest"]


def test_content_digest_hashes_each_field_length_prefixed():
    """The record of one session, spelt out: a change to any field, or moving a byte from one
    field to the next, changes the digest."""
    import hashlib
    import struct

    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    digest = ContentDigest()
    digest.update(np.array(["0123456789abcdef"]), np.array(["train"]), np.array([1]), x, [2], 3)
    record = b"".join(struct.pack("<Q", len(b)) + b for b in
                      (b"0123456789abcdef", b"train", b"\x01", x.astype("<f4").tobytes()))
    assert digest.hexdigest() == hashlib.sha256(record).hexdigest()
    batched = ContentDigest()
    for _ in range(2):
        batched.update(np.array(["0123456789abcdef"]), np.array(["train"]), np.array([1]), x, [2], 3)
    whole = ContentDigest()
    whole.update(np.array(["0123456789abcdef"] * 2), np.array(["train"] * 2), np.array([1, 1]),
                 np.concatenate([x, x]), [2, 2], 3)
    assert batched.hexdigest() == whole.hexdigest() == hashlib.sha256(record * 2).hexdigest()


def test_a_damaged_shard_is_refused_naming_it(prep_copy):
    p = PrepDir.open(prep_copy)
    shard = prep_copy / p.shards[1]["path"]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    for read in (p.verify, lambda: p.read_shard(1), lambda: p.read_split("train")):
        with pytest.raises(DataError) as caught:
            read()
        message = str(caught.value)
        assert message.startswith(str(shard)) and "digest mismatch" in message
        assert message.endswith("the shard is damaged; run prepare again"), message
    shard.unlink()
    with pytest.raises(DataError, match=r"part-00001.parquet: missing \(listed in .*manifest.json\)"):
        p.verify()


def test_a_damaged_shard_met_by_the_training_stream_is_one_line_naming_it(prep_copy):
    p = PrepDir.open(prep_copy)
    first_train_shard = next(i for i, c in enumerate(p.split_counts()) if c.get("train"))
    shard = prep_copy / p.shards[first_train_shard]["path"]
    shard.write_bytes(shard.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(DataError) as caught, p.shard_errors():
        for _ in p.dataset("train", 16, shuffle=False):
            pass
    assert str(caught.value).startswith(str(shard)) and "digest mismatch" in str(caught.value)


def _mutate(manifest: dict, path: str, value) -> None:
    *keys, last = [int(k) if k.isdigit() else k for k in path.split(".")]
    target = manifest
    for key in keys:
        target = target[key]
    if value is KeyError:
        del target[last]
    else:
        target[last] = value


@pytest.mark.parametrize("field, value, message", [
    ("format_version", 2, "format_version 2 is not supported (this ubp-edge reads 1)"),
    ("engine", "dask", "damaged, engine is 'dask', expected local or spark"),
    ("settings.max_len", "20", "damaged, settings.max_len is '20', expected a whole number >= 0"),
    ("settings.use_context", 1, "damaged, settings.use_context is 1, expected a bool"),
    ("settings.test", 0.9, "settings.validation 0.15 and settings.test 0.9 must be shares"),
    ("counts.split.test.sessions", -1, "damaged, counts.split.test.sessions is -1"),
    ("counts.events", KeyError, "damaged, no counts.events"),
    ("shards.0.path", "../../etc/passwd", "damaged, shards[0].path is '../../etc/passwd'"),
    ("shards.0.sha256", "abc", "damaged, shards[0].sha256 is 'abc', expected 64 hex digits"),
    ("shards.0.sessions", 1, "damaged, the shards hold"),
    ("feature_spec.max_len", 50, "damaged, feature_spec.max_len 50 is not settings.max_len 20"),
    ("feature_spec.version", 99, "damaged, feature_spec: feature spec version 99 is not supported"),
    ("baseline_features", [], "damaged, baseline_features is []"),
    ("time_span_utc", [1.0], "damaged, time_span_utc is [1.0]"),
    ("content_digest", None, "damaged, content_digest is None, expected a str"),
])
def test_a_manifest_with_a_bad_field_is_refused_naming_file_and_field(prep_copy, field, value, message):
    path = prep_copy / MANIFEST
    manifest = json.loads(path.read_text())
    _mutate(manifest, field, value)
    path.write_text(json.dumps(manifest))
    with pytest.raises(DataError) as caught:
        PrepDir.open(prep_copy)
    text = str(caught.value)
    assert text.startswith(f"{path}: ") and message in text and text.endswith("run prepare again"), text
    assert "\n" not in text
    with pytest.raises(DataError, match="run prepare again"):  # nor would it be written
        write_manifest(prep_copy, manifest)


@pytest.mark.parametrize("content, message", [
    (b"{not json", "damaged, not JSON"),
    (b"[1, 2]", "damaged, a JSON list where an object belongs"),
    (b"[" * 100_000, "damaged (JSON nested too deep)"),
])
def test_a_manifest_that_is_not_an_object_is_refused(prep_copy, content, message):
    (prep_copy / MANIFEST).write_bytes(content)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        PrepDir.open(prep_copy)


def test_a_folder_without_manifest_is_not_a_prep_dir(tmp_path):
    (tmp_path / "half").mkdir()
    with pytest.raises(DataError, match=r"half: not a prepared folder, no manifest.json"):
        PrepDir.open(tmp_path / "half")
    with pytest.raises(DataError, match=r"nowhere: no such folder"):
        PrepDir.open(tmp_path / "nowhere")


def _batch(starts, split="train", lengths=(1, 2)):
    n = len(starts)
    lengths = list(lengths)[:n]
    return {"key_digest": [f"{i:016x}" for i in range(n)], "split": [split] * n, "label": [0, 1][:n],
            "start": starts, "prefix_len": lengths,
            "features": [np.ones((k, 3), np.float32) for k in lengths], "baseline": np.zeros((n, 2))}


def test_writer_refuses_what_would_break_the_format(tmp_path):
    with PrepWriter(tmp_path, 3, ["a", "b"]) as writer:
        writer.add(_batch([5.0, 6.0]))
        with pytest.raises(ValueError, match="canonical order"):
            writer.add(_batch([4.0, 7.0]))
    with PrepWriter(tmp_path / "b", 3, ["a", "b"]) as writer, pytest.raises(ValueError, match="split values"):
        writer.add(_batch([1.0, 2.0], split="holdout"))
    with pytest.raises(ValueError, match="total_sessions"):
        PrepWriter(tmp_path, 3, ["a", "b"], shards=2)
    writer = PrepWriter(tmp_path / "c", 3, ["a", "b"], shards=2, total_sessions=3)
    writer.add(_batch([1.0, 2.0]))
    with pytest.raises(ValueError, match="2 sessions added, 3 announced"):
        writer.close()


def test_writer_takes_arrow_tables_and_leaves_no_temporary_file(tmp_path):
    columns = _batch([1.0, 2.0])
    table = pa.table({"key_digest": columns["key_digest"], "split": columns["split"],
                      "label": pa.array(columns["label"], pa.int8()), "start": columns["start"],
                      "prefix_len": pa.array(columns["prefix_len"], pa.int64()),
                      "features": pa.array([np.ones(3 * k, np.float32) for k in (1, 2)],
                                           pa.list_(pa.float32())),
                      "baseline": pa.array([np.zeros(2), np.zeros(2)], pa.list_(pa.float64()))},
                     schema=SHARD_SCHEMA)
    a, b = PrepWriter(tmp_path / "a", 3, ["a", "b"]), PrepWriter(tmp_path / "b", 3, ["a", "b"])
    a.add(columns)
    b.add(table)
    (_, digest_a), (shards_b, digest_b) = a.close(), b.close()
    assert digest_a == digest_b and [s["sessions"] for s in shards_b] == [2]
    assert sorted(p.name for p in (tmp_path / "b" / "shards").iterdir()) == ["part-00000.parquet"]


def test_aggregate_features_equals_the_per_session_definition(small_log):
    log = read_log(small_log)
    sessions = sessionize(log)
    index = np.flatnonzero(sessions.scorable)
    got, names = aggregate_features(sessions, index)
    assert names == list(BASELINE_FEATURES)
    for row, s in zip(got, index, strict=True):
        ev = sessions.prefix_events(int(s))
        counts = np.bincount(log.event[ev], minlength=4)
        n, unique = len(ev), len(np.unique(log.item.codes[ev]))
        want = [np.log1p(n), np.log1p(counts[0]), np.log1p(counts[1]), np.log1p(counts[2]),
                np.log1p(log.ts[ev[-1]] - log.ts[ev[0]]), np.log1p(unique), 1.0 - unique / n,
                *np.log1p(sessions.context[int(s)])]
        np.testing.assert_array_equal(row, want)


def test_length_buckets_are_exact_for_short_sessions_and_bounded_for_long():
    bounds = length_buckets(50)
    assert bounds[:8] == [2, 3, 4, 5, 6, 7, 8, 9] and bounds[-1] <= 50
    assert all(b / a <= 1.34 for a, b in zip(bounds[7:], bounds[8:], strict=False))
    assert length_buckets(1) == [] and length_buckets(3) == [2, 3]


def test_predict_by_length_keeps_session_order():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 30, 500)
    values = rng.normal(size=(int(lengths.sum()), 4)).astype(np.float32)
    # A "model" that sums each session's values: zero padding changes nothing, order does.
    got = predict_by_length(lambda x: x.sum(axis=(1, 2)), values, lengths, batch_size=64)
    want = [x.sum() for x in np.split(values, np.cumsum(lengths)[:-1])]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_training_stream_pads_within_batches_and_yields_every_session_once(prep):
    p = PrepDir.open(prep)
    train = p.read_split("train", baseline=False)
    seen_lengths, labels, weights = [], [], []
    for x, y, w in p.dataset("train", 16, shuffle=True, seed=3, class_weights={0: 0.5, 1: 4.0}):
        x = x.numpy()
        real = (x != 0).any(axis=2).sum(axis=1)  # encoded events are never all zero
        assert x.shape[1] == real.max(), "a batch is padded only to its longest session"
        assert x.shape[0] <= 16
        seen_lengths += real.tolist()
        labels += y.numpy().tolist()
        weights += w.numpy().tolist()
    assert sorted(seen_lengths) == sorted(train.lengths.tolist())
    assert sum(labels) == train.label.sum() and len(labels) == len(train)
    assert set(zip(labels, weights, strict=True)) == {(0.0, 0.5), (1.0, 4.0)}
    validation = [len(y) for x, y in p.dataset("validation", 32, shuffle=False)]
    assert sum(validation) == p.counts["split"]["validation"]["sessions"]


def test_batches_are_those_of_tf_data_bucket_by_sequence_length(prep):
    """Without shuffling, the NumPy batching `PrepDir.dataset` does is tf.data's
    ``bucket_by_sequence_length`` on the sessions in canonical order: the same full batches
    in the same order, then the same partial ones."""
    import tensorflow as tf

    p = PrepDir.open(prep)
    part = p.read_split("validation", baseline=False)
    bounds = length_buckets(p.spec.max_len)
    reference = tf.data.Dataset.from_generator(
        lambda: iter(zip(part.encoded, part.label.astype(np.float32), strict=True)),
        output_signature=(tf.TensorSpec((None, p.n_features), tf.float32), tf.TensorSpec((), tf.float32)))
    reference = reference.bucket_by_sequence_length(lambda x, y: tf.shape(x)[0], bounds,
                                                    [8] * (len(bounds) + 1),
                                                    padded_shapes=([None, p.n_features], []))
    want = [(x.numpy(), y.numpy()) for x, y in reference]
    got = [(x.numpy(), y.numpy()) for x, y in p.dataset("validation", 8, shuffle=False)]
    assert len(got) == len(want) > 10
    full = [i for i, (x, _) in enumerate(want) if len(x) == 8]
    for i in full:
        np.testing.assert_array_equal(got[i][0], want[i][0])
        np.testing.assert_array_equal(got[i][1], want[i][1])
    rest = sorted(len(x) for i, (x, _) in enumerate(got) if i not in full)
    assert rest == sorted(len(x) for i, (x, _) in enumerate(want) if i not in full)
