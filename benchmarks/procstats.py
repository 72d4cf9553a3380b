"""Measuring a command in a fresh process: wall time, CPU time, peak RSS summed over its process tree.

HTA forks a worker pool, so the peak of the root process alone understates its memory: we poll the
root and all its descendants every ``interval_s`` and keep the largest sum of their resident set sizes.
Also small statistics helpers (median, mean with a Student-t 95 % confidence interval).
"""

from __future__ import annotations

import math
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

#: Two-sided 95 % Student-t quantiles by degrees of freedom (1..30); above 30 the normal 1.96 is close.
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042)


@dataclass(frozen=True)
class RunResult:
    """One run of a command: ``wall_s`` from spawn to exit, ``cpu_s`` user+system of the process and
    its waited-for descendants, ``peak_rss_bytes`` the largest summed RSS seen, ``samples`` polls taken."""

    returncode: int
    wall_s: float
    cpu_s: float
    peak_rss_bytes: int
    samples: int
    stderr_tail: str


def _tree_rss(root: Any) -> int:
    import psutil

    total = 0
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:  # exited between listing and reading
            continue
    return total


def measure(cmd: Sequence[str], interval_s: float = 0.02, timeout_s: float = 600.0,
            cwd: str | None = None, env: dict[str, str] | None = None) -> RunResult:
    """Run ``cmd`` (stdout discarded, stderr kept for the error message) and measure it."""
    import psutil  # here, not at the top: the statistics helpers must work where psutil is absent

    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(list(cmd), stdout=subprocess.DEVNULL, stderr=err, cwd=cwd, env=env)
        root = psutil.Process(proc.pid)
        peak, samples, status, rusage = 0, 0, None, None
        while True:
            # wait4 reaps the child and returns the rusage of it and the descendants it waited for.
            pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            peak = max(peak, _tree_rss(root))
            samples += 1
            if time.perf_counter() - t0 > timeout_s:
                _kill_tree(root)
                pid, status, rusage = os.wait4(proc.pid, 0)
                break
            time.sleep(interval_s)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)  # already reaped: keep Popen consistent
        err.seek(0)
        tail = err.read()[-2000:].decode("utf-8", "replace")
    return RunResult(returncode=proc.returncode, wall_s=wall, cpu_s=rusage.ru_utime + rusage.ru_stime,
                     peak_rss_bytes=peak, samples=samples, stderr_tail=tail)


def _kill_tree(root: Any) -> None:
    import psutil

    try:
        procs = [*root.children(recursive=True), root]
    except psutil.Error:
        return
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            continue


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def mean_ci95(xs: Sequence[float]) -> tuple[float, float, float]:
    """Mean and the bounds of its two-sided 95 % confidence interval (Student t; needs >= 2 values)."""
    n = len(xs)
    m = statistics.fmean(xs)
    if n < 2:
        return m, math.nan, math.nan
    t = _T95[n - 2] if n - 1 <= len(_T95) else 1.96
    half = t * statistics.stdev(xs) / math.sqrt(n)
    return m, m - half, m + half
