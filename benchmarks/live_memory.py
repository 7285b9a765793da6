"""Live scoring on the device: per-event latency with encoding, and memory with many sessions.

    python benchmarks/live_memory.py ARTIFACT [--sessions 10000] [--events 20000]

Runs in a fresh process that imports only edge_runtime (no TensorFlow): replays synthetic
clicks over ``--sessions`` live sessions held in a SessionStore, reports per-event p50/p99
(encoder step + LSTM step, one thread) and the process's peak RSS once every session is open.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time

import numpy as np

from edge_runtime.benchmark import rss_mb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact")
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=20_000)
    args = parser.parse_args()

    t0 = time.perf_counter()
    from edge_runtime import Scorer, SessionStore

    scorer = Scorer.load(args.artifact)
    import_load_ms = (time.perf_counter() - t0) * 1000
    base = rss_mb()
    store = SessionStore(scorer, max_sessions=args.sessions, idle_timeout=None)
    rng = np.random.default_rng(0)
    kinds = ["view"] * 17 + ["cart", "fav"]
    ts = 1.7e9
    # Open every session with one click, then replay clicks on random open sessions.
    for i in range(args.sessions):
        ts += 0.5
        store.push(f"s{i}", {"ts": ts, "event": "view", "item": str(rng.integers(5000)),
                             "category": str(rng.integers(100)), "price": 19.9})
    full = rss_mb()
    times = []
    for _ in range(args.events):
        ts += 0.5
        event = {"ts": ts, "event": kinds[rng.integers(len(kinds))], "item": str(rng.integers(5000)),
                 "category": str(rng.integers(100)), "price": 19.9}
        key = f"s{rng.integers(args.sessions)}"
        start = time.perf_counter_ns()
        store.push(key, event)
        times.append(time.perf_counter_ns() - start)
    times_us = np.array(times) / 1000
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{args.artifact} ({scorer.info.precision}, {scorer.backend}); TensorFlow loaded: "
          f"{'tensorflow' in sys.modules}")
    print(f"  import + load: {import_load_ms:.0f} ms")
    print(f"  per event (SessionStore.push, encoder included), {args.events:,} events: "
          f"p50 {np.percentile(times_us, 50):.1f} us, p95 {np.percentile(times_us, 95):.1f} us, "
          f"p99 {np.percentile(times_us, 99):.1f} us, mean {statistics.fmean(times_us):.1f} us")
    print(f"  RSS: {base:.1f} MB loaded, {full:.1f} MB with {len(store):,} live sessions "
          f"(+{(full - base) * 1024 / args.sessions:.2f} KB per session), peak {peak:.1f} MB")


if __name__ == "__main__":
    main()
