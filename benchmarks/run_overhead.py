"""``dpprof run`` against the same script run plainly: what recording an unchanged script costs per step.

A: ``python run_target.py``; B: ``python -m dpprof.run [default window] run_target.py``, fresh processes.
Both time their steps with the script's own clocks (``run_target.py``: from one ``optimizer.step()``
return to the next, so B's figures include dpprof's step hook, its step records and its NVML sampler):
wall time, and the process's CPU time. Only steps after ``--skip`` count: dpprof's profiler window (steps
2-5 by default, its trace written in step 5) is over by then, so these are the unprofiled steps the 3 %
target is about.

The two of a pair run at the same time, each on one thread, and start their timed steps together (a
file both wait for): on a machine shared with other work, load that changes from one minute to the next
then hits both alike, where runs one after the other see different neighbours (on the shared 2-core
development machine the standard deviation of the wall-time ratio over 30 pairs was 0.28 one after the
other, 0.11-0.14 started together). Which one is started first alternates. Per pair the ratio of median step times B/A; the figure is the mean ratio with
a Student-t 95 % confidence interval. B's manifest also states dpprof's own host time at each step's end
(``stepping.hook_us_median``), measured inside the process, which machine load hardly moves.
Usage: ``python benchmarks/run_overhead.py [--pairs 8] [--steps 100] [--skip 10] [--json OUT]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from overhead import ab_summary, line  # noqa: E402

from dpprof.rundir import write_json  # noqa: E402

TARGET = {"run_ratio_max": 1.03}


class Pairs:
    """Each call of :meth:`run` starts A and B together and returns their counted steps' medians."""

    def __init__(self, tmp: Path, steps: int, skip: int, batch: int, threads: int, control: bool = False) -> None:
        self.tmp, self.steps, self.skip, self.batch, self.threads = tmp, steps, skip, batch, threads
        self.control = control  # B plain too: what the method itself reads when nothing differs
        self.n = 0
        self.dpprof_vs_script: list[float] = []  # dpprof's own step records / the script's wall clock
        self.hook_us: list[float] = []

    def _start(self, name: str, prefix: list[str], go: Path) -> tuple[subprocess.Popen, Path]:
        times = self.tmp / f"{name}{self.n}.json"
        env = dict(os.environ, PYTHONPATH=str(HERE.parent), KINETO_LOG_LEVEL="5")
        cmd = [sys.executable, *prefix, str(HERE / "run_target.py"), "--steps", str(self.steps), "--batch-size",
               str(self.batch), "--threads", str(self.threads), "--times", str(times), "--go", str(go)]
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), times

    def run(self) -> dict[str, float]:
        self.n += 1
        go, out = self.tmp / f"go{self.n}", self.tmp / f"runs{self.n}"
        b_args = [] if self.control else ["-m", "dpprof.run", "--quiet", "--out", str(out)]
        order = [("a", []), ("b", b_args)] if self.n % 2 else [("b", b_args), ("a", [])]
        started = {name: self._start(name, prefix, go) for name, prefix in order}
        for proc, _ in started.values():
            ready = proc.stdout.readline().strip() if proc.stdout is not None else ""
            if ready != "READY":
                raise RuntimeError(f"a benchmark process did not start: {proc.communicate()[1][-2000:]}")
        go.touch()
        result: dict[str, float] = {}
        for name, (proc, times) in started.items():
            _, err = proc.communicate(timeout=600)
            if proc.returncode != 0:
                raise RuntimeError(f"run {name} failed: {err[-2000:]}")
            t = {k: v[self.skip:] for k, v in json.loads(times.read_text()).items()}
            result[f"{name}_wall"], result[f"{name}_cpu"] = statistics.median(t["wall_ms"]), statistics.median(t["cpu_ms"])
        if not self.control:
            self._read_run(next(out.iterdir()), result["b_wall"])
        return result

    def _read_run(self, run: Path, wall_ms: float) -> None:
        recs = [json.loads(x) for x in (run / "steps.rank0.jsonl").read_text().splitlines()][self.skip:]
        if any(r["profiler_on"] for r in recs):
            raise RuntimeError(f"--skip {self.skip} leaves profiled steps in the comparison")
        self.dpprof_vs_script.append(statistics.median(r["wall_ms"] for r in recs) / wall_ms)
        self.hook_us.append(json.loads((run / "manifest.json").read_text())["stepping"]["hook_us_median"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=8, help="A/B process pairs (default 8)")
    p.add_argument("--steps", type=int, default=100, help="steps per process (default 100)")
    p.add_argument("--skip", type=int, default=10, help="first steps left out of each process (default 10)")
    p.add_argument("--batch", type=int, default=128, help="batch size (default 128)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads in each (default 1)")
    p.add_argument("--control", action="store_true",
                   help="B runs the script plainly too: the spread and bias of the method itself")
    p.add_argument("--json", type=Path, help="also write the figures here (JSON)")
    args = p.parse_args(argv)
    if args.pairs < 2 or args.steps <= args.skip + 2:
        p.error("need --pairs >= 2 and --steps > --skip + 2")
    t0 = time.perf_counter()
    print(f"run overhead: dpprof run vs plain python, {args.steps} steps/process (first {args.skip} left out), "
          f"batch {args.batch}, {args.threads} thread(s), {args.pairs} pairs started together")
    with tempfile.TemporaryDirectory(prefix="dpprof-run-overhead-") as tmp:
        pairs = Pairs(Path(tmp), args.steps, args.skip, args.batch, args.threads, args.control)
        done = [pairs.run() for _ in range(args.pairs)]
    r: dict[str, Any] = {kind: ab_summary([d[f"a_{kind}"] for d in done], [d[f"b_{kind}"] for d in done])
                         for kind in ("wall", "cpu")}
    step_ms = statistics.median(d["b_wall"] for d in done)
    if not args.control:
        r["hook_us_median"] = round(statistics.median(pairs.hook_us), 2)
        r["hook_share_of_step_pct"] = round(100 * r["hook_us_median"] / 1e3 / step_ms, 4)
        r["dpprof_record_vs_script_clock_median"] = round(statistics.median(pairs.dpprof_vs_script), 4)
    r.update(control=args.control, targets=TARGET, steps=args.steps, skip=args.skip, batch=args.batch, threads=args.threads,
             wall_s=round(time.perf_counter() - t0, 1), loadavg_1_5_15_after=[round(x, 2) for x in os.getloadavg()])
    what = "A and B both plain python script.py (control)" if args.control else "B dpprof run"
    for kind in ("wall", "cpu"):
        print(line(f"run {kind}", r[kind], TARGET["run_ratio_max"]) + f"   ({kind} ms per unprofiled step; {what})")
    if not args.control:
        print(f"  dpprof's own time per step (its manifests): {r['hook_us_median']:.1f} us = "
              f"{r['hook_share_of_step_pct']:.3f} % of a {step_ms:.1f} ms step; its step records / the script's "
              f"clock: {r['dpprof_record_vs_script_clock_median']:.3f}")
    print(f"  ({r['wall_s']:.0f} s; load average now {r['loadavg_1_5_15_after'][0]:.1f} on {os.cpu_count()} CPUs)")
    if args.json:
        write_json(args.json, r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
