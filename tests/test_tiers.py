"""Intent tiers: fitting the cut-offs, cutting scores into tiers, parsing what a user types,
and the tiers and empty-session score `convert` stores in an artifact.

The IntentTiers tests are pure numpy on seeded samples; the artifact tests read the tiny
run of conftest (trained once per session) and re-sealed copies of its artifact whose
metadata was edited, as a tool or a person editing the file would.
"""

from __future__ import annotations

import json
import math
from array import array
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from converters.metadata_writer import add_metadata, seal
from converters.tflite import ConversionRun
from edge_runtime import ArtifactError, Scorer
from edge_runtime.artifact import METADATA_NAME, read_artifact
from edge_runtime.errors import ConfigError
from edge_runtime.tflite_reader import read_metadata
from edge_runtime.tiers import (
    DEFAULT_TIER_NAMES,
    EXPECTED_BUYERS,
    GIVEN,
    MAX_NAME_CHARS,
    MAX_TIERS,
    SHARES,
    IntentTiers,
    TriggerRule,
    check_hysteresis,
    check_names,
    check_shares,
    parse_cuts,
    parse_names,
    parse_numbers,
)

NAMES = ("browsing", "considering", "likely")


def _beta_sample(n: int = 5000, seed: int = 3) -> np.ndarray:
    """Scores shaped like a purchase model's: most sessions low, a few high."""
    return np.random.default_rng(seed).beta(1.5, 12.0, n)


def _in_tiers(tiers: IntentTiers, p: np.ndarray) -> list[np.ndarray]:
    index = tiers.tier_index(p)
    return [p[index == i] for i in range(len(tiers.names))]


# --- fitting ---------------------------------------------------------------------------


@pytest.mark.parametrize("k", [2, 3, 5])
@pytest.mark.parametrize("seed", [3, 11])
def test_expected_buyers_are_shared_equally_within_one_session(k, seed):
    p = _beta_sample(seed=seed)
    names = tuple(f"t{i}" for i in range(k))
    tiers = IntentTiers.fit_expected_buyers(p, names, fitted_on="5,000 sessions")
    assert tiers.names == names and tiers.method == EXPECTED_BUYERS
    assert tiers.fitted_on == "5,000 sessions" and len(tiers.cuts) == k - 1
    assert all(0.0 < a < b < 1.0 for a, b in zip(tiers.cuts, tiers.cuts[1:], strict=False)), tiers.cuts
    assert 0.0 < tiers.cuts[0] and tiers.cuts[-1] < 1.0
    parts = _in_tiers(tiers, p)
    assert sum(len(x) for x in parts) == len(p)
    share, one_session = p.sum() / k, p.max()
    for i, part in enumerate(parts):
        assert abs(part.sum() - share) <= one_session, (i, part.sum(), share, one_session)
    # Equal expected buyers, not equal sessions: the low tier holds far more sessions.
    assert len(parts[0]) > 2 * len(parts[-1]), [len(x) for x in parts]


def test_expected_buyers_cut_at_the_first_session_past_each_share():
    # Scores on a grid of 6 decimals, so a cut-off is exactly a session's score.
    p = np.random.default_rng(5).permutation(np.arange(1, 1001) / 2000.0)
    tiers = IntentTiers.fit_expected_buyers(p, NAMES)
    s = np.sort(p)
    running = np.cumsum(s) / s.sum()
    for k, cut in enumerate(tiers.cuts, start=1):
        first = int(np.flatnonzero(s == cut)[0])
        # The sessions below the cut-off hold at least k/K of the expected buyers; without
        # the last of them, less.
        assert running[first - 1] >= k / 3 > running[first - 2], (k, cut)
        assert tiers.tier_of(cut) == NAMES[k]  # the session at the cut is in the tier above


SHARE_CASES = [(0.5, 0.3, 0.2), (0.6, 0.4), (0.1, 0.2, 0.3, 0.4)]


@pytest.mark.parametrize("shares", SHARE_CASES)
@pytest.mark.parametrize("n", [1000, 997])
def test_shares_of_sessions_within_one_session(shares, n):
    p = _beta_sample(n, seed=8)
    names = tuple(f"tier{i}" for i in range(len(shares)))
    tiers = IntentTiers.fit_shares(p, shares, names, fitted_on="x")
    assert tiers.method == SHARES and tiers.fitted_on == "x"
    assert all(a < b for a, b in zip(tiers.cuts, tiers.cuts[1:], strict=False)), tiers.cuts
    counts = np.bincount(tiers.tier_index(p), minlength=len(shares))
    assert counts.sum() == n
    for count, share in zip(counts, shares, strict=True):
        assert abs(count - share * n) <= 1, (counts, shares)


@pytest.mark.parametrize("seed", [3, 8, 11])
def test_the_session_a_cut_off_is_taken_at_is_in_the_tier_above(seed):
    p = _beta_sample(seed=seed)
    s = np.sort(p)
    buyers = IntentTiers.fit_expected_buyers(p, NAMES)
    running = np.cumsum(s) / s.sum()
    at = np.searchsorted(running, [1 / 3, 2 / 3]) + 1  # the first session past each share
    shares = IntentTiers.fit_shares(p, (0.5, 0.3, 0.2), NAMES)
    at_share = np.array([2500, 4000])  # ceil(0.5 * 5000), ceil(0.8 * 5000)
    assert buyers.tier_index(s[at]).tolist() == [1, 2], (buyers.cuts, s[at])
    assert shares.tier_index(s[at_share]).tolist() == [1, 2], (shares.cuts, s[at_share])


def test_fit_shares_refuses_bad_shares():
    p = _beta_sample(200)
    for shares in [(0.5, 0.5), (0.5, 0.6, -0.1), (0.2, 0.2, 0.2), (0.0, 0.5, 0.5)]:
        with pytest.raises(ConfigError, match="tier shares must be 3 positive numbers"):
            IntentTiers.fit_shares(p, shares, NAMES)
    with pytest.raises(ConfigError, match="need sessions"):
        IntentTiers.fit_shares(np.zeros(0), (0.5, 0.5), ("a", "b"))


@pytest.mark.parametrize("p", [
    np.full(100, 0.1),  # one distinct score
    np.repeat([0.1, 0.2], 50),  # two scores for three tiers
    np.array([0.2]),  # one session
], ids=["constant", "two-scores", "one-session"])
def test_too_few_distinct_scores_is_a_config_error(p):
    with pytest.raises(ConfigError, match="too few distinct scores"):
        IntentTiers.fit_expected_buyers(p, NAMES)
    with pytest.raises(ConfigError, match="too few distinct scores"):
        IntentTiers.fit_shares(p, (0.6, 0.2, 0.2), NAMES)


@pytest.mark.parametrize("p", [np.zeros(0), np.zeros(50)], ids=["no-sessions", "all-zero"])
def test_expected_buyers_need_a_positive_score(p):
    with pytest.raises(ConfigError, match="positive score"):
        IntentTiers.fit_expected_buyers(p, NAMES)


def test_fitting_checks_the_names():
    with pytest.raises(ConfigError, match="distinct"):
        IntentTiers.fit_expected_buyers(_beta_sample(100), ("a", "b", "a"))
    with pytest.raises(ConfigError, match="intent tiers need 2 to 32 names, got 1"):
        IntentTiers.fit_shares(_beta_sample(100), (1.0,), ("only",))


# --- cutting ---------------------------------------------------------------------------


def test_a_score_at_a_cut_off_belongs_to_the_tier_above():
    tiers = IntentTiers(NAMES, (0.05, 0.15))
    assert tiers.method == GIVEN
    below = float(np.nextafter(0.05, 0.0))
    cases = {0.0: "browsing", below: "browsing", 0.05: "considering", 0.1: "considering",
             float(np.nextafter(0.15, 0.0)): "considering", 0.15: "likely", 0.5: "likely",
             1.0: "likely"}
    for p, name in cases.items():
        assert tiers.tier_of(p) == name, (p, name)
    index = tiers.tier_index(np.array([[0.0, 0.05], [below, 1.0]]))
    assert index.dtype == np.int64 and index.shape == (2, 2)
    assert index.tolist() == [[0, 1], [0, 2]]
    # A float32 score is compared at its exact value: float32(0.05) is just above 0.05.
    scores32 = np.array([0.05, 0.0499999], np.float32)
    assert float(scores32[0]) > 0.05 and tiers.tier_index(scores32).tolist() == [1, 0]
    assert tiers.tier_index(0.15).shape == () and int(tiers.tier_index(0.15)) == 2


def test_bounds_cover_zero_to_one():
    tiers = IntentTiers(NAMES, (0.05, 0.15))
    assert [tiers.bounds(i) for i in range(3)] == [(0.0, 0.05), (0.05, 0.15), (0.15, 1.0)]
    two = IntentTiers(("low", "high"), (0.3,))
    assert two.bounds(0) == (0.0, 0.3) and two.bounds(1) == (0.3, 1.0)
    for i in range(3):  # each tier's low bound is in it
        low, high = tiers.bounds(i)
        assert tiers.tier_index(low) == i and (i == 2 or tiers.tier_index(high) == i + 1)


def test_index_names_the_tiers():
    tiers = IntentTiers(NAMES, (0.05, 0.15))
    assert tiers.index("likely") == 2
    with pytest.raises(ConfigError, match="no tier 'hot'; the tiers are browsing, considering, likely"):
        tiers.index("hot")


def test_renamed_keeps_the_cut_offs():
    tiers = IntentTiers.fit_expected_buyers(_beta_sample(), NAMES, fitted_on="f")
    other = tiers.renamed(["cold", "warm", "hot"])
    assert other.names == ("cold", "warm", "hot")
    assert (other.cuts, other.method, other.fitted_on) == (tiers.cuts, tiers.method, "f")
    for names in (["cold", "hot"], ["a", "b", "c", "d"]):
        with pytest.raises(ConfigError, match=f"{len(names)} tier names for 3 tiers"):
            tiers.renamed(names)
    with pytest.raises(ConfigError, match="distinct"):
        tiers.renamed(["a", "a", "b"])


@pytest.mark.parametrize("names, cuts, method, phrase", [
    (NAMES, (0.1,), GIVEN, "3 tiers need 2 cut-offs, got 1"),
    (NAMES, (0.1, 0.2, 0.3), GIVEN, "3 tiers need 2 cut-offs, got 3"),
    (NAMES, (0.1, 0.2), "", "tier method ''"),
    (("a,b", "c"), (0.5,), GIVEN, "without a comma"),
    (NAMES, (0.2, 0.1), GIVEN, "must increase strictly"),
    (("a", "b"), (True,), GIVEN, "strictly between 0 and 1"),
    (("a", "b"), ("0.5",), GIVEN, "strictly between 0 and 1"),
])
def test_the_constructor_checks_everything(names, cuts, method, phrase):
    with pytest.raises(ConfigError, match=phrase):
        IntentTiers(names, cuts, method)


# --- parsing ---------------------------------------------------------------------------


def test_parse_cuts_reads_increasing_probabilities():
    assert parse_cuts("0.05,0.15") == (0.05, 0.15)
    assert parse_cuts(" 0.05 , 0.15 ,0.5") == (0.05, 0.15, 0.5)
    assert parse_cuts("0.3") == (0.3,)


@pytest.mark.parametrize("text, phrase", [
    ("0.05,abc", "--cuts: 'abc' is not a number"),
    ("0.05,", "--cuts: '' is not a number"),
    ("", "--cuts: '' is not a number"),
    ("0.2,0.1", "must increase strictly, got [0.2, 0.1]"),
    ("0.1,0.1", "must increase strictly"),
    ("0,0.5", "cut-off 0.0 must be a probability strictly between 0 and 1"),
    ("0.5,1", "cut-off 1.0 must be a probability strictly between 0 and 1"),
    ("-0.1", "strictly between 0 and 1"),
    ("1.5", "strictly between 0 and 1"),
    ("nan", "strictly between 0 and 1"),
    ("0.1,inf", "strictly between 0 and 1"),
])
def test_parse_cuts_refuses(text, phrase):
    with pytest.raises(ConfigError) as caught:
        parse_cuts(text)
    assert phrase in str(caught.value) and "\n" not in str(caught.value), str(caught.value)


def test_parse_names_reads_distinct_names():
    assert parse_names("browsing,considering,likely") == DEFAULT_TIER_NAMES
    assert parse_names(" cold , hot ") == ("cold", "hot")
    longest = "x" * MAX_NAME_CHARS
    assert parse_names(f"{longest},y") == (longest, "y")


@pytest.mark.parametrize("text, phrase", [
    ("cold,hot,cold", "tier names must be distinct"),
    ("cold, cold", "tier names must be distinct"),
    ("only", "intent tiers need 2 to 32 names, got 1: ['only']"),
    ("", "intent tiers need 2 to 32 names, got 1: ['']"),
    ("cold,,hot", "tier name '' must be 1-40 printable characters"),
    ("cold, ,hot", "tier name ''"),
    ("x" * (MAX_NAME_CHARS + 1) + ",y", "must be 1-40 printable characters"),
    ("cold\thot,warm", "printable"),
])
def test_parse_names_refuses(text, phrase):
    with pytest.raises(ConfigError) as caught:
        parse_names(text)
    assert phrase in str(caught.value) and "\n" not in str(caught.value), str(caught.value)


# --- to_dict / from_dict -----------------------------------------------------------------


def test_the_dict_round_trips_through_json():
    tiers = IntentTiers.fit_expected_buyers(_beta_sample(), NAMES, fitted_on="5,000 sessions")
    d = json.loads(json.dumps(tiers.to_dict()))
    assert d == {"names": list(NAMES), "cuts": list(tiers.cuts), "method": EXPECTED_BUYERS,
                 "fitted_on": "5,000 sessions"}
    assert IntentTiers.from_dict(d) == tiers
    del d["fitted_on"]  # optional
    assert IntentTiers.from_dict(d).fitted_on == ""


GOOD = {"names": ["a", "b", "c"], "cuts": [0.1, 0.2], "method": "given", "fitted_on": ""}


@pytest.mark.parametrize("change", [
    {"names": None}, {"cuts": None}, {"method": None},  # None: the key is missing
    {"names": "abc"}, {"names": ("a", "b", "c")}, {"cuts": "0.1,0.2"}, {"cuts": 0.1},
    {"names": ["a", "b"]}, {"names": ["a", "a", "c"]}, {"names": ["a", 2, "c"]},
    {"names": [["a"], ["b"], ["c"]]}, {"cuts": [0.2, 0.1]}, {"cuts": [0.1, 1.0]},
    {"cuts": ["0.1", "0.2"]}, {"cuts": [0.1, None]}, {"cuts": [0.1, float("nan")]},
    {"method": ""},
], ids=lambda c: json.dumps(c, default=repr).replace(" ", ""))
def test_malformed_dicts_are_artifact_errors(change):
    d = dict(GOOD)
    for key, value in change.items():
        if value is None:
            del d[key]
        else:
            d[key] = value
    with pytest.raises(ArtifactError, match="^intent tiers are malformed: ") as caught:
        IntentTiers.from_dict(d)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("d", [None, [], "names", 3])
def test_a_dict_that_is_no_mapping_is_an_artifact_error(d):
    with pytest.raises(ArtifactError, match="intent tiers are malformed"):
        IntentTiers.from_dict(d)


# --- what convert stores in the artifact ---------------------------------------------------


def _rewritten(tmp_path: Path, artifact: Path, change: Callable[[dict], None], name: str) -> Path:
    """A copy of ``artifact`` whose metadata JSON ``change`` edited in place, re-sealed (its
    digest recomputed) so that only the metadata's content can be refused."""
    model = artifact.read_bytes()
    meta = json.loads(read_metadata(model)[METADATA_NAME])
    change(meta)
    payload = json.dumps(meta, sort_keys=True).encode("utf-8")  # NaN written as the token NaN
    path = tmp_path / f"{name}.tflite"
    path.write_bytes(seal(add_metadata(model, {METADATA_NAME: payload})))
    return path


@pytest.mark.slow
def test_the_artifact_carries_the_float32_sigmoid_of_the_output_bias(tiny_run, tiny_artifact):
    _, info = read_artifact(tiny_artifact)
    assert info.calibration is None  # float32: no recalibration to go through
    with np.load(tiny_run / "weights.npz") as weights:
        bias = np.float32(np.asarray(weights["dense_bias"]).reshape(-1)[0])
    one = np.float32(1.0)
    expected = one / (one + np.exp(-bias, dtype=np.float32))
    assert expected.dtype == np.float32
    assert info.empty_session_probability == float(expected)
    assert np.float32(info.empty_session_probability) == info.empty_session_probability
    in_float64 = 1.0 / (1.0 + math.exp(-float(bias)))
    assert abs(info.empty_session_probability - in_float64) <= float(np.spacing(expected))


@pytest.mark.slow
def test_the_artifact_tiers_are_refitted_from_its_validation_scores(tiny_run, tiny_artifact):
    scorer = Scorer.load(tiny_artifact)
    stored = scorer.info.intent_tiers()
    assert stored is not None, scorer.info.tiers
    run = ConversionRun(tiny_run)
    p = scorer.score_encoded(run.validation)
    refitted = IntentTiers.fit_expected_buyers(p, DEFAULT_TIER_NAMES)
    assert stored.cuts == refitted.cuts, (stored.cuts, refitted.cuts)
    assert stored.names == DEFAULT_TIER_NAMES and stored.method == EXPECTED_BUYERS
    assert stored.fitted_on == f"{len(run.validation):,} validation sessions"
    assert scorer.info.tiers == stored.to_dict()
    # Cut so, the validation sessions' scores split into equal expected buyers.
    parts = _in_tiers(stored, p.astype(np.float64))
    for part in parts:
        assert abs(part.sum() - p.sum() / 3) <= p.max(), [x.sum() for x in parts]


def _set(key: str, value) -> Callable[[dict], None]:
    def change(meta: dict) -> None:
        meta[key] = value
    return change


def _set_tiers(key: str, value) -> Callable[[dict], None]:
    def change(meta: dict) -> None:
        meta["tiers"][key] = value
    return change


# name -> (the change, phrases the one-line message must hold)
METADATA_FAULTS = {
    "empty-above-one": (_set("empty_session_probability", 1.5),
                        ["empty_session_probability is 1.5, expected a number in [0, 1]"]),
    "empty-negative": (_set("empty_session_probability", -0.1),
                       ["empty_session_probability is -0.1"]),
    "empty-nan": (_set("empty_session_probability", float("nan")),
                  ["empty_session_probability is the token NaN"]),
    "empty-string": (_set("empty_session_probability", "0.1"),
                     ["empty_session_probability is '0.1'"]),
    "tiers-decreasing": (_set_tiers("cuts", [0.3, 0.2]),
                         ["intent tiers are malformed", "must increase strictly, got [0.3, 0.2]"]),
    "tiers-cut-above-one": (_set_tiers("cuts", [0.3, 1.5]), ["tiers.cuts[1] is 1.5"]),
    "tiers-cut-nan": (_set_tiers("cuts", [0.3, float("nan")]),
                      ["tiers.cuts[1] is the token NaN"]),
    "tiers-names-string": (_set_tiers("names", "ab"),
                           ["intent tiers are malformed", "names", "'ab'"]),
    "tiers-no-method": (lambda meta: meta["tiers"].pop("method"),
                        ["intent tiers are malformed", "method"]),
    "tiers-not-object": (_set("tiers", "browsing,likely"),
                         ["intent tiers are str, expected an object"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("fault", list(METADATA_FAULTS))
def test_bad_tiers_or_empty_score_is_one_artifact_error_naming_the_key(fault, tiny_artifact, tmp_path):
    change, phrases = METADATA_FAULTS[fault]
    path = _rewritten(tmp_path, tiny_artifact, change, fault)
    with pytest.raises(ArtifactError) as caught:
        read_artifact(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: "), message
    assert all(phrase in message for phrase in phrases), message
    assert "\n" not in message and len(message) < 400, message
    with pytest.raises(ArtifactError):
        Scorer.load(path, verify=False)


@pytest.mark.slow
def test_an_artifact_without_them_still_loads(tiny_artifact, tmp_path):
    def older(meta: dict) -> None:
        del meta["empty_session_probability"], meta["tiers"]

    _, info = read_artifact(_rewritten(tmp_path, tiny_artifact, older, "older"))
    assert info.empty_session_probability is None and info.tiers is None
    assert info.intent_tiers() is None
    assert "tiers" not in info.to_dict() and "empty_session_probability" not in info.to_dict()


def test_a_tier_left_empty_by_repeated_scores_is_refused():
    # Half the sessions at 0.1, half at 0.2: shares (0.4, 0.3, 0.3) would cut at 0.1 and 0.2
    # and leave the lowest tier without a session.
    with pytest.raises(ConfigError, match="too few distinct scores"):
        IntentTiers.fit_shares(np.repeat([0.1, 0.2], 50), (0.4, 0.3, 0.3), NAMES)
    two = IntentTiers.fit_shares(np.repeat([0.1, 0.2], 50), (0.5, 0.5), ("low", "high"))
    assert two.cuts == (0.2,)


# --- ties: blocks of equal scores (full-integer artifacts score in steps of 1/256) ----------


TIED = np.array([0.1] * 60 + [0.2] * 30 + [0.3] * 10)


@pytest.mark.parametrize("fit", ["expected-buyers", "shares"])
def test_blocks_of_tied_scores_are_cut_between_the_blocks(fit):
    p = np.random.default_rng(2).permutation(TIED)
    if fit == "shares":
        tiers = IntentTiers.fit_shares(p, (0.5, 0.3, 0.2), NAMES)
        assert tiers.method == SHARES
    else:
        tiers = IntentTiers.fit_expected_buyers(p, NAMES)
        assert tiers.method == EXPECTED_BUYERS
    # The cut-offs fall inside the 0.1 and the 0.2 blocks: each block goes to the tier above
    # it, which leaves every tier a block of its own.
    assert tiers.cuts == (0.2, 0.3), tiers.cuts
    assert np.bincount(tiers.tier_index(p), minlength=3).tolist() == [60, 30, 10]
    assert [tiers.tier_of(v) for v in (0.1, 0.2, 0.3)] == list(NAMES)


def _grid_sample(n: int = 2000, seed: int = 4, block: float | None = None) -> np.ndarray:
    """Scores on a grid of 1/256, as a full-integer artifact's output: many tied blocks;
    with ``block``, half the sessions at that one score (a block holding more than a tier's
    share, where cutting at a session's score would leave a tier empty)."""
    p = np.round(_beta_sample(n, seed) * 256) / 256
    if block is not None:
        p[: n // 2] = block
    return np.random.default_rng(seed).permutation(p)


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("seed", [4, 9])
@pytest.mark.parametrize("block", [None, 20 / 256, 30 / 256, 40 / 256])
def test_scores_on_a_1_256_grid_fit_expected_buyers_without_splitting_ties(k, seed, block):
    p = _grid_sample(seed=seed, block=block)
    names = tuple(f"t{i}" for i in range(k))
    distinct, counts = np.unique(p, return_counts=True)
    assert len(distinct) <= 257 and len(distinct) < len(p) // 10  # blocks of ties
    tiers = IntentTiers.fit_expected_buyers(p, names, fitted_on="grid")
    assert len(tiers.cuts) == k - 1
    assert all(0.0 < a < b < 1.0 for a, b in zip(tiers.cuts, tiers.cuts[1:], strict=False)), tiers.cuts
    assert set(tiers.cuts) <= set(p.tolist()), (tiers.cuts, distinct)  # each a session's score
    index = tiers.tier_index(p)
    assert (np.bincount(index, minlength=k) > 0).all(), np.bincount(index, minlength=k)
    for value in distinct:  # all the sessions of one score are in one tier
        assert len(np.unique(index[p == value])) == 1, value
    # Each cut-off sits at the block where the running expected buyers pass k/K of them: off
    # the exact share by at most one block's expected buyers.
    largest_block = float((distinct * counts).max())
    for j, cut in enumerate(tiers.cuts, start=1):
        below = float(p[p < cut].sum())
        assert abs(below - j / k * p.sum()) <= largest_block + 1e-9, (j, cut, below, p.sum())


def test_scores_on_a_1_256_grid_fit_shares_within_one_block():
    p = _grid_sample()
    shares = (0.6, 0.3, 0.1)
    tiers = IntentTiers.fit_shares(p, shares, NAMES)
    distinct, counts = np.unique(p, return_counts=True)
    assert set(tiers.cuts) <= set(distinct.tolist())
    got = np.bincount(tiers.tier_index(p), minlength=3)
    assert (got > 0).all()
    cumulative = np.cumsum(got)[:-1]
    for c, target in zip(cumulative, np.cumsum(shares)[:-1] * len(p), strict=True):
        assert abs(c - target) <= counts.max(), (got, shares)


def test_fewer_distinct_scores_on_the_grid_than_tiers_is_still_a_config_error():
    p = np.repeat([3 / 256, 40 / 256], 1000)  # 2,000 sessions, two distinct scores
    for fit in (lambda: IntentTiers.fit_expected_buyers(p, NAMES),
                lambda: IntentTiers.fit_shares(p, (0.5, 0.3, 0.2), NAMES)):
        with pytest.raises(ConfigError) as caught:
            fit()
        assert str(caught.value) == "too few distinct scores (2 among 2000 sessions) for 3 tiers"
    two = IntentTiers.fit_expected_buyers(p, ("low", "high"))  # as many scores as tiers: fits
    assert two.cuts == (40 / 256,)


# --- MAX_TIERS, and what the options' parsers say ---------------------------------------------


def _many_names(n: int) -> tuple[str, ...]:
    return tuple(f"t{i}" for i in range(n))


def test_more_than_max_tiers_names_are_refused():
    check_names(_many_names(MAX_TIERS))  # the most accepted
    with pytest.raises(ConfigError) as caught:
        check_names(_many_names(MAX_TIERS + 1))
    message = str(caught.value)
    assert message == (f"intent tiers need 2 to {MAX_TIERS} names, got {MAX_TIERS + 1}: "
                       f"['t0', 't1', 't2', 't3', 't4']..."), message
    with pytest.raises(ConfigError, match=f"need 2 to {MAX_TIERS} names"):
        parse_names(",".join(_many_names(MAX_TIERS + 1)))
    with pytest.raises(ConfigError, match=f"need 2 to {MAX_TIERS} names"):
        IntentTiers(_many_names(MAX_TIERS + 1), tuple((i + 1) / 64 for i in range(MAX_TIERS)))


def _max_tiers() -> IntentTiers:
    return IntentTiers(_many_names(MAX_TIERS), tuple((i + 1) / 64 for i in range(MAX_TIERS - 1)))


def test_a_trigger_on_the_highest_of_max_tiers_fires_and_its_mask_fits_64_bits():
    tiers = _max_tiers()
    top = tiers.names[-1]
    rule = TriggerRule.for_names(tiers, [top])
    assert rule.watched == (MAX_TIERS - 1,)
    mask, fired = rule.update(0, 0.9)
    assert fired == [top] and mask == 1 << (MAX_TIERS - 1)
    assert rule.update(mask, 0.95) == (mask, [])  # fired once
    assert rule.update(mask, 0.1) == (0, [])  # far below its cut: re-armed
    # Every tier watched: a session jumping from nothing to the top fires them all, lowest first.
    every = TriggerRule.for_names(tiers, list(tiers.names[1:]))
    mask, fired = every.update(0, 0.9)
    assert fired == list(tiers.names[1:])
    assert mask == (1 << MAX_TIERS) - 2
    assert array("q", [mask])[0] == mask  # the store's column: a signed 64-bit integer


@pytest.mark.slow
def test_a_store_keeps_the_mask_of_max_tiers(tiny_artifact):
    from edge_runtime import SessionStore

    scorer = Scorer.load(tiny_artifact)
    event = {"ts": 1.7e9, "event": "view", "item": "1", "category": "c"}
    p = SessionStore(scorer, idle_timeout=None).push("probe", event)[0]
    assert p > 0.0
    # Every cut-off below the first event's score: it climbs into every tier at once.
    tiers = IntentTiers(_many_names(MAX_TIERS), tuple(np.linspace(p / 64, p / 2, MAX_TIERS - 1).tolist()))
    store = SessionStore(scorer, idle_timeout=None,
                         triggers=TriggerRule.for_names(tiers, list(tiers.names[1:])))
    _, _, fired = store.push_with_triggers("a", event)
    assert fired == list(tiers.names[1:])
    again = {**event, "ts": event["ts"] + 10}
    assert store.push_with_triggers("a", again)[2] == []  # the whole mask was kept
    assert store.push_with_triggers("b", event)[2] == list(tiers.names[1:])
    assert store.triggers_fired == 2 * (MAX_TIERS - 1)


def test_parse_numbers_names_the_option_and_the_value():
    assert parse_numbers("0.6, 0.3 ,0.1", "--tier-shares", "0.6,0.3,0.1") == (0.6, 0.3, 0.1)
    assert parse_numbers("1e-3", "--x", "1") == (0.001,)
    for text, bad in (("0.6,lots", "'lots'"), ("0.6,,0.4", "''"), ("", "''"), ("0.5, x y", "'x y'")):
        with pytest.raises(ConfigError) as caught:
            parse_numbers(text, "--tier-shares", "0.6,0.3,0.1")
        assert str(caught.value) == f"--tier-shares: {bad} is not a number (e.g. 0.6,0.3,0.1)", text


@pytest.mark.parametrize("shares", [
    (0.5, 0.5), (0.5, 0.3, 0.3), (0.5, 0.6, -0.1), (0.0, 0.5, 0.5), (0.5, 0.5 + 2e-6, 0.0),
    (0.2, 0.3, 0.5, 0.0),
])
def test_check_shares_says_what_it_needs(shares):
    with pytest.raises(ConfigError) as caught:
        check_shares(shares, NAMES)
    assert str(caught.value) == (f"tier shares must be 3 positive numbers summing to 1, one per "
                                 f"tier (browsing, considering, likely), got {list(shares)}")


def test_check_shares_accepts_a_sum_within_a_millionth():
    check_shares((0.5, 0.3, 0.2), NAMES)
    check_shares((0.5, 0.3, 0.2 + 5e-7), NAMES)
    check_shares((1 / 3, 1 / 3, 1 / 3), NAMES)


@pytest.mark.parametrize("value", [-0.1, 1.0, 1, 1.5, float("nan"), float("inf"), True, "0.1", None])
def test_check_hysteresis_refuses_what_is_no_fraction(value):
    with pytest.raises(ConfigError) as caught:
        check_hysteresis(value)
    assert str(caught.value) == f"hysteresis must be a fraction in [0, 1), got {value!r}"


def test_check_hysteresis_returns_a_float():
    assert check_hysteresis(0) == 0.0 and isinstance(check_hysteresis(0), float)
    assert check_hysteresis(0.25) == 0.25
    assert check_hysteresis(np.float64(0.5)) == 0.5


def test_too_many_cuts_are_refused_naming_the_option():
    with pytest.raises(ConfigError, match=r"--cuts: 32 cut-offs make 33 tiers; at most 32 tiers"):
        parse_cuts(",".join(str((i + 1) / 100) for i in range(32)))
    assert len(parse_cuts(",".join(str((i + 1) / 100) for i in range(31)))) == 31


def test_a_method_of_a_newer_ubp_edge_still_loads():
    d = IntentTiers(("a", "b"), (0.5,)).to_dict()
    assert IntentTiers.from_dict({**d, "method": "uplift-2027"}).method == "uplift-2027"
    with pytest.raises(ArtifactError, match="tier method"):
        IntentTiers.from_dict({**d, "method": ""})
