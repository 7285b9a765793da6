"""Throughput of the data path on a real log: read, sessionize, encode (events per second).

    python benchmarks/encode_throughput.py [PATH] [--format taobao] [--repeat 5]

Reports the median of ``--repeat`` runs of each stage, one process, on the machine it runs on.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from trainer.dataset import encode_sessions, new_encoder, raw_sessions
from trainer.readers import read_log
from trainer.sessions import sessionize, time_split

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "taobao" / "UserBehavior_sample.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", default=str(DEFAULT))
    parser.add_argument("--format", default="taobao")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    times: dict[str, list[float]] = {"read": [], "sessionize": [], "encode": []}
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        log = read_log(args.path, args.format)
        t1 = time.perf_counter()
        sessions = sessionize(log)
        t2 = time.perf_counter()
        split = time_split(sessions)
        encoder = new_encoder(sessions, max_len=50)
        encoder.fit(np.concatenate(raw_sessions(sessions, split.train, encoder, window=encoder.max_len)))
        t3 = time.perf_counter()
        encoded = encode_sessions(sessions, np.flatnonzero(sessions.scorable), encoder, window=None)
        t4 = time.perf_counter()
        for name, seconds in (("read", t1 - t0), ("sessionize", t2 - t1), ("encode", t4 - t3)):
            times[name].append(seconds)
    n = len(log)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{args.path}: {n:,} events, {len(sessions):,} sessions, "
          f"{sum(len(x) for x in encoded):,} encoded rows; median of {args.repeat} runs")
    for name, seconds in med.items():
        print(f"  {name:<11} {seconds * 1000:8.1f} ms  {n / seconds:>12,.0f} events/s")
    both = med["sessionize"] + med["encode"]
    print(f"  sessionize+encode {both * 1000:.1f} ms  {n / both:,.0f} events/s")


if __name__ == "__main__":
    main()
