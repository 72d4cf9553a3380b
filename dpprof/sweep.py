"""The study's experiment as one command: run a grid of ``dpprof profile`` runs and collect ``sweep.json``.

Layout of a sweep directory::

    SWEEP/sweep.json              SweepResult (dpprof/analyze/sweep_model.py), rewritten atomically after each point
    SWEEP/runs/<point>/           one run directory per configuration (docs/run-format.md)
    SWEEP/runs/<point>.log        that run's console output
    SWEEP/sweep.html              the sweep report (dpprof.report.sweep_html.render_sweep)

Each configuration runs in a subprocess (``python -m dpprof.cli profile ...``) so a crash or a hung run
cannot take the sweep down, and DDP gets its own torchrun launcher. What this machine cannot run is listed
and skipped: DP over N GPUs needs N CUDA devices (without CUDA only DP's no-GPU path runs, at gpus = 1),
DDP runs N gloo processes on CPU (``--nproc N``) or N GPUs with CUDA. Re-running the same sweep keeps the
points already ``done`` whose run directory is still there (a ``dpprof.sweep/1`` file's are measured again from
their runs: the analysis they were measured with had other categories) and runs the others again; a directory
an earlier attempt left (a failed or interrupted run) is moved aside to ``runs/<point>.failed-N`` first, with its
log, since ``dpprof profile`` never writes into an existing run directory.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import stat
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from dpprof.analyze.sweep_model import SWEEP_SCHEMA_V1, SweepPoint, SweepResult, total_loader_workers
from dpprof.errors import DpprofError
from dpprof.fileio import output_target
from dpprof.manifest import EMPTY, read_manifest
from dpprof.rundir import is_run_dir, read_json, write_json
from dpprof.vocabulary import PROCESS_PER_RANK

SWEEP_JSON = "sweep.json"
SWEEP_HTML = "sweep.html"
RUNS_DIR = "runs"


@dataclass(frozen=True)
class Grid:
    """What to run. ``gpus`` = DP devices or DDP processes; ``batch_sizes`` are global."""

    strategies: tuple[str, ...]
    gpus: tuple[int, ...]
    batch_sizes: tuple[int, ...]
    workers: tuple[int, ...]
    model: str = "vgg16"
    epochs: int | None = None
    steps: int | None = None
    extra_args: tuple[str, ...] = ()  # passed through to every `dpprof profile`

    def as_json(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


@dataclass(frozen=True)
class Planned:
    """A configuration, and the command that runs it (None when this machine cannot)."""

    point: SweepPoint
    argv: tuple[str, ...] | None


def machine_info() -> dict[str, Any]:
    """Host, CPU count, CUDA devices (torch imported here, lazily: the sweep needs it only for this)."""
    info: dict[str, Any] = {"host": platform.node(), "cpus": os.cpu_count(), "cuda_devices": 0, "gpu_names": []}
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            n = torch.cuda.device_count()
            info["cuda_devices"] = n
            info["gpu_names"] = [torch.cuda.get_device_name(i) for i in range(n)]
    except ImportError:
        info["torch"] = None
    return info


def point_name(strategy: str, gpus: int, batch: int, workers: int) -> str:
    return SweepPoint(strategy, gpus, batch, workers).name


def plan(grid: Grid, machine: Mapping[str, Any], runs: Path) -> list[Planned]:
    """Every configuration of the grid in order, each with its command or the reason it is skipped."""
    cuda = int(machine.get("cuda_devices") or 0)
    out: list[Planned] = []
    for strategy in grid.strategies:
        for gpus in grid.gpus:
            for batch in grid.batch_sizes:
                for workers in grid.workers:
                    why, note = _cannot_run(strategy, gpus, batch, cuda)
                    base = SweepPoint(strategy, gpus, batch, workers)
                    if why:
                        out.append(Planned(dataclasses.replace(base, status="skipped", reason=why), None))
                        continue
                    argv = profile_argv(grid, strategy, gpus, batch, workers, cuda, runs)
                    out.append(Planned(dataclasses.replace(base, status="pending", reason=note,
                                                           run_dir=f"{RUNS_DIR}/{base.name}"), argv))
    return out


def _cannot_run(strategy: str, gpus: int, batch: int, cuda: int) -> tuple[str, str]:
    """(why it cannot run here or "", a note for a runnable point)."""
    if gpus < 1:
        return "needs at least 1 GPU or process", ""
    if strategy == "single":
        return ("a single-device run uses 1 device", "") if gpus != 1 else ("", "")
    if strategy == "dp":
        if cuda == 0:
            if gpus == 1:
                return "", "no CUDA device: DP's no-GPU path (the module ran directly)"
            return f"DP over {gpus} GPUs needs {gpus} CUDA devices, this machine has none", ""
        if gpus > cuda:
            return f"DP over {gpus} GPUs needs {gpus} CUDA devices, this machine has {cuda}", ""
        return "", ""
    if strategy in PROCESS_PER_RANK:
        if batch % gpus:
            return f"global batch {batch} is not divisible by {gpus} processes", ""
        if cuda == 0:
            return "", f"{gpus} gloo process(es) on CPU"
        if gpus > cuda:
            return f"{strategy.upper()} with {gpus} NCCL ranks needs {gpus} CUDA devices, this machine has {cuda}", ""
        return "", ""
    return f"unknown strategy {strategy!r}", ""


def profile_argv(grid: Grid, strategy: str, gpus: int, batch: int, workers: int, cuda: int,
                 runs: Path) -> tuple[str, ...]:
    """The ``dpprof profile`` command line of one configuration."""
    argv = [sys.executable, "-m", "dpprof.cli", "profile", "--strategy", strategy, "--model", grid.model,
            "--batch-size", str(batch), "--workers", str(workers), "--out", str(runs),
            "--run-name", point_name(strategy, gpus, batch, workers), "--quiet"]
    if grid.steps is not None:
        argv += ["--steps", str(grid.steps)]
    if grid.epochs is not None:
        argv += ["--epochs", str(grid.epochs)]
    if strategy in PROCESS_PER_RANK:
        argv += ["--nproc", str(gpus)]
    elif strategy == "dp" and cuda:
        argv += ["--gpus", str(gpus)]  # without CUDA, DP's no-GPU path: the collector's default
    return tuple(argv) + grid.extra_args


def measure(point: SweepPoint, run_dir: Path) -> SweepPoint:
    """Fill a finished point from its run directory: manifest summary and epochs, analysis categories."""
    m = read_manifest(run_dir)[0] or EMPTY
    epochs = m.epochs or []
    full = [e.time_s for e in epochs if not e.partial and e.time_s is not None]
    reason = point.reason
    workers, world = m.config.workers, m.config.world_size
    total = point.total_workers
    if workers is not None and world is not None:  # what the run really started
        total = total_loader_workers(point.strategy, world, workers)
    categories: dict[str, float] = {}
    try:
        categories = reference_categories(run_dir)
    except Exception as exc:  # one point's analysis must not end the sweep: the reason is recorded
        reason = "; ".join(x for x in (reason, f"analysis failed: {type(exc).__name__}: {exc}") if x)
    return dataclasses.replace(
        point, status="done", reason=reason,
        step_ms_median=m.summary.step_ms_median, images_per_s=m.summary.images_per_s_median,
        epoch_time_s=sum(full) / len(full) if full else None,
        epochs=tuple((e.train_acc, e.test_acc, e.time_s) for e in epochs),
        categories_us=categories, total_workers=total)


def reference_categories(run_dir: Path) -> dict[str, float]:
    """Mean per-step category breakdown (µs) on the run's reference row (DP output device / rank 0)."""
    from dpprof.analyze import analyze  # the analyzer, imported only when a point has finished
    from dpprof.analyze.diag_figures import reference_row

    ref = reference_row(analyze([run_dir]))
    return dict(ref.categories_us) if ref is not None else {}


def with_speedups(points: Sequence[SweepPoint]) -> tuple[SweepPoint, ...]:
    """Speedup (images/s ÷ the 1-GPU point's of the same strategy, batch, workers) and efficiency (÷ GPUs)."""
    ref = {(p.strategy, p.batch_size, p.workers): p.images_per_s for p in points
           if p.status == "done" and p.gpus == 1 and p.images_per_s}
    out = []
    for p in points:
        base = ref.get((p.strategy, p.batch_size, p.workers))
        if p.status == "done" and p.images_per_s and base:
            s = p.images_per_s / base
            out.append(dataclasses.replace(p, speedup=s, scaling_efficiency=s / p.gpus))
        else:
            out.append(dataclasses.replace(p, speedup=None, scaling_efficiency=None))
    return tuple(out)


def load_previous(sweep_dir: Path) -> dict[tuple[str, int, int, int], SweepPoint]:
    """Points already ``done`` in an earlier sweep.json whose run directory still exists (from a ``/1`` file,
    measured again from that directory: its categories were those of the analysis' schema /1)."""
    data = read_json(sweep_dir / SWEEP_JSON)
    if not isinstance(data, dict):
        return {}
    try:
        prev = SweepResult.from_json(data)
    except (ValueError, KeyError, TypeError):
        return {}
    old = data.get("schema") == SWEEP_SCHEMA_V1
    return {p.key: measure(p, sweep_dir / p.run_dir) if old else p for p in prev.points
            if p.status == "done" and p.run_dir and is_run_dir(sweep_dir / p.run_dir)}


def move_aside(run_dir: Path, log: Path) -> Path | None:
    """Move a run directory an earlier attempt left (and its log) to ``<name>.failed-N`` (``.failed-N.log``), N the
    first free number, so that the retry's ``dpprof profile`` can create it again; None when there is none."""
    if not (run_dir.exists() or run_dir.is_symlink()):
        return None
    n = 1
    while any(p.exists() or p.is_symlink() for p in (run_dir.with_name(f"{run_dir.name}.failed-{n}"),
                                                       log.with_name(f"{run_dir.name}.failed-{n}.log"))):
        n += 1
    aside = run_dir.with_name(f"{run_dir.name}.failed-{n}")
    try:
        os.rename(run_dir, aside)  # a link is moved as a link, never followed
        if log.exists() or log.is_symlink():
            os.rename(log, log.with_name(f"{run_dir.name}.failed-{n}.log"))
    except OSError as exc:
        raise DpprofError(f"{run_dir}: cannot move an earlier attempt aside to {aside.name}: "
                          f"{exc.strerror or exc}") from None
    return aside


Runner = Callable[[Sequence[str], Path, float | None], tuple[int, str]]


def open_log(log: Path) -> IO[str]:
    """``log`` opened for writing as it is produced (a user may follow it): never through a symbolic link, never a
    FIFO, a device or a socket (DpprofError, one line). ``dpprof.fileio.output_target`` checks it first; the
    descriptor is opened without following a link and checked again, so a file swapped in between is refused."""
    output_target(log)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | \
        getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(log, flags, 0o666)
    except OSError as exc:
        raise DpprofError(f"{log}: cannot write the log: {exc.strerror or exc} (a link, a FIFO or a device is "
                          "refused)") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise DpprofError(f"{log}: not a regular file: the log is not written there")
    os.set_blocking(fd, True)
    return open(fd, "w", encoding="utf-8")


def run_subprocess(argv: Sequence[str], log: Path, timeout_s: float | None) -> tuple[int, str]:
    """Run one configuration, its output into ``log`` (:func:`open_log`); (exit code, last non-empty output line)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open_log(log) as fh:
        try:
            rc = subprocess.run(list(argv), stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, timeout=timeout_s, check=False).returncode
        except subprocess.TimeoutExpired:
            rc = 124
            fh.write(f"\ndpprof sweep: timed out after {timeout_s} s\n")
    lines = [ln for ln in log.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    return rc, (lines[-1].strip() if lines else "")


def run_sweep(grid: Grid, sweep_dir: Path, *, machine: Mapping[str, Any] | None = None,
              runner: Runner = run_subprocess, timeout_s: float | None = None,
              on_point: Callable[[int, int, SweepPoint], None] | None = None) -> SweepResult:
    """Run (or resume) the sweep in ``sweep_dir``; ``sweep.json`` is rewritten after every point."""
    machine = dict(machine if machine is not None else machine_info())
    runs = sweep_dir / RUNS_DIR
    planned = plan(grid, machine, runs)
    previous = load_previous(sweep_dir)
    skipped = tuple(f"{p.point.name}: {p.point.reason}" for p in planned if p.argv is None)
    points: list[SweepPoint] = [previous.get(p.point.key, p.point) for p in planned]

    def save() -> SweepResult:
        result = SweepResult(points=with_speedups(points), grid=grid.as_json(), machine=machine, skipped=skipped)
        write_json(sweep_dir / SWEEP_JSON, result.to_json(), replace_input=True)  # read by load_previous
        return result

    save()
    for i, item in enumerate(planned):
        if item.argv is None or points[i].status == "done":
            if on_point:
                on_point(i, len(planned), points[i])
            continue
        run_dir, log = runs / item.point.name, runs / f"{item.point.name}.log"
        output_target(log, within=sweep_dir)  # runs/ and the log inside the sweep, through no link
        aside = move_aside(run_dir, log)
        rc, last = runner(item.argv, log, timeout_s)
        if rc == 0 and is_run_dir(run_dir):
            points[i] = measure(item.point, run_dir)
        else:
            why = f"exit code {rc}" if rc else "no run directory was written"
            points[i] = dataclasses.replace(item.point, status="failed",
                                            reason=f"{why}: {last}" if last else why)
        if aside is not None:
            note = f"an earlier attempt is in {RUNS_DIR}/{aside.name}"
            points[i] = dataclasses.replace(points[i], reason="; ".join(x for x in (points[i].reason, note) if x))
        save()
        if on_point:
            on_point(i, len(planned), points[i])
    result = diagnose_points(save(), sweep_dir)
    # the sweep's own file, read when resuming: rewritten on purpose (a replaced file's inode can be reused, so
    # the input check would otherwise take this write for one over an input)
    write_json(sweep_dir / SWEEP_JSON, result.to_json(), replace_input=True)
    return result


def diagnose_points(result: SweepResult, sweep_dir: Path) -> SweepResult:
    """Each finished run's diagnosis with the whole sweep behind it: its verdicts in the sweep, its analysis.json
    (with the diagnosis) in its run directory, and the sweep-level hyperparameters verdict."""
    from dpprof.analyze.run import load_run
    from dpprof.rundir import ANALYSIS

    points = []
    hyper: dict[str, Any] = {}
    for p in result.points:
        if p.status != "done" or not p.run_dir or not is_run_dir(sweep_dir / p.run_dir):
            points.append(p)
            continue
        try:
            data = load_run([sweep_dir / p.run_dir], sweep=result)
        except Exception as exc:  # one point's diagnosis must not end the sweep: why is recorded in its verdicts
            points.append(dataclasses.replace(p, verdicts={"error": f"{type(exc).__name__}: {exc}"}))
            continue
        diag = data.analysis.diagnosis
        assert diag is not None  # load_run attaches it
        write_json(sweep_dir / p.run_dir / ANALYSIS, data.analysis.to_json())
        points.append(dataclasses.replace(p, verdicts={h.id: h.verdict for h in diag.hypotheses}))
        h = next(x for x in diag.hypotheses if x.id == "hyperparameters")
        if not hyper or (p.strategy == "dp" and p.gpus > 1):
            hyper = {"verdict": h.verdict, "reason": h.reason, "rule": h.rule, "evidence": dict(h.evidence),
                     "from_run": p.name}
    return dataclasses.replace(result, points=tuple(points), diagnosis={"hyperparameters": hyper} if hyper else {})


def render_report(result: SweepResult, sweep_dir: Path) -> tuple[Path | None, str]:
    """Call the HTML engineer's ``render_sweep``; (path, "") or (None, why not)."""
    try:
        from dpprof.report.sweep_html import render_sweep
    except ImportError as exc:
        return None, f"sweep report not rendered: dpprof.report.sweep_html is not available ({exc})"
    return render_sweep(result, sweep_dir / SWEEP_HTML), ""
