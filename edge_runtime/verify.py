"""Verify an artifact in a child process before this process loads it, and remember the verdict.

Why: no check of a file can know every kernel's rules. The reader's graph check and the
delegate-free trial run (edge_runtime.backends.make_interpreter) refuse the damage fuzzing
has found so far, but a re-sealed artifact (a valid digest over damaged bytes) can still
reach an abort or a segfault inside a kernel, and that ends the process: a kiosk's `serve`
would die on the file put in its model path. So the first load of an artifact is made safe
by construction: a child process does what the host would do (load, allocate and run the
whole graph at a few shapes, then the step graph), and the host loads the bytes only after
the child survived it. A child killed by a signal becomes an ArtifactError naming it.

The steps of `verify_model`, for the bytes the host has already read (so a file replaced in
between cannot slip through):

1. the backend is resolved (``auto`` -> a name) and the verdict looked up in the cache; a
   verdict found there is used as is;
2. otherwise the common damage is refused in this process, with its usual message, by the
   same graph check the interpreter would get (edge_runtime.backends.check_model);
3. the child, ``python -m edge_runtime.verify_child BACKEND THREADS SOURCE``, gets the bytes
   on stdin and prints one JSON line per stage (whole graph, step graph); it refuses as the
   host would (the same ArtifactError, message and class) or dies;
4. a verdict the child reached (the whole graph ran; the step graph ran, was refused with a
   message, or is absent) is cached; a crash, a timeout or a refusal of the whole graph is
   not, so such a file is verified again at its next load.

The step graph is loaded lazily by the host (Scorer.step_model), but it was verified with
the rest: a step graph the child refused (or died on) is refused by step_model with that
message without being loaded here, so nothing unverified is loaded later.

The cache: one small JSON file per verdict in ``$UBP_EDGE_CACHE_DIR``, else
``$XDG_CACHE_HOME/ubp-edge``, else ``~/.cache/ubp-edge`` (in its ``verdicts`` folder),
written atomically (a temporary file renamed over the entry). Its key covers everything the
verdict is about: the SHA-256 of the artifact's bytes, the backend, its version and build
(edge_runtime.backends.backend_version), the interpreter's threads, the Python version and
ubp-edge's runtime (its version and the size and modification time of each edge_runtime
source file, so an upgrade or an edit re-verifies). A cache that cannot be read or written
is not an error: the artifact is verified every time. Whoever can write the cache folder
can mark a file as verified; it belongs to the user who runs ubp-edge, like the models.

Cost: a cached verdict costs a hash of the file and one small read (well under 1 ms for the
reference models); a verification costs a Python start, the imports of numpy and the
interpreter and the runs (about 0.2-0.3 s, see README). The child gets a minimal
environment (ENVIRONMENT) and a timeout (VERIFY_TIMEOUT, or ``$UBP_EDGE_VERIFY_TIMEOUT``
seconds).

Seams: `verify_model` (Scorer.from_bytes calls it unless ``verify=False``), `Verdict`,
`cache_dir`, `verdict_key`. The child is edge_runtime.verify_child; its protocol is
CHILD_MODULE, STAGE_WHOLE / STAGE_STEP and the JSON lines `parse_stages` reads.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from edge_runtime.backends import backend_version, check_model, check_runtime, interpreter_class
from edge_runtime.errors import (
    ArtifactError,
    ConfigError,
    DataError,
    MalformedModelError,
    RunDirError,
    UbpEdgeError,
    first_line,
)
from edge_runtime.lean_stdlib import create_private_file, sha256
from edge_runtime.native_logs import attach_native_log, is_verbose

CACHE_ENV = "UBP_EDGE_CACHE_DIR"
TIMEOUT_ENV = "UBP_EDGE_VERIFY_TIMEOUT"
# Seconds the child may take. It needs a fraction of a second (a Python start, the imports
# of numpy and the interpreter, a few invokes); a minute covers a slow device under load,
# and a graph that hangs a kernel is refused rather than hanging the host.
VERIFY_TIMEOUT = 60.0
CHILD_MODULE = "edge_runtime.verify_child"
STAGE_WHOLE, STAGE_STEP = "whole", "step"
VERDICT_FORMAT, VERDICT_VERSION = "ubp-edge-verdict", 1
# The only variables the child inherits: enough to start Python and find its packages and a
# temporary folder, and nothing of the host's work (a shell's or a service's environment
# can be large, and nothing in it concerns the verdict).
ENVIRONMENT = ("PATH", "HOME", "TMPDIR", "TEMP", "TMP", "LANG", "LC_ALL", "LC_CTYPE",
               "PYTHONPATH", "PYTHONHOME", "LD_LIBRARY_PATH", "SYSTEMROOT",
               "TF_CPP_MIN_LOG_LEVEL")
# Signals by which a process crashes on its own (a failed check, a bad pointer); any other
# (SIGKILL, SIGTERM, SIGINT) came from outside: the out-of-memory killer, a user, a service.
CRASH_SIGNALS = {getattr(signal, name) for name in ("SIGABRT", "SIGSEGV", "SIGBUS", "SIGFPE",
                                                   "SIGILL", "SIGTRAP", "SIGSYS")
                 if hasattr(signal, name)}
# The family, by name: the child's refusal is raised here as the same class.
ERRORS: dict[str, type[UbpEdgeError]] = {e.__name__: e for e in (
    UbpEdgeError, DataError, ArtifactError, MalformedModelError, ConfigError, RunDirError)}
STDERR_KEPT = 20_000  # characters of the child's stderr kept on an error (its tail)


@dataclass(frozen=True)
class Verdict:
    """What the child found, for one artifact on one backend.

    Attributes:
        backend: the backend's name (``auto`` resolved).
        step: ``ok``, ``absent`` (an artifact without a step graph) or ``refused``.
        step_error: the class name of the step graph's refusal, when refused.
        step_message: its message, without the leading ``SOURCE: ``.
        cached: the verdict came from the cache (no child ran).
    """

    backend: str
    step: str = "ok"
    step_error: str = ""
    step_message: str = ""
    cached: bool = False

    def step_refusal(self, source: str) -> ArtifactError | None:
        """The error Scorer.step_model raises for this step graph, naming ``source``; None
        when the step graph may be loaded (or is absent, which Scorer reports itself)."""
        if self.step != "refused":
            return None
        cls = ERRORS.get(self.step_error, ArtifactError)
        if not issubclass(cls, ArtifactError):
            cls = ArtifactError
        return cls(f"{source}: {self.step_message}")

    def to_dict(self) -> dict:
        """The verdict as the cache stores it (``cached`` is not stored: it says where a
        verdict came from)."""
        return {"backend": self.backend, "step": self.step, "step_error": self.step_error,
                "step_message": self.step_message}


def verify_model(model: bytes, backend: str = "auto", num_threads: int = 1,
                 source: str = "artifact", timeout: float | None = None) -> Verdict:
    """Verify an artifact's bytes in a child process, or find its verdict in the cache.

    Args:
        model: the artifact's bytes, as the host will load them.
        backend: ``auto`` or a name of edge_runtime.backends.BACKENDS.
        num_threads: the interpreter threads the host will use.
        source: the file's name, for messages.
        timeout: seconds the child may take; None reads ``$UBP_EDGE_VERIFY_TIMEOUT``, else
            VERIFY_TIMEOUT.

    Returns:
        The Verdict: the whole graph may be loaded; its ``step_refusal`` says whether the
        step graph may be.

    Raises:
        MalformedModelError: the graph check refuses the model (in this process).
        ArtifactError: the child refused the whole graph (the same class and message the
            host would have raised), died on it (naming the signal), or did not finish in
            time.
        ConfigError: the backend is unknown or not installed, the timeout is not a positive
            number, or no child process can be started.
    """
    _, name = interpreter_class(backend)
    key = verdict_key(model, name, num_threads)
    cached = _read_verdict(key)
    if cached is not None:
        return cached
    try:
        check_model(model)
        check_runtime(model, name)  # a runtime older than the model needs: no child to start
    except ArtifactError as e:
        raise type(e)(f"{source}: {e}") from None
    verdict, cacheable = _run_child(model, name, num_threads, source, _timeout(timeout))
    if cacheable:
        _write_verdict(key, verdict)
    return verdict


def cache_dir() -> Path | None:
    """The folder of the verdict cache: ``$UBP_EDGE_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/ubp-edge``, else ``~/.cache/ubp-edge``; None without a home folder.

    Returns:
        The folder (it may not exist yet), or None.
    """
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):  # the XDG spec: a relative value is to be ignored
        return Path(xdg) / "ubp-edge"
    try:
        return Path.home() / ".cache" / "ubp-edge"
    except RuntimeError:  # no $HOME and no password entry (a bare service)
        return None


def verdict_key(model: bytes, backend: str, num_threads: int) -> str:
    """The cache key of a verdict: SHA-256 over what the verdict is about.

    Args:
        model: the artifact's bytes.
        backend: the resolved backend's name (imported).
        num_threads: the interpreter's threads.

    Returns:
        64 hex characters.
    """
    about = {"artifact": sha256(model).hexdigest(), "backend": backend,
             "backend_version": backend_version(backend), "threads": int(num_threads),
             "python": sys.version.split()[0], "runtime": _runtime_fingerprint()}
    return sha256(json.dumps(about, sort_keys=True).encode("utf-8")).hexdigest()


@lru_cache(maxsize=1)
def _runtime_fingerprint() -> str:
    """ubp-edge's version and each edge_runtime source file's name, size and modification
    time: any upgrade, reinstall or edit of the runtime changes it."""
    package = Path(__file__).resolve().parent
    version = getattr(sys.modules.get(__package__ or ""), "__version__", "unknown")
    parts = [version]
    try:
        for entry in sorted(os.scandir(package), key=lambda e: e.name):
            if entry.name.endswith(".py"):
                st = entry.stat()
                parts.append(f"{entry.name}:{st.st_size}:{st.st_mtime_ns}")
    except OSError:
        parts.append("unlisted")
    return sha256("\n".join(parts).encode("utf-8")).hexdigest()


def _timeout(timeout: float | None) -> float:
    if timeout is None:
        text = os.environ.get(TIMEOUT_ENV)
        if not text:
            return VERIFY_TIMEOUT
        try:
            timeout = float(text)
        except ValueError:
            raise ConfigError(f"{TIMEOUT_ENV}={text!r} is not a number of seconds") from None
    if not timeout > 0 or timeout == float("inf"):
        raise ConfigError(f"the verification timeout must be a positive number of seconds, got "
                          f"{timeout!r}")
    return float(timeout)


# ----------------------------------------------------------------------------- the child

def _run_child(model: bytes, backend: str, num_threads: int, source: str,
               timeout: float) -> tuple[Verdict, bool]:
    """(verdict, whether it may be cached); the errors of `verify_model`."""
    import subprocess  # only a cache miss starts a child: a live process does not load it

    package_root = Path(__file__).resolve().parents[1]
    env = {k: os.environ[k] for k in ENVIRONMENT if k in os.environ}
    # -B: the child writes no .pyc. Under a file-size limit (ulimit -f) CPython's write of a
    # .pyc is cut short without an error and the truncated file breaks every later import.
    command = [sys.executable or "python3", "-B", "-X", "faulthandler", "-m", CHILD_MODULE, backend,
               str(int(num_threads)), source]
    try:
        # `-m` puts the working folder first on sys.path: the child imports the very
        # edge_runtime this process runs, installed or not.
        done = subprocess.run(command, input=bytes(model), capture_output=True, timeout=timeout,
                              cwd=package_root, env=env, close_fds=True, check=False)
    except subprocess.TimeoutExpired as e:  # run() has killed the child
        raise _attached(ArtifactError(
            f"{source}: verifying the model in a child process took over {timeout:g} s (an "
            f"interpreter hung on it?); the file is damaged or this device is overloaded "
            f"(${TIMEOUT_ENV} sets the limit)"), e.stderr) from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"{source}: cannot start a child process to verify the model "
                          f"({first_line(e)}); load it with verify=False to skip the check"
                          ) from None
    stderr = done.stderr.decode("utf-8", "replace")
    if is_verbose() and stderr:
        sys.stderr.write(stderr)  # --verbose: what the interpreter said, as it said it
    stages = parse_stages(done.stdout)
    whole = stages.get(STAGE_WHOLE)
    if whole is not None and not whole["ok"]:
        raise _attached(_refusal(whole, source), stderr)
    death = None if done.returncode == 0 else _death(done.returncode, stderr)
    if whole is None:
        raise _attached(ArtifactError(f"{source}: {death or _no_verdict(stderr)}"), stderr)
    step = stages.get(STAGE_STEP)
    if step is None:  # the child died on the step graph (or said nothing of it)
        message = f"step graph: {death or _no_verdict(stderr)}"
        return Verdict(backend, "refused", ArtifactError.__name__, message), False
    if death is not None:  # after both stages: in a destructor, which the host would meet too
        raise _attached(ArtifactError(f"{source}: {death}"), stderr)
    if step.get("absent"):
        return Verdict(backend, "absent"), True
    if step["ok"]:
        return Verdict(backend), True
    message = _without_source(str(step.get("message", "")), source)
    return Verdict(backend, "refused", str(step.get("error", "")), message), True


def parse_stages(stdout: bytes) -> dict[str, dict]:
    """The child's JSON lines by stage (``{"stage": "whole", "ok": true, ...}``); lines that
    are not such objects are ignored.

    Args:
        stdout: what the child printed on its verdict channel.

    Returns:
        stage name -> its object.
    """
    stages: dict[str, dict] = {}
    for line in stdout.decode("utf-8", "replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and row.get("stage") in (STAGE_WHOLE, STAGE_STEP) \
                and isinstance(row.get("ok"), bool):
            stages[row["stage"]] = row
    return stages


def _refusal(stage: dict, source: str) -> UbpEdgeError:
    """The child's refusal as this process's error: the same class and message."""
    cls = ERRORS.get(str(stage.get("error")), ArtifactError)
    message = str(stage.get("message") or "refused")
    return cls(message if message.startswith(f"{source}: ") else f"{source}: {message}")


def _death(returncode: int, stderr: str = "") -> str:
    """How the child ended, in words, for a nonzero return code (with the last line it wrote
    when it exited by itself: an ImportError says the installation is broken, not the file)."""
    if returncode < 0:
        try:
            sig = signal.Signals(-returncode)
        except ValueError:
            return f"the child process verifying the model was killed by signal {-returncode}"
        if sig in CRASH_SIGNALS:
            return (f"the interpreter crashed on this model ({sig.name}) while verifying it in a "
                    f"child process; the file is damaged or not supported by this runtime")
        return (f"the child process verifying the model was killed by {sig.name} (out of "
                f"memory, or stopped from outside); try again")
    return (f"the child process verifying the model exited with status {returncode}"
            f"{_last_words(stderr)}; the file is damaged or not supported by this runtime")


def _no_verdict(stderr: str) -> str:
    return f"the child process verifying the model ended without a verdict{_last_words(stderr)}"


def _last_words(stderr: str) -> str:
    """`` (the last line the child wrote)``, cut short, or nothing."""
    last = next((line.strip() for line in reversed(stderr.splitlines()) if line.strip()), "")
    return f" ({last[:200]})" if last else ""


def _without_source(message: str, source: str) -> str:
    prefix = f"{source}: "
    return message[len(prefix):] if message.startswith(prefix) else message


def _attached(error: UbpEdgeError, stderr: str | bytes | None) -> UbpEdgeError:
    """``error`` carrying the tail of the child's stderr (edge_runtime.native_logs)."""
    if isinstance(stderr, bytes):
        stderr = stderr.decode("utf-8", "replace")
    if stderr:
        attach_native_log(error, stderr[-STDERR_KEPT:])
    return error


# ----------------------------------------------------------------------------- the cache

def _verdict_path(key: str) -> Path | None:
    folder = cache_dir()
    return None if folder is None else folder / "verdicts" / f"{key}.json"


def _read_verdict(key: str) -> Verdict | None:
    """The cached verdict of ``key``, or None (absent, unreadable, or not ours)."""
    path = _verdict_path(key)
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            d = json.loads(f.read(65536))
        if (d.get("format"), d.get("version"), d.get("key")) != (VERDICT_FORMAT, VERDICT_VERSION,
                                                                  key):
            return None
        v = d["verdict"]
        verdict = Verdict(str(v["backend"]), str(v["step"]), str(v["step_error"]),
                          str(v["step_message"]), cached=True)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return verdict if verdict.step in ("ok", "absent", "refused") else None


def _write_verdict(key: str, verdict: Verdict) -> None:
    """Cache a verdict atomically; any failure leaves the cache as it was, silently (an
    unwritable cache means verifying every time, never an error)."""
    path = _verdict_path(key)
    if path is None:
        return
    data = json.dumps({"format": VERDICT_FORMAT, "version": VERDICT_VERSION, "key": key,
                       "verdict": verdict.to_dict()}, sort_keys=True).encode("utf-8")
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = create_private_file(path.parent, f".{path.name}.", ".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        tmp = None
    except OSError:
        pass
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
