"""`ubp-edge train`: an LSTM and a logistic-regression baseline from a prepared folder or a
log, into a run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ubp_edge.console import (
    METRIC_COLUMNS,
    bad_rows_line,
    err,
    metric_cells,
    out,
    require,
    user_errors,
)
from ubp_edge.options import (
    DelimiterOpt,
    EventsOpt,
    FormatOpt,
    MapOpt,
    StrictOpt,
    TimeUnitOpt,
    log_inputs,
    log_source,
)

# Fixed by a prepared folder (its manifest's settings): None means "the folder's", or for a
# log the default named in the help.
FROM_PREP = "default {}, or the prepared folder's"


def train(
    data: Annotated[Path, typer.Option("--data", help=(
        "The event log to learn from, or a folder `ubp-edge prepare` wrote (streamed in "
        "shards, batched by session length)."))],
    out_dir: Annotated[Path, typer.Option("--out", help="Run directory to create.")],
    format: FormatOpt = None, column_map: MapOpt = None, event_map: EventsOpt = None,
    time_unit: TimeUnitOpt = "auto", delimiter: DelimiterOpt = ",",
    units: Annotated[int, typer.Option(help="LSTM units.")] = 128,
    epochs: Annotated[int, typer.Option(help="Maximum epochs (early stopping on validation PR-AUC).")] = 10,
    batch_size: Annotated[int, typer.Option(help="Mini-batch size.")] = 32,
    learning_rate: Annotated[float, typer.Option(help="Adam learning rate.")] = 1e-3,
    max_len: Annotated[int | None, typer.Option(
        help=f"Events per session the model is trained on (the last ones; scoring reads every "
             f"event); {FROM_PREP.format(50)}.")] = None,
    gap_minutes: Annotated[float | None, typer.Option(
        help=f"Session inactivity gap (logs without session ids); {FROM_PREP.format(30)}.")] = None,
    validation: Annotated[float | None, typer.Option(
        help=f"Validation share of sessions (by start time); {FROM_PREP.format(0.15)}.")] = None,
    test: Annotated[float | None, typer.Option(
        help=f"Test share of sessions (the latest); {FROM_PREP.format(0.15)}.")] = None,
    class_weight: Annotated[str, typer.Option(
        help="none or balanced (output bias corrected after).")] = "balanced",
    prefixes: Annotated[str, typer.Option(
        help="What a training session gives each epoch: random (one prefix cut at a random "
             "length, so the model learns to answer after the first clicks) or whole (its "
             "whole prefix before the purchase).")] = "random",
    dropout: Annotated[float, typer.Option(
        help="The LSTM's input dropout while training (the article's model: none).")] = 0.0,
    patience: Annotated[int, typer.Option(help="Early-stopping patience in epochs.")] = 3,
    tune: Annotated[int, typer.Option(
        help="Search N settings (units, dropout, learning rate, class weighting, prefixes; the "
             "first the ones given) on the validation split and keep the best; tuning.json "
             "lists every trial. 0: no search.")] = 0,
    ensemble: Annotated[int, typer.Option(
        help="Train K models (other seeds, the chosen settings) and merge them into one LSTM "
             "of K x units units, one graph in one file: the mean of their logits.")] = 1,
    context: Annotated[bool | None, typer.Option(
        "--context/--no-context",
        help="Use user-history features when the log has user ids; default on, or the prepared "
             "folder's.")] = None,
    target_stats: Annotated[bool | None, typer.Option(
        "--target-stats/--no-target-stats",
        help="Category (and dense item) purchase rates and popularity learned on the training "
             "split as features; default on, or the prepared folder's.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    strict: StrictOpt = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run directory.")] = False,
    resume: Annotated[bool, typer.Option(
        help="Continue an interrupted run (killed or Ctrl-C) from its last epoch.")] = False,
    distribute: Annotated[str | None, typer.Option(
        help="Train with tf.distribute: mirrored (this machine's devices) or multi-worker (one "
             "process per worker, the cluster from TF_CONFIG as a cluster manager sets it; --data "
             "a prepared folder, split among the workers by shard; the chief writes --out).")] = None,
    local_workers: Annotated[int | None, typer.Option(
        help="Start this many multi-worker processes on this machine (127.0.0.1), to try "
             "--distribute multi-worker.")] = None,
) -> None:
    """Train the LSTM and a logistic-regression baseline; write a run directory with the report."""
    # Ctrl-C keeps the staged run (trainer.rundir.staged_run_dir): say how to continue it.
    with user_errors(interrupted=lambda: interrupted_line(out_dir)):
        from trainer.files import check_outputs
        from trainer.rundir import check_target

        require("ubp-edge train", "pyarrow", "sklearn", "tensorflow", "tf_keras")
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        from trainer.train import TrainConfig
        from trainer.train import train as run_training

        config = TrainConfig(data=str(data), out=str(out_dir), format=format, units=units,
                             epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                             max_len=max_len, gap_minutes=gap_minutes, validation=validation,
                             test=test, class_weight=class_weight, prefixes=prefixes, dropout=dropout,
                             patience=patience, tune=tune, ensemble=ensemble,
                             use_context=context, target_stats=target_stats, seed=seed,
                             strict=strict, overwrite=overwrite,
                             resume=resume)
        # TrainConfig carries the log's path, format, gap and strictness into config.json;
        # the source checks the --format csv mapping and resolves the preset.
        source = log_source(data, format, column_map, event_map, time_unit, delimiter, strict,
                            gap_minutes)
        check_outputs({"--data": log_inputs(source)}, replaced={"--out": out_dir})
        check_target(out_dir, overwrite, resume)
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                      TimeElapsedColumn(), console=err, transient=False) as progress:
            task = progress.add_task("starting", total=epochs, info="")

            def on_stage(message: str) -> None:
                progress.update(task, description=message)

            def on_epoch(epoch: int, total: int, logs: dict) -> None:
                progress.update(task, completed=epoch, info=(
                    f"epoch {epoch}/{total} loss {logs.get('loss', float('nan')):.4f} "
                    f"val PR-AUC {logs.get('val_pr_auc', float('nan')):.4f}"))

            if distribute is None and local_workers is None:
                report = run_training(config, source=source, on_stage=on_stage, on_epoch=on_epoch)
            else:
                from trainer.distribute import train_distributed

                report = train_distributed(config, distribute, local_workers, source=source,
                                           on_stage=on_stage, on_epoch=on_epoch)
            progress.update(task, description="done")
        if report is None:
            err.print(f"this worker's part is done; the chief writes the run directory {out_dir}")
            return
        render_report(report, out_dir)


def interrupted_line(out_dir: Path) -> str:
    """What `train` says on Ctrl-C: whether a checkpoint was kept for ``--resume``, and where.

    Args:
        out_dir: the run directory as typed (``--out``).

    Returns:
        One line.
    """
    from trainer.rundir import stage_dir
    from trainer.train import CHECKPOINT

    stage = stage_dir(out_dir)
    if (stage / CHECKPOINT / "state.json").is_file():
        return (f"interrupted; the last complete epoch is kept in {stage}: run the same command "
                f"with --resume to continue")
    return "interrupted before the first epoch ended; nothing to resume"


def render_report(report: dict, out_dir: Path) -> None:
    """The lines and the test-split table `train` prints when it is done.

    Args:
        report: the training report (report.json).
        out_dir: the run directory, named in the last line.
    """
    from trainer.rundir import QUARANTINE

    d = report["data"]
    out.print(f"{d['events']:,} events, {d['sessions']:,} sessions "
              f"({d['sessions_with_purchase']:,} with a purchase, "
              f"{d['sessions_excluded_empty_prefix']:,} excluded: purchase first)")
    out.print(bad_rows_line(d["bad_rows"], out_dir / QUARANTINE if d["bad_rows"]["total"] else None))
    table = Table(title=f"test split: {report['test']['lstm']['n_sessions']:,} sessions, "
                        f"{report['test']['lstm']['n_positive']:,} with a purchase")
    table.add_column("model")
    for _, label in METRIC_COLUMNS:
        table.add_column(label, justify="right")
    for name in ("lstm", "logreg"):
        table.add_row(name, *metric_cells(report["test"][name], 4))
    out.print(table)
    t = report["timings"]
    out.print(f"threshold {report['threshold']:.4f} (max F1 on validation); best epoch "
              f"{report['best_epoch']}/{report['epochs_run']}; train {t['train_lstm_s']:.1f} s; "
              f"run directory {out_dir}")
