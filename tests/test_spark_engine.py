"""`prepare --engine spark` and the Spark session: the same records, bad rows and content as
the local engine, on local[2]; Spark's failures as one line; a missing Java or pyspark said
in one line. One SparkSession for the module (skipped with the reason without Java 17)."""

from __future__ import annotations

import gzip
import io
import json
import os
import random
import re
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from conftest import real_file, spark_problem

from edge_runtime.errors import ConfigError, DataError
from trainer.logsource import EventLogSource
from trainer.prepare import PrepareConfig, prepare
from trainer.prepare.blocks import LogReader
from trainer.prepare.local import bucket_records, partition, shared_session_ids
from trainer.prepare.records import RecordSettings
from trainer.prepare.spark_engine import plan_pieces
from trainer.readers import read_log
from trainer.spark_session import (
    SparkJobError,
    check_spark,
    worker_exception,
)

needs_java = pytest.mark.skipif(spark_problem() is not None, reason=str(spark_problem()))


@pytest.fixture(scope="module")
def spark():
    """One local[2] session for the module; the engines find it active and leave it running."""
    pytest.importorskip("pyspark", reason="pyspark is not installed (the [spark] extra)")
    from trainer.spark_session import spark_session

    session = spark_session("local[2]")
    yield session
    session.stop()


# --------------------------------------------------------------------------- the session

@needs_java
def test_the_session_is_local_quiet_and_small(spark):
    conf = spark.sparkContext.getConf()
    assert spark.sparkContext.master == "local[2]"
    assert conf.get("spark.ui.enabled") == "false" and conf.get("spark.ui.showConsoleProgress") == "false"
    assert conf.get("spark.sql.execution.arrow.pyspark.enabled") == "true"
    assert spark.conf.get("spark.sql.shuffle.partitions") == "4"
    assert "log4j2.configurationFile" in conf.get("spark.driver.extraJavaOptions")


@pytest.fixture
def by_value():
    """Functions of this module travel to Spark's workers by value (tests/ is not on their path)."""
    import sys

    from pyspark import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def _data_error(_rows):
    raise DataError("log.csv:12: bad row (bad_timestamp): column ts: 'abc'")


def _bug(_rows):
    raise ValueError("boom\nsecond line")


def _arrow_data_error(_table):
    raise DataError("log.csv:3: bad row (unknown_event)")


@needs_java
@pytest.mark.parametrize("job, error, message", [
    (lambda s: s.sparkContext.parallelize(range(4), 2).mapPartitions(_data_error).collect(), DataError,
     "log.csv:12: bad row (bad_timestamp): column ts: 'abc'"),
    (lambda s: s.range(4).groupBy("id").applyInArrow(_arrow_data_error, "id long").collect(), DataError,
     "log.csv:3: bad row (unknown_event)"),
    (lambda s: s.sparkContext.parallelize(range(4), 2).mapPartitions(_bug).collect(), SparkJobError,
     "prepare failed in a Spark task: ValueError: boom"),
    (lambda s: s.read.parquet("/nonexistent/events").collect(), SparkJobError,
     "prepare: [PATH_NOT_FOUND] Path does not exist: file:/nonexistent/events."),
])
def test_a_failed_spark_job_is_one_line_without_a_jvm_stack_trace(spark, by_value, capfd, job, error,
                                                                  message):
    from trainer.spark_session import spark_errors

    with pytest.raises(error) as caught, spark_errors("prepare"):
        job(spark)
    text = str(caught.value)
    assert text.startswith(message) and "\n" not in text
    assert "Traceback" not in text and "\tat " not in text
    captured = capfd.readouterr()
    assert "at org.apache" not in captured.err and "ERROR" not in captured.err


def test_a_missing_java_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    with pytest.raises(ConfigError) as caught:
        check_spark()
    assert str(caught.value) == "--engine spark needs Java 17 (java not found on PATH)"


def test_an_old_java_is_one_line(monkeypatch, tmp_path):
    java = tmp_path / "java"
    java.write_text("#!/bin/sh\necho 'openjdk version \"11.0.20\" 2023-07-18' >&2\n")
    java.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    with pytest.raises(ConfigError, match=rf"needs Java 17 or newer, found Java 11 at {java}$"):
        check_spark()


def test_a_missing_pyspark_names_the_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "pyspark" else real(name, *a))
    with pytest.raises(ConfigError) as caught:
        check_spark()
    assert str(caught.value) == ("--engine spark needs pyspark, the [spark] extra, which is not installed: "
                                 "pip install 'ubp-edge[spark]'")


@needs_java
@pytest.mark.parametrize("master", ["yarn-cluster", "local[two]", "spark://"])
def test_a_master_spark_does_not_know_is_refused_before_it_starts(master):
    from trainer.spark_session import spark_session

    with pytest.raises(ConfigError, match=r"--spark-master .*: expected local\[N\]"):
        spark_session(master)


def test_the_worker_exception_is_read_from_the_traceback_spark_passes_on():
    text = ("org.apache.spark.api.python.PythonException: Traceback (most recent call last):\n"
            "  File \"worker.py\", line 1, in main\n    process()\n"
            "KeyError: 'x'\n\nDuring handling of the above exception, another exception occurred:\n\n"
            "Traceback (most recent call last):\n  File \"engine.py\", line 9, in task\n"
            "    raise DataError(msg)\n"
            "edge_runtime.errors.DataError: log.csv:7: bad row (bad_price)\n\n"
            "\tat org.apache.spark.api.python.BasePythonRunner.handlePythonException(PythonRunner.scala)\n")
    assert worker_exception(text) == ("edge_runtime.errors.DataError", "log.csv:7: bad row (bad_price)")
    assert worker_exception("java.lang.OutOfMemoryError: Java heap space") is None


def test_only_the_projects_errors_come_back_as_themselves():
    from trainer.files import OutputError
    from trainer.spark_session import project_error_class

    assert project_error_class("edge_runtime.errors.ConfigError") is ConfigError
    assert project_error_class("trainer.files.OutputError") is OutputError
    for other in ("builtins.ValueError", "ValueError", "trainer.nowhere.DataError", "trainer.files.Path",
                  "pyarrow.lib.ArrowInvalid"):
        assert project_error_class(other) is None, other


# --------------------------------------------------------------------------- record boundaries

def _reference_start(text: bytes, at: int, quoted: bool) -> tuple[int, int]:
    """Brute force: the first offset >= at just after a line end with an even number of
    quotes before it (the local engine's cut rule), and the line ends skipped to reach it."""
    for p in range(max(at, 1), len(text) + 1):
        if text[p - 1:p] == b"\n" and (not quoted or text.count(b'"', 0, p - 1) % 2 == 0):
            return p, text.count(b"\n", at, p)
    return len(text), text.count(b"\n", at)


@pytest.mark.parametrize("quoted", [True, False])
def test_each_range_starts_where_the_local_engine_may_cut(monkeypatch, quoted):
    from trainer.prepare import spark_engine

    monkeypatch.setattr(spark_engine, "SCAN_CHUNK", 7)  # parities carried across chunk ends
    rng = random.Random(5)
    for _ in range(200):
        text = bytes(rng.choice(b'ab,"\n\n') for _ in range(rng.randrange(1, 60)))
        for at in range(1, len(text) + 1):
            parity = text.count(b'"', 0, at) % 2 if quoted else 0
            got = spark_engine.record_start(io.BytesIO(text), at, parity, quoted, len(text))
            assert got == _reference_start(text, at, quoted), (text, at)


# --------------------------------------------------------------------------- the engine

def _local_records(path: Path, fmt: str | None, folder: Path, **settings):
    """The local engine's records (sorted by key), tally, counts and quarantine text."""
    config = PrepareConfig(source=EventLogSource(path, format=fmt), out=str(folder / "unused"), **settings)
    reader = LogReader(config.source)
    quarantine = folder / "local-quarantine.jsonl"
    buckets, tally = partition(reader, folder / "buckets", quarantine, 3, config.block_bytes)
    shared = shared_session_ids(buckets) if tally.log_sessions else frozenset()
    records = folder / "local-records.parquet"
    settings = RecordSettings.for_log(tally, config.gap_minutes, config.max_len, config.use_context,
                                      reader.preset.utc_offset_hours, shared)
    counts = bucket_records(buckets, settings, records)
    return (pq.read_table(records).sort_by("key"), tally, counts,
            quarantine.read_text() if quarantine.exists() else "")


def _spark_records(path: Path, fmt: str | None, folder: Path, **settings):
    from trainer.prepare.spark_engine import spark_records

    config = PrepareConfig(source=EventLogSource(path, format=fmt), out=str(folder / "unused"),
                           engine="spark", **settings)
    quarantine = folder / "spark-quarantine.jsonl"
    files, tally, counts = spark_records(LogReader(config.source), config, folder / "spark", quarantine,
                                         lambda _what: None)
    table = pa.concat_tables([pq.read_table(f) for f in files]).sort_by("key")
    return table, tally, counts, quarantine.read_text() if quarantine.exists() else ""


def assert_same_records(path: Path, fmt: str | None, folder: Path, **settings) -> None:
    local, local_tally, local_counts, local_bad = _local_records(path, fmt, folder, **settings)
    spark, spark_tally, spark_counts, spark_bad = _spark_records(path, fmt, folder, buckets=5, **settings)
    assert spark.num_rows == local.num_rows > 0
    for name in local.column_names:  # keys, digests, starts, labels, prefixes, raw features, baseline
        assert spark.column(name).equals(local.column(name)), name
    assert spark_counts == local_counts
    for field in ("rows_read", "events", "bad", "has_category", "has_price", "has_user_ids", "log_sessions"):
        assert getattr(spark_tally, field) == getattr(local_tally, field), field
    assert spark_bad == local_bad


@needs_java
def test_records_equal_the_local_engines_sorted_by_key(spark, tmp_path, synthetic_log):
    # 200 kB ranges: the 600 kB log is validated by a few tasks.
    assert_same_records(synthetic_log, "canonical", tmp_path, block_bytes=200_000)


# A canonical CSV that is hard to cut: CRLF line ends, long quoted values over two lines with
# commas (a fifth of the text), quotes inside quotes, and one bad row of each kind.
def _dirty_log() -> bytes:
    rows = [b"user,ts,event,item,category,price\r\n"]
    for i in range(600):
        category = b'"c%d\r\nsecond line, with a comma%s"' % (i % 3, b", more" * 60) if i % 37 == 0 else \
            b'"c ""%d"""' % (i % 4) if i % 11 == 0 else b"c%d" % (i % 5)
        rows.append(b"u%d,%d,%s,i%d,%s,%d.25\r\n" % (i % 13, 1_700_000_000 + 97 * i,
                                                   [b"view", b"cart", b"view", b"fav", b"purchase"][i % 5],
                                                   i % 17, category, i % 7))
    rows[100] = b"u1,yesterday,view,i1,c1,1\r\n"
    rows[200] = b"u3,1700000000,view\r\n"
    rows[300] = b"\r\n"
    rows[400] = b"u4,1700000000,teleport,i1,c1,1\r\n"
    rows[500] = b"u5,1700000000,view,i1,c\xff1,2\r\n"
    rows[550] = b"u6,1700000000,view,i1,c1,-3\r\n"
    return b"".join(rows)


@needs_java
def test_bad_rows_are_counted_and_quarantined_as_read_log_does(spark, tmp_path):
    path = tmp_path / "dirty.csv"
    path.write_bytes(_dirty_log())
    log = read_log(path, "canonical")
    assert log.bad.total == 6
    # 5 kB ranges, some of which start inside a quoted value that spans two lines.
    reader = LogReader(EventLogSource(path, format="canonical"))
    _, pieces = plan_pieces(spark, reader, tmp_path / "plan", 5_000)
    assert len(pieces) > 4 and any(piece.quote_parity for piece in pieces)
    assert_same_records(path, "canonical", tmp_path, block_bytes=5_000)
    quarantine = (tmp_path / "spark-quarantine.jsonl").read_text()
    expected = tmp_path / "expected.jsonl"
    log.bad.write(expected)
    assert quarantine == expected.read_text()


@needs_java
@pytest.mark.parametrize("kind", ["jsonl", "parquet", "gzip"])
def test_json_lines_parquet_and_gzip_logs_give_the_local_records(spark, tmp_path, synthetic_log, kind):
    table = pacsv.read_csv(synthetic_log, convert_options=pacsv.ConvertOptions(
        column_types={"user": pa.string(), "item": pa.string(), "category": pa.string()}))
    if kind == "jsonl":
        path = tmp_path / "log.jsonl"
        with open(path, "w") as f:
            for row in table.to_pylist():
                f.write(json.dumps(row) + "\n")
            f.write('{"user": "u1", "ts": "soon", "event": "view", "item": "i1"}\n{not json\n')
    elif kind == "parquet":
        path = tmp_path / "log.parquet"
        pq.write_table(table, path, row_group_size=3000)
    else:
        path = tmp_path / "log.csv.gz"
        path.write_bytes(gzip.compress(synthetic_log.read_bytes()))
    assert_same_records(path, None, tmp_path, block_bytes=400_000)


@needs_java
def test_strict_names_the_first_bad_row_of_the_file(spark, tmp_path):
    path = tmp_path / "dirty.csv"
    path.write_bytes(_dirty_log())
    first = read_log(path, "canonical").bad.first_message()
    assert first.startswith(f"{path}:104: bad row (bad_timestamp)")  # 3 quoted values span 2 lines
    with pytest.raises(DataError, match=rf"^{re.escape(first)} \(6 bad rows; --strict\)$"):
        prepare(PrepareConfig(source=EventLogSource(path, format="canonical", strict=True),
                              out=str(tmp_path / "prep"), engine="spark", block_bytes=20_000))
    assert not (tmp_path / "prep").exists()


@needs_java
def test_a_log_without_valid_rows_is_the_same_one_line(spark, tmp_path):
    path = tmp_path / "log.csv"
    path.write_bytes(b"user,ts,event,item\nu1,x,view,i\nu2,y,view,i\n")
    with pytest.raises(DataError, match=r"none of its 2 rows parse as canonical; first: .*log.csv:2: "):
        prepare(PrepareConfig(source=EventLogSource(path, format="canonical"), out=str(tmp_path / "p"),
                              engine="spark"))


@needs_java
def test_a_pipe_is_refused_as_spark_tasks_cannot_read_it(spark, tmp_path, synthetic_log):
    fifo = tmp_path / "log.fifo"
    os.mkfifo(fifo)
    # A reader that never reads holds the pipe open, so the writer is connected before
    # `prepare` opens it (as a shell's `<(zcat log.gz)` is).
    idle = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)

    def write() -> None:
        with open(fifo, "wb") as f:
            try:
                f.write(synthetic_log.read_bytes())
            except BrokenPipeError:
                pass

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        with pytest.raises(ConfigError, match="not a pipe; use --engine local"):
            prepare(PrepareConfig(source=EventLogSource(fifo, format="canonical"), out=str(tmp_path / "p"),
                                  engine="spark"))
    finally:
        os.close(idle)
        writer.join(timeout=10)


def test_a_log_that_changes_while_read_is_refused(tmp_path, synthetic_log):
    from trainer.prepare.spark_engine import Piece, ReadPlan, validate_piece

    reader = LogReader(EventLogSource(synthetic_log, format="canonical"))
    plan = ReadPlan(reader.source, reader.preset, reader.kind, synthetic_log.stat().st_size - 1, 0, 1, True,
                    str(tmp_path))
    with pytest.raises(DataError, match="changed while it was being read"):
        validate_piece(plan, Piece(0, 0, 100))


@needs_java
@pytest.mark.real_data
@pytest.mark.parametrize("relative, fmt, block", [
    ("rees46/2019-Oct_head.csv", "rees46", 1_200_000),          # user ids and session ids
    ("otto/train_sample.jsonl", "otto", 15_000),                 # a session of events per line
    ("diginetica/sample_train-item-views.csv", "diginetica", 0),  # side files: one task, whole
])
def test_real_logs_with_session_ids_give_the_local_records(spark, tmp_path, relative, fmt, block):
    settings = {"block_bytes": block} if block else {}
    assert_same_records(real_file(relative), fmt, tmp_path, **settings)


@needs_java
@pytest.mark.real_data
def test_the_taobao_sample_prepares_to_the_local_engines_content(spark, tmp_path):
    path = real_file("taobao/UserBehavior_sample.csv")
    source = EventLogSource(path, format="taobao")
    local = prepare(PrepareConfig(source=source, out=str(tmp_path / "local")))
    on_spark = prepare(PrepareConfig(source=source, out=str(tmp_path / "spark"), engine="spark",
                                     block_bytes=400_000))
    assert on_spark["content_digest"] == local["content_digest"]
    assert on_spark["engine"] == "spark"
    for key in ("counts", "feature_spec", "split_rule", "time_span_utc", "has_user_ids", "input"):
        assert on_spark[key] == local[key], key
