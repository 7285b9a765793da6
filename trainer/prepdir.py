"""PREP_DIR: a log's scorable sessions, prepared once, as `train` reads them.

`prepare` (trainer.prepare, either engine) turns a log into this folder; `train --data
PREP_DIR` streams it. The folder is the seam between the two, so its format lives here:

```
PREP_DIR/
  manifest.json            written last; what the folder holds and how it was made
  shards/part-00000.parquet, part-00001.parquet, ...   zstd-compressed Parquet
  quarantine.jsonl         the log's bad rows (trainer.quarantine.BadRows.write); absent if none
```

A shard row is one scorable session; rows run in canonical order (session start ascending,
then session key ascending as strings) within a shard and from one shard to the next, so
reading the shards in the manifest's order reads every session in that order. Columns
(`SHARD_SCHEMA`): ``key_digest`` (trainer.sessions.key_digests), ``split`` (a name of
trainer.rundir.SPLIT_NAMES), ``label`` (int8, 1 = a purchase), ``start`` (Unix seconds),
``prefix_len`` (events before the first purchase, before the cut to max_len), ``features``
(the encoded prefix, its last min(prefix_len, max_len) events, flattened row-major: length x
n_features float32; ragged, never padded) and ``baseline`` (the logistic baseline's counts,
trainer.dataset.BASELINE_FEATURES).

manifest.json (`check_manifest` is its one validator; `write_manifest` and `PrepDir.open`
both call it):

```
{"format_version": 1, "engine": "local" | "spark",
 "input": {"path", "format", "bytes", "sha256"},   (bytes and sha256 null for a pipe)
 "settings": {"gap_minutes", "validation", "test", "max_len", "use_context", "target_stats"},
 "counts": {"rows_read", "bad_rows": {"total", "by_reason"}, "events", "sessions",
            "sessions_with_purchase", "sessions_excluded_empty_prefix", "sessions_scorable",
            "split": {"train": {"sessions", "positives"}, "validation": ..., "test": ...}},
 "has_user_ids", "time_span_utc": [min_ts, max_ts],
 "split_rule": {"validation_from_ts", "test_from_ts"},
 "feature_spec": FeatureSpec.to_dict(), "baseline_features": [names],
 "shards": [{"path": "shards/part-00000.parquet", "sessions", "bytes", "sha256"}, ...],
 "content_digest": hex}
```

``content_digest`` (`ContentDigest`) is a SHA-256 over every session in canonical order, of
its key digest, split, label and features only, so two preparations of one log (either
engine, any number of shards) compare by one field. Each shard's SHA-256 is checked before
a byte of it is used: a damaged shard is refused with a message naming it.

Seams: `PrepWriter` (what both engines of `prepare` write through), `write_manifest`,
`PrepDir` (what `train` reads: whole splits in memory with `PrepDir.read_split`, or streamed
as a length-bucketed tf.data pipeline with `PrepDir.dataset`).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from edge_runtime.errors import DataError, UbpEdgeError, first_line
from edge_runtime.features import FeatureSpec
from trainer.files import read_json_file, write_error, write_json_atomic
from trainer.rundir import SPLIT_NAMES

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SHARDS_DIR = "shards"
QUARANTINE = "quarantine.jsonl"
ENGINES = ("local", "spark")
SHARD_SCHEMA = pa.schema([
    ("key_digest", pa.string()),
    ("split", pa.string()),
    ("label", pa.int8()),
    ("start", pa.float64()),
    ("prefix_len", pa.int64()),
    ("features", pa.list_(pa.float32())),
    ("baseline", pa.list_(pa.float64())),
])
# Sessions per shard by default: a few tens of MB compressed (sessions are ~300 bytes before
# compression, most of them 1-3 events), so a 16 M-session log makes ~60 shards, enough to
# interleave and to split among workers, few enough to list.
DEFAULT_SESSIONS_PER_SHARD = 1 << 18
# Sessions per Parquet row group: the writer holds at most this many (plus one batch).
ROW_GROUP_SESSIONS = 1 << 14
# Sessions per element the shard reader hands tf.data: decoded together, split after.
READ_CHUNK_SESSIONS = 1 << 10
# Sessions the training stream shuffles among (after interleaving shards); at most ~100 MB
# even if every session were max_len 50 events of 15 features.
DEFAULT_SHUFFLE_SESSIONS = 1 << 15


class Prefixes(StrEnum):
    """What a training session contributes each epoch (`PrepDir.dataset`).

    WHOLE: its prefix before the first purchase (its last max_len events), in batches of
    similar length. RANDOM: one prefix of it, cut anew each epoch at a uniformly drawn
    length 1..L of its stored events, with the session's label, in batches of mixed length:
    the model also learns to answer after the first clicks, and every session weighs the
    same whatever its length.
    """

    WHOLE = "whole"
    RANDOM = "random"


SHARD_PATTERN = re.compile(r"shards/[A-Za-z0-9_.-]+\.parquet")
HEX64 = re.compile(r"[0-9a-f]{64}")
_RERUN = "run prepare again"


# --------------------------------------------------------------------------- content digest

def _string_bytes(values: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 bytes of ``n`` strings as an (n, width) uint8 matrix, left-aligned, and each
    string's byte length."""
    encoded = np.char.encode(np.asarray(values, dtype=str), "utf-8") if n else np.zeros(0, "S1")
    width = max(encoded.dtype.itemsize, 1)
    matrix = np.frombuffer(encoded.astype(f"S{width}").tobytes(), np.uint8).reshape(n, width)
    return matrix, np.char.str_len(encoded).astype(np.int64) if n else np.zeros(0, np.int64)


def _length_prefix(lengths: np.ndarray) -> np.ndarray:
    """Each length as 8 bytes, unsigned little-endian: (n, 8) uint8."""
    return lengths.astype("<u8").view(np.uint8).reshape(-1, 8)


def session_records(key_digest: Any, split: Any, label: Any, values: np.ndarray,
                    lengths: np.ndarray, n_features: int) -> np.ndarray:
    """The bytes `ContentDigest` hashes for a batch of sessions, built without a loop.

    Per session, four fields, each as an 8-byte unsigned little-endian byte count followed
    by the bytes: the key digest (UTF-8), the split name (UTF-8), the label (one signed
    byte) and the encoded features (float32 little-endian, row-major).

    Args:
        key_digest, split, label: one value per session.
        values: the sessions' feature rows, stacked: (sum(lengths), n_features) or flat.
        lengths: events per session.
        n_features: values per event.

    Returns:
        uint8 array: the records of the sessions, one after the other.
    """
    lengths = np.asarray(lengths, np.int64)
    n = len(lengths)
    if n == 0:
        return np.zeros(0, np.uint8)
    ones = np.ones((n, 8), bool)
    key, key_len = _string_bytes(key_digest, n)
    name, name_len = _string_bytes(split, n)
    label_bytes = np.asarray(label, np.int8).view(np.uint8).reshape(n, 1)
    feature_bytes = lengths * n_features * 4
    head = np.hstack([_length_prefix(key_len), key, _length_prefix(name_len), name,
                      _length_prefix(np.ones(n, np.int64)), label_bytes,
                      _length_prefix(feature_bytes)])
    valid = np.hstack([ones, np.arange(key.shape[1]) < key_len[:, None],
                       ones, np.arange(name.shape[1]) < name_len[:, None],
                       ones, np.ones((n, 1), bool), ones])
    head_len = valid.sum(axis=1)
    ends = np.cumsum(head_len + feature_bytes)
    starts = ends - head_len - feature_bytes
    out = np.empty(int(ends[-1]), np.uint8)
    is_head = np.zeros(len(out), bool)
    is_head[(starts[:, None] + np.cumsum(valid, axis=1) - 1)[valid]] = True
    out[is_head] = head[valid]
    # Each session's features follow its own head: the remaining positions, in order.
    out[~is_head] = np.ascontiguousarray(values, dtype="<f4").reshape(-1).view(np.uint8)
    return out


class ContentDigest:
    """SHA-256 over sessions in canonical order (`session_records` defines the bytes),
    fed batch by batch: the same sessions give the same digest however they are batched,
    sharded or prepared.

    Example:
        >>> digest = ContentDigest()
        >>> digest.update(["0123456789abcdef"], ["train"], [1], np.zeros((2, 3), np.float32), [2], 3)
        >>> len(digest.hexdigest())
        64
    """

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self.sessions = 0

    def update(self, key_digest: Any, split: Any, label: Any, values: np.ndarray,
               lengths: Any, n_features: int) -> None:
        """Add the next sessions (arguments as `session_records`)."""
        self._sha.update(session_records(key_digest, split, label, values, lengths, n_features))
        self.sessions += len(lengths)

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


def sha256_file(path: str | os.PathLike) -> tuple[int, str]:
    """A file's size in bytes and its SHA-256 (hex), read in blocks (for the manifest's
    ``input`` and each shard)."""
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256")
        return f.tell(), digest.hexdigest()


# --------------------------------------------------------------------------- writer

def _flat_features(batch: Mapping, n: int, n_features: int) -> tuple[np.ndarray, np.ndarray]:
    """The batch's features as stacked (rows, n_features) float32 and per-session lengths:
    from a list of (L, F) arrays, or from flat values with ``lengths``."""
    features = batch["features"]
    if "lengths" in batch:
        lengths = np.asarray(batch["lengths"], np.int64)
        values = np.asarray(features, np.float32).reshape(-1, n_features)
    else:
        arrays = [np.asarray(x, np.float32).reshape(-1, n_features) for x in features]
        lengths = np.array([len(x) for x in arrays], np.int64)
        values = np.concatenate(arrays) if arrays else np.zeros((0, n_features), np.float32)
    if len(lengths) != n or int(lengths.sum()) != len(values) or (lengths < 0).any():
        raise ValueError(f"features of {len(lengths)} sessions with {len(values)} rows do not fit "
                         f"{n} sessions of lengths summing to {int(lengths.sum())}")
    return values, lengths


def _list_array(values: np.ndarray, lengths: np.ndarray, width: int, kind: pa.DataType) -> pa.Array:
    offsets = np.r_[0, np.cumsum(lengths * width)].astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()),
                                    pa.array(np.ascontiguousarray(values).reshape(-1), kind))


def _table_columns(table: pa.Table | pa.RecordBatch, n_features: int) -> dict:
    """A batch given as Arrow (SHARD_SCHEMA's columns) as the dict `PrepWriter.add` takes."""
    features = table.column("features")
    if isinstance(features, pa.ChunkedArray):
        features = features.combine_chunks()
    baseline = table.column("baseline")
    if isinstance(baseline, pa.ChunkedArray):
        baseline = baseline.combine_chunks()
    k = int(baseline.value_lengths()[0].as_py()) if len(baseline) else 0
    return {name: table.column(name).to_numpy(zero_copy_only=False)
            for name in ("key_digest", "split", "label", "start", "prefix_len")} | {
        "features": features.flatten().to_numpy(zero_copy_only=False),
        "lengths": features.value_lengths().to_numpy(zero_copy_only=False) // n_features,
        "baseline": baseline.flatten().to_numpy(zero_copy_only=False).reshape(-1, max(k, 1))}


class PrepWriter:
    """Writes sessions into a PREP_DIR's shards as they come, in bounded memory.

    Sessions arrive in canonical order, batch by batch; a Parquet row group is written when
    `ROW_GROUP_SESSIONS` are buffered, and a shard file is closed (written beside its final
    name, fsynced, renamed) when it holds its share. `close` returns what the manifest lists.

    Args:
        folder: the PREP_DIR being built (its staging folder); shards go to ``folder/shards``.
        n_features: values per encoded event (the FeatureSpec's).
        baseline_names: the baseline's columns (trainer.dataset.BASELINE_FEATURES).
        sessions_per_shard: sessions per shard; default `DEFAULT_SESSIONS_PER_SHARD`.
        shards: write this many shards of near-equal size instead (fewer when there are fewer
            sessions); needs ``total_sessions``.
        total_sessions: how many sessions will be added (checked at `close`).

    Raises:
        ValueError: ``shards`` without ``total_sessions``, or both sizes given, or a size < 1.

    Example:
        >>> with PrepWriter(stage, spec.n_features, BASELINE_FEATURES) as writer:
        ...     writer.add({"key_digest": ..., "split": ..., "label": ..., "start": ...,
        ...                 "prefix_len": ..., "features": [x0, x1], "baseline": b})
        >>> shards, content_digest = writer.close()
    """

    def __init__(self, folder: str | os.PathLike, n_features: int, baseline_names: Sequence[str],
                 sessions_per_shard: int | None = None, shards: int | None = None,
                 total_sessions: int | None = None) -> None:
        if sessions_per_shard is not None and shards is not None:
            raise ValueError("give sessions_per_shard or shards, not both")
        if shards is not None and total_sessions is None:
            raise ValueError("shards=N needs total_sessions to size the shards")
        if any(v is not None and v < 1 for v in (sessions_per_shard, shards)):
            raise ValueError(f"shard sizes must be >= 1, got sessions_per_shard={sessions_per_shard}, "
                             f"shards={shards}")
        self.folder = Path(folder)
        self.n_features = int(n_features)
        self.baseline_names = list(baseline_names)
        self.total_sessions = total_sessions
        if shards is not None:
            count = max(1, min(shards, total_sessions or 1))
            self._sizes = [total_sessions // count + (i < total_sessions % count) for i in range(count)]
        else:
            self._sizes = []
        self._per_shard = sessions_per_shard or DEFAULT_SESSIONS_PER_SHARD
        self._digest = ContentDigest()
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._shards: list[dict] = []
        self._writer: pq.ParquetWriter | None = None
        self._open: tuple[Path, Path] | None = None  # the shard being written: (path, temporary)
        self._in_shard = 0
        self._last_start = -math.inf
        self._closed = False

    def __enter__(self) -> PrepWriter:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is not None:
            self.abort()

    # ----------------------------------------------------------------- adding sessions

    def add(self, batch: Mapping | pa.Table | pa.RecordBatch) -> None:
        """Append sessions that follow the ones added before in canonical order.

        Args:
            batch: columns ``key_digest``, ``split``, ``label``, ``start``, ``prefix_len``,
                ``features`` and ``baseline`` (N, K); ``features`` a list of (L, F) float32
                arrays, or the rows stacked (or flat) with ``lengths`` (N,) beside them. An
                Arrow table or record batch with SHARD_SCHEMA's columns is taken as well.

        Raises:
            ValueError: columns of different lengths, a split that is not a SPLIT_NAMES name,
                a label other than 0/1, a baseline of another width, or sessions starting
                before the last one added (not canonical order): the caller's bug.
            OutputError: a shard cannot be written (no space left, a file-size limit).
        """
        if self._closed:
            raise ValueError("PrepWriter.add after close")
        if isinstance(batch, pa.Table | pa.RecordBatch):
            batch = _table_columns(batch, self.n_features)
        n = len(batch["key_digest"])
        if n == 0:
            return
        values, lengths = _flat_features(batch, n, self.n_features)
        key = np.asarray(batch["key_digest"], dtype=str)
        split = np.asarray(batch["split"], dtype=str)
        label = np.asarray(batch["label"])
        start = np.asarray(batch["start"], np.float64)
        prefix_len = np.asarray(batch["prefix_len"], np.int64)
        baseline = np.asarray(batch["baseline"], np.float64).reshape(n, -1)
        if not len(key) == len(split) == len(label) == len(start) == len(prefix_len) == n:
            raise ValueError("PrepWriter.add: columns of different lengths")
        if baseline.shape[1] != len(self.baseline_names):
            raise ValueError(f"baseline has {baseline.shape[1]} columns, expected "
                             f"{len(self.baseline_names)} ({self.baseline_names})")
        if not np.isin(split, SPLIT_NAMES).all():
            raise ValueError(f"split values {sorted(set(split) - set(SPLIT_NAMES))}; allowed {SPLIT_NAMES}")
        if not np.isin(label, (0, 1)).all():
            raise ValueError("labels must be 0 or 1")
        if (np.diff(start) < 0).any() or start[0] < self._last_start:
            raise ValueError("sessions must come in canonical order (start ascending)")
        self._last_start = float(start[-1])
        self._digest.update(key, split, label, values, lengths, self.n_features)
        table = pa.Table.from_arrays([
            pa.array(key, pa.string()), pa.array(split, pa.string()),
            pa.array(label.astype(np.int8), pa.int8()), pa.array(start, pa.float64()),
            pa.array(prefix_len, pa.int64()),
            _list_array(values.astype(np.float32, copy=False), lengths, self.n_features, pa.float32()),
            _list_array(baseline, np.ones(n, np.int64), baseline.shape[1], pa.float64()),
        ], schema=SHARD_SCHEMA)
        self._pending.append(table)
        self._pending_rows += n
        self._flush(final=False)

    def _capacity(self) -> int:
        """Sessions the current shard still takes."""
        index = len(self._shards)
        size = self._sizes[index] if index < len(self._sizes) else \
            (self._per_shard if not self._sizes else self._sizes[-1])
        return size - self._in_shard

    def _flush(self, final: bool) -> None:
        """Write row groups while enough sessions are pending (all of them when ``final``)."""
        while self._pending_rows and (final or self._pending_rows >= min(ROW_GROUP_SESSIONS,
                                                                         self._capacity())):
            pending = pa.concat_tables(self._pending).combine_chunks()
            take = min(ROW_GROUP_SESSIONS, self._capacity(), len(pending))
            self._write_group(pending.slice(0, take))
            rest = pending.slice(take)
            self._pending, self._pending_rows = ([rest] if len(rest) else []), len(rest)
            if self._capacity() == 0:
                self._finish_shard()

    def _write_group(self, table: pa.Table) -> None:
        """Write one row group into the current shard, opening it first if needed."""
        if self._writer is None:
            path = self.folder / SHARDS_DIR / f"part-{len(self._shards):05d}.parquet"
            # Written beside its final name and renamed when complete: a file named part-*.parquet
            # is always whole, even in a staging folder a kill left behind.
            tmp = path.with_name(f".{path.name}.tmp")
            self._open = (path, tmp)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._writer = pq.ParquetWriter(tmp, SHARD_SCHEMA, compression="zstd",
                                                use_dictionary=["split"], write_statistics=["start"])
            except OSError as e:
                self.abort()
                raise write_error(path, e) from None
        try:
            self._writer.write_table(table, row_group_size=len(table))
        except OSError as e:
            path = self._open[0]
            self.abort()
            raise write_error(path, e) from None
        self._in_shard += len(table)

    def _finish_shard(self) -> None:
        """Close the current shard: fsync, rename into place, list it with its digest."""
        path, tmp = self._open
        try:
            self._writer.close()
            self._writer = None
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            self.abort()
            raise write_error(path, e) from None
        self._open = None
        size, sha = sha256_file(path)
        self._shards.append({"path": f"{SHARDS_DIR}/{path.name}", "sessions": self._in_shard,
                             "bytes": size, "sha256": sha})
        self._in_shard = 0

    def abort(self) -> None:
        """Close the writer and delete the shard being written; the shards already finished
        stay (the caller's staging folder goes as a whole)."""
        self._closed = True
        if self._writer is not None:
            try:
                self._writer.close()
            except OSError:
                pass
            self._writer = None
        if self._open is not None:
            self._open[1].unlink(missing_ok=True)
            self._open = None

    def close(self) -> tuple[list[dict], str]:
        """Write what is pending and close the last shard.

        Returns:
            (the shards as the manifest lists them: ``path``, ``sessions``, ``bytes``,
            ``sha256``, in canonical order; the content digest).

        Raises:
            ValueError: fewer or more sessions than ``total_sessions``.
            OutputError: a shard cannot be written.
        """
        if self._closed:
            raise ValueError("PrepWriter.close twice")
        self._flush(final=True)
        if self._writer is not None:
            self._finish_shard()
        self._closed = True
        if self.total_sessions is not None and self._digest.sessions != self.total_sessions:
            raise ValueError(f"{self._digest.sessions} sessions added, {self.total_sessions} announced")
        return list(self._shards), self._digest.hexdigest()


# --------------------------------------------------------------------------- the manifest

class _Check:
    """Reads manifest fields, each checked; DataError naming the file and the field."""

    def __init__(self, path: Path, manifest: Any) -> None:
        self.path = path
        if not isinstance(manifest, dict):
            self.fail(f"damaged, a JSON {type(manifest).__name__} where an object belongs")
        self.manifest = manifest

    def fail(self, message: str):
        raise DataError(f"{self.path}: {message}; {_RERUN}")

    def get(self, *keys: str | int) -> Any:
        value = self.manifest
        for depth, key in enumerate(keys):
            ok = (isinstance(value, dict) and key in value) or \
                 (isinstance(value, list) and isinstance(key, int) and key < len(value))
            if not ok:
                self.fail(f"damaged, no {_dotted(keys[:depth + 1])}")
            value = value[key]
        return value

    def whole(self, *keys) -> int:
        value = self.get(*keys)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            self.fail(f"damaged, {_dotted(keys)} is {value!r}, expected a whole number >= 0")
        return value

    def number(self, *keys) -> float:
        value = self.get(*keys)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            self.fail(f"damaged, {_dotted(keys)} is {value!r}, expected a finite number")
        return float(value)

    def kind(self, kind: type, *keys) -> Any:
        value = self.get(*keys)
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            self.fail(f"damaged, {_dotted(keys)} is {value!r}, expected a {kind.__name__}")
        return value

    def hex64(self, *keys) -> str:
        value = self.kind(str, *keys)
        if not HEX64.fullmatch(value):
            self.fail(f"damaged, {_dotted(keys)} is {value!r}, expected 64 hex digits")
        return value


def _dotted(keys: Sequence[str | int]) -> str:
    return "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in keys).lstrip(".")


COUNT_FIELDS = ("rows_read", "events", "sessions", "sessions_with_purchase",
                "sessions_excluded_empty_prefix", "sessions_scorable")


def check_manifest(path: str | os.PathLike, manifest: Any) -> FeatureSpec:
    """Check a manifest's every field and that they hold together.

    Args:
        path: the manifest file, for messages.
        manifest: the parsed JSON.

    Returns:
        Its FeatureSpec.

    Raises:
        DataError: naming the file and the field: another format version, a field missing
            or of the wrong type or range, a shard path outside ``shards/``, shard or split
            counts that do not add up to the scorable sessions, a feature spec whose max_len
            is not the settings'.
    """
    c = _Check(Path(path), manifest)
    version = c.get("format_version")
    if version != FORMAT_VERSION:
        c.fail(f"format_version {version!r} is not supported (this ubp-edge reads {FORMAT_VERSION})")
    if c.get("engine") not in ENGINES:
        c.fail(f"damaged, engine is {c.get('engine')!r}, expected {' or '.join(ENGINES)}")
    c.kind(str, "input", "path")
    c.kind(str, "input", "format")
    if c.get("input", "bytes") is not None or c.get("input", "sha256") is not None:
        c.whole("input", "bytes")  # both None: the log was a pipe, read once
        c.hex64("input", "sha256")
    if not c.number("settings", "gap_minutes") > 0:
        c.fail(f"damaged, settings.gap_minutes is {c.get('settings', 'gap_minutes')!r}, expected > 0")
    shares = [c.number("settings", k) for k in ("validation", "test")]
    if not (all(0 < s < 1 for s in shares) and sum(shares) < 1):
        c.fail(f"damaged, settings.validation {shares[0]} and settings.test {shares[1]} must be "
               f"shares in (0, 1) with a sum below 1")
    max_len = c.whole("settings", "max_len")
    if max_len < 1:
        c.fail("damaged, settings.max_len is 0, expected >= 1")
    c.kind(bool, "settings", "use_context")
    if "target_stats" in c.kind(dict, "settings"):  # absent in folders prepared before the tables
        c.kind(bool, "settings", "target_stats")
    counts = {k: c.whole("counts", k) for k in COUNT_FIELDS}
    c.whole("counts", "bad_rows", "total")
    for reason in c.kind(dict, "counts", "bad_rows", "by_reason"):
        c.whole("counts", "bad_rows", "by_reason", reason)
    in_splits = 0
    for name in SPLIT_NAMES:
        sessions, positives = c.whole("counts", "split", name, "sessions"), \
            c.whole("counts", "split", name, "positives")
        if positives > sessions:
            c.fail(f"damaged, counts.split.{name}.positives {positives} > sessions {sessions}")
        in_splits += sessions
    if in_splits != counts["sessions_scorable"]:
        c.fail(f"damaged, the splits hold {in_splits} sessions but counts.sessions_scorable is "
               f"{counts['sessions_scorable']}")
    c.kind(bool, "has_user_ids")
    if len(c.kind(list, "time_span_utc")) != 2:
        c.fail(f"damaged, time_span_utc is {c.get('time_span_utc')!r}, expected [first, last]")
    c.number("time_span_utc", 0), c.number("time_span_utc", 1)
    c.number("split_rule", "validation_from_ts")
    c.number("split_rule", "test_from_ts")
    try:
        spec = FeatureSpec.from_dict(c.kind(dict, "feature_spec"))
    except UbpEdgeError as e:
        c.fail(f"damaged, feature_spec: {e}")
    if spec.max_len != max_len:
        c.fail(f"damaged, feature_spec.max_len {spec.max_len} is not settings.max_len {max_len}")
    names = c.kind(list, "baseline_features")
    if not names or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        c.fail(f"damaged, baseline_features is {names!r}, expected distinct names")
    shards, total, seen = c.kind(list, "shards"), 0, set()
    for i in range(len(shards)):
        where = c.kind(str, "shards", i, "path")
        if not SHARD_PATTERN.fullmatch(where) or where in seen:
            c.fail(f"damaged, shards[{i}].path is {where!r}, expected a distinct "
                   f"shards/NAME.parquet")
        seen.add(where)
        total += c.whole("shards", i, "sessions")
        c.whole("shards", i, "bytes")
        c.hex64("shards", i, "sha256")
    if total != counts["sessions_scorable"]:
        c.fail(f"damaged, the shards hold {total} sessions but counts.sessions_scorable is "
               f"{counts['sessions_scorable']}")
    c.hex64("content_digest")
    return spec


def write_manifest(folder: str | os.PathLike, manifest: dict) -> Path:
    """Check ``manifest`` (`check_manifest`) and write it as ``folder/manifest.json``,
    atomically: the last file of a PREP_DIR, the one whose presence means it is complete.

    Raises:
        DataError: the manifest would not be read back (the writer's bug, caught here).
        OutputError: it cannot be written.
    """
    path = Path(folder) / MANIFEST
    check_manifest(path, manifest)
    return write_json_atomic(path, manifest)


def is_prep_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder holding a manifest.json (what `train --data` takes as a
    PREP_DIR rather than a log)."""
    return Path(path).is_dir() and (Path(path) / MANIFEST).is_file()


# --------------------------------------------------------------------------- reader

@dataclass(frozen=True)
class SplitRows:
    """Sessions of one split (or a part of one), in canonical order.

    Attributes:
        key_digest: (N,) str, the session-key digests split.json lists.
        label: (N,) int8.
        start: (N,) float64, Unix seconds.
        prefix_len: (N,) int64, events before the first purchase.
        lengths: (N,) int64, encoded events per session (min(prefix_len, max_len)).
        values: (sum(lengths), F) float32, the encoded events stacked; None when not read.
        baseline: (N, K) float64; None when not read.
    """

    key_digest: np.ndarray
    label: np.ndarray
    start: np.ndarray
    prefix_len: np.ndarray
    lengths: np.ndarray
    values: np.ndarray | None
    baseline: np.ndarray | None

    def __len__(self) -> int:
        return len(self.label)

    @property
    def encoded(self) -> list[np.ndarray]:
        """Each session's encoded prefix, (L, F) float32 (views into ``values``)."""
        if self.values is None:
            raise ValueError("the features were not read")
        return np.split(self.values, np.cumsum(self.lengths)[:-1]) if len(self) else []

    def take(self, index: np.ndarray) -> SplitRows:
        """The sessions at ``index`` (positions into this one), in that order."""
        index = np.asarray(index, np.int64)
        values = None
        if self.values is not None:
            ends = np.cumsum(self.lengths)
            rows = _ragged_rows(ends - self.lengths, self.lengths, index)
            values = self.values[rows]
        return SplitRows(self.key_digest[index], self.label[index], self.start[index],
                         self.prefix_len[index], self.lengths[index], values,
                         None if self.baseline is None else self.baseline[index])

    @staticmethod
    def concat(parts: Sequence[SplitRows], n_features: int, k: int) -> SplitRows:
        """One SplitRows of ``parts`` in order (empty parts allowed)."""
        def joined(name: str, empty: np.ndarray) -> np.ndarray | None:
            arrays = [getattr(p, name) for p in parts]
            if any(a is None for a in arrays):
                return None
            return np.concatenate(arrays) if arrays else empty
        return SplitRows(joined("key_digest", np.zeros(0, "U16")), joined("label", np.zeros(0, np.int8)),
                         joined("start", np.zeros(0)), joined("prefix_len", np.zeros(0, np.int64)),
                         joined("lengths", np.zeros(0, np.int64)),
                         joined("values", np.zeros((0, n_features), np.float32)),
                         joined("baseline", np.zeros((0, k))))


def _ragged_rows(starts: np.ndarray, lengths: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Row numbers of sessions ``index`` of a ragged array (``starts``, ``lengths``), stacked."""
    lens = lengths[index]
    total = int(lens.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    first = np.repeat(starts[index] - np.r_[0, np.cumsum(lens)[:-1]], lens)
    return first + np.arange(total)


class PrepDir:
    """A PREP_DIR, its manifest checked; shards are read (and checked) on demand.

    Attributes:
        path: the folder.
        manifest: manifest.json as read.
        spec: the FeatureSpec the sessions were encoded with.
        counts: the manifest's counts (rows, bad rows, events, sessions, per split).
        settings: gap_minutes, validation, test, max_len, use_context, target_stats.
        shards: the manifest's shard entries, in canonical order.
        baseline_names: the baseline's columns.
        n_features: values per encoded event.

    Example:
        >>> prep = PrepDir.open("prepared/taobao")
        >>> test = prep.read_split("test")
        >>> len(test), prep.n_features
        (1544, 15)
    """

    def __init__(self, path: Path, manifest: dict, spec: FeatureSpec) -> None:
        self.path = path
        self.manifest = manifest
        self.spec = spec
        self.counts: dict = manifest["counts"]
        self.settings: dict = manifest["settings"]
        self.shards: list[dict] = manifest["shards"]
        self.baseline_names: list[str] = list(manifest["baseline_features"])
        self.n_features = spec.n_features
        self._length_counts: list[dict[str, np.ndarray]] | None = None
        self._failures: list[UbpEdgeError] = []

    @classmethod
    def open(cls, path: str | os.PathLike) -> PrepDir:
        """Read and check a PREP_DIR's manifest.

        Raises:
            DataError: naming the folder or manifest.json: no such folder, no manifest (not
                a PREP_DIR, or a `prepare` that never finished), unreadable or damaged JSON,
                or a field `check_manifest` refuses.
        """
        path = Path(path)
        manifest_path = path / MANIFEST
        if not path.is_dir():
            raise DataError(f"{path}: no such folder (create a prepared folder with `ubp-edge prepare`)")
        if not manifest_path.is_file():
            raise DataError(f"{path}: not a prepared folder, no {MANIFEST} (an unfinished `prepare` "
                            f"leaves none); {_RERUN}")
        manifest = read_json_file(manifest_path, DataError, f"; {_RERUN}")
        spec = check_manifest(manifest_path, manifest)
        return cls(path, manifest, spec)

    @property
    def content_digest(self) -> str:
        return self.manifest["content_digest"]

    @property
    def quarantine(self) -> Path | None:
        """The bad rows file, None when the log had none."""
        path = self.path / QUARANTINE
        return path if path.is_file() else None

    def shard_path(self, i: int) -> Path:
        return self.path / self.shards[i]["path"]

    # ----------------------------------------------------------------- shards, checked

    def _damaged(self, i: int, what: str) -> DataError:
        return DataError(f"{self.shard_path(i)}: {what}: the shard is damaged; {_RERUN}")

    def verify(self) -> None:
        """Check every shard's size and SHA-256 against the manifest, reading each once in
        blocks: a damaged shard is refused before hours of training, not in the middle.

        Raises:
            DataError: naming the shard: missing, unreadable, of another size or digest.
        """
        for i, entry in enumerate(self.shards):
            try:
                size, sha = sha256_file(self.shard_path(i))
            except FileNotFoundError:
                raise DataError(f"{self.shard_path(i)}: missing (listed in {self.path / MANIFEST}); "
                                f"{_RERUN}") from None
            except OSError as e:
                raise DataError(f"{self.shard_path(i)}: unreadable ({e.strerror or e})") from None
            if size != entry["bytes"]:
                raise self._damaged(i, f"{size} bytes where the manifest lists {entry['bytes']}")
            if sha != entry["sha256"]:
                raise self._damaged(i, "SHA-256 digest mismatch")

    def read_shard(self, i: int, columns: Sequence[str] | None = None) -> pa.Table:
        """Shard ``i`` as a table, its bytes checked against the manifest's SHA-256 before
        they are parsed (read once into memory: the check and the parse see the same bytes).

        Raises:
            DataError: naming the shard: missing, unreadable, a digest mismatch, or content
                that is not SHARD_SCHEMA's or does not fit the manifest (row count, widths).
        """
        path, entry = self.shard_path(i), self.shards[i]
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise DataError(f"{path}: missing (listed in {self.path / MANIFEST}); {_RERUN}") from None
        except OSError as e:
            raise DataError(f"{path}: unreadable ({e.strerror or e})") from None
        if len(data) != entry["bytes"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise self._damaged(i, "SHA-256 digest mismatch")
        try:
            table = pq.read_table(pa.BufferReader(data), columns=list(columns) if columns else None)
        except (pa.ArrowException, OSError, ValueError) as e:
            raise self._damaged(i, f"not readable Parquet ({first_line(e)})") from None
        self._check_table(i, table)
        return table

    def _check_table(self, i: int, table: pa.Table) -> None:
        wanted = [SHARD_SCHEMA.field(name) for name in table.column_names if name in SHARD_SCHEMA.names]
        if len(wanted) != table.num_columns or any(
                table.schema.field(f.name).type != f.type for f in wanted):
            raise self._damaged(i, f"columns {table.schema} are not {SHARD_SCHEMA}")
        if table.num_rows != self.shards[i]["sessions"]:
            raise self._damaged(i, f"{table.num_rows} sessions where the manifest lists "
                                   f"{self.shards[i]['sessions']}")
        if any(table.column(name).null_count for name in table.column_names):
            raise self._damaged(i, "null values")
        for name, width in (("features", self.n_features), ("baseline", None)):
            if name in table.column_names:
                lengths = table.column(name).combine_chunks().value_lengths().to_numpy(zero_copy_only=False)
                ok = (lengths % width == 0).all() if width else (lengths == len(self.baseline_names)).all()
                if not ok:
                    raise self._damaged(i, f"{name} lists of another width than the manifest's")

    def length_counts(self) -> list[dict[str, np.ndarray]]:
        """Per shard, per split in it: how many sessions have each encoded length
        (``counts[i][split][L]``, L in 0..max_len), read once from the shards' split and
        features columns (what `dataset` needs to know its number of batches in advance)."""
        if self._length_counts is None:
            counts = []
            for i in range(len(self.shards)):
                table = self.read_shard(i, ["split", "features"])
                counts.append(self._histograms(table))
            self._length_counts = counts
        return self._length_counts

    def _histograms(self, table: pa.Table) -> dict[str, np.ndarray]:
        split = np.asarray(table.column("split").to_numpy(zero_copy_only=False), dtype=str)
        lengths = table.column("features").combine_chunks().value_lengths().to_numpy(
            zero_copy_only=False) // self.n_features
        return {name: np.bincount(lengths[split == name], minlength=self.spec.max_len + 1)
                for name in SPLIT_NAMES if (split == name).any()}

    def split_counts(self) -> list[dict[str, int]]:
        """Sessions of each split in each shard."""
        return [{name: int(h.sum()) for name, h in shard.items()} for shard in self.length_counts()]

    def rows(self, split: str, features: bool = True, baseline: bool = True,
             shards: Sequence[int] | None = None, chunk: int | None = None) -> Iterator[SplitRows]:
        """The sessions of ``split``, shard after shard, in canonical order.

        Args:
            split: a name of SPLIT_NAMES.
            features, baseline: read these columns (they are most of the bytes).
            shards: read only these shards (indices into ``shards``), in this order.
            chunk: yield at most this many sessions at a time (default: a shard's).

        Raises:
            DataError: as `read_shard`.
        """
        if split not in SPLIT_NAMES:
            raise ValueError(f"split {split!r}; expected one of {SPLIT_NAMES}")
        columns = ["key_digest", "split", "label", "start", "prefix_len", "features"]
        columns += ["baseline"] if baseline else []
        for i in range(len(self.shards)) if shards is None else shards:
            table = self.read_shard(i, columns)
            table = table.filter(pa.compute.equal(table.column("split"), split))
            step = chunk or max(len(table), 1)
            for a in range(0, len(table), step):
                yield self._split_rows(table.slice(a, step), features, baseline)

    def _split_rows(self, table: pa.Table, features: bool, baseline: bool) -> SplitRows:
        col = table.column("features").combine_chunks()
        lengths = col.value_lengths().to_numpy(zero_copy_only=False).astype(np.int64) // self.n_features
        values = None
        if features:
            values = col.flatten().to_numpy(zero_copy_only=False).reshape(-1, self.n_features)
        k = len(self.baseline_names)
        base = None
        if baseline:
            base = table.column("baseline").combine_chunks().flatten().to_numpy(
                zero_copy_only=False).reshape(-1, k)
        return SplitRows(np.asarray(table.column("key_digest").to_numpy(zero_copy_only=False), dtype=str),
                         table.column("label").to_numpy(zero_copy_only=False),
                         table.column("start").to_numpy(zero_copy_only=False),
                         table.column("prefix_len").to_numpy(zero_copy_only=False),
                         lengths, values, base)

    def read_split(self, split: str, features: bool = True, baseline: bool = True) -> SplitRows:
        """Every session of ``split`` in memory, in canonical order (validation, test, parity;
        the training split only where it fits).

        Raises:
            DataError: as `read_shard`.
        """
        return SplitRows.concat(list(self.rows(split, features, baseline)), self.n_features,
                                len(self.baseline_names))

    def read_splits(self, features: Sequence[str] = SPLIT_NAMES,
                    baseline: bool = True) -> dict[str, SplitRows]:
        """Every split in memory, in one pass over the shards (each read and checked once).

        Args:
            features: the splits whose encoded events are read; the others get
                ``values`` None (their events are streamed when needed).
            baseline: read the baseline counts.

        Returns:
            SplitRows per name of SPLIT_NAMES.

        Raises:
            DataError: as `read_shard`.
        """
        columns = ["key_digest", "split", "label", "start", "prefix_len", "features"]
        columns += ["baseline"] if baseline else []
        parts: dict[str, list[SplitRows]] = {name: [] for name in SPLIT_NAMES}
        counts = []
        for i in range(len(self.shards)):
            table = self.read_shard(i, columns)
            counts.append(self._histograms(table))
            for name in SPLIT_NAMES:
                mine = table.filter(pa.compute.equal(table.column("split"), name))
                if len(mine):
                    parts[name].append(self._split_rows(mine, name in features, baseline))
        self._length_counts = counts
        return {name: SplitRows.concat(rows, self.n_features, len(self.baseline_names))
                for name, rows in parts.items()}

    def recompute_content_digest(self) -> str:
        """The content digest of what the shards hold now (`verify` checks bytes; this checks
        that the bytes are the sessions the manifest describes)."""
        digest = ContentDigest()
        for i in range(len(self.shards)):
            table = self.read_shard(i, ["key_digest", "split", "label", "features"])
            col = table.column("features").combine_chunks()
            digest.update(table.column("key_digest").to_numpy(zero_copy_only=False),
                          table.column("split").to_numpy(zero_copy_only=False),
                          table.column("label").to_numpy(zero_copy_only=False),
                          col.flatten().to_numpy(zero_copy_only=False),
                          col.value_lengths().to_numpy(zero_copy_only=False) // self.n_features,
                          self.n_features)
        return digest.hexdigest()

    # ----------------------------------------------------------------- tf.data

    @contextmanager
    def shard_errors(self) -> Iterator[None]:
        """Within this block, a failure of a `dataset` pipeline caused by a damaged shard is
        raised as the shard's own one-line DataError, not as TensorFlow's wrapped error."""
        self._failures.clear()
        try:
            yield
        except Exception:
            if self._failures:
                raise self._failures[0] from None
            raise

    def dataset(self, split: str, batch_size: int, shuffle: bool, seed: int = 0,
                class_weights: Mapping[int, float] | None = None,
                shuffle_buffer: int = DEFAULT_SHUFFLE_SESSIONS,
                boundaries: Sequence[int] | None = None,
                worker: tuple[int, int] | None = None, cycle_length: int = 4,
                prefixes: Prefixes = Prefixes.WHOLE):
        """The sessions of ``split`` as a tf.data pipeline of length-bucketed batches.

        Each epoch (each new iterator) reads this split's shards through `read_shard`
        (digest checked), ``cycle_length`` at a time in turn (interleave), shuffles sessions
        in windows of ``shuffle_buffer``, and groups them by length (`length_buckets`): a
        batch is padded with zeros only to its longest session (real events first, as the
        Masking layer expects). Sessions left in a bucket at the end of a window wait for
        the next; the last partial batch of each bucket comes at the end of the epoch, so
        the number of batches is known in advance (Keras's ``steps_per_execution`` needs it).

        Batching is done in NumPy inside one generator: the equivalent of
        interleave + shuffle + ``bucket_by_sequence_length`` in tf.data, whose per-session
        element ops (ragged unbatch, shuffle, group_by_window) cost 3-4x the training steps
        of the short sessions that make up most of a log.

        Args:
            split: a name of SPLIT_NAMES.
            batch_size: sessions per batch (a bucket's last batch may be smaller).
            shuffle: interleave shards, shuffle their order and the sessions, anew each epoch
                (training); else shards are read one after the other and sessions keep
                canonical order (validation, evaluation).
            seed: the shuffles' seed (epoch k of this dataset uses (seed, k)).
            class_weights: {0: w0, 1: w1}: yield (x, y, sample_weight); None: (x, y).
            shuffle_buffer: sessions shuffled together.
            boundaries: bucket boundaries as `tf.data.Dataset.bucket_by_sequence_length`
                takes them; default `length_buckets` of the spec's max_len.
            worker: (index, count): read only the shards ``i`` with ``i % count == index``
                among this split's shards (a worker's share in multi-worker training).
            cycle_length: shards read at a time when shuffling.
            prefixes: `Prefixes`: RANDOM cuts each session at a random length, drawn anew
                each epoch, and batches sessions in shuffled order, not by length (in issue
                14's trial, batches of mixed length scored 0.656 test ROC-AUC on Taobao
                against 0.644 for length buckets, whole prefixes, means of 3 seeds; and the
                count of batches stays known). The stored rows are causal, so the first c
                rows of a session are the encoding of its first c events (of the last
                max_len events, for a session cut to max_len).

        Returns:
            tf.data.Dataset of (x (B, T, F) float32, y (B,) float32[, w (B,) float32]), of
            known cardinality. Errors of a damaged shard surface as TensorFlow errors; run
            the pipeline within `shard_errors` to get the shard's one-line DataError.
        """
        import tensorflow as tf

        histograms = self.length_counts()
        files = [i for i, h in enumerate(histograms) if split in h]
        if worker is not None:
            index, count = worker
            files = files[index::count]
        bounds = np.asarray(list(boundaries) if boundaries is not None else length_buckets(self.spec.max_len))
        per_length = sum((histograms[i][split] for i in files), np.zeros(self.spec.max_len + 1, np.int64))
        per_bucket = np.bincount(np.searchsorted(bounds, np.arange(len(per_length)), side="right"),
                                 weights=per_length, minlength=len(bounds) + 1)
        prefixes = Prefixes(prefixes)
        if prefixes is Prefixes.RANDOM:
            n_batches = -(-int(per_length.sum()) // batch_size)
        else:
            n_batches = int(sum(-(-int(n) // batch_size) for n in per_bucket))
        epochs = iter(range(1 << 62))

        def batches():
            random = shuffle or prefixes is Prefixes.RANDOM
            rng = np.random.default_rng((seed, next(epochs))) if random else None
            order = list(rng.permutation(files)) if shuffle else list(files)
            stream = self._cut if prefixes is Prefixes.RANDOM else self._bucketed
            window = max(shuffle_buffer, batch_size)  # a window must hold a whole batch
            try:
                for x, y in stream(order, split, batch_size, rng, window, bounds,
                                   cycle_length if shuffle else 1):
                    if class_weights is None:
                        yield x, y
                    else:
                        yield x, y, np.where(y > 0.5, class_weights[1], class_weights[0]).astype(np.float32)
            except UbpEdgeError as e:
                self._failures.append(e)
                raise

        vector = tf.TensorSpec((None,), tf.float32)
        signature = (tf.TensorSpec((None, None, self.n_features), tf.float32), vector)
        signature += (vector,) if class_weights is not None else ()
        ds = tf.data.Dataset.from_generator(batches, output_signature=signature)
        return ds.apply(tf.data.experimental.assert_cardinality(n_batches)).prefetch(tf.data.AUTOTUNE)

    def _interleaved(self, files: Sequence[int], split: str, cycle_length: int) -> Iterator[SplitRows]:
        """Chunks of ``split``'s sessions, taken in turn from ``cycle_length`` shards at a time
        (a finished shard's place goes to the next file), as tf.data's interleave does."""
        pending = list(files)
        active = []
        while pending or active:
            while pending and len(active) < max(1, cycle_length):
                active.append(self.rows(split, baseline=False, shards=[int(pending.pop(0))],
                                        chunk=READ_CHUNK_SESSIONS))
            for reader in list(active):
                chunk = next(reader, None)
                if chunk is None:
                    active.remove(reader)
                else:
                    yield chunk

    def _windows(self, files: Sequence[int], split: str, window: int, cycle_length: int,
                 carry: list[SplitRows]) -> Iterator[tuple[SplitRows, bool]]:
        """Windows of at least ``window`` sessions (the last one may be smaller), each with
        whether it is the last: first the sessions the caller put in ``carry`` after the
        previous window, then chunks of the shards (`_interleaved`)."""
        chunks = self._interleaved(files, split, cycle_length)
        done = False
        while not done:
            parts, held = list(carry), sum(len(c) for c in carry)
            carry.clear()
            while held < window:
                chunk = next(chunks, None)
                if chunk is None:
                    done = True
                    break
                parts.append(chunk)
                held += len(chunk)
            if not held:
                return
            yield SplitRows.concat(parts, self.n_features, 0), done

    def _bucketed(self, files: Sequence[int], split: str, batch_size: int, rng, window: int,
                  bounds: np.ndarray, cycle_length: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(x, y) batches of sessions of similar length; see `dataset`."""
        carry: list[SplitRows] = []
        for rows, done in self._windows(files, split, window, cycle_length, carry):
            order = rng.permutation(len(rows)) if rng is not None else np.arange(len(rows))
            emitted, kept = _bucket_batches(rows.lengths[order], bounds, batch_size, final=done)
            starts = np.cumsum(rows.lengths) - rows.lengths
            for members in emitted:
                index = order[members]
                yield _padded(rows.values, rows.lengths, starts, index), rows.label[index].astype(np.float32)
            if len(kept):
                carry.append(rows.take(order[kept]))

    def _cut(self, files: Sequence[int], split: str, batch_size: int, rng, window: int,
             bounds: np.ndarray, cycle_length: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(x, y) batches of one random prefix per session, in shuffled order; see `dataset`.
        Sessions short of a whole batch at the end of a window wait for the next, so an epoch
        holds ceil(sessions / batch_size) batches, the last one partial."""
        carry: list[SplitRows] = []
        for rows, done in self._windows(files, split, window, cycle_length, carry):
            order = rng.permutation(len(rows))
            whole = len(rows) if done else len(rows) - len(rows) % batch_size
            # 1 + floor(u * L): a length in 1..L, each equally likely.
            cut = 1 + np.floor(rng.random(len(rows)) * rows.lengths).astype(np.int64)
            starts = np.cumsum(rows.lengths) - rows.lengths
            for at in range(0, whole, batch_size):
                index = order[at:at + batch_size]
                yield _padded(rows.values, cut, starts, index), rows.label[index].astype(np.float32)
            if whole < len(rows):
                carry.append(rows.take(order[whole:]))


def _bucket_batches(lengths: np.ndarray, bounds: np.ndarray, batch_size: int,
                    final: bool) -> tuple[list[np.ndarray], np.ndarray]:
    """Group a stream of sessions (their lengths, in stream order) into batches by bucket,
    as ``group_by_window`` does: a bucket's batch is emitted when its ``batch_size``-th
    session arrives. With ``final`` the partial batches follow, bucket by bucket.

    Returns:
        (the batches, each as positions into the stream, in emission order; the positions of
        the sessions left in partial batches when not ``final``).
    """
    bucket = np.searchsorted(bounds, lengths, side="right")
    by_bucket = np.argsort(bucket, kind="stable")  # stream order kept within each bucket
    counts = np.bincount(bucket, minlength=len(bounds) + 1)
    first = np.cumsum(counts) - counts
    rank = np.empty(len(lengths), np.int64)
    rank[by_bucket] = np.arange(len(lengths)) - first[bucket[by_bucket]]
    full = rank < (counts[bucket] // batch_size) * batch_size
    closing = np.flatnonzero(full & (rank % batch_size == batch_size - 1))  # in stream order
    batches = [by_bucket[first[bucket[p]] + rank[p] - batch_size + 1:first[bucket[p]] + rank[p] + 1]
               for p in closing]
    rest = np.flatnonzero(~full)
    if not final:
        return batches, rest
    for b in np.unique(bucket[rest]):
        batches.append(rest[bucket[rest] == b])
    return batches, np.zeros(0, np.int64)


def _padded(values: np.ndarray, lengths: np.ndarray, starts: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Sessions ``index`` of a ragged array (stacked ``values``, ``lengths``, row ``starts``)
    as one (B, T, F) batch, zero-padded after their events to the longest of them."""
    lens = lengths[index]
    x = np.zeros((len(index), max(int(lens.max()), 1), values.shape[1]), np.float32)
    row = np.repeat(np.arange(len(index)), lens)
    step = np.arange(int(lens.sum())) - np.repeat(np.cumsum(lens) - lens, lens)
    x[row, step] = values[_ragged_rows(starts, lengths, index)]
    return x


def length_buckets(max_len: int, exact_up_to: int = 8, growth: float = 1.25) -> list[int]:
    """Bucket boundaries for sessions of 1..max_len events: one bucket per length up to
    ``exact_up_to`` (most prefixes are 1-3 events), then each bucket ``growth`` times the
    last, so a batch is padded by at most that factor.

    Returns:
        Ascending boundaries b: bucket k holds lengths in [b[k-1], b[k]).
    """
    bounds, b = [], 2
    while b <= max_len:
        bounds.append(b)
        b = b + 1 if b <= exact_up_to else max(b + 1, math.ceil(b * growth))
    return bounds


def predictor(model) -> Callable[[np.ndarray], np.ndarray]:
    """A Keras model as one traced function of (B, T, F) batches of any B and T: scoring
    batches of many lengths would otherwise retrace Keras's predict function per shape."""
    import tensorflow as tf

    width = model.inputs[0].shape[-1]
    call = tf.function(lambda x: model(x, training=False),
                       input_signature=[tf.TensorSpec((None, None, width), tf.float32)])
    return lambda x: call(tf.constant(x)).numpy()


def predict_by_length(predict: Callable[[np.ndarray], np.ndarray], values: np.ndarray,
                      lengths: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Probabilities for ragged sessions, in their order: sessions are sorted by length,
    batched, padded to the longest of their batch, and scattered back.

    Args:
        predict: (B, T, F) zero-padded float32 batch -> (B, 1) probabilities (`predictor`
            of a model with a Masking layer).
        values: the sessions' encoded events stacked, (sum(lengths), F) float32.
        lengths: events per session.
        batch_size: sessions per call.

    Returns:
        (N,) float32 probabilities, the i-th for the i-th session.
    """
    lengths = np.asarray(lengths, np.int64)
    n = len(lengths)
    out = np.zeros(n, np.float32)
    starts = np.cumsum(lengths) - lengths
    order = np.argsort(lengths, kind="stable")
    for a in range(0, n, batch_size):
        index = order[a:a + batch_size]
        x = _padded(values, lengths, starts, index)
        out[index] = np.asarray(predict(x)).reshape(-1)
    return out
