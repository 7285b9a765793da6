"""`ubp-edge doctor`: which interpreters this device has, and whether an artifact runs on each.

Seam: `doctor(artifact)` returns a plain dict the CLI renders; the artifact is probed with
edge_runtime.events.PROBE_SESSION, whole and live, after its verification in a child process
(edge_runtime.verify), whose verdict each row reports.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import platform
import sys
from pathlib import Path

import numpy as np

from edge_runtime.backends import BACKENDS
from edge_runtime.errors import UbpEdgeError, first_line
from edge_runtime.events import PROBE_SESSION
from edge_runtime.native_logs import quiet_native

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
        ``{"python", "platform", "numpy", "backends": [{"name", "importable", "version",
        "error", "loads", "scores", "live", "probability", "verified", "detail"}]}``;
        ``verified`` is ``"child process"`` (verified now), ``"cached"`` (a verdict of an
        earlier load) or None (not loaded; ``detail`` says why, a crash of the verifying
        child included).
    """
    from edge_runtime.scorer import Scorer

    rows = []
    for name in backends:
        module, _ = BACKENDS[name]
        row = {"name": name, "importable": False, "version": None, "error": None}
        try:
            with quiet_native():  # importing TensorFlow prints its start-up banners to fd 2
                importlib.import_module(module)
            row.update(importable=True, version=_version(name))
        except ImportError as e:
            row["error"] = first_line(e)
        if artifact is not None:
            row.update(loads=False, scores=False, live=False, probability=None, verified=None,
                       detail=None)
            if row["importable"]:
                try:
                    scorer = Scorer.load(artifact, backend=name)
                    row["loads"] = True
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
            "artifact": None if artifact is None else str(artifact)}
