"""A stand-in for edge_runtime.verify_child that ends the way a test asks (tests/test_verify.py).

Run by edge_runtime.verify in place of the real child (the test points CHILD_MODULE here), so
every way a verifying child can end, a crash by each signal included, is tested without
needing a model that crashes the interpreter. The artifact's source name, the child's third
argument, says how to end: e.g. ``abort-whole`` aborts before any verdict, ``abort-step``
after the whole graph's.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time


def _say(stage: str, ok: bool, **extra: object) -> None:
    print(json.dumps({"stage": stage, "ok": ok, **extra}), flush=True)


def _die(how: str) -> None:
    print(f"fake child says: about to {how}", file=sys.stderr, flush=True)
    if how == "abort":
        os.abort()
    if how == "exit":
        os._exit(3)
    os.kill(os.getpid(), {"segv": signal.SIGSEGV, "kill": signal.SIGKILL}[how])
    time.sleep(5)


def main() -> None:
    backend, _threads, source = sys.argv[1:4]
    sys.stdin.buffer.read()
    mode, _, stage = source.rpartition("/")[2].split(".")[0].partition("-")
    if mode == "hang":
        time.sleep(60)
    if mode == "silent":
        return
    if mode == "garbled":
        print("INFO: something a library printed on stdout\n{not json", flush=True)
    if stage == "whole" and mode in ("abort", "segv", "kill", "exit"):
        _die(mode)
    if mode == "refuse" and stage == "whole":
        _say("whole", False, error="MalformedModelError", message=f"{source}: refused whole")
        return
    _say("whole", True, backend=backend)
    if stage == "step" and mode in ("abort", "segv", "kill", "exit"):
        _die(mode)
    if mode == "refuse":
        _say("step", False, error="ArtifactError", message=f"{source}: step graph: refused step")
    else:
        _say("step", True)
    if stage == "teardown":
        _die("abort")


if __name__ == "__main__":
    main()
