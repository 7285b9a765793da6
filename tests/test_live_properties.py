"""Property-based tests (hypothesis) of the live path's input (issue 10).

- `read_lines` gives back any lines, whatever their ends (``\\n``, ``\\r\\n``, ``\\r``) and
  however the stream is cut into reads.
- `serve_store` answers every line of any byte stream (random bytes, random JSON, huge
  numbers, deep nesting) with exactly one score or error line, in order, and never raises.
- `Scorer.encode_session` refuses an event on a session of 3 events exactly when it refuses
  it on a session of 40 (the one-event and the vectorised paths share `canonical_event`),
  with the same message, and what it accepts encodes to finite features.
- Past MAX_REMEMBERED_IDS distinct ids the batch and one-event encoders stay bit-identical.

The shipped reference artifact is the model; the file runs in about 20 s.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from edge_runtime import Scorer, SessionStore
from edge_runtime.errors import ConfigError
from edge_runtime.events import EVENT_TYPES, canonical_event
from edge_runtime.features import ALL_FEATURES, MAX_REMEMBERED_IDS, FeatureEncoder, FeatureSpec
from edge_runtime.serve import read_lines, serve_store

MODEL = Path(__file__).resolve().parents[1] / "models" / "taobao-lstm128-float32.tflite"
T0 = 1_700_000_000
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                     HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def scorer() -> Scorer:
    return Scorer.load(MODEL)


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20),
                         st.integers(10**300, 10**310), st.floats(allow_nan=True, allow_infinity=True),
                         st.text(max_size=8))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=6)
any_event = st.fixed_dictionaries(
    {"ts": st.one_of(st.integers(T0, T0 + 10**6), st.floats(T0, T0 + 1e6), json_values),
     "event": st.one_of(st.sampled_from(EVENT_TYPES), st.integers(-1, 4), json_values),
     "item": st.one_of(st.sampled_from(["a", "b", "", " "]), st.integers(0, 9), json_values)},
    optional={"category": st.one_of(st.sampled_from(["c", ""]), json_values),
              "price": st.one_of(st.floats(0, 1e6), json_values)})


# =========================================================================== line ends
@settings(max_examples=300, **SETTINGS)
@given(lines=st.lists(st.binary(max_size=12).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
                      max_size=12),
       ends=st.lists(st.sampled_from([b"\n", b"\r\n", b"\r"]), min_size=12, max_size=12),
       last_end=st.booleans(), chunk=st.integers(1, 20))
def test_read_lines_gives_back_any_lines_however_the_reads_cut_them(lines, ends, last_end, chunk):
    ends = list(ends)
    for i in reversed(range(len(lines) - 1)):  # from the end: a change moves left only
        if ends[i] == b"\r" and lines[i + 1] == b"" and ends[i + 1] != b"\r":
            ends[i] = b"\n"  # "\r" then an empty line ended by "\n" IS "\r\n": one end
    data = b"".join(text + end for text, end in zip(lines, ends, strict=False))
    if lines and not last_end and lines[-1]:
        data = data[:-len(ends[len(lines) - 1])]  # the last line without its end
    assert list(read_lines(io.BytesIO(data), chunk_bytes=chunk)) == lines


# =========================================================================== serve
hostile_line = st.one_of(
    st.binary(max_size=40),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.builds(lambda e, k: json.dumps({"session": k, **e}).encode(), any_event,
              st.one_of(st.sampled_from(["a", "b"]), json_values)),
    st.integers(1, 6000).map(lambda n: b'{"session": "a", "ts": 1' + b"0" * n + b"}"),
    st.integers(1, 200_000).map(lambda n: b"[" * n),
)


@settings(max_examples=150, **SETTINGS)
@given(lines=st.lists(hostile_line, min_size=1, max_size=8),
       ends=st.lists(st.sampled_from([b"\n", b"\r\n", b"\r"]), min_size=8, max_size=8))
@example(lines=[b"\xff", b"[" * 100_000, b'{"session": "a", "ts": 1' + b"0" * 400 + b"}"],
         ends=[b"\n"] * 8)
def test_serve_answers_every_line_of_any_stream(scorer, lines, ends):
    data = b"".join(text + end for text, end in zip(lines, ends, strict=False))
    split = list(read_lines(io.BytesIO(data)))
    out: list[str] = []
    store = SessionStore(scorer, max_sessions=2, idle_timeout=60)
    serve_store(store, split, out.append)
    answers = [json.loads(x) for x in out]
    answers = [a for a in answers if "removed" not in a]
    assert len(answers) == len(split)
    for number, answer in enumerate(answers, start=1):
        if "error" in answer:
            assert answer["line"] == number and answer["error"] and "\n" not in answer["error"]
        else:
            assert 0.0 <= answer["probability"] <= 1.0 and answer["events"] >= 1
    assert store.stats.pushed + store.stats.rejected == len(split)


# =========================================================================== one validation
@settings(max_examples=300, **SETTINGS)
@given(event=any_event)
@example(event={"ts": T0, "event": True, "item": "a"})
@example(event={"ts": T0, "event": 1.9, "item": "a"})
@example(event={"ts": T0, "event": "view", "item": "a", "price": "abc"})
@example(event={"ts": True, "event": "view", "item": "a"})
@example(event={"ts": T0, "event": "view", "item": None})
def test_short_and_long_sessions_refuse_an_event_alike(scorer, event):
    def outcome(length: int):
        session = [{"ts": T0 + i, "event": "view", "item": "x"} for i in range(length - 1)] + [event]
        try:
            x = scorer.encode_session(session)
        except ConfigError as e:
            return str(e).replace(f"event {length} ", "event N ")
        assert x.dtype == np.float32 and np.isfinite(x).all()
        return None

    short, long = outcome(3), outcome(40)
    assert short == long
    try:
        canonical_event(event)
        assert short is None
    except ConfigError as e:
        assert short == f"event N of the session: {e}"


# =========================================================================== the cap
@settings(max_examples=8, **SETTINGS)
@given(seed=st.integers(0, 2**32 - 1), pool=st.integers(MAX_REMEMBERED_IDS - 50, 3 * MAX_REMEMBERED_IDS),
       n=st.integers(MAX_REMEMBERED_IDS, 3 * MAX_REMEMBERED_IDS))
def test_batch_and_one_event_paths_agree_past_the_cap(seed, pool, n):
    rng = np.random.default_rng(seed)
    features = ALL_FEATURES
    enc = FeatureEncoder.from_spec(FeatureSpec(features, (0.0,) * len(features), (1.0,) * len(features)))
    item = rng.integers(pool, size=n)
    category = np.where(rng.random(n) < 0.2, -1, rng.integers(pool, size=n))  # -1: no category
    ts = T0 + np.cumsum(rng.integers(0, 100, size=n)).astype(np.float64)
    event = rng.integers(len(EVENT_TYPES), size=n)
    batch = enc.encode(ts, event, item, category, np.full(n, math.nan))
    state = enc.start()
    live = np.stack([enc.step(state, {"ts": ts[i], "event": int(event[i]), "item": int(item[i]),
                                      "category": None if category[i] < 0 else int(category[i])})
                     for i in range(n)])
    assert np.array_equal(batch, live)
