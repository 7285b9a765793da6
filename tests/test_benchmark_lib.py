"""The benchmark library (`benchmarks.*`, `edge_runtime.probes`): the column table, the
rendering, the request's checks, the sessions, and one small run on the tiny model.

Figures are measured, never asserted against a time: only their presence and sanity."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from benchmarks.columns import COLUMNS, ROW_KEYS
from benchmarks.floor import lstm_multiply_adds, measure_floor
from benchmarks.measure import Effort
from benchmarks.report import markdown, terminal_table, write_report
from benchmarks.sessions import consecutive_batches, fixed_length_sessions, synthetic_sessions
from benchmarks.suite import (
    RATIO_KEYS,
    BenchmarkRequest,
    BenchmarkResult,
    add_ratios,
    check_peer_weights,
    find_artifacts,
    run_benchmark,
)
from edge_runtime.errors import ConfigError, RunDirError
from edge_runtime.events import EVENT_CODE
from edge_runtime.probes import probe_command, rss_mb

MACHINE = {"cpu": "Test CPU", "cores": 2, "system": "Linux-test", "python": "3.11.7",
           "numpy": "2.4.6", "ai_edge_litert": "2.3.0", "machine": "x86_64"}


def _row(**values) -> dict:
    row = dict.fromkeys(ROW_KEYS)
    row.update(values)
    return row


def _result() -> BenchmarkResult:
    ok = _row(engine="ubp-edge", precision="float32", graph="fused", status="ok", size_bytes=614_400,
              cold_start_ms=75.61, rss_mb=46.7, rss_live_mb=74.72, session_p50_us=44.71,
              session_p95_us=120.0, session_p99_us=371.94, session1_p50_us=20.0, session10_p50_us=90.0,
              session50_p50_us=404.5, event_p50_us=11.93, event_p95_us=14.0, event_p99_us=16.9,
              step_invoke_p50_us=5.26, sessions_per_s=14676.4, batch64_sessions_per_s=30120.7,
              batch256_sessions_per_s=41000.2)
    peer = _row(engine="numpy", precision="float32", status="ok", session_p50_us=59.1,
                session50_p50_us=706.4, sessions_per_s=10274.0, batch64_sessions_per_s=20500.0,
                batch256_sessions_per_s=82000.4)
    failed_artifact = _row(engine="ubp-edge", status="failed", size_bytes=2048, reason="bad artifact")
    failed_peer = _row(engine="onnxruntime", precision="dynamic", status="failed",
                       reason="OSError: no onnxruntime")
    rows = [ok, peer, failed_artifact, failed_peer]
    add_ratios(rows)
    return BenchmarkResult(machine=MACHINE, threads=1, sessions="3,000 replayed from x.csv", rows=rows,
                           samples={"ubp-edge float32": [1.0, 2.0]}, live_sessions=10_000)


def test_the_column_table_describes_every_row_key_once():
    assert ROW_KEYS == ("engine", "precision", "graph", "status", "reason", "size_bytes",
                        "cold_start_ms", "rss_mb", "rss_live_mb", "session_p50_us", "session_p95_us",
                        "session_p99_us", "session1_p50_us", "session10_p50_us", "session50_p50_us",
                        "event_p50_us", "event_p95_us", "event_p99_us", "step_invoke_p50_us",
                        "sessions_per_s", "batch64_sessions_per_s", "batch256_sessions_per_s",
                        "ratio_to_best")
    assert len(set(ROW_KEYS)) == len(COLUMNS)
    assert all(c.description for c in COLUMNS)
    assert set(RATIO_KEYS) <= set(ROW_KEYS)
    assert {"batch64_sessions_per_s", "batch256_sessions_per_s"} <= set(RATIO_KEYS)


def test_terminal_table_headers_cells_and_failed_rows():
    title, headers, rows = terminal_table(_result())
    assert title == "Test CPU (2 cores), 1 thread(s); sessions: 3,000 replayed from x.csv"
    assert headers == [("engine", "left"), ("precision", "left"), ("graph", "left"), ("KB", "right"),
                       ("cold ms", "right"), ("RSS MB", "right"), ("10,000 live MB", "right"),
                       ("sess p50", "right"), ("sess p99", "right"), ("50ev p50", "right"),
                       ("event p50", "right"), ("event p99", "right"), ("invoke p50", "right"),
                       ("sess/s", "right"), ("b64/s", "right"), ("b256/s", "right")]
    assert rows[0] == ["ubp-edge", "float32", "fused", "600", "75.6", "46.7", "74.7", "44.7", "371.9",
                       "404.5", "11.9", "16.9", "5.3", "14,676", "30,121", "41,000"]
    assert rows[1][:4] == ["numpy", "float32", "", ""]
    assert rows[1][-4:] == ["", "10,274", "20,500", "82,000"]
    assert rows[2][3] == "2" and rows[3][3] == "failed"  # a failed row without a size says so


def test_markdown_report_headers_cells_and_failed_rows():
    lines = markdown(_result()).splitlines()
    header = lines.index(next(line for line in lines if line.startswith("| engine")))
    assert lines[header] == (
        "| engine | precision | graph | size (KiB) | cold start (ms) | RSS (MB) | RSS, 10k live (MB) | "
        "session p50 (us) | p95 | p99 | 1 ev p50 | 10 ev p50 | 50 ev p50 | live event p50 (us) | "
        "event p99 | step invoke p50 (us) | sessions/s | batch 64 sessions/s | batch 256 sessions/s | "
        "ratio to best ubp-edge (session p50, 50 ev p50, sessions/s, batch 64, batch 256) |")
    assert lines[header + 1] == "|" + "---|" * 20
    assert lines[header + 2] == ("| ubp-edge | float32 | fused | 600.0 | 75.6 | 46.7 | 74.7 | 44.7 | 120.0 | "
                                 "371.9 | 20.0 | 90.0 | 404.5 | 11.9 | 16.9 | 5.3 | 14,676 | 30,121 | "
                                 "41,000 | 1.00, 1.00, 1.00, 1.00, 1.00 |")
    assert lines[header + 3].endswith(" | 10,274 | 20,500 | 82,000 | 1.32, 1.75, 0.70, 0.68, 2.00 |")
    assert "| failed: bad artifact |" in lines[header + 4]
    assert lines[header + 5].startswith("| onnxruntime | dynamic |  | failed: OSError: no onnxruntime |")
    assert lines[header + 5].endswith(" |  |")
    assert "Machine: Test CPU, 2 cores, Linux-test; Python 3.11.7" in lines[2]


def test_ratios_are_against_the_best_ok_ubp_edge_row():
    rows = _result().rows
    assert rows[1]["ratio_to_best"]["session_p50_us"] == pytest.approx(59.1 / 44.71)
    assert rows[1]["ratio_to_best"]["sessions_per_s"] == pytest.approx(10274.0 / 14676.4)
    assert rows[1]["ratio_to_best"]["batch64_sessions_per_s"] == pytest.approx(20500.0 / 30120.7)
    assert rows[1]["ratio_to_best"]["batch256_sessions_per_s"] == pytest.approx(82000.4 / 41000.2)
    assert rows[2]["ratio_to_best"] is None and rows[3]["ratio_to_best"] is None


def test_to_dict_is_the_json_contract():
    result = _result()
    d = result.to_dict()
    assert list(d) == ["machine", "threads", "sessions", "rows"]
    assert all(tuple(row) == ROW_KEYS for row in d["rows"])
    json.dumps(d)


def test_write_report_writes_the_three_files(tmp_path):
    pytest.importorskip("matplotlib")
    written = write_report(_result(), tmp_path / "report")
    assert written == tmp_path / "report" / "benchmark.md"
    assert json.loads((tmp_path / "report" / "benchmark.json").read_text()) == _result().to_dict()
    assert (tmp_path / "report" / "latency_cdf.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("settings, bad", [({"threads": 0}, "threads 0"),
                                           ({"min_runs": 0, "live_sessions": -1},
                                            "min_runs 0, live_sessions -1")])
def test_effort_checks_its_counts(settings, bad):
    with pytest.raises(ConfigError, match=f"^benchmark settings must be positive: {bad}$"):
        Effort(**settings)


def test_request_checks_its_replay_limit(tmp_path):
    with pytest.raises(ConfigError, match="^benchmark settings must be positive: replay_limit 0$"):
        BenchmarkRequest(tmp_path, replay_limit=0)


def test_request_allows_no_warmup(tmp_path):
    assert BenchmarkRequest(str(tmp_path), effort=Effort(warmup=0)).target == tmp_path


def test_find_artifacts_messages(tmp_path):
    with pytest.raises(ConfigError, match="nothing: no such artifact or run directory"):
        find_artifacts(tmp_path / "nothing")
    with pytest.raises(ConfigError, match=r"no model-\*.tflite artifacts; run `ubp-edge convert` first"):
        find_artifacts(tmp_path)
    (tmp_path / "model-int8.tflite").write_bytes(b"x")
    (tmp_path / "model-dynamic.tflite").write_bytes(b"x")
    assert find_artifacts(tmp_path) == ([tmp_path / "model-dynamic.tflite", tmp_path / "model-int8.tflite"],
                                        tmp_path)
    assert find_artifacts(tmp_path / "model-int8.tflite") == ([tmp_path / "model-int8.tflite"], tmp_path)
    with pytest.raises(ConfigError, match="--peers needs the run directory's weights: .* not found"):
        check_peer_weights(tmp_path)
    (tmp_path / "weights.npz").write_bytes(b"not an npz")
    with pytest.raises(RunDirError):  # damaged or incomplete: refused before any measuring
        check_peer_weights(tmp_path)


def test_synthetic_sessions_are_scorable_prefixes():
    sessions = synthetic_sessions()
    assert 1000 < len(sessions) < 2000
    assert all(s for s in sessions)
    assert not any(e["event"] == EVENT_CODE["purchase"] for s in sessions for e in s)
    assert all(a["ts"] <= b["ts"] for s in sessions for a, b in zip(s, s[1:], strict=False))
    assert {"ts", "event", "item", "category", "price"} == set(sessions[0][0])


def test_fixed_length_sessions():
    fixed = fixed_length_sessions(synthetic_sessions(50), 7, count=5)
    assert [len(s) for s in fixed] == [7] * 5
    assert all(b["ts"] - a["ts"] == 30.0 for s in fixed for a, b in zip(s, s[1:], strict=False))
    assert [len(s) for s in fixed_length_sessions([], 3, count=2)] == [3, 3]  # the probe session


def test_consecutive_batches_are_full_and_cover_every_session():
    assert consecutive_batches(["a", "b", "c"], 2) == [["a", "b"], ["c", "a"]]
    assert consecutive_batches(list(range(5)), 5, at_least=12) == [list(range(5))] * 3
    batches = consecutive_batches(list(range(10)), 4, at_least=3)
    assert [len(b) for b in batches] == [4, 4, 4] and set(sum(batches, [])) == set(range(10))
    assert consecutive_batches([], 64, at_least=100) == []


def _finite_positive(result: dict, keys) -> None:
    for key in keys:
        assert isinstance(result[key], (int, float)) and math.isfinite(result[key]) and result[key] > 0, key


FLOOR_KEYS = ("multiply_adds", "fma_peak_multiply_adds_per_s", "throughput_floor_us",
              "chain_numpy_float32_us", "numpy_call_overhead_us")


def test_floor_figures_are_finite_and_positive_at_a_tiny_size():
    assert lstm_multiply_adds(50, 15, 128) == 3_660_800  # the 3.66 M
    result = measure_floor(steps=3, features=2, units=4, matmul=16, repeat=3, tflite=False)
    assert result["multiply_adds"] == lstm_multiply_adds(3, 2, 4) == 3 * (2 * 16 + 4 * 16)
    _finite_positive(result, FLOOR_KEYS)
    assert result["chain_numpy_float32_net_us"] >= 0
    assert result["chain_tflite_float32_us"] is None and "--no-tflite" in result["tflite_note"]
    json.dumps(result)
    with pytest.raises(ConfigError, match="^floor sizes must be positive: units 0$"):
        measure_floor(units=0, tflite=False)


def test_floor_script_prints_json_and_a_table():
    done = subprocess.run([sys.executable, "-m", "benchmarks.floor", "--steps", "2", "--units", "4",
                           "--features", "2", "--matmul", "16", "--repeat", "2", "--no-tflite"],
                          capture_output=True, text=True, check=True)
    _finite_positive(json.loads(done.stdout), FLOOR_KEYS)
    assert "(a) throughput floor" in done.stderr and "NumPy float32" in done.stderr


@pytest.mark.slow
def test_floor_litert_chains_at_a_tiny_size():
    pytest.importorskip("tensorflow")
    result = measure_floor(steps=3, features=2, units=8, matmul=16, repeat=3)
    assert result["tflite_note"].startswith("LiteRT CompiledModel"), result["tflite_note"]
    _finite_positive(result, ("chain_tflite_float32_us", "chain_tflite_int8_us"))


def test_probe_commands():
    assert probe_command("live", "m.tflite", threads=2, sessions=5)[1:] == [
        "-m", "edge_runtime.probes", "live", "m.tflite", "--threads", "2", "--sessions", "5"]
    assert probe_command("cold", "m.tflite")[1] == "-c"
    with pytest.raises(ConfigError, match="unknown probe 'warm'"):
        probe_command("warm", "m.tflite")
    assert rss_mb() > 0


def test_probes_import_nothing_but_the_runtime():
    code = ("import sys, edge_runtime.probes; "
            "print(sorted({'tensorflow', 'pyarrow', 'sklearn', 'trainer', 'benchmarks'} & "
            "{m.split('.')[0] for m in sys.modules}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.slow
def test_run_benchmark_on_the_tiny_model(tiny_artifact, tmp_path):
    seen = []
    request = BenchmarkRequest(tiny_artifact, effort=Effort(min_runs=20, warmup=2, cold_runs=1,
                                                            live_sessions=50, live_events=40))
    result = run_benchmark(request, seen.append)
    [row] = result.rows
    assert tuple(row) == ROW_KEYS and row["status"] == "ok", row["reason"]
    for key in ("cold_start_ms", "rss_mb", "rss_live_mb", "session_p50_us", "session1_p50_us",
                "session50_p50_us", "event_p99_us", "step_invoke_p50_us", "sessions_per_s",
                "batch64_sessions_per_s", "batch256_sessions_per_s"):
        assert row[key] > 0, key
    assert row["ratio_to_best"]["session_p50_us"] == pytest.approx(1.0)
    assert result.sessions.endswith("embedded synthetic")
    assert len(result.samples[f"ubp-edge {row['precision']}"]) >= 20
    assert f"{tiny_artifact.name}: cold start" in seen
    assert f"{tiny_artifact.name}: batches of 256" in seen
    assert any(line.endswith("50 live sessions") for line in seen)
    title, headers, rows = terminal_table(result)
    assert ("50 live MB", "right") in headers and len(rows) == 1
