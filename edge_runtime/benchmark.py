"""Latency, throughput, start-up and memory of an artifact on this machine (numpy + interpreter).

What `ubp-edge benchmark` measures for each artifact, each figure after a warm-up and over
many runs, one thread unless told otherwise:

- cold start: a fresh process imports edge_runtime, loads the artifact and scores one session;
  the median of several processes, and their peak RSS;
- whole-session latency (encoder included) on replayed session lengths and at fixed lengths;
- live per-event latency (encoder step + LSTM step) through a SessionStore;
- batch throughput in sessions per second;
- RSS with many live sessions held, in a fresh process.

Everything here runs on the device: numpy and the TFLite interpreter only. Run as
``python -m edge_runtime.benchmark live ARTIFACT THREADS SESSIONS`` for the memory probe.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

FIXED_LENGTHS = (1, 10, 50)
PROBE_EVENT = {"ts": 1.7e9, "event": "view", "item": "a", "category": "c", "price": 9.9}


@dataclass(frozen=True)
class BenchConfig:
    """How long and how hard to measure.

    Attributes:
        threads: interpreter threads (1: a kiosk core).
        warmup: calls before timing starts.
        min_runs: timed calls per latency figure at least (sessions are cycled).
        cold_runs: fresh processes for the cold start.
        live_sessions: live sessions held for the memory figure.
        live_events: timed pushes for the per-event figure.
    """

    threads: int = 1
    warmup: int = 50
    min_runs: int = 2000
    cold_runs: int = 5
    live_sessions: int = 10_000
    live_events: int = 20_000

    def __post_init__(self) -> None:
        from edge_runtime.errors import ConfigError

        bad = {k: v for k, v in (("threads", self.threads), ("warmup", self.warmup),
                                 ("min_runs", self.min_runs), ("cold_runs", self.cold_runs),
                                 ("live_sessions", self.live_sessions),
                                 ("live_events", self.live_events)) if v < (0 if k == "warmup" else 1)}
        if bad:
            raise ConfigError(f"benchmark settings must be positive: {bad}")


def machine() -> dict:
    """What the figures were measured on."""
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        from importlib.metadata import version
        litert = version("ai-edge-litert")
    except Exception:  # noqa: BLE001 - any failure means "unknown", not an error
        litert = None
    return {"cpu": cpu, "cores": os.cpu_count(), "machine": platform.machine(),
            "system": platform.platform(), "python": platform.python_version(),
            "numpy": np.__version__, "ai_edge_litert": litert}


def percentiles(ns: Sequence[int]) -> dict:
    us = np.asarray(ns, np.float64) / 1000.0
    return {"p50_us": float(np.percentile(us, 50)), "p95_us": float(np.percentile(us, 95)),
            "p99_us": float(np.percentile(us, 99)), "runs": int(len(us))}


def time_calls(fn: Callable[[object], object], inputs: Sequence, config: BenchConfig) -> dict:
    """Percentiles of ``fn(x)`` over ``inputs`` cycled to at least ``min_runs`` timed calls."""
    if not inputs:
        return {"p50_us": None, "p95_us": None, "p99_us": None, "runs": 0}
    for i in range(config.warmup):
        fn(inputs[i % len(inputs)])
    n = max(config.min_runs, len(inputs))
    times = np.empty(n, np.int64)
    clock = time.perf_counter_ns
    for i in range(n):
        x = inputs[i % len(inputs)]
        start = clock()
        fn(x)
        times[i] = clock() - start
    result = percentiles(times)
    result["samples_us"] = (times / 1000.0).tolist()
    return result


def fixed_length_sessions(sessions: Sequence[Sequence[Mapping]], length: int, count: int = 200
                          ) -> list[list[dict]]:
    """Sessions of exactly ``length`` events, cut from the replayed ones (stitched if short),
    with timestamps re-spaced so that every event is 30 s after the one before."""
    pool = [dict(e) for s in sessions for e in s] or [dict(PROBE_EVENT)]
    out = []
    for k in range(count):
        start = (k * 7919) % len(pool)
        events = [dict(pool[(start + i) % len(pool)]) for i in range(length)]
        for i, e in enumerate(events):
            e["ts"] = 1.7e9 + 86400 * k + 30.0 * i
        out.append(events)
    return out


def measure_scorer(scorer, sessions: Sequence[Sequence[Mapping]], config: BenchConfig,
                   progress: Callable[[str], None] | None = None) -> dict:
    """In-process figures of one loaded artifact on replayed sessions (encoder included)."""
    say = progress or (lambda _msg: None)
    result: dict = {}
    say("whole sessions")
    result["session"] = time_calls(lambda s: scorer.score_sessions([s]), sessions, config)
    for length in FIXED_LENGTHS:
        say(f"sessions of {length} events")
        fixed = fixed_length_sessions(sessions, length)
        result[f"session{length}"] = time_calls(lambda s: scorer.score_sessions([s]), fixed, config)
    say("batch throughput")
    batch = list(sessions)[:2000]
    scorer.score_sessions(batch[:50])
    start = time.perf_counter()
    scorer.score_sessions(batch)
    result["sessions_per_s"] = len(batch) / (time.perf_counter() - start)
    if scorer.has_step:
        say("live events")
        result["event"] = _time_live(scorer, sessions, config)
    else:
        result["event"] = None
    return result


def _time_live(scorer, sessions: Sequence[Sequence[Mapping]], config: BenchConfig) -> dict:
    """Per-event latency of `LiveSession.push`, replaying each session click by click."""
    pool = [s for s in sessions if s] or [[PROBE_EVENT]]
    clock = time.perf_counter_ns
    times: list[int] = []
    k = 0
    while len(times) < config.live_events + config.warmup:
        live = scorer.start_session()
        for event in pool[k % len(pool)]:
            start = clock()
            live.push(event)
            times.append(clock() - start)
        k += 1
    timed = times[config.warmup:]
    result = percentiles(timed)
    result["samples_us"] = (np.asarray(timed) / 1000.0).tolist()
    return result


def _status_mb(field: str) -> float | None:
    """A memory figure of /proc/self/status (e.g. VmRSS, VmHWM) in MB; None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _peak_rss_mb() -> float:
    # VmHWM, not getrusage's ru_maxrss: on Linux the latter carries over the parent's peak
    # across fork + exec, so a probe started from a big process would report the parent.
    peak = _status_mb("VmHWM")
    if peak is not None:
        return peak
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rss_mb() -> float:
    """Current resident memory in MB (the peak where the current figure is unavailable)."""
    current = _status_mb("VmRSS")
    return current if current is not None else _peak_rss_mb()


# The cold-start probe runs as ``python -c`` so that the clock starts before anything of
# ubp-edge or numpy is imported; the process's own start-up (about 15 ms) is not counted.
COLD_PROBE = """
import time
start = time.perf_counter()
import json, sys
from edge_runtime import Scorer
from edge_runtime.benchmark import _peak_rss_mb
scorer = Scorer.load(sys.argv[1], num_threads=int(sys.argv[2]))
scorer.score_sessions([[{"ts": 1.7e9, "event": "view", "item": "a", "category": "c", "price": 9.9}]])
elapsed = time.perf_counter() - start
print(json.dumps({"cold_start_ms": elapsed * 1000.0, "rss_mb": _peak_rss_mb(),
                  "tensorflow_loaded": "tensorflow" in sys.modules}))
"""


def _probe_live(path: str, threads: int, sessions: int) -> dict:
    from edge_runtime import Scorer, SessionStore

    scorer = Scorer.load(path, num_threads=threads)
    store = SessionStore(scorer, max_sessions=sessions, idle_timeout=None)
    rng = np.random.default_rng(0)
    loaded = rss_mb()
    for i in range(sessions):
        store.push(f"s{i}", {"ts": 1.7e9 + i, "event": "view", "item": str(rng.integers(5000)),
                             "category": str(rng.integers(100)), "price": 19.9})
    for i in range(2 * sessions):  # a couple more clicks per session: items accumulate
        store.push(f"s{rng.integers(sessions)}", {"ts": 1.7e9 + sessions + i, "event": "view",
                                                  "item": str(rng.integers(5000)),
                                                  "category": str(rng.integers(100))})
    return {"rss_loaded_mb": loaded, "rss_live_mb": rss_mb(), "live_sessions": len(store)}


def fresh_process(kind: str, path: str, config: BenchConfig) -> dict:
    """Run a probe in a new interpreter process (so nothing is already imported or cached)."""
    if kind == "cold":
        args = [sys.executable, "-c", COLD_PROBE, str(path), str(config.threads)]
    else:
        args = [sys.executable, "-m", "edge_runtime.benchmark", kind, str(path), str(config.threads),
                str(config.live_sessions)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    if done.returncode != 0:
        from edge_runtime.errors import ArtifactError
        raise ArtifactError(f"{path}: {kind} probe failed: {done.stderr.strip()[-300:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def cold_start(path: str, config: BenchConfig) -> dict:
    """Median cold start and peak RSS over ``cold_runs`` fresh processes."""
    runs = [fresh_process("cold", path, config) for _ in range(config.cold_runs)]
    return {"cold_start_ms": float(np.median([r["cold_start_ms"] for r in runs])),
            "rss_mb": float(np.median([r["rss_mb"] for r in runs])),
            "tensorflow_loaded": any(r["tensorflow_loaded"] for r in runs)}


if __name__ == "__main__":
    print(json.dumps(_probe_live(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))
