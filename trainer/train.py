"""Train the LSTM (and the logistic-regression baseline) from a prepared log into a run directory.

Entry point: `train(TrainConfig(...))`. The run directory holds everything `convert`
needs and everything a person needs to trust the model: weights, FeatureSpec, config,
split manifest, report with test metrics, and the quarantined rows.

Training reads a PREP_DIR (trainer.prepdir), the log's scorable sessions encoded once by
`ubp-edge prepare`. Given a log instead, `train` prepares it first into its own staging
folder (`trainer.prepare.prepare`): one code path, whatever the input. It runs in named
stages, one function each:

1. `_opened` / `_prepare_log`: the PREP_DIR, opened as given (its settings reconciled with
   the configuration, `TrainConfig.settled`) or prepared from the log;
2. `_load`: the validation and test splits in memory, the training split's labels and
   baseline counts (not its events, which are streamed);
3. `_fit_lstm`: Keras training on length-bucketed tf.data streams of the shards
   (`trainer.prepdir.PrepDir.dataset`), checkpointed after every epoch so ``--resume``
   continues a killed run; the model is built inside an optional tf.distribute strategy;
4. `_score_lstm`: the LSTM's probabilities per split, in session order, and its threshold;
5. `_fit_baseline`: the logistic regression on the shards' per-session counts;
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
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, fields, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.errors import ConfigError, DataError, RunDirError, first_line
from trainer import rundir
from trainer.files import (
    atomic_open,
    atomic_path,
    check_outputs,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)
from trainer.logsource import EventLogSource
from trainer.metrics import (
    METRIC_KEYS,
    METRICS,
    by_prefix_length,
    choose_threshold,
    classification_metrics,
)
from trainer.prepdir import MANIFEST, Prefixes, PrepDir, SplitRows, predict_by_length, predictor, sha256_file
from trainer.sessions import share_problems
from trainer.tuning import MAX_TRIALS, better, settings_of, trial_settings


class PeerLost(RunDirError, rundir.StageKept):
    """Distributed training lost a worker; the staging folder keeps the last epoch."""


class ClassWeight(StrEnum):
    """How the training loss weighs the rare purchasing sessions."""

    NONE = "none"
    BALANCED = "balanced"


# The settings that decide which sessions exist, how they split and how they are encoded:
# a PREP_DIR fixes them (its manifest's ``settings``); for a log, these defaults apply.
DATA_DEFAULTS: dict[str, Any] = {"gap_minutes": 30.0, "validation": 0.15, "test": 0.15,
                                 "max_len": 50, "use_context": True, "target_stats": True}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run; written to the run directory as config.json.

    Defaults for the model follow the user's article: LSTM(128), Adam 1e-3, binary
    cross-entropy, batch 32, 10 epochs. The data settings (`DATA_DEFAULTS`: max_len,
    gap_minutes, validation, test, use_context) are None until `settled`: the defaults for a
    log, the PREP_DIR's own for a prepared folder (an explicit value must agree with it).
    config.json holds them settled.
    """

    data: str
    out: str
    format: str | None = None
    units: int = 128
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 1e-3
    max_len: int | None = None
    gap_minutes: float | None = None
    validation: float | None = None
    test: float | None = None
    class_weight: ClassWeight = ClassWeight.BALANCED
    prefixes: Prefixes = Prefixes.RANDOM
    dropout: float = 0.0
    patience: int = 3
    use_context: bool | None = None
    target_stats: bool | None = None
    seed: int = 0
    tune: int = 0
    ensemble: int = 1
    strict: bool = False
    overwrite: bool = False
    resume: bool = False

    def __post_init__(self) -> None:
        whole = [k for k in ("units", "epochs", "batch_size", "max_len", "patience")
                 if getattr(self, k) is not None or k != "max_len"]  # max_len None: not settled yet
        problems = [f"{option(k)} must be a whole number >= 1, got {getattr(self, k)!r}" for k in whole
                    if isinstance(getattr(self, k), bool) or not isinstance(getattr(self, k), int)
                    or getattr(self, k) < 1]
        if not (0 < self.learning_rate < 1):
            problems.append(f"--learning-rate must be in (0, 1), got {self.learning_rate}")
        if not (0 <= self.dropout < 1):
            problems.append(f"--dropout must be in [0, 1), got {self.dropout}")
        if isinstance(self.tune, bool) or not isinstance(self.tune, int) or not 0 <= self.tune <= MAX_TRIALS:
            problems.append(f"--tune must be a whole number of trials in 0..{MAX_TRIALS}, got {self.tune!r}")
        if (isinstance(self.ensemble, bool) or not isinstance(self.ensemble, int)
                or not 1 <= self.ensemble <= MAX_MEMBERS):
            problems.append(f"--ensemble must be a whole number of models in 1..{MAX_MEMBERS}, got "
                            f"{self.ensemble!r}")
        if self.resume and (self.tune or self.ensemble > 1):
            problems.append("--resume continues one model's training; a --tune or --ensemble run "
                            "starts again (leave out --resume)")
        if self.gap_minutes is not None and not self.gap_minutes > 0:
            problems.append(f"--gap-minutes must be > 0, got {self.gap_minutes}")
        problems += share_problems(*(DATA_DEFAULTS[k] if getattr(self, k) is None else getattr(self, k)
                                     for k in ("validation", "test")))
        if self.use_context is not None and not isinstance(self.use_context, bool):
            problems.append(f"--context/--no-context must be true or false, got {self.use_context!r}")
        if self.target_stats is not None and not isinstance(self.target_stats, bool):
            problems.append(f"--target-stats/--no-target-stats must be true or false, got "
                            f"{self.target_stats!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            problems.append(f"--seed must be a whole number in 0..{MAX_SEED}, got {self.seed!r}")
        try:
            object.__setattr__(self, "class_weight", ClassWeight(self.class_weight))
        except ValueError:
            problems.append(f"--class-weight {self.class_weight!r}: expected "
                            f"{' or '.join(c.value for c in ClassWeight)}")
        try:
            object.__setattr__(self, "prefixes", Prefixes(self.prefixes))
        except ValueError:
            problems.append(f"--prefixes {self.prefixes!r}: expected "
                            f"{' or '.join(p.value for p in Prefixes)}")
        if problems:
            raise ConfigError("; ".join(problems))

    def settled(self, fixed: dict | None = None, where: str = "") -> TrainConfig:
        """This config with every data setting decided.

        Args:
            fixed: a PREP_DIR manifest's ``settings``, or None for a log (`DATA_DEFAULTS`).
            where: the manifest, for messages.

        Raises:
            ConfigError: an explicit setting that contradicts the PREP_DIR's, naming both.
        """
        given = {k: getattr(self, k) for k in DATA_DEFAULTS}
        if fixed is not None and "target_stats" not in fixed:  # prepared before the tables existed
            fixed = {**fixed, "target_stats": False}
        if fixed is None:
            return replace(self, **{k: DATA_DEFAULTS[k] if v is None else v for k, v in given.items()})
        clashes = [f"{option(k)} {v!r} (the prepared folder has {k} {fixed[k]!r})"
                   for k, v in given.items() if v is not None and v != fixed[k]]
        if clashes:
            raise ConfigError(f"{where}: {', '.join(clashes)}: the prepared folder fixes these; leave "
                              f"them out or run prepare again with them")
        return replace(self, **{k: fixed[k] for k in DATA_DEFAULTS})

    def to_dict(self) -> dict:
        """The config as config.json stores it."""
        d = asdict(self)
        d["class_weight"] = self.class_weight.value
        d["prefixes"] = self.prefixes.value
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """A config from config.json; keys this version does not know are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


# The largest --seed: NumPy seeds take 32 bits, and a resumed run seeds with seed + epoch.
MAX_SEED = 2**31 - 1
# The most --ensemble members: the merged LSTM has members x units units (trainer.model.merge_members).
MAX_MEMBERS = 8
# Member k of an ensemble trains with seed + k * MEMBER_SEED_STEP.
MEMBER_SEED_STEP = 1000
# TrainConfig fields whose option is not ``--`` + the field with dashes.
_OPTIONS = {"use_context": "--context/--no-context",
            "target_stats": "--target-stats/--no-target-stats"}


def option(field_name: str) -> str:
    """The `ubp-edge train` option of a TrainConfig field, as a user types it
    (``batch_size`` -> ``--batch-size``), for messages."""
    return _OPTIONS.get(field_name, "--" + field_name.replace("_", "-"))


EpochCallback = Callable[[int, int, dict], None]


# --------------------------------------------------------------------------- stage results

@dataclass(frozen=True)
class Loaded:
    """What training keeps in memory of a PREP_DIR: the validation and test splits whole,
    the training split without its events (streamed from the shards instead).

    Attributes:
        prep: the PREP_DIR.
        parts: SplitRows per name of SPLIT_NAMES, in canonical order; ``parts["train"].values``
            is None.
    """

    prep: PrepDir
    parts: dict[str, SplitRows]

    def y(self, name: str) -> np.ndarray:
        """0/1 labels of one split, float32 (as Keras and the parity file take them)."""
        return self.parts[name].label.astype(np.float32)

    @property
    def events_encoded(self) -> int:
        """Encoded events over all splits (after the cut to max_len)."""
        return int(sum(int(part.lengths.sum()) for part in self.parts.values()))


@dataclass(frozen=True)
class Streams:
    """Where `_fit_lstm` gets its data: factories, so that a tf.distribute strategy can
    build them per worker or inside its scope.

    Attributes:
        n_features: values per encoded event.
        train: seed -> tf.data.Dataset of (x, y, sample_weight) batches, shuffled by seed.
        validation: () -> tf.data.Dataset of (x, y) batches.
        train_steps, validation_steps: batches of an epoch and of a validation, for streams
            that do not end (tf.distribute's distributed datasets); None: until they end.
    """

    n_features: int
    train: Callable[[int], Any]
    validation: Callable[[], Any]
    train_steps: int | None = None
    validation_steps: int | None = None


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

# The folder inside the run's staging folder where a log is prepared (removed at the end).
PREPARED = "prepared"


def _opened(config: TrainConfig) -> tuple[PrepDir | None, TrainConfig]:
    """The PREP_DIR given as ``--data`` (None for a log), and the config with its data
    settings settled: the PREP_DIR's, checked against the config's, or the defaults.

    Raises:
        DataError: a PREP_DIR that is damaged or not one; with ``strict``, one whose log had
            bad rows.
        ConfigError: settings that contradict the PREP_DIR's, or a ``--format`` other than
            the one it was prepared from.
    """
    if not Path(config.data).is_dir():
        return None, config.settled()
    prep = PrepDir.open(config.data)
    settled = config.settled(prep.settings, str(prep.path / MANIFEST))
    made_from = prep.manifest["input"]["format"]
    if config.format is not None and config.format != made_from:
        raise ConfigError(f"--format {config.format}: {prep.path} was prepared from a "
                          f"{made_from} log; leave --format out")
    if config.strict:
        _refuse_bad_rows(prep)
    return prep, settled


def _prepare_log(config: TrainConfig, source: EventLogSource | None, stage_dir: Path,
                 stage: Callable[[str], None]) -> PrepDir:
    """Prepare the log ``config.data`` into ``stage_dir/prepared`` with the config's settled
    settings (`trainer.prepare.prepare`), so that a log trains exactly as its PREP_DIR
    would. A resumed run reuses a finished preparation of the same log.

    Raises:
        DataError: the log cannot be read, or has a bad row with ``strict``.
        ConfigError: a split would be empty.
    """
    folder = stage_dir / PREPARED
    if config.resume and (folder / MANIFEST).is_file() and Path(config.data).is_file():
        try:  # a pipe is never read twice: prepared again below
            prep = PrepDir.open(folder)
            if prep.manifest["input"]["sha256"] == sha256_file(config.data)[1]:
                return prep
        except (DataError, OSError):
            pass  # prepared again below
    from trainer.prepare import PrepareConfig, prepare

    if source is None:
        source = EventLogSource(Path(config.data), format=config.format, strict=config.strict,
                                gap_minutes=config.gap_minutes)
    prepare(PrepareConfig(source=source, out=str(folder), gap_minutes=config.gap_minutes,
                          validation=config.validation, test=config.test, max_len=config.max_len,
                          use_context=config.use_context, target_stats=config.target_stats,
                          overwrite=True), on_stage=stage)
    return PrepDir.open(folder)


def _refuse_bad_rows(prep: PrepDir) -> None:
    """``--strict`` on a PREP_DIR whose log had bad rows: DataError naming the first one (the
    quarantine's first line), as reading the log with ``--strict`` would have."""
    from trainer.quarantine import BadRows

    total = prep.counts["bad_rows"]["total"]
    if not total:
        return
    first = f"{prep.manifest['input']['path']}: {total} bad rows"
    try:
        with open(prep.quarantine, encoding="utf-8") as f:
            row = json.loads(f.readline())
        bad = BadRows(source=row["source"])
        bad.add(row["line"], row["reason"], row["raw"], row.get("detail", ""))
        first = bad.first_message()
    except (OSError, TypeError, ValueError, KeyError, AttributeError):
        pass  # no readable quarantine: the count alone
    raise DataError(f"{first} ({total} bad rows; --strict)")


def _load(prep: PrepDir) -> Loaded:
    """The splits as training keeps them (see `Loaded`), every shard read and its digest
    checked once, before training starts."""
    return Loaded(prep, prep.read_splits(features=("validation", "test")))


def _class_weights(n: int, pos: int, mode: ClassWeight) -> dict[int, float]:
    """Loss weights of the two classes, from the training split's size and positives."""
    if mode is ClassWeight.NONE:
        return {0: 1.0, 1: 1.0}
    if pos == 0 or pos == n:
        raise ConfigError(f"the training split has {pos} purchasing sessions of {n}: "
                          f"both classes are needed")
    return {0: n / (2.0 * (n - pos)), 1: n / (2.0 * pos)}


def _streams(prep: PrepDir, config: TrainConfig, weights: dict[int, float]) -> Streams:
    """The training and validation streams of a PREP_DIR (validation: whole prefixes, batched
    by length)."""
    return Streams(
        prep.n_features,
        train=lambda seed: prep.dataset("train", config.batch_size, shuffle=True, seed=seed,
                                        class_weights=weights, prefixes=config.prefixes),
        validation=lambda: prep.dataset("validation", VALIDATION_BATCH, shuffle=False))


CHECKPOINT = "checkpoint"
TUNING = "tuning.json"  # `train --tune`: every trial and the chosen settings


def _save_npz(path: Path, arrays: list[np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez(buf, *arrays)
    write_bytes_atomic(path, buf.getvalue())


# Training steps run per call of Keras's compiled train function: the same updates in the same
# order as one step per call, without Python's overhead between steps, which is most of the
# time of a step on the 1-3-event batches that length bucketing makes.
STEPS_PER_EXECUTION = 32
# Validation sessions per batch: metrics over the split do not depend on it (AUC accumulates
# counts per threshold); larger batches are fewer calls.
VALIDATION_BATCH = 256


def _compiled_lstm(config: TrainConfig, n_features: int):
    """A fresh LSTM compiled for training (its initial weights draw from the seeded RNG)."""
    import tf_keras as keras

    from trainer.model import build_lstm

    model = build_lstm(n_features, config.units, masking=True, dropout=config.dropout)
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate),
                  loss="binary_crossentropy",
                  metrics=[keras.metrics.AUC(name="roc_auc"),
                           keras.metrics.AUC(curve="PR", name="pr_auc")],
                  steps_per_execution=STEPS_PER_EXECUTION)
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


def _fit_lstm(config: TrainConfig, streams: Streams, weights: dict[int, float],
              on_epoch: EpochCallback | None, checkpoint: Path, resume: dict | None = None,
              strategy: Any = None) -> LstmFit:
    """Train with early stopping on validation PR-AUC, checkpointing after every epoch.

    The checkpoint (weights, optimizer state, best weights, history, early-stopping state)
    is written atomically, state.json last, so a run killed at any moment resumes from its
    last complete epoch. A resumed run is not bit-identical to an uninterrupted one (the
    shuffling stream restarts), but it continues the same optimisation.

    Args:
        config: the settled config.
        streams: the data, as factories of tf.data pipelines.
        weights: the class weights the training stream applies (undone on the output bias).
        on_epoch: called after every epoch.
        checkpoint: the checkpoint folder.
        resume: the interrupted run's state.json, or None.
        strategy: a tf.distribute strategy to build, compile and restore the model in
            (None: the default strategy, one process).
    """
    import tensorflow as tf
    import tf_keras as keras

    first_epoch = resume["epoch"] if resume else 0
    keras.utils.set_random_seed(config.seed + first_epoch)
    tf.config.experimental.enable_op_determinism()
    checkpoint.mkdir(exist_ok=True)
    state = {"epoch": 0, "history": {}, "best_score": -1.0, "best_epoch": 0, "wait": 0}
    best_weights = None
    with strategy.scope() if strategy is not None else nullcontext():
        model = _compiled_lstm(config, streams.n_features)
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
        try:
            model.fit(streams.train(config.seed + first_epoch), validation_data=streams.validation(),
                      epochs=config.epochs, initial_epoch=state["epoch"], callbacks=[Checkpoint()],
                      steps_per_epoch=streams.train_steps, validation_steps=streams.validation_steps,
                      verbose=0)
        except tf.errors.OpError as e:
            if strategy is None or getattr(strategy.extended, "_num_workers", 1) <= 1:
                raise
            # A peer died mid-epoch (its collective fails here): keep the checkpoint for --resume.
            raise PeerLost(f"a peer worker was lost during epoch {state['epoch'] + 1} "
                           f"({first_line(e)})") from None
    if best_weights is not None:
        model.set_weights(best_weights)  # early stopping restores the best epoch
    _undo_class_weights(model, weights)
    return LstmFit(model, state["history"],
                   state["best_epoch"] or len(state["history"].get("loss", [])))


MakeStreams = Callable[[PrepDir, "TrainConfig", dict[int, float]], Streams]


def _training_weights(prep: PrepDir, config: TrainConfig) -> dict[int, float]:
    split = prep.counts["split"]["train"]
    return _class_weights(split["sessions"], split["positives"], config.class_weight)


def _validation_metrics(model, data: Loaded) -> dict[str, float]:
    """ROC-AUC and PR-AUC of a model on the validation split (tuning and ensembles)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    part = data.parts["validation"]
    p = predict_by_length(predictor(model), part.values, part.lengths, SCORE_BATCH)
    y = data.y("validation")
    return {"roc_auc": round(float(roc_auc_score(y, p)), 6),
            "pr_auc": round(float(average_precision_score(y, p)), 6)}


def _fit_model(config: TrainConfig, prep: PrepDir, data: Loaded, make_streams: MakeStreams,
               on_epoch: EpochCallback | None, stage_dir: Path, resume: dict | None, strategy: Any,
               stage: Callable[[str], None]) -> tuple[LstmFit, TrainConfig, dict]:
    """The model `train` keeps: one LSTM; or, with ``--tune N``, the best of N trials on
    validation (trainer.tuning); and/or, with ``--ensemble K``, K members (the first the
    chosen trial, the others other seeds) merged into one LSTM (trainer.model.merge_members).

    Returns:
        (the fit, the config with the chosen settings, the report's ``tuning`` / ``ensemble``).
    """
    checkpoints = stage_dir / CHECKPOINT

    def fit_one(chosen: TrainConfig, folder: Path, resumed: dict | None = None) -> LstmFit:
        weights = _training_weights(prep, chosen)
        return _fit_lstm(chosen, make_streams(prep, chosen, weights), weights, on_epoch, folder,
                         resumed, strategy)

    if not config.tune and config.ensemble == 1:
        return fit_one(config, checkpoints, resume), config, {}
    if strategy is not None:
        raise ConfigError("--tune and --ensemble train in one process: leave out --distribute")
    checkpoints.mkdir(exist_ok=True)
    info: dict[str, Any] = {}
    fit = None
    if config.tune:
        trials, best = [], None
        for i, settings in enumerate(trial_settings(config, config.tune, config.seed)):
            trial = replace(config, **settings)
            stage(f"tuning, trial {i + 1}/{config.tune}: "
                  + ", ".join(f"{k} {v}" for k, v in settings.items()))
            start = time.perf_counter()
            trial_fit = fit_one(trial, checkpoints / f"trial-{i}")
            scores = _validation_metrics(trial_fit.model, data)
            trials.append({"trial": i, "settings": settings, "validation": scores,
                           "best_epoch": trial_fit.best_epoch,
                           "train_s": round(time.perf_counter() - start, 1)})
            if better(scores, best):
                best, fit, chosen = scores, trial_fit, trial
        config = chosen
        info["tuning"] = {"trials": trials, "budget": config.tune,
                          "rule": "the highest validation PR-AUC (then ROC-AUC); trial 0 is the "
                                  "configuration as given",
                          "chosen": settings_of(config)}
    if config.ensemble > 1:
        from trainer.model import arrays_to_model, merge_members, weights_to_arrays

        members = [fit] if fit is not None else []
        for k in range(len(members), config.ensemble):
            stage(f"ensemble, member {k + 1}/{config.ensemble}")
            members.append(fit_one(replace(config, seed=config.seed + k * MEMBER_SEED_STEP),
                                   checkpoints / f"member-{k}"))
        merged = arrays_to_model(merge_members([weights_to_arrays(m.model) for m in members]), masking=True)
        info["ensemble"] = {
            "members": config.ensemble, "units_each": config.units, "units": config.ensemble * config.units,
            "seeds": [config.seed + k * MEMBER_SEED_STEP for k in range(config.ensemble)],
            "rule": "one LSTM of members x units units: the sigmoid of the members' mean logit",
            "member_best_epochs": [m.best_epoch for m in members],
            "member_validation": [_validation_metrics(m.model, data) for m in members],
            "validation": _validation_metrics(merged, data)}
        fit = LstmFit(merged, members[0].history, members[0].best_epoch)
    return fit, config, info


# Sessions scored per call: sorted by length first, so a batch is padded to about its own length.
SCORE_BATCH = 256
# Training sessions scored per pass over the shards (their events are never all in memory).
SCORE_CHUNK = 1 << 16


def _score_lstm(model, data: Loaded) -> Scores:
    """The LSTM's probabilities on every split, in session order; its threshold maximises
    F1 on validation. The training split is scored from the shards, chunk by chunk."""
    probability, predict = {}, predictor(model)
    for name, part in data.parts.items():
        if part.values is not None:
            probability[name] = predict_by_length(predict, part.values, part.lengths, SCORE_BATCH)
        else:
            probability[name] = np.concatenate(
                [predict_by_length(predict, rows.values, rows.lengths, SCORE_BATCH)
                 for rows in data.prep.rows(name, baseline=False, chunk=SCORE_CHUNK)] or
                [np.zeros(0, np.float32)])
    return Scores(probability, choose_threshold(data.y("validation"), probability["validation"]))


def _fit_baseline(data: Loaded, seed: int) -> Scores:
    """The logistic-regression baseline on the shards' per-session counts (no order): its
    probabilities on validation and test, its threshold chosen on validation as the LSTM's is."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    # Unweighted: the baseline's probabilities stay calibrated; only ranking is compared.
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=seed))
    model.fit(data.parts["train"].baseline, data.y("train"))
    probability = {name: model.predict_proba(data.parts[name].baseline)[:, 1]
                   for name in ("validation", "test")}
    return Scores(probability, choose_threshold(data.y("validation"), probability["validation"]))


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


def _calibration_sessions(data: Loaded, chosen: np.ndarray) -> list[np.ndarray]:
    """The encoded training sessions at positions ``chosen`` (in that order), read from the
    shards in one pass."""
    found: dict[int, np.ndarray] = {}
    wanted = np.sort(chosen)
    first = 0
    for rows in data.prep.rows("train", baseline=False, chunk=SCORE_CHUNK):
        mine = wanted[(wanted >= first) & (wanted < first + len(rows))]
        if len(mine):
            picked = rows.take(mine - first)
            found.update(zip(mine.tolist(), picked.encoded, strict=True))
        first += len(rows)
    return [found[int(i)] for i in chosen]


def _report(config: TrainConfig, data: Loaded, weights: dict[int, float], fit: LstmFit,
            lstm: Scores, logreg: Scores, timings: dict[str, float]) -> dict:
    """report.json: the data read (from the PREP_DIR's manifest), the split, training, and
    test metrics of both models."""
    manifest, counts = data.prep.manifest, data.prep.counts
    test, y = data.parts["test"], data.y("test")
    n = {"n_sessions": int(len(test)), "n_positive": int(y.sum())}
    p, q = lstm.probability["test"], logreg.probability["test"]
    source = {"path": manifest["input"]["path"], "format": manifest["input"]["format"]}
    if Path(config.data).is_dir():
        source["prepared"] = str(config.data)
    return {
        "data": {**source, "rows_read": counts["rows_read"], "events": counts["events"],
                 "bad_rows": counts["bad_rows"],
                 **{k: counts[k] for k in ("sessions", "sessions_with_purchase",
                                           "sessions_excluded_empty_prefix", "sessions_scorable")},
                 "has_user_ids": manifest["has_user_ids"], "time_span_utc": manifest["time_span_utc"]},
        "split": {name: {"sessions": int(len(part)), "positives": int(part.label.sum())}
                  for name, part in data.parts.items()},
        "features": list(data.prep.spec.features),
        "threshold": lstm.threshold,
        "threshold_rule": "maximises F1 on the validation split",
        "class_weights": {str(k): v for k, v in weights.items()},
        "best_epoch": fit.best_epoch,
        "epochs_run": len(fit.history["loss"]),
        "history": fit.history,
        "test": {
            "lstm": {**n, **classification_metrics(y, p, lstm.threshold),
                     "by_prefix_length": by_prefix_length(y, p, test.prefix_len, lstm.threshold)},
            "logreg": {**n, "threshold": logreg.threshold,
                       **classification_metrics(y, q, logreg.threshold)},
        },
        "timings": {**{k: round(v, 3) for k, v in timings.items()},
                    "events_encoded": data.events_encoded},
    }


def _split_manifest(data: Loaded) -> dict:
    """split.json: the rule, the cut times, and per split its session count, purchasing
    sessions and session-key digests (no raw ids), as trainer.sessions.Split.manifest has it."""
    rule = data.prep.manifest["split_rule"]
    return {"rule": rule.get("rule", "by session start; a session belongs to exactly one split"),
            "session_digests": "first 16 hex digits of SHA-256 of the session key "
                               "(trainer.sessions.key_digests); no raw user ids are stored",
            "validation_from_ts": rule["validation_from_ts"], "test_from_ts": rule["test_from_ts"],
            **{name: {"sessions": int(len(part)), "positives": int(part.label.sum()),
                      "session_digests": part.key_digest.tolist()}
               for name, part in data.parts.items()}}


def _parity_arrays(data: Loaded, lstm: Scores, seed: int) -> dict[str, np.ndarray]:
    """parity_sessions.npz: the test sessions as the model saw them, with the Keras
    probabilities (`convert` checks every artifact against these without reading the log
    again); validation sessions, which pick and recalibrate quantized artifacts; and a
    sample of training sessions, which calibrate int8."""
    calibration = calibration_sample(data.y("train"), lstm.probability["train"], seed)
    stored = {  # parity part: (encoded sessions, labels, Keras probabilities or None)
        "test": (data.parts["test"].encoded, data.y("test"), lstm.probability["test"]),
        "validation": (data.parts["validation"].encoded, data.y("validation"),
                       lstm.probability["validation"]),
        "calibration": (_calibration_sessions(data, calibration), data.y("train")[calibration], None),
    }
    arrays: dict[str, np.ndarray] = {}
    for part, (sessions, labels, probability) in stored.items():
        prefix = rundir.PARITY_PARTS[part]
        arrays |= rundir.ragged(part, sessions)
        arrays[f"{prefix}label"] = labels
        if probability is not None:
            arrays[f"{prefix}keras_probability"] = probability
    return arrays


def _write_run(stage: Path, data: Loaded, fit: LstmFit, lstm: Scores, report: dict, seed: int) -> None:
    """Every file of the run directory, into its staging directory; the checkpoint and a
    preparation made for this run go."""
    from trainer.model import weights_to_arrays

    # Through the atomic writer like every file, so that a full disk or a file-size limit is
    # one line naming the file (and a --resume rewrites them whole).
    with atomic_open(stage / rundir.WEIGHTS, "wb") as f:
        np.savez(f, **weights_to_arrays(fit.model))
    write_json_atomic(stage / rundir.SPEC, data.prep.spec.to_dict())
    write_json_atomic(stage / rundir.SPLIT, _split_manifest(data))
    with atomic_open(stage / rundir.PARITY, "wb") as f:
        np.savez(f, **_parity_arrays(data, lstm, seed))
    write_json_atomic(stage / rundir.REPORT_JSON, report)
    write_text_atomic(stage / rundir.REPORT_MD, render_report_md(report))
    if data.prep.quarantine is not None:
        with atomic_path(stage / rundir.QUARANTINE) as tmp:
            shutil.copyfile(data.prep.quarantine, tmp)
    shutil.rmtree(stage / CHECKPOINT, ignore_errors=True)
    shutil.rmtree(stage / PREPARED, ignore_errors=True)


@contextmanager
def _timed(timings: dict[str, float], key: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    timings[key] = time.perf_counter() - start


# --------------------------------------------------------------------------- entry point

def train(config: TrainConfig, source: EventLogSource | None = None,
          on_stage: Callable[[str], None] | None = None,
          on_epoch: EpochCallback | None = None, strategy: Any = None,
          streams: Callable[[PrepDir, TrainConfig, dict[int, float]], Streams] | None = None) -> dict:
    """Train from a PREP_DIR or a log and write a complete run directory.

    Args:
        config: the run's configuration; ``config.data`` a PREP_DIR (`ubp-edge prepare`) or
            a log (prepared first, inside the run's staging folder).
        source: how to read the log (``--format csv`` with ``--map``...); default: from
            ``config.format`` and ``config.strict``. Not used for a PREP_DIR.
        on_stage: called with a short description as each stage starts (for progress).
        on_epoch: called after every epoch with (epoch, epochs, Keras logs).
        strategy: a tf.distribute strategy for the model (None: one process). A worker
            of a multi-worker strategy other than the chief stops after training.
        streams: (PrepDir, settled config, class weights) -> Streams: how the model reads
            the shards; default the whole PREP_DIR in this process. A multi-worker run
            gives each worker its share (`trainer.distribute.worker_streams`).

    Returns:
        The report (also written as report.json / report.md); {} on a worker other than
        the chief.

    Raises:
        DataError: the log cannot be read, or has a bad row with ``strict``; the PREP_DIR is
            not one, or a manifest field or a shard is damaged (named).
        RunDirError: ``config.out`` exists and ``overwrite`` is False, is not a run directory,
            or cannot be created; ``resume`` without an interrupted run or with a damaged one.
        OutputError: ``config.out`` holds the data, is the current directory (``.``,
            ``sub/..``) or the root, or a file of the run cannot be written (no space left, a
            file-size limit); checked before the data is read where it can be.
        ConfigError: impossible settings, settings that contradict the PREP_DIR's, or a split
            without both classes.

    Example:
        >>> report = train(TrainConfig(data="prepared/taobao", out="runs/demo", epochs=3))
        >>> sorted(report["test"])
        ['logreg', 'lstm']
    """
    stage = on_stage or (lambda _msg: None)
    timings: dict[str, float] = {}
    # Before anything is read: a run directory that holds the data would delete it when it
    # is replaced, and `.` or `sub/..` would fail only at the final rename, after training.
    check_outputs({"--data": config.data}, replaced={"--out": config.out})
    with rundir.staged_run_dir(Path(config.out), config.overwrite, config.resume) as tmp:
        prep, config = _opened(config)
        resume_state = _resume_state(tmp, config) if config.resume else None
        if not config.resume:
            write_json_atomic(tmp / rundir.CONFIG, config.to_dict())
        if prep is None:
            with _timed(timings, "prepare_s"):
                stage("preparing the log")
                prep = _prepare_log(config, source, tmp, stage)
        with _timed(timings, "load_s"):
            stage("checking shards, loading validation and test")
            data = _load(prep)
        _training_weights(prep, config)  # both classes in the training split, before any training

        stage("training the LSTM")
        with _timed(timings, "train_lstm_s"), prep.shard_errors():
            if resume_state:
                stage(f"training the LSTM (resumed after epoch {resume_state['epoch']})")
            fit, config, chosen = _fit_model(config, prep, data, streams or _streams, on_epoch, tmp,
                                             resume_state, strategy, stage)
        if strategy is not None and not strategy.extended.should_checkpoint:
            return {}  # a worker other than the chief: the chief scores and writes the run
        weights = _training_weights(prep, config)
        if chosen:
            write_json_atomic(tmp / rundir.CONFIG, config.to_dict())  # the settings tuning chose
            if "tuning" in chosen:
                write_json_atomic(tmp / TUNING, chosen["tuning"])
        with _timed(timings, "score_s"):
            stage("scoring the splits")
            lstm = _score_lstm(fit.model, data)

        stage("logistic-regression baseline")
        logreg = _fit_baseline(data, config.seed)
        report = {**_report(config, data, weights, fit, lstm, logreg, timings), **chosen}
        _write_run(tmp, data, fit, lstm, report, config.seed)
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
