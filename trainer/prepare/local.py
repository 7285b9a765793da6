"""The local engine of `prepare`: a log larger than memory, on one machine, in flat memory.

Two passes, each holding a bounded piece at a time:

1. `partition`: the log's blocks (trainer.prepare.blocks) are validated and their events
   appended to one of N Arrow IPC buckets by a hash of the user, in file order; bad rows
   are appended to the quarantine as they come. N grows with the log's size (a gzip log's is
   estimated at 4x; a pipe's is unknown: UNKNOWN_SIZE_BUCKETS), so a bucket holds about
   BUCKET_TEXT_BYTES of log text whatever the log's size.
2. `bucket_records`: each bucket, which holds all events of its users, goes through
   `session_records` (the in-memory code on those users) and its records are appended to
   one Parquet file for `trainer.prepare.finish`.

Why hash buckets and not a global sort by (user, time): everything per user needs only
that user's events together, not users in order, and a hash partition is one streaming
pass with pyarrow, where an external sort of the events would be a second copy of the log
sorted on disk. The one global sort `prepare` needs, of sessions by start time, is
finish.py's, on records that are fewer than the events.
"""

from __future__ import annotations

import os
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from trainer.files import atomic_open, writes_to
from trainer.prepare.blocks import DEFAULT_BLOCK_BYTES, EVENT_SCHEMA, LogReader
from trainer.prepare.records import (
    COUNT_KEYS,
    RECORD_SCHEMA,
    RecordSettings,
    partition_column,
    session_records,
)
from trainer.quarantine import BadRows
from trainer.readers import check_has_events

# Log text per bucket: a bucket is processed in memory, so this bounds `prepare`'s memory
# whatever the log's size. On a 4 M-event synthetic log (AMD EPYC), 8 MB buckets with 8 MB
# blocks peaked at 447 MB RSS in 10.2 s; 32 MB buckets with 64 MB blocks at 1,313 MB in 23.9 s.
BUCKET_TEXT_BYTES = 8 << 20
# Every bucket's writer stays open during pass 1: at most this many (open files), so logs
# of more than 4 GB of text get larger buckets.
MAX_BUCKETS = 512
# Scratch Parquet (written once, read once, removed): no compression, no dictionary attempt,
# no statistics; with them, encoding took 5.1 of the 18.8 s of a 4 M-event `prepare`.
# (Buckets and the sort's ranges are Arrow IPC, cheaper still; records stay Parquet, as
# Spark writes them.)
SCRATCH = {"compression": "none", "use_dictionary": False, "write_statistics": False}
# When the log's size cannot be known before reading (a pipe), this many buckets.
UNKNOWN_SIZE_BUCKETS = 64


@dataclass
class ReadTally:
    """What reading the whole log found: rows, bad rows by reason, and the flags the
    encoder's features depend on (decided on the whole log, as in memory)."""

    rows_read: int = 0
    events: int = 0
    bad: Counter = field(default_factory=Counter)
    first_bad: BadRows | None = None
    has_category: bool = False
    has_price: bool = False
    has_user_ids: bool = False
    log_sessions: bool = False

    def add(self, block_events: pa.Table, bad: BadRows, rows_read: int) -> None:
        self.rows_read += rows_read
        self.events += block_events.num_rows
        self.bad.update(bad.counts)
        if bad.total and self.first_bad is None:
            self.first_bad = bad
        if block_events.num_rows:
            category = block_events.column("category")
            self.has_category |= bool(pc.any(pc.not_equal(pc.fill_null(category, ""), "")).as_py())
            self.has_price |= bool(pc.any(pc.is_finite(block_events.column("price"))).as_py())

    def check(self, path: Path, fmt: str, kind: str) -> None:
        """DataError when the log has no data row, or no row that parses (as read_log)."""
        check_has_events(path, kind, fmt, self.rows_read, self.events, self.first_bad)

    def bad_summary(self) -> dict:
        return {"total": sum(self.bad.values()), "by_reason": dict(sorted(self.bad.items()))}


def bucket_count(path: Path) -> int:
    """Buckets for a log: one per BUCKET_TEXT_BYTES of text (gzip counted 4x its size)."""
    try:
        st = os.stat(path)
    except OSError:
        return UNKNOWN_SIZE_BUCKETS
    if not os.path.isfile(path):
        return UNKNOWN_SIZE_BUCKETS
    with open(path, "rb") as f:
        compressed = f.read(2) == b"\x1f\x8b"
    size = st.st_size * (4 if compressed else 1)
    return int(min(MAX_BUCKETS, max(1, -(-size // BUCKET_TEXT_BYTES))))


def user_buckets(users: pa.Array, n: int) -> np.ndarray:
    """The bucket of each id (user or session): CRC-32 of its UTF-8 bytes modulo ``n`` (stable
    across processes, unlike Python's hash); each distinct id of the block is hashed once."""
    if n == 1:
        return np.zeros(len(users), np.int64)
    encoded = pc.dictionary_encode(users).combine_chunks() if isinstance(users, pa.ChunkedArray) \
        else pc.dictionary_encode(users)
    per_id = np.fromiter((zlib.crc32(u.encode("utf-8", "surrogatepass")) % n
                          for u in encoded.dictionary.to_pylist()), np.int64, len(encoded.dictionary))
    return per_id[encoded.indices.to_numpy(zero_copy_only=False)]


def partition(reader: LogReader, folder: Path, quarantine: Path, n_buckets: int,
              block_bytes: int = DEFAULT_BLOCK_BYTES,
              on_block: Callable[[int], None] | None = None) -> tuple[list[Path], ReadTally]:
    """Pass 1: the log's events into ``n_buckets`` Arrow IPC files by user, bad rows into
    ``quarantine`` (JSON lines, as BadRows.write; not created when there are none).

    Returns:
        (the bucket files that received events, the tally of what was read).
    """
    folder.mkdir(parents=True, exist_ok=True)
    writers: dict[int, pa.ipc.RecordBatchFileWriter] = {}
    tally = ReadTally()
    with ExitStack() as stack:
        quarantined = None
        for block in reader.blocks(block_bytes):
            if block.bad.total:
                if quarantined is None:
                    quarantined = stack.enter_context(atomic_open(quarantine, "w"))
                quarantined.writelines(block.bad.lines())
            tally.add(block.events, block.bad, block.rows_read)
            tally.has_user_ids, tally.log_sessions = block.has_user_ids, block.log_sessions
            key = partition_column(block.has_user_ids, block.log_sessions)
            _append_to_buckets(block.events, key, n_buckets, folder, writers, stack)
            if on_block is not None:
                on_block(tally.rows_read)
    return [bucket_path(folder, b) for b in sorted(writers)], tally


@contextmanager
def scratch_file(path: Path, schema: pa.Schema) -> Iterator[pa.ipc.RecordBatchFileWriter]:
    """An Arrow IPC scratch file, closed on the way out. A refused write is one line naming
    the file (trainer.files.writes_to); when the block already failed, the writer's own close
    error (its footer cannot be written either) does not replace that line."""
    with writes_to(path):
        writer = pa.ipc.new_file(path, schema)
    try:
        yield writer
    except BaseException:
        with suppress(Exception):
            writer.close()
        raise
    with writes_to(path):
        writer.close()


def bucket_path(folder: Path, bucket: int) -> Path:
    """A bucket's file: Arrow IPC, scratch written in pieces and read whole once (Parquet's
    encoding cost more than the work on the events)."""
    return folder / f"bucket-{bucket:05d}.arrow"


def read_bucket(path: Path) -> pa.Table:
    """All events of a bucket (EVENT_SCHEMA)."""
    with pa.OSFile(str(path)) as f:
        return pa.ipc.open_file(f).read_all()


def _append_to_buckets(events: pa.Table, key: str, n: int, folder: Path,
                       writers: dict[int, pa.ipc.RecordBatchFileWriter], stack: ExitStack) -> None:
    """Append a block's events to the buckets of their ``key`` (user or session), keeping
    file order in each."""
    if events.num_rows == 0:
        return
    bucket = user_buckets(events.column(key), n)
    order = np.argsort(bucket, kind="stable")
    sorted_buckets = bucket[order]
    events = events.take(pa.array(order))
    bounds = np.flatnonzero(np.r_[True, sorted_buckets[1:] != sorted_buckets[:-1], True])
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        b = int(sorted_buckets[lo])
        path = bucket_path(folder, b)
        if b not in writers:
            writers[b] = stack.enter_context(scratch_file(path, EVENT_SCHEMA))
        with writes_to(path):
            writers[b].write_table(events.slice(lo, hi - lo))


def bucket_records(buckets: list[Path], settings: RecordSettings, out: Path,
                   on_bucket: Callable[[int, int], None] | None = None) -> dict:
    """Pass 2: every bucket's session records appended to ``out`` (RECORD_SCHEMA Parquet).

    Returns:
        The summed counts (trainer.prepare.records.COUNT_KEYS, min_ts, max_ts).
    """
    totals: dict = dict.fromkeys(COUNT_KEYS, 0)
    span = [np.inf, -np.inf]
    with writes_to(out), pq.ParquetWriter(out, RECORD_SCHEMA, **SCRATCH) as writer:
        for k, path in enumerate(buckets):
            records, counts = session_records(read_bucket(path), settings)
            writer.write_table(records)
            for key in COUNT_KEYS:
                totals[key] += counts[key]
            if counts["events"]:
                span = [min(span[0], counts["min_ts"]), max(span[1], counts["max_ts"])]
            path.unlink()  # its records are out: give the disk back as we go
            if on_bucket is not None:
                on_bucket(k + 1, len(buckets))
    totals["time_span_utc"] = span
    return totals


def shared_session_ids(buckets: list[Path]) -> frozenset[str]:
    """Session ids that hold events of more than one user, over all buckets (DuckDB, out of
    core): their sessions are keyed SESSION@USER in every engine (trainer.sessions)."""
    import duckdb
    import pyarrow.dataset as ds

    con = duckdb.connect()
    try:
        # A registered pyarrow dataset is scanned in batches: the buckets are never all in memory.
        con.register("events", ds.dataset([str(p) for p in buckets], format="ipc"))
        rows = con.execute("SELECT session FROM events WHERE session IS NOT NULL "
                           "GROUP BY session HAVING count(DISTINCT user) > 1").fetchall()
    finally:
        con.close()
    return frozenset(r[0] for r in rows)
