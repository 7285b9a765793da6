"""Tests of the log readers: real public logs, containers (gzip, Parquet, JSONL), row-level
quarantine with physical line numbers, file-level DataErrors, custom mappings, and the
sessionizer's ordering of equal and out-of-order timestamps."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import real_file

from edge_runtime.errors import ConfigError, DataError, UbpEdgeError
from edge_runtime.events import EVENT_CODE, EVENT_TYPES, PURCHASE
from trainer.formats import FORMAT_NAMES, custom_preset, get_preset
from trainer.readers import EventLog, detect_format, read_bytes, read_log
from trainer.sessions import sessionize

HEADER = b"user,ts,event,item,category,price\n"
GOOD_ROWS = [
    b"u1,1700000000,view,i1,c1,9.5",
    b"u1,1700000010,cart,i1,c1,9.5",
    b"u2,1700000020,view,i2,c2,1.0",
    b"u2,1700000030,purchase,i2,c2,1.0",
]


def event_mix(log: EventLog) -> dict[str, int]:
    counts = np.bincount(log.event, minlength=len(EVENT_TYPES))
    return {name: int(c) for name, c in zip(EVENT_TYPES, counts, strict=True)}


def write_canonical(tmp_path, rows: list[bytes], name: str = "log.csv", trailing: bytes = b"\n"):
    path = tmp_path / name
    path.write_bytes(HEADER + b"\n".join(rows) + trailing)
    return path


def assert_counts_add_up(log: EventLog) -> None:
    assert len(log) + log.bad.total == log.rows_read, (len(log), log.bad.counts, log.rows_read)


# =========================================================================== real files

@pytest.mark.real_data
def test_taobao_sample_counts():
    path = real_file("taobao/UserBehavior_sample.csv")
    log = read_log(path)
    assert log.format == "taobao"
    assert len(log) == 65_526
    assert log.bad.total == 0
    assert log.rows_read == 65_526
    assert len(np.unique(log.user.codes)) == 614
    assert event_mix(log) == {"view": 58_883, "cart": 3_598, "fav": 1_648, "purchase": 1_397}
    assert log.has_user_ids and log.utc_offset_hours == 8.0
    sessions = sessionize(log)
    assert len(sessions) == 10_696
    assert int(sessions.label.sum()) == 1_047


@pytest.mark.real_data
def test_rees46_head_counts_and_cut_off_last_line():
    path = real_file("rees46/2019-Oct_head.csv")
    log = read_log(path)
    assert log.format == "rees46"
    assert len(log) == 17_434
    assert event_mix(log) == {"view": 17_055, "cart": 165, "fav": 0, "purchase": 214}
    sessions = sessionize(log)
    # 5,066 user_session values; one of them holds events of two user ids, and a session
    # never joins two people: it is two sessions, keyed SESSION@USER.
    assert len(sessions) == 5_067
    assert sum("@" in k for k in sessions.key) == 2
    assert int(sessions.label.sum()) == 200
    # The last physical line is cut off mid-row: exactly one bad row, on that line.
    assert log.bad.total == 1
    assert dict(log.bad.counts) == {"wrong_field_count": 1}
    n_lines = path.read_bytes().count(b"\n") + 1  # no newline after the cut-off row
    assert n_lines == 17_436
    assert log.bad.rows[0]["line"] == 17_436
    assert_counts_add_up(log)


@pytest.mark.real_data
def test_diginetica_sample_counts():
    path = real_file("diginetica/sample_train-item-views.csv")
    real_file("diginetica/train-purchases.csv")
    log = read_log(path)
    assert log.format == "diginetica"
    assert int((log.event == EVENT_CODE["view"]).sum()) == 12_391
    assert log.bad.total == 0
    sessions = sessionize(log)
    assert len(sessions) == 2_986
    assert int(sessions.label.sum()) == 138
    assert not log.has_user_ids


@pytest.mark.real_data
def test_otto_sample_counts():
    path = real_file("otto/train_sample.jsonl")
    log = read_log(path)
    assert log.format == "otto"
    assert len(log) == 862
    assert log.bad.total == 0
    sessions = sessionize(log)
    assert len(sessions) == 20
    assert int(sessions.label.sum()) == 3
    # Every event of a session comes from that session's one physical line.
    assert set(np.unique(log.line)) == set(range(1, 21))


@pytest.mark.real_data
@pytest.mark.parametrize("relative, expected", [
    ("taobao/UserBehavior_sample.csv", "taobao"),
    ("rees46/2019-Oct_head.csv", "rees46"),
    ("diginetica/sample_train-item-views.csv", "diginetica"),
    ("otto/train_sample.jsonl", "otto"),
])
def test_format_detection_on_real_files(relative, expected):
    path = real_file(relative)
    assert detect_format(path, read_bytes(path)) == expected


# =========================================================================== containers

def test_gzip_is_transparent(tmp_path):
    plain = write_canonical(tmp_path, GOOD_ROWS + [b"u3,1700000040,teleport,i3,c3,2.0"])
    zipped = tmp_path / "log.csv.gz"
    zipped.write_bytes(gzip.compress(plain.read_bytes()))
    a, b = read_log(plain), read_log(zipped)
    assert b.format == a.format == "canonical"
    assert len(a) == len(b) == 4
    np.testing.assert_array_equal(a.ts, b.ts)
    np.testing.assert_array_equal(a.event, b.event)
    np.testing.assert_array_equal(a.user.values(), b.user.values())
    np.testing.assert_array_equal(a.item.values(), b.item.values())
    np.testing.assert_array_equal(a.price, b.price)
    np.testing.assert_array_equal(a.line, b.line)
    assert dict(a.bad.counts) == dict(b.bad.counts) == {"unknown_event": 1}
    assert [r["line"] for r in a.bad.rows] == [r["line"] for r in b.bad.rows] == [6]


def test_parquet_canonical_table_reads(tmp_path):
    table = pa.table({
        "user": ["u1", "u1", "u2", "u2"],
        "ts": [1_700_000_000, 1_700_000_010, 1_700_000_020, 1_700_000_030],
        "event": ["view", "cart", "view", "purchase"],
        "item": ["i1", "i1", "i2", "i2"],
        "category": ["c1", "c1", "c2", "c2"],
        "price": [9.5, 9.5, None, 1.0],
    })
    path = tmp_path / "log.parquet"
    pq.write_table(table, path)
    log = read_log(path)
    assert log.format == "canonical"
    assert len(log) == 4 and log.bad.total == 0
    np.testing.assert_array_equal(log.ts, [1_700_000_000, 1_700_000_010, 1_700_000_020, 1_700_000_030])
    assert list(log.event) == [EVENT_CODE[e] for e in ("view", "cart", "view", "purchase")]
    assert list(log.user.values()) == ["u1", "u1", "u2", "u2"]
    assert np.isnan(log.price[2]) and log.price[0] == 9.5
    assert list(log.line) == [1, 2, 3, 4]  # row numbers for Parquet


def test_parquet_bad_row_quarantined_by_row_number(tmp_path):
    table = pa.table({"user": ["u1", "u1", "u2"], "ts": [1_700_000_000, 1_700_000_010, 1_700_000_020],
                      "event": ["view", "teleport", "view"], "item": ["i1", "i1", "i2"]})
    path = tmp_path / "log.parquet"
    pq.write_table(table, path)
    log = read_log(path)
    assert len(log) == 2
    assert dict(log.bad.counts) == {"unknown_event": 1}
    assert log.bad.rows[0]["line"] == 2
    assert_counts_add_up(log)


def test_jsonl_canonical_records_read(tmp_path):
    records = [{"user": "u1", "ts": 1_700_000_000 + i, "event": e, "item": f"i{i}", "price": 2.5}
               for i, e in enumerate(["view", "cart", "fav", "purchase"])]
    path = tmp_path / "log.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    log = read_log(path)
    assert log.format == "canonical"
    assert len(log) == 4 and log.bad.total == 0
    assert event_mix(log) == {"view": 1, "cart": 1, "fav": 1, "purchase": 1}
    assert list(log.line) == [1, 2, 3, 4]
    np.testing.assert_array_equal(log.price, [2.5] * 4)


# =========================================================================== row-level faults

# (name, bad row, reason). The bad row goes in the middle of four good rows.
ROW_FAULTS = [
    ("wrong_field_count", b"u3,1700000040,view,i3", "wrong_field_count"),
    ("too_many_fields", b"u3,1700000040,view,i3,c3,2.0,extra", "wrong_field_count"),
    ("unparseable_ts", b"u3,abc,view,i3,c3,2.0", "bad_timestamp"),
    ("absurd_ts_future", b"u3,99999999999999,view,i3,c3,2.0", "absurd_timestamp"),
    ("absurd_ts_negative", b"u3,-5,view,i3,c3,2.0", "absurd_timestamp"),
    ("unknown_event", b"u3,1700000040,teleport,i3,c3,2.0", "unknown_event"),
    ("non_utf8", b"u3,1700000040,view,i\xff\xfe,c3,2.0", "non_utf8"),
    ("missing_item", b"u3,1700000040,view,,c3,2.0", "missing_item"),
    ("price_text", b"u3,1700000040,view,i3,c3,cheap", "bad_price"),
    ("price_negative", b"u3,1700000040,view,i3,c3,-5", "bad_price"),
    ("blank_line", b"", "blank_line"),
]


@pytest.mark.parametrize("position", [0, 2, 4], ids=["first", "middle", "last"])
@pytest.mark.parametrize("name, row, reason", ROW_FAULTS, ids=[f[0] for f in ROW_FAULTS])
def test_row_fault_is_quarantined_on_its_physical_line(tmp_path, name, row, reason, position):
    rows = GOOD_ROWS[:position] + [row] + GOOD_ROWS[position:]
    path = write_canonical(tmp_path, rows)
    bad_line = position + 2  # line 1 is the header
    log = read_log(path)
    assert len(log) == 4, "the run goes on with every good row"
    assert dict(log.bad.counts) == {reason: 1}
    assert log.bad.total == 1
    assert [r["line"] for r in log.bad.rows] == [bad_line]
    assert log.rows_read == 5
    assert_counts_add_up(log)
    # The good rows keep their own physical lines.
    assert sorted(map(int, log.line)) == [n for n in range(2, 7) if n != bad_line]

    out = tmp_path / "q" / "quarantine.jsonl"
    assert log.bad.write(out) == out
    written = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert len(written) == 1
    assert {"line", "reason", "raw"} <= set(written[0])
    assert written[0]["line"] == bad_line
    assert written[0]["reason"] == reason
    assert written[0]["source"] == str(path)


@pytest.mark.parametrize("name, row, reason", ROW_FAULTS, ids=[f[0] for f in ROW_FAULTS])
def test_quarantined_raw_is_the_line_as_read(tmp_path, name, row, reason):
    """quarantine.py / readers.py: bad rows are "kept verbatim" ("decoded with replacement
    characters if needed")."""
    path = write_canonical(tmp_path, GOOD_ROWS[:2] + [row] + GOOD_ROWS[2:])
    log = read_log(path)
    assert log.bad.rows[0]["raw"] == row.decode("utf-8", "replace")


def test_several_faults_in_one_file_each_on_its_line(tmp_path):
    rows = [GOOD_ROWS[0], b"x,y", GOOD_ROWS[1], b"", b"u3,abc,view,i,c,1", b"a,b,c,d,e,f,g",
            GOOD_ROWS[2], b"u4,1700000030,teleport,i,c,1", GOOD_ROWS[3]]
    log = read_log(write_canonical(tmp_path, rows))
    assert len(log) == 4
    by_line = {r["line"]: r["reason"] for r in log.bad.rows}
    assert by_line == {3: "wrong_field_count", 5: "blank_line", 6: "bad_timestamp",
                       7: "wrong_field_count", 9: "unknown_event"}
    assert sorted(map(int, log.line)) == [2, 4, 8, 10]
    assert_counts_add_up(log)


def test_crlf_file_lines_are_physical(tmp_path):
    rows = [GOOD_ROWS[0], b"u3,abc,view,i,c,1", b"", GOOD_ROWS[1], b"x,y", GOOD_ROWS[2]]
    path = tmp_path / "crlf.csv"
    path.write_bytes((HEADER + b"\n".join(rows) + b"\n").replace(b"\n", b"\r\n"))
    log = read_log(path)
    assert {r["line"]: r["reason"] for r in log.bad.rows} == {
        3: "bad_timestamp", 4: "blank_line", 6: "wrong_field_count"}
    assert sorted(map(int, log.line)) == [2, 5, 7]
    assert_counts_add_up(log)


def test_quoted_newline_keeps_later_line_numbers_physical(tmp_path):
    """A quoted field spanning two physical lines must not shift the line numbers after it."""
    rows = [GOOD_ROWS[0], b'u1,1700000005,view,"i\nx",c1,1', GOOD_ROWS[1], b"u3,abc,view,i,c,1"]
    path = write_canonical(tmp_path, rows)
    # Physical lines: 1 header, 2 good, 3-4 quoted row, 5 good, 6 bad timestamp.
    log = read_log(path)
    assert dict(log.bad.counts) == {"bad_timestamp": 1}
    assert log.bad.rows[0]["line"] == 6


def test_strict_raises_naming_file_line_and_reason(tmp_path):
    path = write_canonical(tmp_path, GOOD_ROWS[:3] + [b"u3,abc,view,i3,c3,2.0"] + GOOD_ROWS[3:])
    with pytest.raises(DataError) as info:
        read_log(path, strict=True)
    message = str(info.value)
    assert f"{path}:5" in message
    assert "bad_timestamp" in message
    assert "\n" not in message


def test_strict_names_the_first_bad_line(tmp_path):
    rows = [GOOD_ROWS[0], b"u3,1700000040,teleport,i3,c3,2.0", b"x,y"] + GOOD_ROWS[1:]
    path = write_canonical(tmp_path, rows)
    with pytest.raises(DataError, match=rf"{path}:3: .*unknown_event"):
        read_log(path, strict=True)


def test_strict_on_a_clean_file_reads(tmp_path):
    log = read_log(write_canonical(tmp_path, GOOD_ROWS), strict=True)
    assert len(log) == 4 and log.bad.total == 0


def test_bad_write_without_bad_rows_writes_nothing(tmp_path):
    log = read_log(write_canonical(tmp_path, GOOD_ROWS))
    assert log.bad.write(tmp_path / "q.jsonl") is None
    assert not (tmp_path / "q.jsonl").exists()


# =========================================================================== JSONL faults

def _jsonl_record(i: int, event: str = "view") -> str:
    return json.dumps({"user": "u1", "ts": 1_700_000_000 + i, "event": event, "item": f"i{i}"})


def test_malformed_json_line_is_quarantined(tmp_path):
    lines = [_jsonl_record(0), _jsonl_record(1), '{"user": "u1", "ts": 17000', _jsonl_record(2),
             _jsonl_record(3)]
    path = tmp_path / "log.jsonl"
    path.write_text("\n".join(lines) + "\n")
    log = read_log(path)
    assert len(log) == 4
    assert dict(log.bad.counts) == {"malformed_json": 1}
    assert log.bad.rows[0]["line"] == 3
    assert log.bad.rows[0]["raw"] == lines[2]
    assert list(log.line) == [1, 2, 4, 5]
    assert_counts_add_up(log)


def test_jsonl_line_that_is_not_an_object_is_malformed(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text("\n".join([_jsonl_record(0), "[1, 2]", _jsonl_record(1)]) + "\n")
    log = read_log(path)
    assert len(log) == 2
    assert [(r["line"], r["reason"]) for r in log.bad.rows] == [(2, "malformed_json")]


def test_jsonl_blank_line_keeps_line_numbers_physical(tmp_path):
    """A clean JSONL file (no malformed line) with a blank line: bad rows after it must
    still carry their physical line."""
    lines = [_jsonl_record(0), "", _jsonl_record(1), _jsonl_record(5, "teleport"), _jsonl_record(2)]
    path = tmp_path / "log.jsonl"
    path.write_text("\n".join(lines) + "\n")
    log = read_log(path)
    assert dict(log.bad.counts) == {"unknown_event": 1}
    assert log.bad.rows[0]["line"] == 4
    assert list(log.line) == [1, 3, 5]


def test_jsonl_non_utf8_line_is_quarantined(tmp_path):
    """Non-UTF-8 bytes inside a JSON string: quarantined as non_utf8, not a crash."""
    path = tmp_path / "log.jsonl"
    path.write_bytes((_jsonl_record(0) + "\n" + _jsonl_record(1) + "\n").encode()
                     + b'{"user": "u\xff", "ts": 1700000003, "event": "view", "item": "z"}\n'
                     + (_jsonl_record(4) + "\n").encode())
    log = read_log(path)
    assert len(log) == 3
    assert [(r["line"], r["reason"]) for r in log.bad.rows] == [(3, "non_utf8")]


# =========================================================================== file-level faults

def test_missing_path(tmp_path):
    path = tmp_path / "nope.csv"
    with pytest.raises(DataError, match="no such file") as info:
        read_log(path)
    assert str(path) in str(info.value)


def test_directory(tmp_path):
    with pytest.raises(DataError, match="is a directory") as info:
        read_log(tmp_path)
    assert str(tmp_path) in str(info.value)


@pytest.mark.parametrize("content", [b"", b"   \n\n \t\r\n"], ids=["empty", "whitespace"])
def test_empty_file(tmp_path, content):
    path = tmp_path / "empty.csv"
    path.write_bytes(content)
    with pytest.raises(DataError, match="empty file") as info:
        read_log(path)
    assert str(path) in str(info.value)


def test_empty_gzip(tmp_path):
    path = tmp_path / "empty.csv.gz"
    path.write_bytes(gzip.compress(b""))
    with pytest.raises(DataError, match="empty file") as info:
        read_log(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.95])
def test_truncated_gzip(tmp_path, fraction):
    rows = [b"u%d,%d,view,i%d,c1,1.0" % (i % 50, 1_700_000_000 + i, i) for i in range(5000)]
    data = gzip.compress(HEADER + b"\n".join(rows) + b"\n")
    path = tmp_path / "log.csv.gz"
    path.write_bytes(data[:int(len(data) * fraction)])
    with pytest.raises(DataError, match=r"ends early|truncated") as info:
        read_log(path)
    assert str(path) in str(info.value)


def test_corrupted_gzip(tmp_path):
    data = bytearray(gzip.compress(HEADER + b"\n".join(GOOD_ROWS) + b"\n"))
    data[-8:-4] = b"\x00\x00\x00\x00"  # wrong CRC
    path = tmp_path / "log.csv.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(DataError) as info:
        read_log(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("header, missing", [
    (b"user,ts,event\nu1,1700000000,view\n", "item"),
    (b"user,ts,item\nu1,1700000000,i1\n", "event"),
    (b"user,event,item\nu1,view,i1\n", "ts"),
])
def test_missing_required_column(tmp_path, header, missing):
    path = tmp_path / "log.csv"
    path.write_bytes(header)
    with pytest.raises(DataError) as info:
        read_log(path, "canonical")
    message = str(info.value)
    assert str(path) in message
    assert "missing columns" in message and repr(missing) in message


def test_no_row_parses(tmp_path):
    path = write_canonical(tmp_path, [b"u1,1700000000,teleport,i1,c1,1", b"u1,1700000001,fly,i1,c1,1"])
    with pytest.raises(DataError) as info:
        read_log(path)
    message = str(info.value)
    assert str(path) in message
    assert "none of its 2 rows" in message
    assert "unknown_event" in message


def test_header_only_file(tmp_path):
    path = tmp_path / "log.csv"
    path.write_bytes(HEADER)
    with pytest.raises(DataError) as info:
        read_log(path)
    assert str(path) in str(info.value)


def test_undetectable_format(tmp_path):
    path = tmp_path / "log.csv"
    path.write_bytes(b"a,b,c\n1,2,3\n")
    with pytest.raises(DataError) as info:
        read_log(path)
    message = str(info.value)
    assert f"{path}:1" in message
    assert "--format" in message


def test_unknown_format_name(tmp_path):
    path = write_canonical(tmp_path, GOOD_ROWS)
    with pytest.raises(ConfigError) as info:
        read_log(path, "nope")
    message = str(info.value)
    assert "'nope'" in message
    for name in FORMAT_NAMES:
        assert name in message


def test_get_preset_unknown():
    with pytest.raises(ConfigError, match="allowed"):
        get_preset("parquet")


@pytest.mark.parametrize("format", [None, "canonical"], ids=["detected", "explicit"])
def test_utf8_bom_header_is_not_a_crash(tmp_path, format):
    """A CSV saved with a UTF-8 byte-order mark (Excel does this) must read, or at worst
    raise DataError: never a KeyError from pyarrow."""
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf" + HEADER + b"\n".join(GOOD_ROWS) + b"\n")
    try:
        log = read_log(path, format)
    except UbpEdgeError as e:
        assert isinstance(e, DataError) and str(path) in str(e)
    else:
        assert len(log) == 4


# =========================================================================== custom mapping

RR_ROWS = [  # RetailRocket-like: ms timestamps, addtocart/transaction, unsorted in time
    (1433221332117, "257597", "view", "355908"),
    (1433224214164, "992329", "view", "248676"),
    (1433221999827, "111016", "addtocart", "318965"),
    (1433222000000, "111016", "transaction", "318965"),
    (1433222100000, "111016", "view", "1"),
]


def test_custom_preset_on_retailrocket_like_csv(tmp_path):
    path = tmp_path / "rr.csv"
    path.write_text("t,visitor,action,sku\n" + "".join(f"{t},{v},{a},{s}\n" for t, v, a, s in RR_ROWS))
    preset = custom_preset("user=visitor,time=t,event=action,item=sku",
                           "cart=addtocart,purchase=transaction", "ms")
    assert preset.name == "csv" and preset.columns["ts"] == "t"
    log = read_log(path, preset=preset)
    assert log.format == "csv"
    assert len(log) == 5 and log.bad.total == 0
    np.testing.assert_allclose(log.ts, [t / 1000.0 for t, *_ in RR_ROWS])
    assert list(log.event) == [EVENT_CODE[e] for e in ("view", "view", "cart", "purchase", "view")]
    assert list(log.user.values()) == [v for _, v, _, _ in RR_ROWS]
    assert list(log.item.values()) == [s for *_, s in RR_ROWS]
    sessions = sessionize(log)
    assert len(sessions) == 3 and int(sessions.label.sum()) == 1


def test_custom_preset_event_alternatives_and_unmapped_source_value(tmp_path):
    path = tmp_path / "rr.csv"
    path.write_text("t,visitor,action,sku\n1433221332117,1,buy,a\n1433221332118,1,transaction,b\n"
                    "1433221332119,1,addtocart,c\n")
    preset = custom_preset("user=visitor,time=t,event=action,item=sku", "purchase=buy|transaction", "ms")
    log = read_log(path, preset=preset)
    assert list(log.event) == [PURCHASE, PURCHASE]
    assert [(r["line"], r["reason"]) for r in log.bad.rows] == [(4, "unknown_event")]


@pytest.mark.parametrize("mapping, pair", [("user", "'user'"), ("=x", "'=x'"), ("user=", "'user='"),
                                           ("user=visitor,time", "'time'")])
def test_bad_map_pair(mapping, pair):
    with pytest.raises(ConfigError) as info:
        custom_preset(mapping, None)
    message = str(info.value)
    assert message.startswith("--map")
    assert pair in message


def test_events_to_non_canonical_type():
    with pytest.raises(ConfigError) as info:
        custom_preset("user=visitor,time=t,event=action,item=sku", "checkout=buy")
    message = str(info.value)
    assert "--events" in message and "'checkout'" in message
    for name in EVENT_TYPES:
        assert name in message


def test_bad_events_pair():
    with pytest.raises(ConfigError, match=r"--events: 'purchase' is not KEY=VALUE"):
        custom_preset("user=visitor,time=t,event=action,item=sku", "purchase")


def test_csv_format_without_map():
    with pytest.raises(ConfigError, match="--map"):
        custom_preset(None, None)


def test_map_missing_a_required_field():
    with pytest.raises(ConfigError, match=r"no column mapped to \['event', 'item'\]"):
        custom_preset("user=visitor,time=t", None)


def test_bad_time_unit():
    with pytest.raises(ConfigError, match="--time-unit: 'hours'"):
        custom_preset("user=visitor,time=t,event=action,item=sku", None, "hours")


def test_retailrocket_preset_on_events_csv(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("timestamp,visitorid,event,itemid,transactionid\n"
                    + "".join(f"{t},{v},{a},{s},{'4000' if a == 'transaction' else ''}\n"
                              for t, v, a, s in RR_ROWS)
                    + "1433222200000,111016,teleport,2,\n")
    assert detect_format(path, read_bytes(path)) == "retailrocket"
    log = read_log(path)
    assert log.format == "retailrocket"
    assert len(log) == 5
    np.testing.assert_allclose(log.ts, [t / 1000.0 for t, *_ in RR_ROWS])
    assert list(log.event) == [EVENT_CODE[e] for e in ("view", "view", "cart", "purchase", "view")]
    assert [(r["line"], r["reason"]) for r in log.bad.rows] == [(7, "unknown_event")]
    assert_counts_add_up(log)
    assert read_log(path, "retailrocket").format == "retailrocket"


# =========================================================================== diginetica merge

def test_diginetica_bad_purchase_rows_keep_counts_consistent(tmp_path):
    """Bad rows of train-purchases.csv (for a session that is not even in the views file)
    must not break len(log) + bad.total == rows_read, nor be reported as a line of the
    views file."""
    views = tmp_path / "views.csv"
    views.write_bytes(b"session_id;user_id;item_id;timeframe;eventdate\n"
                      b"1;NA;100;1000;2016-05-09\n1;NA;101;5000;2016-05-09\n2;7;200;0;2016-05-10\n")
    (tmp_path / "train-purchases.csv").write_bytes(
        b"sessionId;userId;timeframe;eventdate;ordernumber;itemId\n"
        b"1;NA;9000;2016-05-09;1;101\n99;NA;abc;2016-05-09;2;555\n")
    log = read_log(views, "diginetica")
    assert int((log.event == PURCHASE).sum()) == 1
    assert len(sessionize(log)) == 2
    assert_counts_add_up(log)
    log.bad.write(tmp_path / "q.jsonl")
    for row in map(json.loads, (tmp_path / "q.jsonl").read_text().splitlines()):
        # A quarantined row of train-purchases.csv must not be filed as a line of views.csv.
        if "train-purchases" in row["detail"]:
            assert row["source"] != str(views)


# =========================================================================== format detection

@pytest.mark.parametrize("first_line, expected", [
    (b"user,ts,event,item\n", "canonical"),
    (b"user,session,ts,event,item,category,price\n", "canonical"),
    (b"event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session\n",
     "rees46"),
    (b"session_id;user_id;item_id;timeframe;eventdate\n", "diginetica"),
    (b"timestamp,visitorid,event,itemid,transactionid\n", "retailrocket"),
    (b"1,2634,1,pv,1511544070\n", "taobao"),
    (b'{"session": 1, "events": []}\n', "otto"),
    (b'{"user": "u", "ts": 1, "event": "view", "item": "i"}\n', "canonical"),
])
def test_detect_format_from_first_line(tmp_path, first_line, expected):
    assert detect_format(tmp_path / "x", first_line) == expected


def test_detection_through_gzip(tmp_path):
    path = tmp_path / "log.gz"
    path.write_bytes(gzip.compress(b"1,2634,1,pv,1511544070\n1,2634,1,buy,1511544080\n"))
    log = read_log(path)
    assert log.format == "taobao" and len(log) == 2


# =========================================================================== sessionize order

def test_sessionize_orders_by_time_stable_for_ties(tmp_path):
    rows = [b"u1,1700000100,view,a,c,1", b"u1,1700000050,view,b,c,1", b"u1,1700000100,cart,c,c,1",
            b"u1,1700000050,view,d,c,1", b"u1,1700000100,purchase,e,c,1",
            b"u2,1700000070,view,f,c,1", b"u2,1700000070,view,g,c,1"]
    log = read_log(write_canonical(tmp_path, rows))
    sessions = sessionize(log)
    assert len(sessions) == 2
    order = [list(log.item.values(sessions.order[sessions.offsets[s]:sessions.offsets[s + 1]]))
             for s in range(len(sessions))]
    assert order == [["b", "d", "a", "c", "e"], ["f", "g"]]  # by start time: u1@50, u2@70
    assert list(sessions.prefix_len) == [4, 2]
    assert list(sessions.label) == [1, 0]


def test_sessionize_log_session_ids_ties_keep_file_order(tmp_path):
    path = tmp_path / "log.csv"
    path.write_bytes(b"user,session,ts,event,item\n"
                     b"u1,s1,1700000100,view,a\nu1,s1,1700000100,purchase,b\nu1,s1,1700000100,view,c\n"
                     b"u1,s1,1700000000,view,z\nu2,s2,1700000001,view,q\n")
    log = read_log(path)
    sessions = sessionize(log)
    assert sessions.gap_minutes is None
    assert list(sessions.key) == ["s1", "s2"]
    s1 = log.item.values(sessions.order[sessions.offsets[0]:sessions.offsets[1]])
    assert list(s1) == ["z", "a", "b", "c"]
    assert sessions.prefix_len[0] == 2 and sessions.label[0] == 1


def test_sessionize_splits_at_the_gap(tmp_path):
    rows = [b"u1,1700000000,view,a,c,1", b"u1,1700001800,view,b,c,1",  # exactly 30 min: same
            b"u1,1700003601,view,c,c,1"]  # 30 min + 1 s later: new session
    log = read_log(write_canonical(tmp_path, rows))
    assert [int(x) for x in np.diff(sessionize(log).offsets)] == [2, 1]
    with pytest.raises(ConfigError, match="gap"):
        sessionize(log, gap_minutes=0)
