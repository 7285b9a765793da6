"""Live scoring: one event in, the updated probability out; the store; serve; backends."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from converters.precisions import PRECISIONS
from converters.tflite import artifact_path
from edge_runtime import Scorer, SessionStore
from edge_runtime.errors import ArtifactError, ConfigError
from edge_runtime.serve import serve_lines
from trainer.readers import read_log
from trainer.sessions import sessionize

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def _events(log, sessions, s, limit):
    """Canonical event dicts of session ``s``'s first ``limit`` events, as a device sends them."""
    ev = sessions.order[sessions.offsets[s]:sessions.offsets[s + 1]][:limit]
    return [{"ts": float(log.ts[e]), "event": int(log.event[e]), "item": str(log.item.values()[e]),
             "category": None if log.category is None else str(log.category.values()[e]),
             "price": None if log.price is None else float(log.price[e])} for e in ev]


@pytest.fixture(scope="module")
def taobao_sessions(taobao_path):
    """40 real Taobao sessions of 2 to 20 events, as event dicts with their user history."""
    log = read_log(taobao_path, "taobao")
    sessions = sessionize(log)
    lengths = np.diff(sessions.offsets)
    chosen = [s for s in range(len(sessions)) if 2 <= lengths[s] <= 20][:40]
    return [(_events(log, sessions, s, 20), dict(zip(("prior_sessions", "prior_purchases",
                                                      "open_cart_items"), sessions.context[s], strict=True)))
            for s in chosen]


@pytest.mark.real_data
@pytest.mark.parametrize("graph", ["fused", "unrolled"])
@pytest.mark.parametrize("precision", [p for p in PRECISIONS if p != "16x8"])
def test_pushing_events_gives_the_whole_prefix_score(quantized_run, taobao_sessions, graph, precision):
    run, _ = quantized_run
    scorer = Scorer.load(artifact_path(run, precision, graph))
    worst = 0.0
    for events, context in taobao_sessions:
        live = scorer.start_session(context)
        for t, event in enumerate(events):
            p = live.push(event)
            whole = scorer.score_sessions([events[:t + 1]], contexts=[context])[0]
            worst = max(worst, abs(p - whole))
    assert worst <= PRECISIONS[precision].step_max_abs_diff, worst
    if precision == "float32":
        assert worst <= 1e-5


def test_float32_live_parity_on_synthetic_sessions(tiny_artifact, synthetic_log):
    log = read_log(synthetic_log)
    sessions = sessionize(log)
    scorer = Scorer.load(tiny_artifact)
    for s in range(0, 300, 3):
        events = _events(log, sessions, s, scorer.info.spec.max_len)
        live = scorer.start_session(dict(zip(("prior_sessions", "prior_purchases", "open_cart_items"),
                                             sessions.context[s], strict=True)))
        pushed = [live.push(e) for e in events]
        whole = [scorer.score_sessions([events[:t + 1]], [live.state.context])[0]
                 for t in range(len(events))]
        np.testing.assert_allclose(pushed, whole, atol=1e-5)
        assert live.events == len(events) and live.probability == pushed[-1]


def test_a_bad_event_leaves_the_live_session_as_it_was(tiny_artifact):
    live = Scorer.load(tiny_artifact).start_session()
    p = live.push({"ts": 1.7e9, "event": "view", "item": "a"})
    h = live.h.copy()
    for bad in ({"ts": 1.7e9 + 5, "event": "teleport", "item": "a"}, {"event": "view", "item": "a"},
                {"ts": "soon", "event": "view", "item": "a"},
                {"ts": float("nan"), "event": "view", "item": "a"}):
        with pytest.raises(ConfigError):
            live.push(bad)
    assert live.events == 1 and live.probability == p
    np.testing.assert_array_equal(live.h, h)


def test_score_step_is_the_public_step_a_live_session_takes(tiny_artifact):
    scorer = Scorer.load(tiny_artifact)
    live = scorer.start_session()
    event = {"ts": 1.7e9, "event": "view", "item": "a"}
    x = scorer.encoder.step(scorer.encoder.start(), event)
    p, hc = scorer.score_step(x, np.zeros((2, scorer.step_model().units), np.float32))
    assert p == live.push(event) and np.array_equal(hc, live.hc) and hc.shape == live.hc.shape
    with pytest.raises(ConfigError, match=r"state of shape \(2, 8\), got \(\d+,\) and \(3, 1\)"):
        scorer.score_step(x, np.zeros((3, 1)))


def test_store_evicts_the_least_recently_used_session(tiny_artifact):
    store = SessionStore(Scorer.load(tiny_artifact), max_sessions=3, idle_timeout=None)
    for i, key in enumerate("abc"):
        store.push(key, {"ts": 1.7e9 + i, "event": "view", "item": "x"})
    store.push("a", {"ts": 1.7e9 + 10, "event": "view", "item": "y"})  # a is fresh again
    _, removed = store.push("d", {"ts": 1.7e9 + 11, "event": "view", "item": "z"})
    assert removed == [("b", "lru", 1)]
    assert "b" not in store and len(store) == 3 and store.events_of("a") == 2
    assert (store.stats.evicted_lru, store.stats.started, store.stats.pushed) == (1, 4, 5)


def test_store_times_out_idle_sessions_on_event_time(tiny_artifact):
    store = SessionStore(Scorer.load(tiny_artifact), max_sessions=100, idle_timeout=60)
    store.push("a", {"ts": 1000.0 + 1.7e9, "event": "view", "item": "x"})
    store.push("b", {"ts": 1030.0 + 1.7e9, "event": "view", "item": "x"})
    # The store's clock is the latest time two keys have reached (issue 10): c alone at
    # 1061 does not move it past 1030; d at 1062 moves it to 1061, 61 s after a's event.
    _, removed = store.push("c", {"ts": 1061.0 + 1.7e9, "event": "view", "item": "x"})
    assert removed == [] and store.clock == 1030.0 + 1.7e9
    _, removed = store.push("d", {"ts": 1062.0 + 1.7e9, "event": "view", "item": "x"})
    assert removed == [("a", "idle", 1)]
    assert store.expire(1.7e9 + 2000.0) == [("b", "idle", 1), ("c", "idle", 1), ("d", "idle", 1)]
    assert len(store) == 0 and store.stats.expired_idle == 4
    with pytest.raises(ConfigError, match="max_sessions must be a whole number >= 1, got 0"):
        SessionStore(store.scorer, max_sessions=0)
    with pytest.raises(ConfigError, match="idle_timeout must be a number of seconds > 0"):
        SessionStore(store.scorer, idle_timeout=-1)


def test_store_memory_stays_bounded(tiny_artifact):
    store = SessionStore(Scorer.load(tiny_artifact), max_sessions=50, idle_timeout=None)
    for i in range(2000):
        store.push(f"s{i}", {"ts": 1.7e9 + i, "event": "view", "item": str(i % 13)})
    assert len(store) == 50 and store.stats.evicted_lru == 1950


def test_concurrent_pushes_match_sequential_scores(tiny_artifact):
    scorer = Scorer.load(tiny_artifact)
    streams = {f"k{t}": [{"ts": 1.7e9 + 7 * i, "event": ["view", "cart", "view", "fav"][(i + t) % 4],
                          "item": str((i * (t + 1)) % 5)} for i in range(60)] for t in range(8)}
    expected = {k: [p for p in (lambda live: [live.push(e) for e in evs])(scorer.start_session())]
                for k, evs in streams.items()}
    store = SessionStore(scorer, max_sessions=100, idle_timeout=None)
    got: dict[str, list[float]] = {}

    def worker(key):
        got[key] = [store.push(key, e)[0] for e in streams[key]]

    threads = [threading.Thread(target=worker, args=(k,)) for k in streams]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == expected
    # Whole-session scoring from many threads on one Scorer is serialised by its lock.
    sessions = [streams[k][:10] for k in streams]
    reference = scorer.score_sessions(sessions)
    results = []
    threads = [threading.Thread(target=lambda: results.append(scorer.score_sessions(sessions)))
               for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        np.testing.assert_array_equal(r, reference)


SCRIPTED = [
    '{"session": "a", "ts": 1700000000, "event": "view", "item": "x", "category": "c"}',
    '{"session": "a", "ts": 1700000030, "event": "cart", "item": "x", "category": "c"}',
    'this is not json',
    '[1, 2, 3]',
    '{"ts": 1700000031, "event": "view", "item": "x"}',
    '{"session": "b", "ts": 1700000040, "event": "teleport", "item": "y"}',
    '{"session": "b", "ts": "noon", "event": "view", "item": "y"}',
    '',
    '{"session": 7, "ts": 1700000050, "event": "view", "item": "y", "context": {"prior_sessions": 2}}',
    '{"session": "c", "ts": 1700000060, "event": "view", "item": "y"}',
    '{"session": "a", "ts": 1700009000, "event": "view", "item": "x"}',
    '{"session": "b", "ts": 1700009005, "event": "view", "item": "x"}',
]


def test_serve_scores_every_event_and_names_every_bad_line(tiny_artifact):
    out: list[str] = []
    store = serve_lines(Scorer.load(tiny_artifact), SCRIPTED, out.append, max_sessions=2,
                        idle_timeout=3600)
    records = [json.loads(line) for line in out]
    errors = {r["line"]: r["error"] for r in records if "error" in r}
    assert sorted(errors) == [3, 4, 5, 6, 7, 8]  # the blank line 8 gets its answer too (issue 10)
    assert "not JSON" in errors[3] and "JSON object" in errors[4] and "'session'" in errors[5]
    assert "teleport" in errors[6] and "ts" in errors[7] and errors[8] == "blank line"
    scores = [r for r in records if "probability" in r]
    assert [(r["session"], r["events"]) for r in scores] == [("a", 1), ("a", 2), ("7", 1), ("c", 1),
                                                             ("a", 1), ("b", 1)]
    assert all(0 <= r["probability"] <= 1 and r["decision"] in (0, 1) for r in scores)
    removed = [r for r in records if "removed" in r]
    # "c" starting evicts the least recently used "a". Then comes a 2.5-hour pause: "a" alone
    # after it does not move the store's clock (one key's time never does), so "a" starting
    # afresh evicts the least recently used "7"; "b" after the pause moves the clock, and
    # "c" times out.
    assert removed == [{"session": "a", "removed": "lru", "events": 2},
                       {"session": "7", "removed": "lru", "events": 1},
                       {"session": "c", "removed": "idle", "events": 1}]
    assert store.stats.rejected == 6 and store.stats.pushed == 6


def test_serve_command_streams_stdin(tiny_artifact):
    done = subprocess.run([sys.executable, "-m", "ubp_edge.cli", "serve", "--model", str(tiny_artifact),
                           "--max-sessions", "2"], input="\n".join(SCRIPTED) + "\n",
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(x) for x in done.stdout.splitlines()]
    assert sum("probability" in r for r in lines) == 6 and sum("error" in r for r in lines) == 6
    assert "served 6 events in 5 sessions; 6 lines rejected" in done.stderr


def test_artifact_without_step_graph_says_so(tmp_path, tiny_artifact):
    from artifact_layouts import split_step, version_1

    from converters.metadata_writer import add_metadata, seal
    from edge_runtime.artifact import METADATA_NAME, STEP_SIGNATURE
    from edge_runtime.tflite_reader import read_metadata, signature_keys

    model = tiny_artifact.read_bytes()
    assert STEP_SIGNATURE in signature_keys(model)
    # Without its step signature, an artifact cannot run live, and says how to fix it.
    whole, _ = split_step(model)
    broken = tmp_path / "nostep.tflite"
    broken.write_bytes(seal(add_metadata(whole, {METADATA_NAME: read_metadata(model)[METADATA_NAME]})))
    with pytest.raises(ArtifactError, match="no step graph for live scoring; re-run `ubp-edge convert`"):
        Scorer.load(broken).start_session()
    # Nor can an artifact of version 1 whose step entry is empty bytes.
    empty = tmp_path / "emptystep.tflite"
    empty.write_bytes(version_1(model, b""))
    with pytest.raises(ArtifactError, match="step graph"):
        Scorer.load(empty).start_session()


def test_an_artifact_of_version_1_scores_live_and_whole_as_today(tmp_path, tiny_artifact):
    """Issue 13: artifacts written before the step signature (version 1: the step graph in
    a metadata entry, a fused graph's signature serving_default) load and give the same
    numbers."""
    from artifact_layouts import version_1

    old = tmp_path / "v1.tflite"
    old.write_bytes(version_1(tiny_artifact.read_bytes()))
    then, now = Scorer.load(old), Scorer.load(tiny_artifact)
    assert then.info.version == 1 and now.info.version == 2
    session = [{"ts": 1.7e9 + 30 * i, "event": "view", "item": str(i % 3)} for i in range(7)]
    assert then.score_sessions([session])[0] == now.score_sessions([session])[0]
    live_then, live_now = then.start_session(), now.start_session()
    assert [live_then.push(e) for e in session] == [live_now.push(e) for e in session]


def test_doctor_reports_backends_and_scores_the_artifact(tiny_artifact):
    done = subprocess.run([sys.executable, "-m", "ubp_edge.cli", "doctor", str(tiny_artifact), "--json"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    rows = {r["name"]: r for r in report["backends"]}
    assert rows["ai-edge-litert"]["importable"] and rows["ai-edge-litert"]["loads"]
    assert rows["ai-edge-litert"]["scores"] and rows["ai-edge-litert"]["live"]
    assert report["numpy"] and report["python"]

