"""The options several commands share, their help generated from the project's tables.

Help texts name what the tables hold (`trainer.formats.PRESETS`, `trainer.formats.TimeUnit`,
`edge_runtime.events`, `edge_runtime.backends.BACKENDS`), so a new format or backend shows up
in ``--help`` without anyone re-typing a list. The log options (``--format``, ``--map``,
``--events``, ``--time-unit``, ``--delimiter``, ``--strict``, ``--gap-minutes``) become one
`EventLogSource` in `log_source`, the only place the CLI builds one.

Only light modules are imported here (no pyarrow, sklearn or TensorFlow): ``--help`` stays fast.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Annotated

import typer

from edge_runtime.backends import BACKENDS
from edge_runtime.events import CANONICAL_FIELDS, EVENT_TYPES, REQUIRED_FIELDS
from trainer.formats import CUSTOM_FORMAT, PRESETS, TimeUnit
from trainer.logsource import EventLogSource
from trainer.rundir import SPLIT_NAMES


def one_of(names: Iterable[str], last: str = "or") -> str:
    """``a, b, c or d``: a list of allowed values for a help text."""
    names = list(names)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} {last} {names[-1]}"


_OPTIONAL_FIELDS = ",".join(f"{f}=.." for f in CANONICAL_FIELDS if f not in REQUIRED_FIELDS)
FORMAT_HELP = (f"{', '.join(PRESETS)}, or {CUSTOM_FORMAT} (with --map); default: detected from "
               f"the first line. `ubp-edge data formats` describes each.")
MAP_HELP = (f"--format {CUSTOM_FORMAT}: canonical=source columns, e.g. "
            f"user=visitorid,time=timestamp,event=event,item=itemid[,{_OPTIONAL_FIELDS}]")
EVENTS_HELP = (f"--format {CUSTOM_FORMAT}: canonical=source event values ({one_of(EVENT_TYPES)}), "
               f"e.g. view=pv,cart=addtocart,purchase=buy|transaction")
TIME_UNIT_HELP = f"--format {CUSTOM_FORMAT}: {one_of(u.value for u in TimeUnit)}."
BACKEND_HELP = f"{one_of(['auto', *BACKENDS])}."

# ----------------------------------------------------------------------------- the log
FormatOpt = Annotated[str | None, typer.Option("--format", "-f", help=FORMAT_HELP)]
MapOpt = Annotated[str | None, typer.Option("--map", help=MAP_HELP)]
EventsOpt = Annotated[str | None, typer.Option("--events", help=EVENTS_HELP)]
TimeUnitOpt = Annotated[str, typer.Option("--time-unit", help=TIME_UNIT_HELP)]
DelimiterOpt = Annotated[str, typer.Option("--delimiter", help=f"--format {CUSTOM_FORMAT}: field separator.")]
StrictOpt = Annotated[bool, typer.Option("--strict", help="Any bad row is an error (exit 1).")]
GapOpt = Annotated[float, typer.Option(help="Session inactivity gap (logs without session ids).")]
ModelGapOpt = Annotated[float | None, typer.Option(help="Session gap; default: the model's.")]
QuarantineOpt = Annotated[Path | None, typer.Option(help="Write bad rows here (JSONL).")]

SplitOpt = Annotated[str | None, typer.Option(
    help=f"Only this split ({', '.join(SPLIT_NAMES)}) of --run-dir's split.json.")]
RunDirOpt = Annotated[Path | None, typer.Option(help="The run directory whose split --split names.")]

# ----------------------------------------------------------------------------- models and output
ModelOpt = Annotated[Path, typer.Option("--model", help="An artifact (.tflite) from `ubp-edge convert`.")]
ModelArg = Annotated[Path, typer.Argument(help="An artifact (.tflite) from `ubp-edge convert`.")]
BackendOpt = Annotated[str, typer.Option("--backend", help=BACKEND_HELP)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]


def log_source(path: Path, format: str | None = None, column_map: str | None = None,
               event_map: str | None = None, time_unit: str = "auto", delimiter: str = ",",
               strict: bool = False, gap_minutes: float | None = None) -> EventLogSource:
    """The log options of one command, as the one value the library takes.

    Args:
        path: the log (``--data``, or the argument of ``data inspect``).
        format, column_map, event_map, time_unit, delimiter, strict, gap_minutes: the
            options above, as parsed (``column_map`` is ``--map``, ``event_map`` ``--events``).

    Returns:
        EventLogSource, checked (its preset resolved).

    Raises:
        ConfigError: an unknown format, ``--map``/``--events`` without ``--format csv``, a bad
            mapping or time unit, or a gap that is not a positive number of minutes.
    """
    return EventLogSource(path, format=format, column_map=column_map, event_map=event_map,
                          time_unit=time_unit, delimiter=delimiter, strict=strict,
                          gap_minutes=gap_minutes)


def log_inputs(source: EventLogSource) -> list[Path]:
    """The files reading ``source`` may touch: the log, and the files a format reads beside
    it (DIGINETICA's ``train-purchases.csv`` and ``product-categories.csv``), for the output
    guard (`trainer.files.check_outputs`). With the format left to detection, the companion
    files of every preset that has them count where they exist.

    Args:
        source: the log and how to read it.

    Returns:
        The log's path first, then the companion files.
    """
    presets = [source.preset] if source.preset is not None else list(PRESETS.values())
    companions = {source.path.with_name(name) for preset in presets
                  for key, name in preset.extra.items() if key.endswith("_file")}
    return [source.path, *sorted(p for p in companions
                                 if source.preset is not None or p.exists())]


def split_digests(split: str | None, run_dir: Path | None) -> tuple[set[str] | None, Path | None]:
    """``--split`` and ``--run-dir``: the key digests of the split (None without it) and the
    split.json they come from (for the output guard).

    Raises:
        ConfigError: one option without the other, or an unknown split.
        RunDirError: split.json missing or damaged.
    """
    from edge_runtime.errors import ConfigError
    from trainer.rundir import SPLIT
    from trainer.scoring import split_keys

    if (split is None) != (run_dir is None):
        raise ConfigError("--split and --run-dir go together, e.g. --split test --run-dir runs/taobao")
    manifest = run_dir / SPLIT if run_dir is not None else None
    return (split_keys(manifest, split) if split else None), manifest
