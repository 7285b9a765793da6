"""Train the LSTM (and the logistic-regression baseline) from an event log into a run directory.

Entry point: `train(TrainConfig(...))`. The run directory holds everything `convert`
needs and everything a person needs to trust the model: weights, FeatureSpec, config,
split manifest, report with test metrics, and the quarantined rows.
"""

from __future__ import annotations

import io
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from enum import StrEnum
from pathlib import Path

import numpy as np

from edge_runtime.errors import ConfigError, RunDirError
from trainer import rundir
from trainer.dataset import aggregate_features, encode_sessions, new_encoder, pad, raw_sessions
from trainer.files import write_bytes_atomic, write_json_atomic
from trainer.formats import FormatPreset
from trainer.metrics import by_prefix_length, choose_threshold, classification_metrics
from trainer.readers import read_log
from trainer.sessions import sessionize, time_split


class ClassWeight(StrEnum):
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
        positive = {"units": self.units, "epochs": self.epochs, "batch_size": self.batch_size,
                    "max_len": self.max_len, "patience": self.patience}
        bad = {k: v for k, v in positive.items() if not (isinstance(v, int) and v >= 1)}
        if bad:
            raise ConfigError(f"must be whole numbers >= 1: {bad}")
        if not (0 < self.learning_rate < 1):
            raise ConfigError(f"learning_rate={self.learning_rate} must be in (0, 1)")
        if not self.gap_minutes > 0:
            raise ConfigError(f"gap_minutes={self.gap_minutes} must be > 0")
        object.__setattr__(self, "class_weight", ClassWeight(self.class_weight))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["class_weight"] = self.class_weight.value
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


EpochCallback = Callable[[int, int, dict], None]


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


def _load_npz(path: Path) -> list[np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return [data[f"arr_{i}"] for i in range(len(data.files))]


def _fit_lstm(config: TrainConfig, x_train, y_train, x_val, y_val, weights: dict[int, float],
              on_epoch: EpochCallback | None, checkpoint: Path, resume: dict | None = None):
    """Train with early stopping on validation PR-AUC, checkpointing after every epoch.

    The checkpoint (weights, optimizer state, best weights, history, early-stopping state)
    is written atomically, state.json last, so a run killed at any moment resumes from its
    last complete epoch. A resumed run is not bit-identical to an uninterrupted one (the
    shuffling stream restarts), but it continues the same optimisation.
    """
    import tensorflow as tf
    import tf_keras as keras

    from trainer.model import build_lstm

    keras.utils.set_random_seed(config.seed + (resume["epoch"] if resume else 0))
    tf.config.experimental.enable_op_determinism()
    model = build_lstm(x_train.shape[2], config.units, masking=True)
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate),
                  loss="binary_crossentropy",
                  metrics=[keras.metrics.AUC(name="roc_auc"),
                           keras.metrics.AUC(curve="PR", name="pr_auc")])
    checkpoint.mkdir(exist_ok=True)
    state = {"epoch": 0, "history": {}, "best_score": -1.0, "best_epoch": 0, "wait": 0}
    best_weights = None
    if resume:
        state = resume
        model.set_weights(_load_npz(checkpoint / "weights.npz"))
        model.optimizer.build(model.trainable_variables)
        saved = _load_npz(checkpoint / "optimizer.npz")
        for variable, value in zip(model.optimizer.variables, saved, strict=True):
            variable.assign(value)
        best_weights = _load_npz(checkpoint / "best.npz")

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
            _save_npz(checkpoint / "weights.npz", model.get_weights())
            _save_npz(checkpoint / "optimizer.npz", [v.numpy() for v in model.optimizer.variables])
            write_json_atomic(checkpoint / "state.json", state)  # the commit point
            if on_epoch is not None:
                on_epoch(epoch + 1, config.epochs, logs)
            if state["wait"] >= config.patience:
                self.model.stop_training = True

    if state["epoch"] < config.epochs and state["wait"] < config.patience:
        model.fit(x_train, y_train, validation_data=(x_val, y_val), epochs=config.epochs,
                  initial_epoch=state["epoch"], batch_size=config.batch_size,
                  class_weight=weights, shuffle=True, callbacks=[Checkpoint()], verbose=0)
    if best_weights is not None:
        model.set_weights(best_weights)  # early stopping restores the best epoch
    if weights[1] != weights[0]:
        # Class weights multiply the learned odds by w1/w0; shifting the output bias by
        # -log(w1/w0) restores calibrated probabilities without touching the ranking.
        dense = model.get_layer("purchase")
        kernel, bias = dense.get_weights()
        dense.set_weights([kernel, bias - math.log(weights[1] / weights[0])])
    return model, state["history"], state["best_epoch"] or len(state["history"].get("loss", []))


def _fit_logreg(x_train, y_train, seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    # Unweighted: the baseline's probabilities stay calibrated; only ranking is compared.
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=seed))
    return model.fit(x_train, y_train)


def _ragged(prefix: str, sessions: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Sessions of different lengths as one array plus offsets (npz holds no ragged arrays)."""
    return {f"{prefix}features": np.concatenate(sessions).astype(np.float32),
            f"{prefix}offsets": np.r_[0, np.cumsum([len(x) for x in sessions])].astype(np.int64)}


CALIBRATION_SESSIONS = 1000


def calibration_sample(y: np.ndarray, p: np.ndarray, seed: int,
                       n: int = CALIBRATION_SESSIONS) -> np.ndarray:
    """Indices of up to ``n`` training sessions for int8 calibration, in random order.

    int8 calibration sets each tensor's range from what it sees: if no calibration session
    scores high, the output logit's range ends below 0 and every quantized probability is
    capped near 0.5 (seen on Taobao). So the sample holds the ``n // 10`` highest-scoring
    sessions, purchasing sessions for at least a quarter, and random others for the rest;
    any prefix of it (``--calibration-sessions``) keeps roughly that mix.
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
        RunDirError: ``config.out`` exists and ``overwrite`` is False.
        ConfigError: impossible settings, or a split without both classes.
    """
    stage = on_stage or (lambda _msg: None)
    timings: dict[str, float] = {}
    out = Path(config.out)
    with rundir.staged_run_dir(out, config.overwrite, config.resume) as tmp:
        resume_state = _resume_state(tmp, config) if config.resume else None
        if not config.resume:
            write_json_atomic(tmp / rundir.CONFIG, config.to_dict())
        t0 = time.perf_counter()
        stage("reading the log")
        log = read_log(config.data, config.format, preset=preset, strict=config.strict)
        timings["read_s"] = time.perf_counter() - t0

        t1 = time.perf_counter()
        stage("sessions, labels, split, features")
        sessions = sessionize(log, config.gap_minutes)
        split = time_split(sessions, config.validation, config.test)
        encoder = new_encoder(sessions, config.max_len, config.use_context)
        encoder.fit(np.concatenate(raw_sessions(sessions, split.train, encoder)))
        encoded = {name: encode_sessions(sessions, idx, encoder)
                   for name, idx in (("train", split.train), ("validation", split.validation),
                                     ("test", split.test))}
        timings["sessionize_encode_s"] = time.perf_counter() - t1
        events_encoded = sum(len(x) for part in encoded.values() for x in part)

        y = {name: sessions.label[idx].astype(np.float32) for name, idx in
             (("train", split.train), ("validation", split.validation), ("test", split.test))}
        x = {name: pad(part, config.max_len) for name, part in encoded.items()}
        weights = _class_weights(y["train"], config.class_weight)

        stage("training the LSTM")
        t2 = time.perf_counter()
        if resume_state:
            stage(f"training the LSTM (resumed after epoch {resume_state['epoch']})")
        model, history, best_epoch = _fit_lstm(config, x["train"], y["train"], x["validation"],
                                               y["validation"], weights, on_epoch,
                                               tmp / CHECKPOINT, resume_state)
        timings["train_lstm_s"] = time.perf_counter() - t2
        p_val = model.predict(x["validation"], batch_size=256, verbose=0).reshape(-1)
        p_test = model.predict(x["test"], batch_size=256, verbose=0).reshape(-1)
        threshold = choose_threshold(y["validation"], p_val)

        stage("logistic-regression baseline")
        agg = {name: aggregate_features(sessions, idx)[0] for name, idx in
               (("train", split.train), ("validation", split.validation), ("test", split.test))}
        logreg = _fit_logreg(agg["train"], y["train"], config.seed)
        q_val = logreg.predict_proba(agg["validation"])[:, 1]
        q_test = logreg.predict_proba(agg["test"])[:, 1]
        lr_threshold = choose_threshold(y["validation"], q_val)

        test_len = sessions.prefix_len[split.test]
        report = {
            "data": {"path": str(config.data), "format": log.format, "rows_read": log.rows_read,
                     "events": len(log), "bad_rows": log.bad.summary(), **sessions.summary(),
                     "has_user_ids": log.has_user_ids,
                     "time_span_utc": [float(log.ts.min()), float(log.ts.max())]},
            "split": {name: {"sessions": int(len(idx)), "positives": int(sessions.label[idx].sum())}
                      for name, idx in (("train", split.train), ("validation", split.validation),
                                        ("test", split.test))},
            "features": list(encoder.features),
            "threshold": threshold,
            "threshold_rule": "maximises F1 on the validation split",
            "class_weights": {str(k): v for k, v in weights.items()},
            "best_epoch": best_epoch,
            "epochs_run": len(history["loss"]),
            "history": history,
            "test": {
                "lstm": {"n_sessions": int(len(split.test)), "n_positive": int(y["test"].sum()),
                         **classification_metrics(y["test"], p_test, threshold),
                         "by_prefix_length": by_prefix_length(y["test"], p_test, test_len, threshold)},
                "logreg": {"n_sessions": int(len(split.test)), "n_positive": int(y["test"].sum()),
                           "threshold": lr_threshold,
                           **classification_metrics(y["test"], q_test, lr_threshold)},
            },
            "timings": {**{k: round(v, 3) for k, v in timings.items()},
                        "events_encoded": int(events_encoded)},
        }

        from trainer.model import weights_to_arrays

        np.savez(tmp / rundir.WEIGHTS, **weights_to_arrays(model))
        write_json_atomic(tmp / rundir.SPEC, encoder.spec().to_dict())
        write_json_atomic(tmp / rundir.SPLIT, split.manifest(sessions))
        # The test sessions as the model saw them, with the Keras probabilities: `convert`
        # checks every artifact against these without reading the log again; validation
        # sessions pick and recalibrate quantized artifacts; training sessions calibrate int8.
        p_train = model.predict(x["train"], batch_size=256, verbose=0).reshape(-1)
        calibration = calibration_sample(y["train"], p_train, config.seed)
        np.savez(tmp / rundir.PARITY,
                 **_ragged("", encoded["test"]), keras_probability=p_test, label=y["test"],
                 **_ragged("validation_", encoded["validation"]), validation_label=y["validation"],
                 validation_keras_probability=p_val,
                 **_ragged("calibration_", [encoded["train"][i] for i in calibration]),
                 calibration_label=y["train"][calibration])
        write_json_atomic(tmp / rundir.REPORT_JSON, report)
        (tmp / rundir.REPORT_MD).write_text(render_report_md(report))
        log.bad.write(tmp / rundir.QUARANTINE)
        shutil.rmtree(tmp / CHECKPOINT, ignore_errors=True)
    return report


# Settings that may differ between a killed run and its --resume.
RESUME_FREE = ("overwrite", "resume", "strict")


def _resume_state(stage: Path, config: TrainConfig) -> dict:
    """The interrupted run's checkpoint state; ConfigError when it was another configuration."""
    try:
        before = json.loads((stage / rundir.CONFIG).read_text())
        state = json.loads((stage / CHECKPOINT / "state.json").read_text())
    except (OSError, json.JSONDecodeError):
        raise RunDirError(f"{config.out}: the interrupted run has no complete checkpoint yet "
                          f"(killed before its first epoch ended); start it again without --resume") from None
    now = config.to_dict()
    changed = {k: (before.get(k), v) for k, v in now.items()
               if k not in RESUME_FREE and before.get(k) != v}
    if changed:
        raise ConfigError(f"--resume with other settings than the interrupted run: "
                          f"{ {k: f'{a!r} -> {b!r}' for k, (a, b) in changed.items()} }")
    return state


def render_report_md(report: dict) -> str:
    """The training report for a person: data, split, test metrics of LSTM and baseline."""
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
        "| model | ROC-AUC | PR-AUC | log-loss | Brier (MSE) | MAE | accuracy | F1 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in ("lstm", "logreg"):
        m = t[name]
        cells = [f"{m[k]:.4f}" if m[k] is not None else "n/a"
                 for k in ("roc_auc", "pr_auc", "log_loss", "brier", "mae", "accuracy", "f1")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "## LSTM by prefix length (test)", "",
              "| events before purchase | sessions | with purchase | ROC-AUC |", "|---|---:|---:|---:|"]
    for bucket, m in t["lstm"]["by_prefix_length"].items():
        auc = m.get("roc_auc")
        lines.append(f"| {bucket} | {m['n_sessions']} | {m['n_positive']} | "
                     f"{'n/a' if auc is None else f'{auc:.4f}'} |")
    return "\n".join(lines) + "\n"
