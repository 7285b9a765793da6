"""The reference artifacts in models/ work on a fresh clone: load, score, live, CLI."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from edge_runtime import Scorer

MODELS = Path(__file__).resolve().parents[1] / "models"
SHIPPED = sorted(MODELS.glob("*.tflite"))


def test_the_model_card_names_every_shipped_artifact_with_its_hash():
    card = (MODELS / "README.md").read_text()
    assert len(SHIPPED) == 2
    for path in SHIPPED:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert path.name in card and digest in card, path.name
        assert re.search(rf"{path.stat().st_size:,} B", card), path.name


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_reference_artifact_scores_whole_and_live(path):
    scorer = Scorer.load(path)
    assert scorer.info.provenance["training_data"] == "UserBehavior_sample.csv"
    assert scorer.info.spec.utc_offset_hours == 8.0 and scorer.has_step
    session = [{"ts": 1512000000.0 + 40 * i, "event": e, "item": "2268318", "category": "2520377"}
               for i, e in enumerate(["view", "view", "cart", "view"])]
    whole = float(scorer.score_sessions([session])[0])
    live = scorer.start_session()
    pushed = [live.push(e) for e in session]
    assert 0.0 < whole < 1.0
    assert abs(pushed[-1] - whole) <= (1e-5 if scorer.info.precision == "float32" else 0.05)


@pytest.mark.real_data
@pytest.mark.slow
def test_score_command_runs_the_shipped_model_on_taobao(tmp_path, taobao_path):
    out = tmp_path / "scores.jsonl"
    done = subprocess.run([sys.executable, "-m", "ubp_edge.cli", "score", "--model",
                           str(MODELS / "taobao-lstm128-dynamic.tflite"), "--data", str(taobao_path),
                           "--format", "taobao", "--out", str(out)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 10_696  # one line per session
    scored = [r for r in rows if r["probability"] is not None]
    assert len(scored) == 10_293 and all(0 <= r["probability"] <= 1 for r in scored)
