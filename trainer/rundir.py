"""Run directories: what `train` writes, staged so that nothing half-written is ever left
where a reader looks, and `RunDirectory`, the one reader of it for `convert`, `compare` and
`benchmark --peers`."""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from edge_runtime.errors import RunDirError
from edge_runtime.features import FeatureSpec
from trainer.model import WEIGHT_NAMES

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
# The parts of a time split, oldest first: split.json, the report and the training stages
# are keyed and ordered by these names (here, not in trainer.sessions, so that `--help` can
# name them without loading pyarrow).
SPLIT_NAMES: tuple[str, ...] = ("train", "validation", "test")


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


# The parts of parity_sessions.npz: encoded sessions stored ragged (rows + offsets), each
# with its labels and, where stored, the Keras model's probabilities.
PARITY_PARTS = {"test": "", "validation": "validation_", "calibration": "calibration_"}
# What `convert` needs of parity_sessions.npz and weights.npz (older runs lack some).
REQUIRED_PARITY = ("features", "offsets", "keras_probability", "label", "validation_features",
                   "validation_offsets", "validation_label")


def ragged(part: str, sessions: list[np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays that store encoded sessions of one parity part (``test``, ``validation``,
    ``calibration``) in parity_sessions.npz: all rows stacked, and the offsets between them."""
    prefix = PARITY_PARTS[part]
    width = sessions[0].shape[1] if sessions else 0
    rows = np.concatenate(sessions) if sessions else np.zeros((0, width), np.float32)
    return {f"{prefix}features": rows.astype(np.float32),
            f"{prefix}offsets": np.r_[0, np.cumsum([len(x) for x in sessions])].astype(np.int64)}


class RunDirectory:
    """A complete run directory, read once: weights, feature spec, report, config and the
    encoded parity sessions `train` stored for `convert` (test, validation, calibration).

    Example:
        >>> run = RunDirectory("runs/taobao")
        >>> len(run.sessions("test")), run.spec.n_features, run.units
        (1544, 15, 128)

    Raises:
        RunDirError: not a run directory, a file missing or unreadable, or written by another
            version (missing arrays, weights that do not fit the spec).
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.dir = check_run_dir(run_dir)
        try:
            with np.load(self.dir / WEIGHTS, allow_pickle=False) as weights:
                self.weights = dict(weights)
            with np.load(self.dir / PARITY, allow_pickle=False) as parity:
                self.parity = dict(parity)
        except (OSError, ValueError) as e:
            raise RunDirError(f"{self.dir}: weights or parity sessions unreadable ({e})") from None
        self.spec = FeatureSpec.from_dict(read_json(self.dir / SPEC))
        self.report = read_json(self.dir / REPORT_JSON)
        self.config = read_json(self.dir / CONFIG)
        kernel = self.weights.get("lstm_kernel")
        if kernel is not None and kernel.shape[0] != self.spec.n_features:
            raise RunDirError(f"{self.dir}: weights take {kernel.shape[0]} features but the spec "
                              f"lists {self.spec.n_features}")
        missing = [k for k in REQUIRED_PARITY if k not in self.parity]
        missing += [f"weights.npz:{k}" for k in WEIGHT_NAMES if k not in self.weights]
        if missing:
            raise RunDirError(f"{self.dir}: run directory written by another version, missing "
                              f"{missing}; train again")

    @property
    def units(self) -> int:
        """The LSTM's units (its state width)."""
        return int(self.weights["lstm_recurrent_kernel"].shape[0])

    @property
    def calibration_part(self) -> str:
        """``calibration`` (training sessions), or ``validation`` for runs written before
        training sessions were stored."""
        return "calibration" if "calibration_offsets" in self.parity else "validation"

    def has(self, part: str) -> bool:
        return f"{PARITY_PARTS[part]}offsets" in self.parity

    def sessions(self, part: str) -> list[np.ndarray]:
        """The encoded sessions (L, F) of one part: ``test``, ``validation`` or ``calibration``."""
        prefix = PARITY_PARTS[part]
        features, offsets = self.parity[f"{prefix}features"], self.parity[f"{prefix}offsets"]
        return [features[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]

    def labels(self, part: str) -> np.ndarray:
        """0/1 labels of one part's sessions."""
        return self.parity[f"{PARITY_PARTS[part]}label"]

    def keras_probability(self, part: str) -> np.ndarray | None:
        """The trained Keras model's probabilities for one part, None where not stored."""
        return self.parity.get(f"{PARITY_PARTS[part]}keras_probability")
