"""Issue 13: an artifact opens in a plain LiteRT Interpreter, with no ubp-edge code, and its
graphs are called by name: ``score`` (the fused whole-session graph) and ``step`` (the live
one-event graph); an unrolled artifact's ``chunk_T`` beside ``step``."""

from __future__ import annotations

import numpy as np
import pytest
from artifact_layouts import split_step

from converters.metadata_writer import add_metadata
from converters.signatures import with_step_signature
from converters.tflite import artifact_path
from edge_runtime import Scorer
from edge_runtime.errors import ArtifactError
from edge_runtime.tflite_reader import read_metadata, signature_keys

SESSION = [{"ts": 1.7e9 + 40.0 * i, "event": ("view", "view", "cart")[i % 3], "item": str(i % 4),
            "category": "c", "price": 9.5} for i in range(9)]


def _plain(path):
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_path=str(path))


def test_a_plain_interpreter_calls_score_and_step_by_name(tiny_artifact):
    scorer = Scorer.load(tiny_artifact)
    x = scorer.encode_session(SESSION)
    interpreter = _plain(tiny_artifact)
    assert set(interpreter.get_signature_list()) == {"score", "step"}

    score = interpreter.get_signature_runner("score")
    whole = score(events=x[None])["probability"]
    assert whole.shape == (1, 1)
    assert float(whole[0, 0]) == scorer.score_features(x, calibrated=False)

    step = interpreter.get_signature_runner("step")
    units = scorer.step_model().units
    h = c = np.zeros((1, units), np.float32)
    live = scorer.start_session()
    for event, row in zip(SESSION, x, strict=True):
        out = step(event=row[None], h=h, c=c)
        h, c = out["h"], out["c"]
        assert float(out["probability"][0, 0]) == pytest.approx(live.push(event), abs=1e-7)
    assert float(out["probability"][0, 0]) == pytest.approx(float(whole[0, 0]), abs=1e-5)


@pytest.mark.slow
def test_an_unrolled_artifact_names_its_chunks_and_step(quantized_run):
    run, _ = quantized_run
    path = artifact_path(run, "dynamic", "unrolled")
    keys = signature_keys(path.read_bytes())
    assert keys[-1] == "step" and {k for k in keys if k.startswith("chunk_")} == set(keys[:-1])
    interpreter = _plain(path)
    chunk = interpreter.get_signature_runner("chunk_1")
    step = interpreter.get_signature_runner("step")
    scorer = Scorer.load(path)
    x = scorer.encode_session(SESSION[:1])
    units = scorer.step_model().units
    zeros = np.zeros((1, units), np.float32)
    by_chunk = chunk(events=x[None], h=zeros, c=zeros)["probability"]
    by_step = step(event=x, h=zeros, c=zeros)["probability"]
    assert abs(float(by_chunk[0, 0]) - float(by_step[0, 0])) < 1e-2


def test_the_step_signature_is_added_once_from_a_one_graph_model(tiny_artifact):
    model = tiny_artifact.read_bytes()
    whole, step = split_step(model)
    with pytest.raises(ArtifactError, match="already has a 'step' signature"):
        with_step_signature(model, step)
    with pytest.raises(ArtifactError, match="the step graph has 2 subgraphs and 2 signatures"):
        with_step_signature(whole, model)
    # Joined again, the pieces give the artifact's graphs back, by name.
    assert signature_keys(with_step_signature(whole, step)) == ["score", "step"]


def test_the_joined_model_needs_the_higher_of_the_two_runtime_versions(tiny_artifact):
    whole, step = split_step(tiny_artifact.read_bytes())

    def version(model: bytes) -> tuple[int, ...]:
        text = read_metadata(model)["min_runtime_version"].rstrip(b"\0").decode()
        return tuple(int(v) for v in text.split("."))

    newer = add_metadata(step, {"min_runtime_version": b"9.9.0".ljust(16, b"\0")})
    assert version(with_step_signature(whole, newer)) == (9, 9, 0)
    older = add_metadata(step, {"min_runtime_version": b"1.5.0".ljust(16, b"\0")})
    assert version(with_step_signature(whole, older)) == version(whole) > (1, 5, 0)
