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


def located(path: object, line: int | None, message: str) -> str:
    """Format `path:line: message` (or `path: message`) for a one-line error."""
    where = f"{path}:{line}" if line is not None else f"{path}"
    return f"{where}: {message}"
