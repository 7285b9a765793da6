"""From a run directory's weights to validated, self-describing TFLite artifacts.

Facts this follows (DESIGN, measured): only a tf_keras LSTM converted with
`from_concrete_functions` and a batch-1 signature ``[1, None, F]`` becomes the single fused
UNIDIRECTIONAL_SEQUENCE_LSTM op; a Masking layer blocks fusion, so the export graph is a
clone without it that takes unpadded sessions; no artifact ships without a parity check,
because a broken conversion can load and still return garbage.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from converters.graphs import score_function, step_function
from converters.precisions import GRAPHS, PRECISIONS
from converters.tflite_metadata import add_metadata, seal
from edge_runtime import __version__
from edge_runtime.artifact import METADATA_NAME, STEP_METADATA_NAME, ArtifactInfo
from edge_runtime.errors import ArtifactError, ConfigError, RunDirError
from edge_runtime.features import FeatureSpec
from edge_runtime.live import StepModel
from edge_runtime.scorer import FUSED_LSTM_OP, Scorer
from trainer import rundir
from trainer.files import write_bytes_atomic
from trainer.model import WEIGHT_NAMES

FORBIDDEN_OPS = ("WHILE",)
DEFAULT_CALIBRATION_SESSIONS = 300
# `--auto` tries these from smallest and fastest to largest; the first within budget wins.
AUTO_ORDER = ("int8", "dynamic", "float16", "float32")


@dataclass(frozen=True)
class ConvertConfig:
    """What `convert_run` writes.

    Attributes:
        precisions: names from converters.precisions.PRECISIONS (empty: all of them).
        graphs: ``fused`` and/or ``unrolled`` (converters.graphs).
        calibration_sessions: training sessions fed to int8/16x8 calibration.
        recalibrate: fit Platt scaling on validation sessions for quantised precisions, kept
            only where it lowers the validation log-loss.
        overwrite: replace existing artifacts; otherwise an existing one fails its row.
    """

    precisions: tuple[str, ...] = ()
    graphs: tuple[str, ...] = ("fused",)
    calibration_sessions: int = DEFAULT_CALIBRATION_SESSIONS
    recalibrate: bool = True
    overwrite: bool = False

    def __post_init__(self) -> None:
        unknown = [p for p in self.precisions if p not in PRECISIONS]
        if unknown:
            raise ConfigError(f"unknown precision {unknown}; allowed {list(PRECISIONS)}")
        bad_graphs = [g for g in self.graphs if g not in GRAPHS]
        if bad_graphs or not self.graphs:
            raise ConfigError(f"unknown graph {bad_graphs or list(self.graphs)}; allowed {list(GRAPHS)}")
        if self.calibration_sessions < 1:
            raise ConfigError(f"--calibration-sessions must be >= 1, got {self.calibration_sessions}")

    @property
    def precision_names(self) -> tuple[str, ...]:
        return self.precisions or tuple(PRECISIONS)


@dataclass
class ConversionResult:
    """One row of `ubp-edge convert`'s output."""

    precision: str
    graph: str
    status: str  # "ok" | "failed" | "unsupported"
    path: str | None = None
    size_bytes: int | None = None
    reason: str | None = None
    max_abs_diff: float | None = None
    sessions_checked: int = 0
    calibration_sessions: int | None = None
    recalibrated: bool = False
    ece_before: float | None = None
    ece_after: float | None = None
    validation_roc_auc: float | None = None
    step_precision: str | None = None
    step_max_abs_diff: float | None = None
    step_sessions_checked: int = 0
    ops: list[str] = field(default_factory=list)
    model_bytes: bytes | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("model_bytes")
        return d


def artifact_path(run_dir: Path, precision: str, graph: str = "fused") -> Path:
    return run_dir / f"model-{precision}.tflite" if graph == "fused" else \
        run_dir / f"model-{graph}-{precision}.tflite"


def _sessions(parity: dict, prefix: str) -> list[np.ndarray]:
    features, offsets = parity[f"{prefix}features"], parity[f"{prefix}offsets"]
    return [features[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]


def _representative(graph: str, sessions: list[np.ndarray], max_len: int):
    """The calibration generator: dicts keyed by input name (a list in the wrong order fails)."""
    def generate():
        for x in sessions:
            x = x[-max_len:]
            if graph == "fused":
                yield {"events": x[None].astype(np.float32)}
            else:
                events = np.zeros((1, max_len, x.shape[1]), np.float32)
                mask = np.zeros((1, max_len, 1), np.float32)
                events[0, :len(x)], mask[0, :len(x)] = x, 1.0
                yield {"events": events, "mask": mask}
    return generate


def _labelled(model_bytes: bytes, entries: dict[str, bytes]) -> bytes:
    """Add metadata entries and re-seal: every intermediate artifact verifies like a final one."""
    return seal(add_metadata(model_bytes, entries))


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _validate(model_bytes: bytes, graph: str, parity: dict, tolerance: float
              ) -> tuple[Scorer, list[str], float, int]:
    """Load in edge_runtime, check ops, compare with the Keras probabilities; raise on failure."""
    scorer = Scorer.from_bytes(model_bytes, source="converted model")
    ops = scorer.op_names()
    bad_ops = sorted({op for op in ops if op in FORBIDDEN_OPS or op.startswith("Flex")
                      or op == "CUSTOM"})
    if bad_ops:
        raise ArtifactError(f"graph has ops the edge runtime must not need: {bad_ops}")
    if graph == "fused" and FUSED_LSTM_OP not in ops:
        raise ArtifactError(f"the LSTM was not fused into {FUSED_LSTM_OP}; ops: {sorted(set(ops))}")
    got = scorer.score_encoded(_sessions(parity, ""), calibrated=False)
    if not np.isfinite(got).all():
        raise ArtifactError("the converted model returns non-finite scores")
    expected = parity["keras_probability"]
    diff = float(np.max(np.abs(got - expected))) if len(got) else 0.0
    if diff > tolerance:
        raise ArtifactError(f"scores differ from the Keras model by up to {diff:.3g} "
                            f"on {len(got)} test sessions (allowed {tolerance:g})")
    return scorer, ops, diff, len(got)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def _fit_platt(p: np.ndarray, p_reference: np.ndarray) -> tuple[float, float] | None:
    """Platt scaling sigmoid(a * logit(p) + b) that maps a quantised artifact's validation
    probabilities back onto the float32 model's, or None when quantisation did not shift them
    enough to matter (cross-entropy to the float32 probabilities improves by < 1e-4).

    The target is the float32 output, not the labels: recalibration undoes what quantisation
    did and leaves the float model's own calibration alone.
    """
    from sklearn.linear_model import LogisticRegression

    z = _logit(p).reshape(-1, 1)
    target = np.clip(np.asarray(p_reference, np.float64), 1e-7, 1 - 1e-7)
    # Soft labels as two weighted copies of every session: y=1 with weight p_ref, y=0 with 1-p_ref.
    fit = LogisticRegression(C=1e6, max_iter=1000).fit(
        np.vstack([z, z]), np.r_[np.ones(len(z)), np.zeros(len(z))],
        sample_weight=np.r_[target, 1 - target])

    def cross_entropy(q: np.ndarray) -> float:
        q = np.clip(q, 1e-7, 1 - 1e-7)
        return float(-np.mean(target * np.log(q) + (1 - target) * np.log(1 - q)))

    before = cross_entropy(np.asarray(p, np.float64))
    after = cross_entropy(fit.predict_proba(z)[:, 1])
    return (float(fit.coef_[0, 0]), float(fit.intercept_[0])) if after < before - 1e-4 else None


class _Run:
    """Everything of a run directory the converter reads, loaded once."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.dir = rundir.check_run_dir(run_dir)
        try:
            self.arrays = dict(np.load(self.dir / rundir.WEIGHTS, allow_pickle=False))
            self.parity = dict(np.load(self.dir / rundir.PARITY, allow_pickle=False))
        except (OSError, ValueError) as e:
            raise RunDirError(f"{self.dir}: weights or parity sessions unreadable ({e})") from None
        self.spec = FeatureSpec.from_dict(rundir.read_json(self.dir / rundir.SPEC))
        self.report = rundir.read_json(self.dir / rundir.REPORT_JSON)
        self.config = rundir.read_json(self.dir / rundir.CONFIG)
        if "lstm_kernel" in self.arrays and self.arrays["lstm_kernel"].shape[0] != self.spec.n_features:
            raise RunDirError(f"{self.dir}: weights take {self.arrays['lstm_kernel'].shape[0]} "
                              f"features but the spec lists {self.spec.n_features}")
        missing = [k for k in ("features", "offsets", "keras_probability", "label",
                               "validation_features", "validation_offsets", "validation_label")
                   if k not in self.parity]
        missing += [f"weights.npz:{k}" for k in WEIGHT_NAMES if k not in self.arrays]
        if missing:
            raise RunDirError(f"{self.dir}: run directory written by another version, missing {missing}; "
                              f"train again")
        prefix = "calibration_" if "calibration_offsets" in self.parity else "validation_"
        # Runs written before training sessions were stored calibrate on validation sessions.
        self.calibration_source = "training" if prefix == "calibration_" else "validation"
        self.calibration = _sessions(self.parity, prefix)
        self.validation = _sessions(self.parity, "validation_")
        self.validation_label = self.parity["validation_label"]
        self._step_function = None

    @property
    def step_function(self):
        """The one-event graph's concrete function, built once per run."""
        if self._step_function is None:
            self._step_function = step_function(self.arrays)
        return self._step_function

    def reference_validation(self) -> np.ndarray:
        """Float32 Keras probabilities of the validation sessions, for runs that did not store them."""
        from trainer.model import arrays_to_model

        model = arrays_to_model(self.arrays, masking=False)
        return np.array([float(model(x[None], training=False)[0, 0]) for x in self.validation])

    def info(self, precision: str, graph: str, calibration_sessions: int | None, tf_version: str,
             threshold: float | None = None, calibration: dict | None = None) -> ArtifactInfo:
        return ArtifactInfo(
            spec=self.spec, precision=precision, graph=graph, calibration=calibration,
            threshold=float(self.report["threshold"] if threshold is None else threshold),
            provenance={
                "run_dir": self.dir.name,
                "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "training_data": Path(self.config["data"]).name,
                "training_format": self.report["data"]["format"],
                "session_gap_minutes": float(self.config["gap_minutes"]),
                "test_roc_auc_keras": self.report["test"]["lstm"]["roc_auc"],
                "calibration_sessions": calibration_sessions,
                "calibration_source": self.calibration_source if calibration_sessions else None,
                "step_precision": PRECISIONS[precision].live_precision,
                "ubp_edge": __version__, "tensorflow": tf_version,
                "python": platform.python_version()})


def _convert_one(run: _Run, graph: str, function, name: str, config: ConvertConfig) -> ConversionResult:
    """Convert, label, validate and (for quantised precisions) recalibrate one artifact in memory."""
    import tensorflow as tf

    from trainer.metrics import expected_calibration_error

    precision = PRECISIONS[name]
    result = ConversionResult(precision=name, graph=graph, status="failed")
    concrete, trackable = function
    n_cal = min(config.calibration_sessions, len(run.calibration)) if precision.needs_calibration else None
    try:
        converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], trackable)
        precision.configure(converter, _representative(graph, run.calibration[:n_cal or 0],
                                                       run.spec.max_len))
        model_bytes = converter.convert()
    except Exception as e:  # the converter raises many types; the row records why
        result.status, result.reason = "unsupported", f"converter: {_first_line(e)}"
        return result
    result.calibration_sessions = n_cal
    info = run.info(name, graph, n_cal, tf.__version__)
    model_bytes = _labelled(model_bytes, {METADATA_NAME: info.to_bytes()})
    try:
        scorer, result.ops, result.max_abs_diff, result.sessions_checked = _validate(
            model_bytes, graph, run.parity, precision.max_abs_diff)
    except ArtifactError as e:
        if "corrupted TFLite file" in str(e) or "unusable quantization" in str(e):
            # Fresh from the converter, so not damage: the converter wrote a graph the kernels
            # would abort on (seen: 16x8 of the unrolled graph, a tensor of scale 0).
            result.status = "unsupported"
            result.reason = f"converter wrote a model the runtime refuses: {e}"
        else:
            result.reason = f"validation: {e}"
        return result
    try:
        model_bytes, result.step_max_abs_diff, result.step_sessions_checked = _with_step_graph(
            run, model_bytes, scorer, precision)
    except ArtifactError as e:
        result.reason = f"step graph: {e}"
        return result
    except Exception as e:  # the converter raises many types; the row records why
        result.reason = f"step graph: converter: {_first_line(e)}"
        return result
    result.step_precision = precision.live_precision
    scorer = Scorer.from_bytes(model_bytes, source="converted model")
    p_val = scorer.score_encoded(run.validation, calibrated=False)
    result.validation_roc_auc = _roc_auc(run.validation_label, p_val)
    test_sessions, y_test = _sessions(run.parity, ""), run.parity["label"]
    result.ece_before = expected_calibration_error(y_test, scorer.score_encoded(test_sessions,
                                                                                calibrated=False))
    result.ece_after = result.ece_before
    platt = None
    if precision.quantized and config.recalibrate:
        platt = _fit_platt(p_val, run.parity["validation_keras_probability"]
                           if "validation_keras_probability" in run.parity else run.reference_validation())
    if platt is not None:
        a, b = platt
        # The threshold moves through the same monotone map: decisions do not change,
        # only the probabilities are brought back in line with the float32 model's.
        threshold = float(1 / (1 + np.exp(-(a * _logit(np.array([run.report["threshold"]]))[0] + b))))
        info = run.info(name, graph, n_cal, tf.__version__, threshold=threshold,
                        calibration={"method": "platt", "a": a, "b": b})
        model_bytes = _labelled(model_bytes, {METADATA_NAME: info.to_bytes()})
        scorer = Scorer.from_bytes(model_bytes, source="recalibrated model")
        result.recalibrated = True
        result.ece_after = expected_calibration_error(y_test, scorer.score_encoded(test_sessions))
    result.status, result.model_bytes, result.size_bytes = "ok", model_bytes, len(model_bytes)
    return result


def _convert_in_child(run_dir: str, graph: str, name: str, config: ConvertConfig) -> ConversionResult:
    """Entry point of the child process that converts one calibrated precision."""
    run = _Run(run_dir)
    return _convert_one(run, graph, score_function(graph, run.arrays, run.spec.max_len), name, config)


def _convert_isolated(run: _Run, graph: str, function, name: str, config: ConvertConfig) -> ConversionResult:
    """Calibrated precisions run the TFLite calibrator, which can abort the whole process on a
    graph it cannot take (measured: 16x8 on the unrolled graph, SIGABRT). They convert in a child
    process, so a crash becomes an "unsupported" row and the other precisions go on."""
    if not PRECISIONS[name].needs_calibration:
        return _convert_one(run, graph, function, name, config)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        try:
            return pool.submit(_convert_in_child, str(run.dir), graph, name, config).result()
        except BrokenProcessPool:
            return ConversionResult(precision=name, graph=graph, status="unsupported",
                                    reason="converter: the TFLite calibrator aborted the process "
                                           "on this graph")


STEP_PARITY_SESSIONS = 100


def _with_step_graph(run: _Run, model_bytes: bytes, scorer: Scorer, precision
                     ) -> tuple[bytes, float, int]:
    """Convert the one-event graph at the precision's live precision, check that pushing a
    session's events one at a time reproduces scoring each prefix whole, and embed it.

    Returns:
        (artifact bytes with the step graph inside, max |p_step - p_prefix|, sessions checked)
    """
    import tensorflow as tf

    concrete, module = run.step_function
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], module)
    PRECISIONS[precision.live_precision].configure(converter)
    step_bytes = converter.convert()
    step = StepModel(step_bytes, "auto", 1, "step graph")
    sessions = _sessions(run.parity, "")[:STEP_PARITY_SESSIONS]
    worst = 0.0
    for x in sessions:
        h = np.zeros((1, step.units), np.float32)
        c = np.zeros((1, step.units), np.float32)
        for t in range(len(x)):
            p, h, c = step(x[t], h, c)
            whole = scorer.score_features(x[:t + 1], calibrated=False)
            worst = max(worst, abs(p - whole))
    if not np.isfinite(worst) or worst > precision.step_max_abs_diff:
        raise ArtifactError(f"pushing events one at a time differs from scoring the prefix whole "
                            f"by up to {worst:.3g} on {len(sessions)} test sessions (allowed "
                            f"{precision.step_max_abs_diff:g})")
    return _labelled(model_bytes, {STEP_METADATA_NAME: step_bytes}), float(worst), len(sessions)


def _roc_auc(y: np.ndarray, p: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else None


def _write(run: _Run, result: ConversionResult, overwrite: bool) -> None:
    out = artifact_path(run.dir, result.precision, result.graph)
    if out.exists() and not overwrite:
        result.status, result.reason = "failed", f"{out} exists; pass --overwrite to replace it"
        return
    write_bytes_atomic(out, result.model_bytes)
    result.path = str(out)


def convert_run(run_dir: str | os.PathLike, precisions: list[str] | None = None,
                overwrite: bool = False, config: ConvertConfig | None = None) -> list[ConversionResult]:
    """Convert a run's weights into one validated artifact per precision and graph.

    Args:
        run_dir: a directory written by `trainer.train.train`.
        precisions: shorthand for ``config.precisions`` (default: all of them).
        overwrite: shorthand for ``config.overwrite``.
        config: the full options; overrides ``precisions`` and ``overwrite``.

    Returns:
        One ConversionResult per (graph, precision); a precision the graph cannot take is a
        row with status "unsupported" and the converter's reason, and the others go on.

    Raises:
        RunDirError: the run directory is missing or incomplete.
        ConfigError: an unknown precision or graph.

    Example:
        >>> rows = convert_run("runs/taobao", ["float32", "dynamic"])
        >>> [(r.precision, r.status, r.size_bytes) for r in rows]
    """
    config = config or ConvertConfig(precisions=tuple(precisions or ()), overwrite=overwrite)
    run = _Run(run_dir)
    results = []
    for graph in config.graphs:
        function = score_function(graph, run.arrays, run.spec.max_len)
        for name in config.precision_names:
            result = _convert_isolated(run, graph, function, name, config)
            if result.status == "ok":
                _write(run, result, config.overwrite)
            results.append(result)
    return results


def _p50_us(model_bytes: bytes, sessions: list[np.ndarray]) -> float:
    """Median wall time of scoring one encoded session, after a warm-up, one thread."""
    import time

    scorer = Scorer.from_bytes(model_bytes, source="candidate")
    for x in sessions[:20]:
        scorer.score_features(x)
    times = []
    for x in sessions:
        start = time.perf_counter_ns()
        scorer.score_features(x)
        times.append(time.perf_counter_ns() - start)
    return float(np.median(times)) / 1000.0 if times else float("nan")


def auto_convert(run_dir: str | os.PathLike, max_auc_drop: float, overwrite: bool = False,
                 calibration_sessions: int = DEFAULT_CALIBRATION_SESSIONS
                 ) -> tuple[ConversionResult, list[ConversionResult], str]:
    """Pick the smallest, fastest fused precision whose validation ROC-AUC stays within
    ``max_auc_drop`` of float32 (int8, then dynamic, then float16, then float32).

    Writes the float32 reference and the chosen artifact.

    Returns:
        (chosen, every candidate's row, the reason in one sentence with the figures).
    """
    if not max_auc_drop >= 0:
        raise ConfigError(f"--max-auc-drop must be >= 0, got {max_auc_drop}")
    config = ConvertConfig(precisions=AUTO_ORDER, calibration_sessions=calibration_sessions,
                           overwrite=overwrite)
    run = _Run(run_dir)
    function = score_function("fused", run.arrays, run.spec.max_len)
    rows = {name: _convert_isolated(run, "fused", function, name, config) for name in AUTO_ORDER}
    reference = rows["float32"]
    if reference.status != "ok":
        raise ArtifactError(f"{run.dir}: the float32 reference failed: {reference.reason}")
    ref_auc = reference.validation_roc_auc or 0.0
    latency = {name: _p50_us(row.model_bytes, run.validation[:200])
               for name, row in rows.items() if row.status == "ok"}
    for name in AUTO_ORDER:
        row = rows[name]
        if row.status != "ok":
            continue
        drop = ref_auc - (row.validation_roc_auc or 0.0)
        if drop <= max_auc_drop:
            skipped = [f"{n} (" + (f"drop {ref_auc - (rows[n].validation_roc_auc or 0):.4f}"
                                   if rows[n].status == "ok" else rows[n].status) + ")"
                       for n in AUTO_ORDER[:AUTO_ORDER.index(name)]]
            others = ", ".join(f"{n} {us:.0f} us" for n, us in latency.items() if n != name)
            why = (f"{name}: validation ROC-AUC {row.validation_roc_auc:.4f} vs float32 {ref_auc:.4f} "
                   f"(drop {drop:.4f} <= {max_auc_drop}), {row.size_bytes / reference.size_bytes:.2f}x "
                   f"the float32 size, p50 {latency[name]:.0f} us per session here ({others})"
                   + (f"; ruled out before it: {', '.join(skipped)}" if skipped else ""))
            for chosen in {name, "float32"}:
                _write(run, rows[chosen], overwrite)
            return row, list(rows.values()), why
    raise ArtifactError("no precision converted")  # float32 always qualifies; kept for safety
