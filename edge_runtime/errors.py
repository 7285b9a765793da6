"""The one exception family of ubp-edge.

The CLI catches `UbpEdgeError` only, prints its message as one line and exits 1;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UbpEdgeError(Exception):
    """Base class of every error a user can act on."""


class DataError(UbpEdgeError):
    """An input log cannot be read: missing, empty, wrong format, or no valid rows."""


class ArtifactError(UbpEdgeError):
    """An artifact is missing, corrupted, not one of ours, or of another spec version."""


class ConfigError(UbpEdgeError):
    """A configuration asks for something impossible; the message names the values."""


class RunDirError(UbpEdgeError):
    """A run directory is missing, incomplete, or would be overwritten without --overwrite."""


def first_line(e: BaseException, *, with_type: bool = False, limit: int = 300) -> str:
    """An exception's message as one readable line: its first non-blank line, white space
    folded, cut to ``limit`` characters; the type's name when the message is empty.

    Interpreter, converter and reader messages can run to pages (a C++ stack, a whole MLIR
    dump); a one-line error or a table row needs only their first line.

    Args:
        e: the exception.
        with_type: prefix the exception's type name (``ValueError: ...``), for rows whose
            reader cannot otherwise tell a missing package from a converter failure.
        limit: the most characters kept; a longer line ends in ``...``.
    """
    lines = [" ".join(line.split()) for line in str(e).splitlines()]
    text = next((line for line in lines if line), "")
    if len(text) > limit:
        text = text[:limit] + "..."
    if not text:
        return type(e).__name__
    return f"{type(e).__name__}: {text}" if with_type else text


def located(path: object, line: int | None, message: str) -> str:
    """Format `path:line: message` (or `path: message`) for a one-line error."""
    where = f"{path}:{line}" if line is not None else f"{path}"
    return f"{where}: {message}"
