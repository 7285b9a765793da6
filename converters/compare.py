"""Float32 against every other artifact of a run, on the same sessions.

The log is read and sessionized once, encoded once per distinct FeatureSpec, and every
artifact scores exactly the same encoded sessions through the edge runtime. The float32
fused artifact is the reference: each other artifact gets its metrics, their deltas, how
far its probabilities move (max/mean |dp|, Spearman), how many decisions flip at the
operating threshold, its size and its per-session latency. An artifact that does not load
becomes a row with status "failed" and the reason; the others still compare.

Probabilities are what the device returns, i.e. after an artifact's own recalibration
(Platt scaling written by `convert`); `max_abs_diff_uncalibrated` is the drift of the raw
model output, which is what quantisation alone changed.

The log arrives as one `trainer.logsource.EventLogSource`; reading it, sessionizing it with
the reference artifact's gap and the warnings about what it lacks are
`trainer.scoring.scorable_sessions`, the same step `score` and `evaluate` take.

Example:
    >>> from converters.compare import compare_run
    >>> from trainer.logsource import EventLogSource
    >>> source = EventLogSource("../shared/data/taobao/UserBehavior_sample.csv", format="taobao")
    >>> r = compare_run("runs/taobao", source)
    >>> [(a["precision"], a["graph"], round(a["delta_roc_auc"], 4)) for a in r["artifacts"]][:3]
    [('float32', 'fused', 0.0), ('float16', 'fused', -0.0), ('dynamic', 'fused', -0.0002)]
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from converters.precisions import GRAPHS, PRECISIONS
from edge_runtime.errors import ArtifactError, ConfigError, RunDirError, UbpEdgeError
from edge_runtime.scorer import Scorer
from edge_runtime.timing import time_calls
from trainer.logsource import EventLogSource
from trainer.metrics import (
    MARKETING_KEYS,
    METRICS,
    PREFIX_BUCKETS,
    classification_metrics,
    expected_calibration_error,
    marketing_metrics,
    roc_auc_or_none,
)
from trainer.rundir import SPLIT_NAMES

# `ubp-edge --help` imports this module (for SPLITS and REFERENCE): trainer.scoring (pyarrow)
# and converters.tflite are imported where they are used.
if TYPE_CHECKING:
    from trainer.scoring import ScorableSessions

REFERENCE = "float32"
REFERENCE_GRAPH = "fused"
# --split: which sessions are compared, and what each choice means (`compare --help`).
SPLITS: dict[str, str] = {
    "auto": "the run's test split when the log holds it, else every scorable session",
    "all": "every scorable session of the log",
    **{name: f"the run's {name} split" for name in SPLIT_NAMES},
}
# The quality figures of each row, in JSON order: keys of trainer.metrics.METRICS.
COMPARED_METRICS: tuple[str, ...] = tuple(METRICS[k].key for k in (
    "roc_auc", "pr_auc", "log_loss", "brier", "ece", "accuracy", "f1"))
AGREEMENT = ("flip_rate", "max_abs_diff", "mean_abs_diff", "spearman")
ECE_BINS = 10
WARMUP_SESSIONS = 20

# Every artifact row has exactly these keys, in this order, whatever its status.
ARTIFACT_KEYS = ("precision", "graph", "path", "status", "reason", "threshold", "recalibrated",
                 "size_bytes", "size_ratio", *[k for m in COMPARED_METRICS for k in (m, f"delta_{m}")],
                 *AGREEMENT, "max_abs_diff_uncalibrated", "p50_us", "by_prefix_length",
                 *MARKETING_KEYS)
BUCKET_KEYS = ("n_sessions", "roc_auc", "delta_roc_auc")
RESULT_KEYS = ("reference", "run_dir", "data", "split", "split_reason", "n_sessions",
               "n_positive", "n_excluded_empty_prefix", "bad_rows", "warnings", "artifacts")


@dataclass
class ArtifactRow:
    """One artifact: where it is, whether it scored, and its scores on the chosen sessions."""

    path: Path
    precision: str
    graph: str
    status: str = "failed"  # "ok" | "failed"
    reason: str | None = None
    threshold: float | None = None
    size_bytes: int | None = None
    recalibrated: bool | None = None
    probability: np.ndarray | None = None  # what the device returns (recalibration applied)
    raw_probability: np.ndarray | None = None  # the model's own output, before recalibration
    latency_ns: np.ndarray | None = None
    metrics: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def label(self) -> str:
        """Short name for tables and legends: ``dynamic`` or ``unrolled/int8``."""
        return self.precision if self.graph == REFERENCE_GRAPH else f"{self.graph}/{self.precision}"


@dataclass
class Comparison:
    """Everything `compare` measured: the JSON summary plus the arrays the plots need."""

    run_dir: Path
    data: str
    split: str
    split_reason: str
    label: np.ndarray  # (N,) 0/1
    prefix_len: np.ndarray  # (N,) events scored per session: the whole prefix, as live scoring reads it
    rows: list[ArtifactRow]
    n_excluded_empty_prefix: int
    bad_rows: dict
    warnings: list[str]

    @property
    def reference(self) -> ArtifactRow:
        return self.rows[0]

    @property
    def ok_rows(self) -> list[ArtifactRow]:
        return [r for r in self.rows if r.status == "ok"]

    def to_dict(self) -> dict:
        """The `compare --json` object (keys in RESULT_KEYS, rows in ARTIFACT_KEYS)."""
        return {"reference": REFERENCE, "run_dir": str(self.run_dir), "data": self.data,
                "split": self.split, "split_reason": self.split_reason,
                "n_sessions": int(len(self.label)), "n_positive": int(self.label.sum()),
                "n_excluded_empty_prefix": self.n_excluded_empty_prefix,
                "bad_rows": self.bad_rows, "warnings": list(self.warnings),
                "artifacts": [r.metrics for r in self.rows]}


def parse_artifact_name(path: Path) -> tuple[str, str]:
    """(precision, graph) that a file name ``model-[graph-]precision.tflite`` stands for.

    Only used for rows that fail to load; a loaded artifact's own metadata is the truth.
    Precision names may hold a hyphen (``int8-io``), so known precisions are tried first.
    """
    stem = path.name[len("model-"):-len(".tflite")]
    if stem in PRECISIONS:
        return stem, REFERENCE_GRAPH
    for i, ch in enumerate(stem):
        if ch == "-" and stem[i + 1:] in PRECISIONS:
            return stem[i + 1:], stem[:i]
    return stem, REFERENCE_GRAPH


def find_artifacts(run_dir: Path) -> list[Path]:
    """The run's ``model-*.tflite`` files, the float32 fused reference first.

    Raises:
        RunDirError: no run directory, or no float32 reference in it.
    """
    from converters.tflite import artifact_path

    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: no such run directory (create one with `ubp-edge train`)")
    reference = artifact_path(run_dir, REFERENCE, REFERENCE_GRAPH)
    if not reference.is_file():
        raise RunDirError(f"{run_dir}: no {reference.name} to compare against; run "
                          f"`ubp-edge convert {run_dir}` first")
    others = [p for p in run_dir.glob("model-*.tflite") if p != reference and p.is_file()]
    return [reference, *sorted(others, key=_table_order)]


def compare_inputs(run_dir: str | os.PathLike) -> list[Path]:
    """The files `run_comparison` reads in ``run_dir``: its ``model-*.tflite`` and split.json
    (none when it is not a directory), for the output guard (`trainer.files.check_outputs`)."""
    from trainer.rundir import SPLIT

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    return [*sorted(run_dir.glob("model-*.tflite")), run_dir / SPLIT]


def _table_order(path: Path) -> tuple:
    """Graphs in GRAPHS order, precisions in PRECISIONS order, unknown names last."""
    precision, graph = parse_artifact_name(path)
    names, graphs = list(PRECISIONS), list(GRAPHS)
    return (graphs.index(graph) if graph in graphs else len(graphs),
            names.index(precision) if precision in names else len(names), path.name)


def _load(path: Path, backend: str, strict: bool = False) -> tuple[Scorer | None, ArtifactRow]:
    """Load one artifact; a fault becomes a failed row (or, with ``strict``, is raised)."""
    from converters.tflite import artifact_path

    precision, graph = parse_artifact_name(path)
    row = ArtifactRow(path=path, precision=precision, graph=graph)
    try:
        row.size_bytes = path.stat().st_size
        scorer = Scorer.load(path, backend=backend)
    except UbpEdgeError as e:
        if strict:
            raise
        row.reason = str(e)
        return None, row
    except OSError as e:
        row.reason = f"{path}: cannot read ({e.strerror or e})"
        if strict:
            raise ArtifactError(row.reason) from None
        return None, row
    row.precision, row.graph, row.threshold = scorer.info.precision, scorer.info.graph, scorer.threshold
    row.recalibrated = scorer.info.calibration is not None
    expected = artifact_path(path.parent, row.precision, row.graph).name
    if expected != path.name:
        # A renamed copy would show up as a second, misleading row of another precision.
        row.reason = (f"{path}: file name does not match its metadata (precision "
                      f"{row.precision!r}, graph {row.graph!r}: expected {expected})")
        if strict:
            raise ArtifactError(row.reason)
        return None, row
    return scorer, row


def _choose_sessions(run_dir: Path, scorable: ScorableSessions,
                     split: str) -> tuple[np.ndarray, str, str, list[str]]:
    """Which of the scorable sessions to compare on: (mask over ``scorable.index``, the split's
    name, a sentence on why, warnings)."""
    from trainer.rundir import SPLIT
    from trainer.scoring import split_keys

    everything = np.ones(len(scorable.index), bool)
    manifest = run_dir / SPLIT
    data = scorable.source.path
    if split == "all":
        return everything, "all", "all scorable sessions of the log", []
    if split == "auto":
        if not manifest.is_file():
            return everything, "all", f"all scorable sessions ({manifest.name} absent)", []
        wanted = split_keys(manifest, "test")
        present = scorable.digest_mask(wanted)
        if wanted and int(present.sum()) == len(wanted):
            return present, "test", f"the run's test split ({len(wanted):,} sessions of " \
                                    f"{manifest.name})", []
        return everything, "all", ("all scorable sessions (the log does not hold the run's test "
                                   f"split: {int(present.sum()):,} of its {len(wanted):,} sessions "
                                   f"found)"), []
    if not manifest.is_file():
        raise RunDirError(f"{run_dir}: --split {split} needs {manifest.name}, which is absent")
    wanted = split_keys(manifest, split)
    present = scorable.digest_mask(wanted)
    if not present.any():
        raise ConfigError(f"{data}: none of the {len(wanted):,} {split} sessions of {manifest} is "
                          f"in this log; use --split all for another log")
    warnings = []
    if int(present.sum()) < len(wanted):
        warnings.append(f"{data}: only {int(present.sum()):,} of the {len(wanted):,} {split} "
                        f"sessions of {manifest} are in this log")
    return present, split, f"the run's {split} split ({int(present.sum()):,} sessions)", warnings


def _score_timed(scorer: Scorer, encoded: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and per-session wall time (ns), each session once, after a short warm-up."""
    timings = time_calls(scorer.score_features, encoded, warmup=min(WARMUP_SESSIONS, len(encoded)),
                         keep_results=True)
    return np.asarray(timings.results, np.float32), timings.ns


def _num(x) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else float(x)


def _delta(a, b) -> float | None:
    return None if a is None or b is None else float(a) - float(b)


def _quality(y: np.ndarray, p: np.ndarray, threshold: float) -> dict:
    m = classification_metrics(y, p, threshold)
    m["ece"] = _num(expected_calibration_error(y, p, ECE_BINS))
    return {k: m[k] for k in COMPARED_METRICS}


def _summarise(row: ArtifactRow, ref: ArtifactRow, y: np.ndarray, prefix_len: np.ndarray) -> dict:
    """The row's JSON object; metric fields None unless the row is ok."""
    out = dict.fromkeys(ARTIFACT_KEYS)
    out.update(precision=row.precision, graph=row.graph, path=str(row.path), status=row.status,
               reason=row.reason, threshold=row.threshold, recalibrated=row.recalibrated,
               size_bytes=row.size_bytes,
               size_ratio=(row.size_bytes / ref.size_bytes
                           if row.size_bytes is not None and ref.size_bytes else None))
    if row.status != "ok":
        return out
    p, p_ref = row.probability.astype(np.float64), ref.probability.astype(np.float64)
    mine, theirs = _quality(y, p, row.threshold), _quality(y, p_ref, ref.threshold)
    for k in COMPARED_METRICS:
        out[k], out[f"delta_{k}"] = mine[k], _delta(mine[k], theirs[k])
    diff = np.abs(p - p_ref)
    out["flip_rate"] = float(np.mean((p >= row.threshold) != (p_ref >= ref.threshold))) if len(p) else None
    out["max_abs_diff"] = float(diff.max()) if len(p) else None
    out["mean_abs_diff"] = float(diff.mean()) if len(p) else None
    out["spearman"] = _spearman(p, p_ref)
    raw = np.abs(row.raw_probability.astype(np.float64) - ref.raw_probability.astype(np.float64))
    out["max_abs_diff_uncalibrated"] = float(raw.max()) if len(p) else None
    out["p50_us"] = float(np.median(row.latency_ns)) / 1e3 if len(row.latency_ns) else None
    buckets = {}
    for name, lo, hi in PREFIX_BUCKETS:
        sel = (prefix_len >= lo) & (prefix_len <= hi)
        auc, auc_ref = roc_auc_or_none(y[sel], p[sel]), roc_auc_or_none(y[sel], p_ref[sel])
        buckets[name] = {"n_sessions": int(sel.sum()), "roc_auc": auc,
                         "delta_roc_auc": _delta(auc, auc_ref)}
    out["by_prefix_length"] = buckets
    # Lift, capture, gains and the calibration bins: trainer.metrics.marketing_metrics.
    out.update(marketing_metrics(y, p, ECE_BINS))
    return out


def _spearman(p: np.ndarray, q: np.ndarray) -> float | None:
    if len(p) < 2 or np.ptp(p) == 0 or np.ptp(q) == 0:
        return 1.0 if len(p) and np.array_equal(p, q) else None
    from scipy.stats import spearmanr

    return _num(spearmanr(p, q).statistic)


def run_comparison(run_dir: str | os.PathLike, source: EventLogSource, split: str = "auto",
                   backend: str = "auto") -> Comparison:
    """Score one log with every artifact of a run and compare each with float32.

    Args:
        run_dir: a run directory holding ``model-float32.tflite`` and possibly others.
        source: a labelled event log and how to read it; sessions are split with the
            reference artifact's gap unless ``source.gap_minutes`` says otherwise.
        split: a key of SPLITS: ``auto`` (the run's test split when the log holds all of it,
            else every scorable session), ``all``, ``train``, ``validation`` or ``test``.
        backend: the interpreter backend for every artifact (as `Scorer.load`).

    Returns:
        Comparison; its ``to_dict()`` is the `compare --json` object.

    Raises:
        RunDirError: no run directory or no float32 artifact, or a split without split.json.
        ArtifactError: the float32 artifact does not load.
        DataError: the log cannot be read.
        ConfigError: an unknown split, or no session to compare on.
    """
    from trainer.scoring import scorable_sessions

    if split not in SPLITS:
        raise ConfigError(f"--split {split!r}: expected one of {', '.join(SPLITS)}")
    run_dir = Path(run_dir)
    paths = find_artifacts(run_dir)
    # The reference must load: without it there is nothing to compare against.
    loaded = [_load(paths[0], backend, strict=True)] + [_load(p, backend) for p in paths[1:]]
    ref_scorer, ref = loaded[0]

    scorable = scorable_sessions(source, ref_scorer)
    mask, split_name, reason, split_warnings = _choose_sessions(run_dir, scorable, split)
    chosen = scorable.select(mask, split_warnings)
    if len(chosen.index) == 0:
        raise ConfigError(f"{source.path}: no session with events before its outcome to compare on")

    for scorer, row in loaded:
        if scorer is not None:
            _score_row(scorer, row, chosen)
    rows = [row for _, row in loaded]
    if ref.status != "ok":
        raise ArtifactError(ref.reason)

    y = chosen.sessions.label[chosen.index].astype(np.int64)
    prefix_len = chosen.sessions.prefix_len[chosen.index].astype(np.int64)
    for row in rows:
        row.metrics = _summarise(row, ref, y, prefix_len)
    return Comparison(run_dir=run_dir, data=str(source.path), split=split_name, split_reason=reason,
                      label=y, prefix_len=prefix_len, rows=rows,
                      n_excluded_empty_prefix=int((~chosen.sessions.scorable).sum()),
                      bad_rows=chosen.log.bad.summary(), warnings=chosen.warnings)


def _score_row(scorer: Scorer, row: ArtifactRow, chosen: ScorableSessions) -> None:
    """Score the chosen sessions with one artifact into its row; a fault leaves it failed."""
    encoded = chosen.encoded(scorer)  # once per FeatureSpec: a run's artifacts share one
    try:
        row.probability, row.latency_ns = _score_timed(scorer, encoded)
        # Recalibration moves probabilities on purpose; the raw output shows what
        # quantisation alone changed.
        row.raw_probability = (scorer.score_encoded(encoded, calibrated=False)
                               if row.recalibrated else row.probability)
    except UbpEdgeError as e:
        row.reason = f"{row.path}: scoring failed ({e})"
        return
    if not np.isfinite(row.probability).all():
        row.reason = f"{row.path}: returns non-finite scores"
        return
    row.status = "ok"


def compare_run(run_dir: str | os.PathLike, source: EventLogSource, split: str = "auto",
                backend: str = "auto") -> dict:
    """The `ubp-edge compare --json` object: every artifact of a run against float32.

    Args, Raises: as `run_comparison`.

    Returns:
        ``{"reference": "float32", "data", "split", "n_sessions", "n_positive",
        "artifacts": [...], ...}``; each artifact row has the keys of ARTIFACT_KEYS, None
        where they do not apply (a failed row has no metrics).
    """
    return run_comparison(run_dir, source, split, backend).to_dict()


def gate(comparison: Comparison | dict, max_auc_drop: float | None = None,
         max_flip_rate: float | None = None) -> list[str]:
    """Lines naming each artifact outside the budgets; empty when all are within.

    An artifact that failed to load or score cannot show it is within a budget, so with
    any budget set it fails the gate too.
    """
    if max_auc_drop is None and max_flip_rate is None:
        return []
    rows = comparison["artifacts"] if isinstance(comparison, dict) else [r.metrics for r in comparison.rows]
    problems = []
    for r in rows:
        name = Path(r["path"]).name
        if r["status"] != "ok":
            problems.append(f"{name}: {r['status']}, so it cannot be checked against the budget")
            continue
        if max_auc_drop is not None and r["delta_roc_auc"] is not None and -r["delta_roc_auc"] > max_auc_drop:
            problems.append(f"{name}: ROC-AUC drop {-r['delta_roc_auc']:.4f} > --max-auc-drop "
                            f"{max_auc_drop:g} (float32 {r['roc_auc'] - r['delta_roc_auc']:.4f}, "
                            f"this {r['roc_auc']:.4f})")
        if max_flip_rate is not None and r["flip_rate"] is not None and r["flip_rate"] > max_flip_rate:
            problems.append(f"{name}: flip rate {r['flip_rate']:.4f} > --max-flip-rate "
                            f"{max_flip_rate:g}")
    return problems
