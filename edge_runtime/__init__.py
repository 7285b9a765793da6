"""ubp-edge's on-device runtime: numpy and a TFLite interpreter, nothing else.

    >>> from edge_runtime import Scorer
    >>> scorer = Scorer.load("model-float32.tflite")
    >>> scorer.score_sessions([[{"ts": 1.5e9, "event": "view", "item": "42"}]])

Modules: `events` (the canonical vocabulary and `canonical_event`, the one check of an
event), `features` (FeatureSpec, FeatureEncoder), `tflite_reader` (metadata and graph check of
a `.tflite`), `artifact` (ArtifactInfo, the digest, the metadata's numbers), `calibration`
(PlattCalibration), `backends` (interpreters), `verify` and `verify_child` (an artifact's first
load tried in a child process, the verdict cached by digest), `native_logs` (what native
libraries print), `scorer` (Scorer), `live` (LiveSession, SessionStore), `explain` (a
session's live trajectory, feature groups by occlusion), `tiers` (intent tiers and live
triggers), `serve`, `doctor`,
`timing`, `probes` (cold start and live memory in a fresh process), `errors`.
"""

from edge_runtime.artifact import ArtifactInfo, read_artifact
from edge_runtime.calibration import PlattCalibration
from edge_runtime.errors import (
    ArtifactError,
    ConfigError,
    DataError,
    MalformedModelError,
    RunDirError,
    UbpEdgeError,
)
from edge_runtime.events import EVENT_TYPES
from edge_runtime.features import CONTEXT_FIELDS, FeatureEncoder, FeatureSpec
from edge_runtime.live import LiveSession, SessionStore
from edge_runtime.scorer import Scorer

__version__ = "0.1.0"
__all__ = ["ArtifactError", "ArtifactInfo", "CONTEXT_FIELDS", "ConfigError", "DataError",
           "EVENT_TYPES", "FeatureEncoder", "FeatureSpec", "LiveSession", "MalformedModelError",
           "PlattCalibration", "RunDirError", "Scorer", "SessionStore", "UbpEdgeError",
           "read_artifact"]
