"""`ubp-edge segment`: a log's sessions in intent tiers, each with its size, purchase rate and
lift, and the assignments a campaign tool imports.

The tiers are the artifact's (edge_runtime.tiers.IntentTiers, chosen by `convert` on
validation sessions) or cut-offs given on the command line. A session's tier is that of its
score after the events before its first purchase, the score a device gives it; its
purchase is the label `evaluate` reads. Lift is a tier's purchase rate over the rate of all
the sessions evaluated.

Seams: `segment_log` (a log, a Scorer and tiers -> Segmentation), `tier_table` (scores,
labels, tiers -> the table's rows), `Segmentation.to_dict` (the `--json` object),
`session_rows` / `user_rows` and `write_assignments` (CSV, Parquet or JSON lines, by
suffix, written atomically).
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_runtime.errors import ConfigError
from edge_runtime.scorer import Scorer
from edge_runtime.tiers import IntentTiers, chosen_tiers
from trainer.files import atomic_open, format_by_suffix
from trainer.logsource import EventLogSource
from trainer.scoring import ScoredLog, score_log

# Assignment file suffix -> what is written.
ASSIGNMENT_FORMATS = {".csv": "csv", ".parquet": "parquet", ".jsonl": "jsonl", ".json": "jsonl",
                      ".ndjson": "jsonl"}
SESSION_FIELDS = ("session", "user", "start", "events_scored", "probability", "tier")
USER_FIELDS = ("user", "sessions", "highest_probability", "highest_tier", "latest_session",
               "latest_probability", "latest_tier")
# Each column's type in a Parquet file: fixed, so a column of only None (no user ids) is
# still a string column.
PARQUET_TYPES = {"session": "string", "user": "string", "start": "float64",
                 "events_scored": "int64", "probability": "float64", "tier": "string",
                 "sessions": "int64", "highest_probability": "float64", "highest_tier": "string",
                 "latest_session": "string", "latest_probability": "float64",
                 "latest_tier": "string"}


def assignment_format(path: str | os.PathLike, option: str = "--out") -> str:
    """``csv``, ``parquet`` or ``jsonl``: what an assignments file of this name holds.

    Raises:
        ConfigError: any other suffix.
    """
    return format_by_suffix(path, ASSIGNMENT_FORMATS, option)


def tier_table(probability: np.ndarray, label: np.ndarray, tiers: IntentTiers) -> list[dict]:
    """One row per tier, lowest intent first.

    Args:
        probability: the sessions' scores.
        label: 1 where the session went on to a purchase.
        tiers: the cut-offs and names.

    Returns:
        Rows with ``name``, ``low`` and ``high`` (the tier's score range, ``[low, high)``),
        ``sessions``, ``share`` (of all sessions), ``purchases``, ``purchase_rate`` (None
        for an empty tier), ``lift`` (the rate over all sessions' rate; None without a
        purchase in the log or for an empty tier) and ``capture`` (the share of all
        purchases; None without any).
    """
    index = tiers.tier_index(probability)
    label = np.asarray(label, np.int64)
    total, bought = len(label), int(label.sum())
    base = bought / total if total else None
    rows = []
    for i, name in enumerate(tiers.names):
        low, high = tiers.bounds(i)
        members = index == i
        n, k = int(members.sum()), int(label[members].sum())
        rate = k / n if n else None
        rows.append({"name": name, "low": low, "high": high, "sessions": n,
                     "share": n / total if total else None, "purchases": k, "purchase_rate": rate,
                     "lift": rate / base if rate is not None and base else None,
                     "capture": k / bought if bought else None})
    return rows


@dataclass
class Segmentation:
    """A log's scored sessions in tiers.

    Attributes:
        scored: the scored log (trainer.scoring.ScoredLog).
        tiers: the tiers used.
        cuts_from: ``artifact`` or ``--cuts``.
        rows: `tier_table`'s rows.
        model, split: what was scored, for the output.
    """

    scored: ScoredLog
    tiers: IntentTiers
    cuts_from: str
    rows: list[dict]
    model: str = ""
    split: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def tier_of_session(self) -> np.ndarray:
        """Tier index of each scored session (of ``scored.index``)."""
        return self.tiers.tier_index(self.scored.probability)

    def to_dict(self) -> dict:
        """The `segment --json` object: ``tiers`` lowest intent first, with the counts."""
        label = self.scored.label
        return {"model": self.model, "data": str(self.scored.log.source), "split": self.split,
                "cuts_from": self.cuts_from, "method": self.tiers.method,
                "fitted_on": self.tiers.fitted_on, "cuts": list(self.tiers.cuts),
                "sessions": int(len(label)), "purchases": int(label.sum()),
                "base_rate": float(label.mean()) if len(label) else None,
                "tiers": self.rows, "bad_rows": self.scored.log.bad.summary(),
                "warnings": self.warnings}


def segment_log(scorer: Scorer, source: EventLogSource, cuts: tuple[float, ...] | None = None,
                names: tuple[str, ...] | None = None, only_keys: set[str] | None = None,
                model_name: str = "", split: str | None = None) -> Segmentation:
    """Score a log's sessions and put each in its tier.

    Args:
        scorer: the loaded artifact.
        source: the log and how to read it.
        cuts, names: cut-offs to use instead of the artifact's, and tier names
            (edge_runtime.tiers.chosen_tiers: names alone rename the artifact's tiers).
        only_keys: key digests of one split (`trainer.scoring.split_keys`).
        model_name, split: named in the output.

    Returns:
        Segmentation.

    Raises:
        ConfigError: no ``cuts`` and the artifact carries none; names that do not fit the
            tiers; ``only_keys`` names no session of the log; no session to score.
        DataError: the log cannot be read.
    """
    tiers, stored = chosen_tiers(scorer.info.intent_tiers(), cuts, names,
                                 model_name or scorer.source)
    cuts_from = "artifact" if stored else "--cuts"
    scored = score_log(scorer, source, only_keys)
    if len(scored.index) == 0:
        raise ConfigError(f"{source.path}: no session has an event before its first purchase; "
                          f"nothing to segment")
    return Segmentation(scored, tiers, cuts_from, tier_table(scored.probability, scored.label, tiers),
                        model_name, split, list(scored.warnings))


def _sessions(seg: Segmentation):
    """(session key, user, start, events scored, unrounded score, tier name) of each scored
    session, in log order."""
    s, names = seg.scored.sessions, seg.tiers.names
    for i, p, tier in zip(seg.scored.index, seg.scored.probability, seg.tier_of_session, strict=True):
        yield str(s.key[i]), s.user_of(i), float(s.start[i]), int(s.prefix_len[i]), float(p), names[tier]


def session_rows(seg: Segmentation) -> list[dict]:
    """One row per scored session, in log order (SESSION_FIELDS): its key, its user (None
    where the log has no user ids), its start (Unix seconds), events scored, score (rounded
    to 6 decimals, as `score` prints it; the tier is that of the unrounded score), tier."""
    return [{"session": key, "user": user, "start": start, "events_scored": events,
             "probability": round(p, 6), "tier": tier}
            for key, user, start, events, p, tier in _sessions(seg)]


def user_rows(seg: Segmentation) -> list[dict]:
    """One row per user (USER_FIELDS), in order of first appearance: the user's sessions, the
    highest score and its tier, and the latest session (by start) with its score and tier.
    Scores are compared unrounded and written rounded to 6 decimals.

    Raises:
        ConfigError: the log has no user ids.
    """
    if not seg.scored.log.has_user_ids:
        raise ConfigError(f"{seg.scored.log.source}: the log has no user ids; per-user tiers need them")
    by_user: dict[str, dict] = {}
    for key, user, start, _, p, tier in _sessions(seg):
        held = by_user.setdefault(user, {"user": user, "sessions": 0, "highest": -1.0,
                                         "tier": None, "latest": -1.0})
        held["sessions"] += 1
        if p > held["highest"]:
            held["highest"], held["tier"] = p, tier
        if start >= held["latest"]:
            held["latest"], held["latest_session"] = start, key
            held["latest_probability"], held["latest_tier"] = p, tier
    return [{"user": r["user"], "sessions": r["sessions"],
             "highest_probability": round(r["highest"], 6), "highest_tier": r["tier"],
             "latest_session": r["latest_session"],
             "latest_probability": round(r["latest_probability"], 6), "latest_tier": r["latest_tier"]}
            for r in by_user.values()]


def write_assignments(rows: list[dict], fields: tuple[str, ...], out: str | os.PathLike,
                      option: str = "--out") -> Path:
    """Write rows atomically as CSV (a header; empty cells for None), Parquet or JSON lines,
    by ``out``'s suffix.

    Raises:
        ConfigError: another suffix.
        OutputError: ``out`` cannot be written; nothing is left behind.
    """
    out = Path(out)
    kind = assignment_format(out, option)
    if kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pa.schema([(f, PARQUET_TYPES[f]) for f in fields])
        table = pa.table({f: [r[f] for r in rows] for f in fields}, schema=schema)
        with atomic_open(out, "wb") as f:
            pq.write_table(table, f)
    elif kind == "csv":
        with atomic_open(out, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields, lineterminator="\n")
            writer.writeheader()
            for r in rows:
                writer.writerow({k: ("" if r[k] is None else r[k]) for k in fields})
    else:
        with atomic_open(out, "w") as f:
            for r in rows:
                f.write(json.dumps({k: r[k] for k in fields}) + "\n")
    return out
