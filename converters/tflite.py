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

from edge_runtime import __version__
from edge_runtime.artifact import METADATA_NAME, ArtifactInfo
from edge_runtime.errors import ArtifactError, ConfigError, RunDirError
from edge_runtime.features import FeatureSpec
from edge_runtime.scorer import FUSED_LSTM_OP, Scorer
from converters.precisions import PRECISIONS
from converters.tflite_metadata import add_metadata
from trainer import rundir

FORBIDDEN_OPS = ("WHILE",)


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
    ops: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def artifact_path(run_dir: Path, precision: str, graph: str = "fused") -> Path:
    return run_dir / f"model-{precision}.tflite" if graph == "fused" else \
        run_dir / f"model-{graph}-{precision}.tflite"


def _concrete_score_function(arrays: dict[str, np.ndarray]):
    import tensorflow as tf

    from trainer.model import arrays_to_model

    model = arrays_to_model(arrays, masking=False)
    n_features = arrays["lstm_kernel"].shape[0]

    @tf.function(input_signature=[tf.TensorSpec([1, None, n_features], tf.float32, name="events")])
    def score(events):
        return {"probability": model(events, training=False)}

    return score.get_concrete_function(), model


def _validate(model_bytes: bytes, parity: dict, tolerance: float) -> tuple[list[str], float, int]:
    """Load in edge_runtime, check ops, compare with the Keras probabilities; raise on failure."""
    scorer = Scorer.from_bytes(model_bytes, source="converted model")
    ops = scorer.op_names()
    bad_ops = sorted({op for op in ops if op in FORBIDDEN_OPS or op.startswith("Flex")
                      or op == "CUSTOM"})
    if bad_ops:
        raise ArtifactError(f"graph has ops the edge runtime must not need: {bad_ops}")
    if FUSED_LSTM_OP not in ops:
        raise ArtifactError(f"the LSTM was not fused into {FUSED_LSTM_OP}; ops: {sorted(set(ops))}")
    features, offsets = parity["features"], parity["offsets"]
    expected = parity["keras_probability"]
    got = scorer.score_encoded(features[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1))
    if not np.isfinite(got).all():
        raise ArtifactError("the converted model returns non-finite scores")
    diff = float(np.max(np.abs(got - expected))) if len(got) else 0.0
    if diff > tolerance:
        raise ArtifactError(f"scores differ from the Keras model by up to {diff:.3g} "
                            f"on {len(got)} test sessions (allowed {tolerance:g})")
    return ops, diff, len(got)


def convert_run(run_dir: str | os.PathLike, precisions: list[str] | None = None,
                overwrite: bool = False) -> list[ConversionResult]:
    """Convert a run's weights into one validated artifact per precision.

    Args:
        run_dir: a directory written by `trainer.train.train`.
        precisions: names from converters.precisions.PRECISIONS (default: all of them).
        overwrite: replace existing artifacts; otherwise an existing one fails its row.

    Returns:
        One ConversionResult per precision; a failed precision does not stop the others.

    Raises:
        RunDirError: the run directory is missing or incomplete.
        ConfigError: an unknown precision name.
    """
    run = rundir.check_run_dir(run_dir)
    names = list(PRECISIONS) if not precisions else list(precisions)
    unknown = [p for p in names if p not in PRECISIONS]
    if unknown:
        raise ConfigError(f"unknown precision {unknown}; allowed {list(PRECISIONS)}")

    import tensorflow as tf

    try:
        arrays = dict(np.load(run / rundir.WEIGHTS, allow_pickle=False))
        parity = dict(np.load(run / rundir.PARITY, allow_pickle=False))
    except (OSError, ValueError) as e:
        raise RunDirError(f"{run}: weights or parity sessions unreadable ({e})") from None
    spec = FeatureSpec.from_dict(rundir.read_json(run / rundir.SPEC))
    report = rundir.read_json(run / rundir.REPORT_JSON)
    config = rundir.read_json(run / rundir.CONFIG)
    if arrays["lstm_kernel"].shape[0] != spec.n_features:
        raise RunDirError(f"{run}: weights take {arrays['lstm_kernel'].shape[0]} features but the "
                          f"spec lists {spec.n_features}")
    concrete, keras_model = _concrete_score_function(arrays)

    results = []
    for name in names:
        precision = PRECISIONS[name]
        out = artifact_path(run, name)
        result = ConversionResult(precision=name, graph="fused", status="failed")
        results.append(result)
        if out.exists() and not overwrite:
            result.reason = f"{out} exists; pass --overwrite to replace it"
            continue
        try:
            converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], keras_model)
            precision.configure(converter)
            model_bytes = converter.convert()
        except Exception as e:  # the converter raises many types; the row records why
            result.status = "unsupported"
            result.reason = f"converter: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}"
            continue
        info = ArtifactInfo(spec=spec, threshold=float(report["threshold"]), precision=name,
                            graph="fused", provenance={
                                "run_dir": run.name,
                                "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                                "training_data": Path(config["data"]).name,
                                "training_format": report["data"]["format"],
                                "session_gap_minutes": float(config["gap_minutes"]),
                                "test_roc_auc_keras": report["test"]["lstm"]["roc_auc"],
                                "ubp_edge": __version__, "tensorflow": tf.__version__,
                                "python": platform.python_version()})
        model_bytes = add_metadata(model_bytes, {METADATA_NAME: info.to_bytes()})
        try:
            result.ops, result.max_abs_diff, result.sessions_checked = _validate(
                model_bytes, parity, precision.max_abs_diff)
        except ArtifactError as e:
            result.reason = f"validation: {e}"
            continue
        rundir.write_bytes_atomic(out, model_bytes)
        result.status, result.path, result.size_bytes = "ok", str(out), len(model_bytes)
    return results
