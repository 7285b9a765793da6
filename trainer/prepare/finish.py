"""The whole-log half of `prepare`, shared by both engines: time split, normalisation, shards.

Input: session records (trainer.prepare.records.RECORD_SCHEMA), in any order, from any
engine. Three steps, none holding more than a batch of records in Python:

1. The records are sorted by (start, key), the order in which `trainer.sessions.time_split`
   cuts the in-memory sessions, out of core (`sort_records`: ranges of start times, each
   sorted in memory). The first ``n_train`` are training sessions, the next
   ``n_validation`` validation, the rest test.
2. One pass learns the target tables from the training records (trainer.prepare.targets);
   from here on each record's rows are completed with its target features: a training
   session's from the tables of the other folds, any other session's from the shipped ones.
3. One pass over the training records sums their raw feature rows exactly
   (edge_runtime.moments), which gives the encoder's normalisation bit for bit as the in-memory
   path computes it, in any engine and any order.
4. One pass normalises every prefix and hands the sessions, in that canonical order, to
   `trainer.prepdir.PrepWriter`, which writes the shards and the content digest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from edge_runtime.features import FeatureEncoder
from edge_runtime.moments import ExactMoments
from trainer.files import writes_to
from trainer.prepare.local import scratch_file
from trainer.prepare.records import record_rows
from trainer.prepare.targets import folds_of
from trainer.rundir import SPLIT_NAMES
from trainer.sessions import split_sizes

BATCH_ROWS = 16_384
# Sessions sorted in memory at a time (records of about 0.8 KB each: ~20 MB), and the
# resolution of the start-time histogram that cuts the ranges.
RANGE_SESSIONS = 25_000
HISTOGRAM_BINS = 1 << 16


@dataclass(frozen=True)
class SplitPlan:
    """How many sessions, in canonical order, each split takes, and where it starts."""

    sizes: dict[str, int]
    validation_from_ts: float = float("nan")
    test_from_ts: float = float("nan")

    @classmethod
    def of(cls, n: int, validation: float, test: float) -> SplitPlan:
        """The sizes `trainer.sessions.time_split` gives ``n`` scorable sessions.

        Raises:
            ConfigError: a split would be empty (the message of time_split).
        """
        return cls(dict(zip(SPLIT_NAMES, split_sizes(n, validation, test), strict=True)))

    def names(self, first_rank: int, count: int) -> np.ndarray:
        """The split name of the sessions ranked ``first_rank .. first_rank + count - 1``."""
        bounds = np.cumsum([self.sizes[name] for name in SPLIT_NAMES])
        ranks = np.arange(first_rank, first_rank + count)
        return np.asarray(SPLIT_NAMES, dtype=object)[np.searchsorted(bounds, ranks, side="right")]


def sort_records(records: list[Path], out: Path, scratch: Path) -> int:
    """Write ``records`` (Parquet) sorted by (start, key) to ``out`` (an Arrow IPC file), in
    bounded memory.

    A range-partitioned external sort with pyarrow: a histogram of the start times cuts them
    into ranges of about RANGE_SESSIONS sessions; the records are appended to their range's
    file, and each range, read back in time order, is sorted in memory (Arrow compares keys
    byte by byte, as numpy compares str). Ranges and the output are Arrow IPC files: scratch
    written once and read once, where Parquet's encoding cost more than the sort. DuckDB's
    ORDER BY was tried first: with the list columns of raw features it ran out of its memory
    limit (128-256 MB) on a 1 M-event log and peaked at 1.3 GB RSS with 512 MB on 4 M events.

    Returns:
        The number of records.
    """
    scratch.mkdir(parents=True, exist_ok=True)
    bounds, n = _start_ranges(records)
    ranges = [scratch / f"range-{k:05d}.arrow" for k in range(len(bounds) + 1)]
    schema = pq.read_schema(records[0])
    with ExitStack() as stack:
        writers: dict[int, pa.ipc.RecordBatchFileWriter] = {}
        for path in records:
            for group in row_groups(path):
                batch = group.combine_chunks()
                which = np.searchsorted(bounds, batch.column("start").to_numpy(), side="right")
                order = np.argsort(which, kind="stable")
                which, batch = which[order], batch.take(pa.array(order))
                cuts = np.flatnonzero(np.r_[True, which[1:] != which[:-1], True])
                for lo, hi in zip(cuts[:-1], cuts[1:], strict=True):
                    k = int(which[lo])
                    if k not in writers:
                        writers[k] = stack.enter_context(scratch_file(ranges[k], schema))
                    with writes_to(ranges[k]):
                        writers[k].write_table(batch.slice(lo, hi - lo))
    with scratch_file(out, schema) as writer, writes_to(out):
        for path in ranges:
            if path.exists():
                with pa.OSFile(str(path)) as f:
                    table = pa.ipc.open_file(f).read_all()
                writer.write_table(table.sort_by([("start", "ascending"), ("key", "ascending")]),
                                   max_chunksize=BATCH_ROWS)
                path.unlink()
    return n


def _start_ranges(records: list[Path]) -> tuple[np.ndarray, int]:
    """Start times that cut the records into ranges of at most about RANGE_SESSIONS each
    (a range is [bound k-1, bound k)), from a histogram of one pass over the start column;
    and the number of records."""
    low, high, n = np.inf, -np.inf, 0
    for path in records:
        for batch in row_groups(path, ["start"]):
            starts = batch.column("start").to_numpy()
            if len(starts):
                low, high, n = min(low, starts.min()), max(high, starts.max()), n + len(starts)
    if n <= RANGE_SESSIONS or not high > low:
        return np.zeros(0), n
    edges = np.linspace(low, high, HISTOGRAM_BINS + 1)
    counts = np.zeros(HISTOGRAM_BINS, np.int64)
    for path in records:
        for batch in row_groups(path, ["start"]):
            counts += np.histogram(batch.column("start").to_numpy(), bins=edges)[0]
    bounds, filled = [], 0
    for k, count in enumerate(counts):
        if filled and filled + count > RANGE_SESSIONS:
            bounds.append(edges[k])
            filled = 0
        filled += count
    return np.asarray(bounds, np.float64), n


def row_groups(path: Path, columns: list[str] | None = None) -> Iterator[pa.Table]:
    """A Parquet file's row groups one at a time. (`ParquetFile.iter_batches` read ahead: on
    a 16 M-event log its memory grew with the file, to 2.5 GB.)"""
    file = pq.ParquetFile(path)
    for i in range(file.num_row_groups):
        yield file.read_row_group(i, columns=columns)


def batches(sorted_records: Path, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    """The sorted records (an Arrow IPC file of BATCH_ROWS batches) batch by batch."""
    with pa.OSFile(str(sorted_records)) as f:
        reader = pa.ipc.open_file(f)
        for i in range(reader.num_record_batches):
            batch = reader.get_batch(i)
            yield batch.select(columns) if columns else batch


def _rows(batch: pa.RecordBatch, names: np.ndarray, encoder: FeatureEncoder,
          by_fold: list[FeatureEncoder] | None) -> tuple[np.ndarray, np.ndarray]:
    """The raw rows of a batch of records (and each session's count): target features from
    ``encoder``'s tables, except for training sessions, which read their fold's encoder
    (``by_fold[f]``: the tables learned without fold f)."""
    if by_fold is None or not encoder.tables:
        return record_rows(batch, encoder)
    fold = np.full(batch.num_rows, -1, np.int64)
    train = names == "train"
    fold[train] = folds_of(batch.column("key_digest").to_numpy(zero_copy_only=False)[train])
    return record_rows(batch, encoder, by_fold, fold)


def fit_normalisation(sorted_records: Path, plan: SplitPlan, encoder: FeatureEncoder,
                      by_fold: list[FeatureEncoder] | None = None) -> SplitPlan:
    """Fit ``encoder`` on the training records' raw rows (exact sums; target features out of
    fold, `_rows`); return the plan with the start times that begin the validation and test
    splits."""
    n_features = len(encoder.features)
    moments = ExactMoments(n_features)
    n_train, n_val = plan.sizes["train"], plan.sizes["validation"]
    rank, cuts = 0, {}
    for batch in batches(sorted_records):
        count = batch.num_rows
        starts = batch.column("start").to_numpy()
        for name, at in (("validation", n_train), ("test", n_train + n_val)):
            if rank <= at < rank + count:
                cuts[name] = float(starts[at - rank])
        if rank < n_train:
            train_part = batch.slice(0, min(count, n_train - rank))
            raw, _ = _rows(train_part, np.full(train_part.num_rows, "train"), encoder, by_fold)
            moments.add(raw.reshape(-1, n_features))
        rank += count
    mean, std = moments.mean_std()
    encoder.set_normalisation(mean, std)
    return SplitPlan(plan.sizes, cuts["validation"], cuts["test"])


def write_sessions(sorted_records: Path, plan: SplitPlan, encoder: FeatureEncoder, writer,
                   on_batch: Callable[[int], None] | None = None,
                   by_fold: list[FeatureEncoder] | None = None) -> dict[str, dict[str, int]]:
    """Normalise every record and give it to ``writer`` (a trainer.prepdir.PrepWriter) in
    canonical order.

    Returns:
        Sessions and positives per split.
    """
    per_split = {name: {"sessions": 0, "positives": 0} for name in SPLIT_NAMES}
    rank = 0
    for batch in batches(sorted_records):
        count = batch.num_rows
        names = plan.names(rank, count)
        label = batch.column("label").to_numpy(zero_copy_only=False).astype(np.int8)
        raw, lengths = _rows(batch, names, encoder, by_fold)
        rows = encoder.normalise(raw)
        baseline = batch.column("baseline").flatten().to_numpy(zero_copy_only=False).reshape(count, -1)
        writer.add({"key_digest": batch.column("key_digest").to_numpy(zero_copy_only=False),
                    "split": names, "label": label,
                    "start": batch.column("start").to_numpy(),
                    "prefix_len": batch.column("prefix_len").to_numpy(),
                    "features": rows, "lengths": lengths,
                    "baseline": baseline})
        for name in SPLIT_NAMES:
            mine = names == name
            per_split[name]["sessions"] += int(mine.sum())
            per_split[name]["positives"] += int(label[mine].sum())
        rank += count
        if on_batch is not None:
            on_batch(rank)
    return per_split
