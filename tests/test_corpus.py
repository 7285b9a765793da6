"""The corpus of bad inputs (tests/corpus/, described line by line in its README.md).

One table, one test: each row is a file (committed, or generated into tmp_path when it is big,
binary or not a plain file: the 100,000-event session, 1 MB lines, gzip that ends early or
expands past the limit, Parquet files of the wrong schema, symbolic links, a device, pipes,
DIGINETICA's side files), its format, and the outcome: accepted with so many events and bad rows
by reason, or rejected with a DataError whose one-line message names the file and the problem.
A case may set environment variables (the size limit, lowered so a bomb stays small).

For every accepted file: ``len(log) + log.bad.total == log.rows_read`` and the quarantine file
that ``log.bad.write`` produces holds exactly ``bad.total`` lines, each with line, reason and raw.
"""

from __future__ import annotations

import bz2
import datetime as dt
import gzip
import json
import os
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from edge_runtime.errors import DataError
from edge_runtime.events import EVENT_TYPES
from trainer.dataset import encode_sessions, new_encoder, raw_sessions
from trainer.quarantine import MAX_RAW_CHARS
from trainer.readers import EventLog, read_log
from trainer.sessions import sessionize

CORPUS = Path(__file__).parent / "corpus"
HEADER = b"user,ts,event,item,category,price\n"
T0 = 1_700_000_000
MIDNIGHT_2023_11_14 = 1_699_920_000.0


@dataclass(frozen=True)
class Accepted:
    """Read, with ``events`` events out of ``rows`` data rows and these bad rows by reason."""

    events: int
    rows: int
    bad: dict[str, int] = field(default_factory=dict)
    check: Callable[[EventLog], None] | None = None  # what the normalisation did


@dataclass(frozen=True)
class Rejected:
    """DataError; its one-line message starts with the file's path and matches ``message``."""

    message: str
    # The file the message names, when not the one read: a side file beside it (DIGINETICA).
    names: str | None = None


@dataclass(frozen=True)
class Case:
    file: str
    format: str | None  # None: detected from the first line
    outcome: Accepted | Rejected
    # Writes the file (big, binary or special cases are not committed); may return a function
    # that releases what it holds (an open pipe).
    build: Callable[[Path], Callable[[], None] | None] | None = None
    env: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------- checks

def items(log: EventLog) -> list[str]:
    return [str(x) for x in log.item.values()]


def session_items(log: EventLog) -> list[list[str]]:
    s = sessionize(log)
    return [[str(x) for x in log.item.values(s.order[s.offsets[k]:s.offsets[k + 1]])]
            for k in range(len(s))]


def check_bom(log):
    assert items(log) == ["i1"] * 3 and list(log.user.values()) == ["u1"] * 3


def check_quotes(log):
    assert items(log) == ["i1", 'i2 "quoted"', '5" screen', "multi\nline", "i1"]
    assert list(log.line) == [2, 3, 4, 5, 7]  # the quoted newline makes line 5 a continuation
    row = log.bad.rows[0]
    assert row["line"] == 8 and "u1,1700000060" in row["raw"]  # the rest of the file


def check_events_trimmed(log):
    assert [EVENT_TYPES[e] for e in log.event] == ["view", "cart", "purchase"]


def check_time_window(log):
    assert list(log.ts) == [T0, 946_684_800.0, T0 + 10.25]


def check_prices(log):
    np.testing.assert_array_equal(log.price, [9.5, np.nan, 0.0, 0.0, 1e12, 3.5])


def check_duplicates(log):
    s = sessionize(log)
    assert len(s) == 1 and list(np.diff(s.offsets)) == [7]
    assert s.prefix_len[0] == 5 and s.label[0] == 1


def check_out_of_order(log):
    s = sessionize(log)
    assert session_items(log) == [["i8", "i9"], ["i1", "i1b", "i2", "i3"]]
    assert list(s.prefix_len) == [2, 3] and list(s.label) == [0, 1]


def check_non_utf8(log):
    assert items(log) == ["i1", "café", "i1"]
    details = {r["line"]: r["detail"] for r in log.bad.rows}
    assert "\\xe9" in details[3] and "\\xff\\xfe" in details[4]


def check_missing_ids(log):
    assert items(log) == ["i1", "i2", "i1"] and len(np.unique(log.item.codes)) == 2
    assert list(log.category.values()) == ["c1", "", "c1"]


def check_line_endings(log):
    assert items(log) == ["i1", "i2"] and [r["line"] for r in log.bad.rows] == [3] + (
        [4] if log.bad.counts.get("blank_line") else [])


def check_nul(log):
    assert items(log) == ["i\x001", "i1"]


def check_quoted_header(log):
    assert log.format == "canonical" and items(log) == ["i1", "i1"]
    assert [EVENT_TYPES[e] for e in log.event] == ["view", "cart"]


def check_mixed_types(log):
    assert items(log) == ["i1", "17", '{"sku": 1}', "i1", "i1"]
    assert list(log.ts) == [T0 + 1, T0, T0, T0 + 9, T0 + 10]
    np.testing.assert_array_equal(log.price, [np.nan, np.nan, np.nan, 4.5, np.nan])


def check_nan_values(log):
    np.testing.assert_array_equal(log.price, [np.nan, 2.5])


def check_iso_times(log):
    assert list(log.ts) == [MIDNIGHT_2023_11_14, MIDNIGHT_2023_11_14, MIDNIGHT_2023_11_14 + 5]


def check_malformed_jsonl(log):
    assert list(log.line) == [1, 8, 9]


# --------------------------------------------------------------------------- generated files

SESSION_EVENTS = 100_000


def build_long_session(path: Path) -> None:
    """One shopper, 100,000 events one second apart, the only purchase last."""
    n = SESSION_EVENTS
    kinds = np.where(np.arange(n) % 10 == 9, "cart", "view").astype(object)
    kinds[-1] = "purchase"
    rows = [f"u1,{T0 + i},{kinds[i]},i{i % 997},c{i % 13},{(i % 50) + 0.5}" for i in range(n)]
    path.write_text(HEADER.decode() + "\n".join(rows) + "\n")


def check_long_session(log):
    s = sessionize(log)
    assert len(s) == 1 and s.label[0] == 1 and s.prefix_len[0] == SESSION_EVENTS - 1
    enc = new_encoder(s, max_len=50)
    k = len(enc.features)
    enc.mean_, enc.scale_ = np.zeros(k), np.ones(k)
    (x,) = encode_sessions(s, np.array([0]), enc, window=50)
    (raw,) = raw_sessions(s, np.array([0]), enc, window=50)
    # Training's window of 50 is the prefix's last 50 events, encoded in full context.
    assert x.shape == (50, k) and x.dtype == np.float32 and np.isfinite(x).all()
    position = raw[:, enc.features.index("log_position")]
    np.testing.assert_array_equal(position, np.log1p(np.arange(SESSION_EVENTS - 51, SESSION_EVENTS - 1)))
    # The live path, pushed all 99,999 events, ends on the same rows.
    state, live = enc.start(s.context[0]), []
    for e in s.prefix_events(0):
        live.append(enc.step(state, {"ts": log.ts[e], "event": EVENT_TYPES[log.event[e]],
                                     "item": log.item.names[log.item.codes[e]],
                                     "category": log.category.names[log.category.codes[e]],
                                     "price": log.price[e]}))
    assert np.array_equal(np.stack(live[-50:]), x)
    # Scoring reads the whole prefix: the live path's rows, all 99,999 of them.
    (whole,) = encode_sessions(s, np.array([0]), enc, window=None)
    assert np.array_equal(np.stack(live), whole)


MEGABYTE = 1 << 20


def build_long_lines(path: Path) -> None:
    big = b"x" * MEGABYTE
    path.write_bytes(HEADER + b"u1,1700000000,view,i1,c1,1\n"
                     + b"u1,1700000001,view," + big + b",c1,1\n"      # a 1 MB item id
                     + big + b"\n"                                    # a 1 MB line, no commas
                     + b"u1,1700000002," + big + b",i1,c1,1\n"        # a 1 MB event name
                     + b"u1,1700000003,cart,i1,c1,1\n")


def check_long_lines(log):
    assert sorted(len(x) for x in log.item.names) == [2, MEGABYTE]
    for row in log.bad.rows:  # bounded, so a 10 MB line cannot blow up the quarantine file
        assert len(row["raw"]) <= MAX_RAW_CHARS and len(row["detail"]) < 300


def build_truncated_gzip(path: Path) -> None:
    rows = b"".join(b"u%d,%d,view,i%d,c1,1.0\n" % (i % 50, T0 + i, i) for i in range(5000))
    data = gzip.compress(HEADER + rows)
    path.write_bytes(data[:len(data) // 2])


def build_parquet_missing_columns(path: Path) -> None:
    pq.write_table(pa.table({"visitor": ["u1"], "time": [T0], "action": ["view"]}), path)


def build_parquet_wrong_types(path: Path) -> None:
    """Columns of the right names and the wrong types."""
    pq.write_table(pa.table({
        "user": pa.array([b"u1", b"u1", b"u\xff", b"u2", b"u2", b"u2"], pa.binary()),
        "ts": pa.array([dt.datetime(2023, 11, 14), dt.datetime(2023, 11, 14, 0, 0, 5),
                        dt.datetime(2023, 11, 14), None, dt.datetime(2023, 11, 14),
                        dt.datetime(2023, 11, 14, 0, 1)], pa.timestamp("us")),
        "event": pa.array(["view", "cart", "view", "view", "teleport", "purchase"]).dictionary_encode(),
        "item": pa.array([{"sku": 1}, {"sku": 1}, {"sku": 2}, {"sku": 3}, {"sku": 4}, {"sku": 5}]),
        "price": pa.array(["9.5", "abc", "1", "1", "1", None]),
    }), path)


def check_parquet_wrong_types(log):
    assert list(log.ts) == [MIDNIGHT_2023_11_14, MIDNIGHT_2023_11_14 + 60]
    assert items(log) == ['{"sku": 1}', '{"sku": 5}']
    assert list(log.user.values()) == ["u1", "u2"]
    assert [EVENT_TYPES[e] for e in log.event] == ["view", "purchase"]


def build_parquet_no_rows(path: Path) -> None:
    pq.write_table(pa.table({c: pa.array([], pa.string()) for c in ("user", "ts", "event", "item")}),
                   path)


def build_parquet_cut(path: Path) -> None:
    build_parquet_wrong_types(path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


# Files that cannot be logs, refused on their first bytes, by their kind, or by their size.

LIMIT_ENV = "UBP_EDGE_MAX_LOG_BYTES"
SMALL_LIMIT = 1 << 20  # the limit the size cases set, so their files stay a few MB


def build_zeros(path: Path) -> None:
    path.write_bytes(bytes(100_000))


def build_random_bytes(path: Path) -> None:
    path.write_bytes(np.random.default_rng(7).integers(0, 256, 100_000, dtype=np.uint8).tobytes())


def build_zeros_bomb(path: Path) -> None:
    """A gzip of 200 MB of NUL bytes (200 KB): refused on its first block, unexpanded."""
    with gzip.open(path, "wb", compresslevel=9) as f:
        for _ in range(200):
            f.write(bytes(1 << 20))


def build_text_bomb(path: Path) -> None:
    """Valid CSV that expands 3,000 times past the file (4 MB of rows in 5 KB), past the 1 MB
    limit the case sets: it must be refused as it expands, not read whole."""
    row = b"u1,1700000000,view,i1,c1,1.0\n"
    path.write_bytes(gzip.compress(HEADER + row * ((4 << 20) // len(row)), compresslevel=9))


def build_too_big(path: Path) -> None:
    row = b"u1,1700000000,view,i1,c1,1.0\n"
    path.write_bytes(HEADER + row * (2 * SMALL_LIMIT // len(row)))


def build_multi_member_gzip(path: Path) -> None:
    """`cat a.gz b.gz`: two gzip members, read as one text."""
    path.write_bytes(gzip.compress(HEADER + b"u1,1700000000,view,i1,c1,1.0\n")
                     + gzip.compress(b"u1,1700000010,cart,i1,c1,1.0\n"))


def build_gzip_trailing_garbage(path: Path) -> None:
    path.write_bytes(gzip.compress(HEADER + b"u1,1700000000,view,i1,c1,1.0\n") + b"garbage")


def build_zip(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("log.csv", HEADER + b"u1,1700000000,view,i1,c1,1.0\n")


def build_bzip2(path: Path) -> None:
    path.write_bytes(bz2.compress(HEADER + b"u1,1700000000,view,i1,c1,1.0\n"))


def build_symlink_loop(path: Path) -> None:
    other = path.with_name("loop_b.csv")
    path.symlink_to(other.name)
    other.symlink_to(path.name)


def build_broken_link(path: Path) -> None:
    path.symlink_to("moved_away.csv")


def build_dev_zero(path: Path) -> None:
    path.symlink_to("/dev/zero")


def build_fifo_no_writer(path: Path) -> None:
    os.mkfifo(path)


def build_pipe(path: Path) -> Callable[[], None]:
    """What `<(zcat log.gz)` passes: a pipe whose writer has written and gone. The name is a
    link to /proc/self/fd/N, the read end, held open until the test ends."""
    read_end, write_end = os.pipe()
    os.write(write_end, HEADER + b"u1,1700000000,view,i1,c1,1.0\nu1,1700000010,cart,i1,c1,1.0\n")
    os.close(write_end)
    path.symlink_to(f"/proc/self/fd/{read_end}")
    return lambda: os.close(read_end)


def build_deep_json(path: Path) -> None:
    """Valid JSON Python will not hold: arrays nested 100,000 deep, integers of 5,000 digits."""
    good = '{"user": "u1", "ts": %d, "event": "%s", "item": "i1"}\n'
    path.write_text(good % (T0, "view")
                    + "[" * 100_000 + "]" * 100_000 + "\n"
                    + '{"user": "u1", "ts": ' + "9" * 5000 + ', "event": "view", "item": "i1"}\n'
                    + '{"user": "u1", "ts": 1700000005, "event": "view", "item": ' + "1" * 5000 + "}\n"
                    + good % (T0 + 10, "cart"))


# DIGINETICA: the views file, with train-purchases.csv and product-categories.csv beside it.
DIGINETICA_VIEWS = (b"session_id;user_id;item_id;timeframe;eventdate\n"
                    b"1;NA;100;1000;2016-05-09\n1;NA;101;5000;2016-05-09\n2;7;200;0;2016-05-10\n")
DIGINETICA_PURCHASES = (b"sessionId;userId;timeframe;eventdate;ordernumber;itemId\n"
                        b"1;NA;9000;2016-05-09;1;101\n")


def diginetica_with_categories(categories: bytes) -> Callable[[Path], None]:
    def build(path: Path) -> None:
        path.write_bytes(DIGINETICA_VIEWS)
        path.with_name("train-purchases.csv").write_bytes(DIGINETICA_PURCHASES)
        path.with_name("product-categories.csv").write_bytes(categories)
    return build


def check_diginetica_categories(log):
    categories = dict(zip(log.item.values(), log.category.values(), strict=True))
    # 100 is listed; 101's row has a field too many, 200's is not UTF-8: no category.
    assert categories == {"100": "7", "101": "", "200": ""}
    sources = {Path(r["source"]).name for r in log.bad.rows}
    assert sources == {"product-categories.csv"}


def check_otto_lines(log):
    # Only whole good lines: 1 and 14. Every other line is one bad row, under its first fault.
    assert sorted(set(map(int, log.line))) == [1, 14]
    details = {r["line"]: r["detail"] for r in log.bad.rows}
    assert details[2] == 'event 2 of 2: aid "abc", expected an integer (an OTTO article id)'
    assert details[3] == 'event 1 of 1: ts "1659304800025", expected a number (milliseconds)'
    assert details[4].startswith("event 2 of 3: ") and "'teleport'" in details[4]
    assert details[4].endswith("(and 1 more bad events)")
    assert details[5].startswith("'events' is {") and details[5].endswith("expected a list of events")
    assert details[6] == "event 1 of 1: no ts"
    assert details[7] == "event 2 of 2 is 72, expected an object with aid, ts, type"
    assert details[8] == "no session id"
    assert details[12] == "event 1 of 1: aid is null"
    assert all(r["raw"].startswith("{") for r in log.bad.rows)  # the line as it stands


def check_deep_json(log):
    details = {r["line"]: r["detail"] for r in log.bad.rows}
    assert details == {2: "nested too deeply to read", 3: "an integer of more than 4,300 digits",
                       4: "an integer of more than 4,300 digits"}


def check_two_members(log):
    assert [EVENT_TYPES[e] for e in log.event] == ["view", "cart"]


# --------------------------------------------------------------------------- the table

CASES = [
    Case("bom.csv", None, Accepted(3, 3, {}, check_bom)),
    Case("wrong_field_count.csv", None, Accepted(3, 7, {"wrong_field_count": 4})),
    Case("malformed_quotes.csv", None, Accepted(5, 6, {"wrong_field_count": 1}, check_quotes)),
    Case("unknown_events.csv", None, Accepted(3, 7, {"unknown_event": 4}, check_events_trimmed)),
    Case("timestamps_out_of_range.csv", None,
         Accepted(3, 9, {"absurd_timestamp": 6}, check_time_window)),
    Case("timestamps_not_numbers.csv", None, Accepted(2, 9, {"bad_timestamp": 7})),
    Case("prices.csv", None, Accepted(6, 13, {"bad_price": 7}, check_prices)),
    Case("duplicates.csv", None, Accepted(7, 7, {}, check_duplicates)),
    Case("out_of_order.csv", None, Accepted(6, 6, {}, check_out_of_order)),
    Case("non_utf8.csv", None,
         Accepted(3, 6, {"non_utf8": 2, "wrong_field_count": 1}, check_non_utf8)),
    Case("blank_lines.csv", None, Accepted(3, 8, {"blank_line": 4, "wrong_field_count": 1})),
    Case("missing_ids.csv", None,
         Accepted(3, 7, {"missing_user": 2, "missing_item": 2}, check_missing_ids)),
    Case("crlf.csv", None,
         Accepted(2, 4, {"bad_price": 1, "blank_line": 1}, check_line_endings)),
    Case("cr_only.csv", None, Accepted(2, 3, {"bad_price": 1}, check_line_endings)),
    Case("nul_byte.csv", None, Accepted(2, 2, {}, check_nul)),
    Case("quoted_header.csv", None, Accepted(2, 2, {}, check_quoted_header)),
    Case("malformed.jsonl", None, Accepted(3, 8, {"malformed_json": 5}, check_malformed_jsonl)),
    Case("mixed_types.jsonl", "canonical",
         Accepted(5, 11, {"missing_item": 1, "bad_timestamp": 3, "absurd_timestamp": 1,
                          "unknown_event": 1}, check_mixed_types)),
    Case("nan_values.jsonl", None,
         Accepted(2, 7, {"bad_timestamp": 1, "absurd_timestamp": 1, "bad_price": 3},
                  check_nan_values)),
    Case("iso_times.jsonl", None, Accepted(3, 3, {}, check_iso_times)),
    Case("non_utf8.jsonl", None, Accepted(2, 3, {"non_utf8": 1})),
    Case("empty.csv", None, Rejected("empty file")),
    Case("header_only.csv", None, Rejected("no data rows, only a header")),
    Case("header_not_utf8.csv", None, Rejected(r":1: the header is not UTF-8 text: .*cat\\xe9gorie")),
    Case("all_rows_bad.csv", None,
         Rejected(r"none of its 3 rows parse as canonical; first: .*:2: bad row \(unknown_event\)")),
    # Generated into tmp_path (too big to commit, or binary).
    Case("session_100k.csv", None, Accepted(SESSION_EVENTS, SESSION_EVENTS, {}, check_long_session),
         build_long_session),
    Case("long_lines.csv", None,
         Accepted(3, 5, {"wrong_field_count": 1, "unknown_event": 1}, check_long_lines),
         build_long_lines),
    Case("truncated.csv.gz", None, Rejected(r"compressed stream ends early \(truncated gzip\)"),
         build_truncated_gzip),
    Case("missing_columns.parquet", None,
         Rejected(r"missing columns \['ts', 'item', 'event', 'user'\]; found \['action', 'time', "
                  r"'visitor'\]"), build_parquet_missing_columns),
    Case("wrong_types.parquet", None,
         Accepted(2, 6, {"non_utf8": 1, "bad_timestamp": 1, "unknown_event": 1, "bad_price": 1},
                  check_parquet_wrong_types), build_parquet_wrong_types),
    Case("no_rows.parquet", None, Rejected(r"no data rows$"), build_parquet_no_rows),
    Case("cut.parquet", None, Rejected(r"not a readable Parquet file \(.*magic bytes"),
         build_parquet_cut),
    # Issue 10: what cannot be a log, refused in one line and in bounded memory.
    Case("utf16.csv", None, Rejected(r": UTF-16 text \(byte-order mark FF FE\): re-save it as UTF-8$")),
    Case("utf16_no_bom.csv", None,
         Rejected(r": UTF-16 text \(big-endian, no byte-order mark\): re-save it as UTF-8$")),
    Case("zeros.csv", None, Rejected(r": binary data, not a text log \(65,536 NUL and 0 other control "
                                     r"bytes in its first 65,536\)"), build_zeros),
    Case("random_bytes.csv", None, Rejected(r": binary data, not a text log"), build_random_bytes),
    Case("zeros_bomb.csv.gz", None, Rejected(r": binary data, not a text log"), build_zeros_bomb),
    Case("text_bomb.csv.gz", None,
         Rejected(r": expands to more than 1,048,576 bytes when decompressed \(a gzip bomb\?\), the "
                  r"limit set by UBP_EDGE_MAX_LOG_BYTES$"), build_text_bomb, {LIMIT_ENV: "1M"}),
    Case("too_big.csv", None,
         Rejected(r": 2,\d{3},\d{3} bytes, more than 1,048,576, the limit set by UBP_EDGE_MAX_LOG_BYTES; "
                  r"split the log$"), build_too_big, {LIMIT_ENV: str(SMALL_LIMIT)}),
    Case("multi_member.csv.gz", None, Accepted(2, 2, {}, check_two_members), build_multi_member_gzip),
    Case("trailing_garbage.csv.gz", None, Rejected(r": corrupted gzip stream \(Not a gzipped file"),
         build_gzip_trailing_garbage),
    Case("workbook.xlsx", None, Rejected(r": a ZIP archive \(an \.xlsx workbook is one\)"), build_zip),
    Case("log.csv.bz2", None, Rejected(r": bzip2-compressed: decompress it first"), build_bzip2),
    Case("symlink_loop.csv", None, Rejected(r": symbolic link loop"), build_symlink_loop),
    Case("broken_link.csv", None,
         Rejected(r": no such file \(a symbolic link to 'moved_away.csv', which does not exist\)$"),
         build_broken_link),
    Case("dev_zero.csv", None, Rejected(r": is a character device, not a log file"), build_dev_zero),
    Case("fifo_no_writer.csv", None, Rejected(r": a named pipe \(FIFO\) with no writer; start the "
                                              r"program that writes to it first"), build_fifo_no_writer),
    Case("pipe.csv", None, Accepted(2, 2, {}), build_pipe),
    Case("deep.jsonl", None, Accepted(2, 5, {"malformed_json": 3}, check_deep_json), build_deep_json),
    # Issue 10: OTTO lines are quarantined whole, the others read.
    Case("otto_bad_events.jsonl", None,
         Accepted(4, 15, {"bad_item": 2, "bad_timestamp": 2, "unknown_event": 2, "malformed_session": 2,
                          "missing_session": 1, "absurd_timestamp": 1, "missing_item": 1},
                  check_otto_lines)),
    Case("otto_no_event_lists.jsonl", None,
         Rejected(r"none of its 3 rows parse as otto; first: .*:1: bad row \(malformed_session\): "
                  r"'events' is \"clicks\", expected a list of events$")),
    # Issue 10: DIGINETICA's categories file: bad rows quarantined, a wrong header refused.
    Case("diginetica_categories.csv", "diginetica",
         Accepted(4, 7, {"wrong_field_count": 1, "non_utf8": 1, "missing_item": 1},
                  check_diginetica_categories),
         diginetica_with_categories(b"itemId;categoryId\n100;7\n101;8;9\n\xff200;3\n;4\n")),
    Case("diginetica_categories_header.csv", "diginetica",
         Rejected(r":1: missing columns \['categoryId'\]; found \['category', 'itemId'\]",
                  names="product-categories.csv"),
         diginetica_with_categories(b"itemId;category\n100;7\n")),
]


@pytest.mark.parametrize("case", CASES, ids=[c.file for c in CASES])
def test_corpus_file(case: Case, tmp_path: Path, monkeypatch, request):
    for name, value in case.env.items():
        monkeypatch.setenv(name, value)
    if case.build is None:
        path = CORPUS / case.file
    else:
        path = tmp_path / case.file
        release = case.build(path)
        if release is not None:
            request.addfinalizer(release)
    outcome = case.outcome
    if isinstance(outcome, Rejected):
        with pytest.raises(DataError) as info:
            read_log(path, case.format)
        message = str(info.value)
        assert "\n" not in message, message
        named = path if outcome.names is None else path.with_name(outcome.names)
        assert message.startswith(str(named)), message
        assert re.search(outcome.message, message), message
        return

    log = read_log(path, case.format)
    assert len(log) == outcome.events
    assert dict(log.bad.counts) == outcome.bad
    assert log.rows_read == outcome.rows
    assert len(log) + log.bad.total == log.rows_read
    if outcome.check is not None:
        outcome.check(log)

    quarantine = tmp_path / "quarantine.jsonl"
    written = log.bad.write(quarantine)
    if not log.bad.total:
        assert written is None and not quarantine.exists()
        return
    lines = quarantine.read_text(encoding="utf-8").splitlines()
    assert len(lines) == log.bad.total
    rows = [json.loads(line) for line in lines]
    # A bad row comes from the file read, or from a side file beside it (DIGINETICA's).
    assert all({"line", "reason", "raw"} <= set(r) and Path(r["source"]).parent == path.parent
               for r in rows)
    assert [(r["line"], r["reason"]) for r in rows] == sorted(
        (r["line"], r["reason"]) for r in log.bad.rows)
    good_lines = set(map(int, log.line))
    assert not good_lines & {r["line"] for r in rows if r["source"] == str(path)}, \
        "a line is either an event or quarantined"


def test_the_table_the_folder_and_the_readme_agree():
    """Every committed file has a row in CASES and a line in the README, and back."""
    committed = {p.name for p in CORPUS.iterdir() if p.name != "README.md"}
    assert len(CASES) >= 50
    in_table = {c.file for c in CASES}
    generated = {c.file for c in CASES if c.build is not None}
    assert committed == in_table - generated
    readme = (CORPUS / "README.md").read_text(encoding="utf-8")
    described = set(re.findall(r"^\| `([^`]+)` \|", readme, flags=re.M))
    assert described == in_table
    assert sum(p.stat().st_size for p in CORPUS.iterdir()) < 200_000

