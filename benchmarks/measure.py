"""The figures of one engine on this machine, keyed as benchmark row columns.

In-process figures (after a warm-up, over many calls, every call timed by
`edge_runtime.timing.time_calls`, so they mean what `compare` and `convert --auto` mean):

- `session_figures`: whole-session latency on the given sessions and at fixed lengths
  (`benchmarks.sessions.fixed_length_sessions`), for any ``score(session)``: an artifact's
  Scorer or a peer engine behind the same encoder;
- `live_event_figures`: per-event latency of `LiveSession.push`, replaying sessions click by
  click;
- `scorer_figures` / `peer_figures`: the above plus batch throughput, for one artifact or
  one peer.

Fresh-process figures run the probes of `edge_runtime.probes` (which import nothing but
edge_runtime) and read the JSON line each prints: `cold_start` and `live_memory`.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from benchmarks.sessions import fixed_length_sessions
from edge_runtime.errors import ArtifactError, ConfigError
from edge_runtime.events import PROBE_SESSION
from edge_runtime.probes import probe_command
from edge_runtime.timing import percentiles, time_calls

FIXED_LENGTHS = (1, 10, 50)
# Sessions scored in one call for the artifacts' throughput, one call each for the peers'
# (which score one session per call, like the fused graph).
THROUGHPUT_SESSIONS, PEER_THROUGHPUT_SESSIONS = 2000, 500
PROBE_TIMEOUT_S = 600

Session = Sequence[Mapping]
Say = Callable[[str], None]


@dataclass(frozen=True)
class Effort:
    """How long and how hard to measure.

    Raises:
        ConfigError: a count that is not positive (``warmup`` may be 0), naming them all.

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
        bad = {k: v for k, v in (("threads", self.threads), ("warmup", self.warmup),
                                 ("min_runs", self.min_runs), ("cold_runs", self.cold_runs),
                                 ("live_sessions", self.live_sessions),
                                 ("live_events", self.live_events)) if v < (0 if k == "warmup" else 1)}
        if bad:
            raise ConfigError("benchmark settings must be positive: "
                              + ", ".join(f"{k} {v!r}" for k, v in bad.items()))


@dataclass(frozen=True)
class Measured:
    """Figures of one engine.

    Attributes:
        figures: row key -> value (only the keys measured).
        samples_us: every timed whole-session latency, in microseconds (for the CDF plot).
    """

    figures: dict
    samples_us: list[float] | None


def _quiet(_what: str) -> None:
    pass


def _row_percentiles(prefix: str, ns: np.ndarray) -> dict:
    p = percentiles(ns)
    return {f"{prefix}_p50_us": p["p50_us"], f"{prefix}_p95_us": p["p95_us"],
            f"{prefix}_p99_us": p["p99_us"]}


def session_figures(score: Callable[[Session], object], sessions: Sequence[Session], effort: Effort,
                    say: Say = _quiet) -> Measured:
    """Whole-session latency of ``score`` on ``sessions`` and on sessions of fixed lengths.

    Args:
        score: scores one session of event dicts (encoding included).
        sessions: the replayed or synthetic sessions, cycled to ``effort.min_runs`` calls.
        effort: warm-up and runs.
        say: told what is being measured.

    Returns:
        ``session_p50/p95/p99_us`` and ``session{1,10,50}_p50_us``, with the replayed
        sessions' samples.
    """
    say("whole sessions")
    timed = time_calls(score, sessions, warmup=effort.warmup, min_runs=effort.min_runs)
    figures = _row_percentiles("session", timed.ns)
    for length in FIXED_LENGTHS:
        say(f"sessions of {length} events")
        fixed = time_calls(score, fixed_length_sessions(sessions, length), warmup=effort.warmup,
                           min_runs=effort.min_runs)
        figures[f"session{length}_p50_us"] = percentiles(fixed.ns)["p50_us"]
    return Measured(figures, (timed.ns / 1000.0).tolist() if len(timed.ns) else None)


def live_event_figures(scorer, sessions: Sequence[Session], effort: Effort) -> dict:
    """Per-event latency of `LiveSession.push` (encoder step + LSTM step), replaying each
    session click by click in a new live session, until ``live_events`` are timed.

    Returns:
        ``event_p50/p95/p99_us``.
    """
    pool = [s for s in sessions if s] or [list(PROBE_SESSION)]
    parts, timed, k = [], 0, 0
    while timed < effort.live_events + effort.warmup:
        # Starting a session is not part of an event's latency: each session's pushes are
        # timed apart, and the first `warmup` pushes overall are dropped.
        live = scorer.start_session()
        ns = time_calls(live.push, pool[k % len(pool)]).ns
        parts.append(ns)
        timed += len(ns)
        k += 1
    return _row_percentiles("event", np.concatenate(parts)[effort.warmup:])


def scorer_figures(scorer, sessions: Sequence[Session], effort: Effort, say: Say = _quiet) -> Measured:
    """In-process figures of one loaded artifact: session latencies, batch throughput and,
    where the artifact has a live graph, per-event latency.

    Args:
        scorer: an `edge_runtime.Scorer`.
        sessions: the sessions to replay.
        effort: warm-up, runs and live events.
        say: told what is being measured.

    Returns:
        Measured: the session figures, ``sessions_per_s`` and the ``event_*`` figures
        (None without a live graph).
    """
    measured = session_figures(lambda s: scorer.score_sessions([s]), sessions, effort, say)
    figures = dict(measured.figures)
    say("batch throughput")
    batch = list(sessions)[:THROUGHPUT_SESSIONS]
    scorer.score_sessions(batch[:50])
    ns = time_calls(scorer.score_sessions, [batch]).ns
    figures["sessions_per_s"] = len(batch) / (float(ns.sum()) / 1e9)
    if scorer.has_step:
        say("live events")
        figures.update(live_event_figures(scorer, sessions, effort))
    return Measured(figures, measured.samples_us)


def peer_figures(score: Callable[[Session], object], sessions: Sequence[Session], effort: Effort,
                 say: Say = _quiet) -> Measured:
    """In-process figures of one peer engine: session latencies and throughput, one session
    per call.

    Args:
        score: scores one session of event dicts (the peer behind the artifact's encoder).
        sessions: the sessions to replay.
        effort: warm-up and runs.
        say: told what is being measured.
    """
    measured = session_figures(score, sessions, effort, say)
    ns = time_calls(score, list(sessions)[:PEER_THROUGHPUT_SESSIONS]).ns
    figures = dict(measured.figures)
    figures["sessions_per_s"] = len(ns) / (float(ns.sum()) / 1e9) if len(ns) else None
    return Measured(figures, measured.samples_us)


def run_probe(command: list[str], path: str | os.PathLike, probe: str) -> dict:
    """Run a probe command in a fresh process and return the JSON line it printed last.

    Raises:
        ArtifactError: the probe failed (its stderr's last 300 characters).
    """
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=PROBE_TIMEOUT_S)
    if done.returncode != 0:
        raise ArtifactError(f"{path}: {probe} probe failed: {done.stderr.strip()[-300:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def cold_start(path: str | os.PathLike, effort: Effort) -> dict:
    """Median cold start and peak RSS over ``cold_runs`` fresh processes.

    Returns:
        ``cold_start_ms``, ``rss_mb`` and ``tensorflow_loaded`` (whether any probe saw it).

    Raises:
        ArtifactError: a probe failed (e.g. the artifact does not load).
    """
    runs = [run_probe(probe_command("cold", str(path), threads=effort.threads), path, "cold")
            for _ in range(effort.cold_runs)]
    return {"cold_start_ms": float(np.median([r["cold_start_ms"] for r in runs])),
            "rss_mb": float(np.median([r["rss_mb"] for r in runs])),
            "tensorflow_loaded": any(r["tensorflow_loaded"] for r in runs)}


def live_memory(path: str | os.PathLike, effort: Effort) -> dict:
    """RSS of a fresh process holding ``live_sessions`` live sessions
    (`edge_runtime.probes.live_probe`).

    Returns:
        The probe's figures (``rss_live_mb``, ``rss_loaded_mb``, ...).

    Raises:
        ArtifactError: the probe failed.
    """
    command = probe_command("live", str(path), threads=effort.threads, sessions=effort.live_sessions)
    return run_probe(command, path, "live")
