"""Shared fixtures: the real logs in ../shared/data, and one tiny model trained per session."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Real public logs (see ../shared/data/README.md); UBP_EDGE_DATA points elsewhere.
SHARED_DATA = Path(os.environ.get("UBP_EDGE_DATA", ROOT.parent / "shared" / "data"))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Verdicts of edge_runtime.verify (artifacts checked in a child process) go to a folder of
# this test session, not the user's ~/.cache; subprocesses the tests start inherit it.
_VERDICTS = tempfile.mkdtemp(prefix="ubp-edge-test-verdicts-")
os.environ.setdefault("UBP_EDGE_CACHE_DIR", _VERDICTS)
atexit.register(shutil.rmtree, _VERDICTS, ignore_errors=True)
# As the CLI does: oneDNN's reordered float sums would make figures differ between the two.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def real_file(relative: str) -> Path:
    """A file of the shared real data; the test skips with the reason when it is absent."""
    path = SHARED_DATA / relative
    if not path.is_file():
        pytest.skip(f"real data absent: {path} (set UBP_EDGE_DATA to the shared data folder)")
    return path


def spark_problem() -> str | None:
    """Why Spark cannot run on this machine (no pyspark, no Java 17), or None: the Spark tests
    skip with it, in the words `ubp-edge --engine spark` would say it."""
    from edge_runtime.errors import ConfigError
    from trainer.spark_session import check_spark

    try:
        check_spark("Spark")
    except ConfigError as e:
        return str(e)
    return None


@pytest.fixture(scope="session")
def taobao_path() -> Path:
    return real_file("taobao/UserBehavior_sample.csv")


@pytest.fixture(scope="session")
def synthetic_log(tmp_path_factory) -> Path:
    """A small seeded synthetic log (canonical CSV): 150 users over 6 days."""
    from trainer.synthetic import generate_events, write_canonical_csv

    path = tmp_path_factory.mktemp("synthetic") / "sessions.csv"
    write_canonical_csv(generate_events(n_users=150, days=6, seed=7), path)
    return path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, synthetic_log) -> Path:
    """A run directory with a tiny LSTM (8 units, 2 epochs) and its float32 artifact."""
    from converters.tflite import convert_run
    from trainer.train import TrainConfig, train

    run = tmp_path_factory.mktemp("runs") / "tiny"
    train(TrainConfig(data=str(synthetic_log), out=str(run), units=8, epochs=2, max_len=20,
                      batch_size=64, seed=1))
    results = convert_run(run, ["float32"])
    assert [r.status for r in results] == ["ok"], [r.reason for r in results]
    return run


@pytest.fixture(scope="session")
def tiny_artifact(tiny_run) -> Path:
    return tiny_run / "model-float32.tflite"


@pytest.fixture(scope="session")
def quantized_run(tmp_path_factory, synthetic_log):
    """A run with an LSTM of 64 units (2 epochs), converted at every precision, both graphs:
    (run dir, rows). Not tiny_run's 8 units: TensorFlow quantizes only weights of at least
    1,024 elements, so at 8 units the dynamic artifacts and the int8 step graphs would be
    float, and the hybrid kernels (issue 13: tflite-runtime 2.14) never tested."""
    from converters.tflite import ConvertConfig, convert_run
    from trainer.train import TrainConfig, train

    run = tmp_path_factory.mktemp("quantized") / "run"
    train(TrainConfig(data=str(synthetic_log), out=str(run), units=64, epochs=2, max_len=20,
                      batch_size=64, seed=1))
    rows = convert_run(run, config=ConvertConfig(graphs=("fused", "unrolled"), overwrite=True))
    return run, {(r.graph, r.precision): r for r in rows}
