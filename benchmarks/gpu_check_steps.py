"""The steps of ``make gpu-check`` (benchmarks/gpu_check.py): each one command in its own process group with
its output in ``logs/<step>.log``, its checks read from what it wrote; none stops the others, and all share one
time budget."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gpu_check_inspect import (
    NO_GPU,
    Check,
    Outcome,
    Plan,
    check,
    inspect_perfetto,
    inspect_report,
    inspect_run,
    skipped,
)
from gpu_check_plan import OVERHEAD_TARGET, overhead_args

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESERVE_S = 20.0  # kept back for the summary and the archive


class Budget:
    """Seconds left of the whole check; a step gets at most its own cap and what is left."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic() - RESERVE_S

    def short(self, need_s: float) -> str | None:
        """Why a step that needs ``need_s`` seconds to be worth starting is skipped, or None."""
        left = self.left()
        return None if left >= need_s else f"time budget: {max(0.0, left):.0f} s left, {need_s:.0f} s needed"


#: Process groups of the commands running now: a SIGTERM to this script (the shell's last-resort `timeout`)
#: ends them too.
LIVE: set[int] = set()
#: A new process group, not a new session: the device tool ends what a command leaves running, except new
#: sessions (Python 3.10 has no process_group=; there a session is the only safe way without preexec_fn).
GROUP: dict[str, Any] = {"process_group": 0} if sys.version_info >= (3, 11) else {"start_new_session": True}


class Interrupted(Exception):
    """SIGTERM (the shell's last-resort timeout): the steps stop, the summary and archive are still written."""


STOPPED: list[int] = []  # the signal, once received: no command starts after it


def end_live(signum: int, _frame: object) -> None:
    """SIGTERM handler: end every running command's group, start no other, unwind the steps."""
    STOPPED.append(signum)
    for pgid in list(LIVE):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    raise Interrupted(signum)


def run_logged(cmd: Sequence[str], log: Path, timeout_s: float, cwd: Path) -> tuple[int | None, float, str]:
    """Run ``cmd`` in its own process group with its output in ``log``: (exit status, None on a timeout;
    wall seconds; its last lines). On a timeout the whole group (torchrun's workers too) gets SIGTERM,
    which dpprof answers by finishing the step and keeping the run, then SIGKILL."""
    t0 = time.perf_counter()
    if STOPPED:
        return None, 0.0, f"not started: signal {STOPPED[0]}"
    with log.open("w") as fh:
        fh.write(f"$ {shlex.join(cmd)}\n")
        fh.flush()
        proc = subprocess.Popen(list(cmd), stdout=fh, stderr=subprocess.STDOUT, cwd=cwd, **GROUP)
        LIVE.add(proc.pid)
        try:
            rc: int | None = proc.wait(timeout=max(1.0, timeout_s))
        except subprocess.TimeoutExpired:
            rc = None
            for sig, wait_s in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
                with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
                    os.killpg(proc.pid, sig)
                    proc.wait(timeout=wait_s)
                if proc.returncode is not None:
                    break
        finally:
            LIVE.discard(proc.pid)
    lines = log.read_text(errors="replace").splitlines()
    tail = " | ".join(x.strip() for x in lines[-6:] if x.strip())
    return rc, round(time.perf_counter() - t0, 1), tail[-600:]


def ran(name: str, rc: int | None, tail: str) -> Check:
    """The command's own check: exit status 0 (a timeout or another status fails, with its last lines)."""
    detail = "exit 0" if rc == 0 else ("timed out" if rc is None else f"exit {rc}") + f": {tail}"
    return check(f"{name} exit 0", rc == 0, detail)


def do_run(plan: Plan, work: Path, cuda: bool, budget: Budget) -> Outcome:
    cmd = [sys.executable, "-m", "dpprof.cli", *plan.argv]
    shown = [a.replace(f"{REPO}/", "") for a in plan.argv]  # examples/ relative to the checkout
    out = Outcome(plan.name, plan.kind, command=["python", "-m", "dpprof.cli", *shown],
                  not_exercised=list(plan.not_exercised))
    why = budget.short(20)
    if why:
        out.status, out.checks = "skipped", [skipped(f"dpprof {plan.kind}", why)]
        return out
    rc, out.wall_s, tail = run_logged(cmd, work / "logs" / f"{plan.name}.log", min(plan.timeout_s, budget.left()), work)
    out.checks.append(ran(f"dpprof {plan.kind}", rc, tail))
    run = work / "runs" / plan.name
    if not (run / "manifest.json").is_file():
        out.status = "failed"
        return out
    try:
        out.figures, checks = inspect_run(run, plan, cuda)
        out.checks += checks
        out.status = json.loads((run / "manifest.json").read_text()).get("status", "?")
    except (OSError, ValueError, KeyError, EOFError) as exc:
        out.status = "unreadable"
        out.checks.append(check("run directory readable", False, f"{type(exc).__name__}: {exc}"))
    return out


def analyze_and_report(o: Outcome, plan: Plan, work: Path, cuda: bool, budget: Budget) -> None:
    """``dpprof analyze`` then ``dpprof report`` of one run directory; their checks join the run's."""
    run = work / "runs" / o.name
    for sub, dest in (("analyze", work / "analysis" / f"{o.name}.json"), ("report", work / "reports" / f"{o.name}.html")):
        why = budget.short(5)
        if why:
            o.checks.append(skipped(f"dpprof {sub}", why))
            continue
        args = ["--json", str(dest), "--quiet"] if sub == "analyze" else ["--out", str(dest)]
        rc, _, tail = run_logged([sys.executable, "-m", "dpprof.cli", sub, str(run), *args],
                                 work / "logs" / f"{o.name}.{sub}.log", min(120.0, budget.left()), work)
        o.checks.append(ran(f"dpprof {sub}", rc, tail))
        if sub == "report" and rc == 0 and dest.is_file():
            o.checks += inspect_report(dest.read_text(errors="replace"), plan, cuda)


def perfetto_step(outcomes: Sequence[Outcome], work: Path, cuda: bool, budget: Budget) -> Outcome:
    # On a GPU, DP [0, 0]: its profiled steps (~0.65 s each on an H200) are long enough to hold NVML samples,
    # which the timeline keeps only within a rank's traced span; a single-GPU step of ~8 ms holds none.
    done = [o for o in outcomes if o.status == "complete" and (o.name == "dp_dup00" or not cuda)]
    pick = done[0] if done else None
    out = Outcome("perfetto", "check")
    why = budget.short(10)
    if pick is None or why:
        why = why or ("dp_dup00 did not complete" if cuda else "no complete run directory")
        out.status, out.checks = "skipped", [skipped("dpprof perfetto", why)]
        return out
    dest = work / "perfetto" / f"{pick.name}.json.gz"
    out.command = ["python", "-m", "dpprof.cli", "perfetto", f"runs/{pick.name}", "--out", dest.name]
    rc, out.wall_s, tail = run_logged([sys.executable, "-m", "dpprof.cli", "perfetto", str(work / "runs" / pick.name),
                                       "--out", str(dest)], work / "logs" / "perfetto.log", min(120.0, budget.left()), work)
    out.checks.append(ran(f"dpprof perfetto ({pick.name})", rc, tail))
    if rc == 0:
        out.checks += inspect_perfetto(dest, cuda)
    out.status = "ran" if rc == 0 else "failed"
    return out


def gradient_step(work: Path, cuda: bool, budget: Budget) -> Outcome:
    out = Outcome("gradients", "check", command=["python", "benchmarks/gpu_check.py", "--gradient-check"])
    name = "marked DP gradients == nn.DataParallel's, device_ids [0, 0]"
    # torch/nn/parallel/data_parallel.py: without CUDA, device_ids is empty and forward calls the module.
    why = budget.short(30) if cuda else NO_GPU + ": DataParallel calls the module directly"
    if why:
        out.status, out.checks = "skipped", [skipped(name, why)]
        return out
    log = work / "logs" / "gradients.log"
    rc, out.wall_s, tail = run_logged([sys.executable, str(HERE / "gpu_check.py"), "--gradient-check"], log,
                                      min(120.0, budget.left()), work)
    found = [ln for ln in log.read_text(errors="replace").splitlines() if ln.startswith("{")]
    if rc != 0 or not found:
        out.status, out.checks = "failed", [check(name, False, f"exit {rc}: {tail}")]
        return out
    r = json.loads(found[-1])
    out.figures = {"max_abs_diff": r["max_abs_diff"], "max_abs_grad": r["max_abs_grad"]}
    out.status = "ran"
    out.checks.append(check(name, r["equal"], f"max |diff| {r['max_abs_diff']:.3g} (max |grad| {r['max_abs_grad']:.3g})"))
    return out


def overhead_step(work: Path, cuda: bool, budget: Budget) -> Outcome:
    """benchmarks/overhead.py: the harness, profiler and NVML A/B ratios (target: B/A <= 1.03, issue 15)."""
    out = Outcome("overhead", "bench")
    args = overhead_args(cuda)
    out.command = ["python", "benchmarks/overhead.py", *args, "--json", "overhead.json"]
    why = budget.short(45)
    if why:
        out.status, out.checks = "skipped", [skipped("overhead.py", why)]
        return out
    rc, out.wall_s, tail = run_logged([sys.executable, str(HERE / "overhead.py"), *args, "--json",
                                       str(work / "overhead.json")], work / "logs" / "overhead.log",
                                      min(180.0, budget.left()), work)
    out.checks.append(ran("overhead.py", rc, tail))
    if rc != 0 or not (work / "overhead.json").is_file():
        out.status = "failed"
        return out
    r = json.loads((work / "overhead.json").read_text())
    out.status = "ran"
    out.figures = {"step_ms_median": r.get("harness", {}).get("a_ms_median_mean"),
                   **{f"{k}_ratio": r[k]["ratio_mean"] for k in ("harness", "profiler", "nvml") if k in r},
                   **{f"{k}_ratio_ci95": r[k]["ratio_ci95"] for k in ("harness", "profiler", "nvml") if k in r},
                   "nvml_against": r.get("nvml", {}).get("nvml")}
    if not cuda:
        out.checks += [skipped(n, NO_GPU + ": step times and NVML are not the GPU's")
                       for n in ("real NVML", "harness B/A <= 1.03", "NVML B/A <= 1.03")]
        return out
    out.checks.append(check("real NVML", r.get("nvml", {}).get("nvml") == "real NVML", str(r.get("nvml", {}).get("nvml"))))
    for key, label in (("harness", "harness B/A <= 1.03"), ("nvml", "NVML B/A <= 1.03")):
        lo, hi = r[key]["ratio_ci95"]
        verdict = "passed" if hi <= OVERHEAD_TARGET else "failed" if lo > OVERHEAD_TARGET else "inconclusive"
        out.checks.append(Check(label, verdict, f"B/A {r[key]['ratio_mean']:.3f} (95% CI {lo:.3f}..{hi:.3f})"))
    return out


