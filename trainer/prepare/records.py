"""Session records of a set of whole users: the per-user half of `prepare`, for both engines.

`session_records` takes every event of some users (a local hash bucket, or a Spark group)
and runs the in-memory code on them: `trainer.sessions.sessionize` (sessions, labels,
prefixes, user history), `trainer.dataset.raw_sessions` (the encoder's raw features of each
prefix: its last ``window`` events for `prepare`, every event for `score --engine`) and
`trainer.dataset.aggregate_features` (the baseline's counts). Everything there depends on
one user's events only, so a partition of users gives the records the whole log would give;
what needs the whole log (the time split, the normalisation) is `trainer.prepare.finish`'s job.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from edge_runtime.features import ALL_FEATURES, FeatureEncoder, default_features
from trainer.dataset import aggregate_features, raw_sessions, window_digests
from trainer.quarantine import BadRows
from trainer.readers import EventLog, Ids
from trainer.sessions import key_digests, sessionize

RECORD_SCHEMA = pa.schema([
    ("key", pa.string()), ("key_digest", pa.string()), ("start", pa.float64()),
    ("label", pa.int8()), ("prefix_len", pa.int64()),
    ("raw", pa.list_(pa.float64())),        # the prefix's raw feature rows, flattened
    ("baseline", pa.list_(pa.float64())),   # trainer.dataset.aggregate_features, in order
    # The ids of the events in ``raw`` as their 8-byte digests (edge_runtime.features.id_digest,
    # read as big-endian numbers; category 0: none): the target tables are learned from these
    # in `finish` once the split is known. Scratch only: no shard or manifest holds them.
    ("item_digest", pa.list_(pa.uint64())),
    ("category_digest", pa.list_(pa.uint64())),
])
COUNT_KEYS = ("events", "sessions", "sessions_with_purchase", "sessions_excluded_empty_prefix",
              "sessions_scorable")


@dataclass(frozen=True)
class RecordSettings:
    """What `session_records` needs besides the events; small and picklable (it travels to
    Spark executors).

    Attributes:
        gap_minutes: the inactivity gap of logs without session ids.
        window: each prefix's last ``window`` events are kept (`prepare`: the training
            window, ``max_len``); None keeps every event (scoring: a whole session is
            scored as its live session is, however long).
        features: the encoder's features (chosen on the whole log: price, category, context).
        utc_offset_hours: the shop's clock.
        has_user_ids: the log's user ids name people (user-history context).
        log_sessions: the log has its own session ids.
        shared_sessions: session ids holding events of several users, found on the whole log.
        max_dt_seconds: the encoder's cap on the time between events (an artifact's spec).
    """

    gap_minutes: float
    window: int | None
    features: tuple[str, ...]
    utc_offset_hours: float
    has_user_ids: bool
    log_sessions: bool
    shared_sessions: frozenset[str] = frozenset()
    max_dt_seconds: float = 86400.0

    @property
    def has_category(self) -> bool:
        """Whether the features read categories (repeats, target statistics): the log has them."""
        return "repeat_category" in self.features or "category_rate" in self.features

    @classmethod
    def for_log(cls, tally, gap_minutes: float, window: int | None, use_context: bool,
                utc_offset_hours: float, shared: frozenset[str]) -> RecordSettings:
        """The settings of a log to prepare, decided on the whole log (``tally``: what reading
        it found, trainer.prepare.local.ReadTally): price, category and context features only
        where the log has them, as the in-memory path chooses."""
        features = default_features(tally.has_price, tally.has_category, use_context and tally.has_user_ids)
        return cls(gap_minutes=gap_minutes, window=window, features=features,
                   utc_offset_hours=utc_offset_hours, has_user_ids=tally.has_user_ids,
                   log_sessions=tally.log_sessions, shared_sessions=shared)


def partition_column(has_user_ids: bool, log_sessions: bool) -> str:
    """The column whose equal values must meet in one `session_records` call: the user where
    ids name people or sessions are cut by time (user history, gap sessions), else the log's
    session (DIGINETICA: one session's views and purchases can carry different user ids)."""
    return "user" if has_user_ids or not log_sessions else "session"


def event_log(events: pa.Table, settings: RecordSettings, source: str = "") -> EventLog:
    """EVENT_SCHEMA rows (any order) as an EventLog in file order."""
    events = events.sort_by("order")

    def ids(name: str) -> Ids:
        return Ids.encode(events.column(name))

    return EventLog(
        source=source, format="", user=ids("user"),
        session=ids("session") if settings.log_sessions else None,
        ts=events.column("ts").to_numpy(), event=events.column("event").to_numpy().astype(np.int8),
        item=ids("item"), category=ids("category") if settings.has_category else None,
        price=events.column("price").to_numpy(), line=events.column("line").to_numpy(),
        rows_read=events.num_rows, bad=BadRows(source), utc_offset_hours=settings.utc_offset_hours,
        has_user_ids=settings.has_user_ids)


def session_records(events: pa.Table, settings: RecordSettings) -> tuple[pa.Table, dict]:
    """One record per scorable session of the users whose events these are.

    Args:
        events: EVENT_SCHEMA rows: ALL events of the values of `partition_column` they hold
            (a user split between two calls would get two histories), in any order.
        settings: see RecordSettings.

    Returns:
        (RECORD_SCHEMA table, counts by COUNT_KEYS plus ``min_ts`` / ``max_ts``).
    """
    counts = dict.fromkeys(COUNT_KEYS, 0)
    if events.num_rows == 0:
        return RECORD_SCHEMA.empty_table(), counts
    log = event_log(events, settings)
    sessions = sessionize(log, settings.gap_minutes, shared_sessions=set(settings.shared_sessions))
    summary = sessions.summary()
    counts.update(events=len(log), **{k: summary[k] for k in COUNT_KEYS if k in summary},
                  min_ts=float(log.ts.min()), max_ts=float(log.ts.max()))
    index = np.flatnonzero(sessions.scorable)
    # Only the raw features are computed here: the encoder's max_len and normalisation are
    # unused, and the target features are added from the digests once the tables exist.
    encoder = FeatureEncoder([f for f in settings.features if f in ALL_FEATURES],
                             utc_offset_hours=settings.utc_offset_hours,
                             max_dt_seconds=settings.max_dt_seconds)
    raw = raw_sessions(sessions, index, encoder, window=settings.window)
    items, categories, kept = window_digests(sessions, index, window=settings.window)
    if categories is None:
        categories = np.zeros(len(items), np.uint64)
    baseline, _ = aggregate_features(sessions, index)
    keys = sessions.key[index].astype(str)
    table = pa.table([
        pa.array(keys, pa.string()), pa.array(key_digests(keys), pa.string()),
        pa.array(sessions.start[index], pa.float64()), pa.array(sessions.label[index], pa.int8()),
        pa.array(sessions.prefix_len[index], pa.int64()),
        _lists([r.reshape(-1) for r in raw]),
        _lists(list(baseline) if len(index) else []),
        _flat_lists(items, kept), _flat_lists(categories, kept),
    ], schema=RECORD_SCHEMA)
    return table, counts


def _lists(rows: list[np.ndarray]) -> pa.ListArray:
    """Rows of float64 values as one Arrow list array (no copy per row through Python)."""
    lengths = np.fromiter((len(r) for r in rows), np.int64, len(rows))
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int32)
    values = np.concatenate(rows) if rows else np.zeros(0)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, pa.float64()))


def _flat_lists(digests: np.ndarray, lengths: np.ndarray) -> pa.ListArray:
    """Digests stacked session after session (``lengths`` each) as one Arrow list array of
    uint64: a big-endian DIGEST_DTYPE digest becomes its number."""
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(digests.astype(np.uint64), pa.uint64()))


def _flat(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return column.flatten().to_numpy(zero_copy_only=False)


def record_rows(records: pa.Table | pa.RecordBatch, encoder: FeatureEncoder,
                by_fold: list[FeatureEncoder] | None = None,
                fold: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The raw feature rows of session records, stacked (N, F), with the target features
    looked up from the records' digests, and each session's number of rows.

    Args:
        records: RECORD_SCHEMA rows.
        encoder: its tables serve every session, except:
        by_fold, fold: session k with ``fold[k] >= 0`` reads ``by_fold[fold[k]]``'s tables
            (`prepare`'s training sessions: the tables learned without their fold).
    """
    n_base = sum(f in ALL_FEATURES for f in encoder.features)
    raw = records.column("raw")
    if isinstance(raw, pa.ChunkedArray):
        raw = raw.combine_chunks() if raw.num_chunks else pa.array([], pa.list_(pa.float64()))
    lengths = raw.value_lengths().to_numpy(zero_copy_only=False).astype(np.int64) // n_base
    base = raw.flatten().to_numpy(zero_copy_only=False).reshape(-1, n_base)
    if not encoder.tables:
        return base, lengths
    item, category = _flat(records.column("item_digest")), _flat(records.column("category_digest"))
    if by_fold is None or fold is None:
        return encoder.add_targets(base, item, category), lengths
    row_fold = np.repeat(fold, lengths)
    out = np.empty((len(base), len(encoder.features)), np.float64)
    for f in np.unique(row_fold):
        rows = np.flatnonzero(row_fold == f)
        chosen = encoder if f < 0 else by_fold[f]
        out[rows] = chosen.add_targets(base[rows], item[rows], category[rows])
    return out, lengths

