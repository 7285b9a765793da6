"""`ubp-edge benchmark` (the CLI over `benchmarks.suite`): stable JSON, every figure present
where it applies, report files.

Figures are measured, never asserted against a time: only their presence and sanity."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from benchmarks.columns import ROW_KEYS

pytestmark = pytest.mark.slow
OURS = ("size_bytes", "cold_start_ms", "rss_mb", "rss_live_mb", "session_p50_us", "session_p95_us",
        "session_p99_us", "session1_p50_us", "session10_p50_us", "session50_p50_us",
        "event_p50_us", "event_p95_us", "event_p99_us", "step_invoke_p50_us", "sessions_per_s",
        "batch64_sessions_per_s", "batch256_sessions_per_s")
BATCH = ("batch64_sessions_per_s", "batch256_sessions_per_s")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ubp_edge.cli", "benchmark", *args],
                          capture_output=True, text=True, timeout=900)


def test_benchmark_json_has_every_figure_for_every_artifact(tmp_path, tiny_run):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    done = _run(str(run), "--runs", "60", "--live-sessions", "300", "--json",
                "--report", str(tmp_path / "report"))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert set(result) == {"machine", "threads", "sessions", "rows"}
    assert {"cpu", "cores", "python", "numpy", "ai_edge_litert"} <= set(result["machine"])
    [row] = result["rows"]
    assert tuple(row) == ROW_KEYS
    assert (row["engine"], row["precision"], row["graph"], row["status"]) == (
        "ubp-edge", "float32", "fused", "ok")
    for key in OURS:
        assert isinstance(row[key], (int, float)) and row[key] > 0, key
    assert row["session_p50_us"] <= row["session_p95_us"] <= row["session_p99_us"]
    assert row["ratio_to_best"]["session_p50_us"] == pytest.approx(1.0)
    assert row["ratio_to_best"]["batch256_sessions_per_s"] == pytest.approx(1.0)
    md = (tmp_path / "report" / "benchmark.md").read_text()
    assert "| ubp-edge | float32 | fused |" in md and "latency_cdf.png" in md
    assert "| step invoke p50 (us) | sessions/s | batch 64 sessions/s | batch 256 sessions/s |" in md
    png = (tmp_path / "report" / "latency_cdf.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_benchmark_peers_rows_are_null_where_a_figure_does_not_apply(tmp_path, tiny_run):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    done = _run(str(run / "model-float32.tflite"), "--peers", "--runs", "30", "--live-sessions", "100",
                "--json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)["rows"]
    peers = [r for r in rows if r["engine"] != "ubp-edge"]
    assert {(r["engine"], r["precision"]) for r in peers} >= {("numpy", "float32"),
                                                              ("keras-function", "float32")}
    for r in peers:
        assert tuple(r) == ROW_KEYS
        if r["status"] == "ok":
            assert r["session_p50_us"] > 0 and r["sessions_per_s"] > 0
            assert all(r[key] > 0 and r["ratio_to_best"][key] > 0 for key in BATCH), r
            assert r["cold_start_ms"] is None and r["event_p50_us"] is None and r["rss_live_mb"] is None
            assert r["step_invoke_p50_us"] is None
            assert r["ratio_to_best"]["session_p50_us"] > 0


def test_benchmark_errors_are_one_line(tmp_path):
    done = _run(str(tmp_path / "nothing"))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().startswith("error:") and "nothing" in done.stderr
    (tmp_path / "empty").mkdir()
    done = _run(str(tmp_path / "empty"))
    assert done.returncode == 1 and "no model-*.tflite" in done.stderr
