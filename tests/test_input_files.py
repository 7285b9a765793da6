"""Inputs that cannot be logs, and settings no reader can use, through the API and the CLI
(issue 10, classes 6, 8 and 9 and the rough edges of the readers).

- What is read: regular files and pipes, whole, at most `trainer.readers.max_log_bytes()` bytes
  of text (``UBP_EDGE_MAX_LOG_BYTES``, else 1/8 of the machine's memory); gzip in chunks,
  refused at the limit; devices, sockets, directories, symbolic link loops and FIFOs with no
  writer refused by name; binary and UTF-16 content refused on its first block.
- The peak memory of refusing a gzip bomb is measured in a fresh process (VmHWM), and must stay
  near the limit, not near the bomb's expanded size.
- ``--delimiter`` of zero or several characters, a malformed DIGINETICA
  ``product-categories.csv``, an OTTO line with one bad event: one line, or a quarantined row.

The tests of single files are in tests/test_corpus.py (its table); here are the paths through
the CLI, the settings, and the cases that need a process, a thread or a socket.
"""

from __future__ import annotations

import fcntl
import gzip
import json
import os
import re
import socket
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge_runtime.errors import ConfigError, DataError
from trainer.formats import PRESETS, FormatPreset, custom_preset, delimiter_problem
from trainer.logsource import EventLogSource
from trainer.readers import MAX_LOG_BYTES_ENV, max_log_bytes, read_bytes, read_log
from ubp_edge.cli import app

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
HEADER = b"user,ts,event,item,category,price\n"
ROWS = b"u1,1700000000,view,i1,c1,9.5\nu1,1700000010,cart,i1,c1,9.5\nu2,1700000020,view,i2,c2,1.0\n"
REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()
# A subprocess that should end at once gets this long before the test calls it hung: a guard
# against waiting forever, not a measure of speed.
HANG_GUARD_SECONDS = 120


def inspect(*args: object, env: dict[str, str] | None = None):
    return runner.invoke(app, ["data", "inspect", *map(str, args)], env=env)


def one_error_line(result, *names: str) -> str:
    """Exit 1, no traceback, one stderr line "error: ..." naming every one of ``names``."""
    stderr = ANSI.sub("", result.stderr)
    assert result.exit_code == 1, (result.exit_code, result.stdout, stderr, result.exception)
    assert "Traceback" not in stderr and "Traceback" not in result.stdout
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


def ubp_edge(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The real entry point in a fresh process (for FIFOs: a hang must not hang pytest)."""
    return subprocess.run([sys.executable, "-m", "ubp_edge.cli", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=HANG_GUARD_SECONDS,
                          env={**os.environ, **(env or {})})


@pytest.fixture
def good_csv(tmp_path) -> Path:
    path = tmp_path / "good.csv"
    path.write_bytes(HEADER + ROWS)
    return path


# =========================================================================== the size limit

@pytest.mark.parametrize("value, expected", [("4096", 4096), ("4K", 4096), ("4k", 4096), ("1.5M", 3 << 19),
                                             ("2G", 2 << 30), ("2GB", 2 << 30), ("2GiB", 2 << 30),
                                             (" 1T ", 1 << 40)])
def test_max_log_bytes_from_the_environment(monkeypatch, value, expected):
    monkeypatch.setenv(MAX_LOG_BYTES_ENV, value)
    assert max_log_bytes() == expected


@pytest.mark.parametrize("value", ["abc", "0", "-5", "4X", "G", "nan", "inf"])
def test_max_log_bytes_refuses_what_is_not_a_size(monkeypatch, value):
    monkeypatch.setenv(MAX_LOG_BYTES_ENV, value)
    shown = re.escape(repr(value))
    with pytest.raises(ConfigError, match=rf"^{MAX_LOG_BYTES_ENV}: {shown} is not a positive size"):
        max_log_bytes()


def test_default_limit_is_an_eighth_of_memory(monkeypatch):
    monkeypatch.delenv(MAX_LOG_BYTES_ENV, raising=False)
    physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert 0 < max_log_bytes() <= physical // 8


def test_limit_passed_to_read_bytes(tmp_path, good_csv):
    assert read_bytes(good_csv, limit=len(HEADER + ROWS)) == HEADER + ROWS
    with pytest.raises(DataError, match=r"more than 10, the limit passed to read_bytes"):
        read_bytes(good_csv, limit=10)
    zipped = tmp_path / "good.csv.gz"
    zipped.write_bytes(gzip.compress(HEADER + ROWS))
    with pytest.raises(DataError, match=r"expands to more than 100 bytes when decompressed"):
        read_bytes(zipped, limit=100)


def test_limit_through_the_cli(tmp_path):
    bomb = tmp_path / "bomb.csv.gz"
    bomb.write_bytes(gzip.compress(HEADER + ROWS * 50_000, compresslevel=9))
    line = one_error_line(inspect(bomb, env={MAX_LOG_BYTES_ENV: "1M"}), str(bomb))
    assert "expands to more than 1,048,576 bytes when decompressed (a gzip bomb?)" in line
    line = one_error_line(inspect(bomb, env={MAX_LOG_BYTES_ENV: "lots"}), MAX_LOG_BYTES_ENV, "'lots'")


PEAK_SCRIPT = """
import sys
from trainer.readers import read_log
from edge_runtime.errors import DataError
try:
    read_log(sys.argv[1])
    print("read")
except DataError as e:
    print(str(e))
for line in open("/proc/self/status"):
    if line.startswith("VmHWM"):
        print(int(line.split()[1]) * 1024)
"""


def test_refusing_a_gzip_bomb_takes_memory_near_the_limit_not_the_expanded_size(tmp_path):
    """A 200 KB gzip that expands to 256 MB of valid rows, limit 16 MB: the fresh process's
    peak (VmHWM) stays far below the expanded size (before: the whole text was held)."""
    bomb = tmp_path / "bomb.csv.gz"
    row = b"u1,1700000000,view,i1,c1,1.0\n"
    with gzip.open(bomb, "wb", compresslevel=9) as f:
        f.write(HEADER)
        block = row * ((1 << 20) // len(row))
        for _ in range(256):
            f.write(block)
    expanded = 256 << 20
    done = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(bomb)], cwd=REPO, capture_output=True,
                          text=True, timeout=HANG_GUARD_SECONDS, env={**os.environ, MAX_LOG_BYTES_ENV: "16M"})
    message, peak = done.stdout.splitlines()
    assert "expands to more than 16,777,216 bytes when decompressed (a gzip bomb?)" in message
    baseline = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, "/nonexistent"], cwd=REPO,
                              capture_output=True, text=True, timeout=HANG_GUARD_SECONDS)
    base = int(baseline.stdout.splitlines()[-1])
    assert int(peak) - base < expanded // 4, (int(peak) - base, expanded)


# =========================================================================== kinds of file

@pytest.mark.parametrize("device", ["/dev/zero", "/dev/null", "/dev/urandom"])
def test_character_devices_are_refused_by_name(device):
    with pytest.raises(DataError, match=rf"^{device}: is a character device, not a log file"):
        read_log(device)
    one_error_line(inspect(device), device, "is a character device")


def test_a_socket_is_refused_by_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a short relative name: socket paths are limited to ~100 bytes
    with socket.socket(socket.AF_UNIX) as server:
        server.bind("log.sock")
        with pytest.raises(DataError, match=r"^log.sock: is a socket, not a log file"):
            read_log("log.sock")


def test_symbolic_link_loop_and_broken_link_through_the_cli(tmp_path):
    loop = tmp_path / "loop.csv"
    loop.symlink_to("loop.csv")
    one_error_line(inspect(loop), str(loop), "symbolic link loop")
    broken = tmp_path / "broken.csv"
    broken.symlink_to("gone.csv")
    one_error_line(inspect(broken), str(broken), "no such file", "'gone.csv'")


@pytest.mark.parametrize("encoding, what", [("utf-16", "UTF-16 text (byte-order mark FF FE)"),
                                            ("utf-16-le", "UTF-16 text (little-endian, no byte-order mark)"),
                                            ("utf-32", "UTF-32 text (byte-order mark FF FE 00 00)")])
def test_utf16_through_the_cli(tmp_path, encoding, what):
    path = tmp_path / "excel.csv"
    path.write_bytes((HEADER + ROWS).decode().encode(encoding))
    line = one_error_line(inspect(path), str(path))
    assert line == f"error: {path}: {what}: re-save it as UTF-8"


def test_utf16_inside_gzip(tmp_path):
    path = tmp_path / "excel.csv.gz"
    path.write_bytes(gzip.compress((HEADER + ROWS).decode().encode("utf-16")))
    with pytest.raises(DataError, match=r"UTF-16 text \(byte-order mark FF FE\): re-save it as UTF-8"):
        read_log(path)


def test_binary_file_through_the_cli(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(os.urandom(10_000))
    one_error_line(inspect(path), str(path), "binary data, not a text log")


def test_a_nul_byte_in_a_text_log_is_not_binary(tmp_path):
    path = tmp_path / "log.csv"
    path.write_bytes(HEADER + b"u1,1700000000,view,i\x001,c1,1\n" + ROWS)
    assert len(read_log(path)) == 4


def test_pipe_as_process_substitution_passes_it(good_csv):
    """`ubp-edge data inspect <(cat log)`: /dev/fd/N is a pipe, read to its end."""
    read_end, write_end = os.pipe()
    os.write(write_end, gzip.compress(HEADER + ROWS))  # zcat or not: a gzip pipe is read too
    os.close(write_end)
    try:
        log = read_log(f"/proc/self/fd/{read_end}")
    finally:
        os.close(read_end)
    assert len(log) == len(read_log(good_csv)) == 3


def test_named_fifo_with_a_writer_is_read(tmp_path):
    """A writer that holds the FIFO open before the reader comes, and closes it once the
    reader has taken its bytes (FIONREAD: bytes waiting in the pipe)."""
    fifo = tmp_path / "live.csv"
    os.mkfifo(fifo)
    writer = os.open(fifo, os.O_RDWR)  # never blocks; counts as a writer
    os.write(writer, HEADER + ROWS)

    def close_when_read() -> None:
        waiting = bytearray(4)
        while True:
            fcntl.ioctl(writer, termios.FIONREAD, waiting)
            if struct.unpack("i", waiting)[0] == 0:
                break
            threading.Event().wait(0.01)
        os.close(writer)

    closer = threading.Thread(target=close_when_read, daemon=True)
    closer.start()
    log = read_log(fifo)
    closer.join()
    assert len(log) == 3


def test_fifo_without_a_writer_is_refused_at_once_through_the_cli(tmp_path):
    fifo = tmp_path / "nobody.csv"
    os.mkfifo(fifo)
    done = ubp_edge("data", "inspect", fifo)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        f"error: {fifo}: a named pipe (FIFO) with no writer; start the program that writes to it "
        f"first (e.g. `cat log.csv > {fifo} &`), or pass the file"]


def test_running_out_of_memory_is_one_line(tmp_path, good_csv, monkeypatch):
    """A text under the limit can still exhaust the memory free: DataError, not MemoryError."""
    import trainer.readers

    def no_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(trainer.readers, "detect_format", no_memory)
    with pytest.raises(DataError, match=rf"out of memory parsing its {len(HEADER + ROWS)} bytes of text"):
        read_log(good_csv)
    monkeypatch.setattr(gzip, "GzipFile", no_memory)
    zipped = tmp_path / "good.csv.gz"
    zipped.write_bytes(gzip.compress(HEADER + ROWS))
    with pytest.raises(DataError, match=r"out of memory reading it whole"):
        read_bytes(zipped)


# =========================================================================== --delimiter

@pytest.mark.parametrize("value", ["", "ab", "\\t", '"', "\n", "§"])
def test_delimiter_that_no_reader_can_use(value):
    assert delimiter_problem(value)
    with pytest.raises(ConfigError, match=rf"^--delimiter: {re.escape(repr(value))} "):
        custom_preset("user=u,time=t,event=e,item=i", None, delimiter=value)
    with pytest.raises(ConfigError, match=r"^--delimiter: "):
        EventLogSource(Path("log.csv"), format="csv", column_map="user=u,time=t,event=e,item=i",
                       delimiter=value)
    with pytest.raises(ConfigError, match=r"^--delimiter: "):  # whatever the format
        EventLogSource(Path("log.csv"), format="taobao", delimiter=value)
    with pytest.raises(ConfigError, match=rf"^format 'x': delimiter {re.escape(repr(value))} "):
        FormatPreset(name="x", columns=dict(PRESETS["canonical"].columns), events={}, delimiter=value)


def test_backslash_t_gets_a_hint():
    with pytest.raises(ConfigError, match=r"for a tab, pass a real tab"):
        custom_preset("user=u,time=t,event=e,item=i", None, delimiter="\\t")


def test_tab_and_other_single_characters_read(tmp_path):
    for delimiter in ("\t", "|", ";", " "):
        path = tmp_path / "log.txt"
        path.write_bytes((HEADER + ROWS).replace(b",", delimiter.encode()))
        source = EventLogSource(path, format="csv", column_map="user=user,time=ts,event=event,item=item",
                                delimiter=delimiter)
        assert len(source.read()) == 3


@pytest.mark.parametrize("value", ["", "ab"])
def test_delimiter_through_the_cli(good_csv, value):
    result = inspect(good_csv, "--format", "csv", "--map", "user=user,time=ts,event=event,item=item",
                     "--delimiter", value)
    one_error_line(result, "--delimiter", repr(value))


# =========================================================================== DIGINETICA categories

VIEWS = (b"session_id;user_id;item_id;timeframe;eventdate\n"
         b"1;NA;100;1000;2016-05-09\n1;NA;101;5000;2016-05-09\n2;7;200;0;2016-05-10\n")
PURCHASES = b"sessionId;userId;timeframe;eventdate;ordernumber;itemId\n1;NA;9000;2016-05-09;1;101\n"


def diginetica(tmp_path: Path, categories: bytes) -> Path:
    views = tmp_path / "views.csv"
    views.write_bytes(VIEWS)
    (tmp_path / "train-purchases.csv").write_bytes(PURCHASES)
    (tmp_path / "product-categories.csv").write_bytes(categories)
    return views


@pytest.mark.parametrize("categories, message", [
    (b"itemId,categoryId\n100,7\n",
     r":1: missing columns \['itemId', 'categoryId'\]; found \['itemId,categoryId'\]"),
    (b"", r": empty file$"),
    (b"item\xe9;categoryId\n", r":1: the header is not UTF-8 text"),
    (b"\xff\xfei\x00t\x00", r": UTF-16 text"),
    (b"itemId;itemId\n1;2\n", r":1: duplicate column names"),
], ids=["comma-separated", "empty", "header-not-utf8", "utf16", "duplicate-columns"])
def test_categories_file_faults_are_one_line_naming_it(tmp_path, categories, message):
    views = diginetica(tmp_path, categories)
    path = tmp_path / "product-categories.csv"
    with pytest.raises(DataError) as info:
        read_log(views, "diginetica")
    assert str(info.value).startswith(str(path)) and re.search(message, str(info.value)), info.value
    one_error_line(inspect(views, "--format", "diginetica"), str(path))


def test_categories_bad_rows_are_quarantined_through_the_cli(tmp_path):
    views = diginetica(tmp_path, b"itemId;categoryId\n100;7\n101;8;9\n\xff200;3\n;4\n")
    quarantine = tmp_path / "bad.jsonl"
    result = inspect(views, "--format", "diginetica", "--json", "--quarantine", quarantine)
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["bad_rows"] == {"total": 3, "by_reason": {"missing_item": 1, "non_utf8": 1,
                                                            "wrong_field_count": 1}}
    rows = [json.loads(line) for line in quarantine.read_text().splitlines()]
    assert {(r["source"], r["line"]) for r in rows} == {
        (str(tmp_path / "product-categories.csv"), n) for n in (3, 4, 5)}
    strict = inspect(views, "--format", "diginetica", "--strict")
    one_error_line(strict, str(tmp_path / "product-categories.csv") + ":3", "wrong_field_count")


def test_real_categories_file_still_maps_every_item():
    data = REPO.parent / "shared" / "data" / "diginetica"
    if not data.exists():
        pytest.skip("no ../shared/data")
    log = read_log(data / "sample_train-item-views.csv", "diginetica")
    assert log.bad.total == 0 and (log.category.values() != "").all()


# =========================================================================== OTTO lines

T = 1659304800025


def otto_line(session: int, *events: object) -> str:
    return json.dumps({"session": session, "events": list(events)})


def event(aid: object = 1, ts: object = T, type_: object = "clicks") -> dict:
    return {"aid": aid, "ts": ts, "type": type_}


@pytest.mark.parametrize("position", [0, 2, 4], ids=["first", "middle", "last"])
def test_otto_one_bad_aid_quarantines_its_line_only(tmp_path, position):
    """The issue's example: an `aid` that is text used to reject the whole file, with no line."""
    lines = [otto_line(s, event(10 * s), event(10 * s + 1, T + 1000, "carts")) for s in range(5)]
    lines[position] = otto_line(position, event(1), event("abc", T + 5))
    path = tmp_path / "otto.jsonl"
    path.write_text("\n".join(lines) + "\n")
    log = read_log(path)
    assert log.format == "otto" and len(log) == 8 and log.rows_read == 9
    (row,) = log.bad.rows
    assert (row["line"], row["reason"]) == (position + 1, "bad_item")
    assert row["detail"] == 'event 2 of 2: aid "abc", expected an integer (an OTTO article id)'
    assert row["raw"] == lines[position]
    assert position + 1 not in set(log.line)


@pytest.mark.parametrize("bad, reason, detail", [
    (otto_line(7, event(ts="1659304800025")), "bad_timestamp", 'ts "1659304800025", expected a number'),
    (otto_line(7, event(ts=None)), "bad_timestamp", "ts is null"),
    (otto_line(7, {"aid": 1, "type": "clicks"}), "bad_timestamp", "no ts"),
    (otto_line(7, event(type_="teleport")), "unknown_event", "'teleport'"),
    (otto_line(7, event(type_=True)), "unknown_event", "type true, expected one of"),
    (otto_line(7, event(aid=True)), "bad_item", "aid true, expected an integer"),
    (otto_line(7, event(ts=10 ** 400)), "absurd_timestamp", "outside 2000-01-01..2100-01-01"),
    ('{"session": 7, "events": {"aid": 1}}', "malformed_session", "'events' is {\"aid\": 1}"),
    ('{"session": "s7", "events": []}', "malformed_session", 'session "s7", expected an integer'),
    ('{"session": 7, "events": [[1, 2]]}', "malformed_session", "event 1 of 1 is [1, 2], expected an object"),
    ('{"session": 7}', "malformed_session", "no 'events' list"),
    ('{"session": null, "events": []}', "missing_session", "session is null"),
    ('{"session": 7, "events": [' + "[" * 50_000 + "]" * 50_000 + "]}", "malformed_json",
     "nested too deeply"),
], ids=["ts-text", "ts-null", "ts-missing", "type-unknown", "type-bool", "aid-bool", "ts-huge",
        "events-object", "session-text", "event-list", "events-missing", "session-null", "deep"])
def test_otto_line_faults_are_row_level(tmp_path, bad, reason, detail):
    path = tmp_path / "otto.jsonl"
    path.write_text("\n".join([otto_line(1, event(1)), bad, otto_line(2, event(2))]) + "\n")
    log = read_log(path, "otto")
    assert len(log) == 2 and log.rows_read == 3 and sorted(set(log.line)) == [1, 3]
    (row,) = log.bad.rows
    assert (row["line"], row["reason"]) == (2, reason) and detail in row["detail"], row


def test_otto_bad_line_through_the_cli(tmp_path):
    path = tmp_path / "otto.jsonl"
    path.write_text("\n".join([otto_line(1, event(1), event(2, T + 1, "orders")),
                               otto_line(2, event("abc")), otto_line(3, event(3))]) + "\n")
    quarantine = tmp_path / "q.jsonl"
    result = inspect(path, "--json", "--quarantine", quarantine)
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["rows_read"], summary["events"]) == (4, 3)
    assert summary["bad_rows"] == {"total": 1, "by_reason": {"bad_item": 1}}
    (row,) = map(json.loads, quarantine.read_text().splitlines())
    assert row["line"] == 2 and row["raw"] == otto_line(2, event("abc"))
    line = one_error_line(inspect(path, "--strict"), f"{path}:2", "bad_item", '"abc"')
    assert "aid" in line
