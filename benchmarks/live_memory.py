"""Live scoring on the device: per-event latency with encoding, and memory with many sessions.

    python benchmarks/live_memory.py ARTIFACT [--sessions 10000] [--events 20000] [--threads 1]

This process imports only edge_runtime (no TensorFlow) and runs the live-memory probe of
`ubp-edge benchmark`, `edge_runtime.probes.live_probe`, in itself: it opens ``--sessions``
live sessions in a SessionStore, replays ``--events`` clicks on random ones, and reports
per-event p50/p95/p99 (`SessionStore.push`: event check, encoder step, LSTM step), the bare
step graph's p50 timed in alternate rounds (`StepModel.__call__` on preallocated arrays) and
the ratio of the two, and the process's RSS loaded, with every session open, after the
clicks, and at its peak. Memory figures mean what they say only in a fresh process that has
imported nothing else; argparse here adds about 0.4 MB that `python -m edge_runtime.probes
live ARTIFACT` (what `ubp-edge benchmark` runs) does not.
"""

from __future__ import annotations

import argparse

from edge_runtime.probes import live_probe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact")
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    r = live_probe(args.artifact, threads=args.threads, sessions=args.sessions, clicks=args.events)
    ev, step = r["event"], r["step"]
    print(f"{args.artifact} ({r['precision']}, {r['backend']}); TensorFlow loaded: {r['tensorflow_loaded']}")
    print(f"  load: {r['load_ms']:.0f} ms")
    print(f"  per event (SessionStore.push, encoder included), {r['clicks']:,} events: "
          f"p50 {ev['p50_us']:.1f} us, p95 {ev['p95_us']:.1f} us, p99 {ev['p99_us']:.1f} us, "
          f"mean {ev['mean_us']:.1f} us")
    print(f"  bare step graph (StepModel.__call__), alternate rounds: p50 {step['p50_us']:.2f} us; "
          f"a push is {r['event_over_step']:.2f}x that")
    per_session_kb = (r["rss_open_mb"] - r["rss_loaded_mb"]) * 1024 / args.sessions
    print(f"  RSS: {r['rss_loaded_mb']:.1f} MB loaded, {r['rss_open_mb']:.1f} MB with "
          f"{r['live_sessions']:,} live sessions (+{per_session_kb:.2f} KB per session), "
          f"{r['rss_live_mb']:.1f} MB after the clicks, peak {r['rss_peak_mb']:.1f} MB")


if __name__ == "__main__":
    main()
