"""`ubp-edge export-spec ARTIFACT --out DIR`: the spec and golden vectors for native clients.

Writes DIR/spec.json (the artifact's features, formulas, constants, threshold, calibration
and signatures, for a Kotlin, Swift or C++ team) and DIR/golden.jsonl (sessions with every
number the runtime computes for them), through `converters.export_spec`. Sessions come
from ``--data`` or, without it, from the embedded seeded synthetic log, which the output
says.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from converters.export_spec import DEFAULT_SESSIONS, GOLDEN_FILE, SPEC_FILE, check_session_count
from converters.export_spec import export_spec as export
from ubp_edge.console import out, require, user_errors, warn
from ubp_edge.options import (
    BackendOpt,
    DelimiterOpt,
    EventsOpt,
    FormatOpt,
    MapOpt,
    ModelArg,
    ModelGapOpt,
    TimeUnitOpt,
    log_inputs,
    log_source,
)


def export_spec(
    artifact: ModelArg,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for spec.json and golden.jsonl "
                                                        "(created if missing; the files are replaced).")],
    data: Annotated[Path | None, typer.Option(
        "--data", help="A log to take the golden sessions from; default: the embedded seeded "
                       "synthetic log.")] = None,
    format: FormatOpt = None, column_map: MapOpt = None, event_map: EventsOpt = None,
    time_unit: TimeUnitOpt = "auto", delimiter: DelimiterOpt = ",",
    gap_minutes: ModelGapOpt = None,
    sessions: Annotated[int, typer.Option(
        "--sessions", help="Golden sessions to write: a mix of lengths, the longest included.")
    ] = DEFAULT_SESSIONS,
    backend: BackendOpt = "auto",
) -> None:
    """Write the artifact's spec (JSON) and golden vectors (JSON lines) for native LiteRT clients.

    Example: ubp-edge export-spec runs/taobao/model-dynamic.tflite --out golden/
    --data UserBehavior_sample.csv --format taobao
    """
    with user_errors():
        from edge_runtime.errors import ConfigError
        from trainer.files import check_outputs

        check_session_count(sessions)
        if data is None and (format or column_map or event_map):
            raise ConfigError("--format, --map and --events describe a log: they go with --data")
        source = (log_source(data, format, column_map, event_map, time_unit, delimiter,
                             gap_minutes=gap_minutes) if data is not None else None)
        require("ubp-edge export-spec", "pyarrow")
        check_outputs({"ARTIFACT": artifact, "--data": log_inputs(source) if source else None},
                      {"--out": [out_dir / SPEC_FILE, out_dir / GOLDEN_FILE]},
                      folders={"--out": out_dir})
        if source is not None:
            result = export(artifact, out_dir, source, sessions, backend)
        else:
            from benchmarks.sessions import SYNTHETIC_DAYS, SYNTHETIC_SEED, SYNTHETIC_USERS, synthetic_log

            label = (f"the embedded synthetic log (trainer.synthetic: {SYNTHETIC_USERS} users, "
                     f"{SYNTHETIC_DAYS} days, seed {SYNTHETIC_SEED})")
            result = export(artifact, out_dir, synthetic_log(), sessions, backend, data_label=label,
                            gap_minutes=gap_minutes)
        for w in result.warnings:
            warn(w)
        table = Table(title=f"{artifact.name}: spec and golden vectors for native clients",
                      show_header=False)
        table.add_row("spec", str(result.spec_path))
        table.add_row("golden vectors", str(result.golden_path))
        table.add_row("sessions", f"{result.sessions:,} ({result.events:,} events, "
                                  f"up to {result.longest:,} a session) from {result.source}")
        table.add_row("features", f"{result.n_features} per event")
        table.add_row("max length", f"{result.max_len} (the training window; scoring reads every event)")
        table.add_row("live vs whole", f"max |p| difference {result.live_vs_whole:.2g} (last live "
                                       f"probability against the whole session's)")
        out.print(table)
        if result.synthetic:
            out.print(Text("synthetic sessions: pass --data LOG for real ones", style="yellow"),
                      soft_wrap=True)
