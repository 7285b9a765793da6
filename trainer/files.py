"""Atomic file writes: a reader sees the old file or the whole new one, never half of it.

Every file the project writes (artifacts, run-directory files, reports, plots, scores,
quarantines, generated logs, ONNX peers) goes through one of these: the bytes go to a
temporary file in the destination's folder, are flushed and fsynced, get the permissions
a plain ``open()`` would have given them, and are renamed over the destination in one
step. A failure or a kill leaves no temporary file behind (a kill -9 at worst leaves a
hidden ``.NAME.*.tmp`` that no reader looks at).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without error, the file
    written there is fsynced and renamed over ``path``. For writers that take a file name
    (``np.savez``, ``quantize_dynamic``, matplotlib's ``savefig``).

    The folder of ``path`` must exist. On an error (or KeyboardInterrupt) the temporary file
    is removed and ``path`` is left as it was.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        # mkstemp makes the file 0600; what we write is as readable as any file the user writes.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8",
                newline: str | None = None) -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing (``"w"`` text or ``"wb"`` bytes);
    when the block ends without error it replaces ``path`` atomically. For writers that
    stream (JSON lines, CSV rows)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes new files: mode 'w' or 'wb', got {mode!r}")
    with atomic_path(path) as tmp:
        if mode == "wb":
            with open(tmp, "wb") as f:
                yield f
        else:
            with open(tmp, "w", encoding=encoding, newline=newline) as f:
                yield f


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; return ``path``."""
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically; return ``path``."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: object) -> Path:
    """Write ``obj`` as indented JSON (with a final newline) atomically; return ``path``."""
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
