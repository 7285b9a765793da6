"""An event log and how to read it: one value, built once where the user names the log.

Every command that reads a log (`data inspect`, `train`, `score`, `evaluate`, `compare`,
`benchmark --data`) takes the same options (``--format``, ``--map``, ``--events``,
``--time-unit``, ``--delimiter``, ``--strict``, ``--gap-minutes``). The CLI turns them into
one `EventLogSource`, which checks them together and is passed whole to the library, so no
function takes a format and a preset side by side.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from edge_runtime.errors import ConfigError
from trainer.formats import FORMAT_NAMES, FormatPreset, check_delimiter, custom_preset, get_preset


@dataclass(frozen=True)
class EventLogSource:
    """A log file and the settings to read it with.

    Attributes:
        path: the log (CSV, JSONL or Parquet; gzip allowed).
        format: a preset name of `trainer.formats.PRESETS`, ``csv`` (with ``column_map``), or
            None to detect it from the file's first line when it is read.
        column_map, event_map, time_unit, delimiter: the ``--format csv`` mapping, as typed.
        strict: any bad row is an error, instead of being quarantined and counted.
        gap_minutes: the inactivity gap that splits a user's events into sessions (logs
            without session ids); None means "the model's own" where a model is involved,
            else `trainer.sessions.DEFAULT_GAP_MINUTES`.
        preset: the preset the settings resolve to (None: detect at read time); derived.

    Raises:
        ConfigError: an unknown format, ``--map``/``--events`` without ``--format csv``, a
            bad mapping, a ``--delimiter`` that is not one usable character, or a gap that is
            not a positive number of minutes.

    Example:
        >>> source = EventLogSource(Path("UserBehavior_sample.csv"), format="taobao")
        >>> log = source.read()
    """

    path: Path
    format: str | None = None
    column_map: str | None = None
    event_map: str | None = None
    time_unit: str = "auto"
    delimiter: str = ","
    strict: bool = False
    gap_minutes: float | None = None
    preset: FormatPreset | None = field(init=False, default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        if self.format is not None and self.format not in FORMAT_NAMES:
            raise ConfigError(f"unknown format {self.format!r}; allowed {list(FORMAT_NAMES)}")
        # Checked whatever the format: a value no CSV reader can use is a typing slip to report,
        # not a setting to ignore because another format does not read it.
        check_delimiter(self.delimiter)
        if self.format == "csv":
            preset = custom_preset(self.column_map, self.event_map, self.time_unit, self.delimiter)
        elif self.column_map or self.event_map:
            raise ConfigError("--map and --events go with --format csv")
        else:
            preset = get_preset(self.format) if self.format else None
        object.__setattr__(self, "preset", preset)
        if self.gap_minutes is not None and not self.gap_minutes > 0:
            raise ConfigError(f"--gap-minutes must be a positive number of minutes, "
                              f"got {self.gap_minutes}")

    def read(self):
        """Read the log into canonical events (`trainer.readers.read_log`).

        Returns:
            EventLog, its bad rows counted in ``log.bad``.

        Raises:
            DataError: the file cannot be read as a log, or a bad row with ``strict``.
            ConfigError: ``UBP_EDGE_MAX_LOG_BYTES`` (the most text a log may have) is not a size.
        """
        from trainer.readers import read_log

        return read_log(self.path, self.format, preset=self.preset, strict=self.strict)

    def session_gap(self, default: float) -> float:
        """The session gap in minutes: the one asked for, else ``default`` (e.g. the model's)."""
        return float(self.gap_minutes) if self.gap_minutes is not None else float(default)

    def cli_args(self) -> list[str]:
        """The command-line options that rebuild this source (for reproducible commands)."""
        args = ["--data", os.fspath(self.path)]
        if self.format:
            args += ["--format", self.format]
        if self.column_map:
            args += ["--map", self.column_map]
        if self.event_map:
            args += ["--events", self.event_map]
        if self.format == "csv":
            args += ["--time-unit", self.time_unit, "--delimiter", self.delimiter]
        if self.gap_minutes is not None:
            args += ["--gap-minutes", f"{self.gap_minutes:g}"]
        if self.strict:
            args += ["--strict"]
        return args
