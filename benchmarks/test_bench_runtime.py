"""pytest-benchmark suites of the edge runtime: encode, score, batches, step (live), load.

Each test times one thing, parametrized over the artifacts (precision), and asserts the
result after timing. Run with `make bench`; saved runs compare with
`pytest-benchmark compare` (see the Makefile). The batch groups time one call on a batch
of consecutive replayed sessions (``extra_info["sessions"]`` says how many): divide to get
sessions per second, the figure `ubp-edge benchmark` reports as ``batch{64,256}_sessions_per_s``.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from benchmarks.conftest import ARTIFACTS, artifact_id
from benchmarks.measure import BATCH_SIZES
from benchmarks.sessions import consecutive_batches
from edge_runtime import Scorer


def _info(benchmark, scorer: Scorer, path) -> None:
    benchmark.extra_info.update(precision=scorer.info.precision, graph=scorer.info.graph,
                                size_bytes=path.stat().st_size, threads=1, backend=scorer.backend)


@pytest.mark.benchmark(group="encode")
@pytest.mark.parametrize("length", [1, 10, 50])
def test_encode_session(benchmark, sessions, length):
    scorer = Scorer.load(ARTIFACTS[0])
    pool = [e for s in sessions for e in s]
    session = [dict(pool[i % len(pool)], ts=1.7e9 + 30 * i) for i in range(length)]
    x = benchmark(scorer.encode_session, session)
    assert x.shape == (length, scorer.info.spec.n_features) and np.isfinite(x).all()


@pytest.mark.benchmark(group="score-session")
@pytest.mark.parametrize("path", ARTIFACTS, ids=artifact_id)
def test_score_replayed_session(benchmark, sessions, path):
    scorer = Scorer.load(path)
    _info(benchmark, scorer, path)
    cycle = itertools.cycle(sessions)
    p = benchmark(lambda: scorer.score_sessions([next(cycle)]))
    assert 0.0 <= float(p[0]) <= 1.0


@pytest.mark.benchmark(group="score-50-events")
@pytest.mark.parametrize("path", ARTIFACTS, ids=artifact_id)
def test_score_50_event_session(benchmark, sessions, path):
    scorer = Scorer.load(path)
    _info(benchmark, scorer, path)
    pool = [e for s in sessions for e in s]
    session = [dict(pool[i % len(pool)], ts=1.7e9 + 30 * i) for i in range(50)]
    p = benchmark(scorer.score_sessions, [session])
    assert 0.0 <= float(p[0]) <= 1.0


@pytest.mark.benchmark(group="score-encoded-batch")
@pytest.mark.parametrize("size", BATCH_SIZES)
@pytest.mark.parametrize("path", ARTIFACTS, ids=artifact_id)
def test_score_encoded_batch(benchmark, sessions, path, size):
    scorer = Scorer.load(path)
    _info(benchmark, scorer, path)
    [batch] = consecutive_batches(sessions, size)[:1]
    encoded = [scorer.encode_session(s) for s in batch]
    benchmark.extra_info.update(sessions=size, events=sum(len(x) for x in encoded))
    p = benchmark(scorer.score_encoded, encoded, batch_size=size)
    assert p.shape == (size,) and ((0.0 <= p) & (p <= 1.0)).all()
    np.testing.assert_allclose(p[:3], scorer.score_encoded(encoded[:3], batch_size=1), atol=1e-4)


@pytest.mark.benchmark(group="score-sessions-batch")
@pytest.mark.parametrize("path", ARTIFACTS, ids=artifact_id)
def test_score_sessions_batch(benchmark, sessions, path):
    scorer = Scorer.load(path)
    _info(benchmark, scorer, path)
    [batch] = consecutive_batches(sessions, BATCH_SIZES[0])[:1]
    benchmark.extra_info.update(sessions=len(batch))
    p = benchmark(scorer.score_sessions, batch)
    assert p.shape == (len(batch),) and ((0.0 <= p) & (p <= 1.0)).all()


@pytest.mark.benchmark(group="live-step")
@pytest.mark.parametrize("path", ARTIFACTS, ids=artifact_id)
def test_step_graph_bare_invoke(benchmark, sessions, path):
    scorer = Scorer.load(path)
    _info(benchmark, scorer, path)
    if not scorer.has_step:
        pytest.skip(f"{path.name} has no step graph")
    step = scorer.step_model()
    x = np.ascontiguousarray(scorer.encode_session(sessions[0])[0])
    h, c = np.zeros((1, step.units), np.float32), np.zeros((1, step.units), np.float32)
    p, h_out, _ = benchmark(step, x, h, c)
    assert 0.0 <= p <= 1.0 and h_out.shape == (1, step.units)


@pytest.mark.benchmark(group="live-step")
@pytest.mark.parametrize("path", ARTIFACTS, ids=artifact_id)
def test_live_push_one_event(benchmark, sessions, path):
    scorer = Scorer.load(path)
    _info(benchmark, scorer, path)
    live = scorer.start_session()
    clock = itertools.count()
    events = itertools.cycle([e for s in sessions for e in s])

    def push():
        return live.push(dict(next(events), ts=1.7e9 + 20 * next(clock)))

    p = benchmark(push)
    assert 0.0 <= p <= 1.0 and live.events > 0


@pytest.mark.benchmark(group="load")
@pytest.mark.parametrize("path", ARTIFACTS, ids=artifact_id)
def test_load_artifact(benchmark, path):
    scorer = benchmark(Scorer.load, path)
    benchmark.extra_info.update(size_bytes=path.stat().st_size, threads=1)
    assert scorer.info.spec.n_features > 0
