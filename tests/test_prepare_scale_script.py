"""Smoke tests of benchmarks/prepare_scale.py's pure helpers: sizes, users, the workdir guard,
the command line, /proc parsing, report rows and ratios. The script itself (logs of millions
of events, timed child processes) is a benchmark, run by hand, not here."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.prepare_scale import (
    CLOCK_TICKS,
    REPO,
    Measured,
    TreeSample,
    check_workdir,
    descendants,
    last_line,
    memory_ratios,
    parse_kib,
    parse_sizes,
    parse_stat,
    prepare_command,
    run_row,
    sample_tree,
    users_for,
)
from edge_runtime.errors import ConfigError


def test_sizes_read_as_events_with_their_labels():
    assert parse_sizes("1M,4M,16M") == [("1M", 1_000_000), ("4M", 4_000_000), ("16M", 16_000_000)]
    assert parse_sizes(" 500k, 1.5M ,2000") == [("500k", 500_000), ("1.5M", 1_500_000), ("2000", 2_000)]


@pytest.mark.parametrize("text", ["", "1Q", "-1M", "0", "1M,,4M", "1M,1000k"])
def test_bad_sizes_are_refused(text):
    with pytest.raises(ConfigError, match="--sizes"):
        parse_sizes(text)


def test_users_follow_the_measured_events_per_user():
    assert users_for(1_000_000) == 8_496  # 1,008,167 events were generated from these
    assert users_for(16_000_000) == pytest.approx(4 * users_for(4_000_000), abs=2)  # rounding only
    assert users_for(1_000_000, days=3) == pytest.approx(3 * users_for(1_000_000), abs=1)
    assert users_for(1) == 1


def test_workdir_inside_the_repository_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="inside the repository"):
        check_workdir(REPO / "scale")
    with pytest.raises(ConfigError, match="inside the repository"):
        check_workdir(REPO)
    assert check_workdir(tmp_path / "scale") == (tmp_path / "scale").resolve()


def test_prepare_command_line():
    cmd = prepare_command(Path("/w/events-1M.csv"), Path("/w/prep-1M-local"), "local", "local[2]")
    assert cmd == ["ubp-edge", "prepare", "--data", "/w/events-1M.csv", "--format", "canonical",
                   "--out", "/w/prep-1M-local", "--engine", "local", "--overwrite"]
    spark = prepare_command(Path("/w/e.csv"), Path("/w/p"), "spark", "local[2]", ("/venv/bin/ubp-edge",))
    assert spark[0] == "/venv/bin/ubp-edge" and spark[-2:] == ["--spark-master", "local[2]"]


def test_proc_parsing():
    # The command name may hold spaces and parentheses; CPU ticks: utime stime cutime cstime.
    stat = "4242 (java (spark) x) S 4200 4242 4200 0 -1 4194560 10 0 0 0 300 20 5 1 20 0 40"
    assert parse_stat(stat) == (4200, 326)
    status = "Name:\tjava\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\n"
    assert parse_kib(status, "VmRSS") == 102_400 and parse_kib(status, "VmHWM") == 204_800
    assert parse_kib(status, "Pss") is None


def _fake_proc(root: Path, procs: dict[int, tuple[int, str | None, str | None]]) -> Path:
    """A /proc of ``pid: (ppid, smaps_rollup text, status text)``."""
    for pid, (ppid, rollup, status) in procs.items():
        d = root / str(pid)
        d.mkdir(parents=True)
        (d / "stat").write_text(f"{pid} (p {pid}) S {ppid} 1 1 0 -1 0 0 0 0 0 {pid} 0 0 0 20 0 1\n")
        if rollup is not None:
            (d / "smaps_rollup").write_text(rollup)
        if status is not None:
            (d / "status").write_text(status)
    (root / "self").mkdir()  # not a process: skipped
    return root


def test_tree_memory_sums_rss_and_pss_over_the_descendants(tmp_path):
    def rollup(rss, pss):
        return f"00400000-7fff [rollup]\nRss:  {rss} kB\nPss:  {pss} kB\n"

    proc = _fake_proc(tmp_path, {
        10: (1, rollup(5_000, 5_000), None),         # the launcher
        11: (10, rollup(100_000, 80_000), None),     # the command
        12: (11, rollup(900_000, 850_000), None),    # its JVM
        13: (11, None, "State:\tZ (zombie)\n"),      # exited, not yet waited for: no memory
        20: (1, rollup(7_000, 7_000), None),         # not in the tree
    })
    assert sorted(descendants(10, proc)) == [10, 11, 12, 13]
    assert sample_tree(10, proc) == TreeSample(1_005_000, 935_000, (10 + 11 + 12 + 13) / CLOCK_TICKS)
    assert sample_tree(10, proc, skip_root=True) == TreeSample(1_000_000, 930_000, 36 / CLOCK_TICKS)
    # A process holding memory whose smaps_rollup cannot be read: RSS from status, PSS unknown.
    (proc / "13" / "status").write_text("VmRSS:\t 1000 kB\n")
    assert sample_tree(10, proc, skip_root=True).pss_kib is None
    assert sample_tree(10, proc, skip_root=True).rss_kib == 1_001_000


def test_last_line_skips_the_box_of_a_usage_error(tmp_path):
    err = tmp_path / "err"
    err.write_text("Traceback...\nDataError: events.csv line 7: bad ts 'x'\n\n")
    assert last_line(err) == "DataError: events.csv line 7: bad ts 'x'"
    err.write_text("╭─ Error ─╮\n│ No such command 'prepare'. │\n╰─────────╯\n")
    assert last_line(err) == "No such command 'prepare'."
    assert last_line(tmp_path / "absent") == ""


def _row(size: str, engine: str, events: int, maxrss_mib: float, tree_mib: float, rc: int = 0,
         tree_cpu_s: float | None = None) -> dict:
    log = {"events": events, "bytes": events * 45}
    measured = Measured(returncode=rc, wall_s=events / 400_000, cpu_s=events / 500_000,
                        maxrss_kib=int(maxrss_mib * 1024), floor_kib=9_000,
                        tree_peak_rss_kib=int(tree_mib * 1024), tree_peak_pss_kib=None, samples=3,
                        tree_cpu_s=tree_cpu_s)
    manifest = {"counts": {"events": events, "sessions_scorable": events // 7}}
    return run_row(size, engine, log, ["ubp-edge", "prepare"], measured, manifest if rc == 0 else None,
                   "" if rc == 0 else "SparkError: executor lost")


def test_rows_and_ratios():
    rows = [_row("1M", "local", 1_000_000, 400, 410), _row("16M", "local", 16_000_000, 520, 530),
            _row("4M", "local", 4_000_000, 450, 460),
            _row("1M", "spark", 1_000_000, 300, 2_000), _row("4M", "spark", 4_000_000, 0, 0, rc=1)]
    ok = rows[0]
    assert ok["events_per_s"] == 400_000 and ok["events_per_cpu_s"] == 500_000 and ok["cpu_s"] == 2.0
    assert ok["peak_rss_mib"] == 400.0 and ok["peak_rss_floor_mib"] == 8.8
    assert ok["sessions_scorable"] == 142_857
    failed = rows[-1]
    assert not failed["ok"] and failed["error"] == "SparkError: executor lost"
    assert failed["events_per_s"] is None and failed["sessions_scorable"] is None
    # Spark: the JVM's CPU time, which wait4 misses, comes from the tree's samples.
    spark = _row("1M", "spark", 1_000_000, 300, 2_000, tree_cpu_s=8.0)
    assert spark["cpu_s"] == 8.0 and spark["cpu_s_waited"] == 2.0 and spark["events_per_cpu_s"] == 125_000
    # Largest over smallest successful size; an engine with one success has no ratio.
    assert memory_ratios(rows) == [{"engine": "local", "of": "16M / 1M", "peak_rss": 1.3,
                                    "tree_peak_rss": 1.29}]


def test_exit_reasons():
    from benchmarks.prepare_scale import exit_reason

    assert exit_reason(3) == "exit code 3"
    assert exit_reason(-9) == "killed by SIGKILL"
    assert _row("1M", "local", 1_000, 1, 1, rc=-9)["error"] == "SparkError: executor lost"  # stderr first
