"""Tests of the synthetic log generator: determinism, shape, realism, CSV writing."""

from __future__ import annotations

import gzip
import hashlib
import os
import re

import numpy as np
import pyarrow.csv as pacsv
import pytest

from edge_runtime.errors import ConfigError
from edge_runtime.events import EVENT_TYPES
from trainer.synthetic import generate_events, iter_event_batches, write_canonical_csv, write_synthetic_log

COLUMNS = ("user", "ts", "event", "item", "category", "price")
SESSION_GAP_S = 30 * 60.0


@pytest.fixture(scope="module")
def default_log() -> dict[str, np.ndarray]:
    return generate_events()


@pytest.fixture(scope="module")
def small_log() -> dict[str, np.ndarray]:
    return generate_events(n_users=40, days=3, seed=11)


def _session_bounds(log: dict[str, np.ndarray]) -> np.ndarray:
    """Start indices of sessions plus the end, splitting each user at 30-min gaps."""
    user, ts = log["user"], log["ts"]
    new = np.r_[True, (user[1:] != user[:-1]) | (np.diff(ts) > SESSION_GAP_S)]
    return np.r_[np.flatnonzero(new), len(ts)]


def test_same_seed_gives_identical_arrays(small_log):
    again = generate_events(n_users=40, days=3, seed=11)
    assert again.keys() == small_log.keys()
    for name in COLUMNS:
        assert again[name].dtype == small_log[name].dtype
        np.testing.assert_array_equal(again[name], small_log[name])


# sha256 over the columns (name, dtype, bytes) of generate_events(n_users=50, days=3, seed=0),
# taken before the generator was cut into stages: a refactoring must leave every draw in place.
# (A numpy release that changed its distributions' streams would change it too.)
PINNED_DIGEST = "36ef326fb5dd0ac9958cc33f95ad43f8eef3990fe65136dd3431871696d099be"


def test_a_seed_pins_the_log_bit_for_bit():
    log = generate_events(n_users=50, days=3, seed=0)
    digest = hashlib.sha256()
    for name in sorted(log):
        column = np.ascontiguousarray(log[name])
        digest.update(name.encode())
        digest.update(str(column.dtype).encode())
        digest.update(column.tobytes())
    assert digest.hexdigest() == PINNED_DIGEST


def test_different_seed_gives_different_log(small_log):
    other = generate_events(n_users=40, days=3, seed=12)
    assert len(other["ts"]) != len(small_log["ts"]) or not np.array_equal(other["ts"], small_log["ts"])
    assert not np.array_equal(other["item"][:50], small_log["item"][:50])


def test_columns_shape_and_contract(default_log):
    log = default_log
    assert set(log) == set(COLUMNS)
    n = len(log["user"])
    assert n > 0
    assert all(len(log[c]) == n for c in COLUMNS)
    assert log["ts"].dtype == np.float64 and log["price"].dtype == np.float64
    assert np.all(np.isfinite(log["ts"])) and np.all(log["price"] > 0)
    assert set(np.unique(log["event"])) <= set(EVENT_TYPES)
    assert all(re.fullmatch(r"u\d{5}", u) for u in np.unique(log["user"]))
    assert len(np.unique(log["user"])) == 400

    # Sorted by (user, ts): users never go backwards, and time never goes
    # backwards within one user.
    user, ts = log["user"], log["ts"]
    same_user = user[1:] == user[:-1]
    assert np.all(user[1:] >= user[:-1])
    assert np.all(np.diff(ts)[same_user] > 0)

    # Sessions must be recoverable from gaps alone: within-session gaps stay
    # below 25 minutes, gaps between sessions exceed 90 minutes, nothing between.
    gaps = np.diff(ts)[same_user]
    assert not np.any((gaps >= 25 * 60) & (gaps <= 90 * 60))

    # The window starts at start_ts and spans the requested days (the last
    # session may run slightly over).
    assert ts.min() >= 1_700_000_000.0
    assert ts.max() < 1_700_000_000.0 + 9 * 86_400 + 6 * 3_600

    # Each item keeps one category and one price.
    item_keys = np.unique(np.stack([log["item"], log["category"], log["price"].astype(str)]), axis=1)
    assert item_keys.shape[1] == len(np.unique(log["item"]))


def test_start_ts_shifts_the_log(small_log):
    shifted = generate_events(n_users=40, days=3, seed=11, start_ts=1_600_000_000.0)
    np.testing.assert_allclose(
        shifted["ts"] - 1_600_000_000.0, small_log["ts"] - 1_700_000_000.0, atol=2e-3
    )
    np.testing.assert_array_equal(shifted["item"], small_log["item"])


def test_event_and_session_rates_on_defaults(default_log):
    event = default_log["event"]
    share = {name: float(np.mean(event == name)) for name in EVENT_TYPES}
    assert 0.85 <= share["view"] <= 0.90, share
    assert 0.05 <= share["cart"] <= 0.07, share
    assert 0.02 <= share["fav"] <= 0.04, share
    assert 0.015 <= share["purchase"] <= 0.03, share

    bounds = _session_bounds(default_log)
    session_id = np.repeat(np.arange(len(bounds) - 1), np.diff(bounds))
    has_purchase = np.bincount(session_id, weights=(event == "purchase")) > 0
    assert 0.08 <= has_purchase.mean() <= 0.14, has_purchase.mean()

    lengths = np.diff(bounds)
    assert 3 <= np.median(lengths) <= 5
    assert lengths.max() >= 50  # heavy tail
    # Roughly 1-6 sessions per user and day, as in the Taobao sample (~2).
    assert 1.0 <= len(lengths) / (400 * 9) <= 6.0


def test_purchases_are_of_carted_or_revisited_items(default_log):
    event, item, user = default_log["event"], default_log["item"], default_log["user"]
    bounds = _session_bounds(default_log)
    carted_by_user: dict[str, set[str]] = {}
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        carted = carted_by_user.setdefault(str(user[a]), set())
        views: dict[str, int] = {}
        for k in range(a, b):
            if event[k] == "view":
                views[item[k]] = views.get(item[k], 0) + 1
            elif event[k] == "cart":
                carted.add(item[k])
            elif event[k] == "purchase":
                assert item[k] in carted or views.get(item[k], 0) >= 2, (user[k], item[k])


def test_order_carries_signal_beyond_counts(default_log):
    # Among sessions with a cart, buyers touch a carted item right before the
    # purchase far more often than non-buyers do at the end of their session:
    # the same counts, a different order.
    event, item = default_log["event"], default_log["item"]
    bounds = _session_bounds(default_log)
    last_on_cart = {True: [], False: []}
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        ev = event[a:b]
        purchases = np.flatnonzero(ev == "purchase")
        end = int(purchases[0]) if len(purchases) else len(ev)
        prefix_items = item[a:a + end]
        carted = set(prefix_items[ev[:end] == "cart"])
        if carted:
            last_on_cart[bool(len(purchases))].append(prefix_items[-1] in carted)
    buyers, others = np.mean(last_on_cart[True]), np.mean(last_on_cart[False])
    assert buyers > others + 0.3, (buyers, others)


@pytest.mark.parametrize("kwargs", [{"n_users": 0}, {"days": 0}, {"n_users": 2.5}])
def test_impossible_configuration_is_rejected(kwargs):
    with pytest.raises(ConfigError):
        generate_events(**kwargs)


def test_write_canonical_csv_round_trip(tmp_path, small_log):
    path = tmp_path / "events.csv"
    written = write_canonical_csv(small_log, path)
    assert written == len(small_log["ts"])
    assert os.listdir(tmp_path) == ["events.csv"]  # no temp file left behind

    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == ",".join(COLUMNS)
    assert len(lines) == written + 1
    assert re.fullmatch(r"u\d{5},\d+\.\d{3},[a-z]+,[^,]+,[^,]+,\d+\.\d{2}", lines[1])

    table = pacsv.read_csv(path)
    assert table.num_rows == written
    assert table.column_names == list(COLUMNS)
    assert table.column("user").to_pylist() == small_log["user"].tolist()
    assert table.column("event").to_pylist() == small_log["event"].tolist()
    np.testing.assert_allclose(table.column("ts").to_numpy(), small_log["ts"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(table.column("price").to_numpy(), small_log["price"], atol=1e-9, rtol=0)


def test_write_canonical_csv_replaces_existing_file(tmp_path, small_log):
    path = tmp_path / "events.csv"
    path.write_text("stale\n", encoding="utf-8")
    write_canonical_csv(small_log, str(path))
    assert path.read_text(encoding="utf-8").startswith("user,ts,event,item,category,price\n")
    assert os.listdir(tmp_path) == ["events.csv"]


def test_write_canonical_csv_failure_keeps_old_file_and_no_temp(tmp_path, small_log, monkeypatch):
    path = tmp_path / "events.csv"
    path.write_text("previous\n", encoding="utf-8")

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_canonical_csv(small_log, path)
    assert path.read_text(encoding="utf-8") == "previous\n"
    assert os.listdir(tmp_path) == ["events.csv"]


def test_write_canonical_csv_rejects_ragged_columns(tmp_path, small_log):
    ragged = dict(small_log, price=small_log["price"][:-1])
    with pytest.raises(ValueError, match="length"):
        write_canonical_csv(ragged, tmp_path / "events.csv")
    missing = {k: v for k, v in small_log.items() if k != "item"}
    with pytest.raises(ValueError, match="item"):
        write_canonical_csv(missing, tmp_path / "events.csv")
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------ streamed generation

@pytest.mark.parametrize("batch_users", [1, 7, 40, 1_000])
def test_batches_concatenate_to_the_in_memory_log(small_log, batch_users):
    batches = list(iter_event_batches(n_users=40, days=3, seed=11, batch_users=batch_users))
    assert len(batches) == -(-40 // batch_users)
    users_per_batch = [len(np.unique(b["user"])) for b in batches]
    assert users_per_batch == [min(batch_users, 40 - k * batch_users) for k in range(len(batches))]
    for name in COLUMNS:
        joined = np.concatenate([b[name] for b in batches])
        assert joined.dtype == small_log[name].dtype
        np.testing.assert_array_equal(joined, small_log[name])


def test_streamed_csv_is_the_in_memory_csv_byte_for_byte(tmp_path, small_log):
    memory, streamed = tmp_path / "memory.csv", tmp_path / "streamed.csv"
    write_canonical_csv(small_log, memory)
    seen = []
    rows = write_synthetic_log(streamed, n_users=40, days=3, seed=11, batch_users=7,
                               on_batch=lambda users, events: seen.append((users, events)))
    assert rows == len(small_log["ts"])
    assert streamed.read_bytes() == memory.read_bytes()
    assert [u for u, _ in seen] == [7, 14, 21, 28, 35, 40]
    assert seen[-1][1] == rows and all(a[1] < b[1] for a, b in zip(seen, seen[1:], strict=False))
    assert sorted(os.listdir(tmp_path)) == ["memory.csv", "streamed.csv"]


# sha256 of the file `ubp-edge data generate OUT` writes with its defaults (400 users, 9 days,
# seed 0), taken before the generator streamed: the demo and many tests read this log.
DEFAULT_CSV_DIGEST = "5a1d5343cd5b1756349a405f2a3cbf311acd5cd8b131f9fb968d4b1c761fcbd2"


def test_default_streamed_log_keeps_its_bytes(tmp_path):
    path = tmp_path / "events.csv"
    assert write_synthetic_log(path) == 47_343
    assert hashlib.sha256(path.read_bytes()).hexdigest() == DEFAULT_CSV_DIGEST


def test_gz_name_writes_the_same_csv_gzipped_and_reproducibly(tmp_path, small_log):
    plain, packed = tmp_path / "events.csv", tmp_path / "events.csv.gz"
    write_synthetic_log(plain, n_users=40, days=3, seed=11, batch_users=9)
    write_synthetic_log(packed, n_users=40, days=3, seed=11, batch_users=9)
    first = packed.read_bytes()
    assert first[:2] == b"\x1f\x8b"
    assert gzip.decompress(first) == plain.read_bytes()
    write_canonical_csv(small_log, packed)  # the in-memory writer gzips a .gz name too
    assert packed.read_bytes() == first  # no timestamp or temporary name in the gzip header
    assert sorted(os.listdir(tmp_path)) == ["events.csv", "events.csv.gz"]


@pytest.mark.parametrize("kwargs", [{"n_users": 0}, {"days": 0}, {"batch_users": 0},
                                    {"batch_users": 1.5}])
def test_streamed_generation_refuses_bad_arguments_before_writing(tmp_path, kwargs):
    with pytest.raises(ConfigError):
        iter_event_batches(**kwargs)  # at the call, not at the first batch
    with pytest.raises(ConfigError):
        write_synthetic_log(tmp_path / "events.csv", **kwargs)
    assert os.listdir(tmp_path) == []


def test_streamed_generation_failure_leaves_no_file(tmp_path, monkeypatch):
    path = tmp_path / "events.csv"
    path.write_text("previous\n", encoding="utf-8")

    def failing(users, events):
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_synthetic_log(path, n_users=40, days=3, seed=11, batch_users=10, on_batch=failing)
    assert path.read_text(encoding="utf-8") == "previous\n"
    assert os.listdir(tmp_path) == ["events.csv"]


def test_cli_generate_streams_and_gzips(tmp_path, small_log):
    from typer.testing import CliRunner

    from ubp_edge.cli import app

    path = tmp_path / "events.csv.gz"
    result = CliRunner().invoke(app, ["data", "generate", str(path), "--users", "40", "--days", "3",
                                      "--seed", "11"])
    assert result.exit_code == 0, result.output
    assert f"wrote {len(small_log['ts']):,} events of 40 synthetic users" in result.output
    memory = tmp_path / "memory.csv"
    write_canonical_csv(small_log, memory)
    assert gzip.decompress(path.read_bytes()) == memory.read_bytes()
