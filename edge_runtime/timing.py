"""The one timing loop: wall time per call, after a warm-up, on this machine.

`compare` (per-session latency of each artifact), `convert --auto` (latency of each
candidate) and `benchmark` (every figure) all time calls through `time_calls`, so their
figures mean the same thing. Standard library and numpy only: it runs on the device.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Timings:
    """What `time_calls` measured.

    Attributes:
        ns: wall time of every timed call, in nanoseconds, in call order.
        results: what ``fn`` returned for each input, in input order (first pass only);
            empty unless asked for (``keep_results``).
    """

    ns: np.ndarray
    results: list

    @property
    def p50_us(self) -> float | None:
        return float(np.median(self.ns)) / 1e3 if len(self.ns) else None

    def percentiles(self) -> dict:
        """``{"p50_us", "p95_us", "p99_us", "runs"}``; None figures when nothing was timed."""
        return percentiles(self.ns)


def percentiles(ns: Sequence[int] | np.ndarray) -> dict:
    """p50, p95 and p99 in microseconds of wall times given in nanoseconds."""
    if len(ns) == 0:
        return {"p50_us": None, "p95_us": None, "p99_us": None, "runs": 0}
    us = np.asarray(ns, np.float64) / 1000.0
    return {"p50_us": float(np.percentile(us, 50)), "p95_us": float(np.percentile(us, 95)),
            "p99_us": float(np.percentile(us, 99)), "runs": int(len(us))}


def time_calls(fn: Callable[[object], object], inputs: Sequence, *, warmup: int = 0,
               min_runs: int = 0, keep_results: bool = False) -> Timings:
    """Time ``fn(x)`` for every ``x`` of ``inputs``, one call at a time.

    Args:
        fn: the call to time (e.g. scoring one session).
        inputs: its arguments, called in order and cycled until ``min_runs`` calls are timed.
        warmup: untimed calls first (the inputs cycled), so that caches, allocations and
            lazily built kernels are in place before the clock runs.
        min_runs: the fewest timed calls; at least every input is timed once.
        keep_results: keep what ``fn`` returns for each input (e.g. the probabilities
            `compare` needs); off by default, so that a memory probe timing 20,000 calls
            does not also measure 20,000 kept results.

    Returns:
        Timings: one wall time per timed call and the first result for each input.
    """
    if not len(inputs):
        return Timings(np.zeros(0, np.int64), [])
    for i in range(warmup):
        fn(inputs[i % len(inputs)])
    n = max(min_runs, len(inputs))
    times = np.empty(n, np.int64)
    results: list = []
    clock = time.perf_counter_ns
    for i in range(n):
        x = inputs[i % len(inputs)]
        start = clock()
        result = fn(x)
        times[i] = clock() - start
        if keep_results and i < len(inputs):
            results.append(result)
    return Timings(times, results)
