"""Run directories and atomic writes: nothing half-written is ever left where a reader looks."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from edge_runtime.errors import RunDirError

# What `train` writes into a run directory; `convert` and `evaluate` read them back.
CONFIG = "config.json"
SPEC = "feature_spec.json"
WEIGHTS = "weights.npz"
SPLIT = "split.json"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
PARITY = "parity_sessions.npz"
QUARANTINE = "quarantine.jsonl"
REQUIRED = (CONFIG, SPEC, WEIGHTS, REPORT_JSON, PARITY)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes the file 0600; an artifact or report is as readable as any file written.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | os.PathLike, obj: object) -> Path:
    return write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


@contextmanager
def staged_run_dir(out: str | os.PathLike, overwrite: bool, resume: bool = False):
    """Yield the staging directory ``.NAME.partial`` beside ``out``; on success it becomes
    ``out`` in one rename.

    A run that fails leaves ``out`` as it was and removes its stage. A run that is killed
    (SIGKILL, power loss) or interrupted (Ctrl-C) leaves its stage, with the last epoch's
    checkpoint, for ``resume``; a new run without ``resume`` starts the stage afresh.

    Raises:
        RunDirError: ``out`` exists and is not empty without ``overwrite``; or ``resume`` with
            no interrupted run to resume.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunDirError(f"{out}: exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise RunDirError(f"{out}: run directory exists; pass --overwrite to replace it")
    stage = stage_dir(out)
    if resume and not stage.is_dir():
        raise RunDirError(f"{out}: nothing to resume (no interrupted run in {stage})")
    if not resume:
        shutil.rmtree(stage, ignore_errors=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        stage.mkdir()
    try:
        yield stage
    except KeyboardInterrupt:
        raise  # keep the stage: `--resume` continues from its last checkpoint
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(stage, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def stage_dir(out: str | os.PathLike) -> Path:
    """Where a run directory is built before it is renamed into place."""
    out = Path(out)
    return out.with_name(f".{out.name}.partial")


def check_run_dir(run_dir: str | os.PathLike) -> Path:
    """A complete run directory, or RunDirError naming what is missing."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: no such run directory (create one with `ubp-edge train`)")
    missing = [name for name in REQUIRED if not (run_dir / name).is_file()]
    if missing:
        raise RunDirError(f"{run_dir}: not a complete run directory, missing {missing}")
    return run_dir


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise RunDirError(f"{path}: unreadable ({e})") from None
