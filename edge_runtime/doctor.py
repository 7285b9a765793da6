"""`ubp-edge doctor`: which interpreters this device has, and whether an artifact runs on each.

Seam: `doctor(artifact)` returns a plain dict the CLI renders; the artifact is probed with
edge_runtime.events.PROBE_SESSION, whole and live, after its verification in a child process
(edge_runtime.verify), whose verdict each row reports. Each row also says which TFLite
runtime the backend is, whether it meets the artifact's ``min_runtime_version``, and the
signatures its interpreter lists for the artifact.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import platform
import sys
from pathlib import Path

import numpy as np

from edge_runtime.artifact import STEP_METADATA_NAME, read_artifact
from edge_runtime.backends import BACKENDS, INTERPRETER_ERRORS, interpreter_class, runtime_version
from edge_runtime.errors import UbpEdgeError, first_line
from edge_runtime.events import PROBE_SESSION
from edge_runtime.native_logs import quiet_native
from edge_runtime.tflite_reader import min_runtime_version, read_metadata, signature_keys, version_tuple

# Distribution names, for versions (a module's import name differs from its package name).
DISTRIBUTIONS = {"ai-edge-litert": "ai-edge-litert", "tflite-runtime": "tflite-runtime",
                 "tensorflow": "tensorflow-cpu"}


def _version(backend: str) -> str | None:
    for name in (DISTRIBUTIONS[backend], "tensorflow"):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def doctor(artifact: str | Path | None = None, backends: tuple[str, ...] = tuple(BACKENDS)) -> dict:
    """Describe the environment and, given an artifact, load and score it with every backend.

    Args:
        artifact: a `.tflite` written by `ubp-edge convert`, or None for the environment only.
        backends: the backends to probe (names of edge_runtime.backends.BACKENDS).

    Returns:
        ``{"python", "platform", "machine", "numpy", "artifact", "min_runtime_version",
        "signatures", "backends": [{"name", "importable", "version", "runtime", "error",
        "meets", "signatures", "loads", "scores", "live", "probability", "verified",
        "detail"}]}``. ``min_runtime_version`` is the artifact's (`needed_runtime`; None
        without an artifact or the entry) and ``signatures`` the keys its file holds;
        per backend, ``runtime`` is its TFLite runtime version
        (edge_runtime.backends.runtime_version, None when not known), ``meets`` whether that
        is at least the artifact's (None when either is unknown), ``signatures`` the keys
        its interpreter lists for the artifact (None unless it loads); ``verified`` is
        ``"child process"`` (verified now), ``"cached"`` (a verdict of an earlier load) or
        None (not loaded; ``detail`` says why, a crash of the verifying child included).
    """
    from edge_runtime.scorer import Scorer

    model = need = keys = None
    if artifact is not None:
        try:
            model, _ = read_artifact(artifact)
            need, keys = needed_runtime(model), signature_keys(model)
        except UbpEdgeError:  # each row's Scorer.load says why, in its detail
            pass
    rows = []
    for name in backends:
        module, _ = BACKENDS[name]
        row = {"name": name, "importable": False, "version": None, "runtime": None, "error": None}
        try:
            with quiet_native():  # importing TensorFlow prints its start-up banners to fd 2
                importlib.import_module(module)
            row.update(importable=True, version=_version(name), runtime=runtime_version(name))
        except ImportError as e:
            row["error"] = first_line(e)
        if artifact is not None:
            row.update(meets=None, signatures=None, loads=False, scores=False, live=False,
                       probability=None, verified=None, detail=None)
            if row["runtime"] and need:
                row["meets"] = version_tuple(row["runtime"]) >= version_tuple(need)
            if row["importable"]:
                try:
                    scorer = Scorer.load(artifact, backend=name)
                    row["loads"] = True
                    row["signatures"] = None if model is None else _listed_signatures(model, name)
                    if scorer.verdict is not None:
                        row["verified"] = "cached" if scorer.verdict.cached else "child process"
                    p = scorer.score_sessions([PROBE_SESSION])[0]
                    row.update(scores=bool(np.isfinite(p)), probability=round(float(p), 6))
                    live = scorer.start_session()
                    last = [live.push(e) for e in PROBE_SESSION][-1]
                    row["live"] = bool(abs(last - p) < 1e-3) if scorer.info.precision == "float32" \
                        else bool(np.isfinite(last))
                except UbpEdgeError as e:
                    row["detail"] = str(e)
        rows.append(row)
    return {"python": sys.version.split()[0], "platform": platform.platform(),
            "machine": platform.machine(), "numpy": np.__version__, "backends": rows,
            "artifact": None if artifact is None else str(artifact),
            "min_runtime_version": need, "signatures": keys}


def needed_runtime(model: bytes) -> str | None:
    """The TFLite runtime an artifact needs: its ``min_runtime_version``, or its step graph's
    when newer (an artifact of spec version 1 carries the step graph as a model of its own,
    in a metadata entry, with its own entry).

    Args:
        model: the artifact's bytes.

    Returns:
        e.g. ``"2.3.0"``; None when neither model has the entry.

    Raises:
        ArtifactError: a model's entry is not a version number (MalformedModelError).
    """
    step = read_metadata(model).get(STEP_METADATA_NAME)
    versions = [v for v in (min_runtime_version(model), min_runtime_version(step) if step else None) if v]
    return max(versions, key=version_tuple, default=None)


def _listed_signatures(model: bytes, name: str) -> dict[str, dict[str, list[str]]] | None:
    """The signatures the backend's own interpreter lists for ``model`` (key -> input and
    output names), as a LiteRT client would see them; None when it cannot say. Called only
    after the model loaded on this backend (verified in a child process)."""
    cls, _ = interpreter_class(name)
    with quiet_native():
        try:
            listed = cls(model_content=model).get_signature_list()
        except INTERPRETER_ERRORS:
            return None
    return {key: {"inputs": list(v.get("inputs", [])), "outputs": list(v.get("outputs", []))}
            for key, v in listed.items()}
