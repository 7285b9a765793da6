"""`run_benchmark`: everything `ubp-edge benchmark` measures, as one library call.

The CLI parses its options into a `BenchmarkRequest`, calls `run_benchmark` and renders the
`BenchmarkResult` (`benchmarks.report.terminal_table`, `benchmarks.report.write_report`,
or `BenchmarkResult.to_dict` for ``--json``). Between the two, in named stages:

1. `find_artifacts`: the artifacts of the target (one file, or a run directory's
   ``model-*.tflite``), and the run directory whose weights the peers use
   (`check_peer_weights` refuses ``peers`` without them before anything is measured);
2. `load_sessions`: replayed from a log (`benchmarks.sessions.replayed_sessions`) or the
   embedded synthetic ones (`benchmarks.sessions.synthetic_sessions`);
3. `artifact_row` for each artifact (`benchmarks.measure`: in-process latency, throughput
   one call and in batches of 64 and 256, live push beside a bare step invoke; cold start and
   live memory in fresh processes through `edge_runtime.probes`);
4. `peer_rows` with ``peers``: Keras, ONNX Runtime and NumPy on the same weights
   (`benchmarks.engines`), timed the same way, batches included;
5. `add_ratios`: each row's figures against the best ubp-edge row.

Rows have exactly the keys `benchmarks.columns.ROW_KEYS`, in that order.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.columns import ROW_KEYS
from benchmarks.measure import Effort, Measured, cold_start, live_memory, peer_figures, scorer_figures
from benchmarks.sessions import replayed_sessions, synthetic_sessions
from edge_runtime.errors import ConfigError, UbpEdgeError
from trainer.logsource import EventLogSource
from trainer.rundir import RunDirectory

Progress = Callable[[str], None]
ENGINE = "ubp-edge"
# The figures compared across engines; lower is better for each but the throughputs.
RATIO_KEYS = ("session_p50_us", "session50_p50_us", "sessions_per_s", "batch64_sessions_per_s",
              "batch256_sessions_per_s")
HIGHER_IS_BETTER = ("sessions_per_s", "batch64_sessions_per_s", "batch256_sessions_per_s")


@dataclass(frozen=True)
class BenchmarkRequest:
    """What to benchmark and how hard; checks itself when built.

    Attributes:
        target: an artifact, or a run directory (every ``model-*.tflite`` in it).
        source: replay the scorable session prefixes of this log; None: the embedded
            synthetic sessions.
        peers: also Keras, ONNX Runtime and NumPy on the same weights (needs the run
            directory's ``weights.npz``).
        effort: threads, warm-up, timed runs, cold starts, live sessions and events
            (`benchmarks.measure.Effort`, which checks its counts).
        replay_limit: the most session prefixes replayed from ``source``.

    Raises:
        ConfigError: ``replay_limit`` not positive.
    """

    target: Path
    source: EventLogSource | None = None
    peers: bool = False
    effort: Effort = field(default_factory=Effort)
    replay_limit: int = 3000

    def __post_init__(self) -> None:
        object.__setattr__(self, "target", Path(self.target))
        if self.replay_limit < 1:
            raise ConfigError(f"benchmark settings must be positive: replay_limit {self.replay_limit!r}")


@dataclass(frozen=True)
class BenchmarkResult:
    """The figures of one benchmark.

    Attributes:
        machine: what they were measured on (`machine`).
        threads: the interpreter threads asked for.
        sessions: where the sessions came from, for a person (``"3,000 replayed from PATH"``).
        rows: one dict per artifact then per peer, each with exactly ``ROW_KEYS`` in order.
        samples: whole-session latencies in microseconds per row label (for the CDF plot);
            None for a row without them.
        live_sessions: the live sessions held for the memory figure (the terminal header
            names it).
    """

    machine: dict
    threads: int
    sessions: str
    rows: list[dict]
    samples: dict[str, list[float] | None] = field(default_factory=dict)
    live_sessions: int = 10_000

    def to_dict(self) -> dict:
        """The ``benchmark --json`` object: ``machine``, ``threads``, ``sessions``, ``rows``."""
        return {"machine": self.machine, "threads": self.threads, "sessions": self.sessions,
                "rows": [{k: row.get(k) for k in ROW_KEYS} for row in self.rows]}


def machine() -> dict:
    """What the figures are measured on: CPU, cores, system, Python, numpy, ai-edge-litert."""
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


def find_artifacts(target: Path) -> tuple[list[Path], Path]:
    """The artifacts to measure and the run directory beside them.

    Args:
        target: an artifact, or a run directory.

    Returns:
        ``(artifacts, run_dir)``: a run directory's ``model-*.tflite`` (compare's order,
        graph then precision, where there is a float32 reference), or the one file and its
        folder.

    Raises:
        ConfigError: ``target`` does not exist, or holds no ``model-*.tflite``.
    """
    if target.is_dir():
        from converters.compare import find_artifacts as compare_order

        # compare's ordering (graph, then precision); it insists on a float32 reference,
        # which a benchmark does not need.
        paths = compare_order(target) if (target / "model-float32.tflite").exists() \
            else sorted(target.glob("model-*.tflite"))
        run_dir = target
    elif target.is_file():
        paths, run_dir = [target], target.parent
    else:
        raise ConfigError(f"{target}: no such artifact or run directory")
    if not paths:
        raise ConfigError(f"{target}: no model-*.tflite artifacts; run `ubp-edge convert` first")
    return paths, run_dir


def check_peer_weights(run_dir: Path) -> None:
    """Refuse ``--peers`` early (before minutes of measuring) when the run directory the peers
    are built from is missing its weights or is damaged.

    Raises:
        ConfigError: no ``weights.npz`` in ``run_dir``.
        RunDirError: the run directory is incomplete or one of its files is damaged.
    """
    if not (run_dir / "weights.npz").is_file():
        raise ConfigError(f"--peers needs the run directory's weights: {run_dir / 'weights.npz'} "
                          f"not found")
    RunDirectory(run_dir)  # reads and checks every file the peers will read


def load_sessions(request: BenchmarkRequest) -> tuple[list[list[dict]], str]:
    """The sessions to replay and where they came from, for a person.

    Returns:
        ``(sessions, description)``, e.g. ``"3,000 replayed from data.csv"`` or
        ``"1,487 embedded synthetic"``.

    Raises:
        DataError: the request's log cannot be read.
    """
    if request.source is not None:
        sessions = replayed_sessions(request.source, request.replay_limit)
        return sessions, f"{len(sessions):,} replayed from {request.source.path}"
    sessions = synthetic_sessions()
    return sessions, f"{len(sessions):,} embedded synthetic"


def _row(**values) -> dict:
    row = dict.fromkeys(ROW_KEYS)
    row.update(values)
    return row


def artifact_row(path: Path, sessions: list[list[dict]], effort: Effort, say: Progress
                 ) -> tuple[dict, Measured | None]:
    """Measure one artifact: in-process figures, cold start and live memory.

    Returns:
        ``(row, measured)``: a row with status "ok" and every figure that applies, or with
        status "failed" and the reason (measured is then None).
    """
    from edge_runtime.scorer import Scorer

    row = _row(engine=ENGINE, status="failed", size_bytes=path.stat().st_size)
    try:
        scorer = Scorer.load(path, num_threads=effort.threads)
        row.update(precision=scorer.info.precision, graph=scorer.info.graph)
        say(f"{path.name}: cold start")
        cold = cold_start(path, effort)
        row.update(cold_start_ms=cold["cold_start_ms"], rss_mb=cold["rss_mb"])
        measured = scorer_figures(scorer, sessions, effort, lambda what: say(f"{path.name}: {what}"))
        if scorer.has_step:
            say(f"{path.name}: {effort.live_sessions:,} live sessions")
            row["rss_live_mb"] = live_memory(path, effort)["rss_live_mb"]
    except UbpEdgeError as e:
        row["reason"] = str(e)
        return row, None
    row["status"] = "ok"
    row.update(measured.figures)
    return row, measured


def peer_rows(run_dir: Path, sessions: list[list[dict]], encoder_scorer, effort: Effort,
              say: Progress) -> list[tuple[dict, Measured | None]]:
    """Measure every peer engine (`benchmarks.engines.build_peers`) on the same sessions.

    Peers score encoded sessions; the artifact's FeatureEncoder (``encoder_scorer``) encodes
    each one inside the timed call, as an artifact's own timing includes it, one session at
    a time or a whole batch (every peer scores batches, `benchmarks.engines.batched`).

    Returns:
        ``(row, measured)`` per peer, in `build_peers` order; failed peers are not measured.
    """
    from benchmarks.engines import build_peers

    say("peers: building (Keras, ONNX Runtime, NumPy)")
    rows = []
    for peer in build_peers(run_dir, threads=effort.threads):
        row = _row(engine=peer.engine, precision=peer.precision, graph=None, status=peer.status,
                   reason=peer.reason, size_bytes=peer.size_bytes)
        measured = None
        if peer.status == "ok":
            say(f"peer {peer.engine} {peer.precision}")

            def run(session, score=peer.score):
                return score(encoder_scorer.encode_session(session))

            def run_batch(batch, score_batch=peer.score_batch):
                # The artifact's batch encoder, as its own batches get (Scorer.score_sessions).
                return score_batch(encoder_scorer.encode_sessions(batch))

            measured = peer_figures(run, sessions, effort, score_batch=run_batch)
            row.update(measured.figures)
        rows.append((row, measured))
    return rows


def add_ratios(rows: list[dict]) -> None:
    """Set each ok row's ``ratio_to_best``: its ``RATIO_KEYS`` figures over the best ok
    ubp-edge row's (the smallest latency, the largest throughput); None on failed rows."""
    ours = [r for r in rows if r["engine"] == ENGINE and r["status"] == "ok"]
    best = {}
    for key in RATIO_KEYS:
        values = [r[key] for r in ours if r[key] is not None]
        if values:
            best[key] = max(values) if key in HIGHER_IS_BETTER else min(values)
    for row in rows:
        row["ratio_to_best"] = {k: (row[k] / best[k] if row.get(k) is not None and best.get(k) else None)
                                for k in RATIO_KEYS} if row["status"] == "ok" else None


def sample_label(row: dict) -> str:
    """A row's name in the CDF plot: engine and precision, and the graph unless fused."""
    graph = row["graph"]
    return f"{row['engine']} {row['precision']}{'' if graph in (None, 'fused') else ' ' + graph}"


def run_benchmark(request: BenchmarkRequest, progress: Progress | None = None) -> BenchmarkResult:
    """Measure every artifact of ``request.target`` (and, with ``peers``, every peer engine).

    Args:
        request: what to measure and how hard.
        progress: called with a short line ("model-float32.tflite: cold start") as each stage
            starts, for a spinner; None for silence.

    Returns:
        BenchmarkResult: one row per artifact, then one per peer; a row that could not be
        measured has status "failed" and the reason.

    Raises:
        ConfigError: no such target, no artifacts in it, or ``peers`` without the run
            directory's ``weights.npz``.
        DataError: ``source`` cannot be read.
    """
    from edge_runtime.scorer import Scorer

    say = progress or (lambda _what: None)
    effort = request.effort
    paths, run_dir = find_artifacts(request.target)
    if request.peers:
        check_peer_weights(run_dir)
    sessions, described = load_sessions(request)
    measured = [artifact_row(path, sessions, effort, say) for path in paths]
    if request.peers:
        measured += peer_rows(run_dir, sessions, Scorer.load(paths[0]), effort, say)
    rows = [row for row, _ in measured]
    add_ratios(rows)
    samples = {sample_label(row): m.samples_us if m else None for row, m in measured}
    return BenchmarkResult(machine=machine(), threads=effort.threads, sessions=described, rows=rows,
                           samples=samples, live_sessions=effort.live_sessions)
