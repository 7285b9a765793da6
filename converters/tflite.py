"""From a run directory's weights to validated, self-describing TFLite artifacts.

Facts this follows (DESIGN, measured): only a tf_keras LSTM converted with
`from_concrete_functions` and a batch-1 signature ``[1, None, F]`` becomes the single fused
UNIDIRECTIONAL_SEQUENCE_LSTM op; a Masking layer blocks fusion, so the export graph is a
clone without it that takes unpadded sessions; no artifact ships without a parity check,
because a broken conversion can load and still return garbage.

One artifact goes through named stages (`_convert_one`): convert (`to_tflite`), label (the
ArtifactInfo and the integrity digest), validate in the project's own runtime (edge_runtime's
Scorer on ai-edge-litert: ops, parity with Keras), add the live step graph (checked event by
event), then measure and, for quantised precisions, recalibrate (edge_runtime.calibration).
Calibrated precisions run in a child process, because the TFLite calibrator can abort the
process; the child dies with its parent and writes nothing but its result to a pipe.

Seams: `convert_run` and `auto_convert` (the CLI's `convert`), `ConvertConfig`,
`ConversionResult`, `artifact_path`, `ConversionRun` (a trainer.rundir.RunDirectory with the
converter's own needs: export graphs, Keras reference, artifact provenance), `to_tflite`,
and `die_with_parent` (for any child process that must not outlive its parent). Before
converting, the artifacts' paths pass the output guard (`trainer.files.check_outputs`).
What TensorFlow prints while converting is captured (edge_runtime.native_logs) and kept on
a failed row's ``native_log``; ``--verbose`` lets it through.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import pickle
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from converters.graphs import chunk_samples, score_function, step_function
from converters.metadata_writer import add_metadata, seal, tflite_schema
from converters.precisions import GRAPHS, PRECISIONS, Precision
from converters.signatures import with_step_signature
from converters.tflite_metadata import add_standard_metadata
from edge_runtime import __version__
from edge_runtime.artifact import METADATA_NAME, ArtifactInfo
from edge_runtime.calibration import PlattCalibration
from edge_runtime.errors import ArtifactError, ConfigError, MalformedModelError, UbpEdgeError, first_line
from edge_runtime.live import StepModel
from edge_runtime.native_logs import (
    capture_process_stderr,
    is_verbose,
    native_log_of,
    quiet_native,
    set_verbose,
)
from edge_runtime.scorer import FUSED_LSTM_OP, Scorer
from edge_runtime.tiers import DEFAULT_TIER_NAMES, IntentTiers, check_names, check_shares
from edge_runtime.timing import time_calls
from trainer.files import check_outputs, write_bytes_atomic
from trainer.metrics import expected_calibration_error, roc_auc_or_none
from trainer.rundir import RunDirectory

FORBIDDEN_OPS = ("WHILE",)
DEFAULT_CALIBRATION_SESSIONS = 300
# The precisions `--auto` converts, on both graphs, smallest first; the fastest within budget wins.
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
        tier_names: the intent tiers each artifact carries (edge_runtime.tiers), lowest first.
        tier_shares: the share of validation sessions in each tier; empty: equal expected
            buyers in each (IntentTiers.fit_expected_buyers).
    """

    precisions: tuple[str, ...] = ()
    graphs: tuple[str, ...] = ("fused",)
    calibration_sessions: int = DEFAULT_CALIBRATION_SESSIONS
    recalibrate: bool = True
    overwrite: bool = False
    tier_names: tuple[str, ...] = DEFAULT_TIER_NAMES
    tier_shares: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        unknown = [p for p in self.precisions if p not in PRECISIONS]
        if unknown:
            raise ConfigError(f"--precision {','.join(unknown)}: unknown precision, expected one of "
                              f"{', '.join(PRECISIONS)}")
        bad_graphs = [g for g in self.graphs if g not in GRAPHS]
        if bad_graphs or not self.graphs:
            raise ConfigError(f"--graph {','.join(bad_graphs) or repr('')}: unknown graph, expected "
                              f"{' or '.join(GRAPHS)}")
        if isinstance(self.calibration_sessions, bool) or not isinstance(self.calibration_sessions, int) \
                or self.calibration_sessions < 1:
            raise ConfigError(f"--calibration-sessions must be >= 1, got {self.calibration_sessions}")
        check_names(self.tier_names)
        if self.tier_shares:
            try:
                check_shares(self.tier_shares, self.tier_names)
            except ConfigError as e:
                raise ConfigError(f"--tier-shares: {e}") from None

    def fit_tiers(self, p_validation: np.ndarray) -> IntentTiers:
        """The intent tiers of an artifact from its calibrated validation scores."""
        fitted_on = f"{len(p_validation):,} validation sessions"
        if self.tier_shares:
            return IntentTiers.fit_shares(p_validation, self.tier_shares, self.tier_names, fitted_on)
        return IntentTiers.fit_expected_buyers(p_validation, self.tier_names, fitted_on)

    @property
    def precision_names(self) -> tuple[str, ...]:
        """The precisions to convert, in table order when none were named."""
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
    # What the TFLite converter or calibrator printed when this row did not convert (kept
    # off the terminal unless --verbose; edge_runtime.native_logs). Not in to_dict.
    native_log: str | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        """The row as JSON-ready values (`convert --json`), without the model's bytes."""
        d = asdict(self)
        d.pop("model_bytes")
        d.pop("native_log")
        return d


def artifact_path(run_dir: Path, precision: str, graph: str = "fused") -> Path:
    """Where `convert` writes the artifact of ``precision`` and ``graph`` in ``run_dir``."""
    return run_dir / f"model-{precision}.tflite" if graph == "fused" else \
        run_dir / f"model-{graph}-{precision}.tflite"


class ConversionRun(RunDirectory):
    """A run directory as the converter reads it: the RunDirectory, plus the export graphs,
    the float32 Keras reference on validation sessions and the provenance of its artifacts.

    Raises:
        RunDirError: as RunDirectory.
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        super().__init__(run_dir)
        self.calibration = self.sessions(self.calibration_part)
        self.validation = self.sessions("validation")
        self.test = self.sessions("test")

    @property
    def calibration_source(self) -> str:
        """``training``, or ``validation`` for runs written before training sessions were
        stored (they calibrate on validation sessions)."""
        return "training" if self.calibration_part == "calibration" else "validation"

    def score_function(self, graph: str):
        """The (concrete functions, trackable) of export graph ``graph`` (converters.graphs)."""
        with quiet_native():  # importing and tracing TensorFlow prints banners to fd 2
            return score_function(graph, self.weights)

    @cached_property
    def step_function(self):
        """The one-event graph's (concrete function, trackable), built once per run."""
        with quiet_native():
            return step_function(self.weights)

    def validation_reference(self) -> np.ndarray:
        """Float32 Keras probabilities of the validation sessions: as stored by `train`, or
        computed from the weights for runs that did not store them."""
        stored = self.keras_probability("validation")
        if stored is not None:
            return stored
        from trainer.model import arrays_to_model

        with quiet_native():
            model = arrays_to_model(self.weights, masking=False)
        return np.array([float(model(x[None], training=False)[0, 0]) for x in self.validation])

    def empty_session_probability(self, calibration: PlattCalibration | None) -> float:
        """The model's score before any event: with the LSTM state at zero, the output layer's
        bias alone, ``sigmoid(dense_bias)`` in float32, through the recalibration if any."""
        bias = np.asarray(self.weights["dense_bias"], np.float32).reshape(-1)[0]
        p = np.float32(1.0) / (np.float32(1.0) + np.exp(-bias, dtype=np.float32))
        if calibration is not None:
            p = calibration.apply(np.array([p], np.float32))[0]
        return float(p)

    def info(self, precision: str, graph: str, calibration_sessions: int | None,
             calibration: PlattCalibration | None = None, tiers: IntentTiers | None = None
             ) -> ArtifactInfo:
        """The self-description of one artifact of this run.

        Args:
            precision, graph: the artifact's.
            calibration_sessions: sessions the calibrator saw (None: not calibrated).
            calibration: the recalibration; its map also moves the run's threshold.
            tiers: the intent tiers chosen on this artifact's validation scores, if known.
        """
        import tensorflow as tf

        threshold = float(self.report["threshold"])
        return ArtifactInfo(
            spec=self.spec, precision=precision, graph=graph,
            calibration=None if calibration is None else calibration.to_dict(),
            empty_session_probability=self.empty_session_probability(calibration),
            tiers=None if tiers is None else tiers.to_dict(),
            threshold=threshold if calibration is None else calibration.apply_threshold(threshold),
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
                "ubp_edge": __version__, "tensorflow": tf.__version__,
                "python": platform.python_version()})


def to_tflite(function, precision: str, representative=None) -> bytes:
    """Convert a concrete function at ``precision``, with what TensorFlow prints captured.

    Args:
        function: (concrete function or a list of them, one per signature, trackable) from
            converters.graphs.
        precision: a name of PRECISIONS.
        representative: the calibration generator for calibrated precisions.

    Returns:
        The `.tflite` bytes.

    Raises:
        Exception: whatever the TFLite converter raises (many types); the captured native
            output is on it (edge_runtime.native_logs.native_log_of).
    """
    import tensorflow as tf

    concrete, trackable = function
    with quiet_native():
        converter = tf.lite.TFLiteConverter.from_concrete_functions(
            concrete if isinstance(concrete, list) else [concrete], trackable)
        PRECISIONS[precision].configure(converter, representative)
        return converter.convert()


def _representative(graph: str, sessions: list[np.ndarray], arrays: dict[str, np.ndarray]):
    """The calibration generator over ``sessions``, in the form the graph's inputs need.

    The fused graph has one input, so a sample is a one-element list. The unrolled graph has
    one signature per chunk, so a sample names its signature and gives the inputs by name
    (`converters.graphs.chunk_samples`: each chunk with the true LSTM state before it).
    """
    def generate():
        if graph == "fused":
            for x in sessions:
                yield [x[None].astype(np.float32)]
        else:
            yield from chunk_samples(arrays, sessions)
    return generate


# A converted model is loaded as any artifact is: verified in a child process first
# (edge_runtime.verify), since a fresh converter output can abort the kernels (seen: 16x8 of
# the unrolled graph). Not inside the calibration child, which is that throwaway process.
_verify_loads = True


def _load(model_bytes: bytes, source: str) -> Scorer:
    return Scorer.from_bytes(model_bytes, source=source, verify=_verify_loads)


def _labelled(model_bytes: bytes, entries: dict[str, bytes]) -> bytes:
    """Add metadata entries, rewrite the standard TFLite metadata from the result (what Netron
    and Android Studio show) and re-seal: every intermediate artifact verifies like a final one."""
    return seal(add_standard_metadata(add_metadata(model_bytes, entries)))


def _validate(model_bytes: bytes, graph: str, run: ConversionRun, tolerance: float
              ) -> tuple[Scorer, list[str], float, int]:
    """Load in edge_runtime, check ops, compare with the Keras probabilities; raise on failure."""
    scorer = _load(model_bytes, "converted model")
    ops = operator_names(model_bytes)
    bad_ops = sorted({op for op in ops if op in FORBIDDEN_OPS or op.startswith("Flex")
                      or op == "CUSTOM"})
    if bad_ops:
        raise ArtifactError(f"graph has ops the edge runtime must not need: {bad_ops}")
    if graph == "fused" and FUSED_LSTM_OP not in ops:
        raise ArtifactError(f"the LSTM was not fused into {FUSED_LSTM_OP}; ops: {sorted(set(ops))}")
    got = scorer.score_encoded(run.test, calibrated=False)
    if not np.isfinite(got).all():
        raise ArtifactError("the converted model returns non-finite scores")
    expected = run.keras_probability("test")
    diff = float(np.max(np.abs(got - expected))) if len(got) else 0.0
    if diff > tolerance:
        raise ArtifactError(f"scores differ from the Keras model by up to {diff:.3g} "
                            f"on {len(got)} test sessions (allowed {tolerance:g})")
    return scorer, ops, diff, len(got)


def _convert_one(run: ConversionRun, graph: str, function, name: str, config: ConvertConfig
                 ) -> ConversionResult:
    """Convert, label, validate, add the step graph and (for quantised precisions)
    recalibrate one artifact in memory; a stage that fails ends the row with its reason."""
    precision = PRECISIONS[name]
    result = ConversionResult(precision=name, graph=graph, status="failed")
    refused = precision.refusal(graph)
    if refused:
        result.status, result.reason = "unsupported", f"converter: {refused}"
        return result
    n_cal = min(config.calibration_sessions, len(run.calibration)) if precision.needs_calibration else None
    try:
        model_bytes = to_tflite(function, name, _representative(graph, run.calibration[:n_cal or 0],
                                                                run.weights))
    except Exception as e:  # the converter raises many types; the row records why
        result.status, result.reason = "unsupported", f"converter: {first_line(e)}"
        result.native_log = native_log_of(e)
        return result
    result.calibration_sessions = n_cal
    model_bytes = _labelled(model_bytes, {METADATA_NAME: run.info(name, graph, n_cal).to_bytes()})
    try:
        scorer, result.ops, result.max_abs_diff, result.sessions_checked = _validate(
            model_bytes, graph, run, precision.max_abs_diff)
    except MalformedModelError as e:
        # Fresh from the converter, so not damage: the converter wrote a graph the kernels
        # would abort on (seen: 16x8 of the unrolled graph, a tensor of scale 0).
        result.status = "unsupported"
        result.reason = f"converter wrote a model the runtime refuses: {e}"
        return result
    except ArtifactError as e:
        result.reason, result.native_log = f"validation: {e}", native_log_of(e)
        return result
    try:
        model_bytes, result.step_max_abs_diff, result.step_sessions_checked = _with_step_graph(
            run, model_bytes, scorer, precision)
    except ArtifactError as e:
        result.reason, result.native_log = f"step graph: {e}", native_log_of(e)
        return result
    except Exception as e:  # the converter raises many types; the row records why
        result.reason = f"step graph: converter: {first_line(e)}"
        result.native_log = native_log_of(e)
        return result
    result.step_precision = precision.live_precision
    model_bytes = _measure_and_recalibrate(run, model_bytes, result, n_cal, config,
                                           recalibrate=precision.quantized and config.recalibrate)
    result.status, result.model_bytes, result.size_bytes = "ok", model_bytes, len(model_bytes)
    return result


def _measure_and_recalibrate(run: ConversionRun, model_bytes: bytes, result: ConversionResult,
                             n_cal: int | None, config: ConvertConfig, recalibrate: bool) -> bytes:
    """Fill the row's validation ROC-AUC and test ECE; with ``recalibrate``, fit a Platt map
    toward the float32 model's validation probabilities and, where it helps, store it (and
    the threshold moved through it) in the artifact; then choose the intent tiers on the
    validation scores as the artifact gives them (`ConvertConfig.fit_tiers`) and store them.
    Returns the artifact's bytes."""
    scorer = _load(model_bytes, "converted model")
    p_val = scorer.score_encoded(run.validation, calibrated=False)
    result.validation_roc_auc = roc_auc_or_none(run.labels("validation"), p_val)
    y_test = run.labels("test")
    result.ece_before = expected_calibration_error(y_test, scorer.score_encoded(run.test,
                                                                                calibrated=False))
    result.ece_after = result.ece_before
    platt = PlattCalibration.fit(p_val, run.validation_reference()) if recalibrate else None
    # The threshold moves through the same monotone map (ConversionRun.info): decisions do
    # not change, only the probabilities are brought back in line with the float32 model's.
    try:
        tiers = config.fit_tiers(p_val if platt is None else platt.apply(p_val))
    except ConfigError as e:  # a toy run: the artifact scores as well without tiers
        tiers, result.reason = None, f"no intent tiers stored: {e}"
    info = run.info(result.precision, result.graph, n_cal, calibration=platt, tiers=tiers)
    model_bytes = _labelled(model_bytes, {METADATA_NAME: info.to_bytes()})
    if platt is None:
        return model_bytes
    scorer = _load(model_bytes, "recalibrated model")
    result.recalibrated = True
    result.ece_after = expected_calibration_error(y_test, scorer.score_encoded(run.test))
    return model_bytes


# The calibration child's program: the parent's import path first (a checkout run with
# `python -m ubp_edge.cli` is not installed), then the entry point. argv: the path (JSON), the
# parent's pid, the request (JSON), the fd the result goes to.
_CHILD_PROGRAM = ("import json, sys; sys.path[:0] = json.loads(sys.argv[1]); "
                  "from converters.tflite import calibration_child; calibration_child()")
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent_pid: int) -> None:
    """Make this (child) process end when its parent does, however the parent ends.

    On Linux the kernel sends SIGKILL the moment the parent dies (``prctl(PR_SET_PDEATHSIG)``;
    strictly, when the parent's thread that started the child ends: `_convert_isolated` waits
    for the child in that same thread, so it cannot end first). Everywhere, a thread reads
    stdin, a pipe whose other end only the parent holds, and ends the process at end of file.
    A parent already gone before either was armed is caught by its pid. So a `convert` killed
    with SIGKILL leaves no calibrator running on (blocked, holding memory, reparented to init)
    for minutes.

    Args:
        parent_pid: the pid of the process that started this one.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # no prctl in this libc: the stdin watch stays
            pass
    if os.getppid() != parent_pid:
        os._exit(1)

    def watch_parent() -> None:
        try:
            while sys.stdin.buffer.read(65536):
                pass
        finally:
            os._exit(1)

    threading.Thread(target=watch_parent, name="parent-watch", daemon=True).start()


def calibration_child() -> None:
    """Entry point of the child process that converts one calibrated precision; started by
    `_convert_isolated`, not for direct use.

    It writes nothing but its result, pickled to the pipe the parent reads: a
    ConversionResult (the artifact's bytes inside, never a file), or the exception it ended
    with. Its stderr (and stdout) go where the parent said: a temporary file the parent reads
    for a failed row's native log, or the terminal with ``--verbose``. Ctrl-C is the parent's
    to handle (it kills the child); the child dies with its parent (`die_with_parent`).
    """
    global _verify_loads
    parent, request, result_fd = int(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4])
    die_with_parent(parent)
    _verify_loads = False  # this process is the sacrificial one
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    set_verbose(request["verbose"])
    if not request["verbose"]:
        # fd 2 already is the parent's file; saying so lets native output of `quiet_native`
        # blocks through to it, so the last words of an abort reach the parent too.
        capture_process_stderr("/dev/fd/2")
    try:
        config = ConvertConfig(**{k: tuple(v) if isinstance(v, list) else v
                                  for k, v in request["config"].items()})
        run = ConversionRun(request["run_dir"])
        graph, name = request["graph"], request["precision"]
        payload = pickle.dumps(("result", _convert_one(run, graph, run.score_function(graph), name,
                                                        config)))
    except BaseException as e:  # noqa: BLE001 - whatever it is, the parent decides
        try:
            payload = pickle.dumps(("raised", e, traceback.format_exc()))
        except Exception:  # noqa: BLE001 - an exception that does not pickle: its text does
            payload = pickle.dumps(("raised", None, traceback.format_exc()))
    with os.fdopen(result_fd, "wb") as f:
        f.write(payload)


def _convert_isolated(run: ConversionRun, graph: str, function, name: str, config: ConvertConfig
                      ) -> ConversionResult:
    """Calibrated precisions run the TFLite calibrator, which can abort the whole process on a
    graph it cannot take (measured: 16x8 on an earlier unrolled graph, SIGABRT). They convert in a child
    process (`calibration_child`), so a crash becomes an "unsupported" row and the other
    precisions go on.

    The child is a plain subprocess (no multiprocessing pool, so no resource tracker to
    outlive anything); it dies with this process (`die_with_parent`), is killed if this one
    is interrupted, and writes no file: its result comes back through a pipe, and its
    output goes to an unlinked temporary file, so a kill at any moment leaves nothing behind.
    """
    precision = PRECISIONS[name]
    if not precision.needs_calibration or precision.refusal(graph):
        return _convert_one(run, graph, function, name, config)
    verbose = is_verbose()
    request = {"run_dir": str(run.dir), "graph": graph, "precision": name, "config": asdict(config),
               "verbose": verbose}
    with tempfile.TemporaryFile() as log:
        read_end, write_end = os.pipe()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-c", _CHILD_PROGRAM, json.dumps(sys.path), str(os.getpid()),
                 json.dumps(request), str(write_end)],
                stdin=subprocess.PIPE, stdout=2 if verbose else log, stderr=None if verbose else log,
                pass_fds=(write_end,))
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)  # the child holds its own copy: end of file when it is done
        try:
            with os.fdopen(read_end, "rb") as pipe:
                payload = pipe.read()
            returncode = proc.wait()
        finally:
            if proc.poll() is None:  # interrupted while it ran: it must not outlive us
                proc.kill()
                proc.wait()
            proc.stdin.close()
        if payload:
            outcome = pickle.loads(payload)  # our own child's bytes, over a pipe only we hold
            if outcome[0] == "raised":
                _, error, text = outcome
                if isinstance(error, UbpEdgeError | KeyboardInterrupt):
                    raise error
                raise RuntimeError(f"the calibration child for {graph}/{name} failed:\n{text}")
            result = outcome[1]
        else:
            died = f"exit code {returncode}"
            if returncode < 0:
                try:
                    died = signal.Signals(-returncode).name
                except ValueError:
                    died = f"signal {-returncode}"
            result = ConversionResult(precision=name, graph=graph, status="unsupported",
                                      reason=f"converter: the TFLite calibrator aborted the process "
                                             f"on this graph ({died})")
        if result.status != "ok" and not verbose:
            log.seek(0)
            result.native_log = log.read().decode("utf-8", errors="replace") or None
    return result


STEP_PARITY_SESSIONS = 100


def _with_step_graph(run: ConversionRun, model_bytes: bytes, scorer: Scorer, precision: Precision
                     ) -> tuple[bytes, float, int]:
    """Convert the one-event graph at the precision's live precision, check that pushing a
    session's events one at a time reproduces scoring each prefix whole, and add it to the
    artifact as its ``step`` signature (converters.signatures; a fused graph's own becomes
    ``score``).

    Returns:
        (artifact bytes with the step signature, max |p_step - p_prefix|, sessions checked)
    """
    step_bytes = to_tflite(run.step_function, precision.live_precision)
    step = StepModel(step_bytes, "auto", 1, "step graph")
    sessions = run.test[:STEP_PARITY_SESSIONS]
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
    joined = add_standard_metadata(with_step_signature(model_bytes, step_bytes))
    return seal(joined), float(worst), len(sessions)


def _write(run: ConversionRun, result: ConversionResult, overwrite: bool) -> None:
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
        RunDirError: the run directory is missing, incomplete or damaged (naming the file).
        ConfigError: an unknown precision or graph.
        OutputError: the run directory cannot be written (checked before converting), or an
            artifact's write failed (no space left, a file-size limit).

    Example:
        >>> rows = convert_run("runs/taobao", ["float32", "dynamic"])
        >>> [(r.precision, r.status, r.size_bytes) for r in rows]
    """
    config = config or ConvertConfig(precisions=tuple(precisions or ()), overwrite=overwrite)
    run = ConversionRun(run_dir)
    targets = {(graph, name): artifact_path(run.dir, name, graph)
               for graph in config.graphs for name in config.precision_names}
    _check_targets(run, targets)
    results = []
    for graph in config.graphs:
        function = None
        for name in config.precision_names:
            out = targets[(graph, name)]
            if out.exists() and not config.overwrite:
                # Refused before minutes of converting, not after.
                results.append(ConversionResult(precision=name, graph=graph, status="failed",
                                                reason=f"{out} exists; pass --overwrite to replace it"))
                continue
            function = function or run.score_function(graph)
            result = _convert_isolated(run, graph, function, name, config)
            if result.status == "ok":
                _write(run, result, config.overwrite)
            results.append(result)
    return results


def operator_names(model: bytes) -> list[str]:
    """The operators of every subgraph of a `.tflite` (an unrolled graph has one per chunk),
    by builtin name, or the custom code of a custom operator (``FlexMatMul``)."""
    schema = tflite_schema()
    builtin = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    m = schema.Model.GetRootAsModel(model, 0)
    codes = []
    for i in range(m.OperatorCodesLength()):
        code = m.OperatorCodes(i)
        number = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        custom = code.CustomCode()
        codes.append(custom.decode("utf-8", "replace") if custom else builtin.get(number, str(number)))
    return [codes[g.Operators(k).OpcodeIndex()] for i in range(m.SubgraphsLength())
            for g in [m.Subgraphs(i)] for k in range(g.OperatorsLength())]


def _check_targets(run: ConversionRun, targets: dict[tuple[str, str], Path]) -> None:
    """The output guard (`trainer.files.check_outputs`) for a run's artifacts: each writable
    in the run directory and none of them a file the run directory holds for `convert`."""
    from trainer.rundir import REQUIRED, SPLIT

    check_outputs({"the run directory": [run.dir / name for name in (*REQUIRED, SPLIT)]},
                  {f"--graph {graph} --precision {name}": path for (graph, name), path in targets.items()})


AUTO_LATENCY_SESSIONS = 200  # validation sessions timed per candidate and round
AUTO_WARMUP = 20  # untimed calls first
AUTO_ROUNDS = 3  # candidates timed in turn, round after round: a change of load hits them alike


def measured_p50_us(model_bytes: bytes, sessions: list[np.ndarray]) -> float:
    """Median wall time of scoring one encoded session, after a warm-up, one thread, on this
    machine: `auto_convert`'s latency unless it is given another."""
    scorer = _load(model_bytes, "candidate")
    p50 = time_calls(scorer.score_features, sessions, warmup=AUTO_WARMUP).p50_us
    return float("nan") if p50 is None else p50


@dataclass
class AutoChoice:
    """What `auto_convert` chose and why.

    Attributes:
        chosen: the row of the artifact chosen (written, with the float32 reference).
        rows: every candidate's row, graph by graph in AUTO_ORDER.
        p50_us: (graph, precision) -> measured p50 per session on this machine.
        why: one sentence with the figures.
    """

    chosen: ConversionResult
    rows: list[ConversionResult]
    p50_us: dict[tuple[str, str], float]
    why: str


def auto_convert(run_dir: str | os.PathLike, max_auc_drop: float, overwrite: bool = False,
                 calibration_sessions: int = DEFAULT_CALIBRATION_SESSIONS,
                 tier_names: tuple[str, ...] = DEFAULT_TIER_NAMES, tier_shares: tuple[float, ...] = (),
                 latency=measured_p50_us) -> AutoChoice:
    """Pick the fastest artifact on this machine whose validation ROC-AUC stays within
    ``max_auc_drop`` of float32's, among both graphs at int8, dynamic, float16 and float32.

    Speed is measured, not assumed: the same precision is fast on one machine and slow on
    another (measured here: full int8 of the fused graph 5.8x slower than float32 on x86,
    its x86 LSTM kernel; of the unrolled graph faster than float32). Float32 always
    qualifies, so the choice is never slower than the fastest float32 artifact here. Writes
    the fused float32 reference and the chosen artifact.

    Args:
        run_dir: a directory written by `trainer.train.train`.
        max_auc_drop: the validation ROC-AUC a candidate may lose against float32 (>= 0).
        overwrite: replace existing artifacts.
        calibration_sessions, tier_names, tier_shares: as ConvertConfig.
        latency: (artifact bytes, encoded sessions) -> p50 microseconds; `measured_p50_us`
            (tests pass a table, so that no test depends on a wall clock).

    Returns:
        AutoChoice.

    Raises:
        ConfigError: ``max_auc_drop`` < 0.
        RunDirError: the run directory is missing, incomplete or damaged (naming the file).
        ArtifactError: the fused float32 reference did not convert.
        OutputError: the run directory cannot be written (checked before converting).

    Example:
        >>> choice = auto_convert("runs/taobao", max_auc_drop=0.005)
        >>> choice.chosen.graph, choice.chosen.precision, choice.why
    """
    if not max_auc_drop >= 0:
        raise ConfigError(f"--max-auc-drop must be >= 0, got {max_auc_drop}")
    config = ConvertConfig(precisions=AUTO_ORDER, graphs=GRAPHS, calibration_sessions=calibration_sessions,
                           tier_names=tier_names, tier_shares=tier_shares,
                           overwrite=overwrite)
    run = ConversionRun(run_dir)
    _check_targets(run, {(g, name): artifact_path(run.dir, name, g) for g in GRAPHS for name in AUTO_ORDER})
    rows = {}
    for graph in GRAPHS:
        function = run.score_function(graph)
        rows.update({(graph, name): _convert_isolated(run, graph, function, name, config)
                     for name in AUTO_ORDER})
    reference = rows[("fused", "float32")]
    if reference.status != "ok":
        raise ArtifactError(f"{run.dir}: the float32 reference failed: {reference.reason}")
    ref_auc = reference.validation_roc_auc or 0.0
    sessions = run.validation[:AUTO_LATENCY_SESSIONS]
    if not sessions:
        raise ArtifactError(f"{run.dir}: no validation sessions to time the candidates on")
    ok = [key for key, row in rows.items() if row.status == "ok"]
    rounds = {key: [] for key in ok}
    for _ in range(AUTO_ROUNDS):
        for key in ok:
            rounds[key].append(latency(rows[key].model_bytes, sessions))
    p50 = {key: float(np.median(times)) for key, times in rounds.items()}
    within = [key for key in p50 if ref_auc - (rows[key].validation_roc_auc or 0.0) <= max_auc_drop]
    # Fastest first; a tie (within 2%, timing noise) goes to the smaller file.
    best = min(p50[key] for key in within)
    key = min((k for k in within if p50[k] <= best * 1.02), key=lambda k: rows[k].size_bytes)
    for written in {key, ("fused", "float32")}:
        _write(run, rows[written], overwrite)
    return AutoChoice(rows[key], list(rows.values()), p50, _auto_reason(key, rows, p50, max_auc_drop))


def _name(key: tuple[str, str]) -> str:
    graph, precision = key
    return precision if graph == "fused" else f"{graph}/{precision}"


def _auto_reason(key: tuple[str, str], rows: dict[tuple[str, str], ConversionResult],
                 p50: dict[tuple[str, str], float], max_auc_drop: float) -> str:
    """`--auto`'s one sentence: the chosen artifact's figures against float32, and the
    others' speed and accuracy."""
    row, reference = rows[key], rows[("fused", "float32")]
    ref_auc = reference.validation_roc_auc or 0.0

    def other(k: tuple[str, str]) -> str:
        r = rows[k]
        if r.status != "ok":
            return f"{_name(k)} {r.status}"
        return f"{_name(k)} {p50[k]:.0f} us, drop {ref_auc - (r.validation_roc_auc or 0.0):.4f}"

    figures = (f"p50 {p50[key]:.0f} us per session here, the fastest within the budget; validation "
               f"ROC-AUC {row.validation_roc_auc:.4f} vs float32 {ref_auc:.4f} (drop "
               f"{ref_auc - (row.validation_roc_auc or 0.0):.4f} <= {max_auc_drop}), "
               f"{row.size_bytes / reference.size_bytes:.2f}x the float32 size")
    return f"{_name(key)}: {figures}; the others: {', '.join(other(k) for k in rows if k != key)}"
