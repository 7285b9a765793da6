"""The columnar SessionStore (issue 12): rows of columns instead of a LiveSession per key.

Whatever the layout, a store must give what LiveSession objects gave: the same probability
for every event, the same removals in the same order, the same counts and clock. Checked
against `ObjectStore`, the store as it was (a LiveSession per key, an ordered table), on
streams that evict, expire, restart, end sessions, send contexts and bad events; then the
parts one by one: a reused row starts blank, the remembered ids (inline, spilled, capped,
colliding and straddling digests), `end`, a failing step graph, threads, memory; and the
live probe that measures it.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

import edge_runtime.features as features
import edge_runtime.live as live_module
from edge_runtime import Scorer, SessionStore
from edge_runtime.errors import ArtifactError, ConfigError
from edge_runtime.events import canonical_event
from edge_runtime.features import (
    DIGEST_BYTES,
    MAX_REMEMBERED_IDS,
    EncoderState,
    RememberedIds,
    id_digest,
    remembered,
)
from edge_runtime.probes import parse_live_args

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "taobao-lstm128-float32.tflite"
T0 = 1_700_000_000.0


@pytest.fixture(scope="module")
def scorer() -> Scorer:
    return Scorer.load(MODEL)


class ObjectStore:
    """The SessionStore as it was before issue 12 (a LiveSession per key in an OrderedDict,
    least recently used first), reduced to its rules: the reference the columnar store must
    match push for push."""

    def __init__(self, scorer: Scorer, max_sessions: int, idle_timeout: float | None) -> None:
        self.scorer, self.max_sessions, self.idle_timeout = scorer, max_sessions, idle_timeout
        self.sessions: OrderedDict = OrderedDict()  # key -> [LiveSession, last activity]
        self.stats = {"pushed": 0, "started": 0, "evicted_lru": 0, "expired_idle": 0, "rejected": 0}
        self.lead_key, self.lead_ts, self.second_ts, self.clock = None, -math.inf, -math.inf, -math.inf

    def push(self, key: str, event: dict, context: dict | None = None):
        try:
            checked = canonical_event(event)
        except ConfigError:
            self.stats["rejected"] += 1
            raise
        now, timeout, sessions = checked.ts, self.idle_timeout, self.sessions
        entry = sessions.get(key)
        restarted = entry is not None and timeout is not None and now - entry[0].state.last_ts > timeout
        if entry is None or restarted:
            try:
                live = self.scorer.start_session(context)
            except ConfigError:
                self.stats["rejected"] += 1
                raise
        else:
            live = entry[0]
        p = live.push_event(checked)
        removed = []
        if restarted:
            del sessions[key]
            self.stats["expired_idle"] += 1
            removed.append((key, "idle", entry[0].events))
        if key != self.lead_key:
            self._advance(key, now)
        elif now > self.lead_ts:
            self.lead_ts = now
        if timeout is not None:
            self._expire(removed)
        if key not in sessions:
            self.stats["started"] += 1
            while len(sessions) >= self.max_sessions:
                old_key, (old, _) = sessions.popitem(last=False)
                self.stats["evicted_lru"] += 1
                removed.append((old_key, "lru", old.events))
        sessions[key] = [live, min(now, self.clock)]
        sessions.move_to_end(key)
        self.stats["pushed"] += 1
        return p, removed

    def expire(self, now: float):
        self._set_clock(now)
        removed = []
        if self.idle_timeout is not None:
            self._expire(removed)
        return removed

    def end(self, key: str):
        entry = self.sessions.pop(key, None)
        return entry[0] if entry else None

    def _advance(self, key, ts):
        if ts > self.lead_ts:
            overtaken = self.lead_key
            self.second_ts, self.lead_key, self.lead_ts = self.lead_ts, key, ts
            self._set_clock(self.second_ts)
            if overtaken in self.sessions:
                entry = self.sessions[overtaken]
                entry[1] = min(entry[0].state.last_ts, self.clock)
        elif ts > self.second_ts:
            self.second_ts = ts
            self._set_clock(ts)

    def _set_clock(self, now):
        if now <= self.clock:
            return
        if self.clock == -math.inf:
            for entry in self.sessions.values():
                entry[1] = min(entry[0].state.last_ts, now)
        self.clock = now

    def _expire(self, removed):
        while self.sessions:
            key, (live, seen) = next(iter(self.sessions.items()))
            if not self.clock - seen > self.idle_timeout:
                break
            del self.sessions[key]
            self.stats["expired_idle"] += 1
            removed.append((key, "idle", live.events))


def assert_same_session(got, want) -> None:
    """Two LiveSessions hold the same session: counters, digests, state, probability."""
    assert (got.events, got.probability) == (want.events, want.probability)
    g, w = got.state, want.state
    assert (g.n, g.first_ts, g.last_ts, g.carts) == (w.n, w.first_ts, w.last_ts, w.carts)
    assert (bytes(g.items), bytes(g.categories)) == (bytes(w.items), bytes(w.categories))
    assert np.array_equal(g.context, w.context) and tuple(g.context_logs) == tuple(w.context_logs)
    assert np.array_equal(got.hc, want.hc)


def hostile_stream(seed: int, n: int):
    """Seeded pushes, expiries and ends over a few keys: clocks that jump ahead and back,
    sessions that idle past the timeout, bad events and contexts, repeated items."""
    r = random.Random(seed)
    keys = [f"k{i}" for i in range(r.choice([2, 4, 9, 30]))]
    t = T0
    for _ in range(n):
        t += r.choice([0, 1, 5, 20, 60, 400, -50])
        key = r.choice(keys)
        roll = r.random()
        if roll < 0.03:
            yield "expire", key, t + r.choice([0, 100, 1000]), None
        elif roll < 0.05:
            yield "end", key, None, None
        else:
            ts = t + (r.choice([1e6, -1e4]) if r.random() < 0.05 else 0)  # a device's own clock
            kind = "teleport" if r.random() < 0.02 else r.choice(["view", "view", "cart", "fav", "purchase"])
            event = {"ts": ts, "event": kind, "item": str(r.randrange(6)), "price": r.choice([None, 3.5]),
                     "category": r.choice([None, "a", "b", str(r.randrange(4))])}
            context = r.choice([None, None, {"prior_sessions": r.randrange(3)}, {"prior_sessions": "bad"}])
            yield "push", key, event, context


@pytest.mark.parametrize("seed", range(6))
def test_the_store_gives_what_live_session_objects_gave(scorer, seed):
    r = random.Random(seed)
    max_sessions, timeout = r.choice([1, 2, 3, 20]), r.choice([None, 30.0, 300.0])
    store, reference = SessionStore(scorer, max_sessions, timeout), ObjectStore(scorer, max_sessions, timeout)
    kinds = set()
    for action, key, value, context in hostile_stream(seed, 400):
        if action == "expire":
            assert store.expire(value) == reference.expire(value)
        elif action == "end":
            got, want = store.end(key), reference.end(key)
            assert (got is None) == (want is None)
            if got is not None:
                assert_same_session(got, want)
        else:
            outcome = []
            for s in (store, reference):
                try:
                    outcome.append(s.push(key, value, context))
                except ConfigError as e:
                    outcome.append(str(e))
            assert outcome[0] == outcome[1], (action, key, value, outcome)
            if isinstance(outcome[0], tuple):
                kinds.update(why for _, why, _ in outcome[0][1])
        assert vars(store.stats) == reference.stats
        assert len(store) == len(reference.sessions) and store.clock == (
            None if reference.clock == -math.inf else reference.clock)
        for k in reference.sessions:
            assert store.events_of(k) == reference.sessions[k][0].events
    if timeout is not None and max_sessions < 20:
        assert kinds == {"lru", "idle"}  # the stream exercised both removals


def test_a_session_its_own_push_finds_expired_is_reported_and_carries_on(scorer):
    # a's device clock is far behind its peers': its activity (T0 + 10) is stale by the clock
    # (T0 + 200) but was kept while c, fresh, stood before it in the LRU order. Once c has
    # moved on, a's next event, 0 s after its last, finds a idle by the clock: it is reported
    # so, with this event counted, and carries on (as LiveSession objects did).
    store, reference = SessionStore(scorer, 10, 60.0), ObjectStore(scorer, 10, 60.0)
    script = [("c", 150), ("a", 10), ("b", 200), ("c", 200), ("a", 10)]
    for key, ts in script:
        got = store.push(key, {"ts": T0 + ts, "event": "view", "item": key})
        assert got == reference.push(key, {"ts": T0 + ts, "event": "view", "item": key})
    assert got[1] == [("a", "idle", 2)] and store.events_of("a") == 2 and len(store) == 3
    assert vars(store.stats) == reference.stats and store.stats.started == 4


def test_a_reused_row_starts_blank(scorer):
    store = SessionStore(scorer, max_sessions=1, idle_timeout=None)
    for i, item in enumerate(["x", "y", "x", "z", "w", "v"]):  # past the inline slots, a cart
        store.push("a", {"ts": T0 + i, "event": "cart" if i == 2 else "view", "item": item,
                         "category": "c"}, context={"prior_sessions": 4})
    event = {"ts": T0 + 99, "event": "view", "item": "x", "category": "c"}
    p, removed = store.push("b", event)  # evicts "a" and takes its row
    assert removed == [("a", "lru", 6)]
    fresh = scorer.start_session()
    assert p == fresh.push(event)  # x and c read as new, no carts, no context, zero h and c
    assert_same_session(store.end("b"), fresh)


def test_rows_grow_block_by_block_and_are_reused_after_expiry(scorer, monkeypatch):
    monkeypatch.setattr(live_module, "ROWS_PER_BLOCK", 3)
    store = SessionStore(scorer, max_sessions=10, idle_timeout=60)
    lives = {}
    for i in range(10):  # four blocks of three rows
        key = f"s{i}"
        event = {"ts": T0 + i, "event": "view", "item": str(i % 4)}
        lives[key] = scorer.start_session()
        assert store.push(key, event)[0] == lives[key].push(event)
    assert len(store._hc) == 4
    store.expire(T0 + 1000)
    assert len(store) == 0
    for i in range(10):  # the same rows again, each blank
        event = {"ts": T0 + 1000 + i, "event": "cart", "item": str(i % 3)}
        assert store.push(f"t{i}", event)[0] == scorer.start_session().push(event)
    assert len(store._hc) == 4 and len(store._n) == 10


def test_ids_past_the_inline_slots_and_the_cap_are_remembered_as_a_live_session_does(scorer):
    store = SessionStore(scorer, max_sessions=2, idle_timeout=None)
    live = scorer.start_session()
    n = MAX_REMEMBERED_IDS + 150
    # New ids, with repeats of ids first seen early (remembered) and late (past the cap: new).
    order = [f"i{k}" for k in range(n)] + [f"i{k}" for k in (0, 1, 3, 700, MAX_REMEMBERED_IDS - 1,
                                                              MAX_REMEMBERED_IDS, n - 1)]
    for position, item in enumerate(order):
        event = {"ts": T0 + position, "event": "view", "item": item, "category": f"c{position % 1500}"}
        assert store.push("s", event)[0] == live.push(event), position
    assert store._items.count(0) == MAX_REMEMBERED_IDS
    assert_same_session(store.end("s"), live)


def crafted_digests(monkeypatch, table: dict[str, bytes]) -> None:
    """Make `id_digest` give ``table``'s digests (to both the encoder and the store)."""
    def digest(text: str) -> bytes:
        return table[text] if text in table else id_digest(text)

    monkeypatch.setattr(features, "id_digest", digest)
    monkeypatch.setattr(live_module, "id_digest", digest)


@pytest.mark.parametrize("padding", [0, 5])  # in the inline slots; in a row's own bytearray
def test_colliding_and_straddling_digests_read_as_they_always_did(scorer, monkeypatch, padding):
    a, b = bytes([1] * 4 + [2] * 4), bytes([3] * 4 + [1] * 4)
    straddle = bytes([2] * 4 + [3] * 4)  # the end of a then the start of b: not an id seen
    crafted_digests(monkeypatch, {"a": a, "b": b, "s": straddle, "a-twin": a})
    items = [f"p{k}" for k in range(padding)] + ["a", "b", "s", "a-twin", "s", "b"]
    store, live = SessionStore(scorer, max_sessions=1, idle_timeout=None), scorer.start_session()
    for position, item in enumerate(items):
        event = {"ts": T0 + position, "event": "view", "item": item}
        assert store.push("k", event)[0] == live.push(event)
    state = store.end("k").state
    assert bytes(state.items) == bytes(live.state.items)
    # s is new the first time (no straddling match) and a repeat the second; a's twin reads
    # as a (equal digests are one id), so it is not remembered twice.
    assert bytes(state.items)[padding * DIGEST_BYTES:] == a + b + straddle


def test_remembered_ids_agree_with_encoder_states_row_by_row():
    rng = random.Random(7)
    alphabet = [bytes(rng.randrange(3) for _ in range(DIGEST_BYTES)) for _ in range(40)]
    ids, states = RememberedIds(inline=4), [bytearray() for _ in range(5)]
    for _ in range(5):
        ids.add_row()
    for _ in range(3000):
        row, digest = rng.randrange(5), rng.choice(alphabet)
        if rng.random() < 0.01:  # a session ends; its row is reused
            ids.clear(row)
            states[row] = bytearray()
            continue
        seen = remembered(states[row], digest)
        assert ids.seen(row, digest) == seen
        if not seen:
            ids.remember(row, digest)
            if len(states[row]) < MAX_REMEMBERED_IDS * DIGEST_BYTES:
                states[row] += digest
        assert ids.packed(row) == states[row] and ids.count(row) * DIGEST_BYTES == len(states[row])


def test_end_hands_back_a_live_session_that_carries_on(scorer):
    store = SessionStore(scorer, max_sessions=5, idle_timeout=None)
    live = scorer.start_session({"prior_sessions": 2, "prior_purchases": 1})
    events = [{"ts": T0 + 30 * i, "event": ["view", "cart", "fav"][i % 3], "item": str(i % 4),
               "category": "c", "price": 5.0} for i in range(12)]
    for event in events[:6]:
        store.push("s", event, context={"prior_sessions": 2, "prior_purchases": 1})
        live.push(event)
    ended = store.end("s")
    assert "s" not in store and store.end("s") is None
    assert_same_session(ended, live)
    assert [ended.push(e) for e in events[6:]] == [live.push(e) for e in events[6:]]


def test_a_failing_step_graph_changes_nothing(scorer, monkeypatch):
    store = SessionStore(scorer, max_sessions=2, idle_timeout=60)
    reference = ObjectStore(scorer, 2, 60)
    for key, ts in (("a", T0), ("b", T0 + 1)):
        event = {"ts": ts, "event": "view", "item": "x"}
        store.push(key, event)
        reference.push(key, event)
    before = (len(store), store.clock, vars(store.stats).copy(), store.events_of("a"), store.events_of("b"))

    def broken(self, x, h, c):
        raise ArtifactError("step graph failed to run: broken")

    late = {"ts": T0 + 500, "event": "cart", "item": "y"}  # would expire a and b, evict for c
    with monkeypatch.context() as m:
        m.setattr(live_module.StepModel, "__call__", broken)
        for key in ("a", "c"):
            with pytest.raises(ArtifactError, match="broken"):
                store.push(key, late)
    assert (len(store), store.clock, vars(store.stats), store.events_of("a"),
            store.events_of("b")) == before
    assert store.push("a", late) == reference.push("a", late)


def test_a_failing_step_graph_leaves_a_live_session_as_it_was(scorer, monkeypatch):
    live, reference = scorer.start_session(), scorer.start_session()
    first = {"ts": T0, "event": "view", "item": "a", "category": "c"}
    live.push(first)
    reference.push(first)

    def broken(self, x, h, c):
        raise ArtifactError("step graph failed to run: broken")

    event = {"ts": T0 + 5, "event": "cart", "item": "b", "category": "d"}
    with monkeypatch.context() as m:
        m.setattr(live_module.StepModel, "__call__", broken)
        with pytest.raises(ArtifactError, match="broken"):
            live.push(event)
    assert_same_session(live, reference)
    assert live.push(event) == reference.push(event)


def test_live_sessions_and_a_store_share_one_step_graph_across_threads(scorer):
    events = [{"ts": T0 + 7 * i, "event": ["view", "cart", "view"][i % 3], "item": str(i % 5)}
              for i in range(80)]
    reference = scorer.start_session()
    expected = [reference.push(e) for e in events]
    store = SessionStore(scorer, max_sessions=100, idle_timeout=None)
    got: dict[str, list[float]] = {}

    def in_store(key: str) -> None:
        got[key] = [store.push(key, e)[0] for e in events]

    def alone(key: str) -> None:
        live = scorer.start_session()
        got[key] = [live.push(e) for e in events]

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        workers = [threading.Thread(target=f, args=(f"{f.__name__}{i}",)) for i in range(4)
                   for f in (in_store, alone)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    finally:
        sys.setswitchinterval(old)
    assert len(got) == 8 and all(v == expected for v in got.values())


def test_a_session_takes_about_its_lstm_state_in_memory():
    """4,000 sessions in a fresh process: a session's RSS is its h and c (1 KB at 128 units)
    and a few hundred bytes more (a LiveSession per key took about 1.6 KB)."""
    script = (
        "import sys\n"
        "from edge_runtime import SessionStore, Scorer\n"
        "from edge_runtime.probes import rss_mb\n"
        "store = SessionStore(Scorer.load(sys.argv[1]), max_sessions=4000, idle_timeout=None)\n"
        "keys = [f'kiosk-{i}' for i in range(4000)]\n"
        "store.push('warm', {'ts': 1.7e9, 'event': 'view', 'item': 'w'}); store.end('warm')\n"
        "base = rss_mb()\n"
        "for i, key in enumerate(keys):\n"
        "    for j in range(3):\n"
        "        store.push(key, {'ts': 1.7e9 + i + j, 'event': 'view', 'item': str((i * 7 + j) % 5000),\n"
        "                         'category': str(i % 100), 'price': 9.9})\n"
        "print((rss_mb() - base) * 1024 / len(keys), store._step.units)\n")
    done = subprocess.run([sys.executable, "-c", script, str(MODEL)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    kb, units = done.stdout.split()
    state_kb = 2 * int(units) * 4 / 1024
    assert state_kb <= float(kb) < state_kb + 0.5, (kb, state_kb)


def test_encoder_state_is_unchanged_for_single_sessions(scorer):
    # Scorer.start_session still hands out a LiveSession over an EncoderState (README API).
    live = scorer.start_session({"prior_sessions": 1})
    assert isinstance(live.state, EncoderState) and live.state.context_logs == (math.log(2.0), 0.0, 0.0)
    live.push({"ts": T0, "event": "view", "item": "a", "category": "c"})
    assert bytes(live.state.items) == id_digest("a") and bytes(live.state.categories) == id_digest("c")


def test_the_live_probe_weighs_the_store_not_itself():
    """`python -m edge_runtime.probes live` reports the push and the bare step graph, and its
    own machinery (argparse, numpy.random) is not in the process it measures."""
    code = ("import json, sys\n"
            "from edge_runtime.probes import main\n"
            "main(['live', sys.argv[1], '--sessions', '30', '--clicks', '50'])\n"
            "print(json.dumps(sorted({'argparse', 'numpy.random'} & set(sys.modules))))\n")
    done = subprocess.run([sys.executable, "-c", code, str(MODEL)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    figures, modules = (json.loads(line) for line in done.stdout.splitlines())
    assert figures["live_sessions"] == 30 and figures["clicks"] == 50
    assert figures["event"]["p50_us"] > 0 and figures["step"]["p50_us"] > 0
    assert figures["event_over_step"] == figures["event"]["p50_us"] / figures["step"]["p50_us"]
    assert figures["rss_loaded_mb"] <= figures["rss_open_mb"] <= figures["rss_peak_mb"]
    assert "argparse" not in modules and "numpy.random" not in modules


@pytest.mark.parametrize("argv,message", [
    (["live"], "expected the probe 'live' and an artifact"),
    (["cold", "m.tflite"], "expected the probe 'live'"),
    (["live", "m.tflite", "--sessions"], "no value after it"),
    (["live", "m.tflite", "--threads", "2", "--threads", "3"], "repeated '--threads'"),
    (["live", "m.tflite", "--clicks", "many"], "--clicks needs a whole number, got 'many'"),
])
def test_the_live_probe_refuses_arguments_it_does_not_read(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse_live_args(argv)
    assert parse_live_args(["live", "m.tflite", "--clicks", "7", "--threads", "2"]) == {
        "path": "m.tflite", "clicks": 7, "threads": 2}
