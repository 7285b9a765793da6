"""`ubp-edge explain` and `ubp-edge segment` (issue 15), end to end through the CLI.

explain: the JSON's trajectories add up exactly (each event's change, summed in order or with
math.fsum, is the final score minus the artifact's empty-session score, after the JSON round
trip), the final score is the whole-session score `score` prints, the events are the log's
own (no item or category id that the log does not hold), the top events are the largest
changes, and `--report` writes the page and plots from the very numbers of the JSON.

segment: the tiers cover [0, 1] from the lowest intent up, their counts add up and match an
independent count of the scores, lift is the tier's purchase rate over the base rate, the
cut-offs come from the artifact or `--cuts`, the assignment files (CSV, Parquet, JSON lines)
hold one row per session or user with the table's counts, and every fault a person can act
on is one line and exit code 1.

The model is conftest's tiny LSTM on the seeded synthetic log; artifacts without the
empty-session score or the tiers are re-sealed copies of it with that metadata removed, as
an artifact converted by an older ubp-edge has it. Two checks read the Taobao sample through
the repository's runs/taobao (skipped when either is absent).
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from converters.metadata_writer import add_metadata, seal
from edge_runtime.artifact import METADATA_NAME, read_artifact
from edge_runtime.scorer import Scorer
from edge_runtime.tflite_reader import read_metadata
from trainer.insights.report import plot_importance, plot_trajectory
from trainer.logsource import EventLogSource
from trainer.scoring import score_log
from ubp_edge.cli import app

pytestmark = pytest.mark.slow  # conftest's tiny run trains and converts a model

ROOT = Path(__file__).resolve().parents[1]
TAOBAO_RUN = ROOT / "runs" / "taobao"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SESSION_FIELDS = ["session", "user", "start", "events_scored", "probability", "tier"]
USER_FIELDS = ["user", "sessions", "highest_probability", "highest_tier", "latest_session",
               "latest_probability", "latest_tier"]
runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def ok_json(*args: object) -> dict:
    result = invoke(*args, "--json")
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr, result.exception)
    return json.loads(result.stdout)


def one_error_line(result, *names: str) -> str:
    """Exit 1, no traceback, exactly one stderr line starting with "error:" naming ``names``."""
    stderr = ANSI.sub("", result.stderr)
    assert result.exit_code == 1, (result.exit_code, result.stdout, stderr, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in stderr + result.stdout
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    for name in names:
        assert name in errors[0], (name, errors[0])
    return errors[0]


def rewritten(tmp_path: Path, artifact: Path, change: Callable[[dict], None], name: str) -> Path:
    """A copy of ``artifact`` whose metadata JSON ``change`` edited, re-sealed (its digest
    recomputed), as an artifact of an older ubp-edge or a tool editing the file has it."""
    model = artifact.read_bytes()
    meta = json.loads(read_metadata(model)[METADATA_NAME])
    change(meta)
    path = tmp_path / f"{name}.tflite"
    path.write_bytes(seal(add_metadata(model, {METADATA_NAME: json.dumps(meta, sort_keys=True).encode()})))
    return path


def without(*keys: str) -> Callable[[dict], None]:
    def change(meta: dict) -> None:
        for key in keys:
            assert key in meta, (key, sorted(meta))
            del meta[key]
    return change


# --------------------------------------------------------------------------- shared runs


@pytest.fixture(scope="module")
def log_rows(synthetic_log) -> list[dict]:
    with open(synthetic_log, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def scores(tiny_artifact, synthetic_log) -> dict[str, float]:
    """`ubp-edge score`'s probability of every scorable session, by key (6 decimals)."""
    result = invoke("score", "--model", tiny_artifact, "--data", synthetic_log)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert rows and len({r["session"] for r in rows}) == len(rows)
    return {r["session"]: r["probability"] for r in rows if r["probability"] is not None}


@pytest.fixture(scope="module")
def scored(tiny_artifact, synthetic_log):
    """The log scored in process, unrounded: (probabilities by key, labels by key)."""
    s = score_log(Scorer.load(tiny_artifact), EventLogSource(synthetic_log))
    keys = [str(k) for k in s.sessions.key[s.index]]
    return (dict(zip(keys, s.probability.astype(np.float64).tolist(), strict=True)),
            dict(zip(keys, s.label.astype(int).tolist(), strict=True)))


@pytest.fixture(scope="module")
def info(tiny_artifact):
    return read_artifact(tiny_artifact)[1]


@pytest.fixture(scope="module")
def explained(tiny_artifact, synthetic_log) -> dict:
    return ok_json("explain", "--model", tiny_artifact, "--data", synthetic_log,
                   "--sessions", 4, "--top", 3)


@pytest.fixture(scope="module")
def segmented(tiny_artifact, synthetic_log) -> dict:
    return ok_json("segment", "--model", tiny_artifact, "--data", synthetic_log)


# =========================================================================== explain


def test_explain_json_has_sessions_and_importance(explained):
    assert len(explained["sessions"]) == 4
    for s in explained["sessions"]:
        for key in ("key", "baseline", "trajectory", "deltas", "top", "events", "final"):
            assert key in s, (key, sorted(s))
        assert 1 <= len(s["top"]) <= 3
    assert explained["importance"], explained["importance"]
    groups = [g["group"] for g in explained["importance"]]
    assert len(set(groups)) == len(groups)
    for g in explained["importance"]:
        assert isinstance(g["group"], str) and g["group"]
        assert math.isfinite(g["mean_abs_change"]) and g["mean_abs_change"] >= 0
    # Most important first.
    sizes = [g["mean_abs_change"] for g in explained["importance"]]
    assert sizes == sorted(sizes, reverse=True)


def test_the_changes_add_up_exactly_after_the_json_round_trip(explained, info):
    assert info.empty_session_probability is not None
    assert explained["baseline"] == info.empty_session_probability
    for s in explained["sessions"]:
        baseline, path, deltas = s["baseline"], s["trajectory"], s["deltas"]
        assert baseline == info.empty_session_probability, s["key"]
        assert len(deltas) == len(path) == len(s["events"]) >= 1, s["key"]
        assert s["final"] == path[-1]
        assert math.fsum(deltas) == path[-1] - baseline, s["key"]
        running = 0.0
        for d in deltas:
            running += d
        assert running == path[-1] - baseline, s["key"]
        # Each change is the step from the score before it, exactly.
        assert deltas == [b - a for a, b in zip([baseline, *path[:-1]], path, strict=True)]


def test_the_number_of_events_is_the_number_scored(explained, tiny_artifact, synthetic_log):
    result = invoke("score", "--model", tiny_artifact, "--data", synthetic_log)
    events_scored = {r["session"]: r["events_scored"]
                     for r in map(json.loads, result.stdout.splitlines()) if r}
    for s in explained["sessions"]:
        assert len(s["events"]) == events_scored[s["key"]], s["key"]
        assert [e["position"] for e in s["events"]] == list(range(1, len(s["events"]) + 1))


def test_the_final_score_is_the_whole_session_score(explained, scores, scored):
    unrounded, _ = scored
    for s in explained["sessions"]:
        assert abs(s["final"] - scores[s["key"]]) <= 1e-5, (s["key"], s["final"], scores[s["key"]])
        assert abs(s["final"] - unrounded[s["key"]]) <= 1e-5, (s["key"], s["final"])


def test_by_default_the_highest_scoring_sessions_are_explained(explained, scores):
    keys = [s["key"] for s in explained["sessions"]]
    assert len(set(keys)) == 4
    assert "highest-scoring" in explained["chosen_by"]
    finals = [s["final"] for s in explained["sessions"]]
    assert finals == sorted(finals, reverse=True), finals
    rest = [p for k, p in scores.items() if k not in keys]
    assert min(scores[k] for k in keys) >= max(rest), (finals, max(rest))
    assert sorted((scores[k] for k in keys), reverse=True) == sorted(scores.values(), reverse=True)[:4]


def test_named_sessions_are_explained_exactly_in_order(tiny_artifact, synthetic_log, scores):
    ranked = sorted(scores, key=scores.get)
    chosen = [ranked[len(ranked) // 2], ranked[0], ranked[-1], ranked[10]]
    args = [a for key in chosen for a in ("--session", key)]
    d = ok_json("explain", "--model", tiny_artifact, "--data", synthetic_log, *args, "--top", 2)
    assert [s["key"] for s in d["sessions"]] == chosen
    assert d["chosen_by"] == "named with --session"
    for s in d["sessions"]:
        assert abs(s["final"] - scores[s["key"]]) <= 1e-5, s["key"]
        assert math.fsum(s["deltas"]) == s["final"] - s["baseline"]


def test_an_unknown_session_is_one_line_naming_it(tiny_artifact, synthetic_log, scores):
    known = next(iter(scores))
    result = invoke("explain", "--model", tiny_artifact, "--data", synthetic_log,
                    "--session", known, "--session", "nobody@123")
    line = one_error_line(result, "'nobody@123'", str(synthetic_log))
    assert "no session" in line


def test_a_session_that_starts_with_a_purchase_has_nothing_to_explain(tiny_artifact, synthetic_log,
                                                                       tmp_path):
    log = tmp_path / "with-purchase-first.csv"
    log.write_text(synthetic_log.read_text() + "zz999,1700000000,purchase,i00001,c001,5.0\n"
                   "zz999,1700000010,view,i00001,c001,5.0\n")
    result = invoke("explain", "--model", tiny_artifact, "--data", log, "--session", "zz999@1700000000")
    line = one_error_line(result, "'zz999@1700000000'")
    assert "starts with a purchase" in line


@pytest.mark.parametrize("option", ["--top", "--sessions"])
def test_top_and_sessions_below_one_are_refused(option, tiny_artifact, synthetic_log):
    one_error_line(invoke("explain", "--model", tiny_artifact, "--data", synthetic_log, option, 0),
                   "--top", "--sessions")


def test_top_events_are_the_largest_changes(explained):
    for s in explained["sessions"]:
        top, deltas = s["top"], s["deltas"]
        assert 1 <= len(top) <= 3
        sizes = [abs(e["delta"]) for e in top]
        assert sizes == sorted(sizes, reverse=True), sizes
        positions = [e["position"] for e in top]
        for e in top:
            assert e["delta"] == deltas[e["position"] - 1]
            assert e["probability"] == s["trajectory"][e["position"] - 1]
            assert e == {**s["events"][e["position"] - 1], "delta": e["delta"],
                         "probability": e["probability"]}
        others = [abs(d) for i, d in enumerate(deltas) if i + 1 not in positions]
        assert not others or min(sizes) >= max(others), (sizes, others)


def test_top_never_lists_more_than_the_events(tiny_artifact, synthetic_log):
    d = ok_json("explain", "--model", tiny_artifact, "--data", synthetic_log, "--sessions", 2,
                "--top", 1000)
    for s in d["sessions"]:
        assert len(s["top"]) == len(s["events"])
        assert sorted(e["position"] for e in s["top"]) == [e["position"] for e in s["events"]]


def test_no_id_in_the_output_that_was_not_in_the_input(explained, log_rows):
    items = {r["item"] for r in log_rows}
    categories = {r["category"] for r in log_rows}
    users = {r["user"] for r in log_rows}
    seen = 0
    for s in explained["sessions"]:
        assert s["user"] in users
        for e in [*s["events"], *s["top"]]:
            assert e["item"] in items, e
            assert e["category"] in categories, e
            seen += 1
    assert seen > 0


def test_the_events_are_the_sessions_rows_of_the_log(explained, log_rows):
    """Each explained event is the log's row: the user's rows from the session's start on,
    in time order, with their type, ids, price and time."""
    by_user = defaultdict(list)
    for r in log_rows:
        by_user[r["user"]].append(r)
    for s in explained["sessions"]:
        user, start = s["key"].rsplit("@", 1)
        assert user == s["user"]
        rows = sorted((r for r in by_user[user] if float(r["ts"]) >= int(start)),
                      key=lambda r: float(r["ts"]))[:len(s["events"])]
        assert len(rows) == len(s["events"])
        previous = None
        for e, r in zip(s["events"], rows, strict=True):
            assert (e["event"], e["item"], e["category"]) == (r["event"], r["item"], r["category"]), (e, r)
            assert e["price"] == pytest.approx(float(r["price"]), rel=1e-6)
            ts = float(r["ts"])
            when = dt.datetime.fromtimestamp(math.floor(ts), dt.UTC).isoformat(timespec="seconds")
            assert e["time"] == when, (e["time"], when)
            if previous is None:
                assert e["seconds_since_previous"] is None
            else:
                assert e["seconds_since_previous"] == pytest.approx(ts - previous, abs=1e-3)
            previous = ts


def test_report_writes_the_page_and_plots_from_the_json_numbers(tiny_artifact, synthetic_log, tmp_path):
    report = tmp_path / "report"
    d = ok_json("explain", "--model", tiny_artifact, "--data", synthetic_log, "--sessions", 2,
                "--top", 2, "--report", report)
    names = sorted(p.name for p in report.iterdir())
    assert names == ["explain.md", "importance.png", "trajectory-1.png", "trajectory-2.png"], names
    for name in names[1:]:
        assert (report / name).read_bytes().startswith(PNG_MAGIC), name
    page = (report / "explain.md").read_text()
    for n, s in enumerate(d["sessions"], start=1):
        assert f"## Session `{s['key']}`" in page
        assert f"(trajectory-{n}.png)" in page
        assert f"score {s['baseline']:.4f} -> {s['final']:.4f}" in page
        for e in s["top"]:
            assert f"| {e['position']} | {e['event']} | {e['item']} |" in page
            assert f"| {e['delta']:+.4f} | {e['probability']:.4f} |" in page
    # The importance table: one row per group, the JSON's numbers at 4 decimals, in its order.
    table = page[page.index("## Feature groups"):]
    rows = [line for line in table.splitlines() if line.startswith("| ")][1:]  # after the header
    assert len(rows) == len(d["importance"]) > 0
    for line, g in zip(rows, d["importance"], strict=True):
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        assert cells == [g["group"], ", ".join(g["features"]), f"{g['mean_abs_change']:.4f}",
                         f"{g['std_abs_change']:.4f}", f"{g['p90_abs_change']:.4f}",
                         f"{g['mean_change']:+.4f}"], (cells, g)
    # The plots are drawn from the same JSON: redrawn from it, they are the same bytes, and a
    # number changed in it draws another picture.
    assert (report / "importance.png").read_bytes() == plot_importance(d["importance"],
                                                                       d["importance_sessions"])
    for n, s in enumerate(d["sessions"], start=1):
        assert (report / f"trajectory-{n}.png").read_bytes() == plot_trajectory(s, d["threshold"], d["tiers"])
    changed = [dict(g) for g in d["importance"]]
    changed[0]["mean_abs_change"] *= 2
    assert plot_importance(changed, d["importance_sessions"]) != (report / "importance.png").read_bytes()


def test_report_and_terminal_tables_agree_with_the_json(tiny_artifact, synthetic_log, explained):
    result = invoke("explain", "--model", tiny_artifact, "--data", synthetic_log, "--sessions", 4,
                    "--top", 3)
    assert result.exit_code == 0, result.stderr
    text = ANSI.sub("", result.stdout)
    for s in explained["sessions"]:
        assert f"session {s['key']}" in text
        for e in s["top"]:
            assert f"{e['delta']:+.4f}" in text and f"{e['probability']:.4f}" in text
    for g in explained["importance"]:
        row = next(line for line in text.splitlines() if line.startswith(f"│ {g['group']} "))
        assert f"{g['mean_abs_change']:.4f}" in row and f"{g['mean_change']:+.4f}" in row, row


def test_an_artifact_without_the_empty_session_score_says_to_convert_again(tiny_artifact, synthetic_log,
                                                                            tmp_path):
    older = rewritten(tmp_path, tiny_artifact, without("empty_session_probability"), "older")
    assert read_artifact(older)[1].empty_session_probability is None
    line = one_error_line(invoke("explain", "--model", older, "--data", synthetic_log, "--json"),
                          str(older))
    assert "re-run `ubp-edge convert`" in line
    # segment needs no empty-session score.
    d = ok_json("segment", "--model", older, "--data", synthetic_log)
    assert d["cuts_from"] == "artifact"


def test_explain_on_a_split(tiny_artifact, synthetic_log, tiny_run, explained):
    d = ok_json("explain", "--model", tiny_artifact, "--data", synthetic_log, "--sessions", 2,
                "--split", "test", "--run-dir", tiny_run)
    assert 0 < d["importance_sessions"] < explained["importance_sessions"]
    one_error_line(invoke("explain", "--model", tiny_artifact, "--data", synthetic_log,
                          "--split", "test"), "--split", "--run-dir")


# =========================================================================== segment


def check_tiers(d: dict) -> None:
    """Tiers lowest first, covering [0, 1] without gaps; counts adding up; lift = rate / base."""
    tiers = d["tiers"]
    assert len(tiers) >= 2
    assert tiers[0]["low"] == 0.0 and tiers[-1]["high"] == 1.0
    for a, b in zip(tiers, tiers[1:], strict=False):
        assert a["high"] == b["low"] and a["low"] < b["low"], (a, b)
    assert [t["low"] for t in tiers[1:]] == d["cuts"]
    assert sum(t["sessions"] for t in tiers) == d["sessions"] > 0
    assert sum(t["purchases"] for t in tiers) == d["purchases"]
    assert d["base_rate"] == d["purchases"] / d["sessions"]
    for t in tiers:
        for key in ("name", "low", "high", "sessions", "purchases", "purchase_rate", "lift"):
            assert key in t, (key, t)
        if t["sessions"]:
            assert t["purchase_rate"] == t["purchases"] / t["sessions"]
            assert t["lift"] == t["purchase_rate"] / d["base_rate"]
            ratio = t["purchases"] * d["sessions"] / (t["sessions"] * d["purchases"])
            assert t["lift"] == pytest.approx(ratio, rel=1e-12)
        else:
            assert t["purchase_rate"] is None and t["lift"] is None


def independent_counts(d: dict, scored) -> list[tuple[int, int]]:
    """(sessions, purchases) of each tier, counted from the unrounded scores and labels."""
    p, label = scored
    out = []
    for i, t in enumerate(d["tiers"]):
        last = i == len(d["tiers"]) - 1
        members = [k for k, v in p.items() if t["low"] <= v and (v <= t["high"] if last else v < t["high"])]
        out.append((len(members), sum(label[k] for k in members)))
    return out


def test_segment_json_with_the_artifacts_tiers(segmented, info, scored):
    check_tiers(segmented)
    assert segmented["cuts_from"] == "artifact"
    assert info.tiers is not None
    assert segmented["cuts"] == info.tiers["cuts"]
    assert [t["name"] for t in segmented["tiers"]] == info.tiers["names"]
    assert segmented["method"] == info.tiers["method"] and segmented["fitted_on"] == info.tiers["fitted_on"]
    assert segmented["sessions"] == len(scored[0])
    counted = independent_counts(segmented, scored)
    assert [(t["sessions"], t["purchases"]) for t in segmented["tiers"]] == counted
    # The tiny model's scores spread over every tier.
    assert all(t["sessions"] > 0 for t in segmented["tiers"]), segmented["tiers"]


def cuts_between(scored, n: int) -> list[float]:
    """``n`` cut-offs at quantiles of the scores, rounded to 4 decimals: every tier holds sessions."""
    p = np.array(list(scored[0].values()))
    cuts = [round(float(np.quantile(p, q)), 4) for q in np.linspace(0, 1, n + 2)[1:-1]]
    assert all(0 < a < b < 1 for a, b in zip(cuts, cuts[1:], strict=False)) and 0 < cuts[0], cuts
    return cuts


def test_cuts_override_the_artifacts(tiny_artifact, synthetic_log, scored, info):
    cuts = cuts_between(scored, 2)
    assert cuts != info.tiers["cuts"]
    d = ok_json("segment", "--model", tiny_artifact, "--data", synthetic_log,
                "--cuts", ",".join(map(str, cuts)))
    check_tiers(d)
    assert d["cuts_from"] == "--cuts" and d["method"] == "given"
    assert [t["low"] for t in d["tiers"]] == [0.0, *cuts]
    assert [t["name"] for t in d["tiers"]] == info.tiers["names"]  # the artifact's names, 3 tiers
    assert [(t["sessions"], t["purchases"]) for t in d["tiers"]] == independent_counts(d, scored)


def test_two_named_tiers_with_one_cut(tiny_artifact, synthetic_log, scored):
    (cut,) = cuts_between(scored, 1)
    d = ok_json("segment", "--model", tiny_artifact, "--data", synthetic_log,
                "--tiers", "cold,hot", "--cuts", str(cut))
    check_tiers(d)
    assert [(t["name"], t["low"], t["high"]) for t in d["tiers"]] == [("cold", 0.0, cut), ("hot", cut, 1.0)]
    assert [(t["sessions"], t["purchases"]) for t in d["tiers"]] == independent_counts(d, scored)


def test_tier_names_alone_rename_the_artifacts_tiers(tiny_artifact, synthetic_log, segmented):
    d = ok_json("segment", "--model", tiny_artifact, "--data", synthetic_log, "--tiers", "cold,warm,hot")
    assert d["cuts_from"] == "artifact" and d["cuts"] == segmented["cuts"]
    assert [t["name"] for t in d["tiers"]] == ["cold", "warm", "hot"]
    assert [t["sessions"] for t in d["tiers"]] == [t["sessions"] for t in segmented["tiers"]]
    assert d["method"] == segmented["method"] and d["fitted_on"] == segmented["fitted_on"]
    result = invoke("segment", "--model", tiny_artifact, "--data", synthetic_log, "--tiers", "cold,warm,hot")
    assert result.exit_code == 0, result.stderr
    assert "cut-offs from the artifact" in ANSI.sub("", result.stdout), result.stdout
    # The artifact's own cut-offs typed with --cuts are the user's.
    d = ok_json("segment", "--model", tiny_artifact, "--data", synthetic_log,
                "--cuts", ",".join(map(repr, segmented["cuts"])))
    assert d["cuts_from"] == "--cuts" and d["method"] == "given" and d["cuts"] == segmented["cuts"]


@pytest.mark.parametrize("cuts, phrase", [
    ("0.2,0.1", "must increase strictly"),
    ("0.1,1.5", "1.5"),
    ("0.1,lots", "'lots' is not a number"),
    ("0.1,0.1", "must increase strictly"),
    ("0", "strictly between 0 and 1"),
])
def test_bad_cuts_are_one_line(cuts, phrase, tiny_artifact, synthetic_log):
    line = one_error_line(invoke("segment", "--model", tiny_artifact, "--data", synthetic_log,
                                 "--cuts", cuts))
    assert phrase in line, line


def test_names_and_cuts_of_different_counts_are_one_line(tiny_artifact, synthetic_log):
    line = one_error_line(invoke("segment", "--model", tiny_artifact, "--data", synthetic_log,
                                 "--tiers", "a,b", "--cuts", "0.05,0.1"))
    assert "--cuts 0.05,0.1 makes 3 tiers but --tiers names 2 (a, b)" in line, line


def test_tier_names_that_mismatch_the_stored_tiers_need_cuts(tiny_artifact, synthetic_log):
    line = one_error_line(invoke("segment", "--model", tiny_artifact, "--data", synthetic_log,
                                 "--tiers", "cold,hot"))
    assert "2 tier names for 3 tiers" in line and "--cuts" in line, line
    one_error_line(invoke("segment", "--model", tiny_artifact, "--data", synthetic_log,
                          "--tiers", "a,b,c,d"), "4 tier names for 3 tiers")


def read_rows(path: Path) -> list[dict]:
    if path.suffix == ".csv":
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_assignments_hold_one_row_per_session_with_the_tables_counts(suffix, tiny_artifact, synthetic_log,
                                                                      tmp_path, segmented, scores):
    out = tmp_path / f"sessions{suffix}"
    d = ok_json("segment", "--model", tiny_artifact, "--data", synthetic_log, "--out", out)
    assert d["written"] == {"--out": str(out)}
    rows = read_rows(out)
    assert len(rows) == d["sessions"] == segmented["sessions"]
    assert list(rows[0]) == SESSION_FIELDS
    counts = Counter(r["tier"] for r in rows)
    assert set(counts) <= {t["name"] for t in d["tiers"]}, counts
    assert [counts[t["name"]] for t in d["tiers"]] == [t["sessions"] for t in d["tiers"]], counts
    assert {r["session"] for r in rows} == set(scores)
    cuts = d["cuts"]
    for r in rows:
        p = float(r["probability"])
        assert abs(p - scores[r["session"]]) <= 1e-6, r
        assert r["user"] == r["session"].rsplit("@", 1)[0]
        assert int(r["events_scored"]) >= 1
        assert math.floor(float(r["start"])) == int(r["session"].rsplit("@", 1)[1]), r
        # The tier is the score's (a score within rounding of a cut-off may sit either side).
        if all(abs(p - c) > 1e-6 for c in cuts):
            expected = d["tiers"][sum(p >= c for c in cuts)]["name"]
            assert r["tier"] == expected, (r, cuts)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_user_assignments_hold_one_row_per_user(suffix, tiny_artifact, synthetic_log, tmp_path):
    sessions_out, users_out = tmp_path / "s.jsonl", tmp_path / f"users{suffix}"
    d = ok_json("segment", "--model", tiny_artifact, "--data", synthetic_log, "--out", sessions_out,
                "--users-out", users_out)
    sessions, users = read_rows(sessions_out), read_rows(users_out)
    assert list(users[0]) == USER_FIELDS
    by_user = defaultdict(list)
    for r in sessions:
        by_user[r["user"]].append(r)
    assert [u["user"] for u in users] == list(by_user)  # order of first appearance
    assert sum(int(u["sessions"]) for u in users) == d["sessions"]
    names = [t["name"] for t in d["tiers"]]
    for u in users:
        mine = by_user[u["user"]]
        assert int(u["sessions"]) == len(mine)
        assert float(u["highest_probability"]) == max(r["probability"] for r in mine)
        assert u["highest_tier"] == max((r["tier"] for r in mine), key=names.index)
        latest = max(mine, key=lambda r: r["start"])
        assert u["latest_session"] == latest["session"] and u["latest_tier"] == latest["tier"]
        assert float(u["latest_probability"]) == latest["probability"]


@pytest.mark.parametrize("option", ["--out", "--users-out"])
def test_a_bad_suffix_is_refused_before_the_log_is_read(option, tmp_path):
    # Neither the model nor the log exists: the suffix is the first thing checked.
    missing_model, missing_log = tmp_path / "none.tflite", tmp_path / "none.csv"
    result = invoke("segment", "--model", missing_model, "--data", missing_log,
                    option, tmp_path / "tiers.xlsx")
    line = one_error_line(result, option, "tiers.xlsx")
    assert "use a " in line and all(suffix in line for suffix in (".csv", ".parquet", ".jsonl")), line
    assert not (tmp_path / "tiers.xlsx").exists()


def test_an_artifact_without_tiers_needs_cuts(tiny_artifact, synthetic_log, tmp_path, scored):
    older = rewritten(tmp_path, tiny_artifact, without("tiers"), "no-tiers")
    assert read_artifact(older)[1].tiers is None
    line = one_error_line(invoke("segment", "--model", older, "--data", synthetic_log), str(older))
    assert "--cuts" in line and "no intent tiers" in line
    line = one_error_line(invoke("segment", "--model", older, "--data", synthetic_log,
                                 "--tiers", "a,b,c"), "--cuts")
    cuts = cuts_between(scored, 2)
    out = tmp_path / "s.csv"
    d = ok_json("segment", "--model", older, "--data", synthetic_log, "--cuts", ",".join(map(str, cuts)),
                "--out", out)
    check_tiers(d)
    assert d["cuts_from"] == "--cuts" and d["cuts"] == cuts
    assert [t["name"] for t in d["tiers"]] == ["browsing", "considering", "likely"]
    assert len(read_rows(out)) == d["sessions"]
    # explain still works on it (the tiers are optional there).
    e = ok_json("explain", "--model", older, "--data", synthetic_log, "--sessions", 1)
    assert e["tiers"] is None and len(e["sessions"]) == 1


def test_per_user_tiers_need_user_ids_and_nothing_is_written_without_them(tiny_artifact, log_rows,
                                                                          tmp_path):
    log = tmp_path / "sessions-only.csv"  # one session id per row, no user id
    with open(log, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["session", "ts", "event", "item", "category", "price"])
        for r in log_rows:
            writer.writerow([r["user"], r["ts"], r["event"], r["item"], r["category"], r["price"]])
    out, users = tmp_path / "s.csv", tmp_path / "u.csv"
    result = invoke("segment", "--model", tiny_artifact, "--data", log, "--format", "canonical",
                    "--out", out, "--users-out", users)
    one_error_line(result, str(log), "no user ids")
    assert not out.exists() and not users.exists()
    parquet = tmp_path / "s.parquet"
    d = ok_json("segment", "--model", tiny_artifact, "--data", log, "--format", "canonical", "--out", parquet)
    rows = read_rows(parquet)
    assert len(rows) == d["sessions"] > 0 and all(r["user"] is None for r in rows)


def test_the_terminal_table_shows_the_json_counts(tiny_artifact, synthetic_log, segmented, tmp_path):
    out = tmp_path / "s.csv"
    result = invoke("segment", "--model", tiny_artifact, "--data", synthetic_log, "--out", out)
    assert result.exit_code == 0, result.stderr
    text = ANSI.sub("", result.stdout)
    assert f"{segmented['sessions']:,} sessions, {segmented['purchases']:,} with a purchase" in text
    body = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("│").split("│")]
        if len(cells) == 8 and cells[0] in {t["name"] for t in segmented["tiers"]}:
            body[cells[0]] = cells
    assert list(body) == [t["name"] for t in segmented["tiers"]], text
    for t in segmented["tiers"]:
        cells = body[t["name"]]
        assert int(cells[2].replace(",", "")) == t["sessions"], (cells, t)
        assert int(cells[4].replace(",", "")) == t["purchases"], (cells, t)
        assert cells[6] == f"{t['lift']:.2f}x", (cells, t)
        assert cells[1].startswith(f"[{t['low']:.4g}, {t['high']:.4g}")
    assert "cut-offs from the artifact" in text
    assert f"--out: {out}" in ANSI.sub("", result.stderr)


def test_segment_on_a_split(tiny_artifact, synthetic_log, tiny_run, segmented):
    d = ok_json("segment", "--model", tiny_artifact, "--data", synthetic_log,
                "--split", "test", "--run-dir", tiny_run)
    check_tiers(d)
    assert d["split"] == "test" and 0 < d["sessions"] < segmented["sessions"]
    assert d["cuts"] == segmented["cuts"]


# =========================================================================== Taobao sample


@pytest.fixture
def taobao_run(taobao_path) -> Path:
    artifact = TAOBAO_RUN / "model-float32.tflite"
    if not (artifact.is_file() and (TAOBAO_RUN / "split.json").is_file()):
        pytest.skip(f"no trained Taobao run at {TAOBAO_RUN}")
    return TAOBAO_RUN


@pytest.mark.real_data
def test_taobao_segment_of_the_test_split(taobao_run, taobao_path):
    artifact = taobao_run / "model-float32.tflite"
    info = read_artifact(artifact)[1]
    args = ["segment", "--model", artifact, "--data", taobao_path, "--format", "taobao",
            "--split", "test", "--run-dir", taobao_run]
    if info.tiers is None:  # converted before the tiers were stored
        one_error_line(invoke(*args), "--cuts")
    d = ok_json(*args, "--cuts", "0.05,0.15")
    check_tiers(d)
    assert d["cuts_from"] == "--cuts" and d["split"] == "test"
    assert [t["low"] for t in d["tiers"]] == [0.0, 0.05, 0.15]
    assert d["purchases"] > 0


@pytest.mark.real_data
def test_taobao_explain(taobao_run, taobao_path):
    artifact = taobao_run / "model-float32.tflite"
    info = read_artifact(artifact)[1]
    args = ["explain", "--model", artifact, "--data", taobao_path, "--format", "taobao",
            "--split", "test", "--run-dir", taobao_run, "--sessions", 2]
    if info.empty_session_probability is None:  # converted before it was stored
        line = one_error_line(invoke(*args, "--json"), str(artifact))
        assert "re-run `ubp-edge convert`" in line
        return
    d = ok_json(*args)
    with open(taobao_path, newline="") as f:
        ids = {cell for row in csv.reader(f) for cell in row[1:3]}
    for s in d["sessions"]:
        assert math.fsum(s["deltas"]) == s["final"] - s["baseline"]
        assert all(e["item"] in ids and e["category"] in ids for e in s["events"])


# =========================================================================== issue 15 follow-ups


def test_tier_table_without_a_purchase_has_no_lift_and_zero_rates():
    from edge_runtime.tiers import IntentTiers
    from trainer.insights.segments import tier_table

    tiers = IntentTiers(("a", "b", "c"), (0.2, 0.5))
    rows = tier_table(np.array([0.1, 0.3, 0.35, 0.6, 0.7, 0.9]), np.zeros(6, np.int64), tiers)
    assert [r["sessions"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert r["purchases"] == 0 and r["purchase_rate"] == 0.0, r
        assert r["lift"] is None and r["capture"] is None, r
    assert [r["share"] for r in rows] == [1 / 6, 2 / 6, 3 / 6]


def test_tier_table_with_an_empty_tier():
    from edge_runtime.tiers import IntentTiers
    from trainer.insights.segments import tier_table

    tiers = IntentTiers(("a", "b", "c"), (0.2, 0.5))
    rows = tier_table(np.array([0.1, 0.15, 0.6, 0.7]), np.array([0, 1, 1, 0]), tiers)
    empty = rows[1]
    assert (empty["name"], empty["low"], empty["high"]) == ("b", 0.2, 0.5)
    assert empty["sessions"] == 0 and empty["purchases"] == 0 and empty["share"] == 0.0
    assert empty["purchase_rate"] is None and empty["lift"] is None
    assert empty["capture"] == 0.0
    for r in (rows[0], rows[2]):  # base rate 1/2, each of these 1/2: lift 1
        assert r["purchase_rate"] == 0.5 and r["lift"] == 1.0 and r["capture"] == 0.5, r
    # No session at all: nothing to divide by anywhere.
    for r in tier_table(np.zeros(0), np.zeros(0, np.int64), tiers):
        assert r["sessions"] == 0 and r["share"] is None and r["purchase_rate"] is None
        assert r["lift"] is None and r["capture"] is None


def test_segment_of_a_log_where_every_session_starts_with_a_purchase(tiny_artifact, tmp_path):
    log = tmp_path / "bought.csv"
    log.write_text("user,ts,event,item,category,price\n"
                   "u1,1700000000,purchase,i1,c1,5.0\nu1,1700000060,view,i1,c1,5.0\n"
                   "u2,1700000100,purchase,i2,c2,7.0\n")
    out = tmp_path / "s.csv"
    line = one_error_line(invoke("segment", "--model", tiny_artifact, "--data", log, "--out", out),
                          str(log))
    assert "nothing to segment" in line, line
    assert not out.exists()


def test_explain_says_null_for_an_empty_category_cell(tiny_artifact, synthetic_log, log_rows, explained,
                                                      tmp_path):
    """A canonical CSV whose category cell is empty for some events: those events have no
    category (JSON null), not the empty string; the others keep theirs."""
    session = explained["sessions"][0]
    user = session["user"]
    blanked = tmp_path / "blank-categories.csv"
    with open(blanked, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(log_rows[0]))
        writer.writeheader()
        for n, r in enumerate(log_rows):
            # Every event of the explained session's user, and every other row elsewhere.
            writer.writerow({**r, "category": ""} if r["user"] == user or n % 2 else r)
    d = ok_json("explain", "--model", tiny_artifact, "--data", blanked, "--session", session["key"],
                "--top", 1000)
    (s,) = d["sessions"]
    assert s["key"] == session["key"] and len(s["events"]) == len(session["events"])
    assert [e["category"] for e in s["events"]] == [None] * len(s["events"]), s["events"]
    assert all(e["category"] is None for e in s["top"])
    assert [e["item"] for e in s["events"]] == [e["item"] for e in session["events"]]
    # The other sessions: a category where the cell had one, null where it was empty.
    d = ok_json("explain", "--model", tiny_artifact, "--data", blanked, "--sessions", 6, "--top", 1000)
    categories = [e["category"] for s in d["sessions"] for e in s["events"]]
    assert "" not in categories and None in categories
    assert any(isinstance(c, str) for c in categories), categories
    assert {c for c in categories if c is not None} <= {r["category"] for r in log_rows}


def test_a_report_that_would_overwrite_the_log_is_refused_before_anything_is_written(tiny_artifact,
                                                                                    synthetic_log,
                                                                                    tmp_path):
    folder = tmp_path / "report"
    folder.mkdir()
    log = folder / "explain.md"  # the log, where the report's page would go
    log.write_bytes(synthetic_log.read_bytes())
    before = log.read_bytes()
    result = invoke("explain", "--model", tiny_artifact, "--data", log, "--format", "canonical",
                    "--sessions", 1, "--report", folder)
    line = one_error_line(result, "--report", "--data", str(log))
    assert "would replace the input" in line, line
    assert sorted(p.name for p in folder.iterdir()) == ["explain.md"]  # no plot either
    assert log.read_bytes() == before
    # The same log elsewhere is read as it is: the refusal is the guard's, not the reader's.
    elsewhere = tmp_path / "other"
    d = ok_json("explain", "--model", tiny_artifact, "--data", log, "--format", "canonical",
                "--sessions", 1, "--report", elsewhere)
    assert len(d["sessions"]) == 1 and (elsewhere / "explain.md").is_file()
    assert log.read_bytes() == before


def test_importance_over_a_seeded_sample_of_sessions(tiny_artifact, synthetic_log, scores, explained):
    args = ("explain", "--model", tiny_artifact, "--data", synthetic_log, "--sessions", 1,
            "--importance-sessions", 5)
    first, second = ok_json(*args), ok_json(*args)
    assert first["importance_sessions"] == 5
    assert first["importance_sampled_from"] == len(scores) == explained["importance_sampled_from"]
    assert explained["importance_sessions"] == len(scores)  # all of them by default
    assert all(g["sessions"] == 5 for g in first["importance"])
    assert first["importance"] == second["importance"]  # seeded: the same sample each run
    assert first["importance"] != explained["importance"]  # not the figures over every session
    result = invoke(*args)
    assert result.exit_code == 0, result.stderr
    text = " ".join(ANSI.sub("", result.stdout).split())
    assert f"feature groups by occlusion over 5 sessions sampled from {len(scores):,}" in text, text
    full = invoke("explain", "--model", tiny_artifact, "--data", synthetic_log, "--sessions", 1)
    assert "sampled from" not in ANSI.sub("", full.stdout)
    one_error_line(invoke(*args[:-1], 0), "--importance-sessions")


def test_per_user_highest_probability_is_the_unrounded_maximum(tiny_artifact, synthetic_log, tmp_path,
                                                               scored):
    unrounded, _ = scored
    users_out = tmp_path / "users.jsonl"
    d = ok_json("segment", "--model", tiny_artifact, "--data", synthetic_log, "--users-out", users_out)
    from edge_runtime.tiers import IntentTiers

    tiers = IntentTiers(tuple(t["name"] for t in d["tiers"]), tuple(d["cuts"]))
    by_user = defaultdict(list)
    for key, p in unrounded.items():
        by_user[key.rsplit("@", 1)[0]].append((key, p))
    users = read_rows(users_out)
    assert {u["user"] for u in users} == set(by_user)
    for u in users:
        mine = by_user[u["user"]]
        highest = max(p for _, p in mine)
        assert u["highest_probability"] == round(highest, 6), (u, mine)
        assert u["highest_tier"] == tiers.tier_of(highest), (u, highest)
        assert u["sessions"] == len(mine)


# --------------------------------------------------------------- the full-integer (int8) artifact


@pytest.fixture(scope="module")
def int8_artifact(quantized_run) -> Path:
    run, rows = quantized_run
    row = rows[("fused", "int8")]
    assert row.status == "ok", row.reason
    # Its validation scores move in steps of about 1/256: the tiers are stored all the same.
    assert row.reason is None, row.reason
    return run / "model-int8.tflite"


def test_int8_segment_uses_its_stored_tiers(int8_artifact, synthetic_log):
    info = read_artifact(int8_artifact)[1]
    assert info.tiers is not None and info.tiers["method"] == "expected-buyers", info.tiers
    d = ok_json("segment", "--model", int8_artifact, "--data", synthetic_log)
    check_tiers(d)
    assert d["cuts_from"] == "artifact" and d["cuts"] == info.tiers["cuts"]
    assert [t["name"] for t in d["tiers"]] == info.tiers["names"]
    assert all(t["sessions"] > 0 for t in d["tiers"]), d["tiers"]
    s = score_log(Scorer.load(int8_artifact), EventLogSource(synthetic_log))
    keys = [str(k) for k in s.sessions.key[s.index]]
    mine = (dict(zip(keys, s.probability.astype(np.float64).tolist(), strict=True)),
            dict(zip(keys, s.label.astype(int).tolist(), strict=True)))
    assert d["sessions"] == len(keys)
    assert [(t["sessions"], t["purchases"]) for t in d["tiers"]] == independent_counts(d, mine)


def test_int8_explain_follows_the_live_step_graph(int8_artifact, synthetic_log):
    """The trajectory of a full-integer artifact is its live score: its step graph runs at
    dynamic range, so the final score equals what `start_session().push` gives event by
    event, exactly, and differs from the whole-session graph's (full-integer) score by a
    few thousandths at most (0.05 allowed here)."""
    from edge_runtime.features import CONTEXT_FIELDS
    from trainer.scoring import scorable_sessions

    scorer = Scorer.load(int8_artifact)
    d = ok_json("explain", "--model", int8_artifact, "--data", synthetic_log, "--sessions", 3, "--top", 2)
    assert d["baseline"] == scorer.info.empty_session_probability
    chosen = scorable_sessions(EventLogSource(synthetic_log), scorer)
    sessions, log = chosen.sessions, chosen.log
    where = {str(k): i for i, k in enumerate(sessions.key)}
    for s in d["sessions"]:
        path, deltas = s["trajectory"], s["deltas"]
        assert math.fsum(deltas) == s["final"] - s["baseline"] == path[-1] - s["baseline"], s["key"]
        running = 0.0
        for t, delta in enumerate(deltas):
            running += delta
            assert running == path[t] - s["baseline"], (s["key"], t)
        i = where[s["key"]]
        context = (dict(zip(CONTEXT_FIELDS, map(float, sessions.context[i]), strict=True))
                   if scorer.info.spec.uses_context else None)
        live = scorer.start_session(context)
        pushed = [float(live.push(e)) for e in log.event_dicts(sessions.prefix_events(i))]
        assert path == pushed, (s["key"], np.subtract(path, pushed))
        assert s["final"] == pushed[-1]
        whole = float(scorer.score_encoded([scorer.encode_session(log.event_dicts(sessions.prefix_events(i)),
                                                                  context)])[0])
        assert abs(s["final"] - whole) <= 0.05, (s["key"], s["final"], whole)


# =========================================================================== hostile text
def test_tier_names_and_paths_are_never_read_as_rich_markup(tiny_artifact, synthetic_log, tmp_path):
    folder = tmp_path / "b[i]"
    folder.mkdir()
    log = folder / "h[bold].csv"
    log.write_bytes(synthetic_log.read_bytes())
    result = invoke("segment", "--model", tiny_artifact, "--data", log, "--tiers", "[/],b[red],c")
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    text = ANSI.sub("", result.stdout)
    assert "[/]" in text and "b[red]" in text and "b[i]/h[bold].csv" in text.replace("\n", ""), text


def test_a_dollar_in_keys_and_ids_is_drawn_as_text(tiny_artifact, log_rows, tmp_path):
    """matplotlib reads $...$ as TeX: a key or an item id with dollars must not break (or
    be typeset in) the report, and every file is drawn before the first is written."""
    user = log_rows[0]["user"]
    odd = tmp_path / "dollars.csv"
    with open(odd, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(log_rows[0]))
        writer.writeheader()
        for r in log_rows:
            writer.writerow({**r, **{k: "$\\frac$" + r[k] for k in ("user", "session") if k in r},
                             "item": "$\\alpha^$" + r["item"]} if r["user"] == user else r)
    scored = score_log(Scorer.load(tiny_artifact), EventLogSource(odd))
    key = next(str(k) for k in scored.sessions.key[scored.index] if str(k).startswith("$"))
    report = tmp_path / "report"
    result = invoke("explain", "--model", tiny_artifact, "--data", odd, "--session", key,
                    "--report", report)
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    assert (report / "trajectory-1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert key in (report / "explain.md").read_text(encoding="utf-8")


def test_a_report_of_too_many_sessions_is_refused_before_the_log_is_read(tiny_artifact, tmp_path):
    missing = tmp_path / "no-such-log.csv"  # never read: the limit comes first
    line = one_error_line(invoke("explain", "--model", tiny_artifact, "--data", missing,
                                 "--sessions", 101, "--report", tmp_path / "r"), "--report")
    assert "at most 100 sessions, got 101" in line, line
    assert not (tmp_path / "r").exists()
