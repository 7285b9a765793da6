"""Peers for `benchmark --peers`: Keras, ONNX Runtime and NumPy on the same weights and sessions."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import engines
from benchmarks.engines import (
    PARITY_BATCHES,
    Peer,
    batched,
    build_peers,
    check_parity,
    length_groups,
    numpy_lstm,
    numpy_lstm_batch,
    padded,
)
from converters.precisions import PRECISIONS
from edge_runtime.errors import ConfigError, RunDirError
from trainer import rundir
from trainer.rundir import RunDirectory

ROWS = [("keras-eager", "float32"), ("keras-function", "float32"), ("onnxruntime", "float32"),
        ("onnxruntime", "dynamic"), ("numpy", "float32")]


def _needs_onnxruntime() -> None:
    pytest.importorskip("onnx", reason="onnx is not installed (pip install 'ubp-edge[dev]')")
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'ubp-edge[dev]')")


def _parity(run):
    run = RunDirectory(run)
    return run.sessions("test"), run.keras_probability("test")


def _tolerance(precision: str) -> float:
    return PRECISIONS[precision].max_abs_diff


@pytest.fixture(scope="module")
def built(tiny_run, tmp_path_factory):
    """(rows by (engine, precision), workdir) of one build_peers on the tiny run."""
    _needs_onnxruntime()
    workdir = tmp_path_factory.mktemp("peers")
    return {(p.engine, p.precision): p for p in build_peers(tiny_run, workdir=workdir)}, workdir


def test_module_import_loads_no_engine():
    code = ("import sys, benchmarks.engines; "
            "print(sorted({'tensorflow', 'tf_keras', 'onnx', 'onnxruntime', 'tf2onnx'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_build_peers_refuses_a_missing_run_directory(tmp_path):
    with pytest.raises(RunDirError, match="no such run directory"):
        build_peers(tmp_path / "nowhere")


@pytest.mark.parametrize("threads", [0, -1, 1.5])
def test_build_peers_refuses_bad_threads(tmp_path, threads):
    with pytest.raises(ConfigError, match=rf"threads must be an integer >= 1, got {threads}"):
        build_peers(tmp_path, threads=threads)


@pytest.mark.slow
def test_numpy_lstm_matches_the_keras_probabilities(tiny_run):
    sessions, expected = _parity(tiny_run)
    score = numpy_lstm(dict(np.load(tiny_run / rundir.WEIGHTS)))
    got = np.array([score(x) for x in sessions])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_numpy_lstm_matches_a_hand_computed_step():
    # One unit, one feature, one step, every weight 0.5: z = 0.5 * x + 0.5 for each gate.
    arrays = {"lstm_kernel": np.full((1, 4), 0.5, np.float32),
              "lstm_recurrent_kernel": np.full((1, 4), 0.5, np.float32),
              "lstm_bias": np.full(4, 0.5, np.float32),
              "dense_kernel": np.full((1, 1), 2.0, np.float32),
              "dense_bias": np.full(1, -1.0, np.float32)}
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    z = 0.5 * 1.0 + 0.5
    c = sig(z) * np.tanh(z)
    h = sig(z) * np.tanh(c)
    assert numpy_lstm(arrays)(np.ones((1, 1), np.float32)) == pytest.approx(sig(2 * h - 1), abs=1e-6)


def test_numpy_lstm_refuses_a_session_of_the_wrong_width():
    arrays = {"lstm_kernel": np.zeros((3, 8), np.float32),
              "lstm_recurrent_kernel": np.zeros((2, 8), np.float32),
              "lstm_bias": np.zeros(8, np.float32), "dense_kernel": np.zeros((2, 1), np.float32),
              "dense_bias": np.zeros(1, np.float32)}
    with pytest.raises(ConfigError, match=r"expected one session of shape \(L, 3\), got \(4, 5\)"):
        numpy_lstm(arrays)(np.zeros((4, 5), np.float32))


@pytest.mark.slow
def test_build_peers_returns_five_rows_all_ok_within_tolerance(built):
    rows, _ = built
    assert list(rows) == ROWS
    for (engine, precision), peer in rows.items():
        assert peer.status == "ok", (engine, precision, peer.reason)
        assert peer.max_abs_diff is not None and peer.max_abs_diff <= _tolerance(precision), peer
        assert callable(peer.score) and callable(peer.score_batch)


@pytest.mark.slow
@pytest.mark.parametrize("size", PARITY_BATCHES)
def test_batched_peers_match_batch_1_and_keras_on_sessions_of_different_lengths(built, tiny_run, size):
    rows, _ = built
    sessions, expected = _parity(tiny_run)
    sessions, expected = sessions[:size + 7], np.asarray(expected[:size + 7], np.float64)
    assert len({len(x) for x in sessions}) > 5  # padded batches, not one length
    for (engine, precision), peer in rows.items():
        one = np.array([peer.score(x) for x in sessions])
        batch = np.concatenate([peer.score_batch(sessions[i:i + size])
                                for i in range(0, len(sessions), size)])
        assert batch.shape == (len(sessions),)
        # Dynamic quantization scales each call's activations, so a batch moves within the
        # precision's bound; float32 engines agree to float rounding.
        same = 1e-5 if precision == "float32" else _tolerance(precision)
        np.testing.assert_allclose(batch, one, rtol=0, atol=same, err_msg=engine)
        np.testing.assert_allclose(batch, expected, rtol=0, atol=_tolerance(precision), err_msg=engine)


def test_length_groups_cover_every_session_with_bounded_padding():
    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 60, size=300)
    groups = length_groups(lengths, slack=0.25)
    assert sorted(np.concatenate(groups).tolist()) == list(range(300))
    for group in groups:
        lens = lengths[group]
        assert (np.diff(lens) >= 0).all()
        assert len(group) * lens.max() <= 1.25 * lens.sum() or len(group) == 1
    assert len(groups) < 100  # similar lengths share a call
    [whole] = length_groups(lengths, slack=math.inf)
    assert len(whole) == 300
    assert [g.tolist() for g in length_groups([5, 1, 1, 4])] == [[1, 2], [3, 0]]
    assert length_groups([]) == []


def _random_weights(n_features=3, units=5, seed=0):
    rng = np.random.default_rng(seed)
    return {"lstm_kernel": rng.normal(0, 0.5, (n_features, 4 * units)).astype(np.float32),
            "lstm_recurrent_kernel": rng.normal(0, 0.5, (units, 4 * units)).astype(np.float32),
            "lstm_bias": rng.normal(0, 0.1, 4 * units).astype(np.float32),
            "dense_kernel": rng.normal(0, 1, (units, 1)).astype(np.float32),
            "dense_bias": np.array([0.1], np.float32)}


def test_numpy_lstm_batch_runs_each_session_for_its_own_length():
    weights = _random_weights()
    rng = np.random.default_rng(1)
    sessions = [rng.normal(size=(n, 3)).astype(np.float32) for n in (4, 1, 9, 4, 2, 9)]
    one = [numpy_lstm(weights)(x) for x in sessions]
    x, lengths = padded(sessions)
    assert x.shape == (6, 9, 3) and lengths.tolist() == [4, 1, 9, 4, 2, 9]
    assert (x[1, 1:] == 0).all()
    np.testing.assert_allclose(numpy_lstm_batch(weights)(x, lengths), one, rtol=0, atol=1e-6)
    # Grouped by length, as the benchmark calls it, in the sessions' order.
    score_batch = batched(numpy_lstm_batch(weights), slack=0.0)
    np.testing.assert_allclose(score_batch(sessions), one, rtol=0, atol=1e-6)


def test_numpy_lstm_batch_refuses_lengths_that_do_not_fit():
    score_padded = numpy_lstm_batch(_random_weights())
    with pytest.raises(ConfigError, match=r"expected a padded batch \(B, L, 3\) with B lengths in 1..L"):
        score_padded(np.zeros((2, 4, 3), np.float32), np.array([4, 5]))
    with pytest.raises(ConfigError, match="expected a padded batch"):
        score_padded(np.zeros((2, 4, 2), np.float32), np.array([4, 4]))


def test_check_parity_fails_a_peer_whose_batches_are_off():
    weights = _random_weights()
    rng = np.random.default_rng(2)
    sessions = [rng.normal(size=(n, 3)).astype(np.float32) for n in rng.integers(1, 12, size=70)]
    score = numpy_lstm(weights)
    expected = np.array([score(x) for x in sessions])

    def off_in_batches(batch):
        return np.array([score(x) for x in batch]) + 0.01

    ok = check_parity(Peer("numpy", "float32", "ok", score=score,
                           score_batch=batched(numpy_lstm_batch(weights))), sessions, expected)
    assert ok.status == "ok" and ok.max_abs_diff < 1e-5
    bad = check_parity(Peer("numpy", "float32", "ok", score=score, score_batch=off_in_batches),
                       sessions, expected)
    assert bad.status == "failed" and bad.score is None and bad.score_batch is None
    assert "by up to 0.01 on 70 test sessions, batches of 64 (allowed 0.0001)" in bad.reason


@pytest.mark.slow
def test_onnx_file_sizes_are_reported(built):
    rows, workdir = built
    for precision in ("float32", "dynamic"):
        peer = rows[("onnxruntime", precision)]
        assert peer.size_bytes == (workdir / f"model-{precision}.onnx").stat().st_size > 0
    assert rows[("onnxruntime", "float32")].reason.startswith("tf2onnx") or \
        rows[("onnxruntime", "float32")].reason.startswith("onnx.helper")
    assert all(rows[k].size_bytes is None for k in ROWS if k[0] != "onnxruntime")


@pytest.mark.slow
def test_hand_written_onnx_graph_when_tf2onnx_fails(tiny_run, monkeypatch):
    _needs_onnxruntime()

    def broken(_keras):
        raise RuntimeError("tf2onnx broke\nsecond line of the traceback")

    monkeypatch.setattr(engines, "onnx_via_tf2onnx", broken)
    rows = {(p.engine, p.precision): p for p in build_peers(tiny_run)}
    onnx_float = rows[("onnxruntime", "float32")]
    assert onnx_float.status == "ok", onnx_float.reason
    assert onnx_float.reason.startswith("onnx.helper graph")
    assert "tf2onnx broke" in onnx_float.reason and "second line" not in onnx_float.reason
    assert onnx_float.max_abs_diff <= _tolerance("float32")
    assert rows[("onnxruntime", "dynamic")].status == "ok", rows[("onnxruntime", "dynamic")].reason


@pytest.mark.slow
def test_a_failing_engine_becomes_its_row_and_the_others_go_on(tiny_run, monkeypatch):
    _needs_onnxruntime()  # without onnx the float row fails earlier, with another message

    def broken(_path, _threads):
        raise OSError("onnxruntime cannot load this\nmore")

    monkeypatch.setattr(engines, "ort_score", broken)
    rows = {(p.engine, p.precision): p for p in build_peers(tiny_run)}
    assert list(rows) == ROWS
    for key in (("onnxruntime", "float32"), ("onnxruntime", "dynamic")):
        assert rows[key].status == "failed"
        assert rows[key].reason == "OSError: onnxruntime cannot load this"
        assert rows[key].score is None and rows[key].score_batch is None
    for key in (("keras-eager", "float32"), ("keras-function", "float32"), ("numpy", "float32")):
        assert rows[key].status == "ok", rows[key].reason


@pytest.mark.slow
def test_a_peer_off_the_keras_scores_fails_with_the_figure(tiny_run, monkeypatch):
    monkeypatch.setattr(engines, "numpy_lstm", lambda arrays: lambda x: 2.0)
    monkeypatch.setattr(engines, "ort_score", lambda *a: (_ for _ in ()).throw(OSError("skip")))
    rows = {(p.engine, p.precision): p for p in build_peers(tiny_run)}
    bad = rows[("numpy", "float32")]
    assert bad.status == "failed" and bad.score is None
    assert bad.max_abs_diff > 1.0
    assert "scores differ from the Keras model by up to" in bad.reason
    assert "allowed 0.0001" in bad.reason
