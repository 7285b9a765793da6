"""Fixtures for the pytest-benchmark suites: artifacts and real session lengths.

Artifacts: the reference models in models/ (float32, dynamic), plus every model-*.tflite of
the run directory in UBP_EDGE_BENCH_RUN when it is set. Sessions: the Taobao sample in
../shared/data (or UBP_EDGE_DATA) when present, else the embedded synthetic sessions; both
come from `benchmarks.sessions`, as `ubp-edge benchmark`'s do.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("UBP_EDGE_DATA", ROOT.parent / "shared" / "data"))


def _artifacts() -> list[Path]:
    paths = sorted((ROOT / "models").glob("*.tflite"))
    run = os.environ.get("UBP_EDGE_BENCH_RUN")
    if run:
        paths += sorted(Path(run).glob("model-*.tflite"))
    return paths


ARTIFACTS = _artifacts()


def artifact_id(path: Path) -> str:
    return f"{path.parent.name}/{path.stem}"


@pytest.fixture(scope="session")
def sessions() -> list[list[dict]]:
    """Session prefixes as event dicts: real Taobao when present, else synthetic."""
    from benchmarks.sessions import replayed_sessions, synthetic_sessions
    from trainer.logsource import EventLogSource

    taobao = DATA / "taobao" / "UserBehavior_sample.csv"
    if taobao.is_file():
        return replayed_sessions(EventLogSource(taobao, format="taobao"), limit=1000)
    return synthetic_sessions()
