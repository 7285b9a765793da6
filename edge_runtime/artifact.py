"""What a ubp-edge artifact carries inside its `.tflite` file, and how to read it back.

The JSON under the metadata name ``ubp_edge`` holds the FeatureSpec, the decision
threshold, the precision and graph, the provenance and the recalibration, so one file is all
a device needs. Entries are read with edge_runtime.tflite_reader and written, at conversion,
with converters.metadata_writer.

Every number of the metadata is checked when it is read (`check_numbers`): finite
(Python's json reads the non-JSON tokens NaN and Infinity, and 1e999 as infinity), and within
its meaning where it has one (NUMBER_RULES: a threshold in [0, 1], a UTC offset within
+-14 h, positive normalisation scales, ...). A NaN there would otherwise load and score
NaN, and `serve` would write it as the non-JSON ``"probability": NaN``.

Seams: `ArtifactInfo` (to_dict / from_dict / to_bytes), `read_artifact(path)` and
`parse_artifact(bytes)`, `check_numbers`, the digest helpers `file_digest` / `verify_digest`.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from edge_runtime.calibration import PlattCalibration
from edge_runtime.errors import ArtifactError, first_line
from edge_runtime.features import FeatureSpec
from edge_runtime.lean_stdlib import sha256
from edge_runtime.tflite_reader import metadata_spans, read_metadata
from edge_runtime.tiers import IntentTiers

METADATA_NAME = "ubp_edge"
# The model's signatures: the fused whole-session graph (events [1, L, F] -> probability)
# and the live one-event graph (event, h, c -> probability, h, c), which any LiteRT client
# calls by name. An unrolled artifact's whole-session graph is its chunk_T signatures
# (edge_runtime.whole_graph) beside ``step``.
SCORE_SIGNATURE = "score"
STEP_SIGNATURE = "step"
# Artifacts of spec version 1 carried the live graph as a complete .tflite of its own in
# this metadata entry instead of the ``step`` signature; they still load.
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
    return sha256(model[:start] + DIGEST_PLACEHOLDER + model[end:]).hexdigest()


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
# Version 2: the live graph is the model's ``step`` signature (and a fused whole graph is
# ``score``); version 1 carried it in the STEP_METADATA_NAME entry. Both are read.
ARTIFACT_VERSION = 2
READABLE_VERSIONS = (1, 2)


class NumberRule(NamedTuple):
    """The range a metadata number must lie in (it is finite in any case).

    Attributes:
        low, high: the bounds.
        low_open: the low bound itself is refused (a scale of 0).
        integer: the number must be a whole number (a length).
        meaning: what the number is, for the message.
    """

    low: float
    high: float
    low_open: bool = False
    integer: bool = False
    meaning: str = ""

    def allows(self, value: float) -> bool:
        if self.integer and not (isinstance(value, int) or float(value).is_integer()):
            return False
        above = value > self.low if self.low_open else value >= self.low
        return above and value <= self.high

    def text(self) -> str:
        """``a number in [-14, 14]``, ``a whole number in [1, 2147483647]``, ``a number in (0, inf)``."""
        def show(v: float) -> str:
            return f"{v:g}" if math.isinf(v) or not self.integer else f"{int(v)}"

        left = "(" if self.low_open or self.low == -math.inf else "["
        right = ")" if self.high == math.inf else "]"
        kind = "a whole number" if self.integer else "a number"
        return f"{kind} in {left}{show(self.low)}, {show(self.high)}{right}"


# The metadata's numbers that have a meaning, by key path ("*": every element of a list).
# Each must be a JSON number (not a string, not a boolean) within its rule. The UTC offsets
# of the world's clocks run from -12 h to +14 h; a tensor dimension is an int32.
NUMBER_RULES: dict[tuple[str, ...], NumberRule] = {
    ("threshold",): NumberRule(0.0, 1.0, meaning="a probability"),
    ("feature_spec", "utc_offset_hours"): NumberRule(-14.0, 14.0, meaning="hours from UTC"),
    ("feature_spec", "max_len"): NumberRule(1, 2**31 - 1, integer=True, meaning="events"),
    ("feature_spec", "max_dt_seconds"): NumberRule(0.0, math.inf, low_open=True,
                                                   meaning="seconds"),
    ("feature_spec", "mean", "*"): NumberRule(-math.inf, math.inf, meaning="a feature mean"),
    ("feature_spec", "scale", "*"): NumberRule(0.0, math.inf, low_open=True,
                                               meaning="a feature's normalisation scale"),
    ("calibration", "a"): NumberRule(0.0, math.inf, low_open=True,
                                     meaning="the Platt slope; the map must be increasing"),
    ("calibration", "b"): NumberRule(-math.inf, math.inf, meaning="the Platt intercept"),
    ("empty_session_probability",): NumberRule(0.0, 1.0, meaning="a probability"),
    ("tiers", "cuts", "*"): NumberRule(0.0, 1.0, meaning="a tier's cut-off probability"),
}


def check_numbers(d: object, source: str = "artifact") -> None:
    """Refuse metadata holding a number that is not finite or out of its range.

    Every number anywhere in ``d`` (provenance included) must be finite: a float that is
    NaN or infinite, or an integer too large for a float, is refused. The numbers of
    NUMBER_RULES must moreover be JSON numbers within their rule. Missing keys and
    containers of the wrong type are left to `ArtifactInfo.from_dict`, which names them.

    Args:
        d: the parsed metadata JSON.
        source: the file's name, for messages.

    Raises:
        ArtifactError: naming the key path (``feature_spec.scale[3]``) and the value.
    """
    # Iterative, so a deeply nested provenance cannot exhaust the Python stack.
    stack: list[tuple[str, object]] = [("", d)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, Mapping):
            stack.extend((f"{path}.{k}" if path else str(k), v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", v) for i, v in enumerate(value))
        elif _is_number(value) and not _finite(value):
            shown = (f"the token {value.token}, which JSON does not allow"
                     if isinstance(value, NonJsonNumber)
                     else value if isinstance(value, float) else "an integer beyond a float's range")
            raise ArtifactError(f"{source}: artifact metadata {path} is {shown}; every number "
                                f"must be finite")
    for keys, rule in NUMBER_RULES.items():
        for path, value in _at(d, keys, ""):
            if not (_is_number(value) and rule.allows(value)):
                raise ArtifactError(f"{source}: artifact metadata {path} is {_shown(value)}, expected "
                                    f"{rule.text()} ({rule.meaning})")


def _is_number(value: object) -> bool:
    # numbers.Real takes numpy's floats too (from_dict may be given a dict built in Python);
    # a boolean is not a number here, though Python's bool is an int.
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _shown(value: object, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters: a message is one short line."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond float's range (JSON has no size limit)
        return False


def _at(d: object, keys: tuple[str, ...], path: str):
    """(key path, value) of every value at ``keys`` in ``d``; "*" walks a list's elements.
    Paths that are missing or run through a value of another type yield nothing."""
    if not keys:
        yield path, d
        return
    key, rest = keys[0], keys[1:]
    if key == "*":
        if isinstance(d, list):
            for i, v in enumerate(d):
                yield from _at(v, rest, f"{path}[{i}]")
    elif isinstance(d, Mapping) and key in d:
        yield from _at(d[key], rest, f"{path}.{key}" if path else key)


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
        version: the artifact format's version (READABLE_VERSIONS; ARTIFACT_VERSION for a
            new artifact).
        empty_session_probability: the score before any event (the output layer's alone, the
            LSTM state being zero), through ``calibration``: where a session's trajectory
            starts (edge_runtime.explain); None in artifacts converted before it was stored.
        tiers: the intent tiers (edge_runtime.tiers.IntentTiers.to_dict) `convert` chose on
            validation sessions; None in artifacts converted before they were stored.
    """

    spec: FeatureSpec
    threshold: float
    precision: str
    graph: str
    provenance: dict = field(default_factory=dict)
    calibration: dict | None = None
    version: int = ARTIFACT_VERSION
    empty_session_probability: float | None = None
    tiers: dict | None = None

    def to_dict(self) -> dict:
        """The JSON object stored under METADATA_NAME (format and version included); the
        optional entries only when set, so older readers see what they know."""
        d = {"format": ARTIFACT_FORMAT, "version": self.version,
             "feature_spec": self.spec.to_dict(), "threshold": self.threshold,
             "precision": self.precision, "graph": self.graph, "provenance": self.provenance,
             "calibration": self.calibration}
        if self.empty_session_probability is not None:
            d["empty_session_probability"] = self.empty_session_probability
        if self.tiers is not None:
            d["tiers"] = self.tiers
        return d

    def intent_tiers(self) -> IntentTiers | None:
        """The stored intent tiers, None when the artifact has none."""
        return None if self.tiers is None else IntentTiers.from_dict(self.tiers)

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
                the wrong type, a number that is not finite or outside its range, see
                `check_numbers`, an unknown graph or calibration).
        """
        if not isinstance(d, Mapping) or d.get("format") != ARTIFACT_FORMAT:
            raise ArtifactError(f"{source}: metadata is not a ubp-edge artifact description")
        version = d.get("version")
        if isinstance(version, bool) or version not in READABLE_VERSIONS:
            raise ArtifactError(f"{source}: artifact version {version!r} is not supported; "
                                f"this ubp-edge reads versions {', '.join(map(str, READABLE_VERSIONS))}")
        check_numbers(d, source)
        try:
            spec = FeatureSpec.from_dict(d["feature_spec"])
            threshold = float(d["threshold"])
            precision, graph = str(d["precision"]), str(d["graph"])
            provenance = dict(d.get("provenance") or {})
            calibration = d.get("calibration")
            if calibration is not None:
                calibration = PlattCalibration.from_dict(calibration).to_dict()
            empty = d.get("empty_session_probability")
            empty = None if empty is None else float(empty)
            tiers = d.get("tiers")
            if tiers is not None:
                if not isinstance(tiers, Mapping):
                    raise ArtifactError(f"intent tiers are {type(tiers).__name__}, expected an object")
                tiers = IntentTiers.from_dict(tiers).to_dict()
        except ArtifactError as e:
            raise ArtifactError(f"{source}: {e}") from None
        except (KeyError, TypeError, ValueError) as e:
            raise ArtifactError(f"{source}: artifact metadata is malformed ({e!r})") from None
        if not 0.0 <= threshold <= 1.0:
            raise ArtifactError(f"{source}: threshold {threshold} outside [0, 1]")
        if graph not in ("fused", "unrolled"):
            raise ArtifactError(f"{source}: graph {graph!r} not in ['fused', 'unrolled']")
        return cls(spec, threshold, precision, graph, provenance, calibration, int(version),
                   empty, tiers)


class NonJsonNumber(float):
    """What the tokens NaN, Infinity and -Infinity parse to: Python's json reads them, JSON
    does not have them. `check_numbers` refuses them by key path, naming the token."""

    token: str

    def __new__(cls, token: str) -> NonJsonNumber:
        number = super().__new__(cls, token)
        number.token = token
        return number


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
        d = json.loads(entries[METADATA_NAME].decode("utf-8"), parse_constant=NonJsonNumber)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{source}: ubp-edge metadata is not valid JSON ({e})") from None
    except (ValueError, RecursionError) as e:  # an integer of over 4,300 digits; deep nesting
        raise ArtifactError(f"{source}: ubp-edge metadata is not valid JSON "
                            f"({first_line(e, with_type=True, limit=120)})") from None
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
