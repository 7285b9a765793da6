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


class MalformedModelError(ArtifactError):
    """The model's flatbuffer does not hold together, or its graph would make the kernels
    abort (an operator writing a constant, a quantized tensor of scale 0, ...).

    Raised by the `.tflite` reader (edge_runtime.tflite_reader) before any interpreter sees
    the model, and passed on unchanged by the loaders that wrap its message
    (edge_runtime.backends.make_interpreter, Scorer.from_bytes, StepModel). On a file read
    from disk it means damage; on bytes fresh from the TFLite converter it means the
    converter wrote a graph the runtime refuses, which `convert` reports as "unsupported".
    """


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
