"""A log larger than memory, read as blocks of validated canonical events.

`LogReader` cuts the log's text at line ends into blocks of about ``block_bytes`` (never
inside a quoted CSV field), puts the CSV header in front of each, and validates each block
with the parsers and value rules of `trainer.readers` (`parse_events`), so a row is good or
bad, and for which reason, exactly as `read_log` would say. Line numbers are those of the
whole file. Parquet logs are read by row batches. The time unit ``auto`` is decided on the
first block and then kept, so every block reads times alike.

A Spark partition calls `LogReader.validate_text` on its own lines: both engines apply one
set of rules. DIGINETICA, whose purchases come from a side file and are kept only for
sessions of the views file, is read whole (`read_log`): its public logs are small.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from edge_runtime.errors import DataError
from trainer.formats import get_preset
from trainer.logsource import EventLogSource
from trainer.quarantine import BadRows
from trainer.readers import (
    CHUNK_BYTES,
    EventLog,
    detect_format,
    file_kind,
    is_parquet,
    parse_events,
    parse_parquet_rows,
    read_log,
    stream_text,
    with_time_unit,
    with_time_unit_of,
)

# Canonical events as the engines pass them around. ``order`` is the events' file order
# (line << ORDER_BITS, plus the event's place on its line: OTTO holds a session per line),
# the tie-breaker that makes equal timestamps sort as the in-memory reader's file order does.
EVENT_SCHEMA = pa.schema([
    ("user", pa.string()), ("session", pa.string()), ("ts", pa.float64()), ("event", pa.int8()),
    ("item", pa.string()), ("category", pa.string()), ("price", pa.float64()),
    ("line", pa.int64()), ("order", pa.int64()),
])
ORDER_BITS = 24
DEFAULT_BLOCK_BYTES = 8 << 20
PARQUET_BATCH_ROWS = 1 << 20


@dataclass
class EventBlock:
    """One block of a log: its good events (EVENT_SCHEMA, file order) and its bad rows.

    Attributes:
        events: the canonical events.
        bad: the block's bad rows, with the lines they have in the whole file.
        rows_read: good and bad rows of the block.
        has_user_ids: the log's user ids name people (its format says so and it has them).
        log_sessions: the log has its own session ids.
    """

    events: pa.Table
    bad: BadRows
    rows_read: int
    has_user_ids: bool
    log_sessions: bool

    @classmethod
    def of(cls, log: EventLog, order: np.ndarray | None = None) -> EventBlock:
        """A block of ``log``'s events, bad rows and flags."""
        return cls(events_table(log, order), log.bad, log.rows_read, log.has_user_ids,
                   log.session is not None)


def events_table(log: EventLog, order: np.ndarray | None = None) -> pa.Table:
    """An EventLog as an EVENT_SCHEMA table; ``order`` defaults to the lines' file order."""
    def ids(x) -> pa.Array:
        if x is None:
            return pa.nulls(len(log), pa.string())
        names = pa.array(x.names.tolist(), pa.string())
        return pa.DictionaryArray.from_arrays(pa.array(x.codes, pa.int32()), names).cast(pa.string())

    if order is None:
        order = file_order(log.line)
    price = log.price if log.price is not None else np.full(len(log), np.nan)
    return pa.table([ids(log.user), ids(log.session), pa.array(log.ts, pa.float64()),
                     pa.array(log.event, pa.int8()), ids(log.item), ids(log.category),
                     pa.array(price, pa.float64()), pa.array(log.line, pa.int64()),
                     pa.array(order, pa.int64())], schema=EVENT_SCHEMA)


def file_order(line: np.ndarray) -> np.ndarray:
    """``line << ORDER_BITS`` plus each event's place among the events of its line."""
    line = np.asarray(line, np.int64)
    if len(line) == 0:
        return line
    new = np.r_[True, line[1:] != line[:-1]]
    first = np.flatnonzero(new)
    place = np.arange(len(line)) - np.repeat(first, np.diff(np.r_[first, len(line)]))
    return (line << ORDER_BITS) + place


class LogReader:
    """One log, read once, block by block (see the module's docstring).

    Args:
        source: the log and how to read it (format, mapping, strictness).

    Attributes:
        path, preset: the file and its format (detected from the first block when not given;
            the ``auto`` time unit decided there too).
        header: a CSV's header record with its line end (None for JSON lines and Parquet).
        kind: ``csv``, ``jsonl`` or ``parquet``.

    Raises:
        DataError: a file-level fault (as `read_log`), or the format cannot be detected.
    """

    def __init__(self, source: EventLogSource, chunk_bytes: int = CHUNK_BYTES) -> None:
        self.source = source
        self.path = Path(source.path)
        self.strict = source.strict
        self.header: bytes | None = None
        self._header_lines = 0
        self._chunks: Iterator[bytes] | None = None
        self._first = b""
        if is_parquet(self.path):
            self.kind = "parquet"
            self.preset = source.preset or get_preset(source.format or "canonical")
            return
        self._chunks = stream_text(self.path, chunk_bytes)
        self._first = next(self._chunks)
        self.kind = file_kind(self.path, self._first)
        preset = source.preset or get_preset(source.format or detect_format(self.path, self._first))
        if self.kind == "csv" and preset.header:
            end = _safe_cut(self._first, quoted=True, first=True)
            while end is None:  # a header longer than a chunk (or quoted names over lines)
                more = next(self._chunks, b"")
                if not more:
                    end = len(self._first)
                    break
                self._first += more
                end = _safe_cut(self._first, quoted=True, first=True)
            self.header, self._first = self._first[:end], self._first[end:]
            if not self.header.endswith(b"\n"):
                self.header += b"\n"
            self._header_lines = self.header.count(b"\n")
        sample = (self.header or b"") + self._first[:_safe_cut(self._first[:1 << 20], self.kind == "csv")
                                                   or len(self._first)]
        self.preset = preset if preset.name == "diginetica" else with_time_unit(self.path, sample, preset)

    # ------------------------------------------------------------------ one block
    def validate_text(self, text: bytes, first_line: int) -> EventBlock:
        """Validate whole lines of the log (no header) whose first is line ``first_line``.

        Returns:
            The block's events and bad rows, with the lines they have in the file.

        Raises:
            DataError: a file-level fault the block shows (a header without a required
                column), or a bad row with ``--strict``.
        """
        bad = BadRows(str(self.path))
        log = parse_events(self.path, (self.header or b"") + text, self.preset, bad)
        offset = first_line - 1 - self._header_lines
        log.line = log.line + offset
        bad.shift_lines(offset)
        bad.raise_if_strict(self.strict)
        return EventBlock.of(log)

    # ------------------------------------------------------------------ the whole log
    def blocks(self, block_bytes: int = DEFAULT_BLOCK_BYTES) -> Iterator[EventBlock]:
        """Every block of the log, in file order; a reader gives its blocks once."""
        if self.kind == "parquet":
            yield from self._parquet_blocks()
            return
        if self.preset.name == "diginetica":
            log = read_log(self.path, preset=self.preset, strict=self.strict)
            yield EventBlock.of(log, np.arange(len(log), dtype=np.int64))
            return
        if self._chunks is None:
            raise RuntimeError("LogReader.blocks() reads the log once")
        chunks, self._chunks = self._chunks, None
        quoted = self.kind == "csv"
        line = 1 + self._header_lines
        pending, size = [self._first], len(self._first)
        for chunk in chunks:
            pending.append(chunk)
            size += len(chunk)
            if size < block_bytes:
                continue
            text = b"".join(pending)
            cut = _safe_cut(text, quoted)
            if cut is None:  # no line end outside quotes yet: read on
                pending, size = [text], len(text)
                continue
            body, rest = text[:cut], text[cut:]
            pending, size = [rest], len(rest)
            yield self.validate_text(body, line)
            line += line_ends(body)
        text = b"".join(pending)
        if text:
            yield self.validate_text(text, line)

    def _parquet_blocks(self) -> Iterator[EventBlock]:
        import pyarrow.parquet as pq

        try:
            batches = pq.ParquetFile(self.path).iter_batches(batch_size=PARQUET_BATCH_ROWS)
            row = 1
            for batch in batches:
                table = pa.Table.from_batches([batch])
                if row == 1:
                    ts = _column(table, self.preset.columns.get("ts"))
                    self.preset = with_time_unit_of(self.preset, ts)
                bad = BadRows(str(self.path))
                log = parse_parquet_rows(self.path, table, row, self.preset, bad)
                bad.raise_if_strict(self.strict)
                row += table.num_rows
                yield EventBlock.of(log)
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(f"{self.path}: not a readable Parquet file ({str(e).splitlines()[0][:200]})") \
                from None


def line_ends(text: bytes) -> int:
    """Lines ``text`` ends, counted as the readers count them: LF, CRLF, and a lone CR (old
    Mac files, which pyarrow ends a line at)."""
    lf = text.count(b"\n")
    cr = text.count(b"\r")
    return lf if cr == 0 else lf + cr - text.count(b"\r\n")


def _column(table: pa.Table, name: str | None) -> pa.Array | None:
    return table.column(name).combine_chunks() if name in table.column_names else None


def _safe_cut(text: bytes, quoted: bool, first: bool = False) -> int | None:
    """The offset just after a line end where ``text`` may be cut: the last one (the first
    one with ``first``) outside a quoted CSV field; None when there is none."""
    find = text.find if first else text.rfind
    pos = find(b"\n")
    if not quoted or b'"' not in text:
        return None if pos < 0 else pos + 1
    while pos >= 0 and text.count(b'"', 0, pos) % 2:
        pos = text.find(b"\n", pos + 1) if first else text.rfind(b"\n", 0, pos)
    return None if pos < 0 else pos + 1

