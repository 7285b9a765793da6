"""Live triggers (issue 15, item 3): a line when a session climbs into a watched intent tier.

The rule on its own (edge_runtime.tiers.TriggerRule: hysteresis, several tiers at once, what
it refuses); the SessionStore's per-session trigger mask (fires on the first crossing only,
starts armed for every new session: a reused row, a restart after an idle gap, an ended
session); `serve_lines` and `ubp-edge serve --triggers` end to end; and the replay the issue
asks for: real Taobao sessions pushed event by event fire exactly the triggers their
whole-prefix scores say they should.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edge_runtime import Scorer, SessionStore
from edge_runtime.errors import ConfigError
from edge_runtime.features import CONTEXT_FIELDS
from edge_runtime.serve import serve_lines
from edge_runtime.tiers import DEFAULT_HYSTERESIS, IntentTiers, TriggerRule
from trainer.logsource import EventLogSource
from trainer.scoring import scorable_sessions
from ubp_edge.cli import app

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "taobao-lstm128-float32.tflite"
T0 = 1_700_000_000.0
NAMES = ("browsing", "considering", "likely")
TIERS = IntentTiers(NAMES, (0.1, 0.2))
# Scores this close to a cut-off or a re-arm level may fall on either side of it live and
# whole: the two graphs' float32 sums differ by about 1e-7.
NEAR = 1e-5


@pytest.fixture(scope="module")
def scorer() -> Scorer:
    return Scorer.load(MODEL)


def expected_triggers(scores, tiers: IntentTiers, watched: tuple[int, ...], hysteresis: float
                      ) -> list[tuple[int, str]]:
    """The triggers a session with these successive scores fires, as (event number, tier):
    the rule as the issue states it, written out apart from TriggerRule."""
    armed = dict.fromkeys(watched, True)
    fired = []
    for t, p in enumerate(scores, start=1):
        for i in watched:  # lowest first
            low = tiers.cuts[i - 1]
            if armed[i] and p >= low:
                armed[i] = False
                fired.append((t, tiers.names[i]))
            elif not armed[i] and p < low * (1 - hysteresis):
                armed[i] = True
    return fired


def run_rule(rule: TriggerRule, scores) -> list[list[str]]:
    """The names fired after each score of one session, its mask starting at 0."""
    mask, out = 0, []
    for p in scores:
        mask, names = rule.update(mask, p)
        out.append(names)
    return out


# =========================================================================== the rule
def test_a_score_hovering_at_the_cut_fires_once_and_fires_again_after_falling_past_the_hysteresis():
    rule = TriggerRule.for_names(TIERS, ["likely"])  # cut 0.2, re-armed below 0.18
    scores = [0.19, 0.2, 0.199, 0.2, 0.181, 0.25, 0.179, 0.19, 0.2, 0.21]
    assert run_rule(rule, scores) == [[], ["likely"], [], [], [], [], [], [], ["likely"], []]
    fired = [(t, name) for t, names in enumerate(run_rule(rule, scores), start=1) for name in names]
    assert fired == expected_triggers(scores, TIERS, (2,), DEFAULT_HYSTERESIS)


def test_without_hysteresis_any_fall_below_the_cut_rearms():
    rule = TriggerRule.for_names(TIERS, ["likely"], hysteresis=0.0)
    assert run_rule(rule, [0.2, 0.1999, 0.2, 0.2]) == [["likely"], [], ["likely"], []]


def test_jumping_two_watched_tiers_fires_both_lowest_first():
    rule = TriggerRule.for_names(TIERS, ["likely", "considering"])  # named in any order
    assert rule.watched == (1, 2)
    # Falling to 0.15 re-arms likely (below 0.18), not considering (not below 0.09).
    assert run_rule(rule, [0.05, 0.25, 0.15, 0.3, 0.05, 0.5]) == [
        [], ["considering", "likely"], [], ["likely"], [], ["considering", "likely"]]


def test_a_first_score_in_a_watched_tier_fires_and_unwatched_tiers_never_do():
    rule = TriggerRule.for_names(TIERS, ["likely"])
    assert run_rule(rule, [0.15, 0.3]) == [[], ["likely"]]
    assert run_rule(rule, [0.3]) == [["likely"]]
    assert run_rule(TriggerRule.for_names(TIERS, ["considering"]), [0.3, 0.15]) == [["considering"], []]


@pytest.mark.parametrize("names,message", [
    (["browsing"], "'browsing' is the lowest"),
    (["considering", "browsing"], "'browsing' is the lowest"),
    (["hot"], "no tier 'hot'; the tiers are browsing, considering, likely"),
    ([], "name at least one tier"),
])
def test_the_rule_refuses_the_lowest_and_unknown_tiers(names, message):
    with pytest.raises(ConfigError, match=message):
        TriggerRule.for_names(TIERS, names)


@pytest.mark.parametrize("hysteresis", [-0.1, 1.0, float("nan")])
def test_the_rule_refuses_a_hysteresis_outside_0_1(hysteresis):
    with pytest.raises(ConfigError, match="hysteresis must be a fraction"):
        TriggerRule.for_names(TIERS, ["likely"], hysteresis=hysteresis)


# =========================================================================== the store
VIEWS = ["view"] * 6


def view(i: int, t0: float = T0) -> dict:
    return {"ts": t0 + 30 * i, "event": "view", "item": str(i % 3), "category": "c"}


def climb(scorer: Scorer) -> tuple[list[float], TriggerRule]:
    """The scores of six views in a fresh session (they rise: asserted) and a rule whose
    cut-off lies halfway between the second and the third. Its hysteresis is so wide that
    no score re-arms a fired trigger: only a session starting anew does."""
    probe = SessionStore(scorer, idle_timeout=None)
    scores = [probe.push("probe", view(i))[0] for i in range(len(VIEWS))]
    assert all(b > a for a, b in zip(scores, scores[1:], strict=False)), scores
    cut = (scores[1] + scores[2]) / 2
    tiers = IntentTiers(("low", "high"), (cut,))
    rule = TriggerRule.for_names(tiers, ["high"], hysteresis=0.9)
    assert min(scores) > cut * (1 - rule.hysteresis), (scores, cut)
    return scores, rule


def fired_at(store: SessionStore, key: str, events, t0: float = T0) -> list[tuple[int, list[str]]]:
    """(event number in the store, names fired) of the events that fire."""
    out = []
    for i in events:
        _, _, fired = store.push_with_triggers(key, view(i, t0))
        if fired:
            out.append((store.events_of(key), fired))
    return out


def test_a_store_fires_on_the_first_crossing_only(scorer):
    scores, rule = climb(scorer)
    store = SessionStore(scorer, idle_timeout=None, triggers=rule)
    assert fired_at(store, "a", range(6)) == [(3, ["high"])]
    assert store.triggers_fired == 1
    # The same probabilities as a store without triggers, and `push` says nothing of them.
    again = SessionStore(scorer, idle_timeout=None, triggers=rule)
    assert [again.push("a", view(i))[0] for i in range(6)] == scores


def test_push_leaves_the_triggers_armed_for_push_with_triggers(scorer):
    _, rule = climb(scorer)
    store = SessionStore(scorer, idle_timeout=None, triggers=rule)
    for i in range(3):  # the crossing happens inside `push`, which neither fires nor disarms
        store.push("a", view(i))
    assert store.triggers_fired == 0
    assert fired_at(store, "a", range(3, 6)) == [(4, ["high"])]  # the next push that watches
    assert store.triggers_fired == 1


@pytest.mark.parametrize("watched,hysteresis,message", [
    ((0,), 0.1, "watched tiers must be increasing indices in 1..2"),
    ((3,), 0.1, "watched tiers must be increasing indices in 1..2"),
    ((2, 1), 0.1, "watched tiers must be increasing indices"),
    ((), 0.1, "watched tiers must be increasing indices"),
    ((1,), 1.0, "hysteresis must be a fraction in [0, 1)"),
    ((1,), float("nan"), "hysteresis must be a fraction in [0, 1)"),
])
def test_a_rule_built_directly_is_checked_as_for_names_checks_it(watched, hysteresis, message):
    tiers = IntentTiers(("browsing", "considering", "likely"), (0.1, 0.2))
    with pytest.raises(ConfigError, match=re.escape(message)):
        TriggerRule(tiers, watched, hysteresis)


def test_a_store_without_triggers_fires_none(scorer):
    store = SessionStore(scorer, idle_timeout=None)
    assert all(store.push_with_triggers("a", view(i))[2] == [] for i in range(6))
    assert store.triggers_fired == 0


def test_a_session_on_a_reused_row_starts_with_every_trigger_armed(scorer):
    _, rule = climb(scorer)
    store = SessionStore(scorer, max_sessions=1, idle_timeout=None, triggers=rule)
    assert fired_at(store, "a", range(6)) == [(3, ["high"])]
    _, removed, fired = store.push_with_triggers("b", view(0, T0 + 1000))  # evicts a, takes its row
    assert removed == [("a", "lru", 6)] and fired == []
    assert fired_at(store, "b", range(1, 6), T0 + 1000) == [(3, ["high"])]
    store.end("b")
    assert fired_at(store, "b", range(6), T0 + 2000) == [(3, ["high"])]  # ended, then anew


def test_a_session_restarted_after_an_idle_gap_starts_with_every_trigger_armed(scorer):
    _, rule = climb(scorer)
    store = SessionStore(scorer, idle_timeout=600, triggers=rule)
    assert fired_at(store, "a", range(6)) == [(3, ["high"])]
    _, removed, fired = store.push_with_triggers("a", view(0, T0 + 5000))
    assert removed == [("a", "idle", 6)] and fired == [] and store.events_of("a") == 1
    assert fired_at(store, "a", range(1, 6), T0 + 5000) == [(3, ["high"])]
    assert store.triggers_fired == 2


def test_a_session_its_own_push_finds_expired_carries_on_with_its_triggers(scorer):
    # As in test_live_store: a's event finds it idle by the store's clock; it is reported
    # so and carries on, events and LSTM state and fired triggers alike.
    scores, _ = climb(scorer)
    rule = TriggerRule.for_names(IntentTiers(("low", "high"), (scores[0] / 2,)), ["high"])
    store = SessionStore(scorer, 10, 60.0, triggers=rule)
    got = [store.push_with_triggers(key, {"ts": T0 + ts, "event": "view", "item": key})
           for key, ts in [("c", 150), ("a", 10), ("b", 200), ("c", 200), ("a", 10)]]
    assert [fired for _, _, fired in got] == [["high"], ["high"], ["high"], [], []]
    assert got[-1][1] == [("a", "idle", 2)] and store.events_of("a") == 2


# =========================================================================== serve
def stream(seed: int, n_sessions: int = 12) -> list[str]:
    """Interleaved event lines of a few sessions, each in its own time order."""
    r = random.Random(seed)
    pending = {f"s{k}": [] for k in range(n_sessions)}
    for key, events in pending.items():
        t = T0 + r.randrange(600)
        for _ in range(r.randrange(3, 12)):
            t += r.choice([5, 20, 60])
            kind = r.choice(["view", "view", "view", "cart", "fav"])
            events.append({"session": key, "ts": t, "event": kind, "item": str(r.randrange(5)),
                           "category": r.choice(["a", "b"])})
    lines = []
    while pending:
        key = r.choice(sorted(pending))
        lines.append(json.dumps(pending[key].pop(0)))
        if not pending[key]:
            del pending[key]
    return lines


def cuts_between(probabilities, quantiles=(0.35, 0.75)) -> tuple[float, ...]:
    """Cut-offs halfway between two neighbouring distinct scores near each quantile, so no
    score (printed to 6 decimals) lies within NEAR of one."""
    u = np.unique(np.asarray(probabilities, np.float64))
    gaps = np.flatnonzero(np.diff(u) > 4 * NEAR)
    assert len(gaps) >= len(quantiles), u
    cuts = []
    for q in quantiles:
        k = gaps[np.argmin(np.abs(gaps - q * len(u)))]
        cuts.append(round(float(u[k] + u[k + 1]) / 2, 7))
    assert cuts == sorted(set(cuts)), cuts
    return tuple(cuts)


def triggers_of(records: list[dict]) -> dict[str, list[tuple[int, str]]]:
    """(events, tier) of each session's trigger lines, checking each comes right after its
    event's score line (or another trigger of the same event) with its probability."""
    out: dict[str, list[tuple[int, str]]] = defaultdict(list)
    score = None
    for r in records:
        if "trigger" in r:
            assert score is not None, r
            assert (r["session"], r["events"], r["probability"]) == \
                   (score["session"], score["events"], score["probability"]), (score, r)
            out[r["session"]].append((r["events"], r["trigger"]))
        else:
            score = r if "decision" in r else None
    return out


def scores_of(records: list[dict]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = defaultdict(list)
    for r in records:
        if "decision" in r:
            assert r["events"] == len(out[r["session"]]) + 1
            out[r["session"]].append(r["probability"])
    return out


@pytest.mark.slow
def test_serve_lines_puts_each_trigger_right_after_its_score_line(tiny_artifact):
    scorer = Scorer.load(tiny_artifact)
    lines = stream(seed=5)
    plain: list[str] = []
    serve_lines(scorer, lines, plain.append, idle_timeout=None)
    plain_records = [json.loads(x) for x in plain]
    tiers = IntentTiers(("cold", "warm", "hot"), cuts_between([r["probability"] for r in plain_records]))
    rule = TriggerRule.for_names(tiers, ["warm", "hot"])
    out: list[str] = []
    store = serve_lines(scorer, lines, out.append, idle_timeout=None, triggers=rule)
    records = [json.loads(x) for x in out]
    # Triggers add lines, nothing else: the other lines are those of a store without them.
    assert [r for r in records if "trigger" not in r] == plain_records
    got = triggers_of(records)
    expected = {key: expected_triggers(scores, tiers, (1, 2), DEFAULT_HYSTERESIS)
                for key, scores in scores_of(plain_records).items()}
    assert got == {key: fired for key, fired in expected.items() if fired}
    assert store.triggers_fired == sum(map(len, got.values())) > 0
    for r in records:
        if "trigger" in r:
            assert set(r) == {"trigger", "session", "events", "probability", "tier"}
            assert r["tier"] == tiers.tier_of(r["probability"])
            assert tiers.index(r["tier"]) >= tiers.index(r["trigger"])


@pytest.mark.slow
def test_int8_triggers_follow_its_live_scores(quantized_run):
    """A full-integer artifact's triggers on its own stored tiers: its live scores (the step
    graph, at dynamic range) differ from its whole-session scores by a few thousandths, and
    the triggers follow the live ones: each trigger's probability is the score a fresh
    store gives that event, and the triggers are exactly those the rule draws from them."""
    run, rows = quantized_run
    assert rows[("fused", "int8")].status == "ok"
    scorer = Scorer.load(run / "model-int8.tflite")
    tiers = scorer.info.intent_tiers()
    assert tiers is not None, rows[("fused", "int8")].reason
    watched = tuple(range(1, len(tiers.names)))
    rule = TriggerRule.for_names(tiers, list(tiers.names[1:]))
    lines = stream(seed=11, n_sessions=40)
    out: list[str] = []
    store = serve_lines(scorer, lines, out.append, idle_timeout=None, triggers=rule)
    records = [json.loads(x) for x in out]
    assert not [r for r in records if "error" in r or "removed" in r], records[:5]
    # The same lines replayed into a fresh store without triggers: the live scores.
    replay = SessionStore(scorer, idle_timeout=None)
    live: dict[str, list[float]] = defaultdict(list)
    for line in lines:
        event = json.loads(line)
        key = event.pop("session")
        live[key].append(replay.push(key, event)[0])
    assert scores_of(records) == {k: [round(p, 6) for p in v] for k, v in live.items()}
    triggers = [r for r in records if "trigger" in r]
    assert triggers and store.triggers_fired == len(triggers)
    for r in triggers:
        p = live[r["session"]][r["events"] - 1]
        assert r["probability"] == round(p, 6), (r, p)
        assert r["tier"] == tiers.tier_of(p), (r, p)
    expected = {key: expected_triggers(scores, tiers, watched, DEFAULT_HYSTERESIS)
                for key, scores in live.items()}
    assert triggers_of(records) == {key: fired for key, fired in expected.items() if fired}


def with_tiers(model: Path, tiers: IntentTiers | None, out: Path) -> Path:
    """A copy of ``model`` storing ``tiers`` (none: as artifacts converted before tiers
    were stored), re-sealed, whatever tiers the shipped artifact holds today."""
    from converters.metadata_writer import add_metadata, seal
    from edge_runtime.artifact import METADATA_NAME
    from edge_runtime.tflite_reader import read_metadata

    data = model.read_bytes()
    meta = json.loads(read_metadata(data)[METADATA_NAME])
    meta.pop("tiers", None)
    if tiers is not None:
        meta["tiers"] = tiers.to_dict()
    out.write_bytes(seal(add_metadata(data, {METADATA_NAME: json.dumps(meta).encode("utf-8")})))
    return out


@pytest.fixture(scope="module")
def stream_and_cuts(scorer) -> tuple[list[str], tuple[float, ...]]:
    """An event stream, and cut-offs that its sessions cross."""
    lines = stream(seed=9)
    plain: list[str] = []
    serve_lines(scorer, lines, plain.append)
    return lines, cuts_between([json.loads(x)["probability"] for x in plain])


@pytest.fixture(scope="module")
def untiered(tmp_path_factory) -> Path:
    return with_tiers(MODEL, None, tmp_path_factory.mktemp("untiered") / "untiered.tflite")


@pytest.fixture(scope="module")
def tiered(tmp_path_factory, stream_and_cuts) -> Path:
    tiers = IntentTiers(NAMES, stream_and_cuts[1], "expected-buyers", "a test")
    return with_tiers(MODEL, tiers, tmp_path_factory.mktemp("tiered") / "tiered.tflite")


def serve_cli(model: Path, args: list[str], lines: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ubp_edge.cli", "serve", "--model", str(model), *args],
                          input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=120,
                          cwd=ROOT)


def test_serve_command_prints_trigger_lines_and_counts_them(scorer, stream_and_cuts, untiered, tiered):
    lines, cuts = stream_and_cuts
    out: list[str] = []
    rule = TriggerRule.for_names(IntentTiers(NAMES, cuts), ["likely"])
    store = serve_lines(scorer, lines, out.append, triggers=rule)
    assert store.triggers_fired > 0
    assert {json.loads(x).get("trigger") for x in out} == {None, "likely"}
    given = serve_cli(untiered, ["--triggers", "likely", "--cuts", ",".join(map(str, cuts))], lines)
    assert given.returncode == 0, given.stderr
    assert given.stdout.splitlines() == out
    assert given.stderr.splitlines()[-1].endswith(f"still open; {store.triggers_fired} triggers fired")
    stored = serve_cli(tiered, ["--triggers", "likely"], lines)  # the artifact's own cut-offs
    assert stored.returncode == 0, stored.stderr
    assert stored.stdout == given.stdout
    renamed = serve_cli(tiered, ["--triggers", "hot", "--tier-names", "cold,warm,hot"], lines)
    assert renamed.returncode == 0, renamed.stderr
    assert renamed.stdout.splitlines() == [x.replace('"likely"', '"hot"') for x in out]


def test_serve_without_triggers_prints_no_trigger_count(stream_and_cuts, tiered):
    done = serve_cli(tiered, [], stream_and_cuts[0])
    assert done.returncode == 0, done.stderr
    assert "trigger" not in done.stdout and "trigger" not in done.stderr


def one_error_line(model: Path, args: list[str]) -> str:
    done = CliRunner().invoke(app, ["serve", "--model", str(model), *args], input="")
    assert done.exit_code == 1, (done.stdout, done.stderr)
    assert done.stdout == ""
    lines = [x for x in done.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


@pytest.mark.parametrize("stored,args,message", [
    (True, ["--triggers", "hot"], "error: no tier 'hot'; the tiers are browsing, considering, likely"),
    (False, ["--triggers", "considering,hot", "--cuts", "0.05,0.15"],
     "error: no tier 'hot'; the tiers are browsing, considering, likely"),
    (False, ["--triggers", "likely", "--cuts", "0.05,0.15", "--tier-names", "cold,warm,hot"],
     "error: no tier 'likely'; the tiers are cold, warm, hot"),
    (True, ["--triggers", "browsing"], "'browsing' is the lowest"),
    (False, ["--triggers", "likely"], "the artifact carries no intent tiers (converted by an older "
                                      "ubp-edge, or its validation scores could not be cut into "
                                      "tiers: `convert` says why); re-run `ubp-edge convert` or "
                                      "pass --cuts"),
    (False, ["--triggers", "likely", "--cuts", "0.15,0.05"], "cut-offs must increase strictly"),
    (False, ["--triggers", "likely", "--cuts", "0.1,x"], "--cuts: 'x' is not a number"),
    (True, ["--triggers", "likely", "--cuts", "0.1"], "no tier 'likely'; the tiers are tier 1, tier 2"),
    (True, ["--triggers", "likely", "--cuts", "0.1", "--tier-names", "a,b,c"],
     "--cuts 0.1 makes 2 tiers but --tier-names names 3 (a, b, c)"),
    (True, ["--triggers", "likely", "--tier-names", "a,b"], "2 tier names for 3 tiers"),
    (True, ["--triggers", "likely", "--hysteresis", "1"],
     "error: --hysteresis must be a fraction in [0, 1), got 1.0"),
    (True, ["--triggers", ","], "--triggers names no tier"),
    (True, ["--cuts", "0.05,0.15"], "--cuts, --tier-names and --hysteresis go with --triggers"),
    (True, ["--hysteresis", "0.2"], "--cuts, --tier-names and --hysteresis go with --triggers"),
])
def test_serve_trigger_options_refuse_in_one_line(stored, args, message, tiered, untiered):
    assert message in one_error_line(tiered if stored else untiered, args)


# =========================================================================== the replay
REPLAYED = 400  # sessions: about 2,000 events
LONGEST = 60  # events: each prefix is scored whole, so the cost grows with the square


@pytest.mark.real_data
def test_replayed_taobao_sessions_fire_what_their_whole_prefix_scores_say(scorer, taobao_path):
    chosen = scorable_sessions(EventLogSource(taobao_path, format="taobao"), scorer)
    sessions, log = chosen.sessions, chosen.log
    first = np.arange(len(chosen.index)) < REPLAYED
    chosen = chosen.select(first & (sessions.prefix_len[chosen.index] <= LONGEST))
    encoded = chosen.encoded(scorer)
    whole = scorer.score_encoded([x[:t + 1] for x in encoded for t in range(len(x))])
    whole = np.split(whole.astype(np.float64), np.cumsum([len(x) for x in encoded])[:-1])

    items, categories = log.item.values(), log.category.values()
    lines = []
    for n, s in enumerate(chosen.index):
        context = dict(zip(CONTEXT_FIELDS, sessions.context[s].tolist(), strict=True))
        for t, e in enumerate(sessions.prefix_events(int(s))):  # in the session's time order
            record = {"session": f"s{n}", "ts": float(log.ts[e]), "event": int(log.event[e]),
                      "item": str(items[e]), "category": str(categories[e]) or None}
            lines.append(json.dumps({**record, "context": context} if t == 0 else record))
    tiers = IntentTiers(NAMES, (0.075, 0.14))
    rule = TriggerRule.for_names(tiers, ["considering", "likely"])
    out: list[str] = []
    # Sessions one after another, none expiring; a few rows, so later sessions reuse the
    # rows (and the trigger masks) of earlier ones.
    store = serve_lines(scorer, lines, out.append, max_sessions=16, idle_timeout=None, triggers=rule)
    records = [json.loads(x) for x in out]
    assert not [r for r in records if "error" in r]
    got, live = triggers_of(records), scores_of(records)
    assert store.stats.pushed == sum(map(len, encoded)) and len(live) == len(encoded)

    now = {(r["session"], r["events"], r["trigger"]): r["tier"] for r in records if "trigger" in r}
    levels = [*tiers.cuts] + [c * (1 - DEFAULT_HYSTERESIS) for c in tiers.cuts]
    exempt = compared = refired = 0
    for n, scores in enumerate(whole):
        key = f"s{n}"
        assert np.max(np.abs(np.asarray(live[key]) - scores)) < NEAR  # live is the whole-prefix score
        if np.min(np.abs(scores[:, None] - np.asarray(levels)[None, :])) < NEAR:
            exempt += 1  # a score at a level: live and whole may fall on either side of it
            continue
        expected = expected_triggers(scores, tiers, (1, 2), DEFAULT_HYSTERESIS)
        assert got.get(key, []) == expected, (key, scores.round(6).tolist())
        for events, tier in expected:  # the tier the session is in now, by its whole score
            assert now[key, events, tier] == tiers.tier_of(scores[events - 1])
        compared += len(expected)
        refired += len(expected) > len({tier for _, tier in expected})
    assert compared >= 50, compared  # the cut-offs do cut these sessions
    assert refired > 0  # and some fall back past the hysteresis and climb again
    assert exempt <= len(encoded) // 50, (exempt, len(encoded))
    assert store.triggers_fired == len(now) >= compared
    print(f"\n{len(encoded)} sessions, {compared} triggers checked, {refired} sessions re-fired, "
          f"{exempt} exempt")
