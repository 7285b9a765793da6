"""The figures of one engine on this machine, keyed as benchmark row columns.

In-process figures (after a warm-up, over many calls, every call timed by
`edge_runtime.timing.time_calls`, so they mean what `compare` and `convert --auto` mean):

- `session_figures`: whole-session latency on the given sessions and at fixed lengths
  (`benchmarks.sessions.fixed_length_sessions`), for any ``score(session)``: an artifact's
  Scorer or a peer engine behind the same encoder;
- `live_event_figures`: per-event latency of `LiveSession.push`, replaying sessions click by
  click, beside a bare invoke of the step graph (`StepModel.__call__`);
- `batch_figures`: sessions per second scoring the sessions ``BATCH_SIZES`` at a time;
- `scorer_figures` / `peer_figures`: the above, for one artifact or one peer.

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

from benchmarks.sessions import consecutive_batches, fixed_length_sessions
from edge_runtime.errors import ArtifactError, ConfigError
from edge_runtime.events import PROBE_SESSION
from edge_runtime.probes import probe_command
from edge_runtime.timing import percentiles, time_calls

FIXED_LENGTHS = (1, 10, 50)
# Sessions scored in one call for the artifacts' throughput, one call each for the peers'
# (which score one session per call, like the fused graph).
THROUGHPUT_SESSIONS, PEER_THROUGHPUT_SESSIONS = 2000, 500
# Throughput figures are the median of this many rounds: one pause of the machine (another
# process, a page fault) in a single round made a figure half of its neighbours' (measured).
THROUGHPUT_ROUNDS = 3
# The batch figures' sizes (``batch{size}_sessions_per_s``), and the untimed batches before
# each (the first calls at a new size allocate tensors).
BATCH_SIZES = (64, 256)
BATCH_WARMUP = 4
# Live pushes and bare step-graph invokes are timed in alternating rounds, so that a change
# of the machine's load during the measure touches both figures alike.
LIVE_ROUNDS = 4
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


def _push_ns(scorer, pool: Sequence[Session], count: int, start: int) -> tuple[np.ndarray, int]:
    """Wall times of at least ``count`` pushes, each pool session (from ``start``, cycled)
    replayed in a new live session; with the next session's position."""
    parts, timed, k = [], 0, start
    while timed < count:
        # Starting a session is not part of an event's latency: each session's pushes are
        # timed apart.
        live = scorer.start_session()
        ns = time_calls(live.push, pool[k % len(pool)]).ns
        parts.append(ns)
        timed += len(ns)
        k += 1
    return np.concatenate(parts), k


def live_event_figures(scorer, sessions: Sequence[Session], effort: Effort) -> dict:
    """Per-event latency of `LiveSession.push` (event check + encoder step + step graph),
    replaying each session click by click in a new live session, until ``live_events`` are
    timed; and of a bare invoke of the step graph (`StepModel.__call__` from
    ``scorer.step_model()``, on preallocated arrays: encoded events of the same sessions, a
    zero state), as many. The two alternate in ``LIVE_ROUNDS`` rounds; the first ``warmup``
    calls of each are dropped.

    Returns:
        ``event_p50/p95/p99_us`` and ``step_invoke_p50_us``.

    Raises:
        ArtifactError: the artifact has no step graph, or it fails to run.
    """
    pool = [s for s in sessions if s] or [list(PROBE_SESSION)]
    step = scorer.step_model()
    events = [np.ascontiguousarray(x, np.float32) for s in pool[:50] for x in scorer.encode_session(s)]
    h, c = np.zeros((1, step.units), np.float32), np.zeros((1, step.units), np.float32)

    def invoke(x: np.ndarray) -> object:
        return step(x, h, c)

    per_round = -(-effort.live_events // LIVE_ROUNDS)
    pushes, invokes, k = [], [], 0
    for r in range(LIVE_ROUNDS):
        warmup = effort.warmup if r == 0 else 0
        ns, k = _push_ns(scorer, pool, per_round + warmup, k)
        pushes.append(ns[warmup:])
        invokes.append(time_calls(invoke, events, warmup=warmup, min_runs=per_round).ns[:per_round])
    figures = _row_percentiles("event", np.concatenate(pushes))
    figures["step_invoke_p50_us"] = percentiles(np.concatenate(invokes))["p50_us"]
    return figures


def batch_figures(score_batch: Callable[[list[Session]], object], sessions: Sequence[Session],
                  effort: Effort, say: Say = _quiet) -> dict:
    """Sessions per second scoring ``sessions`` ``BATCH_SIZES`` at a time: consecutive
    batches, cycled until every session and at least ``min_runs`` sessions are scored, each
    batch one timed call; the median of THROUGHPUT_ROUNDS such rounds.

    Args:
        score_batch: scores one batch of sessions of event dicts (encoding included).
        sessions: the replayed or synthetic sessions.
        effort: ``min_runs`` (sessions per figure at least) and ``warmup`` (untimed batches,
            at most ``BATCH_WARMUP``).
        say: told what is being measured.

    Returns:
        ``batch{size}_sessions_per_s`` for each size; None without sessions.
    """
    figures = {}
    for size in BATCH_SIZES:
        say(f"batches of {size}")
        batches = consecutive_batches(list(sessions), size, at_least=effort.min_runs)
        rates = []
        for _ in range(THROUGHPUT_ROUNDS):
            ns = time_calls(score_batch, batches, warmup=min(effort.warmup, BATCH_WARMUP)).ns
            if len(ns):
                rates.append(size * len(ns) / (float(ns.sum()) / 1e9))
        figures[f"batch{size}_sessions_per_s"] = float(np.median(rates)) if rates else None
    return figures


def scorer_figures(scorer, sessions: Sequence[Session], effort: Effort, say: Say = _quiet) -> Measured:
    """In-process figures of one loaded artifact: session latencies, throughput, batch
    throughput and, where the artifact has a live graph, per-event latency and the bare
    step invoke's.

    Args:
        scorer: an `edge_runtime.Scorer`.
        sessions: the sessions to replay.
        effort: warm-up, runs and live events.
        say: told what is being measured.

    Returns:
        Measured: the session figures, ``sessions_per_s``, the batch figures (each batch one
        `Scorer.score_sessions` call, which encodes and scores it as it chooses) and the
        ``event_*`` and ``step_invoke_p50_us`` figures (None without a live graph).
    """
    measured = session_figures(lambda s: scorer.score_sessions([s]), sessions, effort, say)
    figures = dict(measured.figures)
    say("throughput")
    batch = list(sessions)[:THROUGHPUT_SESSIONS]
    scorer.score_sessions(batch[:50])
    ns = time_calls(scorer.score_sessions, [batch], min_runs=THROUGHPUT_ROUNDS).ns
    figures["sessions_per_s"] = len(batch) / (float(np.median(ns)) / 1e9)
    figures.update(batch_figures(lambda batch: scorer.score_sessions(batch, batch_size=len(batch)),
                                 sessions, effort, say))
    if scorer.has_step:
        say("live events")
        figures.update(live_event_figures(scorer, sessions, effort))
    return Measured(figures, measured.samples_us)


def peer_figures(score: Callable[[Session], object], sessions: Sequence[Session], effort: Effort,
                 say: Say = _quiet, score_batch: Callable[[list[Session]], object] | None = None
                 ) -> Measured:
    """In-process figures of one peer engine: session latencies and throughput, one session
    per call, and the batch figures where it scores batches.

    Args:
        score: scores one session of event dicts (the peer behind the artifact's encoder).
        sessions: the sessions to replay.
        effort: warm-up and runs.
        say: told what is being measured.
        score_batch: scores a batch of sessions of event dicts (encoding included); None:
            no batch figures.
    """
    measured = session_figures(score, sessions, effort, say)
    ns = time_calls(score, list(sessions)[:PEER_THROUGHPUT_SESSIONS]).ns
    figures = dict(measured.figures)
    figures["sessions_per_s"] = len(ns) / (float(ns.sum()) / 1e9) if len(ns) else None
    if score_batch is not None:
        figures.update(batch_figures(score_batch, sessions, effort, say))
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
