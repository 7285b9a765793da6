"""Training on several devices or machines with tf.distribute (`ubp-edge train --distribute`).

Two modes, both on a PREP_DIR's shards (`trainer.prepdir`):

- ``mirrored``: `tf.distribute.MirroredStrategy` over this machine's devices (its GPUs, else
  the CPU as one replica); one process, the run directory written as without it.
- ``multi-worker``: `tf.distribute.MultiWorkerMirroredStrategy`, one process per worker, the
  cluster read from ``TF_CONFIG`` as a cluster manager sets it (a Kubernetes TFJob, Vertex AI,
  SageMaker): ``{"cluster": {"chief": [...], "worker": [...]}, "task": {"type", "index"}}``.
  Every worker runs the same command (`train_worker`); gradients are all-reduced each step.

How the data is split: by shard file. Among the shards holding a split, worker ``k`` of ``n``
reads shards ``k, k+n, k+2n, ...`` (`PrepDir.dataset`'s ``worker``, ``k`` tf.distribute's
input pipeline number), so no worker reads another's sessions. With fewer such shards than
workers `check_shards` refuses the run: `prepare` again with more ``--shards``. Each replica
takes ``--batch-size`` / replicas sessions a step, so a step of the cluster sees
``--batch-size`` sessions, as one process does (`worker_streams`).

Every worker runs the same number of steps: an all-reduce needs every worker, and a worker
whose share ran out would get tf.distribute's empty stand-in batches of zero time steps, which
the LSTM cannot run. So a shorter share is completed with empty batches of one time step (no
session: no loss, no gradient, no metric) up to the longest share's batch count, which
`PrepDir.dataset` knows before it reads a batch. An epoch is still every session once.

Who writes what: only the chief (task ``chief``, or ``worker`` 0 when the cluster has no
chief) writes the run directory, through the same staging folder and checkpoints as a single
process. Other workers train into a temporary folder of their own, the standard pattern for
multi-worker Keras; after training they stop (the chief scores and writes everything).

Surviving a worker's death: the chief's checkpoint after every epoch (`trainer.train`'s
``--resume`` state: weights, optimizer, best weights, history, early stopping) in the run's
staging folder. Run the same command with ``--resume`` on every worker: the chief reads its
staging folder, every other worker a copy of it, so all restore the same epoch (this needs
``--out`` on storage every worker sees, as tf_keras's BackupAndRestore would). `--resume`
rather than BackupAndRestore: it restores early stopping and the best weights too, and is the
one mechanism for one process and many.

``--local-workers N`` (`run_local_workers`) starts N worker processes on 127.0.0.1, each with
its TF_CONFIG, in one process group: one worker failing ends all of them with its last error
line; Ctrl-C or SIGTERM to the launcher ends them too.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from edge_runtime.errors import ConfigError, RunDirError, UbpEdgeError, first_line
from trainer import rundir
from trainer.prepdir import MANIFEST, PrepDir, is_prep_dir

TF_CONFIG = "TF_CONFIG"
EpochCallback = Callable[[int, int, dict], None]


class Mode(StrEnum):
    """`ubp-edge train --distribute`: how the model is replicated."""

    MIRRORED = "mirrored"
    MULTI_WORKER = "multi-worker"


class WorkerError(UbpEdgeError):
    """A worker of ``--local-workers`` failed; the message is its last error line."""


# --------------------------------------------------------------------------- the cluster

# The task types that train (a parameter server or an evaluator has no part in this strategy).
TRAINING_JOBS = ("chief", "worker")


@dataclass(frozen=True)
class Cluster:
    """A multi-worker cluster as TF_CONFIG describes it, and this process's task in it.

    Attributes:
        jobs: addresses ("host:port") per job name, as TF_CONFIG's ``cluster``.
        task_type: this process's job ("chief" or "worker").
        task_index: its index within that job.
    """

    jobs: dict[str, list[str]]
    task_type: str
    task_index: int

    @classmethod
    def from_json(cls, text: str, where: str = TF_CONFIG) -> Cluster:
        """Parse and check a TF_CONFIG value.

        Raises:
            ConfigError: naming ``where``: not JSON, no ``cluster`` or ``task``, a task type
                that does not train (``ps``, ``evaluator``), or a task not in the cluster.
        """
        try:
            config = json.loads(text)
        except (ValueError, RecursionError) as e:
            raise ConfigError(f"{where}: not JSON ({first_line(e)})") from None
        cluster = config.get("cluster") if isinstance(config, dict) else None
        task = config.get("task") if isinstance(config, dict) else None
        if not isinstance(cluster, dict) or not isinstance(task, dict):
            raise ConfigError(f"{where}: expected {{\"cluster\": {{...}}, \"task\": {{\"type\": ..., "
                              f"\"index\": ...}}}}, got {text[:200]!r}")
        jobs = {}
        for name, addresses in cluster.items():
            if not isinstance(addresses, list) or not all(isinstance(a, str) for a in addresses):
                raise ConfigError(f"{where}: cluster.{name} must be a list of \"host:port\", "
                                  f"got {addresses!r}")
            jobs[str(name)] = list(addresses)
        kind, index = task.get("type"), task.get("index", 0)
        if kind not in TRAINING_JOBS:
            raise ConfigError(f"{where}: task type {kind!r}: `ubp-edge train --distribute multi-worker` "
                              f"runs on {' and '.join(TRAINING_JOBS)} tasks only")
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(jobs.get(kind, [])):
            raise ConfigError(f"{where}: task {kind} {index!r} is not in the cluster "
                              f"({len(jobs.get(kind, []))} {kind} addresses)")
        if len(jobs.get("chief", [])) > 1:
            raise ConfigError(f"{where}: {len(jobs['chief'])} chief addresses; a cluster has at most one")
        return cls(jobs, kind, index)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Cluster:
        """The cluster of this process's TF_CONFIG.

        Raises:
            ConfigError: TF_CONFIG unset or empty (naming how to set it), or as `from_json`.
        """
        text = (os.environ if environ is None else environ).get(TF_CONFIG, "").strip()
        if not text:
            raise ConfigError(f"--distribute {Mode.MULTI_WORKER}: {TF_CONFIG} is not set; a cluster "
                              f"manager (Kubernetes TFJob, Vertex AI, SageMaker) sets it on every worker, "
                              f"or try it on this machine with --local-workers N")
        return cls.from_json(text)

    @property
    def addresses(self) -> list[str]:
        """Every training task's address in worker order (the chief first)."""
        return [a for job in TRAINING_JOBS for a in self.jobs.get(job, [])]

    @property
    def workers(self) -> int:
        """Training processes in the cluster (chief included)."""
        return len(self.addresses)

    @property
    def index(self) -> int:
        """This task's place among the workers: 0 for the chief, as tf.distribute numbers them."""
        return self.task_index + (len(self.jobs.get("chief", [])) if self.task_type == "worker" else 0)

    @property
    def is_chief(self) -> bool:
        """Whether this task writes the run directory (worker 0: the chief, or the first worker
        of a cluster without one)."""
        return self.index == 0

    def tf_config(self) -> str:
        """This cluster and task as a TF_CONFIG value."""
        return json.dumps({"cluster": self.jobs, "task": {"type": self.task_type, "index": self.task_index}})


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct TCP ports free on ``host`` now (held open together while chosen, so
    they differ; another program may still take one before a worker binds it)."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def local_cluster(n: int, host: str = "127.0.0.1", ports: Sequence[int] | None = None) -> list[Cluster]:
    """The TF_CONFIG of each of ``n`` workers on ``host``: worker 0 is the chief.

    Args:
        n: workers, >= 1.
        host: the address they listen on.
        ports: one port per worker; default `free_ports`.

    Returns:
        One Cluster per worker, in worker order.
    """
    ports = list(ports) if ports is not None else free_ports(n, host)
    jobs = {"worker": [f"{host}:{p}" for p in ports[:n]]}
    return [Cluster(jobs, "worker", i) for i in range(n)]


# --------------------------------------------------------------------------- the strategy

def make_strategy(mode: Mode | str) -> Any:
    """The tf.distribute strategy of a mode. For ``multi-worker``, TF_CONFIG must be set and
    no TensorFlow operation may have run yet in this process (the collectives are configured
    when the strategy is made)."""
    import tensorflow as tf

    if Mode(mode) is Mode.MIRRORED:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.MultiWorkerMirroredStrategy()


# --------------------------------------------------------------------------- the data

def split_shards(prep: PrepDir, split: str) -> list[int]:
    """The shards holding sessions of ``split``, in order (what `PrepDir.dataset` divides)."""
    return [i for i, c in enumerate(prep.split_counts()) if c.get(split, 0)]


def check_shards(prep: PrepDir, workers: int) -> None:
    """Refuse a multi-worker run in which a worker would get no training shard.

    Raises:
        ConfigError: fewer shards hold training sessions than there are workers, with the
            ``--shards`` that gives each worker one.
    """
    have = len(split_shards(prep, "train"))
    if have < workers:
        train_share = 1 - prep.settings["validation"] - prep.settings["test"]
        need = math.ceil(workers / train_share - 1e-9)
        raise ConfigError(f"{prep.path / MANIFEST}: {have} shard file(s) hold training sessions for "
                          f"{workers} workers; prepare with --shards >= {need} (the training split is "
                          f"{train_share:.0%} of the sessions) so that every worker reads its own")


def worker_streams(strategy: Any, workers: int) -> Callable[[PrepDir, Any, dict[int, float]], Any]:
    """How each worker of a multi-worker strategy reads the shards (`trainer.train.train`'s
    ``streams``): its share, in per-replica batches, the same number of steps on every worker.

    Each worker's stream is `PrepDir.dataset` of its shards (``worker``: tf.distribute's
    input pipeline number and count) in batches of ``--batch-size`` / replicas, completed
    with empty batches to the longest share's count, repeated; the datasets are made with
    `strategy.distribute_datasets_from_function`, which neither re-batches nor re-shards them
    (handing Keras plain datasets would split each batch among all replicas and run only as
    many steps as one worker's batches). Keras needs the steps of an epoch of such streams.

    Args:
        strategy: the MultiWorkerMirroredStrategy.
        workers: workers in the cluster (input pipelines).

    Returns:
        (PrepDir, settled TrainConfig, class weights) -> trainer.train.Streams.
    """
    from trainer.train import VALIDATION_BATCH, Streams

    replicas = strategy.num_replicas_in_sync
    local = max(1, replicas // workers)

    def make(prep: PrepDir, config: Any, weights: dict[int, float]) -> Streams:
        if config.batch_size % replicas:
            raise ConfigError(f"--batch-size {config.batch_size}: the {replicas} replicas of the cluster "
                              f"take equal parts of a batch; give a multiple of {replicas}")
        train_batch, validation_batch = config.batch_size // replicas, max(1, VALIDATION_BATCH // replicas)
        steps = {"train": _steps(prep, "train", train_batch, workers, local, config.prefixes),
                 "validation": _steps(prep, "validation", validation_batch, workers, local)}

        def distributed(split: str, batch: int, **options):
            def dataset(context):
                share = prep.dataset(split, batch, worker=(context.input_pipeline_id,
                                                           context.num_input_pipelines), **options)
                return _completed(share, int(share.cardinality()), steps[split], prep.n_features,
                                  "class_weights" in options).repeat()
            return strategy.distribute_datasets_from_function(dataset)

        return Streams(prep.n_features,
                       train=lambda seed: distributed("train", train_batch, shuffle=True, seed=seed,
                                                      class_weights=weights, prefixes=config.prefixes),
                       validation=lambda: distributed("validation", validation_batch, shuffle=False),
                       train_steps=steps["train"] // local, validation_steps=steps["validation"] // local)
    return make


def _steps(prep: PrepDir, split: str, batch: int, workers: int, local: int,
           prefixes: str = "whole") -> int:
    """Batches every worker's stream of ``split`` holds: the longest share's count (the
    cardinality of its `PrepDir.dataset`), rounded up to a multiple of the local replicas."""
    counts = [int(prep.dataset(split, batch, shuffle=False, worker=(k, workers),
                               prefixes=prefixes).cardinality())
              for k in range(workers)]
    if min(counts) < 0:
        raise ValueError(f"PrepDir.dataset({split!r}) has no known number of batches ({counts}); "
                         f"multi-worker training needs it to give every worker the same steps")
    return -(-max(counts) // local) * local


def _completed(share: Any, real: int, steps: int, n_features: int, weighted: bool) -> Any:
    """A worker's share of ``real`` batches, completed to ``steps`` batches with empty ones
    (one time step, no session: no loss, gradient or metric) spread evenly among them, so
    that no part of an epoch is trained on fewer workers' shards than the rest: an
    all-reduce waits for every worker, and tf.distribute's own stand-ins for a worker that
    ran out have zero time steps, which the LSTM cannot run."""
    import tensorflow as tf

    empty = (tf.zeros([0, 1, n_features]), tf.zeros([0])) + ((tf.zeros([0]),) if weighted else ())
    fill = tf.data.Dataset.from_tensors(empty).repeat()
    extra = steps - real
    # Step i is empty when it passes a multiple of steps / extra: `extra` of them, evenly.
    choice = [int((i + 1) * extra // steps > i * extra // steps) for i in range(steps)]
    # The share itself continues with empty batches: exactly `steps` batches even were `real`
    # ever off, since a worker that stopped early would leave the others waiting.
    selector = tf.data.Dataset.from_tensor_slices(tf.constant(choice, tf.int64))
    return tf.data.Dataset.choose_from_datasets([share.concatenate(fill), fill], selector)


# --------------------------------------------------------------------------- entry point

def train_distributed(config: Any, distribute: Mode | str | None = None, local_workers: int | None = None,
                      source: Any = None, on_stage: Callable[[str], None] | None = None,
                      on_epoch: EpochCallback | None = None) -> dict | None:
    """`ubp-edge train --distribute MODE` / ``--local-workers N``: this process as one worker
    of ``MODE``, or the launcher of N local workers (multi-worker implied).

    Returns:
        The report where this process wrote the run directory; None on another worker.

    Raises:
        ConfigError: an unknown mode, ``--local-workers`` with ``mirrored``; as `train_worker`
            and `run_local_workers`.
        WorkerError: a local worker failed.
    """
    if distribute is not None:
        try:
            distribute = Mode(distribute)
        except ValueError:
            raise ConfigError(f"--distribute {distribute!r}: expected "
                              f"{' or '.join(m.value for m in Mode)}") from None
    if local_workers is not None:
        if distribute is Mode.MIRRORED:
            raise ConfigError(f"--local-workers {local_workers} starts {Mode.MULTI_WORKER} workers; "
                              f"leave out --distribute {Mode.MIRRORED}")
        return run_local_workers(config, local_workers, on_stage, on_epoch)
    return train_worker(config, distribute or Mode.MIRRORED, source, on_stage, on_epoch)


# --------------------------------------------------------------------------- one worker

def train_worker(config: Any, mode: Mode | str, source: Any = None,
                 on_stage: Callable[[str], None] | None = None, on_epoch: EpochCallback | None = None,
                 environ: Mapping[str, str] | None = None) -> dict | None:
    """Train as one process of a distributed run (`ubp-edge train --distribute MODE`).

    Args:
        config: the run's TrainConfig (trainer.train).
        mode: ``mirrored`` or ``multi-worker``.
        source: how to read a log (``mirrored`` only; multi-worker needs a PREP_DIR).
        on_stage, on_epoch: progress callbacks, as `trainer.train.train`.
        environ: where TF_CONFIG is read (default os.environ, which the strategy reads too).

    Returns:
        The report on the process that writes the run directory; None on another worker.

    Raises:
        ConfigError: TF_CONFIG unset or wrong; ``--data`` not a PREP_DIR for multi-worker;
            fewer training shards than workers; as `trainer.train.train`.
        RunDirError: ``--resume`` on a worker that cannot see the chief's checkpoint.
        DataError, OutputError: as `trainer.train.train`.
    """
    from trainer.train import train

    mode = Mode(mode)
    if mode is Mode.MIRRORED:
        return train(config, source, on_stage, on_epoch, strategy=make_strategy(mode))
    cluster = Cluster.from_env(environ)
    if not is_prep_dir(config.data):
        raise ConfigError(f"--distribute {mode}: --data {config.data} is not a prepared folder; workers "
                          f"split a PREP_DIR's shards: run `ubp-edge prepare --data {config.data} "
                          f"--out PREP_DIR --shards {2 * cluster.workers}` first")
    check_shards(PrepDir.open(config.data), cluster.workers)
    # Made before any TensorFlow operation runs: the strategy configures the collectives.
    strategy = make_strategy(mode)
    streams = worker_streams(strategy, cluster.workers)
    if cluster.is_chief:
        return train(config, None, on_stage, on_epoch, strategy=strategy, streams=streams)
    with tempfile.TemporaryDirectory(prefix=f"ubp-edge-worker{cluster.index}-") as tmp:
        out = Path(tmp) / "run"
        if config.resume:
            copy_checkpoint(config.out, out)
        train(replace(config, out=str(out), overwrite=False), None, on_stage, on_epoch, strategy=strategy,
              streams=streams)
    return None


def copy_checkpoint(chief_out: str | os.PathLike, out: Path) -> None:
    """Give a non-chief worker the chief's last checkpoint, as an interrupted run of its own
    at ``out`` (config.json naming ``out``), so that ``--resume`` restores the same epoch.

    Raises:
        RunDirError: the chief's staging folder has no complete checkpoint here (not shared
            storage, or killed before its first epoch ended).
    """
    from trainer.train import CHECKPOINT

    chief = rundir.stage_dir(chief_out)
    if not (chief / CHECKPOINT / "state.json").is_file() or not (chief / rundir.CONFIG).is_file():
        raise RunDirError(f"--resume: no complete checkpoint of the chief in {chief} on this worker; "
                          f"--out must be on storage every worker sees (killed before the first epoch "
                          f"ended: start again without --resume)")
    stage = rundir.stage_dir(out)
    stage.mkdir(parents=True)
    shutil.copytree(chief / CHECKPOINT, stage / CHECKPOINT)
    config = json.loads((chief / rundir.CONFIG).read_bytes())
    (stage / rundir.CONFIG).write_text(json.dumps({**config, "out": str(out)}), encoding="utf-8")


# --------------------------------------------------------------------------- local workers

# How long workers get to end after SIGTERM before SIGKILL.
STOP_GRACE_S = 5.0
POLL_S = 0.2
# Progress events the chief prints on stdout for the launcher, one JSON object a line.
EVENT = "ubp_edge_event"
_ERROR_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception|Exit|Interrupt)\b:?")


def last_error_line(text: str, limit: int = 300) -> str:
    """What a worker's stderr says went wrong, as one line: its ``error:`` line (the CLI's
    one-line errors), else the last exception line of a traceback, else its last line.

    Args:
        text: the worker's stderr.
        limit: the most characters kept.
    """
    lines = [" ".join(line.split()) for line in text.splitlines()]
    lines = [line for line in lines if line]
    found = next((line[len("error: "):] for line in reversed(lines) if line.startswith("error: ")), None)
    if found is None:
        found = next((line for line in reversed(lines) if _ERROR_LINE.match(line)), None)
    if found is None:
        found = lines[-1] if lines else "no output"
    return found if len(found) <= limit else found[:limit] + "..."


def _exit_reason(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class _Terminated(KeyboardInterrupt):
    """SIGTERM to the launcher: stop the workers as Ctrl-C does."""


def _die_with_parent(parent: int) -> Callable[[], None]:
    """A child's pre-exec hook (Linux): SIGKILL when the launcher dies, even by SIGKILL."""
    def hook() -> None:
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            return
        if os.getppid() != parent:  # the launcher died before the hook ran
            os._exit(1)
    return hook


@dataclass
class _Worker:
    index: int
    process: subprocess.Popen
    log: Path
    events: Path


def run_local_workers(config: Any, n: int, on_stage: Callable[[str], None] | None = None,
                      on_epoch: EpochCallback | None = None, host: str = "127.0.0.1",
                      command: Sequence[str] | None = None) -> dict:
    """Train with ``n`` worker processes on this machine (``--local-workers N``).

    Each worker runs `worker_main` with its TF_CONFIG (worker 0 the chief) and TMPDIR in a
    folder of the launcher's; all are in one process group, which is ended when one worker
    fails, when the launcher gets Ctrl-C or SIGTERM, or (Linux) when the launcher dies.

    Args:
        config: the run's TrainConfig; ``config.data`` a PREP_DIR with >= n training shards.
        n: workers, >= 1.
        on_stage, on_epoch: progress callbacks, fed from the chief's events.
        host: the address the workers listen on.
        command: the worker command before its config file (default: this Python running
            ``-m trainer.distribute``); tests put a failing one here.

    Returns:
        The report the chief wrote (report.json).

    Raises:
        ConfigError: n < 1, ``--data`` not a PREP_DIR, fewer training shards than workers.
        WorkerError: a worker failed: its number, how it ended and its last error line (its
            whole log is kept and named); the other workers are stopped.
        KeyboardInterrupt: Ctrl-C or SIGTERM; the workers are stopped first.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"--local-workers must be a whole number >= 1, got {n!r}")
    if not is_prep_dir(config.data):
        raise ConfigError(f"--local-workers: --data {config.data} is not a prepared folder; run "
                          f"`ubp-edge prepare --data {config.data} --out PREP_DIR --shards {2 * n}` first")
    check_shards(PrepDir.open(config.data), n)
    stage = on_stage or (lambda _msg: None)
    folder = Path(tempfile.mkdtemp(prefix="ubp-edge-workers-"))
    (folder / "tmp").mkdir()
    config_file = folder / "config.json"
    config_file.write_text(json.dumps(config.to_dict()), encoding="utf-8")
    command = list(command) if command is not None else [sys.executable, "-m", "trainer.distribute"]
    # The workers import this very package (an editable install, a checkout) first.
    root = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "TMPDIR": str(folder / "tmp"), "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    workers: list[_Worker] = []
    failed: str | None = None
    previous = _on_sigterm()
    clusters = local_cluster(n, host)
    try:
        for cluster in clusters:
            log, events = folder / f"worker-{cluster.index}.log", folder / f"worker-{cluster.index}.out"
            with open(log, "wb") as err, open(events, "wb") as out:
                process = subprocess.Popen(
                    [*command, str(config_file)], stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                    env={**env, TF_CONFIG: cluster.tf_config()},
                    process_group=workers[0].process.pid if workers else 0,
                    preexec_fn=_die_with_parent(os.getpid()) if sys.platform == "linux" else None)
            workers.append(_Worker(cluster.index, process, log, events))
        stage(f"training on {n} local workers ({', '.join(clusters[0].addresses)})")
        failed = _wait(workers, on_stage, on_epoch)
    finally:
        _stop(workers)
        _restore_sigterm(previous)
        if failed is None:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            shutil.rmtree(folder / "tmp", ignore_errors=True)
    if failed is not None:
        raise WorkerError(failed + _resume_hint(config))
    return json.loads((Path(config.out) / rundir.REPORT_JSON).read_bytes())


def _wait(workers: list[_Worker], on_stage, on_epoch) -> str | None:
    """Relay the chief's progress until every worker has ended; the line of the first to fail
    (None when all ended well)."""
    offset = 0
    while True:
        offset = _relay(workers[0].events, offset, on_stage, on_epoch)
        codes = [w.process.poll() for w in workers]
        for w, code in zip(workers, codes, strict=True):
            if code not in (None, 0):
                line = last_error_line(w.log.read_text(encoding="utf-8", errors="replace"))
                return (f"worker {w.index} of {len(workers)} failed ({_exit_reason(code)}): {line} "
                        f"(its log: {w.log})")
        if all(code == 0 for code in codes):
            _relay(workers[0].events, offset, on_stage, on_epoch)
            return None
        time.sleep(POLL_S)


def _relay(path: Path, offset: int, on_stage, on_epoch) -> int:
    """Pass the chief's new whole event lines to the callbacks; the offset read up to."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except OSError:
        return offset
    end = data.rfind(b"\n") + 1
    for raw in data[:end].splitlines():
        try:
            event = json.loads(raw).get(EVENT)
        except (ValueError, AttributeError):
            continue
        if not isinstance(event, dict):
            continue
        if "stage" in event and on_stage is not None:
            on_stage(str(event["stage"]))
        elif "epoch" in event and on_epoch is not None:
            on_epoch(int(event["epoch"]), int(event["epochs"]), dict(event.get("logs") or {}))
    return offset + end


def _stop(workers: list[_Worker]) -> None:
    """End every worker still running: SIGTERM to the group, SIGKILL after STOP_GRACE_S."""
    # The group is signalled only while one of its workers runs (and so the group exists):
    # once all are reaped, its number could be another program's.
    if not workers or all(w.process.poll() is not None for w in workers):
        return
    group = workers[0].process.pid
    _killpg(group, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    while time.monotonic() < deadline and any(w.process.poll() is None for w in workers):
        time.sleep(0.05)
    if any(w.process.poll() is None for w in workers):
        _killpg(group, signal.SIGKILL)  # stuck in a collective that waits for a dead peer
    for w in workers:
        w.process.wait()


def _killpg(group: int, sig: int) -> None:
    try:
        os.killpg(group, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _on_sigterm():
    """Make SIGTERM interrupt the launcher like Ctrl-C (main thread only); the old handler."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise _Terminated()
    return signal.signal(signal.SIGTERM, handler)


def _restore_sigterm(previous) -> None:
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


def _resume_hint(config: Any) -> str:
    from trainer.train import CHECKPOINT

    stage = rundir.stage_dir(config.out)
    if (stage / CHECKPOINT / "state.json").is_file():
        return f"; the last complete epoch is kept in {stage}: run the same command with --resume to continue"
    return ""


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def worker_main(argv: Sequence[str] | None = None) -> int:
    """One worker of `run_local_workers`: ``python -m trainer.distribute CONFIG_JSON``, with
    TF_CONFIG set. The chief prints progress events on stdout (one JSON object a line); an
    error is one ``error: ...`` line on stderr and exit code 1.

    Returns:
        The exit code: 0, 1 for an error a person can act on, 130 when interrupted.
    """
    from trainer.train import TrainConfig

    argv = list(sys.argv[1:] if argv is None else argv)
    # SIGTERM from the launcher: end as Ctrl-C does, so that the chief keeps its staging
    # folder for --resume and a worker's temporary folder is removed.
    signal.signal(signal.SIGTERM, _interrupt)

    def emit(event: dict) -> None:
        print(json.dumps({EVENT: event}), flush=True)

    try:
        if len(argv) != 1:
            raise ConfigError("usage: python -m trainer.distribute CONFIG_JSON (with TF_CONFIG set)")
        config = TrainConfig.from_dict(json.loads(Path(argv[0]).read_text(encoding="utf-8")))
        train_worker(config, Mode.MULTI_WORKER,
                     on_stage=lambda message: emit({"stage": message}),
                     on_epoch=lambda epoch, epochs, logs: emit(
                         {"epoch": epoch, "epochs": epochs,
                          "logs": {k: float(v) for k, v in (logs or {}).items()}}))
    except UbpEdgeError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
