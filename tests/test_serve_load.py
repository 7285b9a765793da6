"""`ubp-edge serve` under load: 100,000 events over 10,000 sessions through the real command.

Every output line is checked against an independent model of the session store (LRU bound,
idle timeout on event time), no event is lost, every malformed line gets its error line,
and the process's peak memory stays bounded and does not grow with the input's length.
"""

from __future__ import annotations

import collections
import json
import math
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_runtime import Scorer

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
MAX_SESSIONS = 2000
IDLE_TIMEOUT = 600.0
EVENTS_PER_SESSION = 10
# Peak RSS of the whole `serve` process (Python, numpy, the interpreter, 2,000 live
# sessions): 66 MB here at 20,000 and at 100,000 events. The bound leaves room for
# other platforms and library versions, not for growth.
PEAK_RSS_BOUND_MB = 150
# Peak RSS at 100,000 events may exceed the 20,000-event run by at most this much.
RSS_GROWTH_BOUND_MB = 4

# Malformed lines and a phrase of the error each must get.
MALFORMED = {
    "not-json": ("{\"session\": \"x\", \"ts\": ", "not JSON"),
    "array": ("[1, 2, 3]", "expected a JSON object"),
    "no-session": ('{"ts": 1700000000, "event": "view", "item": "i"}', "'session'"),
    "bad-type": (None, "teleport"),  # a valid session and ts: must not move the clock
    "bad-ts": (None, "ts"),
    "nan-ts": (None, "not a finite number"),
}
# Every line that gets an error line, and a phrase of its error: a blank line gets one too.
ERROR_PHRASE = {**{kind: phrase for kind, (_, phrase) in MALFORMED.items()}, "blank": "blank line"}


def make_stream(n_events: int, seed: int, malformed_every: int = 97) -> list[tuple[str, str]]:
    """Seeded, interleaved event lines, as (kind, line): ``n_events`` good ones ("good") over
    ``n_events / 10`` session keys, with malformed lines (a kind of MALFORMED) and blank lines
    ("blank") mixed in.

    Sessions start in waves, 800 s at 1.5 a second then 800 s at 0.2 a second, and their
    gaps are exponential with a 200 s mean: in a wave more sessions are open than the 2,000
    held (LRU evictions), between waves they go quiet and time out (5% of gaps also exceed
    the 600 s idle timeout). Either way a key seen again starts a new session. Any prefix of
    20,000 events or more has both kinds of removal.
    """
    rng = random.Random(seed)
    n_keys = n_events // EVENTS_PER_SESSION
    starts: list[float] = []
    t, wave = 0.0, 0
    while len(starts) < n_keys:
        rate, end = (1.5, 800.0) if wave % 2 == 0 else (0.2, 800.0)
        end += t
        while len(starts) < n_keys:
            t += rng.expovariate(rate)
            if t >= end:
                t = end
                break
            starts.append(t)
        wave += 1
    events = []
    for k, start in enumerate(starts):
        ts = 1.7e9 + start
        for _ in range(EVENTS_PER_SESSION):
            events.append((ts, k, rng.choices(("view", "cart", "fav", "purchase"), (89, 6, 3, 2))[0],
                           rng.randrange(500)))
            ts += rng.expovariate(1 / 200.0)
    events.sort()
    stream: list[tuple[str, str]] = []
    for i, (ts, k, kind, item) in enumerate(events):
        if i % malformed_every == malformed_every - 1:
            bad = rng.choice(list(MALFORMED))
            text = MALFORMED[bad][0]
            if text is None:
                # A good session key and (but for bad-ts/nan-ts) a good ts: such a line must
                # change nothing, not even move the idle clock.
                record = {"session": f"k{k}", "ts": round(ts, 3), "event": "view", "item": str(item)}
                if bad == "bad-type":
                    record["event"] = "teleport"
                elif bad == "bad-ts":
                    record["ts"] = "noon"
                else:
                    record["ts"] = float("nan")  # json writes NaN, and json.loads reads it
                text = json.dumps(record)
            stream.append((bad, text))
        if i % 1009 == 500:
            stream.append(("blank", ""))
        stream.append(("good", json.dumps({"session": f"k{k}", "ts": round(ts, 3), "event": kind,
                                           "item": str(item), "category": str(item % 37),
                                           "price": round(1 + item / 10, 2)})))
    return stream


def first_events(stream: list[tuple[str, str]], n_good: int) -> list[tuple[str, str]]:
    """The stream up to and including its ``n_good``-th good line."""
    seen = 0
    for position, (kind, _) in enumerate(stream):
        seen += kind == "good"
        if seen == n_good:
            return stream[:position + 1]
    raise ValueError(f"the stream has only {seen} good lines")


def expected_output(lines: list[str]) -> tuple[list[dict], dict]:
    """What serve must print for ``lines``, from a model of the store written from its
    documentation: per good line, its removals (the session's own restart when its previous
    event is over the timeout ago; then the sessions idle by the store's clock, oldest
    first; then the least recently used when a new session needs room) and then its score;
    per malformed or blank line, one error naming its line number.

    The store's clock is the latest time two different keys have reached; a session's last
    activity is its last event's time but never later than the clock at that event, and
    rises to its time once another key overtakes it."""
    # key -> [events, last activity, last event's time]
    held: collections.OrderedDict[str, list] = collections.OrderedDict()
    clock = {"lead_key": None, "lead": -math.inf, "second": -math.inf, "now": -math.inf}

    def set_clock(now: float) -> None:
        if now > clock["now"]:
            if clock["now"] == -math.inf:
                for state in held.values():
                    state[1] = min(state[2], now)
            clock["now"] = now

    def advance(key: str, ts: float) -> None:
        if key == clock["lead_key"]:
            clock["lead"] = max(clock["lead"], ts)
        elif ts > clock["lead"]:
            overtaken = clock["lead_key"]
            clock["second"], clock["lead_key"], clock["lead"] = clock["lead"], key, ts
            set_clock(clock["second"])
            if overtaken in held:
                held[overtaken][1] = min(held[overtaken][2], clock["now"])
        else:
            clock["second"] = max(clock["second"], ts)
            set_clock(clock["second"])

    out: list[dict] = []
    stats = collections.Counter()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            out.append({"line": number})
            stats["rejected"] += 1
            continue
        try:
            record = json.loads(line)
            ok = (isinstance(record, dict) and isinstance(record.get("session"), str)
                  and record.get("event") in ("view", "cart", "fav", "purchase")
                  and isinstance(record.get("ts"), float) and record["ts"] == record["ts"])
        except json.JSONDecodeError:
            ok = False
        if not ok:
            out.append({"line": number})
            stats["rejected"] += 1
            continue
        key, now = record["session"], record["ts"]
        if key in held and now - held[key][2] > IDLE_TIMEOUT:
            out.append({"session": key, "removed": "idle", "events": held.pop(key)[0]})
            stats["idle"] += 1
        advance(key, now)
        while held and clock["now"] - next(iter(held.values()))[1] > IDLE_TIMEOUT:
            gone, (events, _, _) = held.popitem(last=False)
            out.append({"session": gone, "removed": "idle", "events": events})
            stats["idle"] += 1
        if key not in held:
            stats["started"] += 1
            while len(held) >= MAX_SESSIONS:
                gone, (events, _, _) = held.popitem(last=False)
                out.append({"session": gone, "removed": "lru", "events": events})
                stats["lru"] += 1
            held[key] = [0, now, now]
        held[key][0] += 1
        held[key][1:] = [min(now, clock["now"]), now]
        held.move_to_end(key)
        stats["pushed"] += 1
        out.append({"session": key, "events": held[key][0]})
    stats["open"] = len(held)
    return out, dict(stats)


def run_serve(model: Path, lines: list[str], tmp_path: Path, name: str) -> dict:
    """Run `python -m ubp_edge.cli serve` with ``lines`` in a file as its stdin: its output
    lines, stderr, exit code, wall time and peak RSS.

    Peak RSS comes from GNU time (`/usr/bin/time -f %M`) when there is one, else from
    polling the child's VmHWM in /proc. Not from this process's wait4/RUSAGE_CHILDREN: a
    child forked from pytest carries pytest's own high-water mark (TensorFlow is loaded
    here) across exec, which read 1.1 GB for a 100 MB server.
    """
    source = tmp_path / f"{name}.jsonl"
    source.write_text("\n".join(lines) + "\n")
    target, errors, rss_file = (tmp_path / f"{name}.{ext}" for ext in ("out", "err", "rss"))
    command = [sys.executable, "-m", "ubp_edge.cli", "serve", "--model", str(model),
               "--max-sessions", str(MAX_SESSIONS), "--idle-timeout", str(IDLE_TIMEOUT)]
    gnu_time = Path("/usr/bin/time")
    if gnu_time.exists():
        command = [str(gnu_time), "-f", "%M", "-o", str(rss_file), *command]
    peak_kb = 0
    started = time.perf_counter()
    with source.open("rb") as stdin, target.open("wb") as stdout, errors.open("wb") as stderr:
        proc = subprocess.Popen(command, stdin=stdin, stdout=stdout, stderr=stderr, cwd=ROOT)
        while proc.poll() is None:
            if not gnu_time.exists():
                peak_kb = max(peak_kb, _vm_hwm_kb(proc.pid))
            time.sleep(0.01)
            if time.perf_counter() - started > 300:
                proc.kill()
                pytest.fail(f"serve took over 300 s on {len(lines):,} lines")
    seconds = time.perf_counter() - started
    if gnu_time.exists():
        peak_kb = int(rss_file.read_text().split()[-1])
    return {"returncode": proc.returncode, "seconds": seconds, "peak_rss_mb": peak_kb / 1024,
            "rss_from": "GNU time %M" if gnu_time.exists() else "/proc VmHWM polled every 10 ms",
            "stdout": target.read_text().splitlines(), "stderr": errors.read_text()}


def _vm_hwm_kb(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:  # exited between poll() and here
        return 0
    return next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), 0)


def check_run(run: dict, stream: list[tuple[str, str]], scorer: Scorer) -> dict:
    """Assert every output line of ``run`` against the model of the store; return figures."""
    assert run["returncode"] == 0, run["stderr"][-3000:]
    assert "Traceback" not in run["stderr"]
    lines = [line for _, line in stream]
    got = [json.loads(line) for line in run["stdout"]]
    want, stats = expected_output(lines)
    assert len(got) == len(want), (len(got), len(want))
    threshold = scorer.threshold
    for position, (g, w) in enumerate(zip(got, want, strict=True)):
        if "line" in w:
            assert set(g) == {"line", "error"} and g["line"] == w["line"], (position, g, w)
            kind = stream[w["line"] - 1][0]
            assert ERROR_PHRASE[kind] in g["error"], (kind, g)  # says what is wrong
        elif "removed" in w:
            assert g == w, (position, g, w)
        else:
            assert set(g) == {"session", "events", "probability", "decision"}, (position, g)
            assert (g["session"], g["events"]) == (w["session"], w["events"]), (position, g, w)
            assert 0.0 <= g["probability"] <= 1.0 and g["decision"] in (0, 1), (position, g)
            if abs(g["probability"] - threshold) > 1e-6:  # printed rounded to 6 decimals
                assert g["decision"] == int(g["probability"] >= threshold), (position, g)

    kinds = collections.Counter(kind for kind, _ in stream)
    malformed = sum(kinds[k] for k in ERROR_PHRASE)
    scores = sum(1 for g in got if "probability" in g)
    errors = [g["line"] for g in got if "error" in g]
    removed = collections.Counter(g["removed"] for g in got if "removed" in g)
    assert scores == kinds["good"] == stats["pushed"], (scores, kinds["good"])  # no event lost
    assert errors == [n for n, (kind, _) in enumerate(stream, start=1) if kind in ERROR_PHRASE]
    assert len(errors) == malformed == stats["rejected"]
    assert removed["lru"] > 0 and removed["idle"] > 0, removed  # both bounds were exercised
    assert (f"served {stats['pushed']:,} events in {stats['started']:,} sessions; "
            f"{stats['rejected']:,} lines rejected, {stats['lru']:,} sessions evicted (LRU), "
            f"{stats['idle']:,} timed out; {stats['open']:,} still open") in run["stderr"]
    return {"lines_in": len(lines), "good_events": kinds["good"], "score_lines": scores,
            "lost": kinds["good"] - scores, "error_lines": len(errors),
            "malformed": {k: kinds[k] for k in MALFORMED}, "blank_lines": kinds["blank"],
            "removed_lru": removed["lru"], "removed_idle": removed["idle"],
            "sessions_started": stats["started"], "still_open": stats["open"],
            "peak_rss_mb": round(run["peak_rss_mb"], 1), "rss_from": run["rss_from"],
            "seconds": round(run["seconds"], 2)}


def test_serve_scores_100k_events_over_10k_sessions_in_bounded_memory(tiny_artifact, tmp_path,
                                                                      record_property):
    scorer = Scorer.load(tiny_artifact)
    stream = make_stream(100_000, seed=2)
    figures = {}
    # The 20,000-event run is the first fifth of the same stream: the store is full in both.
    for n_events in (20_000, 100_000):
        part = first_events(stream, n_events)
        run = run_serve(tiny_artifact, [line for _, line in part], tmp_path, f"stream{n_events}")
        figures[n_events] = check_run(run, part, scorer)
    record_property("serve_load", json.dumps(figures))
    print("\n" + json.dumps(figures, indent=1))
    small, large = figures[20_000]["peak_rss_mb"], figures[100_000]["peak_rss_mb"]
    assert large < PEAK_RSS_BOUND_MB, figures
    assert large - small < RSS_GROWTH_BOUND_MB, (small, large)


def test_serve_output_matches_the_library(tiny_artifact):
    # The scores serve prints are the live path's: replaying a session's events since it
    # (re)started through Scorer.score_sessions gives the same probability.
    from edge_runtime.serve import serve_lines

    scorer = Scorer.load(tiny_artifact)
    lines = [line for _, line in make_stream(5_000, seed=3)]
    out: list[str] = []
    serve_lines(scorer, lines, out.append, max_sessions=MAX_SESSIONS // 4, idle_timeout=IDLE_TIMEOUT)
    since: dict[str, list[dict]] = collections.defaultdict(list)
    records = [json.loads(x) for x in out]
    position, checked = 0, 0
    for line in lines:
        while "removed" in records[position]:
            since.pop(records[position]["session"], None)
            position += 1
        result = records[position]
        position += 1
        if "error" in result:
            continue
        events = since[result["session"]]
        events.append(json.loads(line))
        assert result["events"] == len(events)
        if checked < 300 and len(events) <= scorer.info.spec.max_len:
            assert abs(result["probability"] - scorer.score_sessions([events])[0]) < 1e-5
            checked += 1
    assert position == len(records)
    assert checked == 300


def test_serve_survives_wrongly_typed_fields(tiny_artifact):
    from edge_runtime.serve import serve_lines

    view = {"ts": 1700000000, "event": "view", "item": "x"}
    lines = [json.dumps({"session": "a", **view, "event": None}),
             json.dumps({"session": "b", **view, "event": [1]}),
             json.dumps({"session": "c", **view, "context": {"prior_sessions": "many"}}),
             json.dumps({"session": "d", **view, "context": {"prior_sessions": None}})]
    out: list[str] = []
    serve_lines(Scorer.load(tiny_artifact), lines, out.append)
    assert [json.loads(x)["line"] for x in out] == [1, 2, 3, 4]
