"""The child process of edge_runtime.verify: load and run an artifact's graphs, say how it went.

Run as ``python -m edge_runtime.verify_child BACKEND THREADS SOURCE`` with the artifact's
bytes on stdin. It loads them as the host would (Scorer.from_bytes with ``verify=False``:
the reader's checks, the delegate-free trial run, the real interpreter, the blank event),
runs the whole graph at several session lengths and batch sizes, then the step graph over a
few events, and prints one JSON line per stage on its stdout:

    {"stage": "whole", "ok": true, "backend": "ai-edge-litert"}
    {"stage": "step", "ok": false, "error": "ArtifactError", "message": "m.tflite: step graph: ..."}

(``"absent": true`` for an artifact without a step graph). A refusal is the host's own
ArtifactError, class and message. If a kernel kills the process instead, the line of that
stage is missing and the parent reads the signal from the exit status. Whatever the native
libraries print goes to stderr, which the parent keeps (fd 1 is pointed there too, so that
only this module writes the verdict channel).

Imports edge_runtime only (numpy and the interpreter through it).
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from functools import partial

import numpy as np

from edge_runtime.errors import UbpEdgeError, first_line
from edge_runtime.native_logs import set_verbose
from edge_runtime.scorer import Scorer
from edge_runtime.verify import STAGE_STEP, STAGE_WHOLE

# Session lengths the whole graph runs: a fused graph is resized to each; an unrolled one
# also runs every chunk it has (Scorer.chunk_steps) alone and all of them in one session.
# Batch sizes: Scorer.score_encoded's batches of an unrolled graph, the sessions cycled.
LENGTHS = (1, 2, 7, 50)
BATCHES = (2, 64)
STEP_EVENTS = 3  # events pushed through the step graph, each with the state of the last


def main(argv: Sequence[str] | None = None) -> int:
    """Verify the artifact on stdin; print the stages' verdicts.

    Args:
        argv: BACKEND THREADS SOURCE (default ``sys.argv[1:]``).

    Returns:
        0 when a verdict was printed for every stage reached (a refusal included); 2 for
        wrong arguments.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 3 or not args[1].isdigit():
        print("usage: python -m edge_runtime.verify_child BACKEND THREADS SOURCE < model",
              file=sys.stderr)
        return 2
    backend, threads, source = args[0], int(args[1]), args[2]
    channel = _verdict_channel()
    _die_with_parent()
    set_verbose(True)  # native output straight to stderr: the parent keeps the last words

    def emit(stage: str, ok: bool, **extra: object) -> None:
        channel.write(json.dumps({"stage": stage, "ok": ok, **extra}) + "\n")
        channel.flush()

    model = sys.stdin.buffer.read()
    scorer = _stage(emit, STAGE_WHOLE, source,
                    lambda: _run_whole(Scorer.from_bytes(model, backend, threads, source=source,
                                                         verify=False)))
    if scorer is None:
        return 0
    emit(STAGE_WHOLE, True, backend=scorer.backend)
    if not scorer.has_step:
        emit(STAGE_STEP, True, absent=True)
    elif _stage(emit, STAGE_STEP, source, partial(_run_step, scorer)) is not None:
        emit(STAGE_STEP, True)
    # Destructors run here, not at an exit the parent would not see: a graph that crashes
    # when its interpreter is freed would crash the host when its Scorer goes.
    del scorer
    gc.collect()
    return 0


def _stage(emit: Callable, stage: str, source: str, run: Callable):
    """``run()``'s result, or None after printing the stage's refusal."""
    try:
        return run()
    except UbpEdgeError as e:
        emit(stage, False, error=type(e).__name__, message=str(e))
    except Exception as e:  # noqa: BLE001 - a bug of ubp-edge, refused with its name
        emit(stage, False, error="ArtifactError",
             message=f"{source}: the model could not be verified: unexpected "
                     f"{first_line(e, with_type=True)} (a bug of ubp-edge; please report it)")
    return None


def _run_whole(scorer: Scorer) -> Scorer:
    """Run the whole graph at every length and batch size of LENGTHS and BATCHES."""
    spec = scorer.info.spec
    rng = np.random.default_rng(0)
    steps = scorer.chunk_steps
    lengths = sorted({*LENGTHS, *steps, sum(steps)} - {0})  # a fused graph has no chunks
    sessions = [rng.standard_normal((n, spec.n_features)).astype(np.float32) for n in lengths]
    scorer.score_encoded(sessions, calibrated=False)
    for batch in BATCHES:
        scorer.score_encoded([sessions[k % len(sessions)] for k in range(batch)])
    return scorer


def _run_step(scorer: Scorer) -> Scorer:
    """Load the step graph and push STEP_EVENTS events through it."""
    units = scorer.step_model().units
    hc = np.zeros((2, units), np.float32)
    rng = np.random.default_rng(1)
    for _ in range(STEP_EVENTS):
        _, hc = scorer.score_step(rng.standard_normal(scorer.info.spec.n_features), hc)
    return scorer


def _verdict_channel():
    """A private copy of stdout for the verdict lines; fd 1 itself then points at stderr, so
    that whatever native code prints cannot garble them."""
    channel = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    return channel


def _die_with_parent() -> None:
    """Ask Linux to kill this process when its parent dies (a killed `serve` leaves no
    verifier behind, even one hung in a kernel); elsewhere the parent's timeout bounds it."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


if __name__ == "__main__":
    sys.exit(main())
