"""The Spark engine of `prepare`: the per-user stage on Spark executors, same records as local.

Two Spark stages, then the shared `trainer.prepare.finish`:

1. `spark_events`: the log is validated by Spark tasks, each on a piece of it, with the
   reader of the local engine (`LogReader.validate_text` on whole lines of a text log,
   `parse_parquet_rows` on row groups of a Parquet log), so a row is good or bad, and for
   which reason, as in every engine. Each task writes its canonical events as a Parquet file
   and its bad rows as quarantine lines; the driver concatenates those in file order into the
   quarantine. A text log is cut into byte ranges, and each range starts at the first line
   end after its first byte that is outside a quoted CSV field: a first Spark job counts the
   line ends and quotes of every range, so each task knows its line numbers and whether its
   first byte is inside quotes without reading what comes before it. Gzip (one stream) and
   DIGINETICA (a views file with side files) are read by one task, block by block.
2. `bucket_map`: the events, read back as a DataFrame, go ``groupBy(bucket of the user)``
   into ``applyInArrow``: each group holds every event of its users and goes through
   `trainer.prepare.records.session_records`, the code the local engine runs on its hash
   buckets, and its records are written as a Parquet file for `finish`. Arrow rather than
   pandas: events and records are Arrow tables on both sides, and a column of lists
   (the raw features) would go through Python objects in pandas.

What needs the whole log before stage 2 (the features' flags: any category, any price;
session ids shared by several users) comes from the tasks' tallies and one Spark
aggregation.

On ``local[N]`` everything is on this machine. On a cluster, the executors need this project
installed (the same version, with the ``[spark]`` extra), and the log and the work folder (in
PREP_DIR's staging folder) on a file system they all see, as the tasks read the one and write
the other; Spark's own shuffle files go to ``spark.local.dir``.

`trainer.scoring_at_scale` scores a log at scale with the same two stages.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from edge_runtime.errors import ConfigError, DataError
from trainer.files import atomic_open, atomic_path
from trainer.formats import FormatPreset
from trainer.logsource import EventLogSource
from trainer.prepare.blocks import EVENT_SCHEMA, PARQUET_BATCH_ROWS, EventBlock, LogReader
from trainer.prepare.local import ReadTally, bucket_count
from trainer.prepare.records import (
    COUNT_KEYS,
    RECORD_SCHEMA,
    RecordSettings,
    partition_column,
    session_records,
)
from trainer.quarantine import BadRows
from trainer.spark_session import spark_errors, spark_session

# A text log is cut into ranges of ``block_bytes`` (PrepareConfig.block_bytes), and into at
# least as many as Spark runs tasks at once unless they would be smaller than this.
MIN_RANGE_BYTES = 1 << 20
SCAN_CHUNK = 1 << 22
# What one bucket task returns: where its records are and what it counted.
BUCKET_SUMMARY = ("bucket long, path string, " + ", ".join(f"{key} long" for key in COUNT_KEYS)
                  + ", min_ts double, max_ts double")


@dataclass(frozen=True)
class ReadPlan:
    """What every validation task needs to know about the log (small, picklable).

    Attributes:
        source: the log, read with ``strict`` off in the tasks (the driver applies
            ``--strict`` to the first bad row of the file, as the local engine does).
        preset: the format as the driver's reader resolved it (the ``auto`` time unit decided
            on the first block): every task must read the log alike.
        kind: ``csv``, ``jsonl`` or ``parquet``.
        size: the file's size in bytes when planned (a file that changes is refused).
        data_start: the byte offset of the first data line (after a UTF-8 byte-order mark and
            the CSV header).
        header_lines: the header's lines (data starts on line ``header_lines + 1``).
        quoted: line ends inside a quoted CSV field do not end a record.
        folder: where the tasks write their events and bad rows.
    """

    source: EventLogSource
    preset: FormatPreset
    kind: str
    size: int
    data_start: int
    header_lines: int
    quoted: bool
    folder: str


@dataclass(frozen=True)
class Piece:
    """One validation task: a byte range of a text log, row groups of a Parquet log, or the
    whole log read block by block (``whole``)."""

    index: int
    start: int = 0          # text: first byte of the range; Parquet: first row group
    end: int = 0            # text: the next range's start (the file's size for the last)
    lines_before: int = 0   # text: line ends between the data's start and ``start``
    quote_parity: int = 0   # text: quotes between the data's start and ``start``, modulo 2
    next_parity: int = 0    # text: the same parity at ``end``
    first_row: int = 1      # Parquet: the 1-based number of the piece's first row
    whole: bool = False


@dataclass
class PieceResult:
    """What a validation task returns to the driver (its events and bad rows are in files)."""

    index: int
    events_path: str | None
    bad_path: str | None
    rows_read: int
    events: int
    bad: Counter
    first_bad: dict | None
    has_category: bool
    has_price: bool
    has_user_ids: bool | None
    log_sessions: bool | None


def spark_records(reader: LogReader, config, work: Path, quarantine: Path,
                  stage: Callable[[str], None]) -> tuple[list[Path], ReadTally, dict]:
    """The Spark engine's part of `trainer.prepare.prepare`: the log's session records.

    Args:
        reader: the log, opened (format, header and time unit resolved) on the driver.
        config: the PrepareConfig (``spark_master``, ``block_bytes``, ``buckets``, settings).
        work: a scratch folder every executor can write (inside the staging folder).
        quarantine: where the bad rows go (JSON lines in line order; not created when none).
        stage: reports progress, one line per stage.

    Returns:
        (the records' Parquet files, RECORD_SCHEMA; the tally of what was read; the counts
        of trainer.prepare.records.COUNT_KEYS summed, with ``time_span_utc``).

    Raises:
        DataError: the log cannot be read, has no valid row, or a bad row with ``--strict``.
        ConfigError: no pyspark or Java, a bad master; SparkJobError: Spark failed.
    """
    from pyspark.sql import SparkSession

    started = SparkSession.getActiveSession() is None
    spark = spark_session(config.spark_master, app="ubp-edge prepare")
    try:
        with spark_errors("prepare"):
            stage("reading and validating the log (Spark)")
            event_files, tally = spark_events(spark, reader, work / "events", quarantine, config.block_bytes)
            events = spark.read.parquet(*[str(p) for p in event_files])
            shared = shared_sessions(events) if tally.log_sessions else frozenset()
            settings = RecordSettings.for_log(tally, config.gap_minutes, config.max_len, config.use_context,
                                              reader.preset.utc_offset_hours, shared)
            n_buckets = config.buckets or max(bucket_count(reader.path),
                                              spark.sparkContext.defaultParallelism)
            stage(f"sessions, labels, features (Spark, {n_buckets} buckets of users)")
            task = functools.partial(records_of_bucket, settings=settings, folder=str(work / "records"))
            summaries = bucket_map(events, partition_column(tally.has_user_ids, tally.log_sessions),
                                   n_buckets, task, BUCKET_SUMMARY)
    finally:
        if started:
            spark.stop()
    records = [Path(row["path"]) for row in summaries]
    return records, tally, sum_counts(summaries)


def sum_counts(summaries: list[dict]) -> dict:
    """The buckets' counts summed, with ``time_span_utc`` [first, last event]."""
    totals: dict = {key: sum(int(row[key]) for row in summaries) for key in COUNT_KEYS}
    spans = [(row["min_ts"], row["max_ts"]) for row in summaries if row["events"]]
    totals["time_span_utc"] = [min(a for a, _ in spans), max(b for _, b in spans)] if spans \
        else [float("inf"), float("-inf")]
    return totals


# --------------------------------------------------------------------------- stage 1: validate

def spark_events(spark, reader: LogReader, folder: Path, quarantine: Path,
                 block_bytes: int) -> tuple[list[Path], ReadTally]:
    """Validate the log in Spark tasks into canonical events (EVENT_SCHEMA Parquet files).

    Args:
        spark: the SparkSession.
        reader: the log as the driver opened it.
        folder: where the tasks write (created).
        quarantine: the bad rows' file, written here in line order when there are any.
        block_bytes: about how much log text one task validates.

    Returns:
        (the events' Parquet files, in file order; the tally of rows, bad rows and flags).

    Raises:
        DataError: no data row, no valid row, a bad row with ``--strict`` (the file's first),
            or the log changed while it was read.
        ConfigError: the log is a pipe, which Spark's tasks cannot read.
    """
    folder.mkdir(parents=True, exist_ok=True)
    plan, pieces = plan_pieces(spark, reader, folder, block_bytes)
    sc = spark.sparkContext
    results = sc.parallelize(pieces, len(pieces)).map(functools.partial(validate_piece, plan)).collect()
    results.sort(key=lambda r: r.index)
    tally = ReadTally()
    for r in results:
        tally.rows_read += r.rows_read
        tally.events += r.events
        tally.bad.update(r.bad)
        tally.has_category |= r.has_category
        tally.has_price |= r.has_price
        if r.has_user_ids is not None:
            tally.has_user_ids, tally.log_sessions = r.has_user_ids, r.log_sessions
        if r.first_bad is not None and tally.first_bad is None:
            tally.first_bad = BadRows(str(reader.path))
            tally.first_bad.add(r.first_bad["line"], r.first_bad["reason"], r.first_bad["raw"],
                                r.first_bad["detail"], source=r.first_bad["source"])
    if reader.strict and tally.first_bad is not None:
        total = sum(tally.bad.values())
        raise DataError(f"{tally.first_bad.first_message()} ({total} bad rows; --strict)")
    tally.check(reader.path, reader.preset.name, reader.kind)
    bad_parts = [Path(r.bad_path) for r in results if r.bad_path]
    if bad_parts:
        with atomic_open(quarantine, "w") as out:
            for part in bad_parts:
                with open(part, encoding="utf-8") as f:
                    for line in f:
                        out.write(line)
    return [Path(r.events_path) for r in results if r.events_path], tally


def check_spark_input(path: Path) -> None:
    """ConfigError unless ``path`` is a file Spark's executors can open (a pipe is read once,
    by one process: the local engine's)."""
    if not Path(path).is_file():
        raise ConfigError(f"{path}: --engine spark reads a file its executors can open, not a pipe; "
                          f"use --engine local, or save the stream to a file first")


def plan_pieces(spark, reader: LogReader, folder: Path, block_bytes: int) -> tuple[ReadPlan, list[Piece]]:
    """The validation tasks of a log: byte ranges (counted by a first Spark job), Parquet row
    groups, or one task for a log that can only be read from its start."""
    path = reader.path
    check_spark_input(path)
    size = path.stat().st_size
    source = replace(reader.source, strict=False)
    parallel = max(1, spark.sparkContext.defaultParallelism)
    if reader.kind == "parquet":
        return _parquet_plan(reader, source, size, str(folder), parallel)
    with open(path, "rb") as f:
        head = f.read(3)
    compressed = head[:2] == b"\x1f\x8b"
    header = reader.header or b""
    bom = 3 if head == b"\xef\xbb\xbf" else 0
    plan = ReadPlan(source, reader.preset, reader.kind, size, min(size, bom + len(header)),
                    header.count(b"\n"), reader.kind == "csv", str(folder))
    if compressed or reader.preset.name == "diginetica":
        return plan, [Piece(0, whole=True)]
    text = size - plan.data_start
    # One range per block_bytes of text, and enough ranges to keep every core busy unless
    # they would be smaller than MIN_RANGE_BYTES.
    n = max(1, -(-text // block_bytes), min(parallel, -(-text // MIN_RANGE_BYTES)))
    if n == 1:  # the whole text in one range: nothing to count before it
        return plan, [Piece(0, plan.data_start, size)]
    starts = [plan.data_start + text * i // n for i in range(n)] + [size]
    counted = spark.sparkContext.parallelize(list(zip(starts[:-1], starts[1:], strict=True)), n) \
        .map(functools.partial(scan_range, str(path), plan.quoted)).collect()
    lines = np.r_[0, np.cumsum([c[0] for c in counted])]
    quotes = np.r_[0, np.cumsum([c[1] for c in counted])] % 2
    pieces = [Piece(i, starts[i], starts[i + 1], int(lines[i]), int(quotes[i]), int(quotes[i + 1]))
              for i in range(n)]
    return plan, pieces


def _parquet_plan(reader: LogReader, source: EventLogSource, size: int, folder: str,
                  parallel: int) -> tuple[ReadPlan, list[Piece]]:
    """Pieces of whole row groups (at most about PARQUET_BATCH_ROWS rows each, and at least
    as many pieces as Spark runs tasks at once where the row groups allow), and the preset
    with the time unit the local engine decides on the log's first batch."""
    from trainer.readers import with_time_unit_of

    try:
        file = pq.ParquetFile(reader.path)
        ts_name = reader.preset.columns.get("ts")
        names = file.schema_arrow.names
        first = next(file.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[ts_name]), None) \
            if ts_name in names else None
        ts = first.column(0) if first is not None else None
        preset = with_time_unit_of(reader.preset, ts)
        groups = [file.metadata.row_group(g).num_rows for g in range(file.metadata.num_row_groups)]
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{reader.path}: not a readable Parquet file ({str(e).splitlines()[0][:200]})") \
            from None
    plan = ReadPlan(source, preset, "parquet", size, 0, 0, False, folder)
    target = max(1, min(PARQUET_BATCH_ROWS, -(-sum(groups) // parallel)))
    pieces, first_group, rows, first_row = [], 0, 0, 1
    for g, n in enumerate(groups):
        rows += n
        if rows >= target or g == len(groups) - 1:
            pieces.append(Piece(len(pieces), first_group, g + 1, first_row=first_row))
            first_group, first_row, rows = g + 1, first_row + rows, 0
    return plan, pieces or [Piece(0, 0, 0)]


def scan_range(path: str, quoted: bool, span: tuple[int, int]) -> tuple[int, int]:
    """Line ends and double quotes (when ``quoted``) in bytes ``span`` of a file (a task)."""
    start, end = span
    lines = quotes = 0
    with open(path, "rb") as f:
        f.seek(start)
        left = end - start
        while left > 0:
            chunk = f.read(min(SCAN_CHUNK, left))
            if not chunk:
                break
            left -= len(chunk)
            lines += chunk.count(b"\n")
            if quoted:
                quotes += chunk.count(b'"')
    return lines, quotes


def record_start(f, at: int, parity: int, quoted: bool, size: int) -> tuple[int, int]:
    """The first place at or after byte ``at`` where a record may start: just after a line end
    that is not inside a quoted field (``parity``: the quotes before ``at``, modulo 2), or the
    end of the file. The rule of the local engine's block cuts, so both cut between records.

    Returns:
        (that offset, the line ends between ``at`` and it).
    """
    if at >= size:
        return size, 0
    if at > 0:
        f.seek(at - 1)
        if f.read(1) == b"\n" and not parity:
            return at, 0
    f.seek(at)
    pos, lines = at, 0
    while True:
        chunk = f.read(SCAN_CHUNK)
        if not chunk:
            return size, lines
        i = 0
        while True:
            nl = chunk.find(b"\n", i)
            if nl < 0:
                if quoted:
                    parity ^= chunk.count(b'"', i) & 1
                break
            if quoted:
                parity ^= chunk.count(b'"', i, nl) & 1
            lines += 1
            if not parity:
                return pos + nl + 1, lines
            i = nl + 1
        pos += len(chunk)


# Per Python worker: the reader of the log being validated, opened once (format, header and
# time unit resolved as on the driver) for all the tasks this worker runs: [plan, reader].
_READER: list = [None, None]


def _worker_reader(plan: ReadPlan) -> LogReader:
    if _READER[0] != plan:
        reader = LogReader(plan.source)
        if reader.preset != plan.preset or (reader.header or b"").count(b"\n") != plan.header_lines:
            raise DataError(f"{plan.source.path}: changed while it was being read (its format or "
                            f"header now reads differently); run again on a file nobody writes to")
        _READER[:] = [plan, reader]
    return _READER[1]


def validate_piece(plan: ReadPlan, piece: Piece) -> PieceResult:
    """A Spark task: validate one piece of the log, write its events and bad rows to files.

    Raises:
        DataError: a file-level fault of the log (as the local engine), or the file changed
            size since it was planned.
    """
    path = Path(plan.source.path)
    if path.stat().st_size != plan.size:
        raise DataError(f"{path}: changed while it was being read ({plan.size:,} bytes planned, "
                        f"{path.stat().st_size:,} now); run again on a file nobody writes to")
    if plan.kind == "parquet":
        blocks = _parquet_blocks(plan, piece)
    elif piece.whole:
        blocks = LogReader(plan.source).blocks()
    else:
        blocks = _range_blocks(plan, piece)
    return _write_piece(plan, piece, blocks)


def _range_blocks(plan: ReadPlan, piece: Piece) -> Iterator[EventBlock]:
    """The one block of a byte range: its whole records, validated with the reader's rules."""
    path = Path(plan.source.path)
    with open(path, "rb") as f:
        if piece.index == 0:
            begin, skipped = plan.data_start, 0
        else:
            begin, skipped = record_start(f, piece.start, piece.quote_parity, plan.quoted, plan.size)
        finish, _ = record_start(f, piece.end, piece.next_parity, plan.quoted, plan.size)
        if begin >= finish:
            return
        f.seek(begin)
        text = f.read(finish - begin)
    first_line = 1 + plan.header_lines + piece.lines_before + skipped
    yield _worker_reader(plan).validate_text(text, first_line)


def _parquet_blocks(plan: ReadPlan, piece: Piece) -> Iterator[EventBlock]:
    """The blocks of a piece of row groups, in batches of PARQUET_BATCH_ROWS rows as the
    local engine reads them."""
    from trainer.readers import parse_parquet_rows

    path = Path(plan.source.path)
    if piece.end <= piece.start:
        return
    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=PARQUET_BATCH_ROWS,
                                                    row_groups=list(range(piece.start, piece.end)))
        row = piece.first_row
        for batch in batches:
            table = pa.Table.from_batches([batch])
            bad = BadRows(str(path))
            log = parse_parquet_rows(path, table, row, plan.preset, bad)
            row += table.num_rows
            yield EventBlock.of(log)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0][:200]})") from None


def _write_piece(plan: ReadPlan, piece: Piece, blocks: Iterator[EventBlock]) -> PieceResult:
    """Append a piece's blocks to its events file and its bad rows to its quarantine part."""
    import pyarrow.compute as pc

    folder = Path(plan.folder)
    events_path = folder / f"events-{piece.index:05d}.parquet"
    bad_path = folder / f"bad-{piece.index:05d}.jsonl"
    result = PieceResult(piece.index, None, None, 0, 0, Counter(), None, False, False, None, None)
    writer = bad_file = None
    with atomic_path(events_path) as tmp_events, atomic_path(bad_path) as tmp_bad:
        try:
            for block in blocks:
                result.rows_read += block.rows_read
                result.events += block.events.num_rows
                result.bad.update(block.bad.counts)
                result.has_user_ids, result.log_sessions = block.has_user_ids, block.log_sessions
                if block.bad.total:
                    if bad_file is None:
                        bad_file = open(tmp_bad, "w", encoding="utf-8")  # noqa: SIM115 (closed below)
                    bad_file.writelines(block.bad.lines())
                    if result.first_bad is None:
                        result.first_bad = min(block.bad.rows,
                                               key=lambda r: (r["line"] is None, r["line"] or 0))
                events = block.events
                if events.num_rows:
                    category = events.column("category")
                    result.has_category |= bool(pc.any(pc.not_equal(pc.fill_null(category, ""), "")).as_py())
                    result.has_price |= bool(pc.any(pc.is_finite(events.column("price"))).as_py())
                    if writer is None:
                        writer = pq.ParquetWriter(tmp_events, EVENT_SCHEMA, compression="lz4")
                    writer.write_table(events)
        finally:
            if writer is not None:
                writer.close()
            if bad_file is not None:
                bad_file.close()
    if writer is not None:
        result.events_path = str(events_path)
    else:
        events_path.unlink(missing_ok=True)
    if bad_file is not None:
        result.bad_path = str(bad_path)
    else:
        bad_path.unlink(missing_ok=True)
    return result


# --------------------------------------------------------------------------- stage 2: per user

def shared_sessions(events) -> frozenset[str]:
    """Session ids that hold events of more than one user (a Spark aggregation over the log),
    keyed SESSION@USER in every engine (trainer.sessions)."""
    from pyspark.sql import functions as F

    rows = (events.where(F.col("session").isNotNull()).groupBy("session")
            .agg(F.countDistinct("user").alias("users")).where(F.col("users") > 1)
            .select("session").collect())
    return frozenset(r[0] for r in rows)


def bucket_map(events, key: str, n_buckets: int, task: Callable[[int, pa.Table], pa.Table],
               schema: str) -> list[dict]:
    """Run ``task`` on every bucket of users in Spark: ``groupBy(bucket).applyInArrow``.

    Args:
        events: the canonical events (a DataFrame of EVENT_SCHEMA's columns).
        key: the column whose equal values must meet in one call (trainer.prepare.records.
            partition_column): a bucket holds every event of its users.
        n_buckets: how many buckets (each a group, processed in memory by one worker).
        task: (bucket, its events as an EVENT_SCHEMA table) -> a table of ``schema``; a
            module-level function (or a partial of one), as it is sent to the executors.
        schema: the output's Spark DDL schema.

    Returns:
        The tasks' output rows, as dicts, ordered by their first column.
    """
    from pyspark.sql import functions as F

    bucket = F.pmod(F.xxhash64(F.col(key)), F.lit(n_buckets)).alias("bucket")
    grouped = events.select(bucket, *[F.col(c) for c in EVENT_SCHEMA.names]).groupBy("bucket")
    rows = grouped.applyInArrow(functools.partial(_bucket_task, task), schema).collect()
    return sorted((row.asDict() for row in rows), key=lambda r: next(iter(r.values())))


def _bucket_task(task: Callable[[int, pa.Table], pa.Table], key: tuple, table: pa.Table) -> pa.Table:
    """``task`` on one group, its events cast to EVENT_SCHEMA (Spark's types are Arrow's)."""
    events = table.select(EVENT_SCHEMA.names).cast(EVENT_SCHEMA)
    return task(int(key[0].as_py()), events)


def records_of_bucket(bucket: int, events: pa.Table, settings: RecordSettings, folder: str) -> pa.Table:
    """A Spark task: a bucket's session records, written as Parquet; one summary row back.

    The file is named by the bucket and written atomically, so a retried or speculative task
    writes the same file again."""
    records, counts = session_records(events, settings)
    path = Path(folder) / f"records-{bucket:05d}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        pq.write_table(records.cast(RECORD_SCHEMA), tmp, compression="lz4")
    return summary_row(bucket, path, counts)


def summary_row(bucket: int, path: Path, counts: dict) -> pa.Table:
    """The BUCKET_SUMMARY row of a bucket (``min_ts``/``max_ts`` NaN when it has no events)."""
    return pa.table({
        "bucket": [bucket], "path": [str(path)],
        **{key: pa.array([int(counts.get(key, 0))], pa.int64()) for key in COUNT_KEYS},
        "min_ts": [float(counts.get("min_ts", np.nan))], "max_ts": [float(counts.get("max_ts", np.nan))],
    })
