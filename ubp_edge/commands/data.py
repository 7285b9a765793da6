"""`ubp-edge data inspect | generate | formats`: look at a log before training on it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.table import Table
from rich.text import Text

from trainer.formats import CUSTOM_DESCRIPTION, CUSTOM_FORMAT, PRESETS
from ubp_edge.console import bad_rows_line, out, print_json, require, user_errors
from ubp_edge.options import (
    DelimiterOpt,
    EventsOpt,
    FormatOpt,
    GapOpt,
    JsonOpt,
    MapOpt,
    QuarantineOpt,
    StrictOpt,
    TimeUnitOpt,
    log_inputs,
    log_source,
)

INSPECT_ROWS = ("rows_read", "events", "users", "sessions", "sessions_with_purchase",
                "sessions_excluded_empty_prefix", "session_rule")


def inspect(
    path: Annotated[Path, typer.Argument(help="The event log (CSV, JSONL or Parquet; .gz ok).")],
    format: FormatOpt = None, column_map: MapOpt = None, event_map: EventsOpt = None,
    time_unit: TimeUnitOpt = "auto", delimiter: DelimiterOpt = ",",
    gap_minutes: GapOpt = 30.0, quarantine: QuarantineOpt = None,
    strict: StrictOpt = False, as_json: JsonOpt = False,
) -> None:
    """Rows, bad rows by reason, users, sessions, purchases, time span and event mix of a log."""
    with user_errors():
        from trainer.files import check_outputs

        require("ubp-edge data inspect", "pyarrow")
        from trainer.summary import summarize_log

        source = log_source(path, format, column_map, event_map, time_unit, delimiter, strict,
                            gap_minutes)
        check_outputs({"the log": log_inputs(source)}, {"--quarantine": quarantine})
        started = time.perf_counter()
        summary, log = summarize_log(source)
        summary["seconds"] = round(time.perf_counter() - started, 3)
        summary["events_per_second"] = round(summary["rows_read"] / max(summary["seconds"], 1e-9))
        written = log.bad.write(quarantine) if quarantine else None
        summary["quarantine"] = str(written) if written else None
        if as_json:
            print_json(summary)
            return
        table = Table(title=f"{path} ({summary['format']})", show_header=False)
        for key in INSPECT_ROWS:
            value = summary[key]
            table.add_row(key.replace("_", " "), f"{value:,}" if isinstance(value, int) else str(value))
        table.add_row("time span (UTC)", " .. ".join(summary["time_span_utc"]))
        table.add_row("event mix", ", ".join(f"{k} {v:,}" for k, v in summary["event_mix"].items()))
        table.add_row("read + sessionize", f"{summary['seconds']:.3f} s "
                                           f"({summary['events_per_second']:,} rows/s)")
        out.print(table)
        out.print(bad_rows_line(summary["bad_rows"], written))
        if summary["bad_rows"]["total"] and not quarantine:
            out.print("  (pass --quarantine FILE to keep them)")


def generate(
    out_path: Annotated[Path, typer.Argument(
        help="CSV to write (canonical columns); a name ending in .gz is gzipped.")],
    users: Annotated[int, typer.Option(
        help="Number of shoppers (about 117 events each over 9 days).")] = 400,
    days: Annotated[int, typer.Option(help="Days of activity.")] = 9,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same log.")] = 0,
) -> None:
    """Write the embedded demo log: seeded synthetic sessions with a realistic funnel.

    Users are simulated and written in batches: millions of events take no more memory than the demo.
    """
    with user_errors():
        from edge_runtime.errors import ConfigError
        from trainer.files import check_outputs
        from trainer.synthetic import write_synthetic_log
        from ubp_edge.console import spinner

        bad = [f"{name} must be a whole number >= {low}, got {value}"
               for name, value, low in (("--users", users, 1), ("--days", days, 1), ("--seed", seed, 0))
               if value < low]
        if bad:
            raise ConfigError("; ".join(bad))
        check_outputs({}, {"": out_path})
        with spinner() as say:
            rows = write_synthetic_log(
                out_path, n_users=users, days=days, seed=seed,
                on_batch=lambda done, events: say(f"{done:,} of {users:,} users, {events:,} events"))
        out.print(f"wrote {rows:,} events of {users} synthetic users over {days} days to {out_path}")


def formats() -> None:
    """The log formats --format reads, and what each file looks like."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("--format", no_wrap=True)
    table.add_column("what it reads")
    for preset in PRESETS.values():
        table.add_row(preset.name, Text(preset.description))  # Text: "[price]" is not markup
    table.add_row(CUSTOM_FORMAT, f"{CUSTOM_DESCRIPTION}: --map (and --events, --time-unit, --delimiter)")
    out.print(table)
    out.print("Without --format, the format is detected from the file's first line.")
