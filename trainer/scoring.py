"""Score and evaluate a log with an artifact through edge_runtime (no TensorFlow).

The log goes through the same readers, sessionizer and FeatureEncoder as in training;
the artifact's own spec decides the features, so what is scored here is exactly what
the device would score.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_runtime.errors import ConfigError
from edge_runtime.scorer import Scorer
from trainer.dataset import encode_sessions
from trainer.files import write_bytes_atomic
from trainer.formats import FormatPreset
from trainer.metrics import by_prefix_length, classification_metrics
from trainer.readers import EventLog, read_log
from trainer.sessions import DEFAULT_GAP_MINUTES, Sessions, key_digests, sessionize


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


def score_log(scorer: Scorer, data: str | os.PathLike, format: str | None = None,
              preset: FormatPreset | None = None, gap_minutes: float | None = None,
              strict: bool = False, only_keys: set[str] | None = None) -> ScoredLog:
    """Read, sessionize, encode with the artifact's spec and score every scorable session.

    Args:
        scorer: the loaded artifact.
        data, format, preset, strict: as `trainer.readers.read_log`.
        gap_minutes: session gap; default the one the artifact was trained with.
        only_keys: score only the sessions whose key digests (trainer.sessions.key_digests)
            are in this set, e.g. a run's test split.

    Returns:
        ScoredLog; ``warnings`` says where the log lacks what the spec expects.
    """
    log = read_log(data, format, preset=preset, strict=strict)
    gap = gap_minutes or float(scorer.info.provenance.get("session_gap_minutes", DEFAULT_GAP_MINUTES))
    sessions = sessionize(log, gap)
    spec = scorer.info.spec
    warnings = []
    if spec.uses_context and not log.has_user_ids:
        warnings.append(f"{data}: the model uses user-history context but this log has no user "
                        f"ids; context is zero for every session")
    if "log_price" in spec.features and log.price is None:
        warnings.append(f"{data}: the model uses prices but this log has none")
    index = np.flatnonzero(sessions.scorable)
    if only_keys is not None:
        index = index[np.isin(key_digests(sessions.key[index]), np.array(sorted(only_keys), dtype=str))]
        if len(index) == 0:
            raise ConfigError(f"{data}: none of the {len(only_keys)} requested sessions is in this log")
    probability = scorer.score_encoded(encode_sessions(sessions, index, scorer.encoder))
    return ScoredLog(log, sessions, index, probability, warnings)


def split_keys(split_manifest: str | os.PathLike, split: str) -> set[str]:
    """Session key digests of one split of a run's split.json (``train``, ``validation``, ``test``)."""
    from trainer.rundir import read_json

    manifest = read_json(Path(split_manifest))
    if split not in ("train", "validation", "test") or split not in manifest:
        raise ConfigError(f"--split {split!r}: expected train, validation or test")
    if "session_digests" not in manifest[split]:
        raise ConfigError(f"{split_manifest}: written by another version (no session digests); "
                          f"train again")
    return set(manifest[split]["session_digests"])


def evaluation_report(scored: ScoredLog, threshold: float) -> dict:
    """The `evaluate` JSON: counts, metrics at ``threshold``, by prefix length, bad rows."""
    s = scored.sessions
    y, p = scored.label, scored.probability
    return {
        "n_sessions": int(len(scored.index)),
        "n_positive": int(y.sum()),
        "n_excluded_empty_prefix": int((~s.scorable).sum()),
        **classification_metrics(y, p, threshold),
        "threshold": float(threshold),
        "by_prefix_length": by_prefix_length(y, p, scored.prefix_len, threshold),
        "bad_rows": scored.log.bad.summary(),
        "warnings": scored.warnings,
    }


OUTPUT_FIELDS = ("session", "events_scored", "probability", "decision")


def write_scores(scored: ScoredLog, threshold: float, out: str | os.PathLike) -> Path:
    """One line per session (JSONL, or CSV when ``out`` ends in .csv), written atomically.

    Sessions whose first event is a purchase have nothing to score: they get
    ``events_scored`` 0 and an empty probability, so every session has its line.
    """
    out = Path(out)
    s = scored.sessions
    prob = np.full(len(s), np.nan)
    prob[scored.index] = scored.probability
    rows = []
    for i in range(len(s)):
        p = None if np.isnan(prob[i]) else round(float(prob[i]), 6)
        rows.append({"session": str(s.key[i]), "events_scored": int(s.prefix_len[i]),
                     "probability": p, "decision": None if p is None else int(p >= threshold)})
    if out.suffix.lower() == ".csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=OUTPUT_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
        text = buf.getvalue()
    elif out.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        text = "".join(json.dumps(r) + "\n" for r in rows)
    else:
        raise ConfigError(f"--out {out}: use a .jsonl or .csv file name")
    out.parent.mkdir(parents=True, exist_ok=True)
    return write_bytes_atomic(out, text.encode("utf-8"))
