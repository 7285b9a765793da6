"""Hostile input to the live path (issue 10): `serve`, SessionStore, LiveSession, Scorer's API.

One section per class of the issue: a bad line never stops `serve`; one session's clock
does not move the others'; a live session's memory is bounded; the API refuses what it
cannot score (one validation, `edge_runtime.events.canonical_event`, for the live path and
`Scorer.encode_session` alike) and a LiveSession may be pushed from several threads; the
rough edges of `serve` (blank lines, CR line ends, Ctrl-C, closed stdout, option names).
The shipped reference artifact is the model: nothing here trains.
"""

from __future__ import annotations

import io
import json
import math
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from edge_runtime import Scorer, SessionStore
from edge_runtime.errors import ConfigError
from edge_runtime.events import MAX_TS, MIN_TS, canonical_event, check_time
from edge_runtime.features import (
    ALL_FEATURES,
    DIGEST_BYTES,
    MAX_REMEMBERED_IDS,
    FeatureEncoder,
    FeatureSpec,
    id_digest,
)
from edge_runtime.live import MAX_KEY_CHARS
from edge_runtime.serve import LongLine, read_lines, serve_lines, serve_store

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "taobao-lstm128-float32.tflite"
T0 = 1_700_000_000
VIEW = {"event": "view", "item": "x"}


@pytest.fixture(scope="module")
def scorer() -> Scorer:
    return Scorer.load(MODEL)


def line(session: str = "a", ts: object = T0, **fields) -> str:
    return json.dumps({"session": session, "ts": ts, **VIEW, **fields})


def serve_bytes(scorer: Scorer, data: bytes, **kw) -> tuple[list[dict], SessionStore]:
    """`serve`'s library path on raw stdin bytes: the output records and the store."""
    out: list[str] = []
    store = SessionStore(scorer, max_sessions=kw.pop("max_sessions", 100),
                         idle_timeout=kw.pop("idle_timeout", 1800.0))
    serve_store(store, read_lines(io.BytesIO(data), **kw), out.append)
    return [json.loads(x) for x in out], store


def run_cli(args: list[str], data: bytes, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ubp_edge.cli", *args], input=data,
                          capture_output=True, timeout=300, cwd=ROOT,
                          env={**os.environ, **env})


# =========================================================================== 1. one bad line
HOSTILE_LINES = {
    # what a line holds: (its bytes, a phrase of its error)
    "400-digit ts": (line(ts=int("1" + "0" * 400)).encode(), "ts 1000"),
    "400-digit price": (line(ts=T0, price=int("9" * 400)).encode(), "price 999"),
    "5,000-digit number": (b'{"session": "a", "ts": 1' + b"0" * 5000 + b', "event": "view", "item": "x"}',
                           "digits"),
    "100,000-deep array": (b"[" * 100_000, "nested too deep"),
    "invalid UTF-8": (b'{"session": "a", "ts": 1700000000, "event": "view", "item": "\xff\xfe"}',
                      "not UTF-8: byte 0xff"),
    "1e300 ts": (line(ts=1e300).encode(), "outside 2000-01-01..2100-01-01"),
    "millisecond ts": (line(ts=T0 * 1000).encode(), "milliseconds?"),
    "Infinity price": (b'{"session": "a", "ts": 1700000000, "event": "view", "item": "x", '
                       b'"price": Infinity}', "price inf"),
    "blank line": (b"   ", "blank line"),
    "BOM then nothing": (b"\xef\xbb\xbf", "blank line"),
    "null item": (line(item=None).encode(), "item is null"),
    "empty session": (b'{"session": " ", "ts": 1700000000, "event": "view", "item": "x"}', "empty"),
    "long session key": (line(session="k" * (MAX_KEY_CHARS + 1)).encode(), "session key of 513"),
}


@pytest.mark.parametrize("name", list(HOSTILE_LINES))
def test_each_hostile_line_gets_its_error_line_and_the_stream_goes_on(scorer, name):
    bad, phrase = HOSTILE_LINES[name]
    data = line("a", T0).encode() + b"\n" + bad + b"\n" + line("a", T0 + 5).encode() + b"\n"
    records, store = serve_bytes(scorer, data)
    assert [r.get("line") for r in records] == [None, 2, None], records
    assert phrase in records[1]["error"] and "\n" not in records[1]["error"], records[1]
    assert len(records[1]["error"]) < 300  # a 400-digit value is cut, not echoed whole
    assert [r.get("events") for r in records] == [1, None, 2]  # the session went on
    assert store.stats.rejected == 1 and store.stats.pushed == 2


def test_a_line_over_the_limit_is_refused_without_being_kept(scorer):
    data = line("a", T0).encode() + b"\n" + b"x" * 5000 + b"\n" + line("a", T0 + 1).encode()
    records, _ = serve_bytes(scorer, data, max_line_bytes=1000, chunk_bytes=64)
    assert records[1] == {"line": 2, "error": "line of 5,000 bytes is longer than the limit of "
                                              "1,048,576 bytes"}
    assert [r.get("events") for r in records] == [1, None, 2]


def test_serve_command_answers_every_hostile_line(tmp_path):
    lines = [line("a", T0).encode()] + [bad for bad, _ in HOSTILE_LINES.values()] + [
        b"z" * (2 << 20), line("a", T0 + 9).encode()]
    done = run_cli(["serve", "--model", str(MODEL)], b"\n".join(lines) + b"\n",
                   PYTHONIOENCODING="utf-8")
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert b"Traceback" not in done.stderr
    records = [json.loads(x) for x in done.stdout.splitlines()]
    assert len(records) == len(lines)  # one answer per line, in order
    assert [r.get("line") for r in records[1:-1]] == list(range(2, len(lines)))
    assert records[-1]["events"] == 2
    assert (f"served 2 events in 1 sessions; {len(lines) - 2} lines rejected"
            in done.stderr.decode())


def test_serve_survives_a_stdout_closed_early():
    proc = subprocess.Popen([sys.executable, "-m", "ubp_edge.cli", "serve", "--model", str(MODEL)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=ROOT)
    proc.stdin.write(line("a", T0).encode() + b"\n")
    proc.stdin.flush()
    assert json.loads(proc.stdout.readline())["events"] == 1
    proc.stdout.close()  # the reader goes away
    try:
        for i in range(1, 2000):
            proc.stdin.write(line("a", T0 + i).encode() + b"\n")
        proc.stdin.close()
    except BrokenPipeError:  # serve may end before all are written
        pass
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    assert "served " in stderr and "still open" in stderr


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_serve_on_a_full_disk_says_so_in_one_line():
    with open("/dev/full", "wb") as full:
        done = subprocess.run([sys.executable, "-m", "ubp_edge.cli", "serve", "--model", str(MODEL)],
                              input=line("a", T0).encode() + b"\n", stdout=full, stderr=subprocess.PIPE,
                              cwd=ROOT, timeout=120)
    stderr = done.stderr.decode()
    assert done.returncode == 1, stderr
    assert stderr.splitlines()[-1] == "error: stdout: cannot write (No space left on device)"
    assert "Traceback" not in stderr and "Exception ignored" not in stderr


def test_ctrl_c_prints_the_summary_and_exits_130():
    proc = subprocess.Popen([sys.executable, "-m", "ubp_edge.cli", "serve", "--model", str(MODEL)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=ROOT)
    proc.stdin.write(line("a", T0).encode() + b"\n")
    proc.stdin.flush()
    assert json.loads(proc.stdout.readline())["events"] == 1  # answered before stdin ends
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr.decode()
    assert "served 1 events in 1 sessions; 0 lines rejected" in stderr.decode()


@pytest.mark.parametrize("option,value,message", [
    ("--max-sessions", "0", "error: --max-sessions must be a whole number >= 1, got 0"),
    ("--idle-timeout", "-1", "error: --idle-timeout must be a number of seconds > 0, got -1.0"),
    ("--idle-timeout", "nan", "error: --idle-timeout must be a number of seconds > 0, got nan"),
])
def test_serve_option_errors_name_the_option_as_typed(option, value, message):
    done = run_cli(["serve", "--model", str(MODEL), option, value], b"")
    assert done.returncode == 1
    assert done.stderr.decode().strip() == message


# =========================================================================== line ends
@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 1 << 16])
def test_read_lines_splits_at_lf_crlf_and_lone_cr_across_any_reads(chunk):
    data = b"a\nb\r\nc\rd\r\r\ne\n\nf"
    got = list(read_lines(io.BytesIO(data), chunk_bytes=chunk))
    assert got == [b"a", b"b", b"c", b"d", b"", b"e", b"", b"f"]


def test_read_lines_reports_long_lines_by_size_and_keeps_the_rest():
    data = b"short\n" + b"y" * 100 + b"\r\n" + b"ok\r" + b"z" * 50
    got = list(read_lines(io.BytesIO(data), max_line_bytes=20, chunk_bytes=8))
    assert got == [b"short", LongLine(100), b"ok", LongLine(50)]


def test_cr_only_stream_is_one_line_per_event(scorer):
    data = "\r".join(line("a", T0 + i) for i in range(5)).encode() + b"\r"
    records, _ = serve_bytes(scorer, data)
    assert [r["events"] for r in records] == [1, 2, 3, 4, 5]


# =========================================================================== 2. the clock
def open_sessions(store: SessionStore, keys: str, at: float) -> None:
    for i, key in enumerate(keys):
        store.push(key, {"ts": at + i, **VIEW})


@pytest.mark.parametrize("ts", [T0 * 1000, 1e300, -T0, True, MIN_TS - 1, MAX_TS + 1])
def test_an_absurd_timestamp_is_refused_and_expires_nobody(scorer, ts):
    store = SessionStore(scorer, max_sessions=100, idle_timeout=1800)
    open_sessions(store, "abc", T0)
    clock = store.clock
    with pytest.raises(ConfigError, match="ts"):
        store.push("x", {"ts": ts, **VIEW})
    assert store.clock == clock and "x" not in store
    _, removed = store.push("a", {"ts": T0 + 10, **VIEW})
    assert removed == [] and len(store) == 3
    assert store.stats.rejected == 1 and store.stats.expired_idle == 0


def test_one_session_in_the_far_future_does_not_expire_the_others(scorer):
    store = SessionStore(scorer, max_sessions=100, idle_timeout=1800)
    open_sessions(store, "abc", T0)
    for i in range(50):  # a device whose clock says 2099, sending and sending
        _, removed = store.push("future", {"ts": 4.07e9 + i, **VIEW})
        assert removed == []
    assert store.clock == T0 + 2 and len(store) == 4  # c's time: the latest two keys reached
    for i, key in enumerate("abc"):  # the others carry on in one session each
        assert store.push(key, {"ts": T0 + 60 + i, **VIEW})[1] == []
        assert store.events_of(key) == 2


def test_a_genuine_pause_is_caught_up_once_two_sessions_are_past_it(scorer):
    store = SessionStore(scorer, max_sessions=100, idle_timeout=1800)
    open_sessions(store, "abc", T0)
    later = T0 + 3 * 3600  # three hours without an event
    _, removed = store.push("d", {"ts": later, **VIEW})
    assert removed == []  # one key's time alone does not move the clock
    _, removed = store.push("e", {"ts": later + 5, **VIEW})
    assert removed == [("a", "idle", 1), ("b", "idle", 1), ("c", "idle", 1)]
    assert store.clock == later and len(store) == 2 and "d" in store and "e" in store


def test_a_session_back_after_the_timeout_starts_afresh_by_its_own_clock(scorer):
    store = SessionStore(scorer, max_sessions=100, idle_timeout=1800)
    open_sessions(store, "ab", T0)
    _, removed = store.push("a", {"ts": T0 + 3600, **VIEW})
    assert removed == [("a", "idle", 1)] and store.events_of("a") == 1
    assert "b" in store  # the clock has not moved: b is kept


def test_expire_takes_a_checked_time(scorer):
    store = SessionStore(scorer, max_sessions=100, idle_timeout=60)
    open_sessions(store, "ab", T0)
    with pytest.raises(ConfigError, match="not a finite number"):
        store.expire(math.nan)
    assert store.expire(T0 + 100) == [("a", "idle", 1), ("b", "idle", 1)]
    assert check_time("1700000000") == 1.7e9


# =========================================================================== 3. memory
def many_ids_session(n: int, repeat_every: int = 7) -> list[dict]:
    """``n`` events, mostly of new ids, with repeats of ids first seen both before and after
    the cap."""
    events = []
    for i in range(n):
        item = f"i{(i // 2) if i % repeat_every == 0 else i}"
        events.append({"ts": T0 + i, "event": "cart" if i % 11 == 0 else "view", "item": item,
                       "category": f"c{i % 1500}", "price": float(i % 90)})
    return events


def test_a_live_session_remembers_a_bounded_number_of_digests(scorer):
    live = scorer.start_session()
    pad = "p" * 3000
    for i in range(MAX_REMEMBERED_IDS + 200):
        live.push({"ts": T0 + i, "event": "view", "item": f"{i}{pad}", "category": f"{i}{pad}"})
    assert len(live.state.items) == len(live.state.categories) == MAX_REMEMBERED_IDS * DIGEST_BYTES
    assert live.state.items[:DIGEST_BYTES] == id_digest(f"0{pad}")


def test_past_the_cap_the_batch_and_one_event_paths_stay_bit_identical():
    features = ALL_FEATURES
    enc = FeatureEncoder.from_spec(FeatureSpec(features, (0.0,) * len(features), (1.0,) * len(features)))
    events = many_ids_session(3 * MAX_REMEMBERED_IDS)
    state = enc.start()
    live = np.stack([enc.step(state, e) for e in events])
    ids = {}
    cats = {}
    batch = enc.encode(np.array([e["ts"] for e in events]), np.array([e["event"] == "cart" for e in events],
                                                                      np.int64),
                       np.array([ids.setdefault(e["item"], len(ids)) for e in events]),
                       np.array([cats.setdefault(e["category"], len(cats)) for e in events]),
                       np.array([e["price"] for e in events]))
    assert np.array_equal(batch, live)
    repeat = live[:, features.index("repeat_item")]
    # i0..: ids first seen early are remembered; ids first seen past the cap are not.
    first_seen = {}
    for position, e in enumerate(events):
        first_seen.setdefault(e["item"], position)
    distinct_rank = {item: rank for rank, item in enumerate(sorted(first_seen, key=first_seen.get))}
    expected = [position != first_seen[e["item"]] and distinct_rank[e["item"]] < MAX_REMEMBERED_IDS
                for position, e in enumerate(events)]
    assert np.array_equal(repeat.astype(bool), expected)
    assert repeat.sum() > 0 and sum(position != first_seen[e["item"]] for position, e in enumerate(events)) \
        > repeat.sum()  # some repeats were forgotten: the cap was reached


def test_encode_session_past_the_cap_equals_the_live_path(scorer):
    events = many_ids_session(MAX_REMEMBERED_IDS + 300)
    state = scorer.encoder.start()
    live = np.stack([scorer.encoder.step(state, e) for e in events])
    assert np.array_equal(scorer.encode_session(events), live)


def test_a_100k_event_session_of_3kb_ids_stays_in_bounded_memory():
    """The issue's case in a fresh process: 100,000 events of distinct 3 KB item and category
    ids in one session took 388 MB (items only) before; the session now holds 16 KB of
    digests, and the process's peak grows by a few MB, not hundreds."""
    script = (
        "import sys\n"
        "from edge_runtime import SessionStore, Scorer\n"
        "from edge_runtime.probes import peak_rss_mb\n"
        "store = SessionStore(Scorer.load(sys.argv[1]), max_sessions=10, idle_timeout=None)\n"
        "store.push('warm', {'ts': 1.7e9, 'event': 'view', 'item': 'w'})\n"
        "base = peak_rss_mb()\n"
        "pad = 'x' * 3000\n"
        "for i in range(100_000):\n"
        "    store.push('s', {'ts': 1.7e9 + i, 'event': 'view', 'item': f'{i:08d}{pad}',\n"
        "                     'category': f'c{i}{pad}'})\n"
        "print(base, peak_rss_mb())\n")
    done = subprocess.run([sys.executable, "-c", script, str(MODEL)], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr
    base, peak = map(float, done.stdout.split())
    assert peak - base < 20, (base, peak)


# =========================================================================== 4. the API
def test_score_sessions_refuses_contexts_of_another_length(scorer):
    session = [{"ts": T0, **VIEW}]
    with pytest.raises(ConfigError, match="3 sessions but 1 contexts"):
        scorer.score_sessions([session] * 3, contexts=[{"prior_sessions": 1}])
    with pytest.raises(ConfigError, match="1 sessions but 2 contexts"):
        scorer.score_sessions([session], contexts=[None, None])
    assert len(scorer.score_sessions([session] * 3, contexts=[None] * 3)) == 3


BAD_EVENTS = {
    "event True": ({"event": True}, "event type True"),
    "event 1.9": ({"event": 1.9}, "event type 1.9"),
    "event 7": ({"event": 7}, "event type 7"),
    "price abc": ({"price": "abc"}, "price 'abc' is not a number"),
    "negative price": ({"price": -1.0}, "price -1.0 is not a finite number >= 0"),
    "infinite price": ({"price": math.inf}, "price inf"),
    "boolean price": ({"price": False}, "price False is a boolean"),
    "boolean ts": ({"ts": True}, "ts True is a boolean"),
    "negative ts": ({"ts": -T0}, "outside 2000-01-01..2100-01-01"),
    "NaN ts": ({"ts": math.nan}, "not a finite number"),
    "huge-int ts": ({"ts": 10 ** 400}, "not a finite number"),
    "ts text": ({"ts": "noon"}, "ts 'noon' is not a number"),
    "null item": ({"item": None}, "item is null"),
    "empty item": ({"item": ""}, "item '' is empty"),
    "blank item": ({"item": "  "}, "item '  ' is empty"),
    "boolean item": ({"item": True}, "item True is not an id"),
    "object item": ({"item": {"id": 1}}, "item {'id': 1} is not an id"),
    "list category": ({"category": [1]}, "category [1] is not an id"),
    "no item": ({"item": KeyError}, "has no 'item' field"),
}


def with_fields(fields: dict) -> dict:
    event = {"ts": T0 + 99, **VIEW, **fields}
    return {k: v for k, v in event.items() if v is not KeyError}


@pytest.mark.parametrize("length", [3, 17, 40])  # the one-event and the vectorised paths
@pytest.mark.parametrize("name", list(BAD_EVENTS))
def test_every_session_length_refuses_a_bad_event_alike(scorer, name, length):
    fields, phrase = BAD_EVENTS[name]
    session = [{"ts": T0 + i, **VIEW} for i in range(length - 1)] + [with_fields(fields)]
    with pytest.raises(ConfigError, match=f"^session 1: event {length} of the session: ") as caught:
        scorer.score_sessions([session])
    assert phrase in str(caught.value)


@pytest.mark.parametrize("name", list(BAD_EVENTS))
def test_the_live_path_refuses_what_the_batch_reader_quarantines(scorer, name):
    fields, phrase = BAD_EVENTS[name]
    live = scorer.start_session()
    live.push({"ts": T0, **VIEW})
    before = (live.events, live.probability, live.hc.copy(), bytes(live.state.items))
    with pytest.raises(ConfigError) as caught:
        live.push(with_fields(fields))
    assert phrase in str(caught.value)
    assert (live.events, live.probability, bytes(live.state.items)) == (before[0], before[1], before[3])
    assert np.array_equal(live.hc, before[2])


def test_canonical_event_normalises_what_means_absent():
    event = canonical_event({"ts": "1700000000", "event": 1, "item": 42, "category": " ", "price": None})
    assert event == (1.7e9, 1, "42", None, event.price) and math.isnan(event.price)
    assert math.isnan(canonical_event({"ts": T0, **VIEW, "price": math.nan}).price)
    assert canonical_event({"ts": np.float64(T0), "event": np.int64(0), "item": np.int64(7)})[:3] == \
        (T0, 0, "7")
    with pytest.raises(ConfigError, match="must be a mapping"):
        canonical_event(["ts", "event"])


@pytest.mark.parametrize("kind", [4, -1, True, False, 1.0, None])
def test_an_event_type_code_is_a_whole_number_of_the_four(kind):
    # Integer codes take a fast path (the readers' logs carry them); what it does not pass
    # takes the full check: the same codes, the same refusals.
    for code, name in enumerate(("view", "cart", "fav", "purchase")):
        assert canonical_event({"ts": T0, "event": code, "item": "a"}) == \
            canonical_event({"ts": T0, "event": name, "item": "a"})
    with pytest.raises(ConfigError, match=r"event type .* not in \['view', 'cart', 'fav', 'purchase'\]"):
        canonical_event({"ts": T0, "event": kind, "item": "a"})


def test_a_live_session_pushed_from_many_threads_loses_no_update(scorer):
    # Identical events: the order the threads take does not change the result, so the
    # session must end where one thread pushing them all ends.
    event = {"ts": T0, "event": "view", "item": "a", "category": "c"}
    threads, per_thread = 8, 100
    reference = scorer.start_session()
    for _ in range(threads * per_thread):
        reference.push(event)
    shared = scorer.start_session()
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        workers = [threading.Thread(target=lambda: [shared.push(event) for _ in range(per_thread)])
                   for _ in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    finally:
        sys.setswitchinterval(old)
    assert shared.events == shared.state.n == threads * per_thread
    assert np.array_equal(shared.hc, reference.hc) and shared.probability == reference.probability


def test_serve_lines_counts_a_bad_context_as_rejected(scorer):
    out: list[str] = []
    store = serve_lines(scorer, [line(context={"prior_sessions": "many"})], out.append)
    assert "error" in json.loads(out[0]) and store.stats.rejected == 1 and len(store) == 0
