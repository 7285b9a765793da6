"""Why a score is what it is, on the device: a session's live trajectory and each event's
change to it, and which feature groups move scores most, by occlusion.

The trajectory is what a kiosk sees: the score after every event, pushed one at a time
through the artifact's step graph (calibrated as every score is). It starts from the
empty-session score, the model's output before any event (``ArtifactInfo.
empty_session_probability``, stored by `convert`: the LSTM state is zero before the first
event, so that score is the output layer's alone). An event's change is the score after it
minus the score before it, computed in float64 from the float32 scores: each difference,
and each running sum of them, is exact (two float32 probabilities above 2**-28 differ by a
number of at most 52 significant bits), so the changes of a session add up exactly to its
final score minus the empty-session score.

Occlusion asks, for a group of features (FEATURE_GROUPS), how much the final score moves
when the group reads its training mean at every event (0 in the normalised space the
model reads), averaged over sessions with its spread. A group the spec does not have is
left out.

Seams: `Trajectory`, `trajectory` (encoded events through the step graph), `feature_groups`
(a spec's groups, named), `occlusion_importance` (encoded sessions through the whole graph).
numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edge_runtime.errors import ArtifactError
from edge_runtime.events import EVENT_TYPES
from edge_runtime.features import CONTEXT_FEATURES, FeatureSpec

# Occlusion rescores every session once per feature group (about 10 passes): `explain`
# averages over a seeded random sample of at most this many sessions, which bounds its time
# and memory on a large log (the mean's standard error is then about std / 141).
IMPORTANCE_SESSIONS = 20_000
# `explain`'s defaults: the sessions explained when none is named (the highest-scoring) and
# the events listed per session as the ones that moved its score most.
EXPLAINED_SESSIONS = 3
TOP_EVENTS = 5

# Readable groups of the model's features, in the order a report lists them before sorting.
FEATURE_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("event type", tuple(f"is_{name}" for name in EVENT_TYPES)),
    ("time since previous event", ("log_dt_prev",)),
    ("time of day", ("tod_sin", "tod_cos")),
    ("position and elapsed time", ("log_position", "log_elapsed")),
    ("repeat views", ("repeat_item", "repeat_category")),
    ("carts so far", ("log_carts_so_far",)),
    ("price", ("log_price",)),
    ("user history", CONTEXT_FEATURES),
    ("category statistics", ("category_rate", "category_log_sessions")),
    ("item statistics", ("item_rate", "item_log_sessions")),
)


def feature_groups(spec: FeatureSpec) -> list[tuple[str, tuple[str, ...], np.ndarray]]:
    """The groups of FEATURE_GROUPS that ``spec`` has: (name, its features in the spec,
    their input columns)."""
    groups = []
    for name, features in FEATURE_GROUPS:
        present = tuple(f for f in features if f in spec.features)
        if present:
            groups.append((name, present, np.array([spec.features.index(f) for f in present])))
    return groups


def empty_session_probability(info, source: str = "artifact") -> float:
    """The artifact's score before any event (`convert` stores it).

    Raises:
        ArtifactError: an artifact converted before ubp-edge stored it.
    """
    p = info.empty_session_probability
    if p is None:
        raise ArtifactError(f"{source}: the artifact does not carry its empty-session score "
                            f"(converted by an older ubp-edge); re-run `ubp-edge convert`")
    return float(p)


@dataclass(frozen=True)
class Trajectory:
    """A session's scores, event by event.

    Attributes:
        baseline: the empty-session score (before the first event).
        probability: float32 (L,), the score after each event; the last is the session's.
    """

    baseline: float
    probability: np.ndarray

    @property
    def final(self) -> float:
        return float(self.probability[-1])

    @property
    def deltas(self) -> np.ndarray:
        """float64 (L,): each event's change to the score; they sum exactly to
        ``final - baseline`` (see the module's note)."""
        scores = np.concatenate(([np.float32(self.baseline)], self.probability)).astype(np.float64)
        return np.diff(scores)

    def top(self, n: int) -> np.ndarray:
        """Positions (0-based) of the ``n`` events that moved the score most, by the size of
        their change, largest first; ties in event order."""
        order = np.argsort(-np.abs(self.deltas), kind="stable")
        return order[:max(0, n)]


def trajectory(scorer, features: np.ndarray) -> Trajectory:
    """Push a session's encoded events one at a time through the artifact's step graph.

    Args:
        scorer: an edge_runtime.Scorer whose artifact carries its empty-session score.
        features: the session's encoded events, float32 (L, F), L >= 1 (e.g.
            `Scorer.encode_session`).

    Returns:
        The Trajectory: the live score after each event, calibrated.

    Raises:
        ArtifactError: the artifact lacks the empty-session score or a step graph.
    """
    baseline = empty_session_probability(scorer.info, scorer.source)
    x = np.asarray(features, np.float32)
    hc = np.zeros((2, scorer.step_model().units), np.float32)
    scores = np.empty(len(x), np.float32)
    for t in range(len(x)):
        scores[t], hc = scorer.score_step(x[t], hc)
    return Trajectory(float(np.float32(baseline)), scores)


@dataclass(frozen=True)
class GroupImportance:
    """How much occluding one feature group moves the final scores.

    Attributes:
        group: its name (FEATURE_GROUPS).
        features: its features in the spec.
        mean_abs_change: mean over sessions of |score with the group - score without it|.
        std_abs_change: the spread of that: the standard deviation over sessions.
        p90_abs_change: its 90th percentile.
        mean_change: mean of (score with the group - score without it): positive when the
            group raises scores on the whole.
        sessions: the sessions averaged over.
    """

    group: str
    features: tuple[str, ...]
    mean_abs_change: float
    std_abs_change: float
    p90_abs_change: float
    mean_change: float
    sessions: int

    def to_dict(self) -> dict:
        return {"group": self.group, "features": list(self.features),
                "mean_abs_change": self.mean_abs_change, "std_abs_change": self.std_abs_change,
                "p90_abs_change": self.p90_abs_change, "mean_change": self.mean_change,
                "sessions": self.sessions}


def occlusion_importance(scorer, sessions: Sequence[np.ndarray], batch_size: int = 64
                         ) -> list[GroupImportance]:
    """Each feature group's effect on the final score, by occlusion through the runtime.

    Args:
        scorer: an edge_runtime.Scorer.
        sessions: encoded sessions, each float32 (L, F).
        batch_size: as `Scorer.score_encoded`.

    Returns:
        One GroupImportance per group the spec has, largest mean_abs_change first (ties in
        FEATURE_GROUPS order); none without sessions.
    """
    sessions = [np.asarray(x, np.float32) for x in sessions]
    if not sessions:
        return []
    scores = scorer.score_encoded(sessions, batch_size=batch_size).astype(np.float64)
    # Every event end to end once; each group occludes a copy of it, cut back into sessions.
    packed = np.concatenate(sessions)
    ends = np.cumsum([len(x) for x in sessions])[:-1]
    rows = []
    for name, features, columns in feature_groups(scorer.info.spec):
        occluded = packed.copy()
        occluded[:, columns] = 0.0  # the training mean, in the normalised space the model reads
        change = scores - scorer.score_encoded(np.split(occluded, ends),
                                               batch_size=batch_size).astype(np.float64)
        size = np.abs(change)
        rows.append(GroupImportance(name, features, float(size.mean()), float(size.std()),
                                    float(np.quantile(size, 0.9)), float(change.mean()),
                                    len(sessions)))
    return sorted(rows, key=lambda r: -r.mean_abs_change)
