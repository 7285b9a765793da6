"""Whole sessions score as live sessions do, however long; training keeps its window.

A session longer than the spec's ``max_len`` (the training window, 20 for the tiny run) is
scored on every event of its prefix by `score --data` (trainer.scoring.score_log), by
`score --engine local` (trainer.scoring_at_scale) and by `Scorer.score_sessions`: each gives
the probability a live session (`Scorer.start_session` + `push`) has after the last event.
Training, on the other hand, still sees at most ``max_len`` events per session.
"""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from converters.precisions import PRECISIONS
from edge_runtime.features import CONTEXT_FIELDS
from edge_runtime.scorer import Scorer
from trainer.dataset import encode_sessions
from trainer.logsource import EventLogSource
from trainer.scoring import score_log
from trainer.scoring_at_scale import score_at_scale

TOLERANCE = PRECISIONS["float32"].step_max_abs_diff
LONG_SESSIONS = 8  # the longest prefixes of the synthetic log, 2.5 to 8 times max_len


@pytest.fixture(scope="module")
def scorer(tiny_artifact) -> Scorer:
    return Scorer.load(tiny_artifact)


@pytest.fixture(scope="module")
def scored(scorer, synthetic_log):
    """`score`'s result on the synthetic log, and its longest scorable prefixes (positions in
    ``scored.index``), all longer than max_len."""
    result = score_log(scorer, EventLogSource(synthetic_log))
    longest = np.argsort(-result.prefix_len, kind="stable")[:LONG_SESSIONS]
    assert (result.prefix_len[longest] > scorer.info.spec.max_len).all()
    return result, longest


def prefix_events(scored_log, s: int) -> list[dict]:
    """Session ``s``'s prefix as the canonical event dicts a device sends."""
    log = scored_log.log
    return [{"ts": float(log.ts[e]), "event": int(log.event[e]), "item": str(log.item.values()[e]),
             "category": None if log.category is None else str(log.category.values()[e]),
             "price": None if log.price is None else float(log.price[e])}
            for e in scored_log.sessions.prefix_events(s)]


def context_of(scored_log, s: int) -> dict:
    return dict(zip(CONTEXT_FIELDS, scored_log.sessions.context[s].tolist(), strict=True))


@pytest.fixture(scope="module")
def live(scorer, scored) -> dict[str, float]:
    """Session key -> the live probability after the last event of its prefix."""
    result, longest = scored
    out = {}
    for i in longest:
        s = int(result.index[i])
        session = scorer.start_session(context_of(result, s))
        for event in prefix_events(result, s):
            p = session.push(event)
        assert session.events == result.prefix_len[i]
        out[str(result.sessions.key[s])] = p
    return out


def test_score_reads_the_whole_prefix_and_gives_the_live_score(scorer, scored, live):
    result, longest = scored
    keys = [str(result.sessions.key[result.index[i]]) for i in longest]
    got = result.probability[longest]
    np.testing.assert_allclose(got, [live[k] for k in keys], rtol=0, atol=TOLERANCE)
    # The old cut (the last max_len encoded events) parts from the live score: this test
    # tells the two apart.
    encoded = encode_sessions(result.sessions, result.index[longest], scorer.encoder, window=None)
    cut = scorer.score_encoded([x[-scorer.info.spec.max_len:] for x in encoded])
    assert np.abs(cut - got).max() > 10 * TOLERANCE


def test_score_sessions_reads_the_whole_session_and_gives_the_live_score(scorer, scored, live):
    result, longest = scored
    index = [int(result.index[i]) for i in longest]
    got = scorer.score_sessions([prefix_events(result, s) for s in index],
                                contexts=[context_of(result, s) for s in index])
    want = [live[str(result.sessions.key[s])] for s in index]
    np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCE)


def test_score_at_scale_reads_the_whole_prefix_and_gives_the_live_score(tmp_path, tiny_artifact,
                                                                         synthetic_log, scored, live):
    result, _ = scored
    out = tmp_path / "scores.parquet"
    score_at_scale(tiny_artifact, EventLogSource(synthetic_log), out, engine="local", buckets=2)
    rows = {r["session"]: r for r in pq.read_table(out).to_pylist()}
    assert all(r["events"] == r["prefix_len"] for r in rows.values())  # every event read
    np.testing.assert_allclose([rows[k]["probability"] for k in live], list(live.values()),
                               rtol=0, atol=TOLERANCE)
    # And `score`'s probability for every session, long or short.
    keys = result.sessions.key[result.index].astype(str)
    np.testing.assert_array_equal([rows[k]["probability"] for k in keys],
                                  result.probability.astype(np.float32))


def test_training_sees_at_most_max_len_events_per_session(tmp_path, synthetic_log, tiny_run):
    from trainer.prepare import PrepareConfig, prepare
    from trainer.prepdir import PrepDir
    from trainer.rundir import RunDirectory

    max_len = 20
    prepare(PrepareConfig(source=EventLogSource(synthetic_log), out=str(tmp_path / "prep"), max_len=max_len))
    prep = PrepDir.open(tmp_path / "prep")
    longer = 0
    for split in ("train", "validation", "test"):
        part = prep.read_split(split, features=False, baseline=False)
        np.testing.assert_array_equal(part.lengths, np.minimum(part.prefix_len, max_len))
        longer += int((part.prefix_len > max_len).sum())
    assert longer > 0  # sessions longer than the window exist, and were cut for training
    # What the tiny run's model was trained and checked on: its stored test sessions, cut too.
    run = RunDirectory(tiny_run)
    assert run.spec.max_len == max_len
    assert max(len(x) for x in run.sessions("test")) <= max_len


def test_a_window_is_a_whole_number_or_none(scored, scorer):
    result, longest = scored
    index = result.index[longest[:1]]
    (whole,) = encode_sessions(result.sessions, index, scorer.encoder, window=None)
    (cut,) = encode_sessions(result.sessions, index, scorer.encoder, window=5)
    assert len(whole) == result.prefix_len[longest[0]] and np.array_equal(cut, whole[-5:])
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="window must be a whole number >= 1 or None"):
            encode_sessions(result.sessions, index, scorer.encoder, window=bad)
