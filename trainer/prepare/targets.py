"""The target tables of a preparation: learned on the training split only, out of fold.

`prepare` learns, for each category (and item) the training sessions touched, how many of
those sessions purchased (edge_runtime.target_stats.TargetTable). Three rules keep the
numbers honest:

- Only training sessions count. Validation and test sessions are looked up in the table
  learned without them, as a device would look them up (a test proves that changing a test
  label leaves the tables unchanged).
- Out of fold inside training: the training sessions fall into FOLDS folds by their key
  digest, and a training session's events read rates learned on the other folds, so no
  training example ever sees its own label through a rate. The entries and the popularity
  hold no label: a training session reads those of all the other training sessions (it
  looks up only ids it touched, each counted once for it), as a device's session, never
  in the counts, reads those of all training sessions.
- A field is used only where the log is dense enough: the share of validation events whose
  id has an entry must reach MIN_COVERAGE (measured, not assumed: on the Taobao sample,
  categories cover most validation events and items almost none).

Counts are gathered batch by batch (each batch's distinct session-id pairs aggregated
before they are kept), so memory grows with the distinct ids, not with the events.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from edge_runtime.target_stats import DIGEST_DTYPE, KEY_BYTES, TABLE_FIELDS, TargetTable

FOLDS = 5
# The share of validation events (with an id) a field's table must cover to be used.
MIN_COVERAGE = 0.25
_KEY_DOMAIN = b"ubp-edge target tables 1"


def folds_of(key_digests: np.ndarray) -> np.ndarray:
    """The fold (0..FOLDS-1) of each session: its key digest's first 8 hex digits, as a
    number, modulo FOLDS (computed on the characters' code points, without a loop)."""
    if not len(key_digests):
        return np.zeros(0, np.int64)
    chars = np.asarray(key_digests).astype("U16").view(np.uint32).reshape(-1, 16)[:, :8].astype(np.int64)
    digits = np.where(chars >= ord("a"), chars - (ord("a") - 10), chars - ord("0"))
    return (digits @ (16 ** np.arange(7, -1, -1, dtype=np.int64))) % FOLDS


@dataclass
class _FieldCounts:
    """One field's counts: per (digest, fold), sessions and purchases; validation events."""

    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]
    validation: list[tuple[np.ndarray, np.ndarray]]

    def totals(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(distinct digests, sessions (n, FOLDS), purchases (n, FOLDS))."""
        if not self.parts:
            return np.zeros(0, np.uint64), np.zeros((0, FOLDS)), np.zeros((0, FOLDS))
        digest = np.concatenate([p[0] for p in self.parts])
        fold = np.concatenate([p[1] for p in self.parts])
        distinct, inverse = np.unique(digest, return_inverse=True)
        sessions = np.zeros((len(distinct), FOLDS))
        purchases = np.zeros((len(distinct), FOLDS))
        np.add.at(sessions, (inverse, fold), np.concatenate([p[2] for p in self.parts]))
        np.add.at(purchases, (inverse, fold), np.concatenate([p[3] for p in self.parts]))
        return distinct, sessions, purchases

    def validation_events(self) -> tuple[np.ndarray, np.ndarray]:
        """(distinct digests of validation events, events per digest)."""
        if not self.validation:
            return np.zeros(0, np.uint64), np.zeros(0, np.int64)
        digest = np.concatenate([v[0] for v in self.validation])
        distinct, inverse = np.unique(digest, return_inverse=True)
        return distinct, np.bincount(inverse, weights=np.concatenate([v[1] for v in self.validation]))


def _session_ids(column: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Each event's session (position in the batch) and digest, of a list column."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    lengths = column.value_lengths().to_numpy(zero_copy_only=False).astype(np.int64)
    digests = column.flatten().to_numpy(zero_copy_only=False).astype(np.uint64)
    return np.repeat(np.arange(len(lengths)), lengths), digests


@dataclass(frozen=True)
class TargetTables:
    """What `prepare` learned: the tables shipped (learned on all training sessions) and,
    per fold, the tables its training sessions read.

    Attributes:
        shipped: the tables of the fields used, in TABLE_FIELDS order.
        by_fold: by_fold[f] the same fields' tables without fold f's sessions.
        coverage: each field's share of validation events with an entry (used or not).
        entries: each field's entries (used or not).
    """

    shipped: tuple[TargetTable, ...]
    by_fold: tuple[tuple[TargetTable, ...], ...]
    coverage: dict[str, float]
    entries: dict[str, int]

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(t.field for t in self.shipped)

    def summary(self) -> dict:
        """The manifest's ``target_tables``: what was learned and what was used."""
        return {field: {"entries": self.entries[field], "validation_coverage": round(self.coverage[field], 4),
                        "used": field in self.fields}
                for field in self.coverage}


def learn_tables(batches: Iterator[pa.RecordBatch], n_train: int, n_validation: int,
                 fields: tuple[str, ...] = TABLE_FIELDS) -> TargetTables:
    """Count the training records (the first ``n_train`` in canonical order) and the
    validation ones (the next ``n_validation``), and build the tables.

    Args:
        batches: the sorted session records, with key_digest, label and the digest columns.
        n_train, n_validation: the split's sizes.
        fields: the id fields the log has.
    """
    counts = {field: _FieldCounts([], []) for field in fields}
    rank, positives = 0, 0
    for batch in batches:
        count = batch.num_rows
        train = min(count, max(0, n_train - rank))
        validation = min(count - train, max(0, n_train + n_validation - rank - train))
        if train:
            part = batch.slice(0, train)
            label = part.column("label").to_numpy(zero_copy_only=False).astype(np.int64)
            positives += int(label.sum())
            fold = folds_of(part.column("key_digest").to_numpy(zero_copy_only=False))
            for field in fields:
                session, digest = _session_ids(part.column(f"{field}_digest"))
                keep = digest != 0
                session, digest = session[keep], digest[keep]
                # Each session counts an id once, however often it touched it.
                s, d = _distinct_pairs(session, digest)
                f, d2 = _distinct_pairs(fold[s], d, counted=True)
                order, starts = f
                counts[field].parts.append((d2, fold[s][order][starts],
                                            np.diff(np.r_[starts, len(order)]).astype(float),
                                            np.add.reduceat(label[s][order].astype(float), starts)
                                            if len(order) else np.zeros(0)))
        if validation:
            part = batch.slice(train, validation)
            for field in fields:
                _, digest = _session_ids(part.column(f"{field}_digest"))
                digest = digest[digest != 0]
                distinct, per = np.unique(digest, return_counts=True)
                counts[field].validation.append((distinct, per))
        rank += count
    return _tables(counts, n_train, positives)


def _distinct_pairs(first: np.ndarray, second: np.ndarray, counted: bool = False):
    """The distinct (first, second) pairs, sorted by (second, first): their two columns; with
    ``counted``, ((the sort order, where each distinct pair starts in it), second's column)."""
    order = np.lexsort((first, second))
    a, b = first[order], second[order]
    new = np.ones(len(order), bool)
    new[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
    starts = np.flatnonzero(new)
    if counted:
        return (order, starts), b[starts]
    return a[starts], b[starts]


def _tables(counts: dict[str, _FieldCounts], n_train: int, positives: int) -> TargetTables:
    totals = {field: c.totals() for field, c in counts.items()}
    key = _key(totals)
    base = positives / n_train if n_train else 0.5
    shipped, by_fold, coverage, entries = [], [[] for _ in range(FOLDS)], {}, {}
    for field, (digests, sessions, purchases) in totals.items():
        table = TargetTable.build(field, key, digests, sessions.sum(1), purchases.sum(1), base)
        entries[field] = len(table)
        seen, events = counts[field].validation_events()
        covered = table.contains(seen)
        coverage[field] = float(events[covered].sum() / events.sum()) if events.sum() else 0.0
        if coverage[field] < MIN_COVERAGE:
            continue
        shipped.append(table)
        # A training session looks up only ids it touched itself, which count it once: the
        # entries and popularity it reads leave it out (total - 1), as a device's session is
        # never in the counts it reads.
        others = sessions.sum(1) - 1
        for f in range(FOLDS):
            rest = np.delete(sessions, f, axis=1).sum(1), np.delete(purchases, f, axis=1).sum(1)
            by_fold[f].append(TargetTable.build(field, key, digests, others, purchases.sum(1),
                                                base, rate_counts=rest))
    return TargetTables(tuple(shipped), tuple(tuple(t) for t in by_fold), coverage, entries)


def _key(totals: dict) -> bytes:
    """The hash key: a digest of what was learned, so two preparations of one log (either
    engine) get one key and two logs get two; nothing an attacker can precompute for."""
    h = hashlib.sha256(_KEY_DOMAIN)
    for field, (digests, sessions, purchases) in sorted(totals.items()):
        h.update(field.encode())
        h.update(np.asarray(digests, np.uint64).astype(DIGEST_DTYPE).tobytes())
        h.update(np.asarray(sessions.sum(1), "<f8").tobytes())
        h.update(np.asarray(purchases.sum(1), "<f8").tobytes())
    return h.digest()[:KEY_BYTES]
