"""``dpprof sweep``: run a grid of profiles (strategies × GPUs × batch sizes × workers) and report it."""

from __future__ import annotations

import argparse
from pathlib import Path

from dpprof.errors import DpprofError

HELP = "run a grid of profiles (strategy x GPUs x batch size x workers), analyze each, write sweep.json + report"


def _ints(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or any(v < 0 for v in vals):
        raise argparse.ArgumentTypeError(f"expected non-negative integers, got {text!r}")
    return tuple(dict.fromkeys(vals))


def _strategies(text: str) -> tuple[str, ...]:
    from dpprof.vocabulary import PROFILE_STRATEGIES as STRATEGIES

    vals = tuple(dict.fromkeys(x.strip() for x in text.split(",") if x.strip()))
    bad = [v for v in vals if v not in STRATEGIES]
    if not vals or bad:
        raise argparse.ArgumentTypeError(f"strategies must be among {', '.join(STRATEGIES)}, got {text!r}")
    return vals


def prepare_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--strategies", type=_strategies, default=("dp", "ddp"), help="e.g. dp,ddp (default)")
    p.add_argument("--gpus", type=_ints, default=(1, 2), help="GPUs (DP) / processes (DDP), e.g. 1,2,4")
    p.add_argument("--batch-sizes", type=_ints, default=(128,), help="global batch sizes, e.g. 64,128,256")
    p.add_argument("--workers", type=_ints, default=(0,), help="DataLoader workers, e.g. 0,2,4")
    p.add_argument("--model", default="vgg16", help="model name passed to `dpprof profile` (default vgg16)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per configuration")
    p.add_argument("--steps", type=int, default=None, help="steps per configuration (default 12 without --epochs)")
    p.add_argument("--out", type=Path, default=None,
                   help="sweep directory (default sweeps/<model>); re-running resumes, skipping finished points")
    p.add_argument("--timeout-s", type=float, default=None, help="wall-clock limit per configuration, seconds")
    p.add_argument("--no-report", action="store_true", help="do not render sweep.html")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("profile_args", nargs=argparse.REMAINDER,
                   help="after --: extra arguments for every `dpprof profile` (e.g. -- --data cifar10)")


def run(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from dpprof.commands.options import require_extra
    from dpprof.sweep import Grid, machine_info, plan, render_report, run_sweep
    from dpprof.term import console as make_console
    from dpprof.term import echo

    require_extra("collect", "dpprof sweep")
    if args.steps is not None and args.steps < 1 or args.epochs is not None and args.epochs < 1:
        raise DpprofError("--steps and --epochs must be at least 1")
    if 0 in args.gpus:
        raise DpprofError("--gpus values must be at least 1 (GPUs for DP, processes for DDP)")
    extra = tuple(a for a in args.profile_args if a != "--")
    grid = Grid(strategies=args.strategies, gpus=args.gpus, batch_sizes=args.batch_sizes, workers=args.workers,
                model=args.model, epochs=args.epochs,
                steps=args.steps if args.steps is not None or args.epochs is not None else 12, extra_args=extra)
    out: Path = args.out or Path("sweeps") / args.model
    console = make_console(stderr=True)
    machine = machine_info()
    planned = plan(grid, machine, out / "runs")
    skipped = [p.point for p in planned if p.argv is None]
    console.print(f"sweep: {len(planned)} configurations, {len(planned) - len(skipped)} runnable here "
                  f"({machine['cuda_devices']} CUDA devices, {machine['cpus']} CPUs) → {out}")
    for s in skipped:
        console.print(f"  skipped {s.name}: {s.reason}")
    with Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, disable=args.no_progress) as progress:
        task = progress.add_task("configurations", total=len(planned))

        def on_point(i: int, total: int, point: object) -> None:
            progress.update(task, completed=i + 1, description=f"{getattr(point, 'name', '')} {getattr(point, 'status', '')}")
            if getattr(point, "status", "") == "failed":
                console.print(f"  failed {getattr(point, 'name', '')}: {getattr(point, 'reason', '')}")

        result = run_sweep(grid, out, machine=machine, timeout_s=args.timeout_s, on_point=on_point)
    done = [p for p in result.points if p.status == "done"]
    failed = [p for p in result.points if p.status == "failed"]
    for p in done:
        eff = f", efficiency {p.scaling_efficiency:.2f}" if p.scaling_efficiency is not None else ""
        ips = f"{p.images_per_s:.1f} img/s" if p.images_per_s is not None else "no throughput"
        console.print(f"  {p.name}: {ips}{eff}")
    echo(f"sweep: {len(done)} done, {len(failed)} failed, {len(skipped)} skipped; {out / 'sweep.json'}")
    if not args.no_report:
        path, why = render_report(result, out)
        echo(f"sweep report: {path}" if path else f"sweep: {why}")
    return 1 if failed and not done else 0
