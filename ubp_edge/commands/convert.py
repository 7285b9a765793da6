"""`ubp-edge convert RUN_DIR`: validated TFLite artifacts from a run directory's weights."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.table import Table
from rich.text import Text

from converters.compare import REFERENCE, REFERENCE_GRAPH
from converters.precisions import GRAPHS, PRECISIONS
from edge_runtime.tiers import DEFAULT_TIER_NAMES, parse_names, parse_numbers
from ubp_edge.console import out, print_error, print_json, require, user_errors
from ubp_edge.options import JsonOpt, one_of

PRECISION_HELP = f"Comma-separated, of {', '.join(PRECISIONS)} (default: all; see below)."
GRAPH_HELP = f"Comma-separated graphs, of {one_of(GRAPHS)} ({REFERENCE_GRAPH}: one LSTM op)."
# Shown under the options of `convert --help`: what each precision is, from the table.
EPILOG = "Precisions: " + "; ".join(f"{p.name}: {p.description}" for p in PRECISIONS.values()) + "."
COLUMNS = (("artifact", "left"), ("status", "left"), ("KB", "right"), ("x f32", "right"),
           ("max|dp|", "right"), ("val AUC", "right"), ("test ECE", "right"))


def convert(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `ubp-edge train`.")],
    precision: Annotated[str | None, typer.Option(help=PRECISION_HELP)] = None,
    graph: Annotated[str, typer.Option(help=GRAPH_HELP)] = REFERENCE_GRAPH,
    calibration_sessions: Annotated[int, typer.Option(
        help="Training sessions for int8/16x8 calibration.")] = 300,
    recalibrate: Annotated[bool, typer.Option(
        help="Platt-scale quantized outputs on validation sessions where it helps.")] = True,
    auto: Annotated[bool, typer.Option(
        "--auto", help="Convert both graphs at int8, dynamic, float16 and float32, keep the fastest here "
                  "(measured) within --max-auc-drop on validation.")] = False,
    max_auc_drop: Annotated[float | None, typer.Option(
        help="With --auto: the ROC-AUC budget against float32.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing artifacts.")] = False,
    tiers: Annotated[str, typer.Option(
        help="The intent tiers each artifact carries, lowest first (`ubp-edge segment`).")
    ] = ",".join(DEFAULT_TIER_NAMES),
    tier_shares: Annotated[str | None, typer.Option(
        help="Share of validation sessions in each tier, e.g. 0.6,0.3,0.1; default: cut-offs "
             "that give each tier an equal share of the expected buyers.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Write validated TFLite artifacts (spec, threshold and provenance inside) into the run directory."""
    # Ctrl-C: the artifacts written so far are complete (each is written atomically).
    with user_errors(interrupted="interrupted; the artifacts written so far are complete"):
        require("ubp-edge convert", "sklearn", "tensorflow", "tf_keras")
        from converters.tflite import ConvertConfig, auto_convert, convert_run
        from edge_runtime.errors import ConfigError

        why = None
        if auto:
            if max_auc_drop is None:
                raise ConfigError("--auto needs --max-auc-drop, e.g. --max-auc-drop 0.005")
            choice = auto_convert(run_dir, max_auc_drop, overwrite, calibration_sessions,
                                  parse_names(tiers), _shares(tier_shares))
            results, why, p50 = choice.rows, choice.why, choice.p50_us
        else:
            if max_auc_drop is not None:
                raise ConfigError("--max-auc-drop goes with --auto")
            config = ConvertConfig(
                precisions=tuple(p.strip() for p in (precision or "").split(",") if p.strip()),
                graphs=tuple(g.strip() for g in graph.split(",") if g.strip()),
                calibration_sessions=calibration_sessions, recalibrate=recalibrate,
                overwrite=overwrite, tier_names=parse_names(tiers),
                tier_shares=_shares(tier_shares))
            results = convert_run(run_dir, config=config)
        rows = [{k: v for k, v in r.to_dict().items() if k != "ops"} for r in results]
        if auto:  # the latency --auto measured on this machine, per candidate
            for row in rows:
                row["p50_us"] = p50.get((row["graph"], row["precision"]))
        if as_json:
            print_json({"artifacts": rows, **({"auto": why} if auto else {})})
        else:
            out.print(conversion_table(results, run_dir))
            if why:
                out.print(Text("chose " + why), soft_wrap=True)
        failed = [r for r in results if r.status == "failed"]
        if failed:
            print_error("; ".join(f"{r.graph}/{r.precision}: {r.reason}" for r in failed))
            raise typer.Exit(1)


def conversion_table(results, run_dir: Path) -> Table:
    """One row per artifact; reasons of rows that did not convert are listed under the table.

    Args:
        results: the `converters.tflite` conversion results, one per artifact.
        run_dir: the run directory, named in the title.

    Returns:
        The Rich table.
    """
    table = Table(title=f"artifacts of {run_dir}", caption=_notes(results),
                  caption_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for col, justify in COLUMNS:
        table.add_column(col, justify=justify, no_wrap=True)
    reference = next((r.size_bytes for r in results
                      if r.precision == REFERENCE and r.graph == REFERENCE_GRAPH and r.size_bytes), None)
    for r in results:
        ece = ""
        if r.ece_after is not None:
            ece = (f"{r.ece_before:.3f}>{r.ece_after:.3f}" if r.recalibrated
                   else f"{r.ece_after:.3f}")
        table.add_row(r.precision if r.graph == REFERENCE_GRAPH else f"{r.graph}-{r.precision}", r.status,
                      f"{r.size_bytes / 1024:.0f}" if r.size_bytes else "",
                      f"{r.size_bytes / reference:.2f}" if r.size_bytes and reference else "",
                      f"{r.max_abs_diff:.1e}" if r.max_abs_diff is not None else "",
                      f"{r.validation_roc_auc:.4f}" if r.validation_roc_auc is not None else "",
                      ece)
    return table


def _notes(results) -> str:
    notes = [f"{r.graph}/{r.precision}: {r.reason}" for r in results if r.reason]
    if any(r.recalibrated for r in results):
        notes.append("a>b: ECE before > after Platt recalibration toward the float32 output")
    return "\n".join(notes)


def _shares(text: str | None) -> tuple[float, ...]:
    """``--tier-shares 0.6,0.3,0.1`` as floats; empty without the option (ConvertConfig checks them)."""
    return () if text is None else parse_numbers(text, "--tier-shares", "0.6,0.3,0.1")
