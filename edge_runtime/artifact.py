"""What a ubp-edge artifact carries inside its `.tflite` file, and how to read it back.

The JSON under the metadata name ``ubp_edge`` holds the FeatureSpec, the decision
threshold, the precision and graph, the provenance and the recalibration, so one file is all
a device needs. Entries are read with edge_runtime.tflite_reader and written, at conversion,
with converters.metadata_writer.

Seams: `ArtifactInfo` (to_dict / from_dict / to_bytes), `read_artifact(path)` and
`parse_artifact(bytes)`, the digest helpers `file_digest` / `verify_digest`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from edge_runtime.calibration import PlattCalibration
from edge_runtime.errors import ArtifactError
from edge_runtime.features import FeatureSpec
from edge_runtime.tflite_reader import metadata_spans, read_metadata

METADATA_NAME = "ubp_edge"
# The live one-event graph: a complete .tflite of its own, carried inside the artifact so
# the user ships one file.
STEP_METADATA_NAME = "ubp_edge_step"
# SHA-256 of the whole file with this entry's own 64 bytes zeroed: any flipped or missing
# byte anywhere (weights included, which a flatbuffer verifier cannot judge) is caught.
DIGEST_METADATA_NAME = "ubp_edge_sha256"
DIGEST_PLACEHOLDER = b"0" * 64


def file_digest(model: bytes, span: tuple[int, int]) -> str:
    """SHA-256 of ``model`` with the digest's own bytes replaced by the placeholder.

    Args:
        model: the artifact's bytes.
        span: (start, end) of the digest entry's bytes (edge_runtime.tflite_reader.metadata_spans).

    Returns:
        The hex digest, 64 characters.
    """
    start, end = span
    return hashlib.sha256(model[:start] + DIGEST_PLACEHOLDER + model[end:]).hexdigest()


def verify_digest(model: bytes, source: str = "artifact") -> None:
    """Check that the artifact's stored digest matches its bytes.

    Args:
        model: the artifact's bytes.
        source: the file's name, for messages.

    Raises:
        ArtifactError: no digest, a digest of the wrong size, or one that does not match.
    """
    spans = metadata_spans(model)
    if DIGEST_METADATA_NAME not in spans:
        raise ArtifactError(f"{source}: no integrity digest (not written by this ubp-edge's "
                            f"`convert`); convert the run again")
    start, end = spans[DIGEST_METADATA_NAME]
    if end - start != len(DIGEST_PLACEHOLDER):
        raise ArtifactError(f"{source}: corrupted: integrity digest has {end - start} bytes")
    stored = bytes(model[start:end]).decode("ascii", "replace")
    if stored != file_digest(model, (start, end)):
        raise ArtifactError(f"{source}: corrupted: contents do not match the integrity digest "
                            f"(damaged copy or download?)")


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
            model's output (edge_runtime.calibration.PlattCalibration.to_dict), fitted on
            validation sessions where quantisation shifted the probabilities; None when the
            output is used as is.
    """

    spec: FeatureSpec
    threshold: float
    precision: str
    graph: str
    provenance: dict = field(default_factory=dict)
    calibration: dict | None = None

    def to_dict(self) -> dict:
        """The JSON object stored under METADATA_NAME (format and version included)."""
        return {"format": ARTIFACT_FORMAT, "version": ARTIFACT_VERSION,
                "feature_spec": self.spec.to_dict(), "threshold": self.threshold,
                "precision": self.precision, "graph": self.graph, "provenance": self.provenance,
                "calibration": self.calibration}

    def to_bytes(self) -> bytes:
        """`to_dict` as UTF-8 JSON with sorted keys: the metadata entry's payload."""
        return json.dumps(self.to_dict(), sort_keys=True).encode("utf-8")

    @classmethod
    def from_dict(cls, d: Mapping, source: str = "artifact") -> ArtifactInfo:
        """The ArtifactInfo an artifact's metadata JSON describes.

        Args:
            d: the parsed JSON.
            source: the file's name, for messages.

        Raises:
            ArtifactError: not ours, of another version, or malformed (a field missing or of
                the wrong type, a threshold outside [0, 1], an unknown graph or calibration).
        """
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
                calibration = PlattCalibration.from_dict(calibration).to_dict()
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
    """The ArtifactInfo inside a model's bytes.

    Args:
        model: the artifact's bytes.
        source: its name, for messages.

    Raises:
        ArtifactError: not a TFLite model, not one of ours, its bytes do not match its
            integrity digest, or its metadata is malformed.
    """
    entries = read_metadata(model)
    if METADATA_NAME in entries:
        verify_digest(model, source)
    if METADATA_NAME not in entries:
        raise ArtifactError(f"{source}: not a ubp-edge artifact: a TFLite model without ubp-edge "
                            f"metadata (not produced by `ubp-edge convert`)")
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
        # The same class (MalformedModelError stays one), with the file's name in front.
        raise type(e)(msg if msg.startswith(str(p)) else f"{p}: {msg}") from None
