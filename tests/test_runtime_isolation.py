"""The runtime imports only numpy and a TFLite interpreter: checked in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("tensorflow", "tf_keras", "keras", "trainer", "converters", "pyarrow", "sklearn", "pandas")

SCRIPT = """
import json, sys
from edge_runtime import Scorer
scorer = Scorer.load(sys.argv[1])
p = scorer.score_sessions([[{"ts": 1.7e9, "event": "view", "item": "a", "category": "c", "price": 9.5},
                            {"ts": 1.7e9 + 40, "event": "cart", "item": "a", "category": "c", "price": 9.5}]])
loaded = sorted({m.split(".")[0] for m in sys.modules})
print(json.dumps({"p": float(p[0]), "modules": loaded, "backend": scorer.backend}))
"""


@pytest.mark.slow
def test_scoring_with_edge_runtime_loads_no_tensorflow(tiny_artifact):
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_artifact)], capture_output=True,
                          text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert 0.0 <= result["p"] <= 1.0
    assert result["backend"] == "ai-edge-litert"
    assert not set(HEAVY) & set(result["modules"]), set(HEAVY) & set(result["modules"])


def test_edge_runtime_source_imports_nothing_of_the_project_but_itself():
    import ast
    from pathlib import Path

    import edge_runtime

    allowed = {"numpy", "edge_runtime", "__future__", "ai_edge_litert", "tflite_runtime",
               "tensorflow"}  # tensorflow only as the last-resort backend, by name in backends.py
    stdlib = set(sys.stdlib_module_names)
    for path in Path(edge_runtime.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            for name in names:
                top = name.split(".")[0]
                assert top in allowed or top in stdlib, f"{path.name} imports {name}"


CLI_SCRIPT = """
import json, sys
from ubp_edge.cli import app
try:
    app(sys.argv[1:])
except SystemExit as e:
    code = e.code
loaded = sorted({m.split(".")[0] for m in sys.modules})
print(json.dumps({"code": code, "modules": loaded}), file=sys.stderr)
"""


@pytest.mark.slow
@pytest.mark.parametrize("command", ["score", "evaluate"])
def test_score_and_evaluate_commands_run_without_tensorflow(tiny_artifact, synthetic_log, tmp_path,
                                                            command):
    args = (["score", "--model", str(tiny_artifact), "--data", str(synthetic_log),
             "--out", str(tmp_path / "s.jsonl")] if command == "score"
            else ["evaluate", str(tiny_artifact), "--data", str(synthetic_log), "--json"])
    done = subprocess.run([sys.executable, "-c", CLI_SCRIPT, *args], capture_output=True, text=True)
    result = json.loads(done.stderr.strip().splitlines()[-1])
    assert result["code"] in (0, None), done.stderr
    assert not {"tensorflow", "tf_keras", "keras"} & set(result["modules"])


# ----------------------------------------------------------------------------- native output

def test_quiet_native_captures_fd2_and_restores_it(capfd):
    import os

    from edge_runtime.native_logs import quiet_native

    before = os.fstat(2).st_ino
    with quiet_native() as outer:
        os.write(2, b"native one\n")
        with quiet_native() as inner:  # nested: one redirection, each block its own span
            os.write(2, b"native two\n")
    os.write(2, b"after\n")
    assert os.fstat(2).st_ino == before
    assert outer.text == "native one\nnative two\n" and inner.text == "native two\n"
    assert capfd.readouterr().err == "after\n"


def test_quiet_native_keeps_the_output_on_a_failure_and_restores_fd2(capfd):
    import os

    from edge_runtime.native_logs import native_log_of, quiet_native

    before = os.fstat(2).st_ino
    for error in (ValueError("refused"), KeyboardInterrupt()):
        with pytest.raises(type(error)) as caught:
            with quiet_native():
                with quiet_native():
                    os.write(2, b"ERROR: the kernel says why\n")
                    raise error
        assert native_log_of(caught.value) == "ERROR: the kernel says why\n"
        assert [n for n in caught.value.__notes__ if "kernel says why" in n], caught.value.__notes__
        assert os.fstat(2).st_ino == before
    assert capfd.readouterr().err == ""


def test_verbose_lets_native_output_through(capfd):
    import os

    from edge_runtime.native_logs import is_verbose, quiet_native, set_verbose

    set_verbose(True)
    try:
        with quiet_native() as log:
            os.write(2, b"as written\n")
        assert is_verbose() and log.text == ""
    finally:
        set_verbose(False)
    assert capfd.readouterr().err == "as written\n"


def test_quiet_native_blocks_in_many_threads_restore_fd2(capfd):
    import os
    import threading

    from edge_runtime.native_logs import quiet_native

    before = os.fstat(2).st_ino
    seen: list[str] = []

    def work(i: int) -> None:
        for _ in range(50):
            with quiet_native() as log:
                os.write(2, f"thread {i}\n".encode())
            seen.append(log.text)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert os.fstat(2).st_ino == before and len(seen) == 200
    # Each block sees at least its own line (and may see other threads' lines of its span).
    assert all(line.startswith("thread ") for text in seen for line in text.splitlines())
    assert capfd.readouterr().err == ""
