"""What native libraries write to stderr: kept off the terminal unless asked for.

TensorFlow's converter and calibrator and the TFLite interpreters write from C++ straight to
file descriptor 2 ("INFO: Created TensorFlow Lite XNNPACK delegate for CPU.", the
calibrator's "fully_quantize: 0, inference_type: 6, ..."), where Python's warnings filters
and logging levels cannot reach them. Between a command's tables such lines are noise; when
something fails they can be the explanation. So:

- `quiet_native()` points fd 2 at a temporary file for the duration of a block and gives
  back what was written there (`NativeLog.text`). When the block raises, that text is
  attached to the exception (`native_log_of(e)`, and a note in its traceback) instead of
  being dropped; otherwise it is discarded. Blocks nest, in one thread or across threads:
  the first to enter redirects, the last to leave restores, and each reads its own span.
  fd 2 is restored on the way out whatever ends the block (an exception, KeyboardInterrupt).
- `set_verbose(True)` (``ubp-edge --verbose``) turns every block into a pass-through: native
  output reaches the terminal as it is written.
- `capture_process_stderr(path)` sends a worker process's whole stderr to a file its parent
  reads, so that even the last words of a process that aborts are kept
  (converters.tflite's calibration child).
- `attach_native_log(e, text)` keeps output captured some other way on an exception, as a
  block does (edge_runtime.verify attaches what its child process wrote).

Threads: fd 2 belongs to the process, not to a thread. While any thread is inside a block,
everything any thread writes to fd 2 goes to the capture (Python's own ``sys.stderr``
included, since it writes to fd 2) and is dropped with it unless that block raises; it is
not replayed. Blocks are short (building an interpreter, one conversion), but a program that
logs to stderr from other threads while it loads models should call ``set_verbose(True)``
or log elsewhere.

Standard library only: edge_runtime uses it around interpreter creation.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from edge_runtime.lean_stdlib import create_private_file

# How an attached native log starts in an exception's notes (shown under its traceback).
NOTE_PREFIX = "native library output:\n"
# The most characters of native output kept in an exception's note (the whole text stays
# in native_log_of(e)): an MLIR dump can run to megabytes.
NOTE_LIMIT = 4000

_lock = threading.Lock()
_verbose = False
_process_captured = False  # capture_process_stderr was called: fd 2 already goes to a file


@dataclass
class NativeLog:
    """What native code wrote to fd 2 during one `quiet_native` block (by any thread).

    Attributes:
        text: the output, decoded as UTF-8; filled when the block ends, empty when verbose
            (the output went to the terminal instead).
    """

    text: str = ""


class _Capture:
    """fd 2 pointed at a temporary file, shared by every block open at the same time."""

    def __init__(self) -> None:
        fd, path = create_private_file(None, "ubp-edge-native-", ".log")
        self.fd, self.path = fd, path
        self.holders = 0
        # POSIX reads the unlinked file by offset (os.pread); elsewhere it is read through
        # its name, so it stays until the capture ends.
        self.by_offset = hasattr(os, "pread")
        if self.by_offset:
            os.unlink(path)
        try:
            self.saved = os.dup(2)
        except OSError:
            self._close_file()
            raise
        try:
            os.dup2(fd, 2)
        except BaseException:
            os.close(self.saved)
            self._close_file()
            raise

    def position(self) -> int:
        # fd 2 and self.fd share one open file description, hence one offset.
        return os.lseek(self.fd, 0, os.SEEK_CUR)

    def read(self, start: int) -> str:
        end = self.position()
        if end <= start:
            return ""
        if self.by_offset:
            data = os.pread(self.fd, end - start, start)
        else:
            with open(self.path, "rb") as f:
                f.seek(start)
                data = f.read(end - start)
        return data.decode("utf-8", "replace")

    def restore(self) -> None:
        try:
            os.dup2(self.saved, 2)
        finally:
            os.close(self.saved)
            self._close_file()

    def _close_file(self) -> None:
        os.close(self.fd)
        if not self.by_offset:
            try:
                os.unlink(self.path)
            except OSError:
                pass


_capture: _Capture | None = None


def set_verbose(on: bool) -> None:
    """Let native library output through to the terminal (True) or capture it (False).

    Process-wide; `ubp-edge --verbose` calls it. A child process does not inherit it: pass it
    on (converters.tflite does for its calibration child).

    Args:
        on: True to pass native output through, as the libraries write it.
    """
    global _verbose
    _verbose = bool(on)


def is_verbose() -> bool:
    """Whether native library output passes through to the terminal (see set_verbose)."""
    return _verbose


def capture_process_stderr(path: str | os.PathLike) -> None:
    """Send this process's fd 2 to ``path`` (appending) for the rest of its life.

    For a worker process whose parent reads what it wrote, even when it dies in native code
    (an abort leaves no exception to carry the text). `quiet_native` blocks in this process
    then pass through: their output lands in the same file.

    Args:
        path: the file the parent reads afterwards.

    Raises:
        OSError: the file cannot be opened.
    """
    global _process_captured
    _flush_python_stderr()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.dup2(fd, 2)
    finally:
        os.close(fd)
    _process_captured = True


def attach_native_log(e: BaseException, text: str) -> BaseException:
    """Keep native output captured elsewhere (a child process's stderr) on an exception, as a
    `quiet_native` block keeps its own: `native_log_of(e)`, and a note in its traceback.

    Args:
        e: the exception about to be raised.
        text: the output; nothing is attached when it is blank.

    Returns:
        ``e``, for ``raise attach_native_log(error, text)``.
    """
    _attach(e, text)
    return e


def native_log_of(e: BaseException) -> str | None:
    """The native output captured by the `quiet_native` block an exception left, or None."""
    return getattr(e, "native_log", None)


@contextmanager
def quiet_native() -> Iterator[NativeLog]:
    """Capture what native code writes to fd 2 during the block, unless verbose.

    Yields:
        NativeLog: its ``text`` holds the captured output once the block has ended.

    Example:
        >>> with quiet_native() as log:
        ...     interpreter = Interpreter(model_content=model)
        >>> log.text
        'INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\\n'

    An exception leaving the block carries the captured text (`native_log_of`).
    """
    log = NativeLog()
    capture, start = _acquire()
    if capture is None:  # verbose, or fd 2 cannot be redirected: nothing to capture
        yield log
        return
    try:
        yield log
    except BaseException as e:
        log.text = _read(capture, start)
        _attach(e, log.text)
        raise
    else:
        log.text = _read(capture, start)
    finally:
        _release(capture)


def _acquire() -> tuple[_Capture | None, int]:
    global _capture
    if _verbose or _process_captured:
        return None, 0
    with _lock:
        if _capture is None:
            _flush_python_stderr()
            try:
                _capture = _Capture()
            except OSError:  # no fd 2 (a daemon), or no temporary directory: let it be
                return None, 0
        _capture.holders += 1
        return _capture, _capture.position()


def _read(capture: _Capture, start: int) -> str:
    _flush_python_stderr()
    with _lock:
        try:
            return capture.read(start)
        except OSError:
            return ""


def _release(capture: _Capture) -> None:
    global _capture
    with _lock:
        capture.holders -= 1
        if capture.holders == 0:
            _flush_python_stderr()
            _capture = None
            capture.restore()


def _flush_python_stderr() -> None:
    # Python's sys.stderr buffers a partial line; flushed here, it lands on the side of the
    # redirection it was written on.
    for stream in (sys.stderr, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):  # closed or detached
            pass


def _attach(e: BaseException, text: str) -> None:
    """Keep the captured text on the exception; an enclosing block replaces it with its own
    (longer) span rather than adding a second note."""
    if not text.strip():
        return
    previous = native_log_of(e)
    try:
        e.native_log = text
    except AttributeError:  # an exception type with __slots__
        return
    notes = getattr(e, "__notes__", None)
    if previous is not None and notes is not None:
        notes[:] = [n for n in notes if n != _note(previous)]
    if hasattr(e, "add_note"):
        e.add_note(_note(text))


def _note(text: str) -> str:
    text = text.rstrip()
    return NOTE_PREFIX + (text if len(text) <= NOTE_LIMIT else "..." + text[-NOTE_LIMIT:])
