"""The whole-log half of `prepare`, shared by both engines: time split, normalisation, shards.

Input: session records (trainer.prepare.records.RECORD_SCHEMA), in any order, from any
engine. Three steps, none holding more than a batch of records in Python:

1. DuckDB sorts the records by (start, key), the order in which `trainer.sessions.time_split`
   cuts the in-memory sessions, spilling to disk past its memory limit. The first
   ``n_train`` are training sessions, the next ``n_validation`` validation, the rest test.
2. One pass over the training records sums their raw feature rows exactly
   (edge_runtime.moments), which gives the encoder's normalisation bit for bit as the in-memory
   path computes it, in any engine and any order.
3. One pass normalises every prefix and hands the sessions, in that canonical order, to
   `trainer.prepdir.PrepWriter`, which writes the shards and the content digest.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from edge_runtime.errors import ConfigError, first_line
from edge_runtime.features import FeatureEncoder
from edge_runtime.moments import ExactMoments
from trainer.files import OutputError
from trainer.rundir import SPLIT_NAMES

SORT_MEMORY = os.environ.get("UBP_EDGE_SORT_MEMORY", "128MB")
BATCH_ROWS = 65_536


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
        n_test, n_val = int(round(n * test)), int(round(n * validation))
        n_train = n - n_val - n_test
        if min(n_train, n_val, n_test) < 1:
            raise ConfigError(f"{n} scorable sessions cannot be split {1 - validation - test:.2f}/"
                              f"{validation:.2f}/{test:.2f}: a split would be empty")
        return cls(dict(zip(SPLIT_NAMES, (n_train, n_val, n_test), strict=True)))

    def names(self, first_rank: int, count: int) -> np.ndarray:
        """The split name of the sessions ranked ``first_rank .. first_rank + count - 1``."""
        bounds = np.cumsum([self.sizes[name] for name in SPLIT_NAMES])
        ranks = np.arange(first_rank, first_rank + count)
        return np.asarray(SPLIT_NAMES, dtype=object)[np.searchsorted(bounds, ranks, side="right")]


def sort_records(records: list[Path], out: Path, scratch: Path, threads: int = 2) -> int:
    """Write ``records`` sorted by (start, key) to ``out`` with DuckDB, out of core.

    Returns:
        The number of records.
    """
    import duckdb

    scratch.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    try:
        con.execute(f"SET memory_limit='{SORT_MEMORY}'")
        con.execute(f"SET temp_directory='{_sql_text(scratch)}'")
        con.execute(f"SET threads={int(threads)}")
        con.execute("SET preserve_insertion_order=true")
        files = [str(p) for p in records]
        # Keys compare byte by byte (DuckDB's default collation), as numpy compares str.
        try:
            con.execute(f"COPY (SELECT * FROM read_parquet(?) ORDER BY start, key) TO '{_sql_text(out)}' "
                        f"(FORMAT parquet, COMPRESSION uncompressed, ROW_GROUP_SIZE {BATCH_ROWS})", [files])
        except duckdb.IOException as e:  # its own class, not an OSError: no space, a size limit
            raise OutputError(f"{out}: cannot write the sorted sessions ({first_line(e, limit=200)})") \
                from None
        return int(con.execute("SELECT count(*) FROM read_parquet(?)", [str(out)]).fetchone()[0])
    finally:
        con.close()


def _sql_text(path: Path) -> str:
    return str(path).replace("'", "''")


def _batches(sorted_records: Path, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    yield from pq.ParquetFile(sorted_records).iter_batches(batch_size=BATCH_ROWS, columns=columns)


def fit_normalisation(sorted_records: Path, plan: SplitPlan, encoder: FeatureEncoder) -> SplitPlan:
    """Fit ``encoder`` on the training records' raw rows (exact sums); return the plan with
    the start times that begin the validation and test splits."""
    n_features = len(encoder.features)
    moments = ExactMoments(n_features)
    n_train, n_val = plan.sizes["train"], plan.sizes["validation"]
    rank, cuts = 0, {}
    for batch in _batches(sorted_records, ["start", "raw"]):
        count = batch.num_rows
        starts = batch.column("start").to_numpy()
        for name, at in (("validation", n_train), ("test", n_train + n_val)):
            if rank <= at < rank + count:
                cuts[name] = float(starts[at - rank])
        if rank < n_train:
            train_part = batch.slice(0, min(count, n_train - rank)).column("raw")
            moments.add(train_part.flatten().to_numpy(zero_copy_only=False).reshape(-1, n_features))
        rank += count
    mean, std = moments.mean_std()
    encoder.set_normalisation(mean, std)
    return SplitPlan(plan.sizes, cuts["validation"], cuts["test"])


def write_sessions(sorted_records: Path, plan: SplitPlan, encoder: FeatureEncoder, writer,
                   on_batch: Callable[[int], None] | None = None) -> dict[str, dict[str, int]]:
    """Normalise every record and give it to ``writer`` (a trainer.prepdir.PrepWriter) in
    canonical order.

    Returns:
        Sessions and positives per split.
    """
    n_features = len(encoder.features)
    per_split = {name: {"sessions": 0, "positives": 0} for name in SPLIT_NAMES}
    rank = 0
    for batch in _batches(sorted_records):
        count = batch.num_rows
        names = plan.names(rank, count)
        label = batch.column("label").to_numpy(zero_copy_only=False).astype(np.int8)
        raw = batch.column("raw")
        rows = encoder.normalise(raw.flatten().to_numpy(zero_copy_only=False).reshape(-1, n_features))
        baseline = batch.column("baseline").flatten().to_numpy(zero_copy_only=False).reshape(count, -1)
        writer.add({"key_digest": batch.column("key_digest").to_numpy(zero_copy_only=False),
                    "split": names, "label": label,
                    "start": batch.column("start").to_numpy(),
                    "prefix_len": batch.column("prefix_len").to_numpy(),
                    "features": rows, "lengths": raw.value_lengths().to_numpy() // n_features,
                    "baseline": baseline})
        for name in SPLIT_NAMES:
            mine = names == name
            per_split[name]["sessions"] += int(mine.sum())
            per_split[name]["positives"] += int(label[mine].sum())
        rank += count
        if on_batch is not None:
            on_batch(rank)
    return per_split
