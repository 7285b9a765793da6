"""Run directories: what `train` writes, staged so that nothing half-written is ever left
where a reader looks, and `RunDirectory`, the one reader of it for `convert`, `compare` and
`benchmark --peers`."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from edge_runtime.errors import RunDirError, UbpEdgeError, first_line
from edge_runtime.features import FeatureSpec
from trainer.files import check_outputs, read_json_file
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


class StageKept(Exception):
    """A failure after which the staging folder is kept for ``--resume`` (as after Ctrl-C):
    a peer of distributed training died, and the last complete epoch is in the stage."""


@contextmanager
def staged_run_dir(out: str | os.PathLike, overwrite: bool, resume: bool = False, marker: str = CONFIG):
    """Yield the staging directory ``.NAME.partial`` beside ``out``; on success it becomes
    ``out`` in one rename.

    ``out`` is resolved first (``.``, ``sub/..`` and symlinks become the folder they name), so
    that the final rename lands where the user meant, or the run is refused before it starts.
    A run that fails leaves ``out`` as it was and removes its stage. A run that is killed
    (SIGKILL, power loss) or interrupted (Ctrl-C) leaves its stage, with the last epoch's
    checkpoint, for ``resume``; a new run without ``resume`` starts the stage afresh.

    Raises:
        RunDirError: ``out`` exists and is not a directory; exists, is not empty and
            ``overwrite`` is False; is not empty and is not a run directory (no ``marker``
            file, config.json for a run directory, manifest.json for a prepared log: not
            replaced even with ``overwrite``); ``resume`` with no interrupted run; or the
            stage cannot be created (a read-only or unwritable place).
        OutputError: ``out`` is the root, the current directory (or holds it), a mount point,
            or in a place that cannot be written (`trainer.files.check_outputs`).
    """
    shown = Path(out)
    check_target(shown, overwrite, resume, marker)
    out = resolved_run_dir(out)
    stage = stage_dir(out)
    if not resume:
        shutil.rmtree(stage, ignore_errors=True)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            stage.mkdir()
        except OSError as e:
            raise RunDirError(f"{shown}: cannot create the run directory there "
                              f"({e.strerror or e})") from None
    try:
        yield stage
    except (KeyboardInterrupt, StageKept):
        raise  # keep the stage: `--resume` continues from its last checkpoint
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    old = None
    try:
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
        os.replace(stage, out)
    except OSError as e:
        if old is not None and not out.exists():
            os.replace(old, out)  # put the previous run back
        raise RunDirError(f"{shown}: cannot move the finished run into place ({e.strerror or e}); "
                          f"it is kept in {stage}") from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def check_target(out: str | os.PathLike, overwrite: bool, resume: bool = False,
                 marker: str = CONFIG) -> None:
    """Whether a run directory may be written at ``out``, checked before any work (the
    conditions `staged_run_dir` enforces; the CLI asks before it starts its progress bar).

    Raises:
        RunDirError, OutputError: as `staged_run_dir`.
    """
    shown = Path(out)
    check_outputs({}, replaced={"--out": shown})
    out = resolved_run_dir(out)
    if out.exists() and not out.is_dir():
        raise RunDirError(f"{shown}: exists and is not a directory")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise RunDirError(f"{shown}: run directory exists; pass --overwrite to replace it")
        if not (out / marker).is_file():
            one, many = (("run directory", "run directories") if marker == CONFIG
                         else ("prepared log", "prepared logs"))
            raise RunDirError(f"{shown}: not a {one} (no {marker}) and not empty; "
                              f"--overwrite replaces {many} only: choose a new folder")
    if resume and not stage_dir(out).is_dir():
        raise RunDirError(f"{shown}: nothing to resume (no interrupted run in {stage_dir(out)})")


def resolved_run_dir(out: str | os.PathLike) -> Path:
    """The folder a run directory argument names: absolute, with ``..`` and symlinks
    resolved (``.`` and ``sub/..`` name a real folder; a rename must target it, not the
    spelling)."""
    return Path(os.path.realpath(out))


def stage_dir(out: str | os.PathLike) -> Path:
    """Where a run directory is built before it is renamed into place: beside the folder
    ``out`` resolves to (`resolved_run_dir`)."""
    out = resolved_run_dir(out)
    return out.with_name(f".{out.name}.partial")


def check_run_dir(run_dir: str | os.PathLike) -> Path:
    """A complete run directory, or RunDirError naming what is missing."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: no such run directory (create one with `ubp-edge train`)")
    missing = [name for name in REQUIRED if not (run_dir / name).is_file()]
    if missing:
        raise RunDirError(f"{run_dir}: not a complete run directory, missing {', '.join(missing)}")
    return run_dir


def read_json(path: Path) -> dict:
    """A run-directory JSON file (config.json, report.json, split.json, ...) as an object.

    Raises:
        RunDirError: naming the file: it cannot be read, is not UTF-8 JSON (or nests too
            deep to parse), or is not a JSON object.
    """
    value = read_json_file(path, RunDirError)
    if not isinstance(value, dict):
        raise RunDirError(f"{path}: damaged, a JSON {type(value).__name__} where an object belongs")
    return value


# The first bytes of a zip file (an .npz is one): a local file header, or an empty archive.
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    """A run-directory ``.npz`` (weights, parity sessions) as numeric arrays, read whole.

    Raises:
        RunDirError: naming the file: it cannot be read, is not an intact ``.npz``, or holds
            something other than numbers (objects are never unpickled).
    """
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic not in ZIP_MAGIC:
            # np.load would try to unpickle it and advise `allow_pickle`: never.
            raise RunDirError(f"{path}: damaged, not a .npz (zip) file")
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except OSError as e:
        raise RunDirError(f"{path}: unreadable ({e.strerror or e})") from None
    except RunDirError:
        raise
    except ValueError as e:
        if "pickle" in str(e):
            raise RunDirError(f"{path}: damaged, holds pickled objects (never loaded)") from None
        raise RunDirError(f"{path}: damaged, not a readable .npz ({first_line(e, with_type=True)})") from None
    except Exception as e:  # noqa: BLE001 - a damaged zip raises BadZipFile, EOFError, zlib.error,
        # KeyError...: each means the same to the user, so each gets this one line
        raise RunDirError(f"{path}: damaged, not a readable .npz ({first_line(e, with_type=True)})") from None
    for name, a in arrays.items():
        if a.dtype.kind not in "biuf":
            raise RunDirError(f"{path}: damaged, {name} holds {a.dtype} values, not numbers")
    return arrays


def _field(path: Path, obj: dict, *keys: str, kind: type | tuple = (int, float), none: bool = False):
    """``obj[k1][k2]...``, checked to be a ``kind`` (finite, for numbers); RunDirError naming the
    file and the key path otherwise."""
    value = obj
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            raise RunDirError(f"{path}: damaged, no {'.'.join(keys)}")
        value = value[key]
    if value is None and none:
        return None
    if isinstance(value, bool) or not isinstance(value, kind) or \
            (isinstance(value, float) and not np.isfinite(value)):
        raise RunDirError(f"{path}: damaged, {'.'.join(keys)} is {value!r}")
    return value


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
        RunDirError: naming the file: not a run directory, a file missing, unreadable or
            damaged (JSON that is not an object or lacks what `convert` reads, a broken
            ``.npz``, weights whose shapes do not fit each other or the spec, parity sessions
            whose offsets, labels or probabilities do not hold together, non-finite numbers),
            or written by another version (missing arrays).
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.dir = check_run_dir(run_dir)
        self.config = read_json(self.dir / CONFIG)
        self.report = read_json(self.dir / REPORT_JSON)
        try:
            self.spec = FeatureSpec.from_dict(read_json(self.dir / SPEC))
        except RunDirError:
            raise
        except UbpEdgeError as e:
            raise RunDirError(f"{self.dir / SPEC}: damaged, {e}") from None
        self.weights = read_arrays(self.dir / WEIGHTS)
        self.parity = read_arrays(self.dir / PARITY)
        missing = [k for k in REQUIRED_PARITY if k not in self.parity]
        missing += [f"weights.npz:{k}" for k in WEIGHT_NAMES if k not in self.weights]
        if missing:
            raise RunDirError(f"{self.dir}: run directory written by another version, missing "
                              f"{', '.join(missing)}; train again")
        self._check_json()
        self._check_weights()
        for part in PARITY_PARTS:
            if self.has(part):
                self._check_part(part)

    def _check_json(self) -> None:
        """What `convert` reads of config.json and report.json is there, of the right type."""
        config, report = self.dir / CONFIG, self.dir / REPORT_JSON
        _field(config, self.config, "data", kind=str)
        if not _field(config, self.config, "gap_minutes") > 0:
            raise RunDirError(f"{config}: damaged, gap_minutes is {self.config['gap_minutes']!r}")
        if not 0 <= _field(report, self.report, "threshold") <= 1:
            raise RunDirError(f"{report}: damaged, threshold is {self.report['threshold']!r}")
        _field(report, self.report, "data", "format", kind=str)
        _field(report, self.report, "test", "lstm", "roc_auc", none=True)

    def _check_weights(self) -> None:
        """Shapes that fit together and the spec, finite values: what Keras and the converter
        would otherwise trip on deep inside (or, worse, convert)."""
        path, w = self.dir / WEIGHTS, self.weights
        kernel = w["lstm_kernel"]
        if kernel.ndim != 2 or kernel.shape[1] % 4 or kernel.shape[1] == 0:
            raise RunDirError(f"{path}: damaged, lstm_kernel has shape {kernel.shape}, expected "
                              f"(features, 4 x units)")
        if kernel.shape[0] != self.spec.n_features:
            raise RunDirError(f"{self.dir}: weights take {kernel.shape[0]} features but the spec "
                              f"lists {self.spec.n_features}")
        units = kernel.shape[1] // 4
        expected = {"lstm_recurrent_kernel": (units, 4 * units), "lstm_bias": (4 * units,),
                    "dense_kernel": (units, 1), "dense_bias": (1,)}
        for name, shape in expected.items():
            if w[name].shape != shape:
                raise RunDirError(f"{path}: damaged, {name} has shape {w[name].shape}, expected {shape} "
                                  f"for {units} units")
        for name in WEIGHT_NAMES:
            if w[name].dtype.kind != "f" or not np.isfinite(w[name]).all():
                raise RunDirError(f"{path}: damaged, {name} holds non-finite or non-float values")

    def _check_part(self, part: str) -> None:
        """One parity part: rows of the spec's width, offsets that cut them into sessions,
        one 0/1 label (and Keras probability, where stored) per session."""
        path, prefix = self.dir / PARITY, PARITY_PARTS[part]
        rows, offsets = self.parity[f"{prefix}features"], self.parity[f"{prefix}offsets"]
        if rows.ndim != 2 or rows.shape[1] != self.spec.n_features or rows.dtype.kind != "f":
            raise RunDirError(f"{path}: damaged, {prefix}features has shape {rows.shape} "
                              f"({rows.dtype}), expected (rows, {self.spec.n_features}) floats")
        if not np.isfinite(rows).all():
            raise RunDirError(f"{path}: damaged, {prefix}features holds non-finite values")
        if (offsets.ndim != 1 or offsets.dtype.kind not in "iu" or len(offsets) == 0
                or offsets[0] != 0 or offsets[-1] != len(rows) or (np.diff(offsets) < 0).any()):
            raise RunDirError(f"{path}: damaged, {prefix}offsets do not cut the {len(rows)} rows of "
                              f"{prefix}features into sessions")
        n = len(offsets) - 1
        label = self.parity.get(f"{prefix}label")
        if label is None or label.shape != (n,) or not np.isin(label, (0, 1)).all():
            raise RunDirError(f"{path}: damaged, {prefix}label is not one 0/1 label for each of the "
                              f"{n} sessions")
        p = self.parity.get(f"{prefix}keras_probability")
        if p is not None and (p.shape != (n,) or not (np.isfinite(p) & (p >= 0) & (p <= 1)).all()):
            raise RunDirError(f"{path}: damaged, {prefix}keras_probability is not one probability "
                              f"for each of the {n} sessions")

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
