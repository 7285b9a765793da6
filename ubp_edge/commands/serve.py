"""`ubp-edge serve` (score a stream of events) and `ubp-edge doctor` (what this machine runs)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.table import Table
from rich.text import Text

from edge_runtime.errors import ConfigError, UbpEdgeError
from edge_runtime.tiers import (
    DEFAULT_HYSTERESIS,
    DEFAULT_TIER_NAMES,
    TriggerRule,
    check_hysteresis,
    chosen_tiers,
    parse_cuts,
    parse_names,
)
from ubp_edge.console import INTERRUPTED_EXIT, err, out, print_json, user_errors
from ubp_edge.options import BackendOpt, JsonOpt, ModelOpt

if TYPE_CHECKING:
    from edge_runtime.scorer import Scorer
    from edge_runtime.serve import LongLine

DOCTOR_COLUMNS = ("backend", "version", "TFLite", "meets", "loads", "scores", "live", "p")


def serve(
    model: ModelOpt,
    max_sessions: Annotated[int, typer.Option(
        help="Live sessions held; the least recently used goes first.")] = 10_000,
    idle_timeout: Annotated[float, typer.Option(
        help="Seconds of event time without a click before a session is dropped.")] = 1800.0,
    backend: BackendOpt = "auto",
    triggers: Annotated[str | None, typer.Option(
        help="Tiers to trigger on, e.g. likely or considering,likely: a line when a session first "
             "climbs into one (the artifact's intent tiers, or --cuts).")] = None,
    hysteresis: Annotated[float | None, typer.Option(
        help=f"With --triggers: a fired trigger re-arms once the score falls this fraction below "
             f"the tier's cut-off (default {DEFAULT_HYSTERESIS:g}).")] = None,
    cuts: Annotated[str | None, typer.Option(
        help="With --triggers: the tiers' cut-offs instead of the artifact's, e.g. 0.05,0.15.")] = None,
    tier_names: Annotated[str | None, typer.Option(
        help=f"With --triggers: the tiers' names, lowest first (default: the artifact's, else "
             f"{','.join(DEFAULT_TIER_NAMES)}).")] = None,
) -> None:
    """Score a stream: JSON lines of events on stdin, one JSON line per event on stdout.

    Input lines: {"session": KEY, "ts": ..., "event": "view|cart|fav|purchase", "item": ...,
    ["category", "price", "context"]}. Output: the updated probability per event, an error line
    for a malformed one (the stream goes on), and a line when a session is evicted or times out;
    with --triggers, a line after the score when a session climbs into a watched tier.
    The stream ends when stdin does, or stdout is closed (exit 0), or on Ctrl-C (exit 130); a
    summary goes to stderr each time.
    """
    with user_errors():
        from edge_runtime.live import SessionStore, check_limits
        from edge_runtime.scorer import Scorer
        from edge_runtime.serve import serve_store

        # Checked before the model loads, under the names the user typed.
        check_limits(max_sessions, idle_timeout, names=("--max-sessions", "--idle-timeout"))
        given = parse_tier_options(triggers, cuts, tier_names, hysteresis)
        hysteresis = DEFAULT_HYSTERESIS if hysteresis is None else hysteresis
        store, code = None, 0
        try:
            scorer = Scorer.load(model, backend=backend)
            rule = None if given is None else trigger_rule(scorer, *given, hysteresis)
            store = SessionStore(scorer, max_sessions=max_sessions, idle_timeout=idle_timeout,
                                 triggers=rule)
            serve_store(store, _stdin_lines(), _emit)
        except KeyboardInterrupt:
            code = INTERRUPTED_EXIT  # Ctrl-C: the summary, then the shell's code for SIGINT
        except BrokenPipeError:
            _drop_stdout()  # the reader has gone: end quietly
        finally:  # also before the error line when the model fails mid-stream
            if store is not None:
                stats = store.stats
                err.print(f"served {stats.pushed:,} events in {stats.started:,} sessions; "
                          f"{stats.rejected:,} lines rejected, {stats.evicted_lru:,} sessions "
                          f"evicted (LRU), {stats.expired_idle:,} timed out; {len(store):,} still "
                          f"open{_fired(store)}", soft_wrap=True)
        if code:
            raise typer.Exit(code)


def parse_tier_options(triggers: str | None, cuts: str | None, tier_names: str | None,
                       hysteresis: float | None = None
                       ) -> tuple[list[str], tuple[float, ...] | None, tuple[str, ...] | None] | None:
    """`serve`'s --triggers, --cuts, --tier-names and --hysteresis, checked before the
    model loads (which tiers there are is known only then: `trigger_rule`).

    Returns:
        None without --triggers, else (the tier names to trigger on, the cut-offs or None,
        the tier names or None).

    Raises:
        ConfigError: --cuts or --tier-names without --triggers, or malformed; a hysteresis
            outside [0, 1).
    """
    if triggers is None:
        if cuts is not None or tier_names is not None or hysteresis is not None:
            raise ConfigError("--cuts, --tier-names and --hysteresis go with --triggers, e.g. "
                              "--triggers likely")
        return None
    watched = [n.strip() for n in triggers.split(",") if n.strip()]
    if not watched:
        raise ConfigError(f"--triggers names no tier: {triggers!r}; e.g. --triggers likely")
    if hysteresis is not None:
        check_hysteresis(hysteresis, "--hysteresis")
    return (watched, None if cuts is None else parse_cuts(cuts),
            None if tier_names is None else parse_names(tier_names))


def trigger_rule(scorer: Scorer, watched: list[str], cuts: tuple[float, ...] | None,
                 names: tuple[str, ...] | None, hysteresis: float) -> TriggerRule:
    """The TriggerRule of `serve --triggers` for the loaded artifact.

    Args:
        scorer: the loaded artifact; its stored intent tiers unless ``cuts`` are given.
        watched: the tiers to trigger on, by name.
        cuts: --cuts, overriding the artifact's cut-offs.
        names: --tier-names: with ``cuts``, their tiers' names; without, new names for the
            artifact's tiers. Else the artifact's names (DEFAULT_TIER_NAMES when it has none).
        hysteresis: --hysteresis.

    Raises:
        ConfigError: the artifact has no intent tiers and no --cuts are given; names and
            cut-offs that do not match in number; an unknown or the lowest tier.
    """
    tiers, _ = chosen_tiers(scorer.info.intent_tiers(), cuts, names, scorer.source, "--tier-names")
    return TriggerRule.for_names(tiers, watched, hysteresis)


def _fired(store) -> str:
    """The summary's count of triggers fired, when the store has triggers."""
    return "" if store.triggers is None else f"; {store.triggers_fired:,} triggers fired"


def _emit(line: str) -> None:
    """One output line of `serve`, flushed: the client waits for it.

    Raises:
        BrokenPipeError: the reader has gone (the stream ends quietly).
        UbpEdgeError: stdout fails otherwise (a full disk, a file-size limit).
    """
    try:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as e:
        _drop_stdout()  # what is still buffered could only fail again at exit
        raise UbpEdgeError(f"stdout: cannot write ({e.strerror or e})") from None


def _stdin_lines() -> Iterator[bytes | LongLine]:
    """`read_lines` of stdin; UbpEdgeError when stdin cannot be read (e.g. a directory)."""
    from edge_runtime.serve import read_lines

    try:
        yield from read_lines(sys.stdin.buffer)
    except OSError as e:
        raise UbpEdgeError(f"stdin: cannot read ({e.strerror or e})") from None


def _drop_stdout() -> None:
    """Point stdout at /dev/null once its reader has gone, so that the flush at exit does not
    fail again (Python would print "Exception ignored ... BrokenPipeError")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout without a file descriptor: nothing to flush
        pass


def doctor(
    artifact: Annotated[Path | None, typer.Argument(
        help="An artifact to load and score with each backend.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Interpreters this machine has (their versions and TFLite runtimes), numpy, Python,
    platform; with an artifact, the runtime it needs and, on each backend, whether it meets
    it, loads, scores and scores live, and the signatures the backend lists."""
    with user_errors():
        from edge_runtime.artifact import read_artifact
        from edge_runtime.doctor import doctor as run_doctor

        if artifact is not None:
            read_artifact(artifact)  # a missing or corrupted file is an error, not a table row
        report = run_doctor(artifact)
        if as_json:
            print_json(report)
            return
        out.print(f"Python {report['python']} on {report['platform']}; numpy {report['numpy']}")
        if artifact is not None:
            out.print(Text(artifact_line(report)), soft_wrap=True)
        out.print(backends_table(report, artifact))
        for line in signature_lines(report):
            out.print(Text(line), soft_wrap=True)
        for row in report["backends"]:
            if row.get("detail"):
                out.print(Text(f"{row['name']}: {row['detail']}"), soft_wrap=True)


def artifact_line(report: dict) -> str:
    """What the doctor report says of the artifact itself: the TFLite runtime it needs (its
    ``min_runtime_version``), which the table's ``meets`` column compares with each
    backend's, and the signature keys its file holds."""
    need, keys = report.get("min_runtime_version"), report.get("signatures")
    return (f"{report['artifact']}: needs a TFLite runtime "
            f"{f'>= {need} (its min_runtime_version)' if need else 'of any version (no min_runtime_version)'}"
            f"; signatures in the file: {', '.join(keys) if keys else 'none'}")


def signature_lines(report: dict) -> list[str]:
    """One line per distinct signature listing: the signatures the backends that loaded the
    artifact list, each as ``key (inputs -> outputs)``, backends that agree on one line."""
    by_listing: dict[str, list[str]] = {}
    for row in report["backends"]:
        if row.get("signatures") is not None:
            listing = "; ".join(f"{key} ({', '.join(v['inputs'])} -> {', '.join(v['outputs'])})"
                                for key, v in row["signatures"].items()) or "none"
            by_listing.setdefault(listing, []).append(row["name"])
    return [f"signatures ({', '.join(names)}): {listing}" for listing, names in by_listing.items()]


def backends_table(report: dict, artifact: Path | None) -> Table:
    """One row per backend of `edge_runtime.doctor.doctor`'s report.

    Args:
        report: the doctor report.
        artifact: the artifact it was run with, if any (named in the title).

    Returns:
        The Rich table: version, TFLite runtime, and whether that meets the artifact's
        minimum, and whether the artifact loads, scores and scores live.
    """
    table = Table(title=f"backends{'' if artifact is None else f' for {artifact}'}", box=box.SIMPLE_HEAD,
                  pad_edge=False, collapse_padding=True)
    for col in DOCTOR_COLUMNS:
        table.add_column(col, no_wrap=True)
    for row in report["backends"]:
        def mark(value, importable=row["importable"]):
            return "" if value is None or not importable else ("yes" if value else "no")
        table.add_row(row["name"], row["version"] or "not installed",
                      (row.get("runtime") or "unknown") if row["importable"] else "",
                      mark(row.get("meets")), mark(row.get("loads")),
                      mark(row.get("scores")), mark(row.get("live")),
                      "" if row.get("probability") is None else f"{row['probability']:.4f}")
    return table
