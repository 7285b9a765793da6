"""What the CLI prints, and what it keeps the libraries from printing.

Every command writes through the two consoles here: ``out`` (stdout: tables, JSON, scores)
and ``err`` (stderr: progress, warnings, errors, summaries of what was written). Errors a
person can act on (`UbpEdgeError`) become one red ``error:`` line on stderr and exit code 1
inside `user_errors`; anything else keeps its traceback, because it is a bug.

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
from edge_runtime.errors import UbpEdgeError
from trainer.metrics import METRIC_KEYS, METRICS

out = Console()
err = Console(stderr=True)

# The metric columns of the CLI's terminal tables (`train`, `evaluate`): (JSON key, header),
# headers from the metric table's narrow names.
METRIC_COLUMNS: tuple[tuple[str, str], ...] = tuple((k, METRICS[k].short) for k in METRIC_KEYS)

# Python loggers of the libraries the CLI drives; quiet (errors only) unless --verbose.
LIBRARY_LOGGERS = ("tensorflow", "absl", "tf2onnx", "onnx", "onnxruntime", "h5py", "matplotlib")


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the project's errors into one line on stderr and exit code 1.

    Raises:
        typer.Exit: code 1, after printing ``error: <message>``, for any `UbpEdgeError`.
    """
    try:
        yield
    except UbpEdgeError as e:
        print_error(str(e))
        raise typer.Exit(1) from None


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
