"""`ubp-edge explain`: why sessions of a log score what they score, named in the log's terms.

For each chosen session, its live trajectory (edge_runtime.explain.trajectory: the score after
every event, pushed one at a time through the artifact's step graph), each event's change to
the score and the events that moved it most, each described by what the log says of it: the
event type, the item and category ids as the log wrote them, its time and the time since the
previous event. For the log as a whole, which feature groups move the final scores most, by
occlusion through the runtime (edge_runtime.explain.occlusion_importance).

Seams: `explain_log` (a log and a Scorer -> LogExplanation), `LogExplanation.to_dict` (the
`--json` object, also what the report and the terminal tables render), `duration_text`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np

from edge_runtime.errors import ConfigError
from edge_runtime.explain import (
    EXPLAINED_SESSIONS,
    IMPORTANCE_SESSIONS,
    TOP_EVENTS,
    GroupImportance,
    Trajectory,
    empty_session_probability,
    occlusion_importance,
    trajectory,
)
from edge_runtime.scorer import Scorer
from trainer.logsource import EventLogSource
from trainer.scoring import ScorableSessions, scorable_sessions


@dataclass(frozen=True)
class SessionExplanation:
    """One session's trajectory and its events as the log has them.

    Attributes:
        key: the session key (the log's session id, else ``user@start``).
        user: the user id as the log wrote it, None where the log has no user ids.
        purchased: whether the session went on to a purchase (after the events scored).
        trajectory: the live scores (edge_runtime.explain.Trajectory).
        events: one dict per event scored: ``position`` (1-based), ``time`` (ISO 8601, UTC),
            ``event``, ``item``, ``category`` (None where the log has none), ``price``
            (None where absent), ``seconds_since_previous`` (None for the first).
        top: positions (0-based) of the events that moved the score most, largest first.
    """

    key: str
    user: str | None
    purchased: bool
    trajectory: Trajectory
    events: list[dict]
    top: list[int]

    def to_dict(self) -> dict:
        """The session's entry of the `--json` object: ``key``, ``baseline``, ``trajectory``,
        ``deltas``, ``top`` (the events that moved it most, each with its ``delta`` and the
        ``probability`` after it), and ``events`` (every event, in order)."""
        scores = [float(p) for p in self.trajectory.probability]
        deltas = [float(d) for d in self.trajectory.deltas]
        top = [{**self.events[i], "delta": deltas[i], "probability": scores[i]} for i in self.top]
        return {"key": self.key, "user": self.user, "purchased": self.purchased,
                "baseline": self.trajectory.baseline, "final": scores[-1],
                "trajectory": scores, "deltas": deltas, "top": top, "events": self.events}


@dataclass
class LogExplanation:
    """What `explain` found on a log.

    Attributes:
        model: the artifact's path, as given.
        data: the log's path.
        baseline: the artifact's empty-session score.
        threshold: its decision threshold.
        tiers: its intent tiers (IntentTiers.to_dict), None when it has none.
        sessions: the explained sessions.
        importance: feature groups by occlusion, most important first.
        sessions_scored: the sessions the importance averages over.
        sessions_sampled_from: the scorable sessions they were sampled from (equal when
            all were used).
        chosen_by: how the sessions were chosen, in words.
        split: the run's split the sessions came from (`--split`), None for the whole log.
        bad_rows: the log's bad-row summary.
        warnings: what the log lacks that the model expects.
    """

    model: str
    data: str
    baseline: float
    threshold: float
    tiers: dict | None
    sessions: list[SessionExplanation]
    importance: list[GroupImportance]
    sessions_scored: int
    sessions_sampled_from: int
    chosen_by: str
    bad_rows: dict
    split: str | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """The `explain --json` object."""
        return {"model": self.model, "data": self.data, "baseline": self.baseline,
                "threshold": self.threshold, "tiers": self.tiers, "split": self.split,
                "chosen_by": self.chosen_by,
                "sessions": [s.to_dict() for s in self.sessions],
                "importance": [g.to_dict() for g in self.importance],
                "importance_sessions": self.sessions_scored,
                "importance_sampled_from": self.sessions_sampled_from,
                "bad_rows": self.bad_rows, "warnings": self.warnings}


def explain_log(scorer: Scorer, source: EventLogSource, session_keys: list[str] | None = None,
                n_sessions: int = EXPLAINED_SESSIONS, top: int = TOP_EVENTS,
                only_keys: set[str] | None = None, model_name: str = "",
                importance_sessions: int = IMPORTANCE_SESSIONS, split: str | None = None
                ) -> LogExplanation:
    """Explain sessions of a log, and the feature groups over all its scorable sessions.

    Args:
        scorer: the loaded artifact (it must carry its empty-session score).
        source: the log and how to read it.
        session_keys: the session keys to explain, in this order; None picks the
            ``n_sessions`` highest-scoring sessions (by whole-session score).
        n_sessions: how many to pick when ``session_keys`` is None.
        top: events listed per session as the ones that moved it most.
        only_keys: key digests of a split (`trainer.scoring.split_keys`): only those
            sessions are scored, picked and averaged over.
        split: that split's name, for the output.
        model_name: the artifact's name for the output.
        importance_sessions: the most sessions occlusion averages over (a seeded random
            sample of the scorable ones beyond it).

    Returns:
        LogExplanation.

    Raises:
        ConfigError: a key that is not a session of the log, or one with nothing to score (a
            purchase first); ``top`` or ``n_sessions`` < 1.
        ArtifactError: the artifact lacks its empty-session score (converted before it was
            stored) or a step graph.
        DataError: the log cannot be read.
    """
    if top < 1 or n_sessions < 1 or importance_sessions < 1:
        raise ConfigError(f"--top, --sessions and --importance-sessions must be >= 1, got {top}, "
                          f"{n_sessions} and {importance_sessions}")
    baseline = empty_session_probability(scorer.info, str(model_name or scorer.source))
    chosen = scorable_sessions(source, scorer, only_keys)
    encoded = chosen.encoded(scorer)
    if not encoded:
        raise ConfigError(f"{source.path}: no session has an event before its first purchase; "
                          f"nothing to explain")
    if session_keys:
        positions = _positions_of(chosen, session_keys, source)
        chosen_by = "named with --session"
    else:
        # Highest whole-session score first (what `score` and `segment` give); ties in log
        # order. A full-integer artifact's live final score can differ by a few thousandths.
        scores = scorer.score_encoded(encoded)
        positions = list(np.argsort(-scores, kind="stable")[:n_sessions])
        count = min(n_sessions, len(scores))
        chosen_by = (f"the {count} highest-scoring {'session' if count == 1 else 'sessions'} "
                     f"(by whole-session score)")
    explained = [_explain_session(scorer, chosen, int(i), encoded[int(i)], top) for i in positions]
    sample = encoded
    if len(encoded) > importance_sessions:
        picked = np.sort(np.random.default_rng(0).choice(len(encoded), importance_sessions, replace=False))
        sample = [encoded[i] for i in picked]
    return LogExplanation(
        model=model_name, data=str(source.path), baseline=baseline, threshold=scorer.threshold,
        tiers=scorer.info.tiers, sessions=explained,
        importance=occlusion_importance(scorer, sample), sessions_scored=len(sample),
        sessions_sampled_from=len(encoded),
        chosen_by=chosen_by, bad_rows=chosen.log.bad.summary(), warnings=chosen.warnings,
        split=split)


def _positions_of(chosen: ScorableSessions, keys: list[str], source: EventLogSource) -> list[int]:
    """Positions in ``chosen.index`` of the sessions with these keys; ConfigError naming a key
    the log does not have, or one of a session with nothing before its first purchase."""
    s = chosen.sessions
    where = {str(k): i for i, k in enumerate(s.key)}
    position = {int(i): p for p, i in enumerate(chosen.index)}
    out = []
    for key in keys:
        i = where.get(key)
        if i is None:
            sample = ", ".join(str(k) for k in s.key[:3])
            raise ConfigError(f"{source.path}: no session {key!r} (session keys look like {sample})")
        if i not in position:
            raise ConfigError(f"{source.path}: session {key!r} has nothing to explain: "
                              + ("it starts with a purchase" if not s.scorable[i]
                                 else "it is not in the chosen split"))
        out.append(position[i])
    return out


def _explain_session(scorer: Scorer, chosen: ScorableSessions, position: int, x: np.ndarray,
                     top: int) -> SessionExplanation:
    s, log = chosen.sessions, chosen.log
    i = int(chosen.index[position])
    events, previous = [], None
    for n, event in enumerate(log.event_dicts(s.prefix_events(i))):
        ts = event.pop("ts")
        events.append({
            "position": n + 1,
            "time": dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds"),
            **event,
            "seconds_since_previous": None if previous is None else ts - previous})
        previous = ts
    path = trajectory(scorer, x)
    return SessionExplanation(str(s.key[i]), s.user_of(i), bool(s.label[i]), path, events,
                              [int(t) for t in path.top(top)])


def duration_text(seconds: float | None) -> str:
    """``12 s``, ``4 min 5 s``, ``2 h 10 min``, ``3 d 4 h``; empty for None."""
    if seconds is None:
        return ""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min" + (f" {s % 60} s" if s % 60 else "")
    if s < 86400:
        return f"{s // 3600} h" + (f" {s % 3600 // 60} min" if s % 3600 // 60 else "")
    return f"{s // 86400} d" + (f" {s % 86400 // 3600} h" if s % 86400 // 3600 else "")
