"""FeatureSpec and FeatureEncoder: the only code that turns events into numbers.

Training encodes whole sessions with `FeatureEncoder.encode`; the device encodes one
event at a time with `FeatureEncoder.start` / `step`. Both paths compute the same
primitive quantities (time since the previous event, position, repeats, ...) with the same
arithmetic (`_transform` on arrays, `step_features` on one event's scalars), so there is
no train/serve skew to test away: the two give the same bits. The spec, with the
normalisation learned on training sessions, travels inside every artifact.

A live session's memory does not grow with its ids: it remembers each distinct item (and
category) as an 8-byte digest, and at most MAX_REMEMBERED_IDS of each; the batch path
applies the same cap, so the two paths stay equal past it. One session keeps its state in
an EncoderState; edge_runtime.live.SessionStore keeps many in columns, their digests in
RememberedIds, and encodes with the same `step_features`.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

try:  # hashlib's own blake2b, without hashlib, which would also load OpenSSL (about 3.4 MB)
    from _blake2 import blake2b
except ImportError:  # a Python built without the module
    from hashlib import blake2b

from edge_runtime.errors import ArtifactError, ConfigError
from edge_runtime.events import CART, EVENT_TYPES, Event, canonical_event
from edge_runtime.target_stats import DIGEST_DTYPE, TABLE_FIELDS, TargetTable

# The spec's format. Version 2 adds the target tables; a spec without them is still written
# as version 1, so that every ubp-edge that reads version 1 reads it.
SPEC_VERSION = 1
TABLES_SPEC_VERSION = 2
READABLE_SPEC_VERSIONS = (SPEC_VERSION, TABLES_SPEC_VERSION)

# Per-event features, in the order they are laid out before selection.
SEQUENCE_FEATURES: tuple[str, ...] = (
    *(f"is_{name}" for name in EVENT_TYPES),
    "log_dt_prev",       # log1p(seconds since the previous event), capped at max_dt_seconds
    "tod_sin", "tod_cos",  # time of day on the shop's clock, as a point on a circle
    "log_position",      # log1p(index of the event in the session)
    "log_elapsed",       # log1p(seconds since the session's first event)
    "repeat_item",       # this item was seen earlier in the session
    "repeat_category",   # this category was seen earlier in the session
    "log_carts_so_far",  # log1p(carts in the session up to and including this event)
    "log_price",         # log1p(price); 0 where the log has no price for the event
)
# User-history context: what the same user did before this session started.
CONTEXT_FIELDS: tuple[str, ...] = ("prior_sessions", "prior_purchases", "open_cart_items")
CONTEXT_FEATURES: tuple[str, ...] = tuple(f"ctx_log_{name}" for name in CONTEXT_FIELDS)
ALL_FEATURES: tuple[str, ...] = SEQUENCE_FEATURES + CONTEXT_FEATURES
# Learned on the training split (edge_runtime.target_stats), looked up per event by the id of
# its category or item: the logit of the smoothed purchase rate, log1p(training sessions).
# Only a spec that carries the field's TargetTable can select them; `prepare` adds them.
TARGET_FEATURES: tuple[str, ...] = tuple(f"{field}_{stat}" for field in TABLE_FIELDS
                                         for stat in ("rate", "log_sessions"))
# Every feature a spec may select, in the order the encoder lays them out.
FEATURE_LAYOUT: tuple[str, ...] = ALL_FEATURES + TARGET_FEATURES
NO_TARGETS = (0.0,) * len(TARGET_FEATURES)


def check_targets_last(features: Sequence[str]) -> None:
    """ConfigError unless the target features come after every other feature: records made
    before the tables exist hold the others, and the tables' columns are appended to them
    (`FeatureEncoder.add_targets`)."""
    seen_target = False
    for f in features:
        if f in TARGET_FEATURES:
            seen_target = True
        elif seen_target:
            raise ConfigError(f"target features must come after every other feature, got {list(features)}")


def target_field(feature: str) -> str | None:
    """The id field whose table a target feature reads ("category", "item"), else None."""
    return feature.split("_", 1)[0] if feature in TARGET_FEATURES else None


def default_features(has_price: bool, has_category: bool, use_context: bool) -> tuple[str, ...]:
    """The features a log supports: price, category and context only where it has them."""
    drop = set()
    if not has_price:
        drop.add("log_price")
    if not has_category:
        drop.add("repeat_category")
    if not use_context:
        drop.update(CONTEXT_FEATURES)
    return tuple(f for f in ALL_FEATURES if f not in drop)


@dataclass(frozen=True)
class FeatureSpec:
    """What the model's input means; written into every artifact.

    Attributes:
        features: the selected feature names, in input order.
        mean, scale: per-feature normalisation learned on training sessions.
        utc_offset_hours: the shop's clock for time-of-day features.
        max_len: the training window: the model was trained on each prefix's last ``max_len``
            events. Scoring reads the whole session, however long, as live scoring does.
        max_dt_seconds: gaps longer than this count as this long.
        tables: the TargetTable of each field whose TARGET_FEATURES are selected.
        version: the spec format version, set from the content (TABLES_SPEC_VERSION with
            tables, else SPEC_VERSION); a spec of a version not in READABLE_SPEC_VERSIONS is
            refused.
    """

    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    utc_offset_hours: float = 0.0
    max_len: int = 50
    max_dt_seconds: float = 86400.0
    tables: tuple[TargetTable, ...] = ()
    version: int = SPEC_VERSION

    def __post_init__(self) -> None:
        unknown = [f for f in self.features if f not in FEATURE_LAYOUT]
        if unknown:
            raise ConfigError(f"unknown features {unknown}; allowed {list(FEATURE_LAYOUT)}")
        # The format follows the content: tables need version 2, a spec without them stays 1.
        object.__setattr__(self, "version", TABLES_SPEC_VERSION if self.tables else SPEC_VERSION)
        check_targets_last(self.features)
        table_fields = [t.field for t in self.tables]
        needed = sorted({target_field(f) for f in self.features} - {None})
        if len(set(table_fields)) != len(table_fields) or sorted(table_fields) != needed:
            raise ConfigError(f"target tables for {table_fields}, but the features need tables "
                              f"for {needed}")
        if len(set(self.features)) != len(self.features) or not self.features:
            raise ConfigError(f"features must be distinct and non-empty, got {list(self.features)}")
        if not (len(self.mean) == len(self.scale) == len(self.features)):
            raise ConfigError(f"{len(self.features)} features but {len(self.mean)} means and "
                              f"{len(self.scale)} scales")
        if not all(math.isfinite(m) for m in self.mean) or not all(s > 0 and math.isfinite(s)
                                                                   for s in self.scale):
            raise ConfigError("normalisation must be finite with positive scales")
        if self.max_len < 1 or not self.max_dt_seconds > 0:
            raise ConfigError(f"max_len={self.max_len} and max_dt_seconds={self.max_dt_seconds} "
                              f"must be positive")

    @property
    def n_features(self) -> int:
        return len(self.features)

    @property
    def uses_context(self) -> bool:
        return any(f in CONTEXT_FEATURES for f in self.features)

    def to_dict(self) -> dict:
        d = {"version": self.version, "features": list(self.features),
             "mean": list(self.mean), "scale": list(self.scale),
             "utc_offset_hours": self.utc_offset_hours, "max_len": self.max_len,
             "max_dt_seconds": self.max_dt_seconds}
        if self.tables:
            d["target_tables"] = [t.to_dict() for t in self.tables]
        return d

    def table(self, field: str) -> TargetTable | None:
        """The target table of ``field``, None when the spec has none."""
        return next((t for t in self.tables if t.field == field), None)

    @classmethod
    def from_dict(cls, d: Mapping) -> FeatureSpec:
        """Rebuild a spec; ArtifactError when it is of another version or malformed."""
        if not isinstance(d, Mapping):
            raise ArtifactError(f"feature spec is {type(d).__name__}, expected an object")
        version = d.get("version")
        if type(version) is not int or version not in READABLE_SPEC_VERSIONS:
            raise ArtifactError(f"feature spec version {d.get('version')!r} is not supported; "
                                f"this ubp-edge reads versions {list(READABLE_SPEC_VERSIONS)}")
        tables = d.get("target_tables", []) if d["version"] == TABLES_SPEC_VERSION else []
        if not isinstance(tables, list):
            raise ArtifactError(f"feature spec target_tables is {type(tables).__name__}, expected a list")
        try:
            return cls(features=tuple(d["features"]), mean=tuple(map(float, d["mean"])),
                       scale=tuple(map(float, d["scale"])),
                       utc_offset_hours=float(d["utc_offset_hours"]), max_len=int(d["max_len"]),
                       max_dt_seconds=float(d["max_dt_seconds"]),
                       tables=tuple(TargetTable.from_dict(t) for t in tables), version=SPEC_VERSION)
        except (KeyError, TypeError, ValueError, ConfigError) as e:
            raise ArtifactError(f"feature spec is malformed: {e}") from None


# The context of a session without one, and its logs: shared by every such session.
NO_CONTEXT = np.zeros(len(CONTEXT_FIELDS), np.float64)
NO_CONTEXT.setflags(write=False)
NO_CONTEXT_LOGS = (0.0,) * len(CONTEXT_FIELDS)

# The distinct item ids, and separately the distinct category ids, a session remembers for
# its repeat features: the first ones it sees, up to this many. An id first seen after that
# reads as new each time it comes back, on the batch path as on the one-event path. Real
# sessions stay far below it (at most 183 distinct items in the four data sets' samples,
# 117 on Taobao, whose reference models are therefore unaffected); at the cap a session's
# digests take 2 x 8 KB.
MAX_REMEMBERED_IDS = 1024
DIGEST_BYTES = 8


def id_digest(text: str) -> bytes:
    """The 8-byte digest a live session remembers an id by: blake2b of its UTF-8 text.

    Seedless, so equal in every process (Python's ``hash`` of a str is not); two distinct
    ids share a digest with probability about 2**-64 per pair.
    """
    hasher = _BLAKE2B.copy()  # cheaper than a new hasher with its parameters
    hasher.update(text.encode("utf-8", "surrogatepass"))
    return hasher.digest()


_BLAKE2B = blake2b(digest_size=DIGEST_BYTES)  # never updated: only copied


def id_digests(names: Sequence) -> np.ndarray:
    """`id_digest` of each id (as text: 12 and "12" are one id) as DIGEST_DTYPE numbers,
    the form the batch path looks target tables up by."""
    if not len(names):
        return np.zeros(0, DIGEST_DTYPE)
    return np.frombuffer(b"".join(id_digest(n if type(n) is str else str(n)) for n in names), DIGEST_DTYPE)


def remembered(seen: bytes | bytearray, digest: bytes, start: int = 0, end: int | None = None) -> bool:
    """Whether ``digest`` is one of the digests packed in ``seen[start:end]`` (each at a
    multiple of DIGEST_BYTES from ``start``): the test of the repeat features.

    Two ids are the same id when their digests are equal, so two distinct ids sharing a digest
    (about 2**-64 a pair) read as a repeat; a match straddling two packed digests is not one.
    """
    end = len(seen) if end is None else end
    at = seen.find(digest, start, end)
    while at > start and (at - start) % DIGEST_BYTES:
        at = seen.find(digest, at + 1, end)
    return at >= 0


class RememberedIds:
    """The remembered id digests (items, or categories) of many live sessions, by row.

    What `EncoderState.items` is for one session, for all the rows of a SessionStore at once,
    without a Python object per session: a row's first ``inline`` digests are packed in one
    shared bytearray (``inline`` slots a row, reused when the row is), and a row that
    remembers more moves all of its digests to a bytearray of its own. The rules are
    `remembered` and MAX_REMEMBERED_IDS, as for EncoderState, so a row gives the repeat
    features a LiveSession gives.

    Args:
        inline: digests a row holds in the shared array (0: every row keeps its own).
    """

    def __init__(self, inline: int = 4) -> None:
        self._slot = inline * DIGEST_BYTES  # bytes of a row's inline slots
        self._packed = bytearray()  # row r's inline digests: [r * _slot, r * _slot + 8 * count)
        self._count = array("H")  # digests remembered by each row (<= MAX_REMEMBERED_IDS)
        self._spilled: dict[int, bytearray] = {}  # rows past their inline slots: all their digests

    def add_row(self) -> None:
        """Make room for one more row (row ``len(self)``), remembering nothing."""
        self._count.append(0)
        self._packed.extend(bytes(self._slot))

    def __len__(self) -> int:
        return len(self._count)

    def clear(self, row: int) -> None:
        """Forget every digest of ``row`` (a session that ended; the row is reused)."""
        self._count[row] = 0
        if self._spilled:
            self._spilled.pop(row, None)

    def count(self, row: int) -> int:
        """How many digests ``row`` remembers."""
        return self._count[row]

    def seen(self, row: int, digest: bytes) -> bool:
        """Whether ``row`` remembers ``digest`` (`remembered`)."""
        count = self._count[row]
        if count * DIGEST_BYTES > self._slot:
            return remembered(self._spilled[row], digest)
        start, packed = row * self._slot, self._packed
        end = start + count * DIGEST_BYTES
        at = packed.find(digest, start, end)  # the common answers in one search
        return at >= 0 and (not (at - start) % DIGEST_BYTES or remembered(packed, digest, start, end))

    def remember(self, row: int, digest: bytes) -> None:
        """Remember ``digest`` in ``row``, which does not yet (`seen` is False), unless the row
        already remembers MAX_REMEMBERED_IDS digests."""
        count = self._count[row]
        at = count * DIGEST_BYTES
        if at + DIGEST_BYTES <= self._slot:
            start = row * self._slot + at
            self._packed[start:start + DIGEST_BYTES] = digest
        elif count >= MAX_REMEMBERED_IDS:
            return
        elif at == self._slot:  # the inline slots are full: the row gets a bytearray of its own
            start = row * self._slot
            self._spilled[row] = self._packed[start:start + at] + digest
        else:
            self._spilled[row] += digest
        self._count[row] = count + 1

    def packed(self, row: int) -> bytearray:
        """A copy of ``row``'s digests packed in the order they were first seen, as
        EncoderState.items holds them."""
        count = self._count[row]
        if count * DIGEST_BYTES > self._slot:
            return bytearray(self._spilled[row])
        start = row * self._slot
        return self._packed[start:start + count * DIGEST_BYTES]


@dataclass(slots=True)
class EncoderState:
    """What the one-event path remembers about a live session (slots: a process may hold
    thousands of these; a SessionStore keeps the same in columns and RememberedIds).

    ``items`` and ``categories`` pack the 8-byte digests (`id_digest`) of the distinct ids
    seen so far, at most MAX_REMEMBERED_IDS each, and only for the repeat features the
    spec has: a state's size is bounded whatever the ids and the session's length.
    """

    context: np.ndarray
    context_logs: tuple[float, ...]  # log1p of the context, clipped at 0 (`start`)
    n: int = 0
    first_ts: float = 0.0
    last_ts: float = 0.0
    carts: int = 0
    items: bytearray = field(default_factory=bytearray)
    categories: bytearray = field(default_factory=bytearray)


class FeatureEncoder:
    """Encode sessions (batch) or single events (live) into normalised float32 features.

    Args:
        features: feature names to produce, in order (default: all).
        utc_offset_hours: the shop's clock for time-of-day features.
        max_len: kept in the spec: the training window (scoring reads whole sessions).
        max_dt_seconds: cap on the time since the previous event.

    Example:
        >>> enc = FeatureEncoder(default_features(False, True, False)).fit(sessions)
        >>> x = enc.encode(ts, event, item, category)          # (L, F) float32
        >>> state = enc.start(); v = enc.step(state, {"ts": 1.7e9, "event": "view", "item": "a"})
    """

    def __init__(self, features: Sequence[str] = ALL_FEATURES, utc_offset_hours: float = 0.0,
                 max_len: int = 50, max_dt_seconds: float = 86400.0,
                 tables: Sequence[TargetTable] = ()) -> None:
        self.features = tuple(features)
        self.utc_offset_hours = utc_offset_hours
        self.max_len = max_len
        self.max_dt_seconds = max_dt_seconds
        self.tables = tuple(tables)
        unknown = [f for f in self.features if f not in FEATURE_LAYOUT]
        if unknown:
            raise ConfigError(f"unknown features {unknown}; allowed {list(FEATURE_LAYOUT)}")
        check_targets_last(self.features)
        missing = sorted({target_field(f) for f in self.features} - {None} - {t.field for t in self.tables})
        if missing:
            raise ConfigError(f"features {list(self.features)} need the target tables of {missing}")
        self._columns = np.array([FEATURE_LAYOUT.index(f) for f in self.features], np.int64)
        # Ids are remembered only for the repeat features the spec selects.
        self._track_items = "repeat_item" in self.features
        self._track_categories = "repeat_category" in self.features
        self._item_table = next((t for t in self.tables if t.field == "item"), None)
        self._category_table = next((t for t in self.tables if t.field == "category"), None)
        self.mean_: np.ndarray | None = None
        self.scale_: np.ndarray | None = None
        self._step_norm: tuple | None = None  # `step_features`' normalisation, by _fit_step_norm

    @property
    def tracks_items(self) -> bool:
        """Whether the one-event path remembers item ids (the spec has ``repeat_item``)."""
        return self._track_items

    @property
    def tracks_categories(self) -> bool:
        """Whether it remembers category ids (the spec has ``repeat_category``)."""
        return self._track_categories

    @property
    def table_fields(self) -> tuple[str, ...]:
        """The id fields the spec has target tables for ("category", "item"): whose digests
        `raw_batch` needs (``item_digest`` / ``category_digest``)."""
        return tuple(t.field for t in self.tables)

    # ------------------------------------------------------------------ spec
    @classmethod
    def from_spec(cls, spec: FeatureSpec) -> FeatureEncoder:
        enc = cls(spec.features, spec.utc_offset_hours, spec.max_len, spec.max_dt_seconds, spec.tables)
        enc.mean_ = np.asarray(spec.mean, np.float64)
        enc.scale_ = np.asarray(spec.scale, np.float64)
        return enc

    def spec(self) -> FeatureSpec:
        """The fitted spec; ConfigError before `fit`."""
        if self.mean_ is None or self.scale_ is None:
            raise ConfigError("FeatureEncoder is not fitted: call fit() first")
        return FeatureSpec(self.features, tuple(map(float, self.mean_)),
                           tuple(map(float, self.scale_)), self.utc_offset_hours, self.max_len,
                           self.max_dt_seconds, self.tables)

    def fit(self, raw_rows: np.ndarray) -> FeatureEncoder:
        """Learn the normalisation from raw (unnormalised) rows of training sessions.

        Args:
            raw_rows: (N, F) as returned by `raw` for the training sessions, stacked.

        Returns:
            self, with ``mean_`` and ``scale_`` set.
        """
        raw_rows = np.asarray(raw_rows, np.float64)
        if raw_rows.ndim != 2 or raw_rows.shape[1] != len(self.features) or len(raw_rows) == 0:
            raise ConfigError(f"fit needs (N>0, {len(self.features)}) raw rows, got {raw_rows.shape}")
        # Exact sums: the same bits as `prepare`, which sees the rows in another order.
        # Imported here: a process that only scores (a device) never fits, and the exact sums
        # need fractions (and so decimal), a few hundred KB of its memory.
        from edge_runtime.moments import ExactMoments

        moments = ExactMoments(len(self.features))
        moments.add(raw_rows)
        return self.set_normalisation(*moments.mean_std())

    def set_normalisation(self, mean: np.ndarray, std: np.ndarray) -> FeatureEncoder:
        """Set the normalisation from per-feature mean and standard deviation computed
        elsewhere (`prepare` sums training rows block by block: edge_runtime.moments).

        Returns:
            self, with ``mean_`` and ``scale_`` set.
        """
        mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
        if mean.shape != (len(self.features),) or std.shape != (len(self.features),):
            raise ConfigError(f"normalisation needs {len(self.features)} means and deviations, got "
                              f"{mean.shape} and {std.shape}")
        self.mean_ = mean
        # A constant feature (e.g. is_purchase, never in a prefix) keeps scale 1, not 0.
        self.scale_ = np.where(std > 1e-12, std, 1.0)
        return self

    def normalise(self, raw_rows: np.ndarray) -> np.ndarray:
        """Raw rows (from `raw_batch`) -> the model's float32 input, with the fitted spec."""
        return self._normalise(raw_rows)

    # ------------------------------------------------------------------ shared core
    def _transform(self, event: np.ndarray, dt: np.ndarray, ts: np.ndarray, position: np.ndarray,
                   elapsed: np.ndarray, repeat_item: np.ndarray, repeat_category: np.ndarray,
                   carts: np.ndarray, price: np.ndarray, context: np.ndarray,
                   targets: np.ndarray | None = None) -> np.ndarray:
        """Primitive quantities (arrays of length L) -> raw feature rows (L, F), float64.
        ``targets``: (L, len(TARGET_FEATURES)) looked-up values, None for none."""
        n = len(event)
        out = np.empty((n, len(FEATURE_LAYOUT)), np.float64)
        for code in range(len(EVENT_TYPES)):
            out[:, code] = event == code
        k = len(EVENT_TYPES)
        out[:, k] = np.log1p(np.minimum(np.maximum(dt, 0.0), self.max_dt_seconds))
        angle = ((ts + self.utc_offset_hours * 3600.0) % 86400.0) * (2.0 * math.pi / 86400.0)
        out[:, k + 1] = np.sin(angle)
        out[:, k + 2] = np.cos(angle)
        out[:, k + 3] = np.log1p(position)
        out[:, k + 4] = np.log1p(np.maximum(elapsed, 0.0))
        out[:, k + 5] = repeat_item
        out[:, k + 6] = repeat_category
        out[:, k + 7] = np.log1p(carts)
        out[:, k + 8] = np.log1p(np.where(np.isfinite(price) & (price >= 0), price, 0.0))
        out[:, k + 9:len(ALL_FEATURES)] = np.log1p(np.maximum(context, 0.0))
        out[:, len(ALL_FEATURES):] = 0.0 if targets is None else targets
        return out[:, self._columns]

    def add_targets(self, base_raw: np.ndarray, item_digest: np.ndarray,
                    category_digest: np.ndarray | None) -> np.ndarray:
        """Raw rows of every selected feature but the TARGET_FEATURES (as `prepare`'s session
        records hold them, computed before the tables exist) completed with the target
        features, looked up in this encoder's tables by the events' id digests (category
        digest 0: no category). The target features come last in any spec, so they are
        appended."""
        if not self.tables:
            return base_raw
        present = None if category_digest is None else np.asarray(category_digest) != 0
        targets = self.targets(item_digest, category_digest, present, len(base_raw))
        chosen = [TARGET_FEATURES.index(f) for f in self.features if f in TARGET_FEATURES]
        return np.hstack([base_raw, targets[:, chosen]])

    def targets(self, item_digest: np.ndarray | None, category_digest: np.ndarray | None,
                category_present: np.ndarray | None = None, n: int = 0) -> np.ndarray | None:
        """The TARGET_FEATURES columns (n, 4) of events whose ids have these digests
        (DIGEST_DTYPE), looked up in the encoder's tables; None when it has none.

        Raises:
            ConfigError: a table's field has no digests.
        """
        if not self.tables:
            return None
        out = np.zeros((n, len(TARGET_FEATURES)), np.float64)
        lookups = ((self._category_table, category_digest, category_present),
                   (self._item_table, item_digest, None))
        for j, (table, digests, known) in enumerate(lookups):
            if table is None:
                continue
            if digests is None:
                raise ConfigError(f"the spec's {table.field} table needs the {table.field} ids' digests")
            out[:, 2 * j:2 * j + 2] = table.columns(digests, known)
        return out

    def _normalise(self, raw: np.ndarray) -> np.ndarray:
        if self.mean_ is None or self.scale_ is None:
            raise ConfigError("FeatureEncoder is not fitted: call fit() first")
        return ((raw - self.mean_) / self.scale_).astype(np.float32)

    @staticmethod
    def context_vector(context: Mapping | Sequence | np.ndarray | None) -> np.ndarray:
        """A session's user-history context (CONTEXT_FIELDS, a mapping or a vector, or None
        for none) as a checked float64 vector; ConfigError naming the value otherwise."""
        return FeatureEncoder._context_vector(context)

    @staticmethod
    def _context_vector(context: Mapping | Sequence | np.ndarray | None) -> np.ndarray:
        if context is None:
            return np.zeros(len(CONTEXT_FIELDS), np.float64)
        try:
            if isinstance(context, Mapping):
                unknown = set(context) - set(CONTEXT_FIELDS)
                if unknown:
                    raise ConfigError(f"context keys {sorted(unknown)} not in {list(CONTEXT_FIELDS)}")
                vec = np.array([float(context.get(k, 0.0)) for k in CONTEXT_FIELDS], np.float64)
            else:
                vec = np.asarray(context, np.float64).reshape(-1)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"context {context!r}: values must be numbers") from None
        if len(vec) != len(CONTEXT_FIELDS):
            raise ConfigError(f"context has {len(vec)} values, expected {len(CONTEXT_FIELDS)}")
        if not np.isfinite(vec).all():
            raise ConfigError(f"context {context!r}: values must be finite numbers")
        return vec

    # ------------------------------------------------------------------ batch path
    def raw_batch(self, offsets: np.ndarray, ts: np.ndarray, event: np.ndarray, item: np.ndarray,
                  category: np.ndarray | None = None, price: np.ndarray | None = None,
                  context: Mapping | np.ndarray | None = None, *,
                  item_digest: np.ndarray | None = None,
                  category_digest: np.ndarray | None = None) -> np.ndarray:
        """Raw (unnormalised) feature rows of many sessions at once, float64 (N, F).

        Session ``k`` is rows ``offsets[k]:offsets[k+1]`` of the event arrays, time-ordered.
        Every per-session quantity is computed for all sessions in a few vectorised passes,
        with the same arithmetic as the one-event path.

        Args:
            offsets: (S + 1,) increasing row offsets, ``offsets[0] == 0``, ``offsets[-1] == N``.
            ts: Unix seconds per event.
            event: canonical event codes (edge_runtime.events.EVENT_CODE).
            item: item ids (any values; equal ids mean the same item; a session remembers its
                first MAX_REMEMBERED_IDS distinct ones, as the one-event path does).
            category: category ids or None; "" or a negative integer code means "no category"
                (remembered like items, separately).
            price: prices or None; NaN means "no price".
            context: user history (CONTEXT_FIELDS) before each session: (S, 3), one
                mapping/vector for all sessions, or None.
            item_digest, category_digest: each event's id digest (`id_digests`), for the
                target tables; None: computed from ``item`` / ``category`` taken as the ids
                themselves (callers that pass dictionary codes pass the digests).
        """
        offsets = np.asarray(offsets, np.int64)
        ts = np.asarray(ts, np.float64)
        event = np.asarray(event)
        n, lengths = len(ts), np.diff(offsets)
        session = np.repeat(np.arange(len(lengths)), lengths)
        start = offsets[:-1][session]
        position = np.arange(n) - start
        dt = np.zeros(n)
        dt[1:] = ts[1:] - ts[:-1]
        dt[position == 0] = 0.0
        elapsed = ts - ts[start]
        # The cap on remembered ids matters only to sessions longer than it: skip it otherwise.
        cap = MAX_REMEMBERED_IDS if len(lengths) and lengths.max() > MAX_REMEMBERED_IDS else None
        repeat_item = _seen_before(session, np.asarray(item), cap)
        if category is None:
            repeat_category = np.zeros(n, bool)
        else:
            category = np.asarray(category)
            present = category >= 0 if category.dtype.kind in "iu" else category != ""
            repeat_category = _seen_before(session, category, cap, present)
        is_cart = (event == CART).astype(np.int64)
        running = np.cumsum(is_cart)
        carts = running - (running[start] - is_cart[start]) if n else running
        price = np.full(n, np.nan) if price is None else np.asarray(price, np.float64)
        if isinstance(context, np.ndarray) and context.ndim == 2:
            ctx = np.asarray(context, np.float64)[session]
        else:
            ctx = np.broadcast_to(self._context_vector(context), (n, len(CONTEXT_FIELDS)))
        targets = None
        if self.tables:
            if self._item_table is not None and item_digest is None:
                item_digest = _digests_of_values(np.asarray(item))
            present = None
            if self._category_table is not None:
                if category is None:
                    category_digest, present = np.zeros(n, DIGEST_DTYPE), np.zeros(n, bool)
                else:
                    present = category >= 0 if category.dtype.kind in "iu" else category != ""
                    if category_digest is None:
                        category_digest = _digests_of_values(category)
            targets = self.targets(item_digest, category_digest, present, n)
        return self._transform(event, dt, ts, position.astype(np.float64), elapsed,
                               repeat_item.astype(np.float64), repeat_category.astype(np.float64),
                               carts.astype(np.float64), price, ctx, targets)

    def encode_batch(self, offsets: np.ndarray, ts: np.ndarray, event: np.ndarray, item: np.ndarray,
                     category: np.ndarray | None = None, price: np.ndarray | None = None,
                     context: Mapping | np.ndarray | None = None, *,
                     item_digest: np.ndarray | None = None,
                     category_digest: np.ndarray | None = None) -> np.ndarray:
        """Normalised float32 rows (N, F) of many sessions; see `raw_batch` for the arguments."""
        return self._normalise(self.raw_batch(offsets, ts, event, item, category, price, context,
                                              item_digest=item_digest, category_digest=category_digest))

    def raw(self, ts: np.ndarray, event: np.ndarray, item: np.ndarray,
            category: np.ndarray | None = None, price: np.ndarray | None = None,
            context: Mapping | np.ndarray | None = None) -> np.ndarray:
        """Raw (unnormalised) feature rows of one time-ordered session, float64 (L, F).

        The arguments are those of `raw_batch` for a single session; ``context`` is one
        mapping or vector.
        """
        if isinstance(context, np.ndarray):
            context = context.reshape(-1)
        return self.raw_batch(np.array([0, len(ts)]), ts, event, item, category, price, context)

    def encode(self, ts: np.ndarray, event: np.ndarray, item: np.ndarray,
               category: np.ndarray | None = None, price: np.ndarray | None = None,
               context: Mapping | np.ndarray | None = None) -> np.ndarray:
        """Normalised float32 features (L, F) of one session; see `raw` for the arguments."""
        return self._normalise(self.raw(ts, event, item, category, price, context))

    # ------------------------------------------------------------------ one-event path
    def start(self, context: Mapping | np.ndarray | None = None) -> EncoderState:
        """State for a new live session, with its optional user-history context."""
        if context is None:
            # Most live sessions have no context: they share one read-only zero vector.
            return EncoderState(context=NO_CONTEXT, context_logs=NO_CONTEXT_LOGS)
        vector = self._context_vector(context)
        return EncoderState(context=vector, context_logs=self.context_logs(vector))

    @staticmethod
    def context_logs(vector: np.ndarray) -> tuple[float, ...]:
        """The context features of a checked context vector, unnormalised: log1p, clipped
        at 0, as the batch path computes them."""
        return tuple(np.log1p(np.maximum(vector, 0.0)).tolist())

    def step(self, state: EncoderState, event: Mapping) -> np.ndarray:
        """Encode one event of a live session and advance the state.

        Args:
            state: from `start`, updated in place.
            event: a mapping with ``ts``, ``event`` (a name in EVENT_TYPES or its code),
                ``item`` and optionally ``category`` and ``price``, checked by
                edge_runtime.events.canonical_event.

        Returns:
            The event's normalised float32 features, shape (F,).

        Raises:
            ConfigError: the event breaks a rule of `canonical_event` (the message names the
                field and value); the state is left as it was.
        """
        return self.step_event(state, canonical_event(event))

    def step_event(self, state: EncoderState, event: Event) -> np.ndarray:
        """`step` for an event `canonical_event` has already checked (callers that need
        its values first, e.g. SessionStore for the time, check it once).

        Raises:
            ConfigError: the encoder is not fitted.
        """
        ts, code, item, category, price = event
        carts = state.carts + (code == CART)
        item_digest = id_digest(item) if self._track_items or self._item_table is not None else None
        repeat_item = self._track_items and remembered(state.items, item_digest)
        category_digest = (id_digest(category) if category is not None
                           and (self._track_categories or self._category_table is not None) else None)
        repeat_category = (self._track_categories and category_digest is not None
                           and remembered(state.categories, category_digest))
        targets = self.target_values(item_digest, category_digest) if self.tables else NO_TARGETS
        x = self.step_features(ts, code, price, state.n, state.first_ts, state.last_ts, carts,
                               repeat_item, repeat_category, state.context_logs, targets)
        if state.n == 0:
            state.first_ts = ts
        state.n += 1
        state.last_ts = ts
        state.carts = carts
        cap = MAX_REMEMBERED_IDS * DIGEST_BYTES
        if self._track_items and not repeat_item and len(state.items) < cap:
            state.items += item_digest
        if (self._track_categories and category_digest is not None and not repeat_category
                and len(state.categories) < cap):
            state.categories += category_digest
        return x

    def target_values(self, item_digest: bytes | None, category_digest: bytes | None) -> tuple[float, ...]:
        """One event's TARGET_FEATURES values (the `step_features` argument) from its ids'
        8-byte digests (None: no category); NO_TARGETS for a spec without tables."""
        if not self.tables:
            return NO_TARGETS
        category = self._category_table
        item = self._item_table
        return (*(category.values_of(category_digest) if category is not None else (0.0, 0.0)),
                *(item.values_of(item_digest) if item is not None else (0.0, 0.0)))

    def step_features(self, ts: float, code: int, price: float, n: int, first_ts: float,
                      last_ts: float, carts: int, repeat_item: bool, repeat_category: bool,
                      context_logs: Sequence[float], targets: Sequence[float] = NO_TARGETS) -> np.ndarray:
        """One event's normalised float32 features (F,) from what its session held before it:
        the arithmetic of the one-event path, shared by `step_event` and by callers that keep
        a session's counters themselves (edge_runtime.live.SessionStore keeps them in columns).

        Args:
            ts, code, price: the event's, as a canonical Event has them.
            n: the session's events before this one (0: this one is its first).
            first_ts, last_ts: the times of its first and its previous event (unused when n is 0).
            carts: the session's carts up to and including this event.
            repeat_item, repeat_category: whether the event's item (category) is a remembered one.
            context_logs: the session's context as `start` logs it (log1p, clipped at 0).
            targets: the event's TARGET_FEATURES values (`target_values`).

        Raises:
            ConfigError: the encoder is not fitted.
        """
        norm = self._step_norm
        if norm is None or norm[0] is not self.mean_ or norm[1] is not self.scale_:
            norm = self._fit_step_norm()
        first = n == 0
        # The same arithmetic as `_transform`, on scalars: one log1p call for the five logs
        # (numpy's, as the batch path uses) and math.sin/cos, which equal numpy's here.
        logs = np.log1p(np.array((min(max(0.0 if first else ts - last_ts, 0.0), self.max_dt_seconds),
                                  float(n), 0.0 if first else max(ts - first_ts, 0.0), float(carts),
                                  price if math.isfinite(price) and price >= 0 else 0.0))).tolist()
        angle = ((ts + self.utc_offset_hours * 3600.0) % 86400.0) * (2.0 * math.pi / 86400.0)
        # The raw row in ALL_FEATURES order, as Python floats; normalised below with the float64
        # operations of `_normalise` ((v - mean) / scale, then rounded to float32), element by
        # element: the same bits, without a numpy call per operation.
        row = [*_NO_EVENT_TYPE, logs[0], math.sin(angle), math.cos(angle), logs[1], logs[2],
               1.0 if repeat_item else 0.0, 1.0 if repeat_category else 0.0, logs[3], logs[4],
               *context_logs, *targets]
        row[code] = 1.0
        return np.array([(row[j] - mean) / scale for j, mean, scale in norm[2]], np.float32)

    def _fit_step_norm(self) -> tuple:
        """(mean_, scale_, [(column, mean, scale) per selected feature]) for `step_features`,
        rebuilt whenever ``mean_`` or ``scale_`` is replaced."""
        if self.mean_ is None or self.scale_ is None:
            raise ConfigError("FeatureEncoder is not fitted: call fit() first")
        norm = (self.mean_, self.scale_, list(zip(self._columns.tolist(),
                                                  np.asarray(self.mean_, np.float64).tolist(),
                                                  np.asarray(self.scale_, np.float64).tolist(),
                                                  strict=True)))
        self._step_norm = norm
        return norm


_NO_EVENT_TYPE = (0.0,) * len(EVENT_TYPES)


def _digests_of_values(values: np.ndarray) -> np.ndarray:
    """`id_digests` of an array of ids, each distinct id hashed once."""
    distinct, inverse = np.unique(values, return_inverse=True)
    return id_digests(distinct)[inverse.reshape(-1)]


def _seen_before(group: np.ndarray, values: np.ndarray, cap: int | None,
                 present: np.ndarray | None = None) -> np.ndarray:
    """True where the value occurred earlier within the same group and is remembered: among
    the group's first ``cap`` distinct values, as the one-event path remembers ids.

    Args:
        group: the session of each row; non-decreasing (a session's rows are contiguous and
            in time order).
        values: the ids.
        cap: the distinct values a group remembers (MAX_REMEMBERED_IDS); None when no
            group has more rows than that.
        present: rows that have a value; the others are never a repeat and use no place
            under the cap. None: every row.
    """
    n = len(values)
    if present is not None and not present.all():
        seen = np.zeros(n, bool)
        rows = np.flatnonzero(present)
        seen[rows] = _seen_before(group[rows], values[rows], cap)
        return seen
    if n == 0:
        return np.zeros(0, bool)
    if values.dtype.kind not in "iufb":
        # Strings and other objects: compare integer codes, which lexsort can order.
        values = np.unique(values, return_inverse=True)[1].reshape(-1)
    order = np.lexsort((np.arange(n), values, group))
    g, v = group[order], values[order]
    first = np.ones(n, bool)
    first[1:] = (g[1:] != g[:-1]) | (v[1:] != v[:-1])
    seen = np.empty(n, bool)
    seen[order] = ~first
    if cap is None:
        return seen
    firsts = np.flatnonzero(~seen)  # each value's first row, in row order
    if np.bincount(group[firsts]).max() <= cap:
        return seen  # no session has more distinct values than it remembers
    # The rank of each first row among its group's first rows, then each row's first row.
    rank = np.arange(len(firsts)) - np.searchsorted(group[firsts], group[firsts], side="left")
    remembered = np.zeros(n, bool)
    remembered[firsts[rank < cap]] = True
    run_start = np.maximum.accumulate(np.where(first, np.arange(n), 0))
    seen[order] &= remembered[order[run_start]]
    return seen
