"""``make gpu-check``: a few profiled steps of every strategy on a GPU machine, with NVML, and the checks
that only a GPU can answer. Run by benchmarks/gpu_check.sh (which installs dpprof without a venv).

Runs: single; dp with device_ids=[0] (DP's one-device path); dp with [0, 0] (DP's full path on one GPU);
ddp with 1 rank (NCCL); with 2+ GPUs also dp [0, 1] and ddp with 2 ranks. For each it prints the median
step time (ms), images/s and the profiler overhead ratio (profiled active steps / unprofiled steps), and
checks the run directory (trace with distributedInfo and CUDA kernels, NVML samples, DP phase marks).
Separately it checks that dpprof's marked DataParallel gives the same gradients as plain nn.DataParallel.
Exit status 1 if any check fails. ``--device cpu`` runs the same flow on a CPU (a smoke test of the script).
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from pathlib import Path
from typing import Any

MARKS = ("dpprof::dp_scatter", "dpprof::dp_replicate", "dpprof::dp_parallel_apply", "dpprof::dp_gather")


def profile_run(out: Path, name: str, extra: list[str], steps: int, model: str, batch: int) -> Path:
    """One ``dpprof profile`` run in this process (the CLI's profile subcommand alone)."""
    from dpprof.commands import profile as command

    p = argparse.ArgumentParser()
    command.prepare_parser(p)
    args = p.parse_args(["--model", model, "--steps", str(steps), "--batch-size", str(batch), "--train-size",
                         str(batch * (steps + 2)), "--test-size", str(batch), "--out", str(out),
                         "--run-name", name, "--quiet", *extra])
    rc = command.run(args)
    if rc != 0:
        raise RuntimeError(f"{name}: dpprof profile exited {rc}")
    return out / name


def trace_names(path: Path) -> tuple[dict[str, Any], set[str], int]:
    """(trace metadata, event names, number of GPU kernel events) of one gzipped trace."""
    with gzip.open(path, "rt") as fh:
        data = json.load(fh)
    names = {e.get("name", "") for e in data.get("traceEvents", [])}
    kernels = sum(1 for e in data.get("traceEvents", []) if e.get("cat") == "kernel")
    return data, names, kernels


def check_run(run: Path, ranks: int, cuda: bool, marks: tuple[str, ...] | None) -> list[str]:
    """Problems found in one run directory (empty = fine)."""
    problems = []
    m = json.loads((run / "manifest.json").read_text())
    if m["status"] != "complete":
        problems.append(f"status {m['status']}")
    traces = sorted((run / "traces").glob("rank*.pt.trace.json.gz"))
    if len(traces) != ranks:
        problems.append(f"{len(traces)} traces, expected {ranks}")
    for t in traces:
        data, names, kernels = trace_names(t)
        info = data.get("distributedInfo") or {}
        if info.get("world_size") != ranks:
            problems.append(f"{t.name}: distributedInfo {info}")
        if cuda and kernels == 0:
            problems.append(f"{t.name}: no GPU kernels recorded")
        if marks is not None:
            present = tuple(k for k in MARKS if k in names)
            if present != marks:
                problems.append(f"{t.name}: DP marks {present}, expected {marks}")
    nvml = [json.loads(line) for f in run.glob("nvml.*.jsonl") for line in f.read_text().splitlines()]
    samples = sum(1 for x in nvml if x.get("type") == "sample")
    if cuda and samples == 0:
        problems.append("no NVML samples: " + "; ".join(m.get("warnings", []))[:300])
    return problems


def gradients_match(device_ids: list[int], cuda: bool) -> tuple[bool, float]:
    """Same model, same batch: plain nn.DataParallel vs dpprof's MarkedDataParallel. (equal?, max |diff|)."""
    import torch
    from torch import nn

    from dpprof.collect.models import build_model
    from dpprof.collect.strategies import MarkedDataParallel

    dev = torch.device("cuda", device_ids[0]) if cuda else torch.device("cpu")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 3, 32, 32, generator=g).to(dev)
    y = torch.randint(0, 10, (32,), generator=g).to(dev)
    grads = []
    for cls in (nn.DataParallel, MarkedDataParallel):
        model = build_model("vgg16", seed=1).to(dev)
        wrapped = cls(model, device_ids=device_ids) if cuda else cls(model)
        nn.functional.cross_entropy(wrapped(x), y).backward()
        grads.append([p.grad.detach().float().cpu() for p in model.parameters()])
    diff = max(float((a - b).abs().max()) for a, b in zip(*grads, strict=True))
    same = all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(*grads, strict=True))
    return same, diff


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for the run directories")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--model", default="vgg16")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    args = ap.parse_args()
    import torch

    import dpprof

    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        print("gpu-check: no CUDA GPU visible", file=sys.stderr)
        return 2
    n = torch.cuda.device_count() if cuda else 0
    print(f"gpu-check: dpprof {dpprof.__version__} from {Path(dpprof.__file__).parent}, torch {torch.__version__}, "
          f"{n} GPU(s): {[torch.cuda.get_device_name(i) for i in range(n)]}", flush=True)
    dev = ["--device", args.device]
    runs: list[tuple[str, list[str], int, tuple[str, ...] | None]] = [
        ("single", ["--strategy", "single", *dev], 1, None),
        ("dp_1dev", ["--strategy", "dp", "--device-ids", "0", *dev], 1, MARKS[:1] if cuda else ()),
        ("dp_dup00", ["--strategy", "dp", "--device-ids", "0,0", *dev], 1, MARKS if cuda else ()),
        ("ddp1", ["--strategy", "ddp", "--nproc", "1", "--gpus", "1", *dev], 1, None),
    ]
    if n >= 2:
        runs += [("dp_01", ["--strategy", "dp", "--device-ids", "0,1", *dev], 1, MARKS),
                 ("ddp2", ["--strategy", "ddp", "--gpus", "2", *dev], 2, None)]
    if not cuda:  # the CPU smoke run: DP without GPU has one path only
        runs = [r for r in runs if r[0] != "dp_1dev"]
    args.out.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    failed = False
    for name, extra, ranks, marks in runs:
        t0 = time.perf_counter()
        try:
            run = profile_run(args.out, name, extra, args.steps, args.model, args.batch_size)
            problems = check_run(run, ranks, cuda, marks)
            m = json.loads((run / "manifest.json").read_text())
        except Exception as exc:  # report every run, not only the first failure
            problems, m = [f"{type(exc).__name__}: {exc}"], {}
        s, prof = m.get("summary") or {}, m.get("profiler") or {}
        results.append({"run": name, "wall_s": round(time.perf_counter() - t0, 1), "dp_mode": m.get("dp_mode"),
                        "step_ms_median": s.get("step_ms_median"), "images_per_s_median": s.get("images_per_s_median"),
                        "profiled_step_ms_median": prof.get("profiled_step_ms_median"),
                        "unprofiled_step_ms_median": prof.get("unprofiled_step_ms_median"),
                        "overhead_ratio": prof.get("overhead_ratio"), "problems": problems})
        failed |= bool(problems)
    ids = [0, 0] if cuda else []
    same, diff = gradients_match(ids, cuda)
    failed |= not same
    print(f"\n{'run':<10} {'ms/step':>9} {'img/s':>9} {'profiled':>9} {'unprof.':>9} {'ratio':>6}  {'wall s':>6}  check")
    for r in results:
        def f(v: Any, spec: str) -> str:
            return "-" if v is None else format(v, spec)
        print(f"{r['run']:<10} {f(r['step_ms_median'], '9.2f')} {f(r['images_per_s_median'], '9.0f')} "
              f"{f(r['profiled_step_ms_median'], '9.2f')} {f(r['unprofiled_step_ms_median'], '9.2f')} "
              f"{f(r['overhead_ratio'], '6.2f')}  {r['wall_s']:6.1f}  {'ok' if not r['problems'] else r['problems']}")
    print(f"\nmarked DP vs nn.DataParallel gradients (device_ids={ids}): "
          f"{'equal' if same else 'DIFFERENT'} (max |diff| {diff:.3g})")
    (args.out / "gpu_check.json").write_text(json.dumps(
        {"torch": torch.__version__, "gpus": [torch.cuda.get_device_name(i) for i in range(n)], "runs": results,
         "dp_gradients_equal": same, "dp_gradients_max_abs_diff": diff}, indent=1, sort_keys=True))
    print(f"gpu-check: {'FAILED' if failed else 'passed'}; runs and gpu_check.json under {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
