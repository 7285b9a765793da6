"""Score and evaluate a log with an artifact through edge_runtime (no TensorFlow).

The log goes through the same readers, sessionizer and FeatureEncoder as in training;
the artifact's own spec decides the features, so what is scored here is exactly what
the device would score.

Seams: `scorable_sessions` turns an `EventLogSource` and a Scorer into the log's scorable
sessions (sessionized with the model's gap, with the warnings about what the log lacks,
optionally only the sessions of a split) and encodes them once per FeatureSpec; `score_log`
(here) and `converters.compare.run_comparison` both start from it. `write_scores` streams
one line per session to any text stream.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np

from edge_runtime.errors import ConfigError, RunDirError
from edge_runtime.scorer import Scorer
from trainer import dataset
from trainer.files import atomic_open, format_by_suffix
from trainer.logsource import EventLogSource
from trainer.metrics import (
    by_prefix_length,
    classification_metrics,
    expected_calibration_error,
    marketing_metrics,
)
from trainer.readers import EventLog
from trainer.rundir import SPLIT_NAMES
from trainer.sessions import DEFAULT_GAP_MINUTES, Sessions, key_digests, sessionize


def model_session_gap(scorer: Scorer) -> float:
    """The session gap (minutes) the artifact was trained with, from its provenance."""
    return float(scorer.info.provenance.get("session_gap_minutes", DEFAULT_GAP_MINUTES))


@dataclass
class ScorableSessions:
    """The sessions of a log that a model can score, and their features once encoded.

    Attributes:
        source: where the log came from.
        log: the log as read (its bad rows in ``log.bad``).
        sessions: every session of the log.
        index: the chosen session indices: scorable (events before the outcome), in log order.
        warnings: what the log lacks that the model expects (user ids, prices), and why
            some requested sessions are missing; one sentence each.
    """

    source: EventLogSource
    log: EventLog
    sessions: Sessions
    index: np.ndarray
    warnings: list[str] = field(default_factory=list)
    _encoded: dict = field(default_factory=dict, init=False, repr=False)
    _digests: np.ndarray | None = field(default=None, init=False, repr=False)

    def digest_mask(self, digests: set[str]) -> np.ndarray:
        """Which of ``index`` have their key digest (`trainer.sessions.key_digests`) in ``digests``.

        Args:
            digests: session key digests, e.g. one split of a run's split.json (`split_keys`).

        Returns:
            Boolean mask over ``index``.
        """
        if self._digests is None:
            self._digests = key_digests(self.sessions.key[self.index])
        return np.isin(self._digests, np.array(sorted(digests), dtype=str))

    def select(self, mask: np.ndarray, warnings: list[str] | None = None) -> ScorableSessions:
        """The same log with only the sessions of ``index[mask]``; ``warnings`` come first."""
        return ScorableSessions(self.source, self.log, self.sessions, self.index[mask],
                                [*(warnings or []), *self.warnings])

    def encoded(self, scorer: Scorer) -> list[np.ndarray]:
        """The chosen sessions' features for ``scorer``: its spec's FeatureEncoder, applied
        once per distinct spec however many artifacts ask (a run's artifacts share one).

        Every event of each prefix, however long (the spec's ``max_len`` is the training
        window, not a cut): a session's score here is the live score after its last event.

        Returns:
            One float32 array (events, features) per session of ``index``.
        """
        spec = scorer.info.spec
        if spec not in self._encoded:
            self._encoded[spec] = dataset.encode_sessions(self.sessions, self.index, scorer.encoder,
                                                          window=None)
        return self._encoded[spec]


def scorable_sessions(source: EventLogSource, scorer: Scorer,
                      only_keys: set[str] | None = None) -> ScorableSessions:
    """Read a log and pick the sessions ``scorer`` can score, as the device would see them.

    Args:
        source: the log and how to read it; its gap, else the artifact's, splits sessions.
        scorer: the loaded artifact (its spec decides the features and the warnings).
        only_keys: keep only the sessions whose key digests are in this set, e.g. a run's
            test split (`split_keys`).

    Returns:
        ScorableSessions; ``warnings`` says where the log lacks what the spec expects.

    Raises:
        DataError: the log cannot be read (or a bad row with ``source.strict``).
        ConfigError: ``only_keys`` names no session of this log.
    """
    log = source.read()
    sessions = sessionize(log, source.session_gap(model_session_gap(scorer)))
    spec = scorer.info.spec
    warnings = []
    if spec.uses_context and not log.has_user_ids:
        warnings.append(f"{source.path}: the model uses user-history context but this log has no "
                        f"user ids; context is zero for every session")
    if "log_price" in spec.features and log.price is None:
        warnings.append(f"{source.path}: the model uses prices but this log has none")
    chosen = ScorableSessions(source, log, sessions, np.flatnonzero(sessions.scorable), warnings)
    if only_keys is not None:
        chosen = chosen.select(chosen.digest_mask(only_keys))
        if len(chosen.index) == 0:
            raise ConfigError(f"{source.path}: none of the {len(only_keys)} requested sessions is "
                              f"in this log")
    return chosen


@dataclass
class ScoredLog:
    """Every scorable session of a log with its probability."""

    log: EventLog
    sessions: Sessions
    index: np.ndarray  # scorable session indices
    probability: np.ndarray
    warnings: list[str] = field(default_factory=list)

    @property
    def label(self) -> np.ndarray:
        return self.sessions.label[self.index]

    @property
    def prefix_len(self) -> np.ndarray:
        return self.sessions.prefix_len[self.index]


def score_log(scorer: Scorer, source: EventLogSource, only_keys: set[str] | None = None) -> ScoredLog:
    """Read, sessionize, encode with the artifact's spec and score every scorable session.

    Args:
        scorer: the loaded artifact.
        source: the log and how to read it; ``source.gap_minutes`` None means the gap the
            artifact was trained with.
        only_keys: score only the sessions whose key digests (trainer.sessions.key_digests)
            are in this set, e.g. a run's test split.

    Returns:
        ScoredLog; ``warnings`` says where the log lacks what the spec expects.

    Raises:
        DataError: the log cannot be read (or a bad row with ``source.strict``).
        ConfigError: ``only_keys`` names no session of this log.

    Example:
        >>> scored = score_log(Scorer.load("model-float32.tflite"),
        ...                    EventLogSource("UserBehavior_sample.csv", format="taobao"))
    """
    chosen = scorable_sessions(source, scorer, only_keys)
    probability = scorer.score_encoded(chosen.encoded(scorer))
    return ScoredLog(chosen.log, chosen.sessions, chosen.index, probability, chosen.warnings)


def split_keys(split_manifest: str | os.PathLike, split: str) -> set[str]:
    """Session key digests of one split of a run's split.json.

    Args:
        split_manifest: the run directory's split.json.
        split: one of SPLIT_NAMES (``train``, ``validation``, ``test``).

    Returns:
        The digests (`trainer.sessions.key_digests`) of that split's sessions.

    Raises:
        ConfigError: an unknown split, or a split.json without session digests (another version).
        RunDirError: split.json missing, unreadable or damaged (not a JSON object, the split or
            its digests of the wrong type), naming the file.
    """
    from trainer.rundir import read_json

    if split not in SPLIT_NAMES:
        raise ConfigError(f"--split {split!r}: expected {', '.join(SPLIT_NAMES[:-1])} or {SPLIT_NAMES[-1]}")
    path = Path(split_manifest)
    entry = read_json(path).get(split)
    if not isinstance(entry, dict):
        raise RunDirError(f"{path}: damaged, no {split} split in it")
    if "session_digests" not in entry:
        raise ConfigError(f"{path}: written by another version (no session digests); train again")
    digests = entry["session_digests"]
    if not isinstance(digests, list) or not all(isinstance(d, str) for d in digests):
        raise RunDirError(f"{path}: damaged, the {split} split's session_digests are not a list of "
                          f"digests")
    return set(digests)


def evaluation_report(scored: ScoredLog, threshold: float) -> dict:
    """The `evaluate` JSON: counts, metrics at ``threshold``, by prefix length, the marketing
    figures (ECE and its bins, lift and capture at the top slices, the gains curve), bad rows."""
    s = scored.sessions
    y, p = scored.label, scored.probability
    ece = expected_calibration_error(y, p)
    return {
        "n_sessions": int(len(scored.index)),
        "n_positive": int(y.sum()),
        "n_excluded_empty_prefix": int((~s.scorable).sum()),
        **classification_metrics(y, p, threshold),
        "threshold": float(threshold),
        "by_prefix_length": by_prefix_length(y, p, scored.prefix_len, threshold),
        "ece": None if ece != ece else float(ece),  # NaN without sessions: JSON has no NaN
        **marketing_metrics(y, p),
        "bad_rows": scored.log.bad.summary(),
        "warnings": scored.warnings,
    }


OUTPUT_FIELDS = ("session", "events_scored", "probability", "decision")
# Scores file suffix -> what is written: JSON lines, or CSV with a header.
SCORE_FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}


def scores_format(path: str | os.PathLike) -> str:
    """``jsonl`` or ``csv``: what a scores file of this name holds.

    Raises:
        ConfigError: any other suffix.
    """
    return format_by_suffix(path, SCORE_FORMATS)


def score_rows(scored: ScoredLog, threshold: float) -> Iterator[dict]:
    """One row per session of the log, in OUTPUT_FIELDS order.

    Sessions whose first event is a purchase have nothing to score: they get
    ``events_scored`` 0 and a None probability and decision, so every session has its row.
    """
    s = scored.sessions
    prob = np.full(len(s), np.nan)
    prob[scored.index] = scored.probability
    for i in range(len(s)):
        p = None if np.isnan(prob[i]) else round(float(prob[i]), 6)
        yield {"session": str(s.key[i]), "events_scored": int(s.prefix_len[i]),
               "probability": p, "decision": None if p is None else int(p >= threshold)}


def write_scores(scored: ScoredLog, threshold: float, stream: TextIO, kind: str = "jsonl") -> int:
    """Stream one line per session to ``stream`` (stdout, or a file from `trainer.files.atomic_open`).

    Args:
        scored: from `score_log`.
        threshold: the decision threshold (the artifact's).
        stream: a text stream; CSV lines end in a bare newline (open files with ``newline=""``).
        kind: ``jsonl`` (one JSON object per line) or ``csv`` (a header, then empty cells for None).

    Returns:
        The number of sessions written.

    Raises:
        ConfigError: an unknown ``kind``.
    """
    if kind not in ("jsonl", "csv"):
        raise ConfigError(f"scores format {kind!r}: expected jsonl or csv")
    n = 0
    if kind == "csv":
        writer = csv.DictWriter(stream, fieldnames=OUTPUT_FIELDS, lineterminator="\n")
        writer.writeheader()
        for row in score_rows(scored, threshold):
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
            n += 1
    else:
        for row in score_rows(scored, threshold):
            stream.write(json.dumps(row) + "\n")
            n += 1
    return n


def write_scores_file(scored: ScoredLog, threshold: float, out: str | os.PathLike) -> Path:
    """Write the scores file ``out`` atomically: JSONL, or CSV when it ends in .csv.

    Returns:
        ``out``.

    Raises:
        ConfigError: ``out`` is neither .jsonl (.json, .ndjson) nor .csv.
        OutputError: ``out`` cannot be written (a directory, no space left, a file-size
            limit, permissions); no temporary file is left (`trainer.files.atomic_open`).
    """
    out = Path(out)
    kind = scores_format(out)
    with atomic_open(out, "w", newline="") as f:
        write_scores(scored, threshold, f, kind)
    return out
