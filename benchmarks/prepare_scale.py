"""Scale of `ubp-edge prepare`: events per second and peak memory on synthetic logs of millions of events.

    python -m benchmarks.prepare_scale --workdir DIR [--sizes 1M,4M,16M] [--engines local,spark]
        [--json out.json] [--spark-master local[2]] [--cpus 0] [--days 9] [--seed 0]

Issue 11's figures: `prepare --engine local` must keep its peak memory flat as the log grows
(peak RSS at 16 M events no more than 1.5x the peak at 1 M) and prepare at least 300,000
events per second on one core; `--engine spark` is measured on the same logs.

What it does, once per size: ``ubp-edge data generate DIR/events-<size>.csv --users N`` (the
seeded synthetic log, streamed; about 117.7 events per user over 9 days), with a sidecar
``events-<size>.json`` (users, days, seed, events, bytes, the generator's speed and peak RSS);
a log whose sidecar matches is reused. Then, per size and engine, it runs

    ubp-edge prepare --data LOG --format canonical --out DIR/prep-<size>-<engine> --engine E --overwrite

as a child process (its output in ``DIR/logs/``) and reports events, wall seconds, events per
wall second, CPU seconds (user + system over the process tree: the larger of wait4's figure,
which counts the command and the descendants it waited for, and the tree's CPU time at the
last sample, which also counts a JVM nobody waits for) and events per CPU second, and:

- ``peak_rss_mib``: the command's ``ru_maxrss`` from ``wait4``, its VmHWM (high-water mark).
  Linux reports the largest of the process and of the descendants it waited for, never a sum,
  and counts the image the process was forked from before exec: hence a small launcher (see
  LAUNCHER) between this script and the command; its VmHWM, the floor under this figure, is
  ``peak_rss_floor_mib``.
- ``tree_peak_rss_mib`` / ``tree_peak_pss_mib``: the peak, over samples every 0.2 s, of the sum
  of VmRSS (and of PSS, which splits shared pages among their sharers) over the command and
  all its descendants. For Spark this is the figure: the JVM is a grandchild, and the Python
  workers fork from one daemon, so the RSS sum counts their shared pages once per process
  (an upper bound) while the PSS sum does not. Sampling misses spikes shorter than 0.2 s;
  the JSON keeps each run's samples (``rss_timeline_mib``) to show which stage holds the peak.

It ends with the machine (CPU model from /proc/cpuinfo, cores) and, per engine, the ratio of
the peak RSS at the largest size to the peak at the smallest. The logs stay in DIR (never
inside the repository) for the next run; the page cache is not dropped, so a log is read
warm. ``--cpus 0`` pins the command and its descendants to CPU 0, for the one-core figure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edge_runtime.errors import ConfigError, UbpEdgeError

REPO = Path(__file__).resolve().parents[1]
# Measured on the default generator (9 days, seed 0): 1,008,439 events of 8,520 users,
# 4,011,286 of 34,080, 16,092,269 of 135,939 (the 16M log). Per user-day, as events grow with
# the days a user is active.
EVENTS_PER_USER_DAY = 117.7 / 9
SAMPLE_INTERVAL_S = 0.2
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
ENGINES = ("local", "spark")
_SUFFIX = {"": 1, "k": 1_000, "m": 1_000_000, "g": 1_000_000_000}


# --------------------------------------------------------------------------- sizes and logs

def parse_sizes(text: str) -> list[tuple[str, int]]:
    """``"1M,4M,16M"`` -> ``[("1M", 1_000_000), ...]``: labels as given, in events.

    Raises:
        ConfigError: a size is not a positive number with an optional k/M/G suffix, or a
            size is given twice.
    """
    sizes: list[tuple[str, int]] = []
    for raw in text.split(","):
        label = raw.strip()
        match = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmMgG]?)", label)
        events = round(float(match.group(1)) * _SUFFIX[match.group(2).lower()]) if match else 0
        if events < 1:
            raise ConfigError(f"--sizes: {label!r} is not a number of events such as 500k, 1M, 1.5M")
        if any(events == e for _, e in sizes):
            raise ConfigError(f"--sizes: {label!r} is given twice")
        sizes.append((label, events))
    return sizes


def users_for(events: int, days: int = 9) -> int:
    """The number of synthetic users whose log holds about ``events`` events over ``days``."""
    return max(1, round(events / (EVENTS_PER_USER_DAY * days)))


def check_workdir(path: Path, repo: Path = REPO) -> Path:
    """``path`` made absolute; logs of gigabytes must not land in the repository.

    Raises:
        ConfigError: ``path`` is the repository or inside it.
    """
    resolved = path.expanduser().resolve()
    if resolved == repo or repo in resolved.parents:
        raise ConfigError(f"--workdir {path}: inside the repository {repo}; pick a folder outside it")
    return resolved


def ensure_log(workdir: Path, label: str, events: int, days: int, seed: int,
               ubp_edge: Sequence[str], say: Callable[[str], None] = print) -> dict:
    """The synthetic log of about ``events`` events in ``workdir``, generated unless a
    matching one is there.

    It is generated by a measured ``ubp-edge data generate`` child (streamed, see
    `trainer.synthetic.write_synthetic_log`), so the generator's speed and peak memory are
    figures too.

    Args:
        workdir: the benchmark's folder (``logs/`` in it receives the child's output).
        label: the size as the user wrote it; names the files.
        events, days, seed: the log asked for (users from `users_for`).
        ubp_edge: the `ubp-edge` command.
        say: where progress lines go.

    Returns:
        The sidecar's contents: ``path``, ``users``, ``days``, ``seed``, ``events``,
        ``bytes``, ``generate_seconds``, ``generate_events_per_second``,
        ``generate_peak_rss_mib``, and ``reused``.

    Raises:
        RuntimeError: the generation failed (its last line of error output is in the message).
    """
    from trainer.files import write_json_atomic

    path = workdir / f"events-{label}.csv"
    sidecar = workdir / f"events-{label}.json"
    users = users_for(events, days)
    try:
        info = json.loads(sidecar.read_text(encoding="utf-8"))
        if ((info["users"], info["days"], info["seed"]) == (users, days, seed)
                and path.stat().st_size == info["bytes"]):
            return dict(info, path=str(path), reused=True)
    except (OSError, ValueError, KeyError, TypeError):
        pass  # absent or stale: generate
    cmd = [*ubp_edge, "data", "generate", str(path), "--users", str(users), "--days", str(days),
           "--seed", str(seed)]
    say(f"running {' '.join(cmd)}")
    stem = workdir / "logs" / f"generate-{label}"
    measured = run_measured(cmd, stem.with_suffix(".stdout"), stem.with_suffix(".stderr"))
    wrote = re.search(r"wrote ([\d,]+) events", stem.with_suffix(".stdout").read_text(encoding="utf-8"))
    if measured.returncode != 0 or not wrote:
        raise RuntimeError(f"generating {path} failed: {last_line(stem.with_suffix('.stderr'))}")
    written = int(wrote.group(1).replace(",", ""))
    info = {"path": str(path), "users": users, "days": days, "seed": seed, "events": written,
            "bytes": path.stat().st_size, "generate_seconds": round(measured.wall_s, 2),
            "generate_events_per_second": round(written / measured.wall_s),
            "generate_peak_rss_mib": mib(measured.maxrss_kib)}
    write_json_atomic(sidecar, info)
    return dict(info, reused=False)


# --------------------------------------------------------------------------- measuring a child

def parse_stat(stat: str) -> tuple[int, int]:
    """(parent pid, CPU clock ticks) from the text of /proc/PID/stat; the ticks are user +
    system time of the process and of the children it waited for. The command name may hold
    spaces and parentheses, so the fields are counted after its last ')'."""
    fields = stat.rpartition(")")[2].split()
    return int(fields[1]), sum(int(f) for f in fields[11:15])  # utime stime cutime cstime


def parse_kib(text: str, key: str) -> int | None:
    """The value of ``key:`` in a /proc status or smaps_rollup text, in KiB, or None."""
    match = re.search(rf"^{re.escape(key)}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) if match else None


def process_table(proc: Path = Path("/proc")) -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, CPU clock ticks) of every living process."""
    table = {}
    for entry in proc.iterdir():
        if entry.name.isdigit():
            try:
                table[int(entry.name)] = parse_stat((entry / "stat").read_text())
            except (OSError, ValueError, IndexError):
                continue  # gone meanwhile
    return table


def descendants(pid: int, proc: Path = Path("/proc"),
                table: dict[int, tuple[int, int]] | None = None) -> list[int]:
    """``pid`` (first) and every living process below it."""
    children: dict[int, list[int]] = {}
    for p, (ppid, _) in (process_table(proc) if table is None else table).items():
        children.setdefault(ppid, []).append(p)
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo += children.get(p, [])
    return found


@dataclass(frozen=True)
class TreeSample:
    """One look at a process tree."""
    rss_kib: int          # sum of VmRSS
    pss_kib: int | None   # sum of PSS; None when a process holding memory has no readable
    #                       smaps_rollup (another user's, an old kernel)
    cpu_s: float          # sum of CPU time so far, each process's own and its waited-for children's


def sample_tree(pid: int, proc: Path = Path("/proc"), skip_root: bool = False) -> TreeSample:
    """Memory and CPU time of ``pid`` and its descendants (only the descendants with
    ``skip_root``). A process without memory (a zombie not yet waited for) adds no memory."""
    table = process_table(proc)
    rss, pss, pss_known, ticks = 0, 0, True, 0
    for p in descendants(pid, proc, table)[1 if skip_root else 0:]:
        ticks += table.get(p, (0, 0))[1]
        try:
            rollup = (proc / str(p) / "smaps_rollup").read_text()
        except OSError:
            rollup = ""
        rss_p = parse_kib(rollup, "Rss")
        if rss_p is not None:
            rss += rss_p
            pss += parse_kib(rollup, "Pss") or 0
            continue
        try:
            rss_p = parse_kib((proc / str(p) / "status").read_text(), "VmRSS")
        except OSError:
            continue  # exited meanwhile
        if rss_p:
            rss += rss_p
            pss_known = False
    return TreeSample(rss, pss if pss_known else None, ticks / CLOCK_TICKS)


# Runs in a fresh `python -I -S` (a few MB, nothing imported but the standard library) between
# this script and the measured command: Linux counts in a child's ru_maxrss the memory of the
# image it was forked from before exec (with vfork, that image's whole high-water mark), so
# spawned straight from this script, whose numpy and generator state weigh far more, every
# figure would be floored at this script's peak. The launcher forks, execs the command, waits
# for it, and writes what wait4 said (and its own VmHWM, the floor under ru_maxrss) to a file.
LAUNCHER = r"""
import json, os, sys, time
result, cpus, cmd = sys.argv[1], sys.argv[2], sys.argv[3:]
if cpus:
    os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})
with open("/proc/self/status") as f:
    floor = next((int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:")), None)
started = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(cmd[0], cmd)
    except OSError as e:
        sys.stderr.write(f"{cmd[0]}: {e.strerror}\n")
    os._exit(127)
_, status, ru = os.wait4(pid, 0)
wall = time.perf_counter() - started
with open(result, "w") as f:
    json.dump({"status": status, "wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime,
               "maxrss_kib": ru.ru_maxrss, "floor_kib": floor}, f)
"""


@dataclass
class Measured:
    """What `run_measured` saw of one command."""
    returncode: int         # negative: killed by that signal
    wall_s: float
    cpu_s: float            # user + system of the command and the descendants it waited for
    maxrss_kib: int         # wait4's ru_maxrss: the command's VmHWM (or a waited-for descendant's)
    floor_kib: int | None   # the launcher's VmHWM at the fork: ru_maxrss cannot be below it
    tree_peak_rss_kib: int | None  # peak over samples of the sum of VmRSS over the command's
    #                                process tree; None when it ended before the first sample
    tree_peak_pss_kib: int | None  # the same for PSS; None where no sample could read it
    samples: int
    tree_cpu_s: float | None = None  # the tree's CPU time at its last sample: counts what
    #                                  cpu_s misses (a JVM its parent never waits for)
    timeline: list[tuple[float, int]] = field(default_factory=list)  # (seconds, tree RSS KiB)


def run_measured(cmd: Sequence[str], stdout: Path, stderr: Path, *, cpus: set[int] | None = None,
                 interval: float = SAMPLE_INTERVAL_S) -> Measured:
    """Run ``cmd`` through the launcher, sampling its process tree's memory every ``interval``.

    Args:
        cmd: the command line.
        stdout, stderr: files that receive the command's output.
        cpus: pin the command (and so its descendants) to these CPUs.
        interval: seconds between samples of the tree.

    Returns:
        The exit code, wall and CPU seconds, ru_maxrss, the sampled tree peaks and the samples
        of the tree's RSS over time (which stage holds the peak).

    Raises:
        RuntimeError: the launcher itself failed (the command could not be started).
    """
    result = stdout.with_name(stdout.name + ".rusage.json")
    result.unlink(missing_ok=True)
    argv = [sys.executable, "-I", "-S", "-c", LAUNCHER, str(result),
            ",".join(map(str, sorted(cpus or ()))), *cmd]
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        started = time.perf_counter()
        launcher = subprocess.Popen(argv, stdout=out, stderr=err)
        # A pidfd wakes the loop the moment the launcher ends.
        try:
            pidfd = os.pidfd_open(launcher.pid)
        except (AttributeError, OSError):
            pidfd = None
        peak_rss: int | None = None
        peak_pss: int | None = None
        tree_cpu: float | None = None
        samples = 0
        timeline: list[tuple[float, int]] = []
        try:
            while launcher.poll() is None:
                sample = sample_tree(launcher.pid, skip_root=True)
                if sample.rss_kib:
                    rss, pss = sample.rss_kib, sample.pss_kib
                    peak_rss = rss if peak_rss is None else max(peak_rss, rss)
                    if pss is not None:
                        peak_pss = pss if peak_pss is None else max(peak_pss, pss)
                    # Processes that end unwaited-for take their CPU time along: keep the most seen.
                    tree_cpu = sample.cpu_s if tree_cpu is None else max(tree_cpu, sample.cpu_s)
                    samples += 1
                    timeline.append((round(time.perf_counter() - started, 2), rss))
                if pidfd is None:
                    time.sleep(interval)
                else:
                    select.select([pidfd], [], [], interval)
        except BaseException:
            for pid in reversed(descendants(launcher.pid)):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            launcher.wait()
            raise
        finally:
            if pidfd is not None:
                os.close(pidfd)
    try:
        r = json.loads(result.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise RuntimeError(f"the launcher of {cmd[0]} failed (exit code {launcher.returncode}); "
                           f"see {stderr}") from None
    finally:
        result.unlink(missing_ok=True)
    return Measured(returncode=os.waitstatus_to_exitcode(r["status"]), wall_s=r["wall_s"],
                    cpu_s=r["cpu_s"], maxrss_kib=r["maxrss_kib"], floor_kib=r["floor_kib"],
                    tree_peak_rss_kib=peak_rss, tree_peak_pss_kib=peak_pss, samples=samples,
                    tree_cpu_s=tree_cpu, timeline=timeline)


# --------------------------------------------------------------------------- one run, all runs

def ubp_edge_command() -> list[str]:
    """The `ubp-edge` console script of this interpreter's environment."""
    beside = Path(sys.executable).with_name("ubp-edge")
    found = str(beside) if beside.exists() else shutil.which("ubp-edge")
    return [found] if found else [sys.executable, "-c", "from ubp_edge.cli import main; main()"]


def prepare_command(log: Path, out: Path, engine: str, spark_master: str | None = None,
                    ubp_edge: Sequence[str] = ("ubp-edge",)) -> list[str]:
    """The `ubp-edge prepare` command line of one run."""
    cmd = [*ubp_edge, "prepare", "--data", str(log), "--format", "canonical", "--out", str(out),
           "--engine", engine, "--overwrite"]
    if engine == "spark" and spark_master:
        cmd += ["--spark-master", spark_master]
    return cmd


def last_line(path: Path) -> str:
    """The last line with words of a text file (a failed child's one-line error), without the
    box a usage error is drawn in."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    lines = (ln.strip().strip("│┃|").strip() for ln in reversed(text.splitlines()))
    return next((ln for ln in lines if re.search(r"\w", ln)), "")


def exit_reason(returncode: int) -> str:
    """``exit code 3`` or ``killed by SIGKILL``."""
    if returncode >= 0:
        return f"exit code {returncode}"
    try:
        return f"killed by {signal.Signals(-returncode).name}"
    except ValueError:
        return f"killed by signal {-returncode}"


def mib(kib: int | None) -> float | None:
    return None if kib is None else round(kib / 1024, 1)


def run_row(size: str, engine: str, log: dict, cmd: list[str], measured: Measured,
            manifest: dict | None, error: str) -> dict:
    """One run's row of the report (plain data: the table and the JSON are made from it)."""
    events = log["events"]
    counts = (manifest or {}).get("counts", {})
    ok = measured.returncode == 0
    # wait4 counts the command and what it waited for; the samples also see the rest of the
    # tree (Spark's JVM and its Python workers) but miss the last interval: take the larger.
    cpu = max(measured.cpu_s, measured.tree_cpu_s or 0.0)
    return {
        "size": size, "engine": engine, "events": events, "log_bytes": log["bytes"],
        "sessions_scorable": counts.get("sessions_scorable"),
        "events_in_manifest": counts.get("events"),
        "ok": ok, "error": None if ok else (error or exit_reason(measured.returncode)),
        "wall_s": round(measured.wall_s, 2), "cpu_s": round(cpu, 2),
        "cpu_s_waited": round(measured.cpu_s, 2),
        "cpu_s_tree_sampled": None if measured.tree_cpu_s is None else round(measured.tree_cpu_s, 2),
        "events_per_s": round(events / measured.wall_s) if ok else None,
        "events_per_cpu_s": round(events / cpu) if ok and cpu > 0 else None,
        "peak_rss_mib": mib(measured.maxrss_kib), "peak_rss_floor_mib": mib(measured.floor_kib),
        "tree_peak_rss_mib": mib(measured.tree_peak_rss_kib),
        "tree_peak_pss_mib": mib(measured.tree_peak_pss_kib),
        "samples": measured.samples, "command": " ".join(cmd),
        "rss_timeline_mib": [[t, mib(k)] for t, k in measured.timeline],
    }


def memory_ratios(rows: list[dict]) -> list[dict]:
    """Per engine, peak memory at its largest successful size over its smallest.

    ``peak_rss`` uses ru_maxrss (the figure for the local engine, one process); ``tree_peak_rss``
    the sampled tree sum (the figure for Spark). Engines with fewer than two successful sizes
    have no ratio.
    """
    ratios = []
    for engine in dict.fromkeys(r["engine"] for r in rows):
        ok = sorted((r for r in rows if r["engine"] == engine and r["ok"]), key=lambda r: r["events"])
        if len(ok) < 2:
            continue
        small, large = ok[0], ok[-1]
        ratio = {"engine": engine, "of": f"{large['size']} / {small['size']}"}
        for key in ("peak_rss_mib", "tree_peak_rss_mib"):
            a, b = large[key], small[key]
            ratio[key.removesuffix("_mib")] = round(a / b, 2) if a and b else None
        ratios.append(ratio)
    return ratios


def render(rows: list[dict], logs: list[dict], ratios: list[dict], machine: dict) -> None:
    """Print the runs as a Rich table, then the logs' generation, the ratios and the machine."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    def fmt(v: object, spec: str = ",") -> str:
        return "-" if v is None else format(v, spec)

    console = Console()
    if not console.is_terminal:  # a file or a pipe gets the whole table, not Rich's 80 columns
        console = Console(width=max(console.width, 160))
    table = Table(title="ubp-edge prepare at scale")
    for head in ("size", "engine", "events", "wall s", "events/s", "CPU s", "events/CPU s",
                 "peak RSS MiB\n(ru_maxrss)", "tree RSS MiB\n(sampled sum)", "tree PSS MiB\n(sampled sum)",
                 "status"):
        table.add_column(head, justify="left" if head in ("size", "engine", "status") else "right")
    for r in rows:
        table.add_row(r["size"], r["engine"], fmt(r["events"]), fmt(r["wall_s"], ",.1f"),
                      fmt(r["events_per_s"]), fmt(r["cpu_s"], ",.1f"), fmt(r["events_per_cpu_s"]),
                      fmt(r["peak_rss_mib"], ",.0f"), fmt(r["tree_peak_rss_mib"], ",.0f"),
                      fmt(r["tree_peak_pss_mib"], ",.0f"),
                      "ok" if r["ok"] else f"[red]{escape(r['error'])}[/red]")
    console.print(table)
    for log in logs:
        how = "reused" if log["reused"] else "generated"
        console.print(f"log {Path(log['path']).name}: {log['events']:,} events of {log['users']:,} users, "
                      f"{log['bytes'] / 1e6:,.0f} MB, {how}; generator "
                      f"{log['generate_events_per_second']:,} events/s, peak RSS "
                      f"{fmt(log.get('generate_peak_rss_mib'), ',.0f')} MiB")
    for ratio in ratios:
        console.print(f"{ratio['engine']}: peak RSS {ratio['of']} = {fmt(ratio['peak_rss'], '.2f')} "
                      f"(ru_maxrss), {fmt(ratio['tree_peak_rss'], '.2f')} (sampled tree sum)")
    console.print(f"machine: {machine['cpu']}, {machine['cores']} cores, {machine['system']}, "
                  f"Python {machine['python']}")


def run_all(args: argparse.Namespace) -> dict:
    """Generate (or reuse) the logs and run every size x engine; return the report (also
    written to ``args.json``, if given, after each run)."""
    from benchmarks.suite import machine
    from trainer.files import write_json_atomic

    workdir = check_workdir(Path(args.workdir))
    sizes = parse_sizes(args.sizes)
    engines = [e.strip() for e in args.engines.split(",")]
    unknown = [e for e in engines if e not in ENGINES]
    if unknown:
        raise ConfigError(f"--engines: {', '.join(unknown)} not among {', '.join(ENGINES)}")
    try:
        cpus = {int(c) for c in args.cpus.split(",")} if args.cpus else None
    except ValueError:
        raise ConfigError(f"--cpus {args.cpus}: CPU numbers separated by commas, e.g. 0 or 0,1") from None
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    ubp = ubp_edge_command()

    logs, rows = [], []
    for label, events in sizes:
        log = ensure_log(workdir, label, events, args.days, args.seed, ubp)
        logs.append(log)
        for engine in engines:
            out = workdir / f"prep-{label}-{engine}"
            cmd = prepare_command(Path(log["path"]), out, engine, args.spark_master, ubp)
            print(f"running {' '.join(cmd)}", flush=True)
            stem = workdir / "logs" / f"prep-{label}-{engine}"
            measured = run_measured(cmd, stem.with_suffix(".stdout"), stem.with_suffix(".stderr"),
                                    cpus=cpus)
            try:
                manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                manifest = None
            rows.append(run_row(label, engine, log, cmd, measured, manifest,
                                last_line(stem.with_suffix(".stderr"))))
            report = {"machine": machine(), "cpus": sorted(cpus) if cpus else None,
                      "sample_interval_s": SAMPLE_INTERVAL_S, "logs": logs, "runs": rows,
                      "ratios": memory_ratios(rows)}
            if args.json:  # after every run: a long benchmark stopped midway keeps what it measured
                write_json_atomic(args.json, report)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True,
                        help="Folder for the logs and outputs, outside the repository.")
    parser.add_argument("--sizes", default="1M,4M,16M", help="Log sizes in events (default 1M,4M,16M).")
    parser.add_argument("--engines", default="local,spark", help="Comma-separated (default local,spark).")
    parser.add_argument("--json", type=Path, help="Also write the report here.")
    parser.add_argument("--spark-master", help="Passed to prepare for the spark engine.")
    parser.add_argument("--cpus", help="Pin the child to these CPUs, e.g. 0 (comma-separated).")
    parser.add_argument("--days", type=int, default=9, help="Days of the synthetic logs (default 9).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the synthetic logs (default 0).")
    args = parser.parse_args(argv)
    try:
        report = run_all(args)
    except (UbpEdgeError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    render(report["runs"], report["logs"], report["ratios"], report["machine"])
    return 0 if all(r["ok"] for r in report["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
