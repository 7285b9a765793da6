"""A SparkSession for ``--engine spark``, quiet, and Spark's failures as one line.

`spark_session` checks what Spark needs before it starts one (``pyspark``, the ``[spark]``
extra; ``java``, version 17 or newer) and says what is missing in one line. The session it
starts keeps the terminal clean: the JVM's own output (its log at level ERROR, the task
failures with their Java stack traces, the Python workers' stderr in local mode) goes to
``spark.log`` in a folder of this process, the progress bar and the web UI are off.

`spark_errors` is the boundary around a Spark job: whatever the job raises (a Python
exception in a task or a UDF, an ``AnalysisException``, a ``Py4JJavaError`` from the JVM)
becomes one `UbpEdgeError` line. A project error raised in a worker (a `DataError` naming a
file and line) comes back as the same class with the same message, so ``--engine spark``
reports a bad log exactly as the local engine does.

Example:
    >>> spark = spark_session("local[2]")
    >>> with spark_errors("prepare"):
    ...     rows = spark.range(10).collect()
"""

from __future__ import annotations

import atexit
import importlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from edge_runtime.errors import ConfigError, UbpEdgeError, first_line

MIN_JAVA = 17
DEFAULT_MASTER = "local[2]"
# log4j2 configuration of the driver JVM: errors only, to stderr (which is spark.log).
# org.apache.spark.repl.Main at ERROR too: pyspark starts Spark as a shell, and a shell
# whose level differs from the root's prints "Setting default log level" on start.
LOG4J2 = """\
rootLogger.level = error
rootLogger.appenderRef.stderr.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{yy/MM/dd HH:mm:ss} %p %c{1}: %m%n%ex
logger.repl.name = org.apache.spark.repl.Main
logger.repl.level = error
"""
# The masters Spark accepts (its SparkSubmit refuses any other with a Java stack trace).
MASTER = re.compile(r"^(local(\[(\*|\d+)(,\s*\d+)?\])?|local-cluster\[\d+,\s*\d+,\s*\d+\]|yarn|"
                    r"spark://\S+|k8s://\S+)$")
LOCAL_MASTER = re.compile(r"^local(\[(\*|\d+)(,\s*\d+)?\])?$")
# A Python exception line at the end of a worker's traceback: "module.Name: message".
EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Warning)\b|[A-Za-z_][\w.]*)"
                            r"(?::\s?(.*))?$")
# The packages whose errors a worker may raise and the driver raises again as they are.
ERROR_PACKAGES = ("edge_runtime", "trainer")


class SparkJobError(UbpEdgeError):
    """A Spark job failed for a reason that is not in the data (the JVM, the cluster, a task
    that died); the message is the first meaningful line of the cause and where Spark's log is."""


def check_spark(what: str = "--engine spark") -> None:
    """Refuse, in one line, when this machine cannot run Spark.

    Args:
        what: the option or command that asked for Spark, for the message.

    Raises:
        ConfigError: ``pyspark`` is not installed (with the pip line of the ``[spark]`` extra),
            or no ``java`` (``$JAVA_HOME/bin/java``, else ``java`` on PATH) of version 17 or newer.
    """
    from importlib.util import find_spec

    if find_spec("pyspark") is None:
        raise ConfigError(f"{what} needs pyspark, the [spark] extra, which is not installed: "
                          f"pip install 'ubp-edge[spark]'")
    java = java_path()
    if java is None:
        raise ConfigError(f"{what} needs Java {MIN_JAVA} (java not found on PATH"
                          + (f" nor in JAVA_HOME={os.environ['JAVA_HOME']}" if os.environ.get("JAVA_HOME")
                             else "") + ")")
    version = java_version(java)
    if version is None:
        raise ConfigError(f"{what} needs Java {MIN_JAVA}: {java} -version does not say its version")
    if version < MIN_JAVA:
        raise ConfigError(f"{what} needs Java {MIN_JAVA} or newer, found Java {version} at {java}")


def java_path() -> str | None:
    """The ``java`` Spark's launcher runs: ``$JAVA_HOME/bin/java``, else the one on PATH."""
    home = os.environ.get("JAVA_HOME")
    if home:
        candidate = Path(home) / "bin" / "java"
        return str(candidate) if os.access(candidate, os.X_OK) else None
    return shutil.which("java")


def java_version(java: str) -> int | None:
    """The major version ``java -version`` reports (``1.8`` is 8), or None if it says none."""
    try:
        done = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r'version "(\d+)(?:\.(\d+))?', done.stderr + done.stdout)
    if not found:
        return None
    major = int(found.group(1))
    return int(found.group(2) or 0) if major == 1 else major


def local_cores(master: str) -> int | None:
    """The worker threads of a ``local`` master (``local[*]``: this machine's cores), else None."""
    found = LOCAL_MASTER.match(master.strip())
    if not found:
        return None
    n = found.group(2)
    if n is None:
        return 1
    return (os.cpu_count() or 1) if n == "*" else max(1, int(n))


class _LogFolder:
    """The folder of this process's Spark log and log4j2 configuration (one per process,
    as the JVM is); removed at exit unless a failure pointed someone at the log."""

    path: Path | None = None
    keep = False

    @classmethod
    def get(cls) -> Path:
        if cls.path is None:
            cls.path = Path(tempfile.mkdtemp(prefix="ubp-edge-spark-"))
            (cls.path / "log4j2.properties").write_text(LOG4J2)
            atexit.register(cls._cleanup)
        return cls.path

    @classmethod
    def _cleanup(cls) -> None:
        if cls.path is not None and not cls.keep:
            shutil.rmtree(cls.path, ignore_errors=True)


def spark_log() -> Path | None:
    """Where the JVM of this process writes its output, or None before a session started."""
    return None if _LogFolder.path is None else _LogFolder.path / "spark.log"


def session_conf(master: str = DEFAULT_MASTER, app: str = "ubp-edge",
                 conf: Mapping[str, str] | None = None) -> dict[str, str]:
    """The settings `spark_session` starts Spark with (``conf`` wins over them).

    Local masters get small settings for one machine: shuffle partitions twice the threads,
    2 GB of driver memory (the driver is the executor), the loopback address, and the Python
    workers run this interpreter (the one with the project installed). Other masters keep the
    cluster's own defaults for these.
    """
    folder = _LogFolder.get()
    settings = {
        "spark.master": master,
        "spark.app.name": app,
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.session.timeZone": "UTC",
        "spark.driver.extraJavaOptions": f"-Dlog4j2.configurationFile=file:{folder / 'log4j2.properties'}",
    }
    cores = local_cores(master)
    if cores is not None:
        settings.update({
            "spark.sql.shuffle.partitions": str(2 * cores),
            "spark.default.parallelism": str(2 * cores),
            "spark.driver.memory": "2g",
            "spark.driver.host": "127.0.0.1",
            "spark.driver.bindAddress": "127.0.0.1",
            "spark.pyspark.python": sys.executable,
        })
    settings.update(conf or {})
    return settings


def spark_session(master: str = DEFAULT_MASTER, app: str = "ubp-edge",
                  conf: Mapping[str, str] | None = None):
    """A SparkSession for ``master``, quiet (see the module's docstring); the active one if
    this process has one already (Spark runs one context per process).

    Args:
        master: ``local[N]``, ``yarn``, ``k8s://...``, ``spark://...``.
        app: the application's name on the cluster.
        conf: more Spark settings (``spark.executor.memory``, ...), over `session_conf`'s.

    Returns:
        pyspark.sql.SparkSession.

    Raises:
        ConfigError: no pyspark or no Java 17 (`check_spark`), or a master Spark refuses.
        SparkJobError: the JVM did not start (its log says why).
    """
    check_spark()
    if not MASTER.match(master.strip()):
        raise ConfigError(f"--spark-master {master!r}: expected local[N], local[*], yarn, "
                          f"spark://HOST:PORT or k8s://URL")
    from pyspark import SparkConf, SparkContext
    from pyspark.java_gateway import launch_gateway
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    settings = session_conf(master, app, conf)
    if local_cores(master) is not None:
        # pyspark starts its workers with $PYSPARK_PYTHON (python3 by default), not the
        # spark.pyspark.python setting: the workers must import this project.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark_conf = SparkConf().setAll(list(settings.items()))
    log_path = _LogFolder.get() / "spark.log"
    log_start = log_path.stat().st_size if log_path.exists() else 0
    try:
        gateway = None
        if getattr(SparkContext, "_gateway", None) is None:
            # The JVM's stdout and stderr go to spark.log: its start-up lines, its log and
            # the task failures with their Java stack traces stay off the terminal.
            log = open(log_path, "ab")  # noqa: SIM115 (the JVM writes to it while it lives)
            gateway = launch_gateway(spark_conf, popen_kwargs={"stdout": log, "stderr": subprocess.STDOUT})
        context = SparkContext(conf=spark_conf, gateway=gateway)
        context.setLogLevel("ERROR")
        return SparkSession(context)
    except Exception as e:
        if not _from_spark(e):
            raise
        # What went wrong is in the JVM's log (the gateway's own error says only that it exited).
        _LogFolder.keep = True
        reason = log_reason(log_path, log_start) or _java_cause(e) or first_line(e, limit=400)
        raise SparkJobError(f"cannot start Spark with master {master!r}: {reason} "
                            f"(Spark's log: {log_path})") from None


def log_reason(log: Path, start: int = 0) -> str | None:
    """The line of Spark's log (from byte ``start``) that says why it failed: the message of
    an uncaught exception (``Exception in thread "main" ...``), else of the last ERROR line."""
    try:
        with open(log, "rb") as f:
            f.seek(start)
            text = f.read(1 << 20).decode("utf-8", "replace")
    except OSError:
        return None
    reason = None
    for line in text.splitlines():
        found = re.match(r'Exception in thread "[^"]*" (?:[\w.$]+: )?(.*)', line)
        if found:
            return found.group(1).strip() or line.strip()
        found = re.match(r"\S+ \S+ ERROR [\w.$]+: (.*)", line)
        if found:
            reason = found.group(1).strip()
    return reason


@contextmanager
def spark_errors(what: str) -> Iterator[None]:
    """Run Spark jobs, turning their failures into one line (see `job_error`).

    Args:
        what: what the jobs do, for the message (``prepare``, ``score``).

    Raises:
        UbpEdgeError: a project error raised in a worker, as the same class and message;
            SparkJobError for anything else.
    """
    try:
        yield
    except UbpEdgeError:
        raise
    except Exception as e:
        error = job_error(e, what)
        if error is None:
            raise
        raise error from None


def job_error(e: BaseException, what: str) -> UbpEdgeError | None:
    """The one-line project error for an exception of a Spark job, or None when ``e`` did
    not come from Spark (a bug here keeps its traceback).

    A Python exception in a worker: the project's error class and message when it is one
    (DataError, ConfigError, ...), else ``what: TYPE: message``. A JVM exception: the first
    line of its deepest cause, and where Spark's log is.
    """
    if not _from_spark(e):
        return None
    text = str(e)
    raised = worker_exception(text)
    if raised is not None:
        name, message = raised
        cls = project_error_class(name)
        if cls is not None:
            return cls(message)
        return SparkJobError(f"{what} failed in a Spark task: {name}: {message}" if message
                             else f"{what} failed in a Spark task: {name}")
    cause = _java_cause(e) or first_line(e, limit=400)
    if type(e).__name__ == "AnalysisException":  # the query itself (a path, a column): not in the log
        return SparkJobError(f"{what}: {cause}")
    _LogFolder.keep = True
    log = spark_log()
    return SparkJobError(f"{what} failed in Spark: {cause}" + (f" (Spark's log: {log})" if log else ""))


def project_error_class(name: str) -> type[UbpEdgeError] | None:
    """The project's error class a worker's traceback names (``edge_runtime.errors.DataError``,
    ``trainer.files.OutputError``), or None for any other exception."""
    module, _, class_name = name.rpartition(".")
    if module.split(".")[0] not in ERROR_PACKAGES:
        return None
    try:
        cls = getattr(importlib.import_module(module), class_name, None)
    except ImportError:
        return None
    return cls if isinstance(cls, type) and issubclass(cls, UbpEdgeError) else None


def _from_spark(e: BaseException) -> bool:
    """Whether ``e`` is one of pyspark's or py4j's exceptions (the ones a job raises)."""
    module = type(e).__module__ or ""
    return module.startswith(("pyspark", "py4j"))


def worker_exception(text: str) -> tuple[str, str] | None:
    """The exception a Python worker raised, from the traceback Spark passes on in ``text``:
    (its type's qualified name, the first line of its message), or None when there is none."""
    start = text.rfind("Traceback (most recent call last):")
    if start < 0:
        return None
    lines = text[start:].splitlines()[1:]
    for line in lines:
        if not line.strip() or line.startswith((" ", "\t")):
            continue  # the frames, and the source lines under them, are indented
        found = EXCEPTION_LINE.match(line.strip())
        if found:
            return found.group(1), (found.group(2) or "").strip()
        return line.strip(), ""
    return None


def _java_cause(e: BaseException) -> str | None:
    """The first line of the deepest cause of a Py4JJavaError (``Class: message``), if any."""
    java = getattr(e, "java_exception", None)
    if java is None:
        return None
    try:
        deepest = java
        for _ in range(20):  # a cycle of causes is possible in Java; stop after a few
            cause = deepest.getCause()
            if cause is None:
                break
            deepest = cause
        message = deepest.getMessage() or ""
        name = deepest.getClass().getSimpleName()
    except Exception:  # the JVM is gone: nothing more to ask it
        return None
    line = next((" ".join(x.split()) for x in str(message).splitlines() if x.strip()), "")
    return f"{name}: {line[:400]}" if line else name
