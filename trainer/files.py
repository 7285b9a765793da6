"""Atomic file writes, and the one guard every command's outputs pass before any work starts.

Every file the project writes (artifacts, run-directory files, reports, plots, scores,
quarantines, generated logs, ONNX peers) goes through one of the writers here: the bytes go
to a temporary file in the destination's folder, are flushed and fsynced, get the permissions
a plain ``open()`` would have given them, and are renamed over the destination in one
step. A failure or a kill leaves no temporary file behind (a kill -9 at worst leaves a
hidden ``.NAME.*.tmp`` that no reader looks at). A write the system refuses (no space left,
a file-size limit, a read-only or unwritable folder, a directory in the way) is one
`OutputError` naming the path and the reason, never a traceback.

`check_outputs` is the guard a command calls at its boundary, before it reads anything:
each output must be writable where it is asked to go (probed with a temporary file), must
not be a directory or a device, and must not resolve to any of the command's inputs
(symlinks and hard links included), nor, for a folder that is replaced whole (a run
directory), hold one. Seams: the CLI's commands (`ubp_edge.commands`), `trainer.train.train`
and `converters.tflite.convert_run` call it; `OutputError` is the project's error for it.
`read_json_file` is the one reader of the JSON files the project writes (run directory,
PREP_DIR manifest): every way such a file can be unreadable or damaged is one line.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from edge_runtime.errors import ConfigError, UbpEdgeError, first_line

PathLike = str | os.PathLike


class OutputError(UbpEdgeError, OSError):
    """An output cannot be written where it was asked to go, or would replace an input.

    The message names the path (and the option, where a command checked it) and the reason:
    ``scores.jsonl: cannot write (No space left on device)``. It is an OSError too, so code
    that caught the system's error from a write still catches it.
    """


# Reasons worth more words than strerror gives them.
_REASONS = {
    errno.EFBIG: "File too large: the process's file-size limit (ulimit -f) or the file system's",
    errno.EISDIR: "Is a directory",
}


def write_error(path: PathLike, e: OSError) -> OutputError:
    """The one-line error for a write of ``path`` the system refused.

    Args:
        path: the destination the caller asked for (not the temporary file).
        e: what the system said.

    Returns:
        OutputError ``PATH: cannot write (REASON)``.
    """
    reason = _REASONS.get(e.errno) or e.strerror or str(e) or type(e).__name__
    return OutputError(f"{path}: cannot write ({reason})")


@contextmanager
def writes_to(path: PathLike) -> Iterator[None]:
    """Around writes a library makes (pyarrow's Parquet writer): a refused write (no space, a
    file-size limit) becomes the one line of `write_error` naming ``path``, not a bare OSError."""
    try:
        yield
    except UbpEdgeError:
        raise
    except OSError as e:
        raise write_error(path, e) from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without error, the file
    written there is fsynced and renamed over ``path``. For writers that take a file name
    (``quantize_dynamic``, matplotlib's ``savefig``).

    The folder of ``path`` is created if missing. On an error (or KeyboardInterrupt) the
    temporary file is removed and ``path`` is left as it was.

    Raises:
        OutputError: the folder cannot be made or written, ``path`` is a directory, or a
            write in the block (or the final rename) failed: no space left, a file-size
            limit, permissions, a read-only file system. An OSError of the block that names
            another file than this one (a read) passes unchanged.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: cannot write (Is a directory)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise write_error(path, e) from None
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        # mkstemp makes the file 0600; what we write is as readable as any file the user writes.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OutputError:  # already one line (a nested writer's)
        Path(tmp).unlink(missing_ok=True)
        raise
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        if e.filename is not None and os.fspath(e.filename) not in (tmp, os.fspath(path)):
            raise  # about another file (a read in the block): not this write's fault
        raise write_error(path, e) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_open(path: PathLike, mode: str = "w", encoding: str | None = "utf-8",
                newline: str | None = None) -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing (``"w"`` text or ``"wb"`` bytes);
    when the block ends without error it replaces ``path`` atomically. For writers that
    stream (JSON lines, CSV rows, ``np.savez``).

    Raises:
        OutputError: as `atomic_path` (a failed write, flush or close included).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes new files: mode 'w' or 'wb', got {mode!r}")
    with atomic_path(path) as tmp:
        if mode == "wb":
            with open(tmp, "wb") as f:
                yield f
        else:
            with open(tmp, "w", encoding=encoding, newline=newline) as f:
                yield f


def write_bytes_atomic(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; return ``path``.

    Raises:
        OutputError: as `atomic_path`.
    """
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def write_text_atomic(path: PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically; return ``path``.

    Raises:
        OutputError: as `atomic_path`.
    """
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: PathLike, obj: object) -> Path:
    """Write ``obj`` as indented JSON (with a final newline) atomically; return ``path``.

    Raises:
        OutputError: as `atomic_path`.
    """
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


# --------------------------------------------------------------------------- the output guard

def _named(label: str, path: PathLike) -> str:
    return f"{label} {path}" if label else str(path)


def _existing_ancestor(path: Path) -> Path:
    """The nearest of ``path``'s folders that exists (``path`` made absolute first)."""
    folder = Path(os.path.abspath(path)).parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _probe(folder: Path, label: str, path: PathLike) -> None:
    """Create and remove a temporary file in ``folder``: the one test of writability that
    is right for root, read-only mounts, /proc and /sys alike."""
    if not folder.is_dir():
        raise OutputError(f"{_named(label, path)}: cannot write ({folder} is not a directory)")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".ubp-edge-probe.", suffix=".tmp", dir=folder)
    except OSError as e:
        # /proc answers "No such file or directory" for a file it will not create.
        reason = "it takes no new files" if e.errno == errno.ENOENT else \
            _REASONS.get(e.errno) or e.strerror or e
        raise OutputError(f"{_named(label, path)}: cannot write in {folder} ({reason})") from None
    os.close(fd)
    os.unlink(tmp)


def check_writable(path: PathLike, label: str = "") -> None:
    """Refuse, before any work, an output file that cannot be written where it is asked to go.

    Args:
        path: the file to be written.
        label: the option that named it, as typed (``--out``), for the message.

    Raises:
        OutputError: ``path`` is a directory, exists and is not a regular file (a device, a
            FIFO: an atomic write would replace it), or its folder (or the nearest one that
            exists, where the writer will create the rest) is not a writable directory.
    """
    p = Path(path)
    if p.is_dir():
        raise OutputError(f"{_named(label, path)}: is a directory; name a file")
    if p.exists() and not p.is_file():
        raise OutputError(f"{_named(label, path)}: exists and is not a regular file (a device, "
                          f"FIFO or socket); name a file")
    _probe(_existing_ancestor(p), label, path)


def check_folder_writable(path: PathLike, label: str = "") -> None:
    """Refuse, before any work, an output folder that cannot be made or written.

    Args:
        path: the folder that will receive files (created if missing).
        label: the option that named it, as typed (``--report``).

    Raises:
        OutputError: ``path`` exists and is not a directory, or neither it nor the nearest
            folder above it that exists can be written.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise OutputError(f"{_named(label, path)}: exists and is not a directory")
    _probe(p if p.is_dir() else _existing_ancestor(p), label, path)


def same_file(a: PathLike, b: PathLike) -> bool:
    """Whether ``a`` and ``b`` are one file: the same path once symlinks and ``..`` are
    resolved, or (both existing) the same inode on the same device, which catches hard links."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def holds(folder: PathLike, path: PathLike) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it, symlinks resolved."""
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))


Inputs = Mapping[str, PathLike | Iterable[PathLike] | None]


def _flatten(named: Inputs) -> list[tuple[str, Path]]:
    flat = []
    for label, paths in named.items():
        if paths is None:
            continue
        if isinstance(paths, str | os.PathLike):
            paths = [paths]
        flat += [(label, Path(p)) for p in paths]
    return flat


def check_outputs(inputs: Inputs, outputs: Inputs | None = None,
                  folders: Mapping[str, PathLike | None] | None = None,
                  replaced: Mapping[str, PathLike | None] | None = None) -> None:
    """The output guard: refuse, before anything is read, outputs that cannot be written or
    would destroy an input.

    Args:
        inputs: what the command reads, by the option that named it (``{"--data": log,
            "--model": artifact}``); a value may be several paths (a log and the files read
            beside it) or None (option not given).
        outputs: files to be written, by option (``{"--out": scores, "--out's bad rows":
            scores.quarantine.jsonl}``); a value may be several files (a report's), or None.
        folders: folders that receive files (``--report``); created if missing. Give the
            files they will receive in ``outputs`` too, so each is checked against the inputs.
        replaced: folders replaced whole at the end (``train --out``): none may hold an input,
            be the current directory or hold it, or be a mount point or the root.

    Raises:
        OutputError: one line naming the output's option and path, and, for a clash, the
            input's option and path: an output that resolves to an input (symlinks and hard
            links included), two outputs that are one file, a replaced folder holding an
            input, or an output that cannot be written there (see `check_writable`).
    """
    ins = _flatten(inputs)
    files = _flatten(outputs or {})
    for label, path in files:
        for in_label, in_path in ins:
            if same_file(path, in_path):
                raise OutputError(f"{_named(label, path)} is {_named(in_label, in_path)}: writing it "
                                  f"would replace the input; choose another {label or 'output'}")
    for i, (label, path) in enumerate(files):
        for other_label, other in files[:i]:
            if same_file(path, other):
                raise OutputError(f"{_named(label, path)} and {_named(other_label, other)} are one "
                                  f"file; choose another {label or 'output'}")
    for label, folder in (replaced or {}).items():
        if folder is None:
            continue
        _check_replaced(label, Path(folder), ins)
    for label, folder in (folders or {}).items():
        if folder is not None:
            check_folder_writable(folder, label)
    for label, path in files:
        check_writable(path, label)


def _check_replaced(label: str, folder: Path, ins: list[tuple[str, Path]]) -> None:
    real = Path(os.path.realpath(folder))
    if real == real.parent:
        raise OutputError(f"{_named(label, folder)}: is the root directory; name a new folder")
    if holds(real, os.getcwd()):
        raise OutputError(f"{_named(label, folder)}: is the current directory or holds it "
                          f"({real}); name a new folder, e.g. {label or '--out'} runs/demo")
    if real.is_dir() and os.path.ismount(real):
        raise OutputError(f"{_named(label, folder)}: is a mount point and cannot be replaced; "
                          f"name a folder inside it")
    for in_label, in_path in ins:
        if holds(real, in_path):
            raise OutputError(f"{_named(label, folder)} holds {_named(in_label, in_path)}: replacing "
                              f"it would delete the input; choose another {label or 'folder'}")
    # The stage is made beside the folder and renamed over it: its parent must take files.
    _probe(_existing_ancestor(real), label, folder)


def read_json_file(path: Path, error: type[UbpEdgeError], damaged_hint: str = ""):
    """The JSON value in ``path``, or ``error`` naming the file and what is wrong.

    Args:
        path: the file.
        error: the error class the caller's users know (RunDirError, DataError, ...).
        damaged_hint: appended to the message when the file is damaged (e.g. "; re-run ...").

    Raises:
        error: it cannot be read, is not UTF-8 JSON, or nests too deep to parse.
    """
    try:
        return json.loads(path.read_bytes())
    except OSError as e:
        raise error(f"{path}: unreadable ({e.strerror or e})") from None
    except RecursionError:
        raise error(f"{path}: damaged (JSON nested too deep){damaged_hint}") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise error(f"{path}: damaged, not JSON ({first_line(e)}){damaged_hint}") from None


def format_by_suffix(path: PathLike, formats: Mapping[str, str], option: str = "--out") -> str:
    """What a file of this name holds, by its suffix (``formats``: ``.csv`` -> ``csv``, ...).

    Raises:
        ConfigError: a suffix ``formats`` does not have, naming the option and the suffixes
            it takes.
    """
    kind = formats.get(Path(path).suffix.lower())
    if kind is None:
        names = sorted(formats)
        raise ConfigError(f"{option} {path}: use a {', '.join(names[:-1])} or {names[-1]} file name")
    return kind
