"""What each lever of issue 12 bought, measured on one run directory's artifacts, one thread.

``python -m benchmarks.levers RUN_DIR --data LOG [--format F]`` prints a table on stderr and a
JSON object on stdout. For every artifact in RUN_DIR (both graphs, any precision), on the
log's replayed session prefixes (`benchmarks.sessions.replayed_sessions`), encoder left out
so that only the graph is compared:

- ``p50_us_3`` and ``p50_us_50``: `Scorer.score_features` of one encoded session of 3 (the
  replayed prefixes' median) and of 50 events: the graph at batch 1 (fused op against
  chained unrolled chunks delegated to XNNPACK);
- ``batch{1,64,256}_sessions_per_s``: `Scorer.score_encoded` of every replayed prefix with
  that ``batch_size`` (the unrolled graph's stages of equal chunks; the fused graph ignores
  it: one session per invoke);
- ``whole_graph_mb``: the RSS the whole-session graph adds when it is first used, in a fresh
  process (what the lazy build saves a process that serves live sessions only).

And once, for the encoder: ``encode_one_us`` (`Scorer.encode_session` in a loop) against
``encode_batch_us`` (`Scorer.encode_sessions` of 256 at a time), per session.
Every timing is the median of ``--rounds`` rounds, artifacts measured in turn within a round,
so that a change of load hits them all alike.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from edge_runtime.timing import time_calls

WHOLE_GRAPH_PROBE = """
import json, sys
import numpy as np
from edge_runtime import Scorer
from edge_runtime.probes import rss_mb
scorer = Scorer.load(sys.argv[1])
before = rss_mb()
scorer.score_features(np.zeros((50, scorer.info.spec.n_features), np.float32))
scorer.score_encoded([np.zeros((n, scorer.info.spec.n_features), np.float32) for n in range(1, 40)])
print(json.dumps({"whole_graph_mb": rss_mb() - before}))
"""


def _per_call_us(fn, inputs, repeat: int = 3) -> float:
    """Median over ``inputs`` of the best of ``repeat`` calls each, microseconds."""
    ns = time_calls(fn, [x for x in inputs for _ in range(repeat)]).ns
    return float(np.median(ns.reshape(len(inputs), repeat).min(axis=1))) / 1000.0


def _rate(fn, sessions: list, rounds: int = 1) -> float:
    """Sessions per second of ``fn(sessions)``, best of ``rounds`` calls."""
    return len(sessions) / (float(time_calls(fn, [sessions], min_runs=rounds).ns.min()) / 1e9)


def measure(run_dir: Path, sessions: list[list[dict]], rounds: int) -> dict:
    """The lever figures of every artifact of ``run_dir`` on ``sessions`` (see the module)."""
    from benchmarks.sessions import fixed_length_sessions
    from edge_runtime import Scorer

    paths = sorted(run_dir.glob("model-*.tflite"))
    scorers = {p.name: Scorer.load(p) for p in paths}
    first = next(iter(scorers.values()))
    encoded = first.encode_sessions(sessions)
    short = [first.encode_session(s) for s in fixed_length_sessions(sessions, 3, count=100)]
    long = [first.encode_session(s) for s in fixed_length_sessions(sessions, 50, count=100)]
    figures: dict[str, dict[str, list[float]]] = {name: {} for name in scorers}
    encoder: dict[str, list[float]] = {"encode_one_us": [], "encode_batch_us": []}
    for _ in range(rounds):
        for name, scorer in scorers.items():
            row = figures[name]
            for n, inputs in (("p50_us_3", short), ("p50_us_50", long)):
                for x in inputs[:10]:  # warm: allocations for every length
                    scorer.score_features(x)
                row.setdefault(n, []).append(_per_call_us(scorer.score_features, inputs))
            for size in (1, 64, 256):
                scorer.score_encoded(encoded[:512], batch_size=size)
                row.setdefault(f"batch{size}_sessions_per_s", []).append(
                    _rate(lambda s, size=size, scorer=scorer: scorer.score_encoded(s, batch_size=size),
                          encoded))
        encoder["encode_one_us"].append(
            1e6 / _rate(lambda s: [first.encode_session(x) for x in s], sessions))
        encoder["encode_batch_us"].append(
            1e6 / _rate(lambda s: [first.encode_sessions(s[i:i + 256]) for i in range(0, len(s), 256)],
                        sessions))
    rows = []
    for path in paths:
        row = {"artifact": path.name, "graph": scorers[path.name].info.graph,
               "precision": scorers[path.name].info.precision, "size_bytes": path.stat().st_size}
        row.update({k: float(np.median(v)) for k, v in figures[path.name].items()})
        probe = subprocess.run([sys.executable, "-c", WHOLE_GRAPH_PROBE, str(path)], capture_output=True,
                               text=True, timeout=300)
        row["whole_graph_mb"] = (json.loads(probe.stdout.strip().splitlines()[-1])["whole_graph_mb"]
                                 if probe.returncode == 0 else None)
        rows.append(row)
    return {"sessions": len(sessions), "rounds": rounds, "rows": rows,
            **{k: float(np.median(v)) for k, v in encoder.items()}}


def main(argv: list[str] | None = None) -> int:
    from trainer.logsource import EventLogSource

    parser = argparse.ArgumentParser(prog="python -m benchmarks.levers", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--data", required=True)
    parser.add_argument("--format", default=None)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    from benchmarks.sessions import replayed_sessions

    sessions = replayed_sessions(EventLogSource(path=args.data, format=args.format))
    result = measure(args.run_dir, sessions, args.rounds)
    keys = ("p50_us_3", "p50_us_50", "batch1_sessions_per_s", "batch64_sessions_per_s",
            "batch256_sessions_per_s", "whole_graph_mb", "size_bytes")
    print(f"{'artifact':34}" + "".join(f"{k.replace('_sessions_per_s', '/s'):>12}" for k in keys),
          file=sys.stderr)
    for row in result["rows"]:
        print(f"{row['artifact']:34}" + "".join(
            f"{row[k]:12.1f}" if row[k] is not None else f"{'-':>12}" for k in keys), file=sys.stderr)
    print(f"encoder: {result['encode_one_us']:.1f} us a session one by one, "
          f"{result['encode_batch_us']:.1f} us in batches of 256", file=sys.stderr)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
