"""Epoch time and test ROC-AUC on the Taobao sample: length-bucketed training from a PREP_DIR
(today's `train`) against padding every session to 50 (`train` before issue 11, taken from
git as it was at commit df42467).

Usage (from the repository's root, one run per call; alternate them on a shared machine):

    python -m benchmarks.train_bucketing new|old SEED OUT.jsonl [PATIENCE]

Appends one JSON line: per-epoch wall and CPU seconds, the median over epochs 2.. (the first
one traces the graph), training examples per second, test ROC-AUC and PR-AUC. PATIENCE 10
makes every run train all 10 epochs, so that epoch times are medians over equal counts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("UBP_EDGE_DATA", ROOT.parent / "shared" / "data"))
LOG = DATA / "taobao" / "UserBehavior_sample.csv"
OLD_COMMIT = "df42467"  # the last commit that trained on sessions padded to max_len


def _old_train_module(folder: Path):
    """trainer/train.py as it was at OLD_COMMIT, importable as ``old_train``."""
    source = subprocess.run(["git", "show", f"{OLD_COMMIT}:trainer/train.py"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout
    (folder / "old_train.py").write_text(source)
    sys.path.insert(0, str(folder))
    import old_train

    return old_train


def main(which: str, seed: int, out: str, patience: int = 3) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # as the CLI does
    work = Path(tempfile.mkdtemp(prefix="ubp-edge-bucketing-"))
    marks: list[tuple[object, float, float]] = []

    def on_stage(message: str) -> None:
        if message.startswith("training the LSTM"):
            marks.append(("start", time.perf_counter(), time.process_time()))

    def on_epoch(epoch: int, total: int, logs: dict) -> None:
        marks.append((epoch, time.perf_counter(), time.process_time()))

    if which == "old":
        t = _old_train_module(work)
        config = t.TrainConfig(data=str(LOG), out=str(work / "run"), format="taobao", seed=seed,
                               patience=patience)
    elif which == "new":
        from trainer import train as t
        from trainer.logsource import EventLogSource
        from trainer.prepare import PrepareConfig, prepare

        prepare(PrepareConfig(source=EventLogSource(LOG, format="taobao"), out=str(work / "prep")))
        config = t.TrainConfig(data=str(work / "prep"), out=str(work / "run"), seed=seed, patience=patience)
    else:
        raise SystemExit("usage: python -m benchmarks.train_bucketing new|old SEED OUT.jsonl [PATIENCE]")
    report = t.train(config, on_stage=on_stage, on_epoch=on_epoch)
    wall = [b[1] - a[1] for a, b in zip(marks, marks[1:], strict=False)]
    cpu = [b[2] - a[2] for a, b in zip(marks, marks[1:], strict=False)]
    n_train = report["split"]["train"]["sessions"]
    result = {"which": which, "seed": seed, "epoch_s": wall, "epoch_cpu_s": cpu,
              "median_epoch_s_after_first": float(np.median(wall[1:])),
              "median_epoch_cpu_s_after_first": float(np.median(cpu[1:])),
              "train_sessions": n_train, "examples_per_s": n_train / float(np.median(wall[1:])),
              "test_roc_auc": report["test"]["lstm"]["roc_auc"],
              "test_pr_auc": report["test"]["lstm"]["pr_auc"], "epochs_run": report["epochs_run"]}
    with open(out, "a") as f:
        f.write(json.dumps(result) + "\n")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else 3)
