"""`ubp-edge`: the one command. Thin: parse, build a config, call one library function, render.

Errors a person can act on (UbpEdgeError) become one red line on stderr and exit code 1;
anything else keeps its traceback, because it is a bug. Heavy imports (pyarrow, sklearn,
TensorFlow) happen inside the commands, so `ubp-edge --help` starts fast.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from edge_runtime.errors import UbpEdgeError

app = typer.Typer(help="Purchase-intent scoring of browsing sessions, trained with an LSTM and "
                       "run on the edge with TFLite.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
data_app = typer.Typer(help="Inspect event logs and generate the embedded demo log.",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")

out = Console()
err = Console(stderr=True)


@contextmanager
def user_errors():
    """Turn the project's errors into one line on stderr and exit code 1."""
    try:
        yield
    except UbpEdgeError as e:
        err.print(Text("error: ", style="bold red") + Text(str(e)), soft_wrap=True)
        raise typer.Exit(1) from None


def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


# ----------------------------------------------------------------------------- shared options
FormatOpt = Annotated[str | None, typer.Option(
    "--format", "-f", help="taobao, rees46, diginetica, otto, retailrocket, canonical, or csv "
                           "(with --map); default: detected from the first line.")]
MapOpt = Annotated[str | None, typer.Option(
    "--map", help="--format csv: canonical=source columns, e.g. "
                  "user=visitorid,time=timestamp,event=event,item=itemid[,session=..,category=..,price=..]")]
EventsOpt = Annotated[str | None, typer.Option(
    "--events", help="--format csv: canonical=source event values, e.g. "
                     "view=pv,cart=addtocart,purchase=buy|transaction")]
TimeUnitOpt = Annotated[str, typer.Option("--time-unit", help="--format csv: s, ms, datetime or auto.")]
DelimiterOpt = Annotated[str, typer.Option("--delimiter", help="--format csv: field separator.")]
StrictOpt = Annotated[bool, typer.Option("--strict", help="Any bad row is an error (exit 1).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]


def _preset(format: str | None, column_map: str | None, event_map: str | None, time_unit: str,
            delimiter: str):
    from trainer.formats import custom_preset, get_preset

    if format == "csv":
        return custom_preset(column_map, event_map, time_unit, delimiter)
    if column_map or event_map:
        from edge_runtime.errors import ConfigError
        raise ConfigError("--map and --events go with --format csv")
    return get_preset(format) if format else None


def _bad_rows_line(bad: dict, where: Path | None) -> Text:
    text = Text(f"bad rows: {bad['total']:,}", style="yellow" if bad["total"] else "green")
    if bad["by_reason"]:
        text += Text(" (" + ", ".join(f"{k} {v:,}" for k, v in bad["by_reason"].items()) + ")")
    if where is not None:
        text += Text(f" -> {where}")
    return text


def _print_json(obj: dict) -> None:
    print(json.dumps(obj, indent=None, sort_keys=False))


# ----------------------------------------------------------------------------- data
@data_app.command("inspect")
def data_inspect(
    path: Annotated[Path, typer.Argument(help="The event log (CSV, JSONL or Parquet; .gz ok).")],
    format: FormatOpt = None, column_map: MapOpt = None, event_map: EventsOpt = None,
    time_unit: TimeUnitOpt = "auto", delimiter: DelimiterOpt = ",",
    gap_minutes: Annotated[float, typer.Option(help="Session inactivity gap (logs without session ids).")] = 30.0,
    quarantine: Annotated[Path | None, typer.Option(help="Write bad rows here (JSONL).")] = None,
    strict: StrictOpt = False, as_json: JsonOpt = False,
) -> None:
    """Rows, bad rows by reason, users, sessions, purchases, time span and event mix of a log."""
    with user_errors():
        from trainer.summary import summarize_log

        started = time.perf_counter()
        summary, log = summarize_log(path, _preset(format, column_map, event_map, time_unit, delimiter),
                                     gap_minutes=gap_minutes, strict=strict)
        summary["seconds"] = round(time.perf_counter() - started, 3)
        summary["events_per_second"] = round(summary["rows_read"] / max(summary["seconds"], 1e-9))
        written = log.bad.write(quarantine) if quarantine else None
        summary["quarantine"] = str(written) if written else None
        if as_json:
            _print_json(summary)
            return
        table = Table(title=f"{path} ({summary['format']})", show_header=False)
        for key in ("rows_read", "events", "users", "sessions", "sessions_with_purchase",
                    "sessions_excluded_empty_prefix", "session_rule"):
            value = summary[key]
            table.add_row(key.replace("_", " "), f"{value:,}" if isinstance(value, int) else str(value))
        table.add_row("time span (UTC)", " .. ".join(summary["time_span_utc"]))
        table.add_row("event mix", ", ".join(f"{k} {v:,}" for k, v in summary["event_mix"].items()))
        table.add_row("read + sessionize", f"{summary['seconds']:.3f} s "
                                           f"({summary['events_per_second']:,} rows/s)")
        out.print(table)
        out.print(_bad_rows_line(summary["bad_rows"], written))
        if summary["bad_rows"]["total"] and not quarantine:
            out.print("  (pass --quarantine FILE to keep them)")


@data_app.command("generate")
def data_generate(
    out_path: Annotated[Path, typer.Argument(help="CSV to write (canonical columns).")],
    users: Annotated[int, typer.Option(help="Number of shoppers.")] = 400,
    days: Annotated[int, typer.Option(help="Days of activity.")] = 9,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same log.")] = 0,
) -> None:
    """Write the embedded demo log: seeded synthetic sessions with a realistic funnel."""
    with user_errors():
        from trainer.synthetic import generate_events, write_canonical_csv

        rows = write_canonical_csv(generate_events(n_users=users, days=days, seed=seed), out_path)
        out.print(f"wrote {rows:,} events of {users} synthetic users over {days} days to {out_path}")


# ----------------------------------------------------------------------------- train
@app.command()
def train(
    data: Annotated[Path, typer.Option("--data", help="The event log to learn from.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Run directory to create.")],
    format: FormatOpt = None, column_map: MapOpt = None, event_map: EventsOpt = None,
    time_unit: TimeUnitOpt = "auto", delimiter: DelimiterOpt = ",",
    units: Annotated[int, typer.Option(help="LSTM units.")] = 128,
    epochs: Annotated[int, typer.Option(help="Maximum epochs (early stopping on validation PR-AUC).")] = 10,
    batch_size: Annotated[int, typer.Option(help="Mini-batch size.")] = 32,
    learning_rate: Annotated[float, typer.Option(help="Adam learning rate.")] = 1e-3,
    max_len: Annotated[int, typer.Option(help="Events per session the model sees (the last ones).")] = 50,
    gap_minutes: Annotated[float, typer.Option(help="Session inactivity gap (logs without session ids).")] = 30.0,
    validation: Annotated[float, typer.Option(help="Validation share of sessions (by start time).")] = 0.15,
    test: Annotated[float, typer.Option(help="Test share of sessions (the latest).")] = 0.15,
    class_weight: Annotated[str, typer.Option(help="none or balanced (output bias corrected after).")] = "balanced",
    patience: Annotated[int, typer.Option(help="Early-stopping patience in epochs.")] = 3,
    context: Annotated[bool, typer.Option(help="Use user-history features when the log has user ids.")] = True,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    strict: StrictOpt = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run directory.")] = False,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run (killed or Ctrl-C) from its last epoch.")] = False,
) -> None:
    """Train the LSTM and a logistic-regression baseline; write a run directory with the report."""
    with user_errors():
        _quiet_tensorflow()
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        from edge_runtime.errors import ConfigError
        from trainer.train import TrainConfig
        from trainer.train import train as run_training

        try:
            config = TrainConfig(data=str(data), out=str(out_dir), format=format, units=units,
                                 epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                                 max_len=max_len, gap_minutes=gap_minutes, validation=validation,
                                 test=test, class_weight=class_weight, patience=patience,
                                 use_context=context, seed=seed, strict=strict, overwrite=overwrite,
                                 resume=resume)
        except ValueError as e:  # an unknown enum value
            raise ConfigError(f"--class-weight: {e}") from None
        preset = _preset(format, column_map, event_map, time_unit, delimiter)
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                      TimeElapsedColumn(), console=err, transient=False) as progress:
            task = progress.add_task("starting", total=epochs, info="")

            def on_stage(message: str) -> None:
                progress.update(task, description=message)

            def on_epoch(epoch: int, total: int, logs: dict) -> None:
                progress.update(task, completed=epoch, info=(
                    f"epoch {epoch}/{total} loss {logs.get('loss', float('nan')):.4f} "
                    f"val PR-AUC {logs.get('val_pr_auc', float('nan')):.4f}"))

            report = run_training(config, preset=preset, on_stage=on_stage, on_epoch=on_epoch)
            progress.update(task, description="done")
        _render_train_report(report, out_dir)


def _render_train_report(report: dict, out_dir: Path) -> None:
    d = report["data"]
    out.print(f"{d['events']:,} events, {d['sessions']:,} sessions "
              f"({d['sessions_with_purchase']:,} with a purchase, "
              f"{d['sessions_excluded_empty_prefix']:,} excluded: purchase first)")
    out.print(_bad_rows_line(d["bad_rows"], out_dir / "quarantine.jsonl" if d["bad_rows"]["total"] else None))
    table = Table(title=f"test split: {report['test']['lstm']['n_sessions']:,} sessions, "
                        f"{report['test']['lstm']['n_positive']:,} with a purchase")
    table.add_column("model")
    for _, label in METRIC_COLUMNS:
        table.add_column(label, justify="right")
    for name in ("lstm", "logreg"):
        m = report["test"][name]
        table.add_row(name, *("n/a" if m[k] is None else f"{m[k]:.4f}" for k, _ in METRIC_COLUMNS))
    out.print(table)
    t = report["timings"]
    out.print(f"threshold {report['threshold']:.4f} (max F1 on validation); best epoch "
              f"{report['best_epoch']}/{report['epochs_run']}; train {t['train_lstm_s']:.1f} s; "
              f"run directory {out_dir}")


# ----------------------------------------------------------------------------- convert
@app.command()
def convert(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `ubp-edge train`.")],
    precision: Annotated[str | None, typer.Option(
        help="Comma-separated: float32, float16, dynamic, int8, int8-io, 16x8 (default: all).")] = None,
    graph: Annotated[str, typer.Option(help="Comma-separated graphs: fused (one LSTM op), unrolled.")] = "fused",
    calibration_sessions: Annotated[int, typer.Option(help="Training sessions for int8/16x8 calibration.")] = 300,
    recalibrate: Annotated[bool, typer.Option(help="Platt-scale quantized outputs on validation sessions where it helps.")] = True,
    auto: Annotated[bool, typer.Option("--auto", help="Pick the smallest, fastest precision within --max-auc-drop on validation.")] = False,
    max_auc_drop: Annotated[float | None, typer.Option(help="With --auto: the ROC-AUC budget against float32.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing artifacts.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Write validated TFLite artifacts (spec, threshold and provenance inside) into the run directory."""
    with user_errors():
        _quiet_tensorflow()
        from converters.tflite import ConvertConfig, auto_convert, convert_run
        from edge_runtime.errors import ConfigError

        why = None
        if auto:
            if max_auc_drop is None:
                raise ConfigError("--auto needs --max-auc-drop, e.g. --max-auc-drop 0.005")
            chosen, results, why = auto_convert(run_dir, max_auc_drop, overwrite, calibration_sessions)
        else:
            if max_auc_drop is not None:
                raise ConfigError("--max-auc-drop goes with --auto")
            config = ConvertConfig(
                precisions=tuple(p.strip() for p in (precision or "").split(",") if p.strip()),
                graphs=tuple(g.strip() for g in graph.split(",") if g.strip()),
                calibration_sessions=calibration_sessions, recalibrate=recalibrate,
                overwrite=overwrite)
            results = convert_run(run_dir, config=config)
        rows = [{k: v for k, v in r.to_dict().items() if k != "ops"} for r in results]
        if as_json:
            _print_json({"artifacts": rows, **({"auto": why} if auto else {})})
        else:
            out.print(_conversion_table(results, run_dir))
            if why:
                out.print(Text("chose " + why), soft_wrap=True)
        failed = [r for r in results if r.status == "failed"]
        if failed:
            err.print(Text("error: ", style="bold red") + Text(
                "; ".join(f"{r.graph}/{r.precision}: {r.reason}" for r in failed)), soft_wrap=True)
            raise typer.Exit(1)


def _conversion_table(results, run_dir: Path) -> Table:
    """One row per artifact; reasons of rows that did not convert are listed under the table."""
    table = Table(title=f"artifacts of {run_dir}", caption=_conversion_notes(results),
                  caption_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for col, justify in (("artifact", "left"), ("status", "left"), ("KB", "right"),
                         ("x f32", "right"), ("max|dp|", "right"), ("val AUC", "right"),
                         ("test ECE", "right")):
        table.add_column(col, justify=justify, no_wrap=True)
    reference = next((r.size_bytes for r in results
                      if r.precision == "float32" and r.graph == "fused" and r.size_bytes), None)
    for r in results:
        ece = ""
        if r.ece_after is not None:
            ece = (f"{r.ece_before:.3f}>{r.ece_after:.3f}" if r.recalibrated
                   else f"{r.ece_after:.3f}")
        table.add_row(r.precision if r.graph == "fused" else f"{r.graph}-{r.precision}", r.status,
                      f"{r.size_bytes / 1024:.0f}" if r.size_bytes else "",
                      f"{r.size_bytes / reference:.2f}" if r.size_bytes and reference else "",
                      f"{r.max_abs_diff:.1e}" if r.max_abs_diff is not None else "",
                      f"{r.validation_roc_auc:.4f}" if r.validation_roc_auc is not None else "",
                      ece)
    return table


def _conversion_notes(results) -> str:
    notes = [f"{r.graph}/{r.precision}: {r.reason}" for r in results if r.reason]
    if any(r.recalibrated for r in results):
        notes.append("a>b: ECE before > after Platt recalibration toward the float32 output")
    return "\n".join(notes)


# ----------------------------------------------------------------------------- score / evaluate
def _load_scorer(model: Path, backend: str):
    from edge_runtime.scorer import Scorer

    return Scorer.load(model, backend=backend)


@app.command()
def score(
    model: Annotated[Path, typer.Option("--model", help="An artifact (.tflite) from `ubp-edge convert`.")],
    data: Annotated[Path, typer.Option("--data", help="The event log to score.")],
    out_file: Annotated[Path | None, typer.Option("--out", help="Scores file (.jsonl or .csv); default: stdout as JSONL.")] = None,
    format: FormatOpt = None, column_map: MapOpt = None, event_map: EventsOpt = None,
    time_unit: TimeUnitOpt = "auto", delimiter: DelimiterOpt = ",",
    gap_minutes: Annotated[float | None, typer.Option(help="Session gap; default: the model's.")] = None,
    backend: Annotated[str, typer.Option(help="auto, ai-edge-litert, tflite-runtime or tensorflow.")] = "auto",
    strict: StrictOpt = False,
) -> None:
    """Score every session of a log on the edge runtime (no TensorFlow): one line per session."""
    with user_errors():
        from trainer.scoring import score_log, write_scores

        scorer = _load_scorer(model, backend)
        started = time.perf_counter()
        scored = score_log(scorer, data, format, _preset(format, column_map, event_map, time_unit, delimiter),
                           gap_minutes, strict)
        seconds = time.perf_counter() - started
        for w in scored.warnings:
            err.print(Text("warning: ", style="yellow") + Text(w), soft_wrap=True)
        if out_file is None:
            import tempfile
            with tempfile.TemporaryDirectory() as tmp:
                print(write_scores(scored, scorer.threshold, Path(tmp) / "scores.jsonl").read_text(), end="")
            quarantine = None
        else:
            write_scores(scored, scorer.threshold, out_file)
            quarantine = scored.log.bad.write(out_file.with_name(out_file.name + ".quarantine.jsonl"))
        err.print(f"scored {len(scored.index):,} sessions ({len(scored.sessions) - len(scored.index):,} "
                  f"with nothing before their first purchase) in {seconds:.2f} s with "
                  f"{scorer.backend}" + (f" -> {out_file}" if out_file else ""), soft_wrap=True)
        err.print(_bad_rows_line(scored.log.bad.summary(), quarantine))


@app.command()
def evaluate(
    model: Annotated[Path, typer.Argument(help="An artifact (.tflite) from `ubp-edge convert`.")],
    data: Annotated[Path, typer.Option("--data", help="A labelled event log.")],
    format: FormatOpt = None, column_map: MapOpt = None, event_map: EventsOpt = None,
    time_unit: TimeUnitOpt = "auto", delimiter: DelimiterOpt = ",",
    gap_minutes: Annotated[float | None, typer.Option(help="Session gap; default: the model's.")] = None,
    backend: Annotated[str, typer.Option(help="auto, ai-edge-litert, tflite-runtime or tensorflow.")] = "auto",
    quarantine: Annotated[Path | None, typer.Option(help="Write bad rows here (JSONL).")] = None,
    split: Annotated[str | None, typer.Option(help="Only this split (train, validation, test) of --run-dir's split.json.")] = None,
    run_dir: Annotated[Path | None, typer.Option(help="The run directory whose split --split names.")] = None,
    strict: StrictOpt = False, as_json: JsonOpt = False,
) -> None:
    """Metrics of an artifact on a log's labelled sessions, scored through the edge runtime."""
    with user_errors():
        from edge_runtime.errors import ConfigError
        from trainer.scoring import evaluation_report, score_log, split_keys

        if (split is None) != (run_dir is None):
            raise ConfigError("--split and --run-dir go together, e.g. --split test --run-dir runs/taobao")
        keys = split_keys(run_dir / "split.json", split) if split else None
        scorer = _load_scorer(model, backend)
        scored = score_log(scorer, data, format, _preset(format, column_map, event_map, time_unit, delimiter),
                           gap_minutes, strict, only_keys=keys)
        report = evaluation_report(scored, scorer.threshold)
        report["split"] = split
        written = scored.log.bad.write(quarantine) if quarantine else None
        report["quarantine"] = str(written) if written else None
        if as_json:
            _print_json(report)
            return
        for w in scored.warnings:
            err.print(Text("warning: ", style="yellow") + Text(w), soft_wrap=True)
        out.print(render_metrics_table(report, f"{model.name} on {data}"))
        out.print(_bad_rows_line(report["bad_rows"], written))


@app.command()
def serve(
    model: Annotated[Path, typer.Option("--model", help="An artifact (.tflite) from `ubp-edge convert`.")],
    max_sessions: Annotated[int, typer.Option(help="Live sessions held; the least recently used goes first.")] = 10_000,
    idle_timeout: Annotated[float, typer.Option(help="Seconds of event time without a click before a session is dropped.")] = 1800.0,
    backend: Annotated[str, typer.Option(help="auto, ai-edge-litert, tflite-runtime or tensorflow.")] = "auto",
) -> None:
    """Score a stream: JSON lines of events on stdin, one JSON line per event on stdout.

    Input lines: {"session": KEY, "ts": ..., "event": "view|cart|fav|purchase", "item": ...,
    ["category", "price", "context"]}. Output: the updated probability per event, an error line
    for a malformed one (the stream goes on), and a line when a session is evicted or times out.
    """
    with user_errors():
        import sys

        from edge_runtime.scorer import Scorer
        from edge_runtime.serve import serve_lines

        scorer = Scorer.load(model, backend=backend)

        def emit(line: str) -> None:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

        store = serve_lines(scorer, sys.stdin, emit, max_sessions=max_sessions,
                            idle_timeout=idle_timeout)
        stats = store.stats
        err.print(f"served {stats.pushed:,} events in {stats.started:,} sessions; "
                  f"{stats.rejected:,} lines rejected, {stats.evicted_lru:,} sessions evicted (LRU), "
                  f"{stats.expired_idle:,} timed out; {len(store):,} still open", soft_wrap=True)


@app.command()
def doctor(
    artifact: Annotated[Path | None, typer.Argument(help="An artifact to load and score with each backend.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Interpreters this machine has (and their versions), numpy, Python, platform; with an
    artifact, whether it loads, scores and scores live on each."""
    with user_errors():
        _quiet_tensorflow()  # the tensorflow backend is probed too
        import warnings

        from edge_runtime.artifact import read_artifact
        from edge_runtime.doctor import doctor as run_doctor

        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")

        if artifact is not None:
            read_artifact(artifact)  # a missing or corrupted file is an error, not a table row
        report = run_doctor(artifact)
        if as_json:
            _print_json(report)
            return
        out.print(f"Python {report['python']} on {report['platform']}; numpy {report['numpy']}")
        table = Table(title=f"backends{'' if artifact is None else f' for {artifact}'}",
                      box=box.SIMPLE_HEAD)
        for col in ("backend", "version", "loads", "scores", "live", "p"):
            table.add_column(col, no_wrap=True)
        notes = []
        for row in report["backends"]:
            def mark(value, importable=row["importable"]):
                return "" if value is None or not importable else ("yes" if value else "no")
            table.add_row(row["name"], row["version"] or "not installed", mark(row.get("loads")),
                          mark(row.get("scores")), mark(row.get("live")),
                          "" if row.get("probability") is None else f"{row['probability']:.4f}")
            if row.get("detail"):
                notes.append(f"{row['name']}: {row['detail']}")
        out.print(table)
        for note in notes:
            out.print(Text(note), soft_wrap=True)


METRIC_COLUMNS = (("roc_auc", "ROC-AUC"), ("pr_auc", "PR-AUC"), ("log_loss", "logloss"),
                  ("brier", "Brier"), ("mae", "MAE"), ("accuracy", "acc"), ("f1", "F1"))


def render_metrics_table(report: dict, title: str) -> Table:
    """Metrics overall and by prefix length (events before the purchase)."""
    table = Table(title=f"{title}\n{report['n_sessions']:,} sessions, {report['n_positive']:,} with a "
                        f"purchase, {report['n_excluded_empty_prefix']:,} excluded (purchase first); "
                        f"threshold {report['threshold']:.4f}")
    table.add_column("prefix")
    table.add_column("n", justify="right")
    for _, label in METRIC_COLUMNS:
        table.add_column(label, justify="right")

    def cells(m: dict) -> list[str]:
        return ["n/a" if m.get(k) is None else f"{m[k]:.3f}" for k, _ in METRIC_COLUMNS]

    table.add_row("all", f"{report['n_sessions']:,}", *cells(report), style="bold")
    for bucket, m in report["by_prefix_length"].items():
        table.add_row(bucket, f"{m['n_sessions']:,}", *cells(m))
    return table


from ubp_edge import benchmark_cmd, compare_cmd  # noqa: E402  (after the helpers it imports lazily)

app.command("compare")(compare_cmd.compare)
app.command("benchmark")(benchmark_cmd.benchmark)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
