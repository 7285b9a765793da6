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

import json
import random
import sys
import time
from array import array
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
    """Clicks ``(session key, event)`` kept as arrays of small integers (a few bytes a click)
    and built one at a time when read: a list of 20,000 event dicts would itself weigh several
    MB of the RSS being measured. Drawn with the standard library's `random`: numpy.random
    alone would add about 2 MB to the process being measured."""

    def __init__(self, session: array, kind: array, item: array, category: array,
                 start_ts: float) -> None:
        self.session, self.kind, self.item, self.category = session, kind, item, category
        self.start_ts = start_ts

    @classmethod
    def opening(cls, rng: random.Random, sessions: int, start_ts: float) -> _Clicks:
        """One view per session, session after session."""
        return cls(array("l", range(sessions)), array("B", bytes(sessions)),
                   array("H", (rng.randrange(N_ITEMS) for _ in range(sessions))),
                   array("B", (rng.randrange(N_CATEGORIES) for _ in range(sessions))), start_ts)

    @classmethod
    def random(cls, rng: random.Random, n: int, sessions: int, start_ts: float) -> _Clicks:
        """``n`` clicks on random sessions, of random kinds, items and categories."""
        return cls(*(array(code, (rng.randrange(high) for _ in range(n))) for code, high in
                     (("l", sessions), ("B", len(CLICK_KINDS)), ("H", N_ITEMS), ("B", N_CATEGORIES))),
                   start_ts)

    def __len__(self) -> int:
        return len(self.session)

    def __getitem__(self, i):
        if isinstance(i, slice):  # the clicks of a slice, at their own times
            start = i.indices(len(self))[0]
            return _Clicks(self.session[i], self.kind[i], self.item[i], self.category[i],
                           self.start_ts + 0.5 * start)
        return (f"s{self.session[i]}", {"ts": self.start_ts + 0.5 * i, "event": CLICK_KINDS[self.kind[i]],
                                        "item": str(self.item[i]), "category": str(self.category[i]),
                                        "price": PRICE})


# The live probe times its pushes and the bare step graph alternately, this many calls each,
# so that both see the same machine (other processes, clock speed).
TIMING_ROUND = 1000


def live_probe(path: str, *, threads: int = 1, sessions: int = 10_000, clicks: int | None = None,
               seed: int = 0) -> dict:
    """Memory and per-event latency of many live sessions held in one `SessionStore`.

    Loads the artifact, opens ``sessions`` sessions with one view each, then pushes
    ``clicks`` more clicks on random open sessions (items accumulate in a session's state),
    timing each `SessionStore.push` (encoder step + LSTM step), and in alternate rounds of
    TIMING_ROUND calls the bare step graph (`StepModel.__call__` on preallocated arrays,
    unlocked, uncalibrated): what a push costs over the invoke it cannot avoid. The memory
    figures are read before anything else is computed.

    Args:
        path: the artifact.
        threads: interpreter threads.
        sessions: live sessions to hold (the store's capacity; none is evicted or timed out).
        clicks: clicks after every session is open; default ``2 * sessions``.
        seed: seed of the random clicks.

    Returns:
        ``load_ms``, ``rss_loaded_mb`` (after loading), ``rss_open_mb`` (every session
        open), ``rss_live_mb`` (after the clicks), ``rss_peak_mb``, ``live_sessions``,
        ``clicks``, ``event`` (p50/p95/p99/mean in microseconds of the clicks), ``step``
        (the same of the bare step graph), ``event_over_step`` (the ratio of their p50s),
        ``precision``, ``backend`` and ``tensorflow_loaded``.

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
    step = scorer.step_model()
    x = np.zeros(step.n_features, np.float32)
    h, c = np.zeros((1, step.units), np.float32), np.zeros((1, step.units), np.float32)
    rng = random.Random(seed)
    loaded = rss_mb()
    for key, event in _Clicks.opening(rng, sessions, 1.7e9):
        store.push(key, event)
    opened = rss_mb()
    pushes = _Clicks.random(rng, clicks, sessions, 1.7e9 + 0.5 * sessions)
    pushed, bare = [], []
    for at in range(0, clicks, TIMING_ROUND):
        pushed.append(time_calls(lambda click: store.push(*click), pushes[at:at + TIMING_ROUND]).ns)
        bare.append(time_calls(lambda _: step(x, h, c), range(TIMING_ROUND), warmup=10).ns)
    live, peak = rss_mb(), peak_rss_mb()
    event_ns = np.concatenate(pushed) if pushed else np.zeros(0, np.int64)
    step_ns = np.concatenate(bare) if bare else np.zeros(0, np.int64)
    event, bare_step = percentiles(event_ns), percentiles(step_ns)
    event["mean_us"] = float(np.mean(event_ns)) / 1000.0 if len(event_ns) else None
    bare_step["mean_us"] = float(np.mean(step_ns)) / 1000.0 if len(step_ns) else None
    ratio = event["p50_us"] / bare_step["p50_us"] if len(event_ns) else None
    return {"load_ms": load_ms, "rss_loaded_mb": loaded, "rss_open_mb": opened,
            "rss_live_mb": live, "rss_peak_mb": peak, "live_sessions": len(store),
            "clicks": int(len(event_ns)), "event": event, "step": bare_step, "event_over_step": ratio,
            "precision": scorer.info.precision, "backend": scorer.backend,
            "tensorflow_loaded": "tensorflow" in sys.modules}


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


USAGE = "usage: python -m edge_runtime.probes live ARTIFACT [--threads N] [--sessions N] [--clicks N]"


def parse_live_args(argv: Sequence[str]) -> dict:
    """The live probe's arguments: ``live ARTIFACT [--threads N] [--sessions N] [--clicks N]``
    as keyword arguments of `live_probe`. Read by hand: argparse would add about 0.4 MB to
    the process whose memory the probe measures.

    Raises:
        ConfigError: anything else; the message is the usage and what is wrong.
    """
    from edge_runtime.errors import ConfigError

    if len(argv) < 2 or argv[0] != "live" or argv[1].startswith("--"):
        raise ConfigError(f"{USAGE}\nexpected the probe 'live' and an artifact, got {list(argv)}")
    args: dict = {"path": argv[1]}
    rest = list(argv[2:])
    while rest:
        option = rest.pop(0)
        name = option[2:]
        if option not in ("--threads", "--sessions", "--clicks") or name in args or not rest:
            raise ConfigError(f"{USAGE}\nunexpected or repeated {option!r}, or no value after it")
        value = rest.pop(0)
        try:
            args[name] = int(value)
        except ValueError:
            raise ConfigError(f"{USAGE}\n{option} needs a whole number, got {value!r}") from None
    return args


def main(argv: list[str] | None = None) -> int:
    """``python -m edge_runtime.probes live ...``: print the live probe's JSON line.

    Returns:
        The exit code: 0, or 2 after printing the usage for bad arguments.
    """
    from edge_runtime.errors import ConfigError

    try:
        args = parse_live_args(sys.argv[1:] if argv is None else argv)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    print(json.dumps(live_probe(**args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
