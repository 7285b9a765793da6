"""pytest-benchmark suites of the edge runtime: encode, score, step (live), load.

Each test times one thing, parametrized over the artifacts (precision), and asserts the
result after timing. Run with `make bench`; saved runs compare with
`pytest-benchmark compare` (see the Makefile).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from benchmarks.conftest import ARTIFACTS, artifact_id
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
