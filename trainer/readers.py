"""Read an event log (CSV / JSONL / Parquet, gzip or not) into canonical events.

File-level faults (missing path, a symbolic link loop, a directory, device, socket or FIFO
with no writer, an empty file, gzip that ends early or expands past the size limit, binary or
UTF-16 content, missing columns, no valid row) raise DataError with one line naming the file.
Row-level faults (wrong field count, bad or absurd timestamp, unknown event, non-UTF-8 bytes,
missing id, bad price, malformed JSON line, an OTTO session line with a bad event) are counted
by reason in `EventLog.bad` and kept verbatim for the quarantine file; the run goes on.

A log is read whole into memory (streaming is the next step), so `read_bytes` bounds it:
at most `max_log_bytes()` bytes of text, gzip expanded in chunks and refused at the limit,
and the first block checked before the rest is read. The value rules come from
edge_runtime.events (MIN_TS, MAX_TS, MIN_PRICE), which the live path applies to one event.

pyarrow does the parsing; this module only maps columns and validates values, vectorised.
`read_log` is the entry point (`trainer.logsource.EventLogSource.read` calls it) and runs
three stages: the file (`read_bytes`, `detect_format`), its raw columns (one reader per
kind: CSV, JSON lines, Parquet), and `_canonicalize`, which checks the mapped columns,
then events, times, ids and prices, each check rejecting the rows it fails.
"""

from __future__ import annotations

import csv
import errno
import gzip
import io
import json
import math
import os
import re
import stat
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from edge_runtime.errors import ConfigError, DataError, first_line, located
from edge_runtime.events import EVENT_CODE, EVENT_TYPES, MAX_TS, MIN_PRICE, MIN_TS
from trainer.formats import PRESETS, FormatPreset, TimeUnit, get_preset
from trainer.quarantine import BadRows

NUMBER_RE = r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"
LONE_CR = re.compile(rb"\r(?!\n)")
# Values quoted in a bad row's detail are cut here: a 1 MB field stays a short message.
MAX_SHOWN_CHARS = 80
DATETIME_FORMATS = ("%Y-%m-%d %H:%M:%S UTC", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S",
                    "%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%d %H:%M:%S%z")


@dataclass
class Ids:
    """Dictionary-encoded ids: `codes[i]` indexes `names`; equal ids have equal codes."""

    codes: np.ndarray  # int64
    names: np.ndarray  # object array of str

    @classmethod
    def encode(cls, values: pa.Array) -> Ids:
        encoded = pc.dictionary_encode(values)
        if isinstance(encoded, pa.ChunkedArray):
            encoded = encoded.combine_chunks()
        return cls(encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64),
                   np.asarray(encoded.dictionary.to_pylist(), dtype=object))

    def values(self, index: np.ndarray | None = None) -> np.ndarray:
        codes = self.codes if index is None else self.codes[index]
        return self.names[codes]


@dataclass
class EventLog:
    """Canonical events of one log, in file order, with their source lines.

    Attributes:
        source: the path read.
        format: the preset name.
        user, item: ids (user falls back to the session id where the log has no user).
        session, category: ids, or None when the log has none.
        ts: Unix seconds (float64, UTC).
        event: canonical event codes (int8, edge_runtime.events.EVENT_CODE).
        price: float64 with NaN where absent, or None when the log has no price.
        line: the physical line (row number for Parquet) each event came from.
        rows_read: data rows seen, good and bad: ``len(self) + bad.total == rows_read``.
        bad: the rejected rows.
        utc_offset_hours: the shop's clock, for time-of-day features.
        has_user_ids: whether ``user`` identifies a person across sessions.
    """

    source: str
    format: str
    user: Ids
    session: Ids | None
    ts: np.ndarray
    event: np.ndarray
    item: Ids
    category: Ids | None
    price: np.ndarray | None
    line: np.ndarray
    rows_read: int
    bad: BadRows
    utc_offset_hours: float
    has_user_ids: bool

    def __len__(self) -> int:
        return len(self.ts)

    def event_dicts(self, rows: np.ndarray) -> list[dict]:
        """The events at ``rows`` as canonical event dicts (edge_runtime.events), what the
        runtime's `push` and `score_sessions` take: ``ts``, ``event`` (its name), ``item``
        and ``category`` as the log wrote them, and ``price``; ``category`` is None where
        the log has none or the cell is empty, ``price`` None where absent."""
        items = self.item.values(rows)
        categories = None if self.category is None else self.category.values(rows)
        prices = None if self.price is None else self.price[rows]
        out = []
        for k, row in enumerate(np.asarray(rows).tolist()):
            category = None if categories is None or categories[k] == "" else str(categories[k])
            price = None if prices is None or np.isnan(prices[k]) else float(prices[k])
            out.append({"ts": float(self.ts[row]), "event": EVENT_TYPES[int(self.event[row])],
                        "item": str(items[k]), "category": category, "price": price})
        return out


# --------------------------------------------------------------------------- file level

# The most bytes of log text (after gunzip) read into memory. The reader holds the whole text
# and peaks at about 6 times its size while parsing (measured with VmHWM on 100 MB logs: 6.1x
# for Taobao, 5.2x for REES46), so a text of more than 1/8 of the memory this process may use
# would not be parsed anyway, and refusing it at the first byte past the limit keeps even the
# refusal (a gzip bomb) within that 1/8. Physical memory (or a container's cgroup limit, or
# ``ulimit -v``, when lower) rather than the memory free at the moment, so a machine gives the
# same verdict on every run. A regular file is refused by its size before it is opened.
MAX_LOG_BYTES_ENV = "UBP_EDGE_MAX_LOG_BYTES"
MEMORY_FRACTION = 8
FALLBACK_MEMORY = 8 << 30  # where the machine's memory cannot be read (not Linux or macOS)
SIZE_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
CHUNK_BYTES = 1 << 22
# Binary content is judged on this first block of the (decompressed) text.
FIRST_BLOCK = 1 << 16
# Bytes no text log holds more than a few of: C0 controls other than tab, line ends, form feed,
# vertical tab and escape, plus DEL. Random bytes are 27/256 (10.5%) of these, /dev/zero 100%;
# the limit sits well below random data's share (a 10,000-byte sample varies by +-0.3%) and
# far above a text log's, whose ids may hold a stray NUL.
TEXT_BYTES = bytes(range(0x20, 0x7F)) + b"\t\n\r\f\v\x1b" + bytes(range(0x80, 0x100))
MAX_CONTROL_FRACTION = 0.05
# Files a user may pass by mistake, known by their first bytes: named, with what to do instead.
OTHER_CONTAINERS = (
    (b"PK\x03\x04", "a ZIP archive (an .xlsx workbook is one): unzip it, or export the sheet as CSV"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an OLE2 file (an .xls workbook): export the sheet as CSV"),
    (b"\xfd7zXZ\x00", "xz-compressed: decompress it first (unxz); only gzip is read as it is"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed: decompress it first (unzstd); only gzip is read as it is"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive: extract the log first"),
)
BZIP2 = re.compile(rb"BZh[1-9]1AY&SY")
BYTE_ORDER_MARKS = (  # longest first: the UTF-32 LE mark begins with the UTF-16 LE one
    (b"\xff\xfe\x00\x00", "UTF-32 text (byte-order mark FF FE 00 00)"),
    (b"\x00\x00\xfe\xff", "UTF-32 text (byte-order mark 00 00 FE FF)"),
    (b"\xff\xfe", "UTF-16 text (byte-order mark FF FE)"),
    (b"\xfe\xff", "UTF-16 text (byte-order mark FE FF)"),
)


def max_log_bytes() -> int:
    """The most bytes of text (after gunzip) a log may have: the reader holds it in memory.

    Returns:
        ``UBP_EDGE_MAX_LOG_BYTES`` when set (bytes, or with a K, M, G or T suffix: ``16G``),
        else 1/8 of the memory this process may use (see MEMORY_FRACTION for why).

    Raises:
        ConfigError: ``UBP_EDGE_MAX_LOG_BYTES`` is not a positive size.
    """
    value = os.environ.get(MAX_LOG_BYTES_ENV, "").strip()
    if not value:
        return _usable_memory() // MEMORY_FRACTION
    number, suffix = value.upper().removesuffix("B").removesuffix("I"), ""
    if number[-1:] in SIZE_SUFFIXES:
        number, suffix = number[:-1], number[-1]
    try:
        limit = int(float(number) * SIZE_SUFFIXES[suffix])
    except (ValueError, OverflowError):
        limit = 0
    if limit <= 0:
        raise ConfigError(f"{MAX_LOG_BYTES_ENV}: {value!r} is not a positive size in bytes "
                          f"(e.g. 4000000000 or 4G)")
    return limit


def _usable_memory() -> int:
    """Physical memory, or the container's cgroup limit or this process's address-space
    limit (``ulimit -v``) when one is lower."""
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        memory = FALLBACK_MEMORY
    try:
        import resource  # Unix only

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY and 0 < soft < memory:
            memory = soft
    except (ImportError, ValueError, OSError):
        pass
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < memory:  # "max" or a huge number: no limit
            memory = int(text)
    return memory


def _limit_note(explicit: bool) -> str:
    """Where the limit on a log's size comes from, for the message that refuses a log."""
    if explicit:
        return "the limit passed to read_bytes"
    if os.environ.get(MAX_LOG_BYTES_ENV, "").strip():
        return f"the limit set by {MAX_LOG_BYTES_ENV}"
    return (f"the limit, 1/{MEMORY_FRACTION} of this machine's memory as the reader holds the log in "
            f"memory ({MAX_LOG_BYTES_ENV} changes it)")


def read_bytes(path: str | Path, limit: int | None = None) -> bytes:
    """Read a log file whole, gunzipping transparently, in bounded memory.

    Regular files and pipes (a named FIFO with a writer, or ``<(zcat log.gz)``) are read;
    devices, sockets and directories are refused by name. Gzip is decompressed in chunks and
    refused past ``limit``; content that cannot be a log (NUL bytes, UTF-16, a ZIP or xz file)
    is refused on its first block. A UTF-8 byte-order mark is dropped.

    Args:
        path: the file.
        limit: the most bytes of text to hold; None: `max_log_bytes()`.

    Returns:
        The file's text as bytes (not decoded: rows that are not UTF-8 are quarantined later).

    Raises:
        DataError: one line naming the file: missing, a symbolic link loop, not a regular file
            or pipe, a FIFO with no writer, unreadable, empty, gzip damaged or expanding past
            ``limit``, larger than ``limit``, binary, or more than the memory free.
        ConfigError: ``UBP_EDGE_MAX_LOG_BYTES`` is not a positive size.
    """
    p = Path(path)
    explicit = limit is not None
    limit = max_log_bytes() if limit is None else limit
    st = _stat_log(p)
    try:
        data = _read_whole(p, st, limit, explicit)
    except MemoryError:
        # Under the limit, and still more than this machine can spare at the moment.
        raise DataError(f"{p}: out of memory reading it whole; split the log, or free memory") from None
    if not data or data.isspace():  # isspace: no stripped copy of a big file
        raise DataError(f"{p}: empty file")
    return data


def _read_whole(p: Path, st: os.stat_result, limit: int, explicit: bool) -> bytes:
    """The text of the file `_stat_log` accepted (see `read_bytes`)."""
    if stat.S_ISREG(st.st_mode) and st.st_size > limit:
        raise DataError(f"{p}: {st.st_size:,} bytes, more than {limit:,}, {_limit_note(explicit)}; "
                        f"split the log")
    try:
        # A pipe cannot seek: its bytes (gzip or not) are taken first, within the limit.
        if stat.S_ISFIFO(st.st_mode):
            piped = _read_fifo(p, limit, explicit)
            source, size = io.BytesIO(piped), len(piped)
        else:
            source, size = open(p, "rb"), st.st_size
        with source:
            return _read_text(p, source, size, limit, explicit)
    except OSError as e:  # gzip's own errors are DataErrors already
        raise DataError(f"{p}: cannot read ({e.strerror or e})") from None


def _stat_log(p: Path) -> os.stat_result:
    """The file's status; DataError unless it is a regular file or a pipe."""
    try:
        st = os.stat(p)
    except FileNotFoundError:
        if os.path.islink(p):
            raise DataError(f"{p}: no such file (a symbolic link to {os.readlink(p)!r}, which "
                            f"does not exist)") from None
        raise DataError(f"{p}: no such file") from None
    except ValueError:  # a NUL byte in the path (only through the API: shells cannot pass one)
        raise DataError(f"{p!r}: no such file (the path contains a NUL byte)") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise DataError(f"{p}: symbolic link loop (the links never reach a file)") from None
        if e.errno == errno.ENOTDIR:
            raise DataError(f"{p}: no such file (a part of the path is not a folder)") from None
        raise DataError(f"{p}: cannot read ({e.strerror or e})") from None
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        raise DataError(f"{p}: is a directory; pass the log file itself")
    if stat.S_ISREG(mode) or stat.S_ISFIFO(mode):
        return st
    kind = ("a character device" if stat.S_ISCHR(mode) else "a block device" if stat.S_ISBLK(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
    raise DataError(f"{p}: is {kind}, not a log file; pass a CSV, JSON lines or Parquet file")


def _read_fifo(p: Path, limit: int, explicit: bool) -> bytes:
    """All a pipe holds until its writer closes it, up to ``limit`` bytes (a FIFO with no
    writer is refused at once: `_read_fifo_stream`)."""
    with _read_fifo_stream(p) as f:
        data = _read_on(f, f.read(CHUNK_BYTES), limit)
    if len(data) > limit:
        raise DataError(f"{p}: more than {limit:,} bytes from the pipe, {_limit_note(explicit)}; "
                        f"split the log")
    return data


def _read_on(stream, first: bytes, limit: int) -> bytes:
    """``first`` and what ``stream`` holds after it, read in CHUNK_BYTES pieces until it ends
    or the total passes ``limit`` (so a caller can tell "over the limit" by the length)."""
    chunks, total = [first], len(first)
    while total <= limit and (chunk := stream.read(CHUNK_BYTES)):
        total += len(chunk)
        chunks.append(chunk)
    return b"".join(chunks) if len(chunks) > 1 else first


def _read_text(p: Path, source, size: int, limit: int, explicit: bool) -> bytes:
    """The text of an open file of ``size`` bytes (as its status says): gunzipped in chunks
    when it is gzip, at most ``limit`` bytes; its first block is checked for content that
    cannot be a log."""
    compressed = source.read(2) == b"\x1f\x8b"
    source.seek(0)
    if not compressed:
        # One read of the size the file says it has (read(n) allocates n bytes up front, so
        # never the limit itself); a file that says 0 (/proc) or grows is read on to the limit.
        want = min(size, limit) + 1
        data = source.read(want)
        if len(data) == want:
            data = _read_on(source, data, limit)
        if len(data) > limit:
            raise DataError(f"{p}: more than {limit:,} bytes, {_limit_note(explicit)}; split the log")
        _refuse_non_text(p, data[:FIRST_BLOCK])
        return data[3:] if data.startswith(b"\xef\xbb\xbf") else data
    try:
        with gzip.GzipFile(fileobj=source) as stream:
            first = stream.read(FIRST_BLOCK)
            _refuse_non_text(p, first)
            # A UTF-8 byte-order mark is not part of the first column's name (the limit counts it).
            bom = 3 if first.startswith(b"\xef\xbb\xbf") else 0
            data = _read_on(stream, first[bom:], limit - bom)
            if len(data) > limit - bom:
                raise DataError(f"{p}: expands to more than {limit:,} bytes when decompressed "
                                f"(a gzip bomb?), {_limit_note(explicit)}")
    except EOFError:
        raise DataError(f"{p}: compressed stream ends early (truncated gzip)") from None
    except (gzip.BadGzipFile, zlib.error) as e:
        raise DataError(f"{p}: corrupted gzip stream ({e})") from None
    return data


def _refuse_non_text(p: Path, first: bytes) -> None:
    """DataError when a log's first block shows it cannot be a text log (Parquet aside)."""
    if first.startswith(b"PAR1"):
        return
    for magic, what in OTHER_CONTAINERS:
        if first.startswith(magic):
            raise DataError(f"{p}: {what}")
    if BZIP2.match(first):
        raise DataError(f"{p}: bzip2-compressed: decompress it first (bunzip2); only gzip is read "
                        f"as it is")
    if first.startswith(b"\x1f\x8b"):
        raise DataError(f"{p}: gzip inside gzip: decompress it once (gunzip) and pass the result")
    utf16 = _utf16(first)
    if utf16:
        raise DataError(f"{p}: {utf16}: re-save it as UTF-8")
    control = len(first.translate(None, TEXT_BYTES))
    if control > MAX_CONTROL_FRACTION * len(first):
        nul = first.count(0)
        raise DataError(f"{p}: binary data, not a text log ({nul:,} NUL and {control - nul:,} other "
                        f"control bytes in its first {len(first):,}); pass a CSV, JSON lines or "
                        f"Parquet file")


def _utf16(first: bytes) -> str:
    """What kind of UTF-16/32 text ``first`` is (by its byte-order mark, or ASCII with every
    other byte NUL), or "" for anything else."""
    for mark, what in BYTE_ORDER_MARKS:
        if first.startswith(mark):
            return what
    sample = first[:4096]
    sample = sample[:len(sample) // 2 * 2]
    if len(sample) < 4:
        return ""
    even, odd = sample[0::2], sample[1::2]
    half = len(sample) // 2
    if odd.count(0) > 0.4 * half and even.count(0) < 0.05 * half:
        return "UTF-16 text (little-endian, no byte-order mark)"
    if even.count(0) > 0.4 * half and odd.count(0) < 0.05 * half:
        return "UTF-16 text (big-endian, no byte-order mark)"
    return ""


def detect_format(path: str | Path, data: bytes) -> str:
    """Guess the preset from the file's first line; DataError asking for --format otherwise."""
    if data[:4] == b"PAR1":
        return "canonical"
    first = data.split(b"\n", 1)[0].strip().decode("utf-8", "replace")
    low = first.lower()
    if low.startswith("{"):
        try:
            keys = set(json.loads(first))
        except (ValueError, RecursionError):  # not JSON, or JSON Python will not hold
            keys = set()
        if {"session", "events"} <= keys:
            return "otto"
        if {"user", "ts", "event", "item"} <= keys:
            return "canonical"
    elif "event_time" in low and "user_session" in low:
        return "rees46"
    elif low.startswith("session_id;") and "timeframe" in low:
        return "diginetica"
    elif low.startswith("timestamp,visitorid,event,itemid"):
        return "retailrocket"
    else:
        fields = [f.strip().strip('"') for f in first.split(",")]  # names may be quoted
        if {"user", "ts", "event", "item"} <= set(fields):
            return "canonical"
        if len(fields) == 5 and fields[3] in PRESETS["taobao"].events and fields[4].isdigit():
            return "taobao"
    raise DataError(f"{path}:1: cannot detect the format from {first[:80]!r}; "
                    f"pass --format (one of {', '.join(PRESETS)}, csv)")


def _file_kind(path: Path, data: bytes) -> str:
    if data[:4] == b"PAR1":
        return "parquet"
    name = path.name.lower().removesuffix(".gz")
    if name.endswith((".jsonl", ".ndjson", ".json")) or data.lstrip()[:1] == b"{":
        return "jsonl"
    return "csv"


# --------------------------------------------------------------------------- raw tables

@dataclass
class _Raw:
    """Columns as read, one entry per data row, before validation."""

    columns: dict[str, pa.Array]
    line: np.ndarray
    reason: np.ndarray  # object: None for a good row, else the reason
    detail: np.ndarray  # object: what was wrong, for a person
    data: bytes | None = None  # the file's text, to quarantine bad rows verbatim
    # A line holds several rows (OTTO: one session per line): a bad row rejects its whole line.
    whole_lines: bool = False

    def text_of(self, i: int) -> str:
        """Row ``i`` as it stands in the file (its first physical line), else its values."""
        if self.data is not None:
            return _physical_line(self.data, int(self.line[i]))
        return ",".join("" if v is None else str(v)
                        for v in (col[int(i)].as_py() for col in self.columns.values()))

    def reject(self, mask: np.ndarray, reason: str, values: pa.Array | np.ndarray | None = None,
               what: str = "") -> None:
        """Mark rows bad unless already bad; the first reason a row gets is kept."""
        mask = np.asarray(mask, dtype=bool) & np.equal(self.reason, None)
        if not mask.any():
            return
        self.reason[mask] = reason
        if values is not None:
            vals = values.to_numpy(zero_copy_only=False) if isinstance(values, pa.Array) else values
            for i in np.flatnonzero(mask):
                shown = _shown(vals[i])
                self.detail[i] = f"{what} {shown}" if what else shown


def _shown(value: object) -> str:
    """``repr(value)``, long text cut to MAX_SHOWN_CHARS characters and marked so."""
    if isinstance(value, (str, bytes)) and len(value) > MAX_SHOWN_CHARS:
        return f"{value[:MAX_SHOWN_CHARS]!r}... ({len(value)} characters)"
    return repr(value)


def _physical_line(data: bytes, number: int) -> str:
    """Line ``number`` (1-based) of ``data``, decoded with replacement characters."""
    start = 0
    for _ in range(number - 1):
        start = data.find(b"\n", start) + 1
        if start == 0:
            return ""
    end = data.find(b"\n", start)
    return data[start:end if end >= 0 else len(data)].rstrip(b"\r").decode("utf-8", "replace")


def _record_start_lines(data: bytes, delimiter: str) -> np.ndarray:
    """Physical start line of every CSV record (records may span lines inside quotes)."""
    reader = csv.reader(io.StringIO(data.decode("utf-8", "replace"), newline=""),
                        delimiter=delimiter)
    starts, end = [], 0
    # An unterminated quote makes one field of the rest of the file: lift the csv module's
    # 128 KiB field limit for this pass (pyarrow has read the same field already).
    limit = csv.field_size_limit()
    csv.field_size_limit(max(limit, len(data)))
    try:
        for _ in reader:
            starts.append(end + 1)
            end = reader.line_num
    finally:
        csv.field_size_limit(limit)
    return np.asarray(starts, np.int64)


def _csv_header(path: Path, data: bytes, delimiter: str) -> list[str]:
    """The header record's names, as pyarrow reads them (a quoted name may span lines)."""
    start, end, quotes = 0, data.find(b"\n"), 0
    while end >= 0:
        quotes += data.count(b'"', start, end)
        if quotes % 2 == 0:
            break
        start, end = end, data.find(b"\n", end + 1)  # inside a quoted name: read on
    head = (data if end < 0 else data[:end]).rstrip(b"\r")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(located(path, 1, f"the header is not UTF-8 text: {_shown(head)}")) from None
    return next(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter), [])


@dataclass(frozen=True)
class CsvLayout:
    """How a CSV file is laid out: what `_read_csv` needs of a preset, or of a side file
    (DIGINETICA's product categories) that is not a log of events.

    Attributes:
        name: what the file is, for messages (``not a readable NAME CSV``).
        delimiter: the field separator.
        header: whether the first record names the columns; if not, ``names`` does.
        names: the column names of a file without a header.
    """

    name: str
    delimiter: str = ","
    header: bool = True
    names: tuple[str, ...] = ()

    @classmethod
    def of(cls, preset: FormatPreset) -> CsvLayout:
        """The layout of a preset's CSV files."""
        return cls(preset.name, preset.delimiter, preset.header, preset.names)


def _read_csv(path: Path, data: bytes, layout: CsvLayout, bad: BadRows) -> _Raw:
    """A CSV's columns as text, each row with its physical line; rows with a wrong field
    count go to ``bad``, blank rows and rows with invalid UTF-8 are rejected in ``raw``."""
    if data.count(b"\r") != data.count(b"\r\n"):
        # pyarrow ends a line at a lone CR (old Mac files): number lines the same way.
        data = LONE_CR.sub(b"\n", data)
    names = _csv_header(path, data, layout.delimiter) if layout.header else list(layout.names)
    if layout.header and len(set(names)) != len(names):
        raise DataError(located(path, 1, f"duplicate column names in header {names}"))
    data, invalid = _replace_invalid_utf8(data)
    table, skipped = _parse_csv(path, data, layout, names)
    if table.column_names != names:
        raise DataError(located(path, 1, f"cannot read the header: columns {table.column_names}, "
                                         f"expected {names}"))
    # pyarrow numbers records (header = 1). Records are physical lines unless a quoted value
    # spans lines; then the csv module maps record numbers to the lines they start on.
    first = 2 if layout.header else 1
    bad_numbers = np.array(sorted(n for n, _, _ in skipped), np.int64)
    records = np.arange(first, first + table.num_rows + len(bad_numbers), dtype=np.int64)
    parsed = ~np.isin(records, bad_numbers)  # the records pyarrow kept: the table's rows
    physical = data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
    if physical != first - 1 + len(records):
        starts = _record_start_lines(data, layout.delimiter)
        to_line = lambda numbers: starts[np.minimum(numbers, len(starts)) - 1]  # noqa: E731
    else:
        to_line = lambda numbers: numbers  # noqa: E731
    for number, text, actual in skipped:
        bad.add(int(to_line(np.array([number]))[0]), "wrong_field_count", text,
                f"{actual} fields, expected {len(names)}")
    raw = _Raw({n: table.column(n).combine_chunks() for n in names}, to_line(records[parsed]),
               np.full(table.num_rows, None, object), np.full(table.num_rows, "", object), data)
    blank = np.ones(table.num_rows, bool)
    for col in raw.columns.values():
        blank &= pc.equal(pc.binary_length(col), 0).to_numpy(zero_copy_only=False)
    raw.reject(blank, "blank_line")
    if invalid:
        _reject_invalid_utf8(raw, invalid, to_line(records), physical, parsed)
    for name, col in list(raw.columns.items()):
        raw.columns[name] = _decode_utf8(col, raw, name)
    return raw


def _parse_csv(path: Path, data: bytes, layout: CsvLayout,
               names: list[str]) -> tuple[pa.Table, list[tuple[int, str, int]]]:
    """pyarrow's parse of valid UTF-8 ``data``, every column as bytes, and the records it
    skipped for a wrong field count as (record number, text, fields found)."""
    skipped: list[tuple[int, str, int]] = []

    def on_invalid(row: pacsv.InvalidRow) -> str:
        skipped.append((row.number, row.text, row.actual_columns))
        return "skip"

    read = pacsv.ReadOptions(use_threads=False,  # row numbers are only known single-threaded
                             column_names=None if layout.header else names,
                             block_size=max(1 << 20, min(len(data) + 1, 1 << 30)))
    parse = pacsv.ParseOptions(delimiter=layout.delimiter, invalid_row_handler=on_invalid,
                               ignore_empty_lines=False)  # keeps row numbers = physical lines
    convert = pacsv.ConvertOptions(column_types={n: pa.binary() for n in names})
    try:
        table = pacsv.read_csv(io.BytesIO(data), read_options=read, parse_options=parse,
                               convert_options=convert)
    except pa.ArrowInvalid as e:
        raise DataError(f"{path}: not a readable {layout.name} CSV ({first_line(e, limit=200)})") from None
    return table, skipped


def _reject_invalid_utf8(raw: _Raw, invalid: dict[int, bytes], starts: np.ndarray, physical: int,
                         parsed: np.ndarray) -> None:
    """Reject as non_utf8 the parsed records that span a line with invalid UTF-8.

    ``starts`` are the start lines of all records, ``parsed`` marks those pyarrow kept (the
    rows of ``raw``), ``physical`` is the file's number of lines."""
    # A record spans its start line up to the next record's; any invalid line in it counts.
    ends = np.r_[starts[1:] - 1, physical]
    lines = np.array(sorted(invalid), np.int64)
    first_bad = np.searchsorted(lines, starts[parsed], "left")
    mask = first_bad < np.searchsorted(lines, ends[parsed], "right")
    shown = np.array([invalid[lines[min(k, len(lines) - 1)]] for k in first_bad], object)
    raw.reject(mask, "non_utf8", shown, "invalid UTF-8 bytes")


def _replace_invalid_utf8(data: bytes) -> tuple[bytes, dict[int, bytes]]:
    """``data`` with invalid UTF-8 replaced by U+FFFD, and {physical line: the bad bytes}.

    pyarrow decodes a malformed row's text before it calls the invalid-row handler, so a
    short row with a Latin-1 byte would fail the whole file: the parser only sees valid text,
    and rows on the lines found here are rejected as non_utf8 afterwards."""
    if data.isascii():  # most logs: no copy, no decoding
        return data, {}
    try:
        data.decode("utf-8")
        return data, {}
    except UnicodeDecodeError:
        pass
    invalid = {}
    for number, line in enumerate(data.split(b"\n"), start=1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as e:  # a multi-byte sequence never spans a newline
            invalid[number] = line[max(0, e.start - 8):e.end + 8]
    return data.decode("utf-8", "replace").encode("utf-8"), invalid


def _decode_utf8(col: pa.Array, raw: _Raw, name: str) -> pa.Array:
    """Binary -> string; rows with invalid UTF-8 are rejected (fast path: all valid)."""
    try:
        return col.cast(pa.string())
    except pa.ArrowInvalid:
        pass
    values = col.to_pylist()
    ok = []
    mask = np.zeros(len(values), bool)
    for i, v in enumerate(values):
        try:
            ok.append(v.decode("utf-8") if v is not None else None)
        except UnicodeDecodeError:
            ok.append("")
            mask[i] = True
    raw.reject(mask, "non_utf8", np.array([v if v is None else v[:40] for v in values], object),
               f"column {name}: bytes")
    return pa.array(ok, pa.string())


def _read_jsonl(path: Path, data: bytes, bad: BadRows) -> _Raw:
    """JSON lines: pyarrow's fast reader for clean files, a per-line fallback for dirty ones."""
    fast = _pyarrow_json(data)
    if fast is not None:
        table, lines = fast
    else:
        numbers, records = [], []
        for number, _, obj in _json_objects(data, bad):
            numbers.append(number)
            records.append(obj)
        table, lines = _records_table(records), np.asarray(numbers, np.int64)
    raw = _Raw({n: table.column(n).combine_chunks() for n in table.column_names}, lines,
               np.full(table.num_rows, None, object), np.full(table.num_rows, "", object), data)
    _flatten_columns(raw)
    return raw


def _pyarrow_json(data: bytes) -> tuple[pa.Table, np.ndarray] | None:
    """pyarrow's parse of JSON lines and the physical line of each record, or None when
    pyarrow cannot read the file (a malformed line, types that differ across lines)."""
    import pyarrow.json as pajson

    try:
        table = pajson.read_json(io.BytesIO(data), read_options=pajson.ReadOptions(
            block_size=max(1 << 20, min(len(data) + 1, 1 << 30))))
        for column in table.columns:
            column.validate(full=True)  # pyarrow's JSON reader lets invalid UTF-8 through
    except pa.ArrowInvalid:
        return None
    # pyarrow skips blank lines; number the records by the physical lines they are on.
    lines = np.flatnonzero([bool(x.strip()) for x in data.split(b"\n")]).astype(np.int64) + 1
    return (table, lines) if len(lines) == table.num_rows else None


def _flatten_columns(raw: _Raw) -> None:
    """Objects and lists become their JSON text, bytes become text (rows that are not UTF-8
    are rejected), so every column compares and validates like text or numbers."""
    for name, col in raw.columns.items():
        if pa.types.is_dictionary(col.type):
            col = col.dictionary_decode()
        if pa.types.is_nested(col.type):
            col = pa.array([None if v is None else json.dumps(v, default=str, ensure_ascii=False)
                            for v in col.to_pylist()], pa.string())
        elif pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type) \
                or pa.types.is_fixed_size_binary(col.type):
            col = _decode_utf8(col, raw, name)
        raw.columns[name] = col


def _json_objects(data: bytes, bad: BadRows) -> Iterator[tuple[int, str, dict]]:
    """(physical line, its text, the object) for every line that is a JSON object; other
    non-blank lines go to ``bad`` as non_utf8 or malformed_json."""
    for number, text in enumerate(data.split(b"\n"), start=1):
        if not text.strip():
            continue
        try:
            decoded = text.decode("utf-8")
        except UnicodeDecodeError:
            bad.add(number, "non_utf8", text.decode("utf-8", "replace"), "invalid UTF-8 bytes")
            continue
        try:
            obj = json.loads(decoded)
        except json.JSONDecodeError as e:
            bad.add(number, "malformed_json", decoded, e.msg)
            continue
        except RecursionError:  # valid JSON nested deeper than Python's stack: a bad line
            bad.add(number, "malformed_json", decoded, "nested too deeply to read")
            continue
        except ValueError:  # valid JSON too: an integer Python refuses to convert
            bad.add(number, "malformed_json", decoded,
                    f"an integer of more than {sys.get_int_max_str_digits():,} digits")
            continue
        if not isinstance(obj, dict):
            bad.add(number, "malformed_json", decoded, f"expected an object, got {type(obj).__name__}")
            continue
        yield number, decoded, obj


def _records_table(records: list[dict]) -> pa.Table:
    """JSON objects as a table: one column per key any record has (a key the first record
    lacks is still a column); a column whose values pyarrow cannot type alike becomes text."""
    columns = {}
    for name in dict.fromkeys(k for r in records for k in r):
        values = [r.get(name) for r in records]
        try:
            columns[name] = pa.array(values)
        except (pa.ArrowException, OverflowError):
            # Mixed types across lines (or an integer beyond 64 bits): this column is text.
            columns[name] = pa.array([v if v is None or isinstance(v, str) else
                                      json.dumps(v) if isinstance(v, (dict, list)) else str(v)
                                      for v in values], pa.string())
    return pa.table(columns)


# --------------------------------------------------------------------------- OTTO sessions

# An OTTO line is {"session": int, "events": [{"aid": int, "ts": number (ms), "type": str}]}.
# Each event field: (key, is it of the right JSON type, reason when absent or null, reason
# when of the wrong type, what is expected). The values are checked afterwards like any log's.
OTTO_EVENT_FIELDS = (
    ("aid", lambda v: isinstance(v, int) and not isinstance(v, bool), "missing_item", "bad_item",
     "an integer (an OTTO article id)"),
    ("ts", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "bad_timestamp",
     "bad_timestamp", "a number (milliseconds)"),
    ("type", lambda v: isinstance(v, str), "unknown_event", "unknown_event",
     f"one of {list(PRESETS['otto'].events)}"),
)


def _read_otto(path: Path, data: bytes, bad: BadRows) -> _Raw:
    """OTTO sessions, one per line, exploded into one row per event.

    A line is the unit of quarantine: a session line with any bad event (a field missing or
    of the wrong type, an unknown type, an absurd time) is quarantined whole, once, under its
    first fault, and the other lines are read; a session with a hole could carry the wrong
    label. pyarrow reads a file whose values all have their types; any other file is read
    line by line, each line checked."""
    fast = _pyarrow_json(data)
    if fast is not None and _otto_typed(fast[0]):
        table, lines = fast
        events = table.column("events").combine_chunks()
        parent = pc.list_parent_indices(events)
        flat = pc.list_flatten(events)
        columns = {"session": table.column("session").combine_chunks().take(parent)}
        columns.update({key: pc.struct_field(flat, key) for key, *_ in OTTO_EVENT_FIELDS})
        line = lines[parent.to_numpy(zero_copy_only=False)]
    else:
        columns, line = _otto_per_line(data, bad)
    raw = _Raw(columns, line, np.full(len(line), None, object), np.full(len(line), "", object), data,
               whole_lines=True)
    _flatten_columns(raw)
    return raw


def _otto_typed(table: pa.Table) -> bool:
    """Whether every session and event field pyarrow read has its OTTO type and no nulls."""
    if "session" not in table.column_names or "events" not in table.column_names:
        return False
    session, events = table.column("session"), table.column("events")
    if not pa.types.is_integer(session.type) or session.null_count or events.null_count:
        return False
    if not pa.types.is_list(events.type) or not pa.types.is_struct(events.type.value_type):
        return False
    flat = pc.list_flatten(events.combine_chunks())
    if flat.null_count:
        return False
    kinds = {"aid": pa.types.is_integer,
             "ts": lambda t: pa.types.is_integer(t) or pa.types.is_floating(t),
             "type": pa.types.is_string}
    for key, is_kind in kinds.items():
        if flat.type.get_field_index(key) < 0:
            return False
        field_values = pc.struct_field(flat, key)
        if not is_kind(field_values.type) or field_values.null_count:
            return False
    return True


def _otto_per_line(data: bytes, bad: BadRows) -> tuple[dict[str, pa.Array], np.ndarray]:
    """The events of the OTTO lines that hold together; each other line goes to ``bad``."""
    sessions, aids, stamps, types, lines = [], [], [], [], []
    for number, text, obj in _json_objects(data, bad):
        fault = _otto_fault(obj)
        if fault is not None:
            bad.add(number, fault[0], text, fault[1])
            continue
        for event in obj["events"]:
            sessions.append(str(obj["session"]))
            aids.append(str(event["aid"]))
            stamps.append(_as_float(event["ts"]))
            types.append(event["type"])
            lines.append(number)
    columns = {"session": pa.array(sessions, pa.string()), "aid": pa.array(aids, pa.string()),
               "ts": pa.array(stamps, pa.float64()), "type": pa.array(types, pa.string())}
    return columns, np.asarray(lines, np.int64)


def _otto_fault(obj: dict) -> tuple[str, str] | None:
    """(reason, detail naming the field and value) of an OTTO line's first fault of shape
    or type, or None when the line holds together."""
    if obj.get("session") is None:
        return "missing_session", "no session id" if "session" not in obj else "session is null"
    if not OTTO_EVENT_FIELDS[0][1](obj["session"]):
        return "malformed_session", f"session {_shown_json(obj['session'])}, expected an integer"
    events = obj.get("events")
    if not isinstance(events, list):
        return "malformed_session", ("no 'events' list" if "events" not in obj else
                                     f"'events' is {_shown_json(events)}, expected a list of events")
    for k, event in enumerate(events, start=1):
        where = f"event {k} of {len(events)}"
        if not isinstance(event, dict):
            return "malformed_session", (f"{where} is {_shown_json(event)}, expected an object with "
                                         f"aid, ts, type")
        for key, right_type, absent, wrong, expected in OTTO_EVENT_FIELDS:
            if event.get(key) is None:
                return absent, f"{where}: no {key}" if key not in event else f"{where}: {key} is null"
            if not right_type(event[key]):
                return wrong, f"{where}: {key} {_shown_json(event[key])}, expected {expected}"
    return None


def _as_float(value: int | float) -> float:
    """A JSON number as float64; an integer too big for one is infinite (an absurd time)."""
    try:
        return float(value)
    except OverflowError:
        return math.copysign(math.inf, value)


def _shown_json(value: object) -> str:
    """A JSON value as JSON text, cut like `_shown`."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (ValueError, RecursionError):
        return type(value).__name__
    return f"{text[:MAX_SHOWN_CHARS]}... ({len(text)} characters)" if len(text) > MAX_SHOWN_CHARS else text


def _read_parquet(path: Path, data: bytes) -> _Raw:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(data))
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{path}: not a readable Parquet file ({first_line(e, limit=200)})") from None
    columns = {n: table.column(n).combine_chunks() for n in table.column_names}
    raw = _Raw(columns, np.arange(1, table.num_rows + 1, dtype=np.int64),
               np.full(table.num_rows, None, object), np.full(table.num_rows, "", object))
    _flatten_columns(raw)
    return raw


# --------------------------------------------------------------------------- values

def _as_text(col: pa.Array) -> pa.Array:
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return col
    return col.cast(pa.string())


def _numbers(col: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(values, valid): numeric columns as float64; text parsed where it looks like a number."""
    if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
        # safe=False: integers beyond 2**53 (nanosecond times) round instead of raising.
        values = pc.cast(col, pa.float64(), safe=False).to_numpy(zero_copy_only=False)
        valid = ~np.isnan(values)
        return np.where(valid, values, 0.0), valid
    text = _as_text(col)
    valid = pc.fill_null(pc.match_substring_regex(text, NUMBER_RE), False)
    filled = pc.utf8_trim_whitespace(pc.if_else(valid, text, "0"))
    return (pc.cast(filled, pa.float64()).to_numpy(zero_copy_only=False),
            valid.to_numpy(zero_copy_only=False))


def _datetimes(col: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    text = pc.utf8_trim_whitespace(_as_text(col))
    parsed = None
    for fmt in DATETIME_FORMATS:
        attempt = pc.strptime(text, format=fmt, unit="ms", error_is_null=True)
        if "%z" not in fmt:
            attempt = pc.cast(attempt, pa.timestamp("ms"))
        else:
            attempt = pc.cast(attempt, pa.timestamp("ms", tz="UTC")).cast(pa.timestamp("ms"))
        parsed = attempt if parsed is None else pc.coalesce(parsed, attempt)
    valid = pc.is_valid(parsed).to_numpy(zero_copy_only=False)
    ms = pc.fill_null(pc.cast(parsed, pa.int64()), 0).to_numpy(zero_copy_only=False)
    return ms.astype(np.float64) / 1000.0, valid


def _timestamps(raw: _Raw, preset: FormatPreset, source_col: str) -> np.ndarray:
    col = raw.columns[source_col]
    unit = preset.time_unit
    if pa.types.is_timestamp(col.type) or pa.types.is_date(col.type):
        # Typed times (Parquet, or ISO text pyarrow's JSON reader parsed): naive ones are UTC.
        ms = pc.cast(col, pa.timestamp("ms", tz=getattr(col.type, "tz", None)), safe=False)
        valid = pc.is_valid(ms).to_numpy(zero_copy_only=False)
        ts = pc.fill_null(pc.cast(ms, pa.int64()), 0).to_numpy(zero_copy_only=False) / 1000.0
    else:
        parsed = None
        if unit is TimeUnit.AUTO:
            unit, parsed = _auto_unit(col)
        if unit is TimeUnit.DATETIME:
            ts, valid = _datetimes(col)
        else:
            ts, valid = parsed or _numbers(col)
            if unit is TimeUnit.MILLISECONDS:
                ts = ts / 1000.0
    raw.reject(~valid, "bad_timestamp", _as_text(col), f"column {source_col}:")
    if preset.date_column is not None:
        day, day_ok = _datetimes(pc.binary_join_element_wise(_as_text(raw.columns[preset.date_column]),
                                                             " 00:00:00", ""))
        raw.reject(~day_ok, "bad_timestamp", _as_text(raw.columns[preset.date_column]),
                   f"column {preset.date_column}:")
        ts = ts + day
    absurd = valid & ~((ts >= MIN_TS) & (ts <= MAX_TS))
    raw.reject(absurd, "absurd_timestamp", _as_text(col),
               f"column {source_col}: outside 2000-01-01..2100-01-01:")
    return ts


def _auto_unit(col: pa.Array) -> tuple[TimeUnit, tuple[np.ndarray, np.ndarray] | None]:
    """What ``auto`` means for an untyped time column: datetime for text without a number in
    it, else milliseconds or seconds by `_mostly_ms`; with the parsed numbers, when parsed."""
    is_text = pa.types.is_string(col.type) or pa.types.is_large_string(col.type)
    if is_text and not pc.any(pc.match_substring_regex(col, NUMBER_RE)).as_py():
        return TimeUnit.DATETIME, None
    ts, valid = _numbers(col)
    return (TimeUnit.MILLISECONDS if _mostly_ms(ts[valid]) else TimeUnit.SECONDS), (ts, valid)


def _mostly_ms(ts: np.ndarray) -> bool:
    """Whether more numeric times are plausible (2000..2100) as milliseconds than as seconds.

    A count, not a median: a few absurd values (1e400, a stray ms value in a seconds log)
    must not decide the unit of every row."""
    as_s = np.count_nonzero((ts >= MIN_TS) & (ts <= MAX_TS))
    as_ms = np.count_nonzero((ts >= MIN_TS * 1000.0) & (ts <= MAX_TS * 1000.0))
    return as_ms > as_s


def _ids(raw: _Raw, column: str, reason: str | None) -> pa.Array:
    text = pc.utf8_trim_whitespace(_as_text(raw.columns[column]))
    empty = pc.fill_null(pc.equal(text, ""), True).to_numpy(zero_copy_only=False)
    if reason:
        raw.reject(empty, reason, np.full(len(empty), "", object), f"column {column}: empty value")
    return pc.fill_null(text, "")


def _canonicalize(path: Path, raw: _Raw, preset: FormatPreset, bad: BadRows,
                  rows_before: int) -> EventLog:
    """The columns read, validated into canonical events.

    Each check rejects the rows it fails; a row keeps the first reason it gets, so the
    order below (event, time, item, session, user, price) decides which reason a row with
    several faults is counted under. Rejected rows go to ``bad``, the rest to the EventLog.
    """
    has = _mapped_columns(path, raw, preset, bad, rows_before)
    codes = _event_codes(raw, preset, has["event"])
    ts = _timestamps(raw, preset, has["ts"])
    item = _ids(raw, has["item"], "missing_item")
    user, session = _user_and_session(raw, preset, has)
    category = _ids(raw, has["category"], None) if "category" in has else None
    price = _prices(raw, has["price"]) if "price" in has else None

    good = np.equal(raw.reason, None)
    rows = len(good)
    if raw.whole_lines and not good.all():
        good, rows = _reject_whole_lines(raw, good, bad)
    else:
        for i in np.flatnonzero(~good):
            bad.add(int(raw.line[i]), raw.reason[i], raw.text_of(int(i)), raw.detail[i])
    keep = pa.array(np.flatnonzero(good))
    return EventLog(
        source=str(path), format=preset.name,
        user=Ids.encode(user.take(keep)),
        session=Ids.encode(session.take(keep)) if session is not None else None,
        ts=ts[good], event=codes[good],
        item=Ids.encode(item.take(keep)),
        category=Ids.encode(category.take(keep)) if category is not None else None,
        price=price[good] if price is not None else None,
        line=raw.line[good], rows_read=rows_before + rows, bad=bad,
        utc_offset_hours=preset.utc_offset_hours,
        has_user_ids=preset.has_user_ids and "user" in has,
    )


def _reject_whole_lines(raw: _Raw, good: np.ndarray, bad: BadRows) -> tuple[np.ndarray, int]:
    """Reject every row of a line that holds a bad row, as one bad row under its first fault.

    For logs of several rows (events) per line, whose rows are in line order (OTTO).

    Returns:
        (the rows kept, the rows read: rows kept + lines rejected).
    """
    bad_lines = np.unique(raw.line[~good])
    starts = np.searchsorted(raw.line, bad_lines, "left")
    ends = np.searchsorted(raw.line, bad_lines, "right")
    for number, lo, hi in zip(bad_lines, starts, ends, strict=True):
        faults = lo + np.flatnonzero(~good[lo:hi])
        i = int(faults[0])
        more = f" (and {len(faults) - 1} more bad events)" if len(faults) > 1 else ""
        bad.add(int(number), raw.reason[i], raw.text_of(i),
                f"event {i - lo + 1} of {hi - lo}: {raw.detail[i]}{more}")
    keep = good & ~np.isin(raw.line, bad_lines)
    return keep, int(keep.sum()) + len(bad_lines)


def _mapped_columns(path: Path, raw: _Raw, preset: FormatPreset, bad: BadRows,
                    rows_before: int) -> dict[str, str]:
    """Canonical field -> the column of ``raw`` that holds it; DataError when a required
    one is missing. A format of one event type gets its constant ``event`` column here."""
    if not raw.columns and rows_before:  # no JSON line parsed: there are no columns to check
        raise DataError(f"{path}: none of its {rows_before} rows parse as {preset.name}; "
                        f"first: {bad.first_message()}")
    has = {f: src for f, src in preset.columns.items() if src in raw.columns}
    required = ["ts", "item"] + ([] if preset.constant_event else ["event"])
    missing = [preset.columns[f] for f in required if f not in has]
    if "user" not in has and "session" not in has:
        missing += [preset.columns.get("user", "user")]
    if preset.date_column and preset.date_column not in raw.columns:
        missing.append(preset.date_column)
    if missing:
        raise DataError(f"{path}: missing columns {missing}; found {sorted(raw.columns)}")
    if preset.constant_event and "event" not in has:
        raw.columns["event"] = pa.array([preset.constant_event] * len(raw.line), pa.string())
        has["event"] = "event"
    return has


def _event_codes(raw: _Raw, preset: FormatPreset, column: str) -> np.ndarray:
    """Canonical event codes (int8); values the preset does not map are rejected."""
    event_text = pc.utf8_trim_whitespace(_as_text(raw.columns[column]))
    keys = list(preset.events)
    index = pc.fill_null(pc.index_in(event_text, value_set=pa.array(keys)), -1).to_numpy(
        zero_copy_only=False).astype(np.int64)
    known = index >= 0
    index = np.where(known, index, 0)
    raw.reject(~known, "unknown_event", event_text,
               f"column {column}: expected one of {keys}, got")
    return np.array([EVENT_CODE[preset.events[k]] for k in keys], np.int8)[index]


def _user_and_session(raw: _Raw, preset: FormatPreset,
                      has: dict[str, str]) -> tuple[pa.Array, pa.Array | None]:
    """User ids, and session ids where the log has them. An anonymous user (no id, or the
    preset's ``missing_user``) becomes ``s:SESSION``, as does every user of a log without
    user ids: sessions never merge across people."""
    session = _ids(raw, has["session"], "missing_session") if "session" in has else None
    if "user" not in has:
        return pc.binary_join_element_wise("s:", session, ""), session
    user = _ids(raw, has["user"], None if session is not None else "missing_user")
    if session is not None:
        anonymous = pc.equal(user, "")
        if preset.missing_user is not None:
            anonymous = pc.or_(anonymous, pc.equal(user, preset.missing_user))
        user = pc.if_else(anonymous, pc.binary_join_element_wise("s:", session, ""), user)
    return user, session


def _prices(raw: _Raw, column: str) -> np.ndarray:
    """Prices as float64, NaN where absent; text that is not a number, and negative or
    infinite prices, are rejected."""
    col = raw.columns[column]
    text = _as_text(col)
    if pa.types.is_floating(col.type):
        present = pc.is_valid(col).to_numpy(zero_copy_only=False)
    else:
        present = pc.fill_null(pc.not_equal(pc.utf8_trim_whitespace(text), ""), False).to_numpy(
            zero_copy_only=False)
    values, valid = _numbers(col)
    raw.reject(present & ~valid, "bad_price", text, f"column {column}: not a number:")
    # The rule of edge_runtime.events (MIN_PRICE), which the live path applies to one event.
    raw.reject(present & valid & ~((values >= MIN_PRICE) & np.isfinite(values)), "bad_price", text,
               f"column {column}: negative or infinite:")
    return np.where(present & valid, values, np.nan)


def _read_one(path: Path, data: bytes, preset: FormatPreset, bad: BadRows) -> EventLog:
    kind = _file_kind(path, data)
    before = bad.total
    if kind == "parquet":
        raw = _read_parquet(path, data)
    elif kind == "jsonl":
        raw = _read_otto(path, data, bad) if preset.name == "otto" else _read_jsonl(path, data, bad)
    else:
        raw = _read_csv(path, data, CsvLayout.of(preset), bad)
    return _canonicalize(path, raw, preset, bad, rows_before=bad.total - before)


def read_log(path: str | Path, format: str | None = None, preset: FormatPreset | None = None,
             strict: bool = False) -> EventLog:
    """Read a log into canonical events.

    Args:
        path: a CSV, JSONL or Parquet file, optionally gzipped.
        format: a preset name (``taobao``, ``rees46``, ``diginetica``, ``otto``, ``retailrocket``,
            ``canonical``); None detects it from the first line.
        preset: a custom preset (``--format csv`` with ``--map``); overrides ``format``.
        strict: raise on the first bad row instead of quarantining it.

    Returns:
        The EventLog, in file order, with its bad rows in ``log.bad``.

    Raises:
        DataError: a file-level fault (see `read_bytes`), no valid row at all, any bad row with
            ``strict``, or the memory running out while the log is parsed.
        ConfigError: an unknown format name, or ``UBP_EDGE_MAX_LOG_BYTES`` is not a size.

    Example:
        >>> log = read_log("../shared/data/taobao/UserBehavior_sample.csv", "taobao")
        >>> len(log), log.bad.total
        (65526, 0)
    """
    path = Path(path)
    data = read_bytes(path)
    try:
        return _read_log(path, data, format, preset, strict)
    except MemoryError:  # pyarrow's ArrowMemoryError is one too
        # A text under the limit can still outgrow this machine's free memory while parsed.
        raise DataError(f"{path}: out of memory parsing its {len(data):,} bytes of text (the reader "
                        f"needs about 6 times that); split the log, or free memory") from None


def _read_log(path: Path, data: bytes, format: str | None, preset: FormatPreset | None,
              strict: bool) -> EventLog:
    """`read_log` once the file's text is in memory."""
    if preset is None:
        preset = get_preset(format or detect_format(path, data))
    bad = BadRows(str(path))
    log = _read_one(path, data, preset, bad)
    if preset.name == "diginetica":
        log = _with_diginetica_purchases(path, log, preset)
    check_has_events(path, _file_kind(path, data), preset.name, log.rows_read, len(log), bad)
    bad.raise_if_strict(strict)
    return log


def check_has_events(path: str | Path, kind: str, fmt: str, rows_read: int, events: int,
                     bad: BadRows | None) -> None:
    """DataError when a log (read whole, or block by block) has no data row, or no row that
    parses; ``bad`` holds its first bad rows, for the message."""
    if rows_read == 0:
        raise DataError(f"{path}: no data rows, only a header" if kind == "csv" else f"{path}: no data rows")
    if events == 0:
        first = bad.first_message() if bad is not None else "none"
        raise DataError(f"{path}: none of its {rows_read} rows parse as {fmt}; first: {first}")


def _with_diginetica_purchases(path: Path, views: EventLog, preset: FormatPreset) -> EventLog:
    """Add the purchases of the views' sessions (train-purchases.csv beside the views file)
    and item categories (product-categories.csv), as DIGINETICA ships them."""
    purchases_path = path.with_name(preset.extra["purchases_file"])
    if not purchases_path.exists():
        raise DataError(f"{purchases_path}: no such file (DIGINETICA purchases are read from "
                        f"{preset.extra['purchases_file']} beside the views file)")
    purchase_preset = FormatPreset(
        name="diginetica", delimiter=";", time_unit=TimeUnit.MILLISECONDS, date_column="eventdate",
        columns={"session": "sessionId", "user": "userId", "item": "itemId", "ts": "timeframe"},
        events={"purchase": "purchase"}, constant_event="purchase", missing_user="NA",
        has_user_ids=False)
    data = read_bytes(purchases_path)
    pbad = BadRows(str(purchases_path))
    raw = _read_csv(purchases_path, data, CsvLayout.of(purchase_preset), pbad)
    buys = _canonicalize(purchases_path, raw, purchase_preset, pbad, rows_before=pbad.total)
    wanted = np.isin(buys.session.values(), views.session.names)
    # Purchases of sessions outside this views file belong to other samples: not bad, not ours.
    for row in pbad.rows:
        views.bad.add(row["line"], row["reason"], row["raw"], row["detail"], source=str(purchases_path))
    sel = np.flatnonzero(wanted)
    merged = _concat(views, buys, sel)
    merged.rows_read += pbad.total
    cat_path = path.with_name(preset.extra["categories_file"])
    if cat_path.exists():
        lookup, cat_rows = _diginetica_categories(cat_path, views.bad)
        merged.rows_read += cat_rows
        items = merged.item.names
        cat_names = np.array([lookup.get(i, "") for i in items], object)
        merged.category = Ids.encode(pa.array(cat_names[merged.item.codes], pa.string()))
    return merged


def _diginetica_categories(path: Path, bad: BadRows) -> tuple[dict[str, str], int]:
    """DIGINETICA's item -> category table (``itemId;categoryId``), and its bad rows.

    File-level faults (unreadable, empty, not CSV, a header without ``itemId`` and
    ``categoryId``) are DataErrors naming the file: the user put it there to be read. Row-level
    faults (a wrong field count, bytes that are not UTF-8, an empty item id) go to ``bad`` with
    this file as their source; those items get no category, as items the file does not list.

    Returns:
        ({item id: category id}, the number of bad rows, to count among the rows read).
    """
    before = bad.total
    cbad = BadRows(str(path))
    raw = _read_csv(path, read_bytes(path), CsvLayout("DIGINETICA categories", delimiter=";"), cbad)
    missing = [c for c in ("itemId", "categoryId") if c not in raw.columns]
    if missing:
        raise DataError(located(path, 1, f"missing columns {missing}; found {sorted(raw.columns)} "
                                         f"(DIGINETICA item categories: itemId;categoryId)"))
    item = _ids(raw, "itemId", "missing_item")
    category = pc.utf8_trim_whitespace(pc.fill_null(raw.columns["categoryId"], ""))
    good = np.equal(raw.reason, None)
    for i in np.flatnonzero(~good):
        cbad.add(int(raw.line[i]), raw.reason[i], raw.text_of(int(i)), raw.detail[i])
    for row in cbad.rows:
        bad.add(row["line"], row["reason"], row["raw"], row["detail"], source=str(path))
    keep = pa.array(np.flatnonzero(good))
    lookup = dict(zip(item.take(keep).to_pylist(), category.take(keep).to_pylist(), strict=True))
    return lookup, bad.total - before


def _concat(a: EventLog, b: EventLog, b_rows: np.ndarray) -> EventLog:
    def ids(x: Ids, y: Ids) -> Ids:
        return Ids.encode(pa.array(np.concatenate([x.values(), y.values(b_rows)]), pa.string()))

    return EventLog(
        source=a.source, format=a.format, user=ids(a.user, b.user), session=ids(a.session, b.session),
        ts=np.concatenate([a.ts, b.ts[b_rows]]), event=np.concatenate([a.event, b.event[b_rows]]),
        item=ids(a.item, b.item), category=None, price=None,
        line=np.concatenate([a.line, -b.line[b_rows]]),  # negative: a line of the purchases file
        rows_read=a.rows_read + len(b_rows), bad=a.bad,
        utc_offset_hours=a.utc_offset_hours, has_user_ids=a.has_user_ids)


# --------------------------------------------------------------------------- streaming (prepare)
# `trainer.prepare.blocks` reads a log larger than memory block by block through these: the
# same file checks, parsers and value rules as `read_log`, on a piece of the text at a time.

def stream_text(path: str | Path, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    """The text of a log (gunzipped when it is gzip) in chunks, without holding it whole.

    The file-level checks of `read_bytes` apply (missing, a directory, a device, binary or
    UTF-16 content, damaged gzip); a UTF-8 byte-order mark is dropped. Parquet files are
    not text: `parquet_batches` reads them.

    Raises:
        DataError: one line naming the file, as `read_bytes`.
    """
    p = Path(path)
    st = _stat_log(p)
    try:
        source = _read_fifo_stream(p) if stat.S_ISFIFO(st.st_mode) else open(p, "rb")
        with source:
            compressed = source.peek(2)[:2] == b"\x1f\x8b" if hasattr(source, "peek") else False
            stream = gzip.GzipFile(fileobj=source) if compressed else source
            try:
                first = stream.read(FIRST_BLOCK)
                if not first or first.isspace():
                    rest = stream.read(chunk_bytes)
                    if not rest or (first + rest).isspace():
                        raise DataError(f"{p}: empty file")
                    first += rest
                _refuse_non_text(p, first[:FIRST_BLOCK])
                yield first[3:] if first.startswith(b"\xef\xbb\xbf") else first
                while chunk := stream.read(chunk_bytes):
                    yield chunk
            except EOFError:
                raise DataError(f"{p}: compressed stream ends early (truncated gzip)") from None
            except (gzip.BadGzipFile, zlib.error) as e:
                raise DataError(f"{p}: corrupted gzip stream ({e})") from None
    except OSError as e:
        raise DataError(f"{p}: cannot read ({e.strerror or e})") from None


def _read_fifo_stream(p: Path):
    """A named pipe opened for streaming (peekable). Opened without blocking, so a FIFO
    nobody writes to is refused at once instead of waiting forever: a first non-blocking read
    gives b"" only when no writer holds the pipe and it is empty."""
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise DataError(f"{p}: cannot read ({e.strerror or e})") from None
    try:
        first = os.read(fd, CHUNK_BYTES)
    except BlockingIOError:
        first = None  # a writer holds the pipe and has not written yet: wait for it
    if first == b"":
        os.close(fd)
        raise DataError(f"{p}: a named pipe (FIFO) with no writer; start the program that "
                        f"writes to it first (e.g. `cat log.csv > {p} &`), or pass the file")
    os.set_blocking(fd, True)
    return io.BufferedReader(_Prefixed(first or b"", open(fd, "rb", buffering=0)))


class _Prefixed(io.RawIOBase):
    """A raw stream that gives ``first`` and then what ``rest`` holds (a pipe's first read,
    taken to see whether it has a writer, put back in front)."""

    def __init__(self, first: bytes, rest) -> None:
        self._first, self._rest = first, rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._first:
            n = min(len(buffer), len(self._first))
            buffer[:n], self._first = self._first[:n], self._first[n:]
            return n
        return self._rest.readinto(buffer)

    def close(self) -> None:
        self._rest.close()
        super().close()


def is_parquet(path: str | Path) -> bool:
    """Whether the file starts with Parquet's magic bytes (a regular file only: opening a pipe
    to look would wait for its writer, and take its first bytes)."""
    if not os.path.isfile(path):
        return False
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"PAR1"
    except OSError:
        return False


def file_kind(path: str | Path, first: bytes) -> str:
    """``csv``, ``jsonl`` or ``parquet``: how a log whose text starts with ``first`` is parsed."""
    return _file_kind(Path(path), first)


def parse_events(path: str | Path, text: bytes, preset: FormatPreset, bad: BadRows) -> EventLog:
    """Validate whole lines of a log (with a CSV's header first) into canonical events, with
    exactly the rules of `read_log`; line numbers are those of ``text``. Bad rows go to ``bad``."""
    return _read_one(Path(path), text, preset, bad)


def parse_parquet_rows(path: str | Path, table: pa.Table, first_row: int, preset: FormatPreset,
                       bad: BadRows) -> EventLog:
    """Validate rows of a Parquet log (``first_row`` is the 1-based number of the first) into
    canonical events with the rules of `read_log`."""
    columns = {n: table.column(n).combine_chunks() for n in table.column_names}
    rows = np.arange(first_row, first_row + table.num_rows, dtype=np.int64)
    raw = _Raw(columns, rows, np.full(table.num_rows, None, object), np.full(table.num_rows, "", object))
    _flatten_columns(raw)
    return _canonicalize(Path(path), raw, preset, bad, rows_before=0)


def with_time_unit(path: str | Path, text: bytes, preset: FormatPreset) -> FormatPreset:
    """``preset`` with its ``auto`` time unit decided on ``text`` (a log's first block), so that
    every later block of the same log is read with the same unit.

    `read_log` decides ``auto`` on the whole column; a streamed log decides it on its first
    block, which gives the same unit unless a log changes unit after its first block."""
    if preset.time_unit is not TimeUnit.AUTO:
        return preset
    bad = BadRows(str(path))
    if _file_kind(Path(path), text) == "jsonl":
        reader = _read_otto if preset.name == "otto" else _read_jsonl
        raw = reader(Path(path), text, bad)
    else:
        raw = _read_csv(Path(path), text, CsvLayout.of(preset), bad)
    return with_time_unit_of(preset, raw.columns.get(preset.columns.get("ts")))


def with_time_unit_of(preset: FormatPreset, column: pa.Array | None) -> FormatPreset:
    """``preset`` with its ``auto`` time unit decided on a first block's time ``column``, by
    the rule `read_log` applies to the whole column (typed times need no unit)."""
    if preset.time_unit is not TimeUnit.AUTO or column is None:
        return preset  # no column: read_log's own checks name it
    if pa.types.is_timestamp(column.type) or pa.types.is_date(column.type):
        return preset
    return replace(preset, time_unit=_auto_unit(column)[0])
