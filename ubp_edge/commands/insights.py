"""`ubp-edge explain` (why sessions score what they score) and `ubp-edge segment` (intent
tiers of a log's sessions, with their lift, and the assignments for a campaign tool).

Neither loads TensorFlow: the log goes through `trainer.scoring`, the artifact through
`edge_runtime` (trajectories on its step graph, occlusion on its whole-session graph, tiers
from its metadata); `trainer.insights` names the results in the log's terms.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from edge_runtime.explain import EXPLAINED_SESSIONS, IMPORTANCE_SESSIONS, TOP_EVENTS
from ubp_edge.console import (
    bad_rows_line,
    err,
    out,
    print_json,
    print_wide,
    require,
    user_errors,
    warn,
)
from ubp_edge.options import (
    BackendOpt,
    DelimiterOpt,
    EventsOpt,
    FormatOpt,
    JsonOpt,
    MapOpt,
    ModelGapOpt,
    ModelOpt,
    RunDirOpt,
    SplitOpt,
    StrictOpt,
    TimeUnitOpt,
    log_inputs,
    log_source,
    split_digests,
)

# The most sessions `explain --report` draws: a page of more trajectory plots is read by
# nobody, and the output guard checks each of its files against every other.
MAX_REPORT_SESSIONS = 100


def explain(
    model: ModelOpt,
    data: Annotated[Path, typer.Option("--data", help="The event log whose sessions to explain.")],
    session: Annotated[list[str] | None, typer.Option(
        "--session", help="A session key to explain (repeat for more); default: the "
                          "highest-scoring sessions.")] = None,
    sessions: Annotated[int, typer.Option(
        "--sessions", help="Without --session: how many of the highest-scoring sessions (at most "
                           f"{MAX_REPORT_SESSIONS} with --report).")] = EXPLAINED_SESSIONS,
    top: Annotated[int, typer.Option(
        help="Events listed per session: those that moved the score most.")] = TOP_EVENTS,
    importance_sessions: Annotated[int, typer.Option(
        help="The most sessions the feature-group importance averages over (a seeded random "
             "sample beyond).")] = IMPORTANCE_SESSIONS,
    report: Annotated[Path | None, typer.Option(
        "--report", help="Write DIR/explain.md, a trajectory plot per session and the feature-group "
                         "importance chart (PNG).")] = None,
    format: FormatOpt = None, column_map: MapOpt = None, event_map: EventsOpt = None,
    time_unit: TimeUnitOpt = "auto", delimiter: DelimiterOpt = ",",
    gap_minutes: ModelGapOpt = None, strict: StrictOpt = False,
    split: SplitOpt = None, run_dir: RunDirOpt = None,
    backend: BackendOpt = "auto", as_json: JsonOpt = False,
) -> None:
    """Why sessions score what they score: the score after every event, the events that moved
    it most, and the feature groups that move scores most over the log (by occlusion)."""
    with user_errors():
        from edge_runtime.errors import ConfigError
        from trainer.files import check_outputs

        require("ubp-edge explain", "pyarrow", *(["matplotlib"] if report else []))
        from edge_runtime.scorer import Scorer
        from trainer.insights.explain import explain_log
        from trainer.insights.report import report_files

        source = log_source(data, format, column_map, event_map, time_unit, delimiter, strict,
                            gap_minutes)
        digests, manifest = split_digests(split, run_dir)
        drawn = len(session) if session else sessions
        if report is not None and drawn > MAX_REPORT_SESSIONS:
            raise ConfigError(f"--report draws at most {MAX_REPORT_SESSIONS} sessions, got {drawn}; "
                              f"explain more without --report (--json has them all)")
        check_outputs({"--data": log_inputs(source), "--model": model, "--run-dir": manifest},
                      {"--report": report_files(report, drawn)
                       if report is not None else None},
                      folders={"--report": report})
        scorer = Scorer.load(model, backend=backend)
        result = explain_log(scorer, source, session_keys=session or None, n_sessions=sessions,
                             top=top, only_keys=digests, model_name=str(model),
                             importance_sessions=importance_sessions, split=split)
        written = None
        if report is not None:
            from trainer.insights.report import write_explain_report

            written = write_explain_report(result, report)
        d = result.to_dict()
        if as_json:
            print_json(d)
        else:
            for w in result.warnings:
                warn(w)
            for explained in d["sessions"]:
                print_wide(session_table(explained, top), 100)
            print_wide(importance_table(d), 80)
            out.print(bad_rows_line(result.bad_rows, None))
        if written is not None:
            err.print(f"report: {written}", soft_wrap=True)


def session_table(d: dict, top: int) -> Table:
    """One explained session (its `--json` entry): the events that moved its score most."""
    from trainer.insights.explain import duration_text

    title = (f"session {d['key']}" + (f" (user {d['user']})" if d.get("user") else "")
             + f": {len(d['trajectory'])} {_plural(len(d['trajectory']), 'event')}, score "
               f"{d['baseline']:.4f} -> {d['final']:.4f}"
             + (", went on to buy" if d["purchased"] else ""))
    table = Table(title=Text(title), caption=f"the {min(top, len(d['top']))} events that moved the "
                                             f"score most; changes sum to final - empty-session score")
    for name, justify in (("#", "right"), ("event", "left"), ("item", "left"), ("category", "left"),
                          ("after", "right"), ("change", "right"), ("score", "right")):
        table.add_column(name, justify=justify)
    for e in d["top"]:
        table.add_row(str(e["position"]), e["event"], Text(e["item"]), Text(e["category"] or ""),
                      duration_text(e["seconds_since_previous"]) or "first", f"{e['delta']:+.4f}",
                      f"{e['probability']:.4f}")
    return table


def importance_table(d: dict) -> Table:
    """Feature groups by how much occluding them moves the final score (`explain --json`'s
    ``importance``)."""
    sampled = d["importance_sampled_from"]
    of = f" sampled from {sampled:,}" if sampled > d["importance_sessions"] else ""
    n = d["importance_sessions"]
    table = Table(title=f"feature groups by occlusion over {n:,} {_plural(n, 'session')}{of}",
                  caption="|change| of the final score when the group reads its training mean")
    for name in ("group", "mean |change|", "std", "p90", "mean change"):
        table.add_column(name, justify="left" if name == "group" else "right")
    for g in d["importance"]:
        table.add_row(g["group"], f"{g['mean_abs_change']:.4f}", f"{g['std_abs_change']:.4f}",
                      f"{g['p90_abs_change']:.4f}", f"{g['mean_change']:+.4f}")
    return table


def segment(
    model: ModelOpt,
    data: Annotated[Path, typer.Option("--data", help="The event log whose sessions to segment.")],
    tiers: Annotated[str | None, typer.Option(
        help="Tier names, lowest intent first; default: the artifact's.")] = None,
    cuts: Annotated[str | None, typer.Option(
        help="Score cut-offs between the tiers, e.g. 0.05,0.15; default: the artifact's "
             "(chosen on validation sessions at convert time).")] = None,
    out_file: Annotated[Path | None, typer.Option(
        "--out", help="Per-session tiers (.csv, .parquet, or JSON lines: .jsonl, .json, .ndjson).")] = None,
    users_out: Annotated[Path | None, typer.Option(
        "--users-out", help="Per-user tiers (as --out): the highest and the latest session's; "
                            "needs a log with user ids.")] = None,
    format: FormatOpt = None, column_map: MapOpt = None, event_map: EventsOpt = None,
    time_unit: TimeUnitOpt = "auto", delimiter: DelimiterOpt = ",",
    gap_minutes: ModelGapOpt = None, strict: StrictOpt = False,
    split: SplitOpt = None, run_dir: RunDirOpt = None,
    backend: BackendOpt = "auto", as_json: JsonOpt = False,
) -> None:
    """Intent tiers of a log's sessions: each tier's size, purchase rate and lift, and the
    per-session (and per-user) assignments for a campaign tool."""
    with user_errors():
        from trainer.files import check_outputs

        require("ubp-edge segment", "pyarrow")
        from edge_runtime.scorer import Scorer
        from edge_runtime.tiers import parse_cuts, parse_names
        from trainer.insights.segments import (
            SESSION_FIELDS,
            USER_FIELDS,
            assignment_format,
            segment_log,
            session_rows,
            user_rows,
            write_assignments,
        )

        names = parse_names(tiers) if tiers is not None else None
        given = parse_cuts(cuts) if cuts is not None else None
        for path, option in ((out_file, "--out"), (users_out, "--users-out")):
            if path is not None:
                assignment_format(path, option)  # a wrong suffix is refused before the log is read
        source = log_source(data, format, column_map, event_map, time_unit, delimiter, strict,
                            gap_minutes)
        digests, manifest = split_digests(split, run_dir)
        check_outputs({"--data": log_inputs(source), "--model": model, "--run-dir": manifest},
                      {"--out": out_file, "--users-out": users_out})
        scorer = Scorer.load(model, backend=backend)
        result = segment_log(scorer, source, given, names, only_keys=digests, model_name=str(model),
                             split=split)
        # Per-user rows first: a log without user ids fails before --out is written.
        users = user_rows(result) if users_out is not None else None
        written = {}
        if out_file is not None:
            written["--out"] = write_assignments(session_rows(result), SESSION_FIELDS, out_file)
        if users is not None:
            written["--users-out"] = write_assignments(users, USER_FIELDS, users_out, "--users-out")
        report = result.to_dict()
        report["written"] = {k: str(v) for k, v in written.items()}
        if as_json:
            print_json(report)
            return
        for w in result.warnings:
            warn(w)
        print_wide(render_tiers(report), 100)
        for option, path in written.items():
            err.print(f"{option}: {path}", soft_wrap=True)
        out.print(bad_rows_line(report["bad_rows"], None))


def render_tiers(d: dict) -> Table:
    """The `segment --json` object's tiers as a Rich table, lowest intent first. Names and
    paths come from the user: they are Text, never read as Rich markup."""
    base = d["base_rate"]
    title = (f"{Path(d['model']).name} on {d['data']}" + (f" ({d['split']} split)" if d["split"] else "")
             + f"\n{d['sessions']:,} {_plural(d['sessions'], 'session')}, {d['purchases']:,} with a "
               f"purchase" + (f" ({100 * base:.1f}%)" if base is not None else ""))
    caption = ("cut-offs from the artifact: " + (f"{d['method']} on {d['fitted_on']}"
                                                 if d["fitted_on"] else d["method"])
               if d["cuts_from"] == "artifact" else "cut-offs from --cuts")
    table = Table(title=Text(title), caption=Text(caption))
    for name in ("tier", "scores", "sessions", "share", "purchases", "rate", "lift", "capture"):
        table.add_column(name, justify="left" if name in ("tier", "scores") else "right")
    for r in d["tiers"]:
        # 4 significant digits: tiny cut-offs (--cuts 1e-5,2e-5) stay apart.
        scores = f"[{r['low']:.4g}, {r['high']:.4g}" + (")" if r["high"] < 1 else "]")
        table.add_row(Text(r["name"]), Text(scores), f"{r['sessions']:,}", _percent(r["share"]),
                      f"{r['purchases']:,}", _percent(r["purchase_rate"]),
                      "n/a" if r["lift"] is None else f"{r['lift']:.2f}x", _percent(r["capture"]))
    return table


def _plural(n: int, word: str) -> str:
    return word if n == 1 else word + "s"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"
