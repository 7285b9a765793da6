"""Tests of trainer.sessions: gap/log sessionization, labels and prefixes, user history, split.

Small logs are written as canonical CSVs into tmp_path and read back with `read_log`, so the
real reading path is exercised as well.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.errors import ConfigError
from edge_runtime.events import EVENT_TYPES, PURCHASE
from edge_runtime.features import CONTEXT_FIELDS
from trainer.readers import read_log
from trainer.sessions import Sessions, sessionize, time_split, user_history

T0 = 1_700_000_000  # 2023-11-14, well inside the valid timestamp window
HEADER = "user,ts,event,item,category,price"
MIN = 60


# --------------------------------------------------------------------------- helpers

def write_log(tmp_path: Path, rows, header: str = HEADER, name: str = "log.csv"):
    """Write rows (tuples, in header order) as a canonical CSV and read it back."""
    path = tmp_path / name
    lines = [header] + [",".join("" if v is None else str(v) for v in r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    log = read_log(path, "canonical")
    assert len(log) == len(rows) and log.bad.total == 0
    return log


def ev(user, t, event="view", item="i1", category="c1", price=""):
    """One canonical row: ``t`` seconds after T0."""
    return (user, T0 + t, event, item, category, price)


def sev(session, user, t, event="view", item="i1"):
    """One canonical row with a session id (header SESSION_HEADER)."""
    return (session, user, T0 + t, event, item)


SESSION_HEADER = "session,user,ts,event,item"


def events_of(s: Sessions, k: int, prefix: bool = False) -> list[tuple]:
    """(user, ts offset, event name, item) of session k's events (or its prefix), in order."""
    log = s.log
    ix = s.prefix_events(k) if prefix else s.order[s.offsets[k]:s.offsets[k + 1]]
    return [(log.user.names[log.user.codes[i]], int(log.ts[i] - T0), EVENT_TYPES[log.event[i]],
             log.item.names[log.item.codes[i]]) for i in ix]


def lines_of(s: Sessions, k: int) -> list[int]:
    return [int(s.log.line[i]) for i in s.order[s.offsets[k]:s.offsets[k + 1]]]


def session_with(s: Sessions, user: str, t: int) -> int:
    """Index of the session of ``user`` starting at T0 + t."""
    hits = [k for k in range(len(s)) if s.log.user.names[s.user_code[k]] == user
            and int(s.start[k] - T0) == t]
    assert len(hits) == 1, hits
    return hits[0]


def ctx(s: Sessions, k: int) -> dict:
    return dict(zip(CONTEXT_FIELDS, s.context[k].tolist(), strict=True))


def check_structure(s: Sessions) -> None:
    """Invariants every Sessions must satisfy."""
    n = len(s.log)
    assert sorted(s.order.tolist()) == list(range(n))  # every event exactly once
    assert s.offsets[0] == 0 and s.offsets[-1] == n
    lengths = np.diff(s.offsets)
    assert np.all(lengths >= 1)
    assert len(lengths) == len(s.key) == len(s.start) == len(s.end) == len(s.label)
    assert np.all(np.diff(s.start) >= 0)  # ordered by start time
    assert len(set(s.key.tolist())) == len(s)  # keys unique
    for k in range(len(s)):
        ix = s.order[s.offsets[k]:s.offsets[k + 1]]
        ts = s.log.ts[ix]
        assert np.all(np.diff(ts) >= 0)
        assert s.start[k] == ts[0] and s.end[k] == ts[-1]
        assert np.all(s.log.user.codes[ix] == s.user_code[k]) or s.gap_minutes is None
        buys = np.flatnonzero(s.log.event[ix] == PURCHASE)
        assert s.label[k] == int(len(buys) > 0)
        assert s.prefix_len[k] == (buys[0] if len(buys) else len(ix))


# --------------------------------------------------------------------------- gap rule

def test_gap_exactly_30_minutes_stays_in_session(tmp_path):
    s = sessionize(write_log(tmp_path, [ev("u", 0), ev("u", 30 * MIN), ev("u", 60 * MIN)]))
    assert len(s) == 1
    assert [e[1] for e in events_of(s, 0)] == [0, 30 * MIN, 60 * MIN]
    assert s.gap_minutes == 30.0
    check_structure(s)


def test_gap_30_minutes_plus_one_second_starts_new_session(tmp_path):
    s = sessionize(write_log(tmp_path, [ev("u", 0), ev("u", 30 * MIN + 1)]))
    assert len(s) == 2
    assert [events_of(s, k)[0][1] for k in range(2)] == [0, 30 * MIN + 1]
    check_structure(s)


def test_different_user_always_starts_new_session(tmp_path):
    # Interleaved users one second apart: never merged, each user's events together.
    rows = [ev("a", 0), ev("b", 1), ev("a", 2), ev("b", 3)]
    s = sessionize(write_log(tmp_path, rows))
    assert len(s) == 2
    assert events_of(s, 0) == [("a", 0, "view", "i1"), ("a", 2, "view", "i1")]
    assert events_of(s, 1) == [("b", 1, "view", "i1"), ("b", 3, "view", "i1")]
    check_structure(s)


def test_different_user_same_timestamp_is_separate(tmp_path):
    s = sessionize(write_log(tmp_path, [ev("a", 0), ev("b", 0)]))
    assert len(s) == 2
    assert sorted(s.log.user.names[s.user_code].tolist()) == ["a", "b"]


def test_configurable_gap_5_minutes(tmp_path):
    rows = [ev("u", 0), ev("u", 5 * MIN), ev("u", 10 * MIN + 1), ev("u", 12 * MIN)]
    log = write_log(tmp_path, rows)
    s = sessionize(log, gap_minutes=5)
    assert s.gap_minutes == 5
    assert [[e[1] for e in events_of(s, k)] for k in range(len(s))] == [
        [0, 5 * MIN], [10 * MIN + 1, 12 * MIN]]
    # The default 30 minutes keeps them all together.
    assert len(sessionize(log)) == 1
    check_structure(s)


@pytest.mark.parametrize("gap", [0, 0.0, -5, float("nan")])
def test_non_positive_gap_raises_config_error(tmp_path, gap):
    log = write_log(tmp_path, [ev("u", 0)])
    with pytest.raises(ConfigError, match="gap"):
        sessionize(log, gap_minutes=gap)


def test_gap_key_names_user_and_start(tmp_path):
    s = sessionize(write_log(tmp_path, [ev("u", 0), ev("u", 31 * MIN)]))
    assert s.key.tolist() == [f"u@{T0}", f"u@{T0 + 31 * MIN}"]


# --------------------------------------------------------------------------- log session ids

def test_log_session_ids_are_used_when_present(tmp_path):
    rows = [sev("S1", "u", 0), sev("S1", "u", 120 * MIN), sev("S2", "u", 121 * MIN)]
    log = write_log(tmp_path, rows, header=SESSION_HEADER)
    s = sessionize(log)
    assert s.gap_minutes is None
    assert s.key.tolist() == ["S1", "S2"]
    assert [e[1] for e in events_of(s, 0)] == [0, 120 * MIN]  # 2-hour gap, still one session
    assert [e[1] for e in events_of(s, 1)] == [121 * MIN]
    check_structure(s)


def test_use_log_sessions_false_falls_back_to_gap_rule(tmp_path):
    rows = [sev("S1", "u", 0), sev("S1", "u", 120 * MIN), sev("S1", "u", 121 * MIN)]
    log = write_log(tmp_path, rows, header=SESSION_HEADER)
    s = sessionize(log, use_log_sessions=False)
    assert s.gap_minutes == 30.0
    assert [[e[1] for e in events_of(s, k)] for k in range(len(s))] == [
        [0], [120 * MIN, 121 * MIN]]
    assert s.key.tolist() == [f"u@{T0}", f"u@{T0 + 120 * MIN}"]
    check_structure(s)


def test_log_sessions_of_same_user_interleaved_in_time(tmp_path):
    # Two session ids of one user, interleaved: the ids decide, not the gap.
    rows = [sev("A", "u", 0), sev("B", "u", 10), sev("A", "u", 20), sev("B", "u", 30)]
    s = sessionize(write_log(tmp_path, rows, header=SESSION_HEADER))
    assert s.key.tolist() == ["A", "B"]
    assert [e[1] for e in events_of(s, 0)] == [0, 20]
    assert [e[1] for e in events_of(s, 1)] == [10, 30]


# --------------------------------------------------------------------------- ordering

def test_out_of_order_rows_are_sorted_by_time_within_a_session(tmp_path):
    rows = [ev("u", 50, item="c"), ev("u", 10, item="a"), ev("u", 30, item="b")]
    s = sessionize(write_log(tmp_path, rows))
    assert len(s) == 1
    assert [(e[1], e[3]) for e in events_of(s, 0)] == [(10, "a"), (30, "b"), (50, "c")]
    assert s.start[0] == T0 + 10 and s.end[0] == T0 + 50
    check_structure(s)


def test_out_of_order_rows_with_log_sessions(tmp_path):
    rows = [sev("S", "u", 50, item="c"), sev("S", "u", 10, item="a"), sev("S", "u", 30, item="b")]
    s = sessionize(write_log(tmp_path, rows, header=SESSION_HEADER))
    assert [(e[1], e[3]) for e in events_of(s, 0)] == [(10, "a"), (30, "b"), (50, "c")]


def test_timestamp_ties_keep_file_order(tmp_path):
    rows = [ev("u", 5, item="z"), ev("u", 0, item="first"), ev("u", 5, item="a"),
            ev("u", 5, item="m")]
    s = sessionize(write_log(tmp_path, rows))
    assert [e[3] for e in events_of(s, 0)] == ["first", "z", "a", "m"]
    assert lines_of(s, 0) == [3, 2, 4, 5]  # physical lines: header is line 1


def test_timestamp_ties_keep_file_order_with_log_sessions(tmp_path):
    rows = [sev("S", "u", 5, item="z"), sev("S", "u", 5, item="a"), sev("S", "u", 5, item="m")]
    s = sessionize(write_log(tmp_path, rows, header=SESSION_HEADER))
    assert [e[3] for e in events_of(s, 0)] == ["z", "a", "m"]


def test_sessions_ordered_by_start_time_and_keys_unique(tmp_path):
    rows = [ev("c", 100 * MIN), ev("a", 0), ev("b", 50 * MIN), ev("a", 200 * MIN),
            ev("b", 10 * MIN), ev("c", 5 * MIN), ev("a", 150 * MIN)]
    s = sessionize(write_log(tmp_path, rows))
    starts = [int(x - T0) for x in s.start]
    assert starts == sorted(starts)
    assert starts == [0, 5 * MIN, 10 * MIN, 50 * MIN, 100 * MIN, 150 * MIN, 200 * MIN]
    assert len(set(s.key.tolist())) == len(s) == 7
    check_structure(s)


def test_equal_start_times_are_ordered_by_key(tmp_path):
    s = sessionize(write_log(tmp_path, [ev("b", 0), ev("c", 0), ev("a", 0)]))
    assert s.key.tolist() == [f"a@{T0}", f"b@{T0}", f"c@{T0}"]


def test_session_keys_unique_with_sub_second_timestamps_and_short_gap(tmp_path):
    """BUG (trainer/sessions.py, sessionize): gap-rule keys are f"{user}@{int(start)}", so two
    sessions of one user starting within the same whole second get the same key whenever the
    gap is under a second (any positive gap is accepted)."""
    rows = [("u", f"{T0}.1", "view", "a", "c", ""), ("u", f"{T0}.9", "view", "b", "c", "")]
    s = sessionize(write_log(tmp_path, rows), gap_minutes=0.005)  # 0.3 s
    assert len(s) == 2
    assert len(set(s.key.tolist())) == 2, s.key.tolist()


def test_random_logs_match_reference_sessionization(tmp_path):
    """Gap rule against a plain-Python reference on random multi-user logs."""
    rng = np.random.default_rng(3)
    for trial in range(5):
        n = 120
        users = rng.choice(["a", "b", "c", "d"], n)
        ts = rng.integers(0, 6 * 3600, n)
        ts[rng.random(n) < 0.2] = 600  # plenty of ties
        events = rng.choice(EVENT_TYPES, n, p=[0.7, 0.1, 0.1, 0.1])
        rows = [ev(u, int(t), e, item=f"i{i}") for i, (u, t, e) in
                enumerate(zip(users, ts, events, strict=True))]
        log = write_log(tmp_path, rows, name=f"r{trial}.csv")
        s = sessionize(log, gap_minutes=20)
        check_structure(s)
        # Reference: per user, stable sort by time, cut where the gap exceeds 20 min.
        expected = []
        for u in sorted(set(users)):
            mine = sorted([i for i in range(n) if users[i] == u], key=lambda i: (ts[i], i))
            run = [mine[0]]
            for i in mine[1:]:
                if ts[i] - ts[run[-1]] > 20 * MIN:
                    expected.append(run)
                    run = []
                run.append(i)
            expected.append(run)
        got = [[int(i) for i in s.order[s.offsets[k]:s.offsets[k + 1]]] for k in range(len(s))]
        assert sorted(got) == sorted(expected)


# --------------------------------------------------------------------------- labels, prefixes

def test_session_with_purchase_has_label_1_and_prefix_before_it(tmp_path):
    rows = [ev("u", 0, "view", "a"), ev("u", 10, "cart", "a"), ev("u", 20, "purchase", "a"),
            ev("u", 30, "view", "b")]
    s = sessionize(write_log(tmp_path, rows))
    assert len(s) == 1
    assert s.label.tolist() == [1]
    assert s.prefix_len.tolist() == [2]
    assert [e[2] for e in events_of(s, 0, prefix=True)] == ["view", "cart"]
    assert s.scorable.tolist() == [True]


def test_prefix_ends_at_first_of_two_purchases(tmp_path):
    rows = [ev("u", 0, "view", "a"), ev("u", 10, "purchase", "a"), ev("u", 20, "view", "b"),
            ev("u", 30, "purchase", "b")]
    s = sessionize(write_log(tmp_path, rows))
    assert s.label.tolist() == [1]
    assert s.prefix_len.tolist() == [1]
    assert events_of(s, 0, prefix=True) == [("u", 0, "view", "a")]


def test_first_purchase_found_after_sorting_out_of_order_rows(tmp_path):
    # In file order the later purchase comes first; the prefix is cut at the earliest one.
    rows = [ev("u", 30, "purchase", "b"), ev("u", 0, "view", "a"), ev("u", 10, "view", "a"),
            ev("u", 20, "purchase", "a")]
    s = sessionize(write_log(tmp_path, rows))
    assert s.prefix_len.tolist() == [2]
    assert [e[1] for e in events_of(s, 0, prefix=True)] == [0, 10]


def test_prefix_lengths_for_many_sessions_with_multiple_purchases(tmp_path):
    # Purchases at various positions across several users: first purchase per session.
    rows, expect = [], {}
    for u, pattern in enumerate(["vvpvp", "pvvp", "vvvv", "vpppv", "vvvvvp", "p"]):
        for j, c in enumerate(pattern):
            rows.append(ev(f"u{u}", u * 7 + j, {"v": "view", "p": "purchase"}[c], f"i{j}"))
        expect[f"u{u}"] = (pattern.find("p") if "p" in pattern else len(pattern), int("p" in pattern))
    s = sessionize(write_log(tmp_path, rows))
    got = {s.log.user.names[s.user_code[k]]: (int(s.prefix_len[k]), int(s.label[k]))
           for k in range(len(s))}
    assert got == expect
    check_structure(s)


def test_purchase_as_first_event_gives_empty_prefix_not_scorable(tmp_path):
    rows = [ev("a", 0, "purchase", "x"), ev("a", 10, "view", "y"),
            ev("b", 5, "view", "x"), ev("b", 6, "purchase", "x"),
            ev("c", 7, "view", "x")]
    s = sessionize(write_log(tmp_path, rows))
    k = session_with(s, "a", 0)
    assert s.label[k] == 1 and s.prefix_len[k] == 0 and not s.scorable[k]
    assert len(s.prefix_events(k)) == 0
    assert s.summary() == {"sessions": 3, "sessions_with_purchase": 2,
                           "sessions_excluded_empty_prefix": 1, "sessions_scorable": 2}


def test_session_without_purchase_prefix_is_all_events(tmp_path):
    rows = [ev("u", 0, "view", "a"), ev("u", 10, "cart", "a"), ev("u", 20, "fav", "b")]
    s = sessionize(write_log(tmp_path, rows))
    assert s.label.tolist() == [0]
    assert s.prefix_len.tolist() == [3]
    assert [e[2] for e in events_of(s, 0, prefix=True)] == ["view", "cart", "fav"]
    assert s.summary()["sessions_with_purchase"] == 0


def test_synthetic_log_sessions_invariants(synthetic_log):
    s = sessionize(read_log(synthetic_log, "canonical"))
    assert len(s) > 100
    check_structure(s)
    summary = s.summary()
    assert summary["sessions_scorable"] + summary["sessions_excluded_empty_prefix"] == len(s)
    assert 0 < summary["sessions_with_purchase"] < len(s)


# --------------------------------------------------------------------------- user history

def test_user_history_from_earlier_sessions_only(tmp_path):
    H = 3600
    rows = [
        # u, session 1: carts A, no purchase
        ev("u", 0, "view", "A"), ev("u", 10, "cart", "A"),
        # u, session 2: buys A (and carts B); its own events must not count for itself
        ev("u", 2 * H, "view", "B"), ev("u", 2 * H + 5, "cart", "B"),
        ev("u", 2 * H + 10, "purchase", "A"), ev("u", 2 * H + 20, "purchase", "C"),
        # u, session 3
        ev("u", 4 * H, "view", "D"), ev("u", 4 * H + 5, "purchase", "D"),
        # u, session 4
        ev("u", 6 * H, "view", "E"),
        # another user, interleaved in time, with carts and purchases of the same items
        ev("w", 1 * H, "cart", "A"), ev("w", 1 * H + 1, "purchase", "B"),
        ev("w", 3 * H, "cart", "C"),
    ]
    s = sessionize(write_log(tmp_path, rows))
    assert s.context.shape == (len(s), len(CONTEXT_FIELDS)) == (6, 3)
    assert ctx(s, session_with(s, "u", 0)) == {
        "prior_sessions": 0, "prior_purchases": 0, "open_cart_items": 0}
    assert ctx(s, session_with(s, "u", 2 * H)) == {
        "prior_sessions": 1, "prior_purchases": 0, "open_cart_items": 1}  # A still in cart
    assert ctx(s, session_with(s, "u", 4 * H)) == {
        "prior_sessions": 2, "prior_purchases": 2, "open_cart_items": 1}  # A bought, B open
    assert ctx(s, session_with(s, "u", 6 * H)) == {
        "prior_sessions": 3, "prior_purchases": 3, "open_cart_items": 1}
    # w only sees w's own history; nothing of u leaks, and vice versa.
    assert ctx(s, session_with(s, "w", 1 * H)) == {
        "prior_sessions": 0, "prior_purchases": 0, "open_cart_items": 0}
    assert ctx(s, session_with(s, "w", 3 * H)) == {
        "prior_sessions": 1, "prior_purchases": 1, "open_cart_items": 1}
    # user_history itself agrees with what sessionize stored.
    np.testing.assert_array_equal(user_history(s), s.context)


def test_open_cart_closes_after_later_purchase(tmp_path):
    H = 3600
    rows = [ev("u", 0, "cart", "A"), ev("u", 2 * H, "view", "A"), ev("u", 2 * H + 1, "purchase", "A"),
            ev("u", 4 * H, "view", "Z")]
    s = sessionize(write_log(tmp_path, rows))
    assert [ctx(s, k)["open_cart_items"] for k in range(3)] == [0, 1, 0]
    assert [ctx(s, k)["prior_purchases"] for k in range(3)] == [0, 0, 1]
    assert [ctx(s, k)["prior_sessions"] for k in range(3)] == [0, 1, 2]


def test_open_cart_counts_distinct_items(tmp_path):
    H = 3600
    rows = [ev("u", 0, "cart", "A"), ev("u", 1, "cart", "A"), ev("u", 2, "cart", "B"),
            ev("u", 2 * H, "view", "A")]
    s = sessionize(write_log(tmp_path, rows))
    assert ctx(s, 1)["open_cart_items"] == 2


def test_session_own_events_do_not_count_in_its_context(tmp_path):
    rows = [ev("u", 0, "cart", "A"), ev("u", 1, "purchase", "A"), ev("u", 2, "purchase", "B"),
            ev("u", 3, "cart", "C")]
    s = sessionize(write_log(tmp_path, rows))
    assert len(s) == 1
    assert s.context.tolist() == [[0.0, 0.0, 0.0]]


def test_log_without_user_ids_keeps_zero_context(tmp_path):
    # Canonical file with a session column but no user column: has_user_ids is False.
    rows = [("S1", T0, "cart", "A"), ("S1", T0 + 10, "purchase", "B"),
            ("S2", T0 + 3600, "view", "A"), ("S3", T0 + 7200, "view", "C")]
    log = write_log(tmp_path, rows, header="session,ts,event,item")
    assert not log.has_user_ids
    s = sessionize(log)
    assert len(s) == 3
    assert s.context.shape == (3, len(CONTEXT_FIELDS))
    assert not s.context.any()


def test_log_with_user_ids_and_sessions_uses_history(tmp_path):
    rows = [sev("S1", "u", 0, "cart", "A"), sev("S2", "u", 3600, "view", "B")]
    log = write_log(tmp_path, rows, header=SESSION_HEADER)
    assert log.has_user_ids
    s = sessionize(log)
    assert s.context.tolist() == [[0, 0, 0], [1, 0, 1]]


def test_user_history_ignores_events_after_session_start_in_overlapping_log_sessions(tmp_path):
    """BUG (trainer/sessions.py, user_history): with the log's own session ids, two sessions of
    one user can overlap in time. The context of the later-starting session counts every event
    of the earlier-starting one, including events that happen AFTER the later session started
    (here a purchase 30 min into S2) - future information leaks into S2's features, although
    the Sessions docstring promises "user history before each session's start"."""
    rows = [sev("S1", "u", 0, "view", "A"),
            sev("S2", "u", 10 * MIN, "view", "B"),          # S2 starts while S1 is open
            sev("S1", "u", 40 * MIN, "purchase", "A"),      # after S2 started
            sev("S2", "u", 50 * MIN, "view", "C")]
    s = sessionize(write_log(tmp_path, rows, header=SESSION_HEADER))
    assert s.key.tolist() == ["S1", "S2"]
    # Before S2 started, u had one earlier session and had bought nothing.
    assert ctx(s, 1)["prior_purchases"] == 0, ctx(s, 1)


# --------------------------------------------------------------------------- time split

def many_sessions(tmp_path, n: int, first_purchase_every: int = 0):
    """n sessions of distinct users at distinct, shuffled start times (file order random)."""
    rng = np.random.default_rng(0)
    rows = []
    for k in rng.permutation(n):
        first = "purchase" if first_purchase_every and k % first_purchase_every == 0 else "view"
        rows.append(ev(f"u{k}", int(k) * 100, first, "a"))
        rows.append(ev(f"u{k}", int(k) * 100 + 5, "view", "b"))
        if k % 3 == 0:
            rows.append(ev(f"u{k}", int(k) * 100 + 9, "purchase", "b"))
    return sessionize(write_log(tmp_path, rows))


def test_time_split_partitions_scorable_sessions_in_time_order(tmp_path):
    s = many_sessions(tmp_path, 100)
    assert s.scorable.all()
    sp = time_split(s, validation=0.2, test=0.1)
    parts = [sp.train, sp.validation, sp.test]
    assert [len(p) for p in parts] == [70, 20, 10]
    joined = np.concatenate(parts)
    assert len(set(joined.tolist())) == len(joined) == 100  # disjoint, covers all
    assert set(joined.tolist()) == set(np.flatnonzero(s.scorable).tolist())
    assert s.start[sp.train].max() <= s.start[sp.validation].min()
    assert s.start[sp.validation].max() <= s.start[sp.test].min()
    assert sp.validation_from == s.start[sp.validation].min()
    assert sp.test_from == s.start[sp.test].min()
    m = sp.manifest(s)
    assert [m[p]["sessions"] for p in ("train", "validation", "test")] == [70, 20, 10]
    assert m["train"]["positives"] + m["validation"]["positives"] + m["test"]["positives"] \
        == int(s.label.sum())


def test_time_split_excludes_empty_prefix_sessions(tmp_path):
    s = many_sessions(tmp_path, 60, first_purchase_every=5)
    excluded = set(np.flatnonzero(~s.scorable).tolist())
    assert len(excluded) == 12
    sp = time_split(s)
    joined = np.concatenate([sp.train, sp.validation, sp.test]).tolist()
    assert not excluded & set(joined)
    assert sorted(joined) == sorted(np.flatnonzero(s.scorable).tolist())
    n = 48
    assert len(sp.test) == round(n * 0.15) and len(sp.validation) == round(n * 0.15)


@pytest.mark.parametrize("n,val,test", [(100, 0.15, 0.15), (37, 0.1, 0.3), (20, 0.25, 0.25),
                                        (1000, 0.05, 0.01)])
def test_time_split_sizes_follow_fractions(tmp_path, n, val, test):
    s = many_sessions(tmp_path, n)
    sp = time_split(s, validation=val, test=test)
    assert len(sp.train) + len(sp.validation) + len(sp.test) == n
    assert abs(len(sp.validation) - n * val) <= 0.5
    assert abs(len(sp.test) - n * test) <= 0.5


@pytest.mark.parametrize("val,test", [(0, 0.15), (0.15, 0), (1.0, 0.1), (0.5, 0.5), (0.6, 0.5),
                                      (-0.1, 0.2), (0.2, 1.5), (float("nan"), 0.1)])
def test_time_split_bad_fractions_raise_config_error(tmp_path, val, test):
    s = many_sessions(tmp_path, 30)
    with pytest.raises(ConfigError, match="fractions"):
        time_split(s, validation=val, test=test)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_time_split_too_few_sessions_raises_config_error(tmp_path, n):
    s = many_sessions(tmp_path, n)
    with pytest.raises(ConfigError, match="cannot be split"):
        time_split(s)


def test_time_split_counts_only_scorable_sessions(tmp_path):
    # 10 sessions but 8 have an empty prefix: 2 scorable cannot be split three ways.
    rows = []
    for k in range(10):
        rows.append(ev(f"u{k}", k, "purchase" if k >= 2 else "view", "a"))
    s = sessionize(write_log(tmp_path, rows))
    assert int(s.scorable.sum()) == 2
    with pytest.raises(ConfigError):
        time_split(s, validation=0.3, test=0.3)


# --------------------------------------------------------------------------- real data

@pytest.fixture(scope="module")
def taobao_sessions(taobao_path):
    return sessionize(read_log(taobao_path, "taobao"))


@pytest.mark.real_data
def test_taobao_sessions_invariants(taobao_sessions):
    s = taobao_sessions
    assert s.log.has_user_ids and s.gap_minutes == 30.0
    n = len(s.log)
    assert sorted(s.order.tolist()) == list(range(n))
    assert np.all(np.diff(s.start) >= 0)
    assert len(np.unique(s.key.astype(str))) == len(s)
    lengths = np.diff(s.offsets)
    assert np.all(s.prefix_len <= lengths) and np.all(lengths >= 1)
    # Within a session, no gap exceeds 30 minutes; between one user's sessions, all do.
    t = s.log.ts[s.order]
    u = s.log.user.codes[s.order]
    within = np.ones(n, bool)
    within[s.offsets[:-1]] = False
    gaps = np.r_[0.0, np.diff(t)]
    assert np.all(gaps[within] <= 30 * MIN)
    assert np.all(u[within] == u[np.maximum(np.arange(n) - 1, 0)][within])


@pytest.mark.real_data
def test_taobao_context_first_session_zero(taobao_sessions):
    s = taobao_sessions
    first_of_user = {}
    for k in np.argsort(s.start, kind="stable"):
        first_of_user.setdefault(int(s.user_code[k]), int(k))
    firsts = np.array(sorted(first_of_user.values()))
    assert not s.context[firsts].any()
    # prior_sessions counts earlier sessions of the user.
    counts = {}
    for k in np.argsort(s.start, kind="stable"):
        u = int(s.user_code[k])
        assert s.context[k, 0] == counts.get(u, 0)
        counts[u] = counts.get(u, 0) + 1


@pytest.mark.real_data
def test_taobao_time_split_every_scorable_session_once(taobao_sessions):
    s = taobao_sessions
    sp = time_split(s)
    joined = np.concatenate([sp.train, sp.validation, sp.test])
    assert len(np.unique(joined)) == len(joined)
    assert set(joined.tolist()) == set(np.flatnonzero(s.scorable).tolist())
    assert np.all(s.prefix_len[joined] > 0)
    assert not set(np.flatnonzero(s.prefix_len == 0).tolist()) & set(joined.tolist())
    assert s.start[sp.train].max() <= s.start[sp.validation].min()
    assert s.start[sp.validation].max() <= s.start[sp.test].min()
    n = len(joined)
    assert math.isclose(len(sp.test) / n, 0.15, abs_tol=1 / n)
    assert math.isclose(len(sp.validation) / n, 0.15, abs_tol=1 / n)


def _reference_user_history(sessions: Sessions) -> np.ndarray:
    """The per-session loop user_history was before it was vectorised: the definition."""
    from edge_runtime.events import CART, PURCHASE
    from edge_runtime.features import CONTEXT_FIELDS

    log = sessions.log
    out = np.zeros((len(sessions), len(CONTEXT_FIELDS)), np.float64)
    session_order = np.lexsort((np.arange(len(sessions)), sessions.start, sessions.user_code))
    event_order = np.lexsort((np.arange(len(log)), log.ts, log.user.codes))
    users = log.user.codes[event_order]
    bounds = np.searchsorted(users, sessions.user_code[session_order], side="left")
    ends = np.searchsorted(users, sessions.user_code[session_order], side="right")
    current_user, seen, purchases, open_cart, earlier = -1, 0, 0, set(), 0
    for k, s in enumerate(session_order):
        user = int(sessions.user_code[s])
        if user != current_user:
            current_user, seen, purchases, open_cart, earlier = user, int(bounds[k]), 0, set(), 0
            first_of_user = k
        start = sessions.start[s]
        while seen < ends[k] and log.ts[event_order[seen]] < start:
            e = event_order[seen]
            if log.event[e] == CART:
                open_cart.add(int(log.item.codes[e]))
            elif log.event[e] == PURCHASE:
                purchases += 1
                open_cart.discard(int(log.item.codes[e]))
            seen += 1
        while earlier < k - first_of_user and \
                sessions.start[session_order[first_of_user + earlier]] < start:
            earlier += 1
        out[s] = (earlier, purchases, len(open_cart))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_vectorised_user_history_equals_the_per_session_loop(tmp_path, seed):
    """Random logs with ties in time, overlapping log sessions, carts bought and re-carted."""
    rng = np.random.default_rng(seed)
    n = 400
    with_sessions = seed % 2 == 1
    rows = ["user,session,ts,event,item" if with_sessions else "user,ts,event,item"]
    for _ in range(n):
        user, item = f"u{rng.integers(6)}", f"i{rng.integers(5)}"
        ts = 1_700_000_000 + int(rng.integers(0, 40)) * 600  # many equal times
        event = rng.choice(["view", "cart", "purchase", "fav"], p=[0.5, 0.25, 0.15, 0.1])
        rows.append(f"{user},s{rng.integers(12)},{ts},{event},{item}" if with_sessions
                    else f"{user},{ts},{event},{item}")
    path = tmp_path / "log.csv"
    path.write_text("\n".join(rows) + "\n")
    sessions = sessionize(read_log(path, "canonical"), gap_minutes=15)
    np.testing.assert_array_equal(user_history(sessions), _reference_user_history(sessions))


@pytest.mark.real_data
@pytest.mark.parametrize("path, fmt", [("taobao/UserBehavior_sample.csv", "taobao"),
                                       ("rees46/2019-Oct_head.csv", "rees46")])
def test_vectorised_user_history_equals_the_loop_on_real_logs(path, fmt):
    full = Path(__file__).resolve().parents[2] / "shared" / "data" / path
    if not full.exists():
        pytest.skip(f"{full} absent")
    sessions = sessionize(read_log(full, fmt))
    np.testing.assert_array_equal(sessions.context, _reference_user_history(sessions))
