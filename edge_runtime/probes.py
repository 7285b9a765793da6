"""Probes that run in a fresh process on the device: cold start and live memory.

A figure about start-up or memory means something only in a process that has imported
nothing else: no TensorFlow, no pyarrow, no other artifact. These probes are the device's
side of `ubp-edge benchmark` (which starts them through `probe_command` and reads the one
JSON line each prints) and of ``benchmarks/live_memory.py`` (which calls `live_probe`
directly, being itself such a process). Like the rest of edge_runtime they need numpy and
a TFLite interpreter only.

- ``cold``: import edge_runtime, load the artifact, score `PROBE_SESSION`; the clock
  starts before the first import, so it runs as ``python -c COLD_PROBE ARTIFACT THREADS``
  (``python -m`` would import edge_runtime before any code of ours could start a clock).
- ``live``: hold many live sessions in a `SessionStore` (`live_probe`); run as
  ``python -m edge_runtime.probes live ARTIFACT [--threads N] [--sessions N] [--clicks N]``.

Memory figures come from ``/proc/self/status`` (`status_mb`, `peak_rss_mb`, `rss_mb`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

import numpy as np

from edge_runtime.timing import time_calls

# Runs as ``python -c`` so that the clock starts before anything of ubp-edge or numpy is
# imported; the interpreter's own start-up (about 15 ms) is not counted.
COLD_PROBE = """
import time
start = time.perf_counter()
import json, sys
from edge_runtime import Scorer
from edge_runtime.events import PROBE_SESSION
from edge_runtime.probes import peak_rss_mb
scorer = Scorer.load(sys.argv[1], num_threads=int(sys.argv[2]))
scorer.score_sessions([list(PROBE_SESSION)])
elapsed = time.perf_counter() - start
print(json.dumps({"cold_start_ms": elapsed * 1000.0, "rss_mb": peak_rss_mb(),
                  "tensorflow_loaded": "tensorflow" in sys.modules}))
"""

PROBES = ("cold", "live")
# The live probe's clicks: mostly views, as on a shop (the Taobao sample is ~90% views).
CLICK_KINDS = ("view",) * 17 + ("cart", "fav")
N_ITEMS, N_CATEGORIES, PRICE = 5000, 100, 19.9


def status_mb(field: str) -> float | None:
    """A memory figure of /proc/self/status (e.g. ``VmRSS``, ``VmHWM``) in MB; None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB."""
    # VmHWM, not getrusage's ru_maxrss: on Linux the latter carries over the parent's peak
    # across fork + exec, so a probe started from a big process would report the parent.
    peak = status_mb("VmHWM")
    if peak is not None:
        return peak
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rss_mb() -> float:
    """Current resident memory in MB (the peak where the current figure is unavailable)."""
    current = status_mb("VmRSS")
    return current if current is not None else peak_rss_mb()


class _Clicks(Sequence):
    """Clicks ``(session key, event)`` kept as small integer arrays and built one at a time
    when read: a list of 20,000 event dicts would itself weigh several MB of the RSS being
    measured."""

    def __init__(self, session: np.ndarray, kind: np.ndarray, item: np.ndarray,
                 category: np.ndarray, start_ts: float) -> None:
        self.session, self.kind, self.item, self.category = session, kind, item, category
        self.start_ts = start_ts

    @classmethod
    def opening(cls, rng: np.random.Generator, sessions: int, start_ts: float) -> _Clicks:
        """One view per session, session after session."""
        return cls(np.arange(sessions), np.zeros(sessions, np.int64), rng.integers(N_ITEMS, size=sessions),
                   rng.integers(N_CATEGORIES, size=sessions), start_ts)

    @classmethod
    def random(cls, rng: np.random.Generator, n: int, sessions: int, start_ts: float) -> _Clicks:
        """``n`` clicks on random sessions, of random kinds, items and categories."""
        return cls(rng.integers(sessions, size=n), rng.integers(len(CLICK_KINDS), size=n),
                   rng.integers(N_ITEMS, size=n), rng.integers(N_CATEGORIES, size=n), start_ts)

    def __len__(self) -> int:
        return len(self.session)

    def __getitem__(self, i):  # one click; slices are not needed by time_calls
        return (f"s{self.session[i]}", {"ts": self.start_ts + 0.5 * i, "event": CLICK_KINDS[self.kind[i]],
                                        "item": str(self.item[i]), "category": str(self.category[i]),
                                        "price": PRICE})


def live_probe(path: str, *, threads: int = 1, sessions: int = 10_000, clicks: int | None = None,
               seed: int = 0) -> dict:
    """Memory and per-event latency of many live sessions held in one `SessionStore`.

    Loads the artifact, opens ``sessions`` sessions with one view each, then pushes
    ``clicks`` more clicks on random open sessions (items accumulate in a session's state),
    timing each `SessionStore.push` (encoder step + LSTM step).

    Args:
        path: the artifact.
        threads: interpreter threads.
        sessions: live sessions to hold (the store's capacity; none is evicted or timed out).
        clicks: clicks after every session is open; default ``2 * sessions``.
        seed: seed of the random clicks.

    Returns:
        ``load_ms``, ``rss_loaded_mb`` (after loading), ``rss_open_mb`` (every session
        open), ``rss_live_mb`` (after the clicks), ``rss_peak_mb``, ``live_sessions``,
        ``clicks``, ``event`` (p50/p95/p99/mean in microseconds of the clicks), ``precision``,
        ``backend`` and ``tensorflow_loaded``.

    Raises:
        ArtifactError: the artifact cannot be loaded.
        ConfigError: ``sessions`` < 1.
    """
    from edge_runtime import Scorer, SessionStore
    from edge_runtime.errors import ConfigError
    from edge_runtime.timing import percentiles

    if sessions < 1:
        raise ConfigError(f"live probe: sessions must be >= 1, got {sessions}")
    clicks = 2 * sessions if clicks is None else clicks
    start = time.perf_counter()
    scorer = Scorer.load(path, num_threads=threads)
    load_ms = (time.perf_counter() - start) * 1000.0
    store = SessionStore(scorer, max_sessions=sessions, idle_timeout=None)
    rng = np.random.default_rng(seed)
    loaded = rss_mb()
    for key, event in _Clicks.opening(rng, sessions, 1.7e9):
        store.push(key, event)
    opened = rss_mb()
    timings = time_calls(lambda click: store.push(*click),
                         _Clicks.random(rng, clicks, sessions, 1.7e9 + 0.5 * sessions))
    event = percentiles(timings.ns)
    event["mean_us"] = float(np.mean(timings.ns)) / 1000.0 if len(timings.ns) else None
    return {"load_ms": load_ms, "rss_loaded_mb": loaded, "rss_open_mb": opened,
            "rss_live_mb": rss_mb(), "rss_peak_mb": peak_rss_mb(), "live_sessions": len(store),
            "clicks": int(len(timings.ns)), "event": event, "precision": scorer.info.precision,
            "backend": scorer.backend, "tensorflow_loaded": "tensorflow" in sys.modules}


def probe_command(probe: str, path: str, *, threads: int = 1, sessions: int = 10_000) -> list[str]:
    """The command line that runs one probe in a fresh interpreter; it prints one JSON line.

    Args:
        probe: ``cold`` or ``live``.
        path: the artifact.
        threads: interpreter threads.
        sessions: live sessions held (``live`` only).

    Raises:
        ConfigError: an unknown probe.
    """
    if probe == "cold":
        return [sys.executable, "-c", COLD_PROBE, str(path), str(threads)]
    if probe == "live":
        return [sys.executable, "-m", "edge_runtime.probes", "live", str(path), "--threads", str(threads),
                "--sessions", str(sessions)]
    from edge_runtime.errors import ConfigError

    raise ConfigError(f"unknown probe {probe!r}; allowed {list(PROBES)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m edge_runtime.probes",
                                     description="Run the live-memory probe; print one JSON line.")
    parser.add_argument("probe", choices=["live"])
    parser.add_argument("artifact")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--clicks", type=int, default=None)
    args = parser.parse_args(argv)
    print(json.dumps(live_probe(args.artifact, threads=args.threads, sessions=args.sessions,
                                clicks=args.clicks)))


if __name__ == "__main__":
    main()
