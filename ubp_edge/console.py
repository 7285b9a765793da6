"""What the CLI prints, and what it keeps the libraries from printing.

Every command writes through the two consoles here: ``out`` (stdout: tables, JSON, scores)
and ``err`` (stderr: progress, warnings, errors, summaries of what was written). `user_errors`
is each command's error boundary: errors a person can act on (`UbpEdgeError`) become one red
``error:`` line on stderr and exit code 1, Ctrl-C one line and exit code 130, an optional
package this install lacks (EXTRAS) the line that says which extra to install; anything else
keeps its traceback, because it is a bug. `require` checks those packages before a command
starts its work.

`library_output` is the one switch for the libraries' own output (TensorFlow's C++ logs,
the TFLite interpreter's native lines, Python warnings, the ``tensorflow``/``absl``/
``tf2onnx`` loggers): off by default, on with ``ubp-edge --verbose``.

Nothing here imports a command or `ubp_edge.cli`; the commands import this module.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console, RenderableType
from rich.text import Text

from edge_runtime import native_logs
from edge_runtime.errors import ConfigError, UbpEdgeError
from trainer.metrics import METRIC_KEYS, METRICS

out = Console()
err = Console(stderr=True)

# The metric columns of the CLI's terminal tables (`train`, `evaluate`): (JSON key, header),
# headers from the metric table's narrow names.
METRIC_COLUMNS: tuple[tuple[str, str], ...] = tuple((k, METRICS[k].short) for k in METRIC_KEYS)

# Python loggers of the libraries the CLI drives; quiet (errors only) unless --verbose.
LIBRARY_LOGGERS = ("tensorflow", "absl", "tf2onnx", "onnx", "onnxruntime", "h5py", "matplotlib")


# The optional packages a command may need, by import name: (pip name, the extra that
# brings it, what it does here). `require` checks them before a command starts its work;
# `user_errors` turns a missed one into the same line.
EXTRAS: dict[str, tuple[str, str, str]] = {
    "pyarrow": ("pyarrow", "data", "reads event logs"),
    "sklearn": ("scikit-learn", "data", "computes the metrics"),
    "scipy": ("scipy", "data", "computes rank correlations (scikit-learn brings it)"),
    "matplotlib": ("matplotlib", "data", "draws the report's plots"),
    "tensorflow": ("tensorflow-cpu", "train", "trains and converts the model"),
    "tf_keras": ("tf-keras", "train", "builds the LSTM"),
    "duckdb": ("duckdb", "data", "sorts prepared sessions larger than memory"),
    "pyspark": ("pyspark", "spark", "runs --engine spark"),
}
INTERRUPTED_EXIT = 130  # 128 + SIGINT, as a shell reports a command stopped with Ctrl-C


def missing_extra(module: str, what: str) -> str:
    """The line for a command that needs an optional package this install lacks.

    Args:
        module: the import name (a key of EXTRAS, or a dotted name under one).
        what: the command as typed (``ubp-edge score``), or a longer phrase naming the option.

    Returns:
        ``WHAT needs PACKAGE (what it does), which is not installed: pip install 'ubp-edge[EXTRA]'``
        (tf-keras, which the Makefile installs with --no-deps, says so).
    """
    package, extra, does = EXTRAS[module.split(".")[0]]
    how = f"pip install 'ubp-edge[{extra}]'"
    if package == "tf-keras":
        how += " and pip install --no-deps tf-keras==2.21.0 (as `make install` does)"
    return f"{what} needs {package} ({does}), which is not installed: {how}"


def require(what: str, *modules: str) -> None:
    """Refuse a command, before it reads or trains anything, when an optional package it
    needs is not installed (`pip install .` is the runtime alone).

    Args:
        what: the command as typed, for the message (``ubp-edge compare --report``).
        modules: import names, keys of EXTRAS.

    Raises:
        ConfigError: the first module that cannot be found, with the install line.
    """
    from importlib.util import find_spec

    for module in modules:
        try:
            found = find_spec(module) is not None
        except (ImportError, ValueError):  # a parent package missing, or a None in sys.modules
            found = False
        if not found:
            raise ConfigError(missing_extra(module, what))


@contextmanager
def user_errors(interrupted: str | Callable[[], str] = "interrupted") -> Iterator[None]:
    """The error boundary of a command: the project's errors become one line on stderr and
    exit code 1; Ctrl-C becomes one line and exit code 130; an optional package that is
    missing becomes the line that says how to install it. Anything else keeps its traceback.

    Args:
        interrupted: the line printed on Ctrl-C, or a function that says it then (a command
            that keeps state for later says what and where, e.g. `train`'s ``--resume``).

    Raises:
        typer.Exit: code 1 after ``error: <message>`` for a `UbpEdgeError` or a missing optional
            package (EXTRAS); code 130 after ``interrupted`` for KeyboardInterrupt.
    """
    try:
        yield
    except UbpEdgeError as e:
        print_error(str(e))
        raise typer.Exit(1) from None
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in EXTRAS:
            raise  # a module of the project or a base dependency: a broken install is a bug
        print_error(missing_extra(e.name, "this command"))
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        line = interrupted if isinstance(interrupted, str) else interrupted()
        err.print(Text(line, style="yellow"), soft_wrap=True)
        raise typer.Exit(INTERRUPTED_EXIT) from None


def print_error(message: str) -> None:
    """One ``error: ...`` line on stderr (the caller decides the exit code)."""
    err.print(Text("error: ", style="bold red") + Text(message), soft_wrap=True)


def warn(message: str) -> None:
    """One ``warning: ...`` line on stderr."""
    err.print(Text("warning: ", style="yellow") + Text(message), soft_wrap=True)


def print_json(obj: dict) -> None:
    """``obj`` as one JSON line on stdout (``--json``), nothing else on that stream."""
    print(json.dumps(obj, indent=None, sort_keys=False))


def print_wide(renderable: RenderableType, min_width: int) -> None:
    """Print on stdout, at least ``min_width`` columns wide when stdout is not a terminal.

    Piped or captured output has no terminal to wrap for: a wide table is printed whole
    rather than at Rich's 80-column default with every cell cut to an ellipsis.
    """
    (out if out.is_terminal else Console(width=max(out.width, min_width))).print(renderable)


@contextmanager
def spinner() -> Iterator[Callable[[str], None]]:
    """A transient spinner on stderr for a long call; yields ``say(what)`` to update its line.

    Only on a terminal: piped or captured stderr gets nothing (not even the blank line a
    stopped live display leaves), so an error stays the one line on stderr.
    """
    if not err.is_terminal:
        yield lambda _what: None
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=err, transient=True) as bar:
        task = bar.add_task("starting")
        yield lambda what: bar.update(task, description=what)


def bad_rows_line(bad: dict, where: Path | None) -> Text:
    """``bad rows: N (reason n, ...) -> FILE``: green when none, yellow otherwise.

    Args:
        bad: ``BadRows.summary()``: ``{"total": int, "by_reason": {reason: count}}``.
        where: the quarantine file the rows were written to, if any.

    Returns:
        The line, ready for ``out.print`` or ``err.print``.
    """
    text = Text(f"bad rows: {bad['total']:,}", style="yellow" if bad["total"] else "green")
    if bad["by_reason"]:
        text += Text(" (" + ", ".join(f"{k} {v:,}" for k, v in bad["by_reason"].items()) + ")")
    if where is not None:
        text += Text(f" -> {where}")
    return text


def metric_cells(metrics: dict, digits: int) -> list[str]:
    """The METRIC_COLUMNS cells of one row: ``n/a`` where a metric is None (one class)."""
    return ["n/a" if metrics.get(k) is None else f"{metrics[k]:.{digits}f}" for k, _ in METRIC_COLUMNS]


def library_output(verbose: bool) -> None:
    """Let the libraries' own output through (``verbose``) or keep it off the terminal.

    Quiet: TensorFlow's C++ logs (``TF_CPP_MIN_LOG_LEVEL``, unless the environment sets it),
    the interpreter's native lines (`edge_runtime.native_logs`), Python warnings and the
    LIBRARY_LOGGERS below ERROR. The commands' own output is never affected. oneDNN's
    reordered float sums stay off either way: they are about figures, not noise (the
    same model would score slightly differently in `train` and on the device).

    Args:
        verbose: True for ``ubp-edge --verbose``.
    """
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    native_logs.set_verbose(verbose)
    if verbose:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    warnings.filterwarnings("ignore")
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
