"""Target tables (issue 14, item 1): learned on the training split only, shipped as keyed
hashes, looked up alike by the batch and the one-event paths."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from edge_runtime.errors import ArtifactError, ConfigError
from edge_runtime.features import (
    TARGET_FEATURES,
    FeatureEncoder,
    FeatureSpec,
    default_features,
    id_digest,
    id_digests,
)
from edge_runtime.target_stats import MIN_SUPPORT, TargetTable, logit
from trainer.logsource import EventLogSource
from trainer.prepare import PrepareConfig, prepare
from trainer.prepdir import PrepDir

KEY = bytes(range(16))


def table(field="category", ids=("a", "b", "c"), sessions=(10, 3, 1), purchases=(5, 0, 1), base=0.1):
    return TargetTable.build(field, KEY, id_digests(list(ids)), np.array(sessions), np.array(purchases), base)


def test_an_id_reads_its_smoothed_rate_and_popularity_and_an_unknown_one_the_fallback():
    t = table()
    assert len(t) == 2  # "c" has fewer than MIN_SUPPORT sessions: no entry
    assert MIN_SUPPORT == 2
    rate, popularity = t.values_of(id_digest("a"))
    assert rate == pytest.approx(logit((5 + 20 * 0.1) / (10 + 20)), abs=2e-3)  # float16
    assert popularity == pytest.approx(np.log1p(10), abs=2e-3)
    fallback = (float(np.float16(logit(0.1))), 0.0)
    assert t.values_of(id_digest("c")) == fallback
    assert t.values_of(id_digest("never seen")) == fallback
    assert t.values_of(None) == fallback


def test_batch_lookup_equals_one_at_a_time_lookup():
    t = table(ids=[f"id{i}" for i in range(50)], sessions=np.arange(50) + 1,
              purchases=np.arange(50) % 3)
    names = [f"id{i}" for i in range(0, 80, 3)]
    got = t.columns(id_digests(names))
    want = np.array([t.values_of(id_digest(n)) for n in names])
    np.testing.assert_array_equal(got, want)
    known = np.arange(len(names)) % 2 == 0
    got = t.columns(id_digests(names), known)
    np.testing.assert_array_equal(got[~known], np.tile([t.fallback_rate, 0.0], ((~known).sum(), 1)))


def test_a_table_round_trips_through_the_spec_and_holds_no_id_in_clear():
    t = table(ids=["shoes-123", "bags-9", "hats"], sessions=(4, 5, 6), purchases=(1, 2, 3))
    features = default_features(False, True, False) + ("category_rate", "category_log_sessions")
    spec = FeatureSpec(features, (0.0,) * len(features), (1.0,) * len(features), tables=(t,))
    text = json.dumps(spec.to_dict())
    for name in ("shoes-123", "bags-9", "hats"):
        assert name not in text
    back = FeatureSpec.from_dict(json.loads(text))
    assert back.to_dict() == spec.to_dict()
    assert back.table("category").values_of(id_digest("bags-9")) == t.values_of(id_digest("bags-9"))


def test_a_spec_without_tables_is_still_version_1():
    spec = FeatureSpec(("is_view",), (0.0,), (1.0,))
    assert spec.to_dict()["version"] == 1 and "target_tables" not in spec.to_dict()


@pytest.mark.parametrize("damage, message", [
    (lambda d: d.update(hash_bytes=8), "hash_bytes"),
    (lambda d: d.update(entries=d["entries"] + 1), "bytes for"),
    (lambda d: d.update(hashes="!!!"), "malformed"),
    (lambda d: d.update(field="brand"), "field"),
    (lambda d: d.update(key="00"), "key has 1 bytes"),
])
def test_a_damaged_table_is_refused_naming_what_is_wrong(damage, message):
    d = table().to_dict()
    damage(d)
    with pytest.raises(ArtifactError, match=message):
        TargetTable.from_dict(d)


def test_unsorted_hashes_are_refused():
    d = table(ids=["a", "b", "d"], sessions=(3, 3, 3), purchases=(0, 1, 2)).to_dict()
    hashes = np.frombuffer(__import__("base64").b64decode(d["hashes"]), "<u4")[::-1].copy()
    d["hashes"] = __import__("base64").b64encode(hashes.tobytes()).decode()
    with pytest.raises(ArtifactError, match="ascending"):
        TargetTable.from_dict(d)


def test_a_target_feature_needs_its_table():
    features = ("is_view", "item_rate")
    with pytest.raises(ConfigError, match="item"):
        FeatureSpec(features, (0.0, 0.0), (1.0, 1.0))
    with pytest.raises(ConfigError, match="item"):
        FeatureEncoder(features)


def encoder_with_tables() -> FeatureEncoder:
    categories = table("category", ids=["c1", "c2"], sessions=(8, 4), purchases=(4, 0), base=0.2)
    items = table("item", ids=["i1", "i2", "i3"], sessions=(5, 5, 9), purchases=(0, 5, 2), base=0.2)
    features = default_features(True, True, False) + TARGET_FEATURES
    enc = FeatureEncoder(features, tables=(categories, items))
    rng = np.random.default_rng(0)
    return enc.set_normalisation(rng.normal(size=len(features)), rng.uniform(0.5, 2, size=len(features)))


def test_live_steps_give_the_batch_rows_bit_for_bit_with_tables():
    enc = encoder_with_tables()
    events = [{"ts": 1.7e9 + 30 * k, "event": ["view", "cart", "view", "fav"][k % 4],
               "item": ["i1", "i2", "i9", "i3", "i1"][k % 5],
               "category": ["c1", None, "c2", "c7"][k % 4], "price": 3.0} for k in range(12)]
    state = enc.start()
    live = np.stack([enc.step(state, e) for e in events])
    batch = enc.encode(np.array([e["ts"] for e in events]), np.array([0, 1, 0, 2] * 3),
                       np.array([e["item"] for e in events], object),
                       np.array([e["category"] or "" for e in events], object),
                       np.full(12, 3.0))
    np.testing.assert_array_equal(live, batch)
    # The target columns carry the looked-up values: the unknown category c7 and item i9
    # read the fallback, as does the event without a category.
    raw = enc.raw(np.array([e["ts"] for e in events]), np.zeros(12, np.int64),
                  np.array([e["item"] for e in events], object),
                  np.array([e["category"] or "" for e in events], object))
    rate = raw[:, enc.features.index("category_rate")]
    fallback = enc.tables[0].fallback_rate
    assert rate[1] == rate[3] == fallback and rate[0] != fallback and rate[2] != fallback


# ---------------------------------------------------------------------------- no leak

def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _write(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _prepared(path, out) -> PrepDir:
    prepare(PrepareConfig(source=EventLogSource(path, format="canonical"), out=str(out)))
    return PrepDir.open(out)


def _with_purchase_after(rows, at):
    """The log with a purchase of row ``at``'s item one second after it, by its user."""
    extra = dict(rows[at], ts=f"{float(rows[at]['ts']) + 1:.3f}", event="purchase")
    return rows[:at + 1] + [extra] + rows[at + 1:]


def _split_counts(prep):
    return {k: dict(v) for k, v in prep.manifest["counts"]["split"].items()}


def test_a_changed_test_or_validation_label_leaves_the_tables_unchanged(tmp_path, synthetic_log):
    rows = _rows(synthetic_log)
    base = _prepared(synthetic_log, tmp_path / "base")
    tables = base.spec.to_dict()["target_tables"]
    assert {t["field"] for t in tables} == {"category", "item"}
    rule = base.manifest["split_rule"]
    by_time = sorted(range(len(rows)), key=lambda i: float(rows[i]["ts"]))
    changed = {}
    for name, low, high in (("test", rule["test_from_ts"], float("inf")),
                            ("validation", rule["validation_from_ts"], rule["test_from_ts"])):
        # A view late in the split, by a user whose session has no purchase yet: one more
        # purchasing session in that split, nothing else moved.
        for i in reversed(by_time):
            if not (low + 3600 < float(rows[i]["ts"]) < high - 3600) or rows[i]["event"] != "view":
                continue
            log = tmp_path / f"{name}.csv"
            _write(log, _with_purchase_after(rows, i))
            prep = _prepared(log, tmp_path / f"prep-{name}")
            counts, before = _split_counts(prep), _split_counts(base)
            if counts[name]["positives"] == before[name]["positives"] + 1 and all(
                    counts[s]["sessions"] == before[s]["sessions"] for s in counts):
                changed[name] = prep
                break
    assert set(changed) == {"test", "validation"}
    for prep in changed.values():
        assert _split_counts(prep)["train"] == _split_counts(base)["train"]
        assert prep.spec.to_dict()["target_tables"] == tables
    # The control: a changed training label moves the tables (the test above can fail).
    first = by_time[len(by_time) // 10]
    log = tmp_path / "train.csv"
    _write(log, _with_purchase_after(rows, first))
    assert _prepared(log, tmp_path / "prep-train").spec.to_dict()["target_tables"] != tables


def test_without_target_stats_the_spec_has_no_tables(tmp_path, synthetic_log):
    prepare(PrepareConfig(source=EventLogSource(synthetic_log, format="canonical"),
                          out=str(tmp_path / "p"), target_stats=False))
    prep = PrepDir.open(tmp_path / "p")
    assert not prep.spec.tables and not set(prep.spec.features) & set(TARGET_FEATURES)
    assert prep.manifest["settings"]["target_stats"] is False


@pytest.mark.parametrize("value", [None, 5, [1], {"a": 1}])
def test_a_table_whose_arrays_are_not_text_is_refused(value):
    d = table().to_dict()
    d["hashes"] = value
    with pytest.raises(ArtifactError, match="malformed"):
        TargetTable.from_dict(d)


@pytest.mark.parametrize("version", [True, 1.0, 2.0, "2"])
def test_a_spec_version_must_be_a_whole_number(version):
    d = FeatureSpec(("is_view",), (0.0,), (1.0,)).to_dict()
    d["version"] = version
    with pytest.raises(ArtifactError, match="version"):
        FeatureSpec.from_dict(d)


def test_target_features_must_come_last():
    t = table()
    features = ("category_rate", "is_view", "category_log_sessions")
    with pytest.raises(ConfigError, match="after every other feature"):
        FeatureSpec(features, (0.0,) * 3, (1.0,) * 3, tables=(t,))
    with pytest.raises(ConfigError, match="after every other feature"):
        FeatureEncoder(features, tables=(t,))


def test_a_fold_table_keeps_every_entry_and_popularity_and_only_the_rate_changes():
    ids = id_digests(["a", "b", "c"])
    full = TargetTable.build("category", KEY, ids, np.array([10, 3, 2]), np.array([5, 0, 1]), 0.1)
    fold = TargetTable.build("category", KEY, ids, np.array([10, 3, 2]), np.array([5, 0, 1]), 0.1,
                             rate_counts=(np.array([8, 1, 0]), np.array([2, 0, 0])))
    np.testing.assert_array_equal(fold.hashes, full.hashes)
    np.testing.assert_array_equal(fold.popularity, full.popularity)
    assert not np.array_equal(fold.rate, full.rate)
    # An id the other folds never saw reads the base rate, not the fallback's popularity 0.
    assert fold.values_of(id_digest("c")) == (pytest.approx(logit(0.1), abs=2e-3),
                                              full.values_of(id_digest("c"))[1])


@pytest.mark.parametrize("given, read", [(12.0, "12"), (" 12 ", "12"), (12, "12"), (1.5, "1.5"),
                                         ("\tshoes", "shoes"), (-3.0, "-3")])
def test_live_ids_are_read_as_the_log_readers_read_them(given, read):
    from edge_runtime.events import canonical_event

    event = canonical_event({"ts": 1.7e9, "event": "view", "item": given, "category": given})
    assert event.item == read and event.category == read

