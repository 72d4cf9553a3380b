"""``make gpu-check``: every GPU path of dpprof once, on one machine, in about 5 minutes (issue 15).

Run by benchmarks/gpu_check.sh (which installs dpprof without a venv). Steps, each in its own process, none
stopping the others: ``dpprof profile`` single, DP ``[0]``, DP ``[0, 0]`` and DDP with one NCCL rank (with 2+
GPUs also DP ``[0, 1]`` and 2-rank DDP), each with the profiler and NVML; ``dpprof run`` on examples/single.py,
dp.py, ddp.py and fsdp.py (one rank); the gradient check (dpprof's marked DP against plain nn.DataParallel on
``[0, 0]``); ``dpprof analyze`` and ``dpprof report`` on every run directory, ``dpprof perfetto`` on one;
benchmarks/overhead.py on VGG16 (harness, profiler and NVML A/B ratios). Then one summary table (printed and
``gpu_check.json``) and one archive (``gpu_check.tar.gz``: gpu_check_report.py) in ``--dest`` ($OUT when set).

Every check passes, fails, or is skipped with its reason (``--device cpu``, the dry run: the GPU-only checks
are skipped, not passed). A global ``--budget-s`` keeps the whole within the device's time: a step that no
longer fits is skipped (time budget), and the summary and archive are always written. Exit 1 if a check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
EXAMPLES = REPO / "examples"

from gpu_check_inspect import Outcome, Plan, check  # noqa: E402
from gpu_check_plan import make_plans  # noqa: E402
from gpu_check_report import SUMMARY, details, provenance, summary_json, table, write_archive  # noqa: E402
from gpu_check_steps import (  # noqa: E402
    Budget,
    Interrupted,
    analyze_and_report,
    do_run,
    end_live,
    gradient_step,
    overhead_step,
    perfetto_step,
)


def gradient_check() -> int:
    """Same model, same batch, deterministic kernels: plain nn.DataParallel vs dpprof's MarkedDataParallel
    on device_ids [0, 0] (DP's full path: scatter, replicate, parallel_apply, gather, ReduceAddCoalesced,
    torch/nn/parallel/data_parallel.py). Prints one JSON line."""
    import torch
    from torch import nn

    from dpprof.collect.models import build_model
    from dpprof.collect.strategies import MarkedDataParallel

    # cudnn.benchmark picks algorithms per thread (DP's fresh replica threads re-pick them), and TF32 rounds:
    # both would make two identical computations differ. Deterministic, full-precision kernels instead.
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    dev = torch.device("cuda", 0)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 3, 32, 32, generator=g).to(dev), torch.randint(0, 10, (32,), generator=g).to(dev)
    grads = []
    for cls in (nn.DataParallel, MarkedDataParallel):
        model = build_model("vgg16", seed=1).to(dev)
        nn.functional.cross_entropy(cls(model, device_ids=[0, 0])(x), y).backward()
        grads.append([p.grad.detach().float().cpu() for p in model.parameters() if p.grad is not None])
    pairs = list(zip(*grads, strict=True))
    print(json.dumps({"equal": bool(pairs) and all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in pairs),
                      "max_abs_diff": max(float((a - b).abs().max()) for a, b in pairs),
                      "max_abs_grad": max(float(a.abs().max()) for a, _ in pairs)}))
    return 0

def run_steps(outcomes: list[Outcome], plans: Sequence[Plan], only: set[str] | None, work: Path, cuda: bool,
              budget: Budget) -> None:
    """Every step, in order of importance for the archive (runs, gradients, analyze/report, perfetto, then the
    overhead figures); each appends its outcome as it ends."""
    for plan in plans:
        o = do_run(plan, work, cuda, budget)
        print(f"gpu-check: {o.name}: {o.status} in {o.wall_s} s; {o.failed} check(s) failed", flush=True)
        outcomes.append(o)
    if only is None or "gradients" in only:
        outcomes.append(gradient_step(work, cuda, budget))
    by_name = {p.name: p for p in plans}
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for job in [pool.submit(analyze_and_report, o, by_name[o.name], work, cuda, budget)
                    for o in outcomes if o.name in by_name and (work / "runs" / o.name / "manifest.json").is_file()]:
            job.result()
    print("gpu-check: analyze and report done", flush=True)
    if only is None or "perfetto" in only:
        outcomes.append(perfetto_step(outcomes, work, cuda, budget))
    if only is None or "overhead" in only:
        outcomes.append(overhead_step(work, cuda, budget))


def finish(outcomes: list[Outcome], prov: dict[str, Any], work: Path, dest: Path, gpus: int) -> int:
    """The summary (JSON in the archive and in ``dest``, the table on stdout) and the archive."""
    costs = sorted(o.figures["nvml_sample_cost_us"] for o in outcomes
                   if isinstance(o.figures.get("nvml_sample_cost_us"), (int, float)))
    cost = costs[len(costs) // 2] if costs else None
    summary = summary_json(outcomes, prov, {"nvml_sample_cost_us_median": cost, "gpus": gpus, "provenance": prov})
    run_names = [o.name for o in outcomes if o.kind in ("profile", "run") and (work / "runs" / o.name).is_dir()]
    (work / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True))
    summary["archive"] = write_archive(work, dest, run_names)
    (work / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True))  # with what was left out
    summary["archive"] = write_archive(work, dest, run_names, left_out=summary["archive"]["left_out"])
    (dest / SUMMARY).write_text(json.dumps(summary, indent=1, sort_keys=True))
    print("\n" + "\n".join(table(outcomes)))
    for line in details(outcomes):
        print(line)
    ov = next((o for o in outcomes if o.name == "overhead" and o.status == "ran"), None)
    if ov is not None:
        f = ov.figures
        print("overhead (B/A, 95% CI): " + "; ".join(
            f"{k} {f[k + '_ratio']:.3f} ({f[k + '_ratio_ci95'][0]:.3f}..{f[k + '_ratio_ci95'][1]:.3f})"
            for k in ("harness", "profiler", "nvml") if k + "_ratio" in f) + f"; NVML: {f.get('nvml_against')}")
    print("NVML sample cost: " + (f"{cost} us per GPU sample (median over the runs' samplers)" if cost is not None
                                  else "not measured (no NVML samples)"))
    a = summary["archive"]
    print(f"archive: {a['path']} ({a['bytes'] / 2**20:.2f} MiB, {a['files']} files"
          + (f"; left out to fit: {a['left_out']}" if a["left_out"] else "") + f"); summary: {dest / SUMMARY}")
    c = summary["counts"]
    print(f"gpu-check: {'FAILED' if c['failed'] else 'passed'}: {c['passed']} passed, {c['failed']} failed, "
          f"{c['skipped']} skipped, {c['inconclusive']} inconclusive ({prov['device']})")
    return 1 if c["failed"] else 0


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: the dry run (default cuda)")
    p.add_argument("--dest", type=Path, help="where the archive, summary and log go (default $OUT, else "
                   "traces/gpu-check)")
    p.add_argument("--work", type=Path, help="folder for the run directories (default: a new temporary one)")
    p.add_argument("--budget-s", type=float, default=300, help="the whole check's seconds (default 300)")
    p.add_argument("--only", help="comma list of steps to run (run names, gradients, perfetto, overhead)")
    p.add_argument("--command", default=os.environ.get("GPU_CHECK_COMMAND", ""),
                   help="the command that started the check, for the provenance")
    p.add_argument("--gradient-check", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    if args.gradient_check:
        return gradient_check()
    import torch

    import dpprof

    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        print("gpu-check: error: no CUDA GPU visible (--device cpu runs the dry run)", file=sys.stderr)
        return 2
    gpus = torch.cuda.device_count() if cuda else 0
    plans = make_plans(cuda, gpus, EXAMPLES, Path("runs"))
    only = set(args.only.split(",")) if args.only else None
    unknown = sorted((only or set()) - {p.name for p in plans} - {"gradients", "perfetto", "overhead"})
    if unknown:
        print(f"gpu-check: error: --only {','.join(unknown)}: no such step (steps: "
              f"{','.join(p.name for p in plans)},gradients,perfetto,overhead)", file=sys.stderr)
        return 2
    plans = [p for p in plans if only is None or p.name in only]
    budget = Budget(args.budget_s)
    dest = args.dest or Path(os.environ.get("OUT") or REPO / "traces" / "gpu-check")
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    for sub in ("logs", "runs", "analysis", "reports", "perfetto"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    dest.mkdir(parents=True, exist_ok=True)
    command = args.command or shlex.join(["python", "benchmarks/gpu_check.py", *sys.argv[1:]])
    prov = provenance(REPO, args.device, command, sys.argv)
    (work / "provenance.json").write_text(json.dumps(prov, indent=1, sort_keys=True))
    print(f"gpu-check: dpprof {dpprof.__version__} from {Path(dpprof.__file__).parent}, torch {torch.__version__}, "
          f"CUDA {prov['versions'].get('cuda')}, driver {prov['versions'].get('driver')}, "
          f"{gpus} GPU(s) {[g.get('name') for g in prov['hardware'].get('gpus', [])]}; work folder {work}", flush=True)
    outcomes: list[Outcome] = []
    signal.signal(signal.SIGTERM, end_live)
    try:
        run_steps(outcomes, plans, only, work, cuda, budget)
    except Interrupted as exc:  # the shell's last-resort timeout: keep what finished
        print(f"gpu-check: stopped by signal {exc} before the end; the summary and archive hold what finished")
        stop = Outcome("stopped", "check", status="stopped")
        stop.checks.append(check("finished within the time limit", False, f"signal {exc} (GPU_CHECK_TIMEOUT_S)"))
        outcomes.append(stop)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return finish(outcomes, prov, work, dest, gpus)


if __name__ == "__main__":
    sys.exit(main())
