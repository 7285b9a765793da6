"""Train the LSTM (and the logistic-regression baseline) from an event log into a run directory.

Entry point: `train(TrainConfig(...))`. The run directory holds everything `convert`
needs and everything a person needs to trust the model: weights, FeatureSpec, config,
split manifest, report with test metrics, and the quarantined rows.

`train` runs in named stages, one function each:

1. read the log (`trainer.readers.read_log`);
2. `_prepare`: sessions, the time split, the fitted encoder, and one `SplitData` per
   name of `trainer.rundir.SPLIT_NAMES` (the only place the three splits are spelt out);
3. `_fit_lstm`: Keras training, checkpointed after every epoch so ``--resume`` continues
   a killed run;
4. `_score_lstm`: the LSTM's probabilities per split and its threshold;
5. `_fit_baseline`: the logistic regression on per-session counts;
6. `_report`: report.json's content (`render_report_md` renders it for a person);
7. `_write_run`: every file, into the staging directory that `trainer.rundir` renames
   into place (the parity sessions through `trainer.rundir.ragged`).
"""

from __future__ import annotations

import io
import json
import math
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.errors import ConfigError, RunDirError, first_line
from edge_runtime.features import FeatureEncoder
from trainer import rundir
from trainer.dataset import aggregate_features, encode_sessions, new_encoder, pad, raw_sessions
from trainer.files import (
    atomic_open,
    check_outputs,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)
from trainer.formats import FormatPreset
from trainer.metrics import (
    METRIC_KEYS,
    METRICS,
    by_prefix_length,
    choose_threshold,
    classification_metrics,
)
from trainer.readers import EventLog, read_log
from trainer.sessions import Sessions, Split, sessionize, time_split


class ClassWeight(StrEnum):
    """How the training loss weighs the rare purchasing sessions."""

    NONE = "none"
    BALANCED = "balanced"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run; written to the run directory as config.json.

    Defaults for the model follow the user's article: LSTM(128), Adam 1e-3, binary
    cross-entropy, batch 32, 10 epochs.
    """

    data: str
    out: str
    format: str | None = None
    units: int = 128
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 1e-3
    max_len: int = 50
    gap_minutes: float = 30.0
    validation: float = 0.15
    test: float = 0.15
    class_weight: ClassWeight = ClassWeight.BALANCED
    patience: int = 3
    use_context: bool = True
    seed: int = 0
    strict: bool = False
    overwrite: bool = False
    resume: bool = False

    def __post_init__(self) -> None:
        problems = [f"{option(k)} must be a whole number >= 1, got {getattr(self, k)!r}"
                    for k in ("units", "epochs", "batch_size", "max_len", "patience")
                    if isinstance(getattr(self, k), bool) or not isinstance(getattr(self, k), int)
                    or getattr(self, k) < 1]
        if not (0 < self.learning_rate < 1):
            problems.append(f"--learning-rate must be in (0, 1), got {self.learning_rate}")
        if not self.gap_minutes > 0:
            problems.append(f"--gap-minutes must be > 0, got {self.gap_minutes}")
        for k in ("validation", "test"):
            if not 0 < getattr(self, k) < 1:
                problems.append(f"{option(k)} must be a share in (0, 1), got {getattr(self, k)}")
        if 0 < self.validation < 1 and 0 < self.test < 1 and not self.validation + self.test < 1:
            problems.append(f"--validation {self.validation} and --test {self.test} leave no "
                            f"training sessions (their sum must be below 1)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            problems.append(f"--seed must be a whole number in 0..{MAX_SEED}, got {self.seed!r}")
        try:
            object.__setattr__(self, "class_weight", ClassWeight(self.class_weight))
        except ValueError:
            problems.append(f"--class-weight {self.class_weight!r}: expected "
                            f"{' or '.join(c.value for c in ClassWeight)}")
        if problems:
            raise ConfigError("; ".join(problems))

    def to_dict(self) -> dict:
        """The config as config.json stores it."""
        d = asdict(self)
        d["class_weight"] = self.class_weight.value
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """A config from config.json; keys this version does not know are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


# The largest --seed: NumPy seeds take 32 bits, and a resumed run seeds with seed + epoch.
MAX_SEED = 2**31 - 1
# TrainConfig fields whose option is not ``--`` + the field with dashes.
_OPTIONS = {"use_context": "--context/--no-context"}


def option(field_name: str) -> str:
    """The `ubp-edge train` option of a TrainConfig field, as a user types it
    (``batch_size`` -> ``--batch-size``), for messages."""
    return _OPTIONS.get(field_name, "--" + field_name.replace("_", "-"))


EpochCallback = Callable[[int, int, dict], None]


# --------------------------------------------------------------------------- stage results

@dataclass(frozen=True)
class SplitData:
    """One split's sessions as the models take them.

    Attributes:
        index: the sessions' indices into `Sessions`.
        encoded: each session's prefix, encoded: (L, F) float32 with L <= max_len.
        x: the same, padded to (N, max_len, F) for Keras.
        y: 0/1 labels, float32 (N,).
    """

    index: np.ndarray
    encoded: list[np.ndarray]
    x: np.ndarray
    y: np.ndarray


@dataclass(frozen=True)
class Prepared:
    """The log turned into model inputs: its sessions, their time split, the encoder fitted
    on the training split, and one SplitData per name of SPLIT_NAMES."""

    sessions: Sessions
    split: Split
    encoder: FeatureEncoder
    parts: dict[str, SplitData]

    @property
    def events_encoded(self) -> int:
        """Encoded events over all splits (after the cut to max_len)."""
        return sum(len(x) for part in self.parts.values() for x in part.encoded)


@dataclass(frozen=True)
class LstmFit:
    """The trained Keras model (best epoch, calibrated) and how training went."""

    model: Any
    history: dict[str, list[float]]
    best_epoch: int


@dataclass(frozen=True)
class Scores:
    """One model's purchase probabilities per split, and its decision threshold."""

    probability: dict[str, np.ndarray]
    threshold: float


# --------------------------------------------------------------------------- stages

def _prepare(log: EventLog, config: TrainConfig) -> Prepared:
    """Sessions, split, encoder (fitted on the training split only), encoded splits."""
    sessions = sessionize(log, config.gap_minutes)
    split = time_split(sessions, config.validation, config.test)
    encoder = new_encoder(sessions, config.max_len, config.use_context)
    encoder.fit(np.concatenate(raw_sessions(sessions, split.train, encoder)))
    parts = {}
    for name, index in split.parts().items():
        encoded = encode_sessions(sessions, index, encoder)
        parts[name] = SplitData(index, encoded, pad(encoded, config.max_len),
                                sessions.label[index].astype(np.float32))
    return Prepared(sessions, split, encoder, parts)


def _class_weights(y: np.ndarray, mode: ClassWeight) -> dict[int, float]:
    if mode is ClassWeight.NONE:
        return {0: 1.0, 1: 1.0}
    n, pos = len(y), int(y.sum())
    if pos == 0 or pos == n:
        raise ConfigError(f"the training split has {pos} purchasing sessions of {n}: "
                          f"both classes are needed")
    return {0: n / (2.0 * (n - pos)), 1: n / (2.0 * pos)}


CHECKPOINT = "checkpoint"


def _save_npz(path: Path, arrays: list[np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez(buf, *arrays)
    write_bytes_atomic(path, buf.getvalue())


def _compiled_lstm(config: TrainConfig, n_features: int):
    """A fresh LSTM compiled for training (its initial weights draw from the seeded RNG)."""
    import tf_keras as keras

    from trainer.model import build_lstm

    model = build_lstm(n_features, config.units, masking=True)
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate),
                  loss="binary_crossentropy",
                  metrics=[keras.metrics.AUC(name="roc_auc"),
                           keras.metrics.AUC(curve="PR", name="pr_auc")])
    return model


def _restore_checkpoint(model, checkpoint: Path) -> list[np.ndarray]:
    """Load the interrupted run's weights and optimizer state into ``model``; return the
    best epoch's weights so far.

    Raises:
        RunDirError: a checkpoint file damaged, or of another model shape, naming the file.
    """
    files = {name: checkpoint / name for name in ("weights.npz", "optimizer.npz", "best.npz")}
    saved = {name: _load_checkpoint_file(path) for name, path in files.items()}
    try:
        model.set_weights(saved["weights.npz"])
        model.optimizer.build(model.trainable_variables)
        for variable, value in zip(model.optimizer.variables, saved["optimizer.npz"], strict=True):
            variable.assign(value)
        model.set_weights(saved["best.npz"])  # the shapes are checked here, restored below
        model.set_weights(saved["weights.npz"])
    except ValueError as e:  # a shape or a count that does not fit this configuration
        raise RunDirError(f"{checkpoint}: the checkpoint does not fit this model ({first_line(e)}); "
                          f"start again without --resume") from None
    return saved["best.npz"]


def _load_checkpoint_file(path: Path) -> list[np.ndarray]:
    arrays = rundir.read_arrays(path)
    return [arrays[f"arr_{i}"] for i in range(len(arrays)) if f"arr_{i}" in arrays]


def _save_checkpoint(model, checkpoint: Path, state: dict) -> None:
    _save_npz(checkpoint / "weights.npz", model.get_weights())
    _save_npz(checkpoint / "optimizer.npz", [v.numpy() for v in model.optimizer.variables])
    write_json_atomic(checkpoint / "state.json", state)  # the commit point: written last


def _undo_class_weights(model, weights: dict[int, float]) -> None:
    """Shift the output bias so that the probabilities are calibrated again.

    Class weights multiply the learned odds by w1/w0; shifting the output bias by
    -log(w1/w0) restores calibrated probabilities without touching the ranking."""
    if weights[1] != weights[0]:
        dense = model.get_layer("purchase")
        kernel, bias = dense.get_weights()
        dense.set_weights([kernel, bias - math.log(weights[1] / weights[0])])


def _fit_lstm(config: TrainConfig, train: SplitData, validation: SplitData,
              weights: dict[int, float], on_epoch: EpochCallback | None, checkpoint: Path,
              resume: dict | None = None) -> LstmFit:
    """Train with early stopping on validation PR-AUC, checkpointing after every epoch.

    The checkpoint (weights, optimizer state, best weights, history, early-stopping state)
    is written atomically, state.json last, so a run killed at any moment resumes from its
    last complete epoch. A resumed run is not bit-identical to an uninterrupted one (the
    shuffling stream restarts), but it continues the same optimisation.
    """
    import tensorflow as tf
    import tf_keras as keras

    keras.utils.set_random_seed(config.seed + (resume["epoch"] if resume else 0))
    tf.config.experimental.enable_op_determinism()
    model = _compiled_lstm(config, train.x.shape[2])
    checkpoint.mkdir(exist_ok=True)
    state = {"epoch": 0, "history": {}, "best_score": -1.0, "best_epoch": 0, "wait": 0}
    best_weights = None
    if resume:
        state = resume
        best_weights = _restore_checkpoint(model, checkpoint)

    class Checkpoint(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            nonlocal best_weights
            logs = dict(logs or {})
            for key, value in logs.items():
                state["history"].setdefault(key, []).append(float(value))
            score = float(logs.get("val_pr_auc", -1.0))
            if score > state["best_score"]:
                state.update(best_score=score, best_epoch=epoch + 1, wait=0)
                best_weights = model.get_weights()
                _save_npz(checkpoint / "best.npz", best_weights)
            else:
                state["wait"] += 1
            state["epoch"] = epoch + 1
            _save_checkpoint(model, checkpoint, state)
            if on_epoch is not None:
                on_epoch(epoch + 1, config.epochs, logs)
            if state["wait"] >= config.patience:
                self.model.stop_training = True

    if state["epoch"] < config.epochs and state["wait"] < config.patience:
        model.fit(train.x, train.y, validation_data=(validation.x, validation.y),
                  epochs=config.epochs, initial_epoch=state["epoch"], batch_size=config.batch_size,
                  class_weight=weights, shuffle=True, callbacks=[Checkpoint()], verbose=0)
    if best_weights is not None:
        model.set_weights(best_weights)  # early stopping restores the best epoch
    _undo_class_weights(model, weights)
    return LstmFit(model, state["history"],
                   state["best_epoch"] or len(state["history"].get("loss", [])))


def _score_lstm(model, data: Prepared) -> Scores:
    """The LSTM's probabilities on every split; its threshold maximises F1 on validation."""
    probability = {name: model.predict(part.x, batch_size=256, verbose=0).reshape(-1)
                   for name, part in data.parts.items()}
    return Scores(probability, choose_threshold(data.parts["validation"].y, probability["validation"]))


def _fit_baseline(data: Prepared, seed: int) -> Scores:
    """The logistic-regression baseline on per-session counts (no order): its probabilities
    on validation and test, its threshold chosen on validation as the LSTM's is."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    counts = {name: aggregate_features(data.sessions, part.index)[0]
              for name, part in data.parts.items()}
    # Unweighted: the baseline's probabilities stay calibrated; only ranking is compared.
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=seed))
    model.fit(counts["train"], data.parts["train"].y)
    probability = {name: model.predict_proba(counts[name])[:, 1] for name in ("validation", "test")}
    return Scores(probability, choose_threshold(data.parts["validation"].y, probability["validation"]))


CALIBRATION_SESSIONS = 1000


def calibration_sample(y: np.ndarray, p: np.ndarray, seed: int,
                       n: int = CALIBRATION_SESSIONS) -> np.ndarray:
    """Indices of up to ``n`` training sessions for int8 calibration, in random order.

    int8 calibration sets each tensor's range from what it sees: if no calibration session
    scores high, the output logit's range ends below 0 and every quantized probability is
    capped near 0.5 (seen on Taobao). So the sample holds the ``n // 10`` highest-scoring
    sessions, purchasing sessions for at least a quarter, and random others for the rest;
    any prefix of it (``--calibration-sessions``) keeps roughly that mix.

    Args:
        y: 0/1 labels of the training sessions.
        p: the model's probabilities for them.
        seed: the run's seed.
        n: the most sessions to pick.

    Returns:
        Indices into ``y``, in random order.
    """
    rng = np.random.default_rng(seed)
    top = np.argsort(-np.asarray(p))[:n // 10]
    rest = np.setdiff1d(np.arange(len(y)), top)
    pos, neg = rest[y[rest] == 1], rest[y[rest] == 0]
    n_pos = min(len(pos), max(n // 4, n - len(top) - len(neg)))
    n_neg = min(len(neg), n - len(top) - n_pos)
    chosen = np.concatenate([top, rng.choice(pos, n_pos, replace=False),
                             rng.choice(neg, n_neg, replace=False)])
    return rng.permutation(chosen)


def _report(config: TrainConfig, log: EventLog, data: Prepared, weights: dict[int, float],
            fit: LstmFit, lstm: Scores, logreg: Scores, timings: dict[str, float]) -> dict:
    """report.json: the data read, the split, training, and test metrics of both models."""
    test = data.parts["test"]
    counts = {"n_sessions": int(len(test.index)), "n_positive": int(test.y.sum())}
    p, q = lstm.probability["test"], logreg.probability["test"]
    return {
        "data": {"path": str(config.data), "format": log.format, "rows_read": log.rows_read,
                 "events": len(log), "bad_rows": log.bad.summary(), **data.sessions.summary(),
                 "has_user_ids": log.has_user_ids,
                 "time_span_utc": [float(log.ts.min()), float(log.ts.max())]},
        "split": {name: {"sessions": int(len(part.index)),
                         "positives": int(data.sessions.label[part.index].sum())}
                  for name, part in data.parts.items()},
        "features": list(data.encoder.features),
        "threshold": lstm.threshold,
        "threshold_rule": "maximises F1 on the validation split",
        "class_weights": {str(k): v for k, v in weights.items()},
        "best_epoch": fit.best_epoch,
        "epochs_run": len(fit.history["loss"]),
        "history": fit.history,
        "test": {
            "lstm": {**counts, **classification_metrics(test.y, p, lstm.threshold),
                     "by_prefix_length": by_prefix_length(test.y, p, data.sessions.prefix_len[test.index],
                                                          lstm.threshold)},
            "logreg": {**counts, "threshold": logreg.threshold,
                       **classification_metrics(test.y, q, logreg.threshold)},
        },
        "timings": {**{k: round(v, 3) for k, v in timings.items()},
                    "events_encoded": data.events_encoded},
    }


def _parity_arrays(data: Prepared, lstm: Scores, seed: int) -> dict[str, np.ndarray]:
    """parity_sessions.npz: the test sessions as the model saw them, with the Keras
    probabilities (`convert` checks every artifact against these without reading the log
    again); validation sessions, which pick and recalibrate quantized artifacts; and a
    sample of training sessions, which calibrate int8."""
    train, validation, test = data.parts["train"], data.parts["validation"], data.parts["test"]
    calibration = calibration_sample(train.y, lstm.probability["train"], seed)
    stored = {  # parity part: (encoded sessions, labels, Keras probabilities or None)
        "test": (test.encoded, test.y, lstm.probability["test"]),
        "validation": (validation.encoded, validation.y, lstm.probability["validation"]),
        "calibration": ([train.encoded[i] for i in calibration], train.y[calibration], None),
    }
    arrays: dict[str, np.ndarray] = {}
    for part, (sessions, labels, probability) in stored.items():
        prefix = rundir.PARITY_PARTS[part]
        arrays |= rundir.ragged(part, sessions)
        arrays[f"{prefix}label"] = labels
        if probability is not None:
            arrays[f"{prefix}keras_probability"] = probability
    return arrays


def _write_run(stage: Path, log: EventLog, data: Prepared, fit: LstmFit, lstm: Scores,
               report: dict, seed: int) -> None:
    """Every file of the run directory, into its staging directory; the checkpoint goes."""
    from trainer.model import weights_to_arrays

    # Through the atomic writer like every file, so that a full disk or a file-size limit is
    # one line naming the file (and a --resume rewrites them whole).
    with atomic_open(stage / rundir.WEIGHTS, "wb") as f:
        np.savez(f, **weights_to_arrays(fit.model))
    write_json_atomic(stage / rundir.SPEC, data.encoder.spec().to_dict())
    write_json_atomic(stage / rundir.SPLIT, data.split.manifest(data.sessions))
    with atomic_open(stage / rundir.PARITY, "wb") as f:
        np.savez(f, **_parity_arrays(data, lstm, seed))
    write_json_atomic(stage / rundir.REPORT_JSON, report)
    write_text_atomic(stage / rundir.REPORT_MD, render_report_md(report))
    log.bad.write(stage / rundir.QUARANTINE)
    shutil.rmtree(stage / CHECKPOINT, ignore_errors=True)


@contextmanager
def _timed(timings: dict[str, float], key: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    timings[key] = time.perf_counter() - start


# --------------------------------------------------------------------------- entry point

def train(config: TrainConfig, preset: FormatPreset | None = None,
          on_stage: Callable[[str], None] | None = None,
          on_epoch: EpochCallback | None = None) -> dict:
    """Train from a log and write a complete run directory.

    Args:
        config: the run's configuration.
        preset: a custom format (``--format csv`` with ``--map``), else ``config.format``.
        on_stage: called with a short description as each stage starts (for progress).
        on_epoch: called after every epoch with (epoch, epochs, Keras logs).

    Returns:
        The report (also written as report.json / report.md).

    Raises:
        DataError: the log cannot be read, or has a bad row with ``strict``.
        RunDirError: ``config.out`` exists and ``overwrite`` is False, is not a run directory,
            or cannot be created; ``resume`` without an interrupted run or with a damaged one.
        OutputError: ``config.out`` holds the log, is the current directory (``.``,
            ``sub/..``) or the root, or a file of the run cannot be written (no space left, a
            file-size limit); checked before the log is read where it can be.
        ConfigError: impossible settings, or a split without both classes.

    Example:
        >>> report = train(TrainConfig(data="events.csv", out="runs/demo", epochs=3))
        >>> sorted(report["test"])
        ['logreg', 'lstm']
    """
    stage = on_stage or (lambda _msg: None)
    timings: dict[str, float] = {}
    # Before anything is read: a run directory that holds the log would delete it when it
    # is replaced, and `.` or `sub/..` would fail only at the final rename, after training.
    check_outputs({"--data": config.data}, replaced={"--out": config.out})
    with rundir.staged_run_dir(Path(config.out), config.overwrite, config.resume) as tmp:
        resume_state = _resume_state(tmp, config) if config.resume else None
        if not config.resume:
            write_json_atomic(tmp / rundir.CONFIG, config.to_dict())
        with _timed(timings, "read_s"):
            stage("reading the log")
            log = read_log(config.data, config.format, preset=preset, strict=config.strict)
        with _timed(timings, "sessionize_encode_s"):
            stage("sessions, labels, split, features")
            data = _prepare(log, config)
        weights = _class_weights(data.parts["train"].y, config.class_weight)

        stage("training the LSTM")
        with _timed(timings, "train_lstm_s"):
            if resume_state:
                stage(f"training the LSTM (resumed after epoch {resume_state['epoch']})")
            fit = _fit_lstm(config, data.parts["train"], data.parts["validation"], weights,
                            on_epoch, tmp / CHECKPOINT, resume_state)
        lstm = _score_lstm(fit.model, data)

        stage("logistic-regression baseline")
        logreg = _fit_baseline(data, config.seed)
        report = _report(config, log, data, weights, fit, lstm, logreg, timings)
        _write_run(tmp, log, data, fit, lstm, report, config.seed)
    return report


# Settings that may differ between a killed run and its --resume.
RESUME_FREE = ("overwrite", "resume", "strict")


def _resume_state(stage: Path, config: TrainConfig) -> dict:
    """The interrupted run's checkpoint state; ConfigError when it was another configuration.

    Raises:
        RunDirError: no complete checkpoint yet, or a damaged one.
        ConfigError: settings other than RESUME_FREE differ from the interrupted run's,
            each named as its option (``--seed 3 -> 4``).
    """
    try:
        before = json.loads((stage / rundir.CONFIG).read_bytes())
        state = json.loads((stage / CHECKPOINT / "state.json").read_bytes())
    except (OSError, ValueError, RecursionError):
        raise RunDirError(f"{config.out}: the interrupted run has no complete checkpoint yet "
                          f"(killed before its first epoch ended); start it again without --resume") from None
    if not isinstance(before, dict) or not isinstance(state, dict) or not _valid_state(state):
        raise RunDirError(f"{config.out}: the interrupted run's checkpoint in {stage} is damaged; "
                          f"start it again without --resume")
    now = config.to_dict()
    changed = [f"{option(k)} {before.get(k)!r} -> {v!r}" for k, v in now.items()
               if k not in RESUME_FREE and before.get(k) != v]
    if changed:
        raise ConfigError(f"--resume with other settings than the interrupted run: {', '.join(changed)}")
    return state


def _valid_state(state: dict) -> bool:
    """state.json has what _fit_lstm reads, of the right types."""
    def whole(v):
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    return (whole(state.get("epoch")) and whole(state.get("best_epoch")) and whole(state.get("wait"))
            and isinstance(state.get("best_score"), int | float)
            and isinstance(state.get("history"), dict)
            and all(isinstance(v, list) for v in state["history"].values()))


def _cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def render_report_md(report: dict) -> str:
    """The training report for a person: data, split, test metrics of LSTM and baseline.

    Args:
        report: what `train` returns (report.json).

    Returns:
        Markdown text; metric columns are named from `trainer.metrics.METRICS`.
    """
    d, t = report["data"], report["test"]
    lines = [
        "# ubp-edge training report", "",
        f"Data: `{d['path']}` ({d['format']}), {d['events']:,} events, {d['sessions']:,} sessions, "
        f"{d['sessions_with_purchase']:,} with a purchase, {d['sessions_excluded_empty_prefix']:,} "
        f"excluded (purchase first, empty prefix); bad rows: {d['bad_rows']['total']:,}.", "",
        "| split | sessions | with purchase |", "|---|---:|---:|",
        *[f"| {k} | {v['sessions']:,} | {v['positives']:,} |" for k, v in report["split"].items()],
        "", f"Threshold {report['threshold']:.4f} ({report['threshold_rule']}); best epoch "
        f"{report['best_epoch']} of {report['epochs_run']}.", "",
        "## Test split", "",
        "| model | " + " | ".join(METRICS[k].label for k in METRIC_KEYS) + " |",
        "|---|" + "---:|" * len(METRIC_KEYS),
    ]
    for name in ("lstm", "logreg"):
        lines.append(f"| {name} | " + " | ".join(_cell(t[name][k]) for k in METRIC_KEYS) + " |")
    lines += ["", "## LSTM by prefix length (test)", "",
              f"| events before purchase | sessions | with purchase | {METRICS['roc_auc'].label} |",
              "|---|---:|---:|---:|"]
    for bucket, m in t["lstm"]["by_prefix_length"].items():
        lines.append(f"| {bucket} | {m['n_sessions']} | {m['n_positive']} | {_cell(m.get('roc_auc'))} |")
    return "\n".join(lines) + "\n"
