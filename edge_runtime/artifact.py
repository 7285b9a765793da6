"""What a ubp-edge artifact carries inside its `.tflite` file, and how to read it back.

The JSON under the metadata name ``ubp_edge`` holds the FeatureSpec, the decision
threshold, the precision and graph, and the provenance, so one file is all a device needs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from edge_runtime.errors import ArtifactError
from edge_runtime.features import FeatureSpec
from edge_runtime.tflite_metadata import read_metadata

METADATA_NAME = "ubp_edge"
# The live one-event graph: a complete .tflite of its own, carried inside the artifact so
# the user ships one file.
STEP_METADATA_NAME = "ubp_edge_step"
ARTIFACT_FORMAT = "ubp-edge-artifact"
ARTIFACT_VERSION = 1


@dataclass(frozen=True)
class ArtifactInfo:
    """The self-description of an artifact.

    Attributes:
        spec: how events become the model's input.
        threshold: probability at or above which a session is called a purchase.
        precision: ``float32``, ``float16``, ``dynamic``, ``int8``, ...
        graph: ``fused`` (one UNIDIRECTIONAL_SEQUENCE_LSTM op) or ``unrolled``.
        provenance: source run, training data, versions, calibration size, creation time.
        calibration: Platt scaling ``{"method": "platt", "a": .., "b": ..}`` applied to the
            model's output, fitted on validation sessions where quantisation shifted the
            probabilities; None when the output is used as is.
    """

    spec: FeatureSpec
    threshold: float
    precision: str
    graph: str
    provenance: dict = field(default_factory=dict)
    calibration: dict | None = None

    def to_dict(self) -> dict:
        return {"format": ARTIFACT_FORMAT, "version": ARTIFACT_VERSION,
                "feature_spec": self.spec.to_dict(), "threshold": self.threshold,
                "precision": self.precision, "graph": self.graph, "provenance": self.provenance,
                "calibration": self.calibration}

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_dict(), sort_keys=True).encode("utf-8")

    @classmethod
    def from_dict(cls, d: Mapping, source: str = "artifact") -> ArtifactInfo:
        if not isinstance(d, Mapping) or d.get("format") != ARTIFACT_FORMAT:
            raise ArtifactError(f"{source}: metadata is not a ubp-edge artifact description")
        if d.get("version") != ARTIFACT_VERSION:
            raise ArtifactError(f"{source}: artifact version {d.get('version')!r} is not supported; "
                                f"this ubp-edge reads version {ARTIFACT_VERSION}")
        try:
            spec = FeatureSpec.from_dict(d["feature_spec"])
            threshold = float(d["threshold"])
            precision, graph = str(d["precision"]), str(d["graph"])
            provenance = dict(d.get("provenance") or {})
            calibration = d.get("calibration")
            if calibration is not None:
                calibration = {"method": str(calibration["method"]), "a": float(calibration["a"]),
                               "b": float(calibration["b"])}
        except ArtifactError as e:
            raise ArtifactError(f"{source}: {e}") from None
        except (KeyError, TypeError, ValueError) as e:
            raise ArtifactError(f"{source}: artifact metadata is malformed ({e!r})") from None
        if not 0.0 <= threshold <= 1.0:
            raise ArtifactError(f"{source}: threshold {threshold} outside [0, 1]")
        if graph not in ("fused", "unrolled"):
            raise ArtifactError(f"{source}: graph {graph!r} not in ['fused', 'unrolled']")
        return cls(spec, threshold, precision, graph, provenance, calibration)


def parse_artifact(model: bytes, source: str = "artifact") -> ArtifactInfo:
    """The ArtifactInfo inside a model's bytes; ArtifactError when it is not one of ours."""
    entries = read_metadata(model)
    if METADATA_NAME not in entries:
        raise ArtifactError(f"{source}: a TFLite model without ubp-edge metadata "
                            f"(not produced by `ubp-edge convert`)")
    try:
        d = json.loads(entries[METADATA_NAME].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{source}: ubp-edge metadata is not valid JSON ({e})") from None
    return ArtifactInfo.from_dict(d, source)


def read_artifact(path: str | Path) -> tuple[bytes, ArtifactInfo]:
    """Read an artifact file: its bytes and its self-description.

    Raises:
        ArtifactError: missing, unreadable, corrupted, not ours, or of another version.
    """
    p = Path(path)
    if not p.is_file():
        raise ArtifactError(f"{p}: no such artifact file" if not p.exists()
                            else f"{p}: not a file")
    try:
        model = p.read_bytes()
    except OSError as e:
        raise ArtifactError(f"{p}: cannot read ({e.strerror or e})") from None
    try:
        return model, parse_artifact(model, str(p))
    except ArtifactError as e:
        msg = str(e)
        raise ArtifactError(msg if msg.startswith(str(p)) else f"{p}: {msg}") from None
