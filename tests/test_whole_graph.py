"""Whole sessions through either graph: the unrolled graph's chained chunks, staged batches,
sessions longer than the training window, and the batch encoder."""

from __future__ import annotations

import numpy as np
import pytest

from converters.graphs import CHUNK_STEPS, reference_states
from converters.precisions import PRECISIONS
from converters.tflite import artifact_path
from edge_runtime import Scorer
from edge_runtime.artifact import STEP_SIGNATURE
from edge_runtime.errors import ConfigError
from edge_runtime.whole_graph import FLOAT_STATE_PRECISIONS, chunk_key, chunk_plan
from trainer.readers import read_log
from trainer.rundir import RunDirectory
from trainer.sessions import sessionize


@pytest.mark.parametrize("length", [1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 50, 100, 1000])
def test_a_chunk_plan_covers_the_session_longest_chunks_first(length):
    plan = chunk_plan(length, CHUNK_STEPS)
    assert sum(plan) == length and plan == sorted(plan, reverse=True)
    assert all(t in CHUNK_STEPS for t in plan)
    if length <= 4:
        assert plan == [length]  # the common short sessions: one invoke


def test_a_chunk_plan_takes_the_longest_chunk_that_fits():
    assert chunk_plan(50, CHUNK_STEPS) == [16, 16, 16, 2]
    assert chunk_plan(7, CHUNK_STEPS) == [4, 3]
    assert chunk_plan(31, CHUNK_STEPS) == [16, 8, 4, 3]
    assert chunk_plan(5, (1, 2, 4)) == [4, 1]


def _long_sessions(synthetic_log, spec, count=6):
    """Event dicts of the synthetic log's sessions laid end to end by user: sessions of
    2-4x the training window (max_len), which the scorer must read whole."""
    log = read_log(synthetic_log)
    sessions = sessionize(log)
    order = sessions.order
    items, categories = log.item.values(), log.category.values()
    events = [{"ts": 1.6e9 + i * 30.0, "event": int(log.event[e]), "item": str(items[e]),
               "category": str(categories[e])} for i, e in enumerate(order)]
    lengths = [2 * spec.max_len + 3, 3 * spec.max_len + 1, 4 * spec.max_len + 5]
    out, start = [], 0
    for k in range(count):
        n = lengths[k % len(lengths)]
        out.append(events[start:start + n])
        start += n
    return out


@pytest.mark.slow
@pytest.mark.parametrize("graph", ["fused", "unrolled"])
@pytest.mark.parametrize("precision", ["float32", "dynamic", "int8"])
def test_live_and_whole_scores_agree_beyond_the_training_window(quantized_run, synthetic_log, graph,
                                                                 precision):
    """Issue 12: a kiosk's live score and the nightly batch score of the same session are one
    number at any length: whole sessions are no longer cut to max_len."""
    run, _ = quantized_run
    scorer = Scorer.load(artifact_path(run, precision, graph))
    worst = 0.0
    for events in _long_sessions(synthetic_log, scorer.info.spec, count=3):
        live = scorer.start_session()
        pushed = [live.push(e) for e in events]
        encoded = scorer.encode_sessions([events])[0]
        assert len(encoded) == len(events) > scorer.info.spec.max_len
        whole = scorer.score_encoded([encoded[:t] for t in (len(events) - 1, len(events))])
        worst = max(worst, abs(pushed[-2] - whole[0]), abs(pushed[-1] - whole[1]))
    assert worst <= PRECISIONS[precision].step_max_abs_diff, worst


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["float32", "dynamic", "int8-io"])
def test_batches_of_any_size_give_the_one_by_one_scores(quantized_run, synthetic_log, precision):
    run, _ = quantized_run
    scorer = Scorer.load(artifact_path(run, precision, "unrolled"))
    spec = scorer.info.spec
    rng = np.random.default_rng(0)
    lengths = [1, 1, 2, 3, 3, 3, 4, 5, 8, 9, 16, 17, 33, 2 * spec.max_len + 1, 1, 3]
    sessions = [rng.standard_normal((n, spec.n_features)).astype(np.float32) for n in lengths]
    one = np.array([scorer.score_features(x) for x in sessions], np.float32)
    for batch_size in (1, 2, 3, 64, 5, 64):  # chunks re-allocated, padded, then re-used
        # The same bits: a batch runs each session's chunks as one session does, or, with a
        # float state, its chunk of 3 as 2 then 1, which computes the same.
        np.testing.assert_array_equal(scorer.score_encoded(sessions, batch_size=batch_size), one,
                                      err_msg=f"batch_size {batch_size}")
    graph = scorer._whole_graph()
    expected = (16, 8, 4, 2, 1) if precision in FLOAT_STATE_PRECISIONS else (16, 8, 4, 3, 2, 1)
    assert graph.batch_steps == expected
    with pytest.raises(ConfigError, match="batch_size must be a whole number >= 1, got 0"):
        scorer.score_encoded(sessions, batch_size=0)


@pytest.mark.slow
def test_chained_chunks_follow_the_lstm_state_in_float32(quantized_run):
    """Each chunk hands on the LSTM's true state: the float32 artifact's chunks against a NumPy
    LSTM on the same weights, through the public scores of every prefix length."""
    run, _ = quantized_run
    scorer = Scorer.load(artifact_path(run, "float32", "unrolled"))
    weights = RunDirectory(run).weights
    x = np.random.default_rng(1).standard_normal((40, scorer.info.spec.n_features)).astype(np.float32)
    h, _ = reference_states(weights, x)
    logits = h[1:] @ weights["dense_kernel"] + weights["dense_bias"]
    expected = (1 / (1 + np.exp(-logits))).reshape(-1)
    got = scorer.score_encoded([x[:t] for t in range(1, 41)], calibrated=False)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    from ai_edge_litert.interpreter import Interpreter

    keys = set(Interpreter(model_path=str(artifact_path(run, "float32", "unrolled"))).get_signature_list())
    assert keys == {chunk_key(t) for t in CHUNK_STEPS} | {STEP_SIGNATURE}


def test_the_batch_encoder_gives_the_one_session_encoder_numbers(tiny_artifact, synthetic_log):
    scorer = Scorer.load(tiny_artifact)
    sessions = _long_sessions(synthetic_log, scorer.info.spec)
    sessions = [s[:n] for s in sessions for n in (1, 3, 17, len(s))]  # both encoder paths
    contexts = [None if k % 3 else {"prior_sessions": k, "prior_purchases": 1, "open_cart_items": 2}
                for k in range(len(sessions))]
    many = scorer.encode_sessions(sessions, contexts)
    for events, context, x in zip(sessions, contexts, many, strict=True):
        np.testing.assert_array_equal(x, scorer.encode_session(events, context))
    np.testing.assert_array_equal(scorer.score_sessions(sessions, contexts),
                                  scorer.score_encoded([scorer.encode_session(s, c)
                                                        for s, c in zip(sessions, contexts, strict=True)]))


@pytest.mark.parametrize("sessions, contexts, message", [
    ([[{"ts": 1.7e9, "event": "view", "item": "a"}], []], None,
     "session 2: a session needs at least one event to be scored"),
    ([[{"ts": 1.7e9, "event": "view", "item": "a"}, {"ts": 1.7e9, "event": "teleport", "item": "a"}]],
     None, "session 1: event 2 of the session: event type 'teleport' not in"),
    ([[{"ts": 1.7e9, "event": "view", "item": "a"}]] * 2, [None, {"prior_sessions": "many"}],
     "session 2: context {'prior_sessions': 'many'}: values must be numbers"),
    ([[{"ts": 1.7e9, "event": "view", "item": "a"}]] * 2, [None],
     "2 sessions but 1 contexts"),
])
def test_the_batch_encoder_names_the_session_and_event_it_refuses(tiny_artifact, sessions, contexts,
                                                                   message):
    scorer = Scorer.load(tiny_artifact)
    with pytest.raises(ConfigError) as caught:
        scorer.encode_sessions(sessions, contexts)
    assert str(caught.value).startswith(message)
    with pytest.raises(ConfigError) as caught:  # and score_sessions says the same
        scorer.score_sessions(sessions, contexts)
    assert str(caught.value).startswith(message)
