"""Verification in a child process before the first load (edge_runtime.verify), and its cache.

The shipped dynamic-range artifact is the model: it loads in milliseconds and needs no
training. How a child that crashes is reported is tested with a stand-in child
(tests/verify_fake_child.py) that ends as each test asks, since no model is known to crash
every interpreter build; the crash the fuzz found is reproduced with a real model in
tests/test_artifact_faults.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edge_runtime import ArtifactError, ConfigError, MalformedModelError, Scorer
from edge_runtime import verify as verify_module
from edge_runtime.errors import UbpEdgeError
from edge_runtime.native_logs import native_log_of
from edge_runtime.verify import CACHE_ENV, TIMEOUT_ENV, cache_dir, verdict_key, verify_model

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "taobao-lstm128-dynamic.tflite"
SESSION = [{"ts": 1512000000.0 + 40 * i, "event": e, "item": "2268318", "category": "2520377"}
           for i, e in enumerate(["view", "view", "cart"])]
CRASH = ("the interpreter crashed on this model (SIGABRT) while verifying it in a child "
         "process; the file is damaged or not supported by this runtime")


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(folder))
    return folder


@pytest.fixture(scope="module")
def model() -> bytes:
    return MODEL.read_bytes()


@pytest.fixture
def fake_child(monkeypatch):
    """The stand-in child; the source name given to the loader says how it ends."""
    monkeypatch.setattr(verify_module, "CHILD_MODULE", "tests.verify_fake_child")


def _entries(cache: Path) -> list[Path]:
    return sorted((cache / "verdicts").glob("*.json")) if (cache / "verdicts").is_dir() else []


# ----------------------------------------------------------------------------- the verdict

def test_first_load_verifies_in_a_child_and_the_next_uses_the_cached_verdict(cache, model):
    first = Scorer.load(MODEL)
    assert first.verdict is not None and not first.verdict.cached
    assert first.verdict.backend == first.backend and first.verdict.step == "ok"
    [entry] = _entries(cache)
    stored = json.loads(entry.read_text())
    assert stored["format"] == "ubp-edge-verdict" and stored["key"] == entry.stem
    assert stored["key"] == verdict_key(model, first.backend, 1)
    second = Scorer.load(MODEL)
    assert second.verdict.cached and _entries(cache) == [entry]
    assert second.score_sessions([SESSION])[0] == first.score_sessions([SESSION])[0]
    live = second.start_session()
    assert [live.push(e) for e in SESSION][-1] == pytest.approx(
        float(second.score_sessions([SESSION])[0]), abs=0.05)
    # No temporary file is left beside the entry.
    assert sorted(p.name for p in (cache / "verdicts").iterdir()) == [entry.name]


def test_verify_false_loads_in_this_process_without_a_child(cache):
    scorer = Scorer.load(MODEL, verify=False)
    assert scorer.verdict is None and not _entries(cache)
    assert 0 < scorer.score_sessions([SESSION])[0] < 1


def test_the_key_covers_the_bytes_and_the_threads(model):
    key = verdict_key(model, "ai-edge-litert", 1)
    assert len(key) == 64 and key == verdict_key(bytes(bytearray(model)), "ai-edge-litert", 1)
    assert verdict_key(model, "ai-edge-litert", 2) != key
    other = bytearray(model)
    other[-1] ^= 1
    assert verdict_key(bytes(other), "ai-edge-litert", 1) != key


def test_a_verdict_of_another_key_or_a_damaged_entry_is_not_trusted(cache, model):
    Scorer.load(MODEL)
    [entry] = _entries(cache)
    for damage in (b"", b"{not json", json.dumps({"format": "ubp-edge-verdict", "version": 1,
                                                   "key": "0" * 64, "verdict": {}}).encode()):
        entry.write_bytes(damage)
        scorer = Scorer.load(MODEL)
        assert not scorer.verdict.cached  # verified again, and the entry rewritten
        assert json.loads(entry.read_text())["key"] == entry.stem


@pytest.mark.parametrize("where", ["under-a-file", "in-proc"])
def test_an_unusable_cache_means_verifying_every_time_never_an_error(tmp_path, monkeypatch, where):
    if where == "under-a-file":
        (tmp_path / "file").write_text("x")
        folder = tmp_path / "file" / "cache"  # mkdir fails: NotADirectoryError
    else:
        folder = Path("/proc/self/ubp-edge-cache")  # no one may create it, root included
    monkeypatch.setenv(CACHE_ENV, str(folder))
    for _ in range(2):
        scorer = Scorer.load(MODEL)
        assert not scorer.verdict.cached and 0 < scorer.score_sessions([SESSION])[0] < 1


def test_the_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv(CACHE_ENV)
    assert cache_dir() == tmp_path / "xdg" / "ubp-edge"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")  # the XDG spec says: ignore it
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "ubp-edge"


def test_common_damage_is_refused_in_this_process_before_any_child(cache, model, monkeypatch):
    # A graph the reader refuses never reaches a child: its usual class and message.
    monkeypatch.setattr(verify_module, "CHILD_MODULE", "no.such.module")
    with pytest.raises(MalformedModelError, match=r"^m\.tflite: truncated or corrupted TFLite"):
        verify_model(model[:len(model) * 2 // 3], source="m.tflite")
    assert not _entries(cache)


def test_a_bad_timeout_is_a_config_error(cache, model, monkeypatch):
    monkeypatch.setenv(TIMEOUT_ENV, "soon")
    with pytest.raises(ConfigError, match="UBP_EDGE_VERIFY_TIMEOUT='soon' is not a number"):
        Scorer.from_bytes(model)
    with pytest.raises(ConfigError, match="positive number of seconds, got -1"):
        verify_model(model, timeout=-1)


# ----------------------------------------------------------------------------- how a child ends

@pytest.mark.parametrize("mode, phrase", [
    ("abort-whole", CRASH),
    ("segv-whole", "the interpreter crashed on this model (SIGSEGV) while verifying it"),
    ("kill-whole", "the child process verifying the model was killed by SIGKILL"),
    ("exit-whole", "the child process verifying the model exited with status 3"),
    ("silent-whole", "the child process verifying the model ended without a verdict"),
    ("ok-teardown", CRASH),
])
def test_a_child_that_dies_is_one_artifact_error_and_no_verdict_is_cached(cache, model, fake_child,
                                                                         mode, phrase):
    with pytest.raises(ArtifactError) as caught:
        Scorer.from_bytes(model, source=mode)
    assert str(caught.value) == f"{mode}: {phrase}" or (
        str(caught.value).startswith(f"{mode}: {phrase}")), str(caught.value)
    assert "\n" not in str(caught.value)
    if mode != "silent-whole":
        # What the child wrote is kept on the error (shown under --verbose), not printed.
        assert "fake child says" in (native_log_of(caught.value) or "")
    assert not _entries(cache)  # a crash is verified again next time


def test_a_child_refusal_keeps_its_class_and_message(cache, model, fake_child):
    with pytest.raises(MalformedModelError, match=r"^refuse-whole: refused whole$"):
        Scorer.from_bytes(model, source="refuse-whole")
    assert not _entries(cache)


def test_a_child_that_hangs_is_stopped_at_the_timeout(cache, model, fake_child, monkeypatch):
    monkeypatch.setenv(TIMEOUT_ENV, "1.5")
    with pytest.raises(ArtifactError, match=r"^hang-whole: verifying the model in a child process "
                                            r"took over 1.5 s"):
        Scorer.from_bytes(model, source="hang-whole")


def test_lines_that_are_not_verdicts_are_ignored(cache, model, fake_child):
    scorer = Scorer.from_bytes(model, source="garbled-whole")
    assert scorer.verdict.step == "ok" and _entries(cache)


def test_a_step_graph_the_child_died_on_is_refused_and_never_loaded(cache, model, fake_child):
    scorer = Scorer.from_bytes(model, source="abort-step")
    assert 0 < scorer.score_sessions([SESSION])[0] < 1  # the whole graph was verified
    for _ in range(2):  # every time, without loading it
        with pytest.raises(ArtifactError) as caught:
            scorer.start_session()
        assert str(caught.value) == f"abort-step: step graph: {CRASH}"
    assert scorer.verdict.step == "refused" and not _entries(cache)


def test_a_step_graph_refusal_is_cached_and_names_the_file_it_is_loaded_from(cache, model,
                                                                             fake_child):
    scorer = Scorer.from_bytes(model, source="refuse-step")
    with pytest.raises(ArtifactError, match=r"^refuse-step: step graph: refused step$"):
        scorer.start_session()
    [entry] = _entries(cache)
    again = Scorer.from_bytes(model, source="elsewhere/refuse-step")
    assert again.verdict.cached
    with pytest.raises(ArtifactError, match=r"^elsewhere/refuse-step: step graph: refused step$"):
        again.score_step([0.0] * again.info.spec.n_features, [[0.0], [0.0]])
    assert _entries(cache) == [entry]


def test_the_child_gets_a_minimal_environment(cache, model, monkeypatch):
    seen = {}
    real_run = subprocess.run

    def spy(command, **kwargs):
        seen.update(command=command, env=kwargs["env"], cwd=kwargs["cwd"])
        return real_run(command, **kwargs)

    monkeypatch.setenv("UBP_EDGE_HUGE_WORK", "x" * 100_000)
    monkeypatch.setattr(subprocess, "run", spy)  # verify imports it when it starts a child
    Scorer.from_bytes(model)
    assert set(seen["env"]) <= set(verify_module.ENVIRONMENT)
    assert seen["command"][0] == sys.executable and "edge_runtime.verify_child" in seen["command"]
    assert Path(seen["cwd"]) == ROOT


def test_the_real_child_refuses_as_the_host_would(cache, tmp_path):
    # The step graph replaced by bytes that are not a model, re-sealed: the real child
    # refuses the step graph with the reader's message; the whole graph loads and scores.
    from artifact_layouts import version_1

    path = tmp_path / "bad-step.tflite"
    path.write_bytes(version_1(MODEL.read_bytes(), b"\0" * 64))
    scorer = Scorer.load(path)
    assert scorer.verdict.step == "refused" and 0 < scorer.score_sessions([SESSION])[0] < 1
    with pytest.raises(ArtifactError, match=rf"^{path}: step graph: not a TFLite flatbuffer"):
        scorer.start_session()
    assert Scorer.load(path).verdict.cached


def test_the_child_runs_alone(model):
    # python -m edge_runtime.verify_child, as the host starts it: one verdict line per stage.
    done = subprocess.run([sys.executable, "-m", "edge_runtime.verify_child", "ai-edge-litert", "1",
                           "m.tflite"], input=model, capture_output=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in done.stdout.decode().splitlines()]
    assert rows == [{"stage": "whole", "ok": True, "backend": "ai-edge-litert"},
                    {"stage": "step", "ok": True}]
    usage = subprocess.run([sys.executable, "-m", "edge_runtime.verify_child"], capture_output=True,
                           cwd=ROOT, timeout=120)
    assert usage.returncode == 2 and b"usage:" in usage.stderr


def test_every_error_of_a_verification_is_in_the_family(cache, model, fake_child):
    for mode in ("abort-whole", "refuse-whole", "kill-whole"):
        with pytest.raises(UbpEdgeError):
            Scorer.from_bytes(model, source=mode)


def test_doctor_reports_the_verdict_per_backend(cache, tmp_path, monkeypatch):
    from converters.metadata_writer import add_metadata, seal
    from edge_runtime.doctor import doctor

    [row] = doctor(MODEL, backends=("ai-edge-litert",))["backends"]
    assert (row["loads"], row["verified"]) == (True, "child process")
    [row] = doctor(MODEL, backends=("ai-edge-litert",))["backends"]
    assert row["verified"] == "cached" and row["live"]
    monkeypatch.setattr(verify_module, "CHILD_MODULE", "tests.verify_fake_child")
    crashing = tmp_path / "abort-whole.tflite"  # other bytes, so no cached verdict
    crashing.write_bytes(seal(add_metadata(MODEL.read_bytes(), {"other": b"x"})))
    [row] = doctor(crashing, backends=("ai-edge-litert",))["backends"]
    assert (row["loads"], row["verified"]) == (False, None)
    assert row["detail"] == f"{crashing}: {CRASH}"
