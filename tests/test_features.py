"""Tests of edge_runtime.features: batch vs one-event parity, golden numbers, spec and errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.errors import ArtifactError, ConfigError
from edge_runtime.events import EVENT_TYPES
from edge_runtime.features import (
    ALL_FEATURES,
    CONTEXT_FEATURES,
    CONTEXT_FIELDS,
    SPEC_VERSION,
    FeatureEncoder,
    FeatureSpec,
    default_features,
    id_digest,
)
from trainer.dataset import new_encoder, prefix_fields
from trainer.readers import read_log
from trainer.sessions import sessionize

DAY = 86400.0
MIDNIGHT = 1_699_920_000.0  # 2023-11-14 00:00:00 UTC (a multiple of 86400)
assert MIDNIGHT % DAY == 0


# --------------------------------------------------------------------------- helpers

def identity_encoder(features=ALL_FEATURES, utc_offset_hours=0.0, max_dt_seconds=86400.0):
    spec = FeatureSpec(tuple(features), (0.0,) * len(features), (1.0,) * len(features),
                       utc_offset_hours=utc_offset_hours, max_dt_seconds=max_dt_seconds)
    return FeatureEncoder.from_spec(spec)


def step_all(enc: FeatureEncoder, fields: dict, price_as_none: bool = False) -> np.ndarray:
    """Feed a session's fields through start/step one event at a time."""
    state = enc.start(fields.get("context"))
    n = len(fields["ts"])
    rows = []
    for j in range(n):
        price = None if fields.get("price") is None else fields["price"][j]
        if price_as_none and price is not None and not np.isfinite(price):
            price = None
        rows.append(enc.step(state, {
            "ts": fields["ts"][j],
            "event": EVENT_TYPES[int(fields["event"][j])],
            "item": fields["item"][j],
            "category": None if fields.get("category") is None else fields["category"][j],
            "price": price,
        }))
    return np.stack(rows) if rows else np.zeros((0, len(enc.features)), np.float32)


def assert_parity(enc: FeatureEncoder, fields: dict, **kw) -> None:
    batch = enc.encode(**fields)
    live = step_all(enc, fields, **kw)
    assert batch.dtype == np.float32 and live.dtype == np.float32
    assert batch.shape == live.shape == (len(fields["ts"]), len(enc.features))
    if not np.array_equal(batch, live):
        where = np.argwhere(batch != live)
        r, c = where[0]
        pytest.fail(f"batch != one-event at event {r} feature {enc.features[c]}: "
                    f"{batch[r, c]!r} vs {live[r, c]!r} ({len(where)} cells differ)")


def fitted_encoder(sessions, idx, max_len=50) -> FeatureEncoder:
    enc = new_encoder(sessions, max_len)
    rows = np.vstack([enc.raw(**prefix_fields(sessions, int(s))) for s in idx])
    return enc.fit(rows)


# --------------------------------------------------------------------------- parity

@pytest.mark.real_data
def test_parity_on_real_taobao_sessions(taobao_path):
    s = sessionize(read_log(taobao_path, "taobao"))
    idx = np.flatnonzero(s.scorable)[:500]
    assert len(idx) == 500
    enc = fitted_encoder(s, idx)
    assert enc.spec().uses_context and "repeat_category" in enc.features
    assert enc.utc_offset_hours == 8.0
    assert s.context[idx].any()  # some sessions carry user history
    for k in idx:
        assert_parity(enc, prefix_fields(s, int(k)))


def test_parity_on_synthetic_sessions(synthetic_log):
    s = sessionize(read_log(synthetic_log, "canonical"))
    idx = np.flatnonzero(s.scorable)
    enc = fitted_encoder(s, idx)
    assert "log_price" in enc.features and "repeat_category" in enc.features
    assert enc.spec().uses_context
    for k in idx[:400]:
        assert_parity(enc, prefix_fields(s, int(k)))


def test_parity_on_synthetic_sessions_with_nonzero_utc_offset(synthetic_log):
    s = sessionize(read_log(synthetic_log, "canonical"))
    idx = np.flatnonzero(s.scorable)[:100]
    base = fitted_encoder(s, idx)
    enc = FeatureEncoder.from_spec(FeatureSpec(base.features, base.spec().mean, base.spec().scale,
                                               utc_offset_hours=-5.5))
    for k in idx:
        assert_parity(enc, prefix_fields(s, int(k)))


def handmade_sessions() -> list[dict]:
    t = MIDNIGHT + 3 * 3600 + 0.25
    return [
        # repeats of items and categories, identical timestamps
        dict(ts=[t, t, t, t + 1, t + 1], event=[0, 1, 0, 2, 1], item=["a", "a", "b", "a", "c"],
             category=["x", "x", "y", "x", "y"], price=[1.0, 1.0, 2.5, 1.0, 99.99],
             context=[0, 0, 0]),
        # missing categories ("") - never a repeat, even when repeated
        dict(ts=[t, t + 5, t + 9, t + 10], event=[0, 0, 1, 0], item=[1, 2, 3, 1],
             category=["", "", "z", "z"], price=[np.nan, 3.0, np.nan, 0.0],
             context=[4, 2, 1]),
        # missing price everywhere (price None), category None
        dict(ts=[t, t + 60, t + 61], event=[0, 1, 1], item=["p", "q", "p"], category=None,
             price=None, context=None),
        # huge gaps beyond the max_dt_seconds cap, crossing midnight and days
        dict(ts=[t, t + 3 * DAY, t + 3 * DAY + 7, t + 40 * DAY + 1234.5], event=[0, 2, 0, 1],
             item=["a", "b", "a", "b"], category=["c1", "", "c1", "c2"],
             price=[5.0, np.nan, 5.0, 1e6], context={"prior_sessions": 3.0}),
        # a single event
        dict(ts=[t], event=[1], item=["solo"], category=["c"], price=[7.0],
             context=[1, 0, 1]),
        # a long session with many repeats and all event types before the first purchase
        dict(ts=list(t + np.cumsum(np.arange(30) % 4 * 100.0)), event=[j % 3 for j in range(30)],
             item=[f"i{j % 5}" for j in range(30)], category=[["", "k1", "k2"][j % 3] for j in range(30)],
             price=[float(j) if j % 4 else np.nan for j in range(30)], context=[10, 3, 2]),
    ]


@pytest.mark.parametrize("case", range(len(handmade_sessions())))
@pytest.mark.parametrize("features", [ALL_FEATURES, default_features(False, False, False)],
                         ids=["all", "minimal"])
def test_parity_on_handmade_sessions(case, features):
    fields = handmade_sessions()[case]
    enc = identity_encoder(features, utc_offset_hours=8.0, max_dt_seconds=3600.0)
    # Use non-trivial normalisation so the shared _normalise is exercised too.
    rng = np.random.default_rng(case)
    enc.mean_ = rng.normal(size=len(features))
    enc.scale_ = rng.uniform(0.5, 3.0, size=len(features))
    assert_parity(enc, fields)
    assert_parity(enc, fields, price_as_none=True)  # NaN prices sent as None on the device


def test_parity_with_event_codes_instead_of_names():
    fields = handmade_sessions()[0]
    enc = identity_encoder()
    batch = enc.encode(**fields)
    state = enc.start(fields["context"])
    live = np.stack([enc.step(state, {"ts": fields["ts"][j], "event": fields["event"][j],
                                      "item": fields["item"][j], "category": fields["category"][j],
                                      "price": fields["price"][j]})
                     for j in range(len(fields["ts"]))])
    assert np.array_equal(batch, live)


def test_huge_gap_is_capped_in_both_paths():
    enc = identity_encoder(["log_dt_prev", "log_elapsed"], max_dt_seconds=3600.0)
    ts = [MIDNIGHT, MIDNIGHT + 5 * DAY]
    raw = enc.raw(ts, [0, 0], ["a", "b"])
    assert raw[1, 0] == pytest.approx(math.log1p(3600.0), abs=1e-12)
    assert raw[1, 1] == pytest.approx(math.log1p(5 * DAY), abs=1e-12)  # elapsed is not capped
    state = enc.start()
    enc.step(state, {"ts": ts[0], "event": "view", "item": "a"})
    row = enc.step(state, {"ts": ts[1], "event": "view", "item": "b"})
    assert row[0] == np.float32(math.log1p(3600.0))


# --------------------------------------------------------------------------- golden numbers

def test_golden_raw_features_of_a_three_event_session():
    t0 = MIDNIGHT + 6 * 3600  # 06:00 UTC
    ts = [t0, t0 + 10, t0 + 70]
    event = [0, 1, 0]  # view, cart, view
    item = ["A", "A", "B"]
    category = ["X", "X", "X"]
    price = [10.0, 10.0, np.nan]
    context = [2, 1, 0]
    enc = identity_encoder()
    raw = enc.raw(ts, event, item, category, price, context)
    got = enc.encode(ts, event, item, category, price, context)
    assert raw.shape == got.shape == (3, len(ALL_FEATURES))
    col = {name: raw[:, i] for i, name in enumerate(ALL_FEATURES)}

    def close(name, expected):
        np.testing.assert_allclose(col[name], expected, rtol=0, atol=1e-6, err_msg=name)

    close("is_view", [1, 0, 1])
    close("is_cart", [0, 1, 0])
    close("is_fav", [0, 0, 0])
    close("is_purchase", [0, 0, 0])
    close("log_dt_prev", [0.0, math.log(11.0), math.log(61.0)])
    # 06:00 is a quarter of the day: angle pi/2; then +10 s and +70 s.
    a = [math.pi / 2, math.pi / 2 + 2 * math.pi * 10 / DAY, math.pi / 2 + 2 * math.pi * 70 / DAY]
    close("tod_sin", [1.0, math.sin(a[1]), math.sin(a[2])])
    close("tod_cos", [0.0, math.cos(a[1]), math.cos(a[2])])
    close("log_position", [0.0, math.log(2.0), math.log(3.0)])
    close("log_elapsed", [0.0, math.log(11.0), math.log(71.0)])
    close("repeat_item", [0, 1, 0])
    close("repeat_category", [0, 1, 1])
    close("log_carts_so_far", [0.0, math.log(2.0), math.log(2.0)])
    close("log_price", [math.log(11.0), math.log(11.0), 0.0])
    close("ctx_log_prior_sessions", [math.log(3.0)] * 3)
    close("ctx_log_prior_purchases", [math.log(2.0)] * 3)
    close("ctx_log_open_cart_items", [0.0] * 3)
    # mean 0 / scale 1: the encoded values are the raw ones in float32.
    np.testing.assert_allclose(got, raw, rtol=0, atol=1e-6)
    assert got.dtype == np.float32
    assert np.array_equal(got, step_all(enc, dict(ts=ts, event=event, item=item, category=category,
                                                  price=price, context=context)))


def test_golden_time_of_day_follows_utc_offset():
    enc = identity_encoder(["tod_sin", "tod_cos"], utc_offset_hours=-6.0)
    raw = enc.raw([MIDNIGHT + 12 * 3600], [0], ["a"])  # 12:00 UTC = 06:00 local
    np.testing.assert_allclose(raw[0], [1.0, 0.0], atol=1e-9)


def test_golden_normalisation_applies_mean_and_scale():
    spec = FeatureSpec(("log_position", "repeat_item"), (1.0, 0.5), (2.0, 0.25))
    enc = FeatureEncoder.from_spec(spec)
    got = enc.encode([MIDNIGHT, MIDNIGHT + 1], [0, 0], ["a", "a"])
    expected = np.array([[(0 - 1) / 2, (0 - 0.5) / 0.25], [(math.log(2) - 1) / 2, (1 - 0.5) / 0.25]])
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_negative_price_counts_as_missing():
    enc = identity_encoder(["log_price"])
    raw = enc.raw([MIDNIGHT, MIDNIGHT + 1], [0, 0], ["a", "b"], price=[-3.0, np.inf])
    assert raw[:, 0].tolist() == [0.0, 0.0]


# --------------------------------------------------------------------------- spec

def test_spec_round_trip():
    spec = FeatureSpec(("is_view", "log_dt_prev", "ctx_log_prior_sessions"), (0.1, 2.0, -1.0),
                       (1.0, 0.5, 3.0), utc_offset_hours=8.0, max_len=20, max_dt_seconds=600.0)
    d = spec.to_dict()
    assert d["version"] == SPEC_VERSION
    again = FeatureSpec.from_dict(d)
    assert again == spec
    assert again.to_dict() == d
    assert again.n_features == 3 and again.uses_context
    import json
    assert FeatureSpec.from_dict(json.loads(json.dumps(d))) == spec


@pytest.mark.parametrize("version", [0, 3, "1", None])
def test_spec_from_dict_other_version_raises_artifact_error(version):
    d = FeatureSpec(("is_view",), (0.0,), (1.0,)).to_dict()
    d["version"] = version
    with pytest.raises(ArtifactError, match=rf"version {version!r}"):
        FeatureSpec.from_dict(d)


def test_spec_from_dict_missing_version_names_none():
    d = FeatureSpec(("is_view",), (0.0,), (1.0,)).to_dict()
    del d["version"]
    with pytest.raises(ArtifactError, match="version None"):
        FeatureSpec.from_dict(d)


@pytest.mark.parametrize("mutate", [
    lambda d: d.pop("mean"),
    lambda d: d.update(features=["nonsense"]),
    lambda d: d.update(scale=[0.0]),
    lambda d: d.update(max_len="many"),
])
def test_spec_from_dict_malformed_raises_artifact_error(mutate):
    d = FeatureSpec(("is_view",), (0.0,), (1.0,)).to_dict()
    mutate(d)
    with pytest.raises(ArtifactError, match="malformed"):
        FeatureSpec.from_dict(d)


def test_spec_from_dict_not_a_mapping():
    with pytest.raises(ArtifactError):
        FeatureSpec.from_dict(["version", 1])


@pytest.mark.parametrize("kwargs,match", [
    (dict(features=("is_view", "bogus"), mean=(0, 0), scale=(1, 1)), "unknown features"),
    (dict(features=("is_view", "is_cart"), mean=(0,), scale=(1, 1)), "means"),
    (dict(features=("is_view",), mean=(0,), scale=(1, 1)), "means"),
    (dict(features=("is_view",), mean=(0,), scale=(0,)), "positive"),
    (dict(features=("is_view",), mean=(0,), scale=(-1,)), "positive"),
    (dict(features=("is_view",), mean=(float("nan"),), scale=(1,)), "finite"),
    (dict(features=("is_view",), mean=(0,), scale=(float("inf"),)), "positive"),
    (dict(features=(), mean=(), scale=()), "non-empty"),
    (dict(features=("is_view", "is_view"), mean=(0, 0), scale=(1, 1)), "distinct"),
    (dict(features=("is_view",), mean=(0,), scale=(1,), max_len=0), "max_len"),
    (dict(features=("is_view",), mean=(0,), scale=(1,), max_dt_seconds=0), "max_dt_seconds"),
])
def test_spec_validation_raises_config_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        FeatureSpec(**kwargs)


def test_encoder_unknown_feature_raises_config_error():
    with pytest.raises(ConfigError, match="unknown features"):
        FeatureEncoder(["is_view", "log_whatever"])


def test_encoder_not_fitted_raises_config_error():
    enc = FeatureEncoder(["is_view", "log_dt_prev"])
    with pytest.raises(ConfigError, match="not fitted"):
        enc.encode([MIDNIGHT], [0], ["a"])
    with pytest.raises(ConfigError, match="not fitted"):
        enc.spec()
    with pytest.raises(ConfigError, match="not fitted"):
        enc.step(enc.start(), {"ts": MIDNIGHT, "event": "view", "item": "a"})
    # raw needs no fit
    assert enc.raw([MIDNIGHT], [0], ["a"]).shape == (1, 2)


@pytest.mark.parametrize("event", [
    {"event": "view", "item": "a"},
    {"ts": MIDNIGHT, "item": "a"},
    {"ts": MIDNIGHT, "event": "view"},
])
def test_step_missing_field_raises_config_error(event):
    enc = identity_encoder()
    with pytest.raises(ConfigError, match="has no"):
        enc.step(enc.start(), event)


@pytest.mark.parametrize("kind", ["click", "VIEW", "", 4, -1, 99])
def test_step_unknown_event_type_raises_config_error(kind):
    enc = identity_encoder()
    with pytest.raises(ConfigError, match="event type"):
        enc.step(enc.start(), {"ts": MIDNIGHT, "event": kind, "item": "a"})


@pytest.mark.parametrize("ts", ["soon", None])
def test_step_bad_timestamp_raises_config_error(ts):
    enc = identity_encoder()
    with pytest.raises(ConfigError, match="not a number"):
        enc.step(enc.start(), {"ts": ts, "event": "view", "item": "a"})


def test_step_error_leaves_state_unchanged():
    enc = identity_encoder()
    state = enc.start()
    enc.step(state, {"ts": MIDNIGHT, "event": "cart", "item": "a"})
    with pytest.raises(ConfigError):
        enc.step(state, {"ts": MIDNIGHT + 1, "event": "bogus", "item": "b"})
    # The state remembers ids by digest (bounded memory), not by their text.
    assert state.n == 1 and state.carts == 1 and state.items == id_digest("a")


@pytest.mark.parametrize("context,match", [
    ({"prior_sessions": 1, "unknown": 2}, "context keys"),
    ([1, 2], "context has 2 values"),
])
def test_bad_context_raises_config_error(context, match):
    enc = identity_encoder()
    with pytest.raises(ConfigError, match=match):
        enc.start(context)
    with pytest.raises(ConfigError, match=match):
        enc.raw([MIDNIGHT], [0], ["a"], context=context)


def test_fit_sets_mean_and_scale_and_constant_features_get_scale_1():
    enc = FeatureEncoder(["is_view", "is_purchase", "log_position"])
    rows = np.vstack([enc.raw([MIDNIGHT, MIDNIGHT + 1, MIDNIGHT + 2], [0, 1, 0], ["a", "b", "c"]),
                      enc.raw([MIDNIGHT], [0], ["a"])])
    assert enc.fit(rows) is enc
    np.testing.assert_allclose(enc.mean_, rows.mean(axis=0))
    np.testing.assert_allclose(enc.scale_[[0, 2]], rows.std(axis=0)[[0, 2]])
    assert enc.scale_[1] == 1.0  # is_purchase is always 0 in a prefix
    spec = enc.spec()
    assert spec.mean == tuple(enc.mean_) and spec.scale == tuple(enc.scale_)
    # Normalised training rows: mean 0, and std 1 for the varying features.
    z = (rows - enc.mean_) / enc.scale_
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(z.std(axis=0)[[0, 2]], 1, atol=1e-12)


@pytest.mark.parametrize("rows", [np.zeros((0, 3)), np.zeros((4, 2)), np.zeros(3)])
def test_fit_bad_shape_raises_config_error(rows):
    with pytest.raises(ConfigError, match="fit needs"):
        FeatureEncoder(["is_view", "is_cart", "is_fav"]).fit(rows)


def test_spec_from_fitted_encoder_rebuilds_same_encoder():
    enc = FeatureEncoder(ALL_FEATURES, utc_offset_hours=3.0, max_len=7, max_dt_seconds=100.0)
    fields = handmade_sessions()[5]
    enc.fit(enc.raw(**fields))
    again = FeatureEncoder.from_spec(FeatureSpec.from_dict(enc.spec().to_dict()))
    assert np.array_equal(again.encode(**fields), enc.encode(**fields))
    assert (again.max_len, again.max_dt_seconds, again.utc_offset_hours) == (7, 100.0, 3.0)


# --------------------------------------------------------------------------- default_features

def test_default_features_keeps_everything_when_present():
    assert default_features(True, True, True) == ALL_FEATURES


@pytest.mark.parametrize("has_price", [True, False])
@pytest.mark.parametrize("has_category", [True, False])
@pytest.mark.parametrize("use_context", [True, False])
def test_default_features_drops_absent_fields(has_price, has_category, use_context):
    got = default_features(has_price, has_category, use_context)
    assert ("log_price" in got) == has_price
    assert ("repeat_category" in got) == has_category
    assert all((f in got) == use_context for f in CONTEXT_FEATURES)
    # Order follows ALL_FEATURES; the always-on features are all kept.
    assert list(got) == [f for f in ALL_FEATURES if f in got]
    always = set(ALL_FEATURES) - {"log_price", "repeat_category", *CONTEXT_FEATURES}
    assert always <= set(got)
    assert len(CONTEXT_FEATURES) == len(CONTEXT_FIELDS)


def test_new_encoder_follows_log_without_price_or_category(tmp_path: Path):
    path = tmp_path / "log.csv"
    path.write_text("session,ts,event,item\nS1,1700000000,view,a\nS1,1700000005,view,b\n")
    s = sessionize(read_log(path, "canonical"))
    enc = new_encoder(s, 10)
    assert enc.features == default_features(False, False, False)


def test_new_encoder_drops_all_empty_category_and_price(tmp_path: Path):
    path = tmp_path / "log.csv"
    path.write_text("user,ts,event,item,category,price\n"
                    "u,1700000000,view,a,,\nu,1700000005,view,b,,\n")
    s = sessionize(read_log(path, "canonical"))
    enc = new_encoder(s, 10)
    assert enc.features == default_features(False, False, True)
    assert new_encoder(s, 10, use_context=False).features == default_features(False, False, False)
