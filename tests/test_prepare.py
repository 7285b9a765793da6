"""`prepare`, local engine: the same sessions, labels, split and features as the in-memory
path, bit for bit, whatever the buckets, blocks and shards; the same bad-row accounting; no
partial PREP_DIR after a kill."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from conftest import ROOT, real_file

from edge_runtime.errors import ConfigError, DataError, RunDirError
from edge_runtime.features import TARGET_FEATURES, FeatureEncoder, FeatureSpec, id_digests
from edge_runtime.target_stats import TargetTable
from trainer.dataset import aggregate_features, encode_sessions, new_encoder, raw_sessions
from trainer.logsource import EventLogSource
from trainer.prepare import MANIFEST, QUARANTINE, PrepareConfig, prepare
from trainer.prepare.targets import FOLDS
from trainer.prepdir import PrepDir
from trainer.readers import read_log
from trainer.rundir import SPLIT_NAMES, stage_dir
from trainer.sessions import key_digests, sessionize, time_split


def reference_tables(sessions, split, fields, key, max_len):
    """The target tables learned the slow, obvious way: for every training session, the set
    of ids among its encoded events; counts per id and fold; TargetTable.build (a fold's
    table: the rate without that fold, the entries and popularity of all the other
    sessions). Returns
    (shipped tables, tables by fold) for ``fields``, with the preparation's ``key``."""
    log = sessions.log
    digests = key_digests(sessions.key[split.train])
    fold = [int(d[:8], 16) % FOLDS for d in digests]
    shipped, by_fold = [], [[] for _ in range(FOLDS)]
    base = sessions.label[split.train].mean()
    for field in fields:
        ids = getattr(log, field)
        count: dict[str, np.ndarray] = {}
        for s, f in zip(split.train, fold, strict=True):
            events = sessions.prefix_events(s)[-max_len:]
            for name in set(ids.values(events)) - {""}:
                count.setdefault(name, np.zeros((FOLDS, 2)))[f] += (1, sessions.label[s])
        names = sorted(count)
        per = np.array([count[n] for n in names]).reshape(-1, FOLDS, 2)
        shipped.append(TargetTable.build(field, key, id_digests(names), per[:, :, 0].sum(1),
                                         per[:, :, 1].sum(1), base))
        for f in range(FOLDS):
            # The rate without fold f's labels; entries and popularity of the other sessions
            # (a training session looks up only ids it touched: total - 1).
            rest = np.delete(per, f, axis=1).sum(1)
            by_fold[f].append(TargetTable.build(field, key, id_digests(names), per[:, :, 0].sum(1) - 1,
                                                per[:, :, 1].sum(1), base,
                                                rate_counts=(rest[:, 0], rest[:, 1])))
    return tuple(shipped), by_fold


def in_memory(path: Path, fmt: str, max_len: int = 50, spec: FeatureSpec | None = None):
    """Today's in-memory preparation (what `train` did before the model), per split:
    (key digests, labels, encoded sessions, baseline counts), and the encoder. With a
    prepared ``spec`` that has target tables, the same fields' tables are learned here by
    `reference_tables`, and each training session is encoded with its fold's."""
    log = read_log(path, fmt)
    sessions = sessionize(log)
    split = time_split(sessions)
    encoder = new_encoder(sessions, max_len, True)
    fold_encoders = None
    if spec is not None and spec.tables:
        fields = [t.field for t in spec.tables]
        shipped, by_fold = reference_tables(sessions, split, fields, spec.tables[0].key, max_len)

        features = encoder.features + tuple(f for f in TARGET_FEATURES if f.split("_")[0] in fields)

        def with_tables(tables):
            return FeatureEncoder(features, encoder.utc_offset_hours, max_len, tables=tables)
        encoder = with_tables(shipped)
        fold_encoders = [with_tables(t) for t in by_fold]
        folds = [int(d[:8], 16) % FOLDS for d in key_digests(sessions.key[split.train])]
        train_raw = [raw_sessions(sessions, [s], fold_encoders[f], window=max_len)[0]
                     for s, f in zip(split.train, folds, strict=True)]
    else:
        train_raw = raw_sessions(sessions, split.train, encoder, window=max_len)
    encoder.fit(np.concatenate(train_raw))
    parts = {name: (key_digests(sessions.key[ix]), sessions.label[ix],
                    [encoder.normalise(r) for r in train_raw] if name == "train" and fold_encoders
                    else encode_sessions(sessions, ix, encoder, window=max_len),
                    aggregate_features(sessions, ix)[0])
             for name, ix in split.parts().items()}
    return parts, encoder, log, split


def prepared(path: Path, out: Path, fmt: str | None, **settings) -> PrepDir:
    prepare(PrepareConfig(source=EventLogSource(path, format=fmt), out=str(out), **settings))
    return PrepDir.open(out)


def assert_same_as_in_memory(prep: PrepDir, path: Path, fmt: str) -> None:
    parts, encoder, log, split = in_memory(path, fmt, spec=prep.spec)
    assert prep.spec.to_dict() == encoder.spec().to_dict()
    for name in SPLIT_NAMES:
        digests, labels, encoded, baseline = parts[name]
        rows = prep.read_split(name)
        np.testing.assert_array_equal(rows.key_digest, digests)
        np.testing.assert_array_equal(rows.label, labels)
        assert len(rows.encoded) == len(encoded)
        for a, b in zip(rows.encoded, encoded, strict=True):
            np.testing.assert_array_equal(a, b)  # bit for bit: equal float32 values
        np.testing.assert_array_equal(rows.baseline, baseline)
    m = prep.manifest
    assert m["counts"]["events"] == len(log) and m["counts"]["rows_read"] == log.rows_read
    assert m["counts"]["bad_rows"] == log.bad.summary()
    assert m["split_rule"]["validation_from_ts"] == split.validation_from
    assert m["split_rule"]["test_from_ts"] == split.test_from


@pytest.mark.real_data
def test_taobao_sample_is_prepared_bit_for_bit_as_in_memory(tmp_path):
    path = real_file("taobao/UserBehavior_sample.csv")
    one = prepared(path, tmp_path / "one", "taobao", buckets=1)
    assert_same_as_in_memory(one, path, "taobao")
    # Seven buckets, small blocks and three shards: another layout, the same content.
    many = prepared(path, tmp_path / "many", "taobao", buckets=7, block_bytes=300_000, shards=3)
    assert len(many.manifest["shards"]) == 3
    assert many.content_digest == one.content_digest
    assert many.recompute_content_digest() == one.content_digest


@pytest.mark.real_data
@pytest.mark.parametrize("relative, fmt", [("rees46/2019-Oct_head.csv", "rees46"),
                                           ("diginetica/sample_train-item-views.csv", "diginetica"),
                                           ("otto/train_sample.jsonl", "otto")])
def test_real_logs_with_session_ids_are_prepared_as_in_memory(tmp_path, relative, fmt):
    path = real_file(relative)
    assert_same_as_in_memory(prepared(path, tmp_path / "prep", fmt, buckets=3), path, fmt)


def test_synthetic_log_is_prepared_as_in_memory_in_any_layout(tmp_path, synthetic_log):
    one = prepared(synthetic_log, tmp_path / "one", "canonical", buckets=1)
    assert_same_as_in_memory(one, synthetic_log, "canonical")
    many = prepared(synthetic_log, tmp_path / "many", "canonical", buckets=5, block_bytes=50_000)
    assert many.content_digest == one.content_digest


def test_gzip_and_parquet_copies_of_a_log_prepare_to_the_same_content(tmp_path, synthetic_log):
    plain = prepared(synthetic_log, tmp_path / "plain", "canonical")
    packed = tmp_path / "log.csv.gz"
    packed.write_bytes(gzip.compress(synthetic_log.read_bytes()))
    as_parquet = tmp_path / "log.parquet"
    table = pacsv.read_csv(synthetic_log, convert_options=pacsv.ConvertOptions(
        column_types={"user": pa.string(), "item": pa.string(), "category": pa.string()}))
    pq.write_table(table, as_parquet, row_group_size=3000)
    assert prepared(packed, tmp_path / "gz", "canonical").content_digest == plain.content_digest
    assert prepared(as_parquet, tmp_path / "pq", None).content_digest == plain.content_digest


DIRTY = (b"user,ts,event,item,category,price\n"
         + b"".join(b"u%d,%d,%s,i%d,c%d,%d.5\n" % (i % 7, 1_700_000_000 + 61 * i,
                                                   [b"view", b"cart", b"view", b"purchase"][i % 4],
                                                   i % 5, i % 3, i % 9) for i in range(400))
         + b"u1,yesterday,view,i1,c1,1\n"
         + b'u2,1700000000,view,"two\nlines",c1,1\n'
         + b"u3,1700000000,view\n"
         + b"\n"
         + b"u4,1700000000,teleport,i1,c1,1\n"
         + b"u5,1700000000,view,i1,c1,-3\n"
         + b"".join(b"u%d,%d,view,i%d,c1,2\n" % (i % 4, 1_700_100_000 + 17 * i, i % 6) for i in range(200)))


def test_bad_rows_are_counted_and_quarantined_as_read_log_does(tmp_path):
    path = tmp_path / "dirty.csv"
    path.write_bytes(DIRTY)
    prep = prepared(path, tmp_path / "prep", "canonical", block_bytes=2_000)
    log = read_log(path, "canonical")
    assert prep.manifest["counts"]["bad_rows"] == log.bad.summary()
    assert log.bad.total == 5  # the quoted value over two lines is a good row
    expected = tmp_path / "expected.jsonl"
    log.bad.write(expected)
    assert (tmp_path / "prep" / QUARANTINE).read_text() == expected.read_text()
    assert_same_as_in_memory(prep, path, "canonical")


def test_strict_stops_at_the_first_bad_row_naming_file_and_line(tmp_path):
    path = tmp_path / "dirty.csv"
    path.write_bytes(DIRTY)
    with pytest.raises(DataError, match=rf"{path}:402: bad row \(bad_timestamp\)"):
        prepare(PrepareConfig(source=EventLogSource(path, format="canonical", strict=True),
                              out=str(tmp_path / "prep")))
    assert not (tmp_path / "prep").exists() and not stage_dir(tmp_path / "prep").exists()


@pytest.mark.parametrize("text, message", [
    (b"user,ts,event,item\n", "no data rows, only a header"),
    (b"user,ts,event,item\nu1,x,view,i\nu2,y,view,i\n", "none of its 2 rows parse as canonical; first: "),
    (b"\n\n", "empty file"),
])
def test_a_log_without_valid_rows_is_one_line(tmp_path, text, message):
    path = tmp_path / "log.csv"
    path.write_bytes(text)
    with pytest.raises(DataError, match=message):
        prepare(PrepareConfig(source=EventLogSource(path, format="canonical"), out=str(tmp_path / "p")))
    with pytest.raises(DataError, match=message):
        read_log(path, "canonical")  # the same verdict as the in-memory reader


def test_settings_are_checked_together(tmp_path):
    expected = r"--engine 'hadoop'.*--shards must be.*--validation 0.6 and --test 0.5"
    with pytest.raises(ConfigError, match=expected):
        PrepareConfig(source=EventLogSource(tmp_path / "x.csv"), out="p", engine="hadoop", shards=0,
                      validation=0.6, test=0.5)


def test_an_existing_prep_dir_needs_overwrite_and_other_folders_are_never_replaced(tmp_path, synthetic_log):
    out = tmp_path / "prep"
    prepared(synthetic_log, out, "canonical")
    with pytest.raises(RunDirError, match="--overwrite"):
        prepared(synthetic_log, out, "canonical")
    prepared(synthetic_log, out, "canonical", overwrite=True)
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"x")
    with pytest.raises(RunDirError, match=r"not a prepared log \(no manifest.json\)"):
        prepared(synthetic_log, other, "canonical", overwrite=True)


def test_a_killed_prepare_leaves_no_prep_dir_and_runs_again(tmp_path, synthetic_log):
    big = tmp_path / "big.csv"
    lines = synthetic_log.read_bytes().split(b"\n")
    header, rows = lines[0], [r for r in lines[1:] if r]
    # Twenty copies of the log under other user ids: long enough to be killed mid-way.
    big.write_bytes(b"\n".join([header] + [r.replace(b"u", b"c%du" % k, 1) for k in range(20)
                                           for r in rows]) + b"\n")
    out = tmp_path / "prep"
    command = [sys.executable, "-m", "ubp_edge.cli", "prepare", "--data", str(big), "--format",
               "canonical", "--out", str(out)]
    child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (stage_dir(out) / "work").exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert child.poll() is None, "prepare ended before it could be killed"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert not out.exists()  # only the stage beside it, which the next run starts afresh
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["counts"]["events"] == 20 * len(rows)
    assert not stage_dir(out).exists()
