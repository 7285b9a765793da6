"""Peers for `benchmark --peers`: Keras, ONNX Runtime and NumPy on the same weights and sessions."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from benchmarks import engines
from benchmarks.engines import build_peers, numpy_lstm
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
def test_score_equals_score_batch(built, tiny_run):
    rows, _ = built
    sessions, _ = _parity(tiny_run)
    few = sessions[:5]
    for peer in rows.values():
        batch = peer.score_batch(few)
        assert batch.shape == (len(few),)
        np.testing.assert_array_equal(batch, [peer.score(x) for x in few], err_msg=peer.engine)


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
