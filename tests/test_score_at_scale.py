"""Scoring at scale: every scorable session of a log through the edge runtime, in bounded
memory, locally or on Spark (local[2]); the probabilities, labels and order of `ubp-edge
score` (trainer.scoring.score_log) on the same log and artifact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import ROOT, spark_problem

from edge_runtime.errors import ArtifactError, ConfigError
from edge_runtime.scorer import Scorer
from trainer.logsource import EventLogSource
from trainer.readers import read_log
from trainer.scoring import score_log
from trainer.scoring_at_scale import OUTPUT_SCHEMA, output_format, score_at_scale
from trainer.sessions import key_digests

# The reference artifact: 17 features, categories, their target tables and user history among
# them (models/README.md).
MODEL = ROOT / "models" / "taobao-lstm128-float32.tflite"
DYNAMIC = ROOT / "models" / "taobao-lstm128-dynamic.tflite"


SPARK_PROBLEM = spark_problem()


@pytest.fixture(scope="module")
def spark():
    """One local[2] session for the module; score_at_scale finds it active and leaves it running."""
    if SPARK_PROBLEM:
        pytest.skip(SPARK_PROBLEM)
    from trainer.spark_session import spark_session

    session = spark_session("local[2]")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def dirty_log(tmp_path_factory, synthetic_log) -> Path:
    """The synthetic log with bad rows and sessions that start with their purchase."""
    path = tmp_path_factory.mktemp("score") / "log.csv"
    extra = (b"z1,1700000000,purchase,i1,c1,3.5\nz1,1700000060,view,i2,c1,3.5\n"
             b"z2,1700000000,purchase,i3,c2,1\n"
             b"z3,soon,view,i1,c1,1\nz4,1700000000,teleport,i1,c1,1\nz5,1700000000,view\n")
    path.write_bytes(synthetic_log.read_bytes() + extra)
    return path


def expected_scores(model: Path, source: EventLogSource) -> dict:
    """`ubp-edge score`'s scorable sessions, in its order: key -> (probability, label, prefix)."""
    scored = score_log(Scorer.load(model), source)
    keys = scored.sessions.key[scored.index]
    return {str(k): (p, int(y), int(n)) for k, p, y, n in
            zip(keys, scored.probability, scored.label, scored.prefix_len, strict=True)}


def read_scores(path: Path, kind: str) -> list[dict]:
    if kind == "parquet":
        table = pq.read_table(path)
        assert table.schema == OUTPUT_SCHEMA
        return table.to_pylist()
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_same_as_score(rows: list[dict], expected: dict, kind: str, threshold: float) -> None:
    assert [r["session"] for r in rows] == list(expected)  # every scorable session, in score's order
    keys = np.array([r["session"] for r in rows], object)
    assert [r["key_digest"] for r in rows] == key_digests(keys).tolist()
    probability = np.array([r["probability"] for r in rows])
    want = np.array([p for p, _, _ in expected.values()], np.float32)
    if kind == "parquet":
        np.testing.assert_array_equal(probability.astype(np.float32), want)  # the same float32 values
    else:
        np.testing.assert_array_equal(probability, np.round(want.astype(np.float64), 6))  # as score writes
    assert [r["label"] for r in rows] == [y for _, y, _ in expected.values()]
    assert [r["prefix_len"] for r in rows] == [n for _, _, n in expected.values()]
    # The model reads the whole prefix, however long, as a live session does.
    assert [r["events"] for r in rows] == [n for _, _, n in expected.values()]
    assert [r["decision"] for r in rows] == (want >= threshold).astype(int).tolist()


@pytest.mark.parametrize("engine", ["local", "spark"])
@pytest.mark.parametrize("kind", ["parquet", "jsonl"])
def test_scores_equal_ubp_edge_score_on_the_same_log(request, tmp_path, dirty_log, engine, kind):
    if engine == "spark":
        request.getfixturevalue("spark")
    source = EventLogSource(dirty_log, format="canonical")
    out = tmp_path / f"scores.{kind}"
    result = score_at_scale(MODEL, source, out, engine=engine, block_bytes=200_000, buckets=3,
                            quarantine=tmp_path / "bad.jsonl")
    expected = expected_scores(MODEL, source)
    assert result.sessions == len(expected) and result.engine == engine
    assert_same_as_score(read_scores(out, kind), expected, kind, Scorer.load(MODEL).threshold)
    # The log's counts and bad rows, as `score` counts and quarantines them.
    log = read_log(dirty_log, "canonical")
    assert result.tally.rows_read == log.rows_read and result.tally.bad_summary() == log.bad.summary()
    assert result.counts["sessions_excluded_empty_prefix"] == 2
    written = tmp_path / "expected-bad.jsonl"
    log.bad.write(written)
    assert result.quarantine.read_text() == written.read_text()


@pytest.mark.parametrize("engine", ["local", "spark"])
def test_a_log_without_user_ids_or_categories_scores_as_score_does(request, tmp_path, engine):
    # Session ids instead of users, no category column: the model's context and repeated
    # category features are zero, in both paths, and the log's sessions are kept whole.
    if engine == "spark":
        request.getfixturevalue("spark")
    path = tmp_path / "sessions.csv"
    rows = ["session,ts,event,item"]
    for s in range(60):
        for k in range(1 + s % 7):
            event = "purchase" if k == 4 and s % 3 == 0 else ["view", "cart", "view", "fav"][k % 4]
            rows.append(f"s{s},{1_700_000_000 + 3600 * s + 40 * k},{event},i{(s * k) % 11}")
    path.write_text("\n".join(rows) + "\n")
    source = EventLogSource(path, format="canonical")
    out = tmp_path / "scores.parquet"
    result = score_at_scale(DYNAMIC, source, out, engine=engine, buckets=2)
    assert_same_as_score(read_scores(out, "parquet"), expected_scores(DYNAMIC, source), "parquet",
                         Scorer.load(DYNAMIC).threshold)
    assert any("no user ids; context is zero" in w for w in result.warnings)


def test_the_output_format_comes_from_the_name_or_is_given():
    assert output_format("s.parquet") == "parquet" and output_format("s.ndjson") == "jsonl"
    assert output_format("scores.out", "jsonl") == "jsonl"
    with pytest.raises(ConfigError, match=r"--out s.csv: use a .parquet or .jsonl file name"):
        output_format("s.csv")
    with pytest.raises(ConfigError, match=r"--output-format 'xml': expected parquet or jsonl"):
        output_format("s.parquet", "xml")


def test_errors_are_one_line_before_the_log_is_read(tmp_path, synthetic_log):
    source = EventLogSource(synthetic_log, format="canonical")
    with pytest.raises(ConfigError, match=r"--engine 'hadoop': expected local or spark"):
        score_at_scale(MODEL, source, tmp_path / "s.parquet", engine="hadoop")
    with pytest.raises(ArtifactError, match=r"missing.tflite: no such artifact file"):
        score_at_scale(tmp_path / "missing.tflite", source, tmp_path / "s.parquet")
    assert not list(tmp_path.iterdir())  # nothing written, no work folder left


def test_score_cli_with_an_engine_writes_the_file_and_its_quarantine(tmp_path, dirty_log):
    from typer.testing import CliRunner

    from ubp_edge.cli import app

    out = tmp_path / "scores.parquet"
    done = CliRunner().invoke(app, ["score", "--model", str(MODEL), "--data", str(dirty_log),
                                    "--format", "canonical", "--engine", "local", "--out", str(out)])
    assert done.exit_code == 0, done.output
    expected = expected_scores(MODEL, EventLogSource(dirty_log, format="canonical"))
    assert pq.read_table(out).num_rows == len(expected)
    assert len((tmp_path / "scores.parquet.quarantine.jsonl").read_text().splitlines()) == 3
    refused = CliRunner().invoke(app, ["score", "--model", str(MODEL), "--data", str(dirty_log),
                                       "--engine", "local", "--out", str(tmp_path / "scores.csv")])
    assert refused.exit_code == 1
    assert "pass --out ending in .parquet or .jsonl, not" in refused.stderr
