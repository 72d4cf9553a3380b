"""Check the what-if projection against a measurement: a 2-process gloo DDP step projected from a 1-process CPU
profile, beside the measured 2-process run (both by ``dpprof profile`` on this machine, one after the other).

The projection reads the 1-process run (compute, optimizer, loading, host; the collector's thread rule: each of
N processes gets cores ÷ N threads) and, when the 2-process run measured one, its allreduce probe (α, β);
the measured figure is the 2-process run's median unprofiled step. Prints both and the error.

Usage: ``python benchmarks/projection_check.py [--model resnet18] [--batch 64] [--steps 14] [--keep DIR]``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import msgspec  # noqa: E402

from dpprof.analyze.pipeline import analyze  # noqa: E402
from dpprof.analyze.projection import project  # noqa: E402
from dpprof.manifest import EMPTY, read_manifest  # noqa: E402


def profile(out: Path, name: str, strategy: str, nproc: int, model: str, batch: int, steps: int) -> Path:
    argv = [sys.executable, "-m", "dpprof.cli", "profile", "--strategy", strategy, "--model", model, "--device", "cpu",
            "--batch-size", str(batch), "--steps", str(steps), "--out", str(out), "--run-name", name, "--quiet"]
    if strategy == "ddp":
        argv += ["--nproc", str(nproc)]
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL)
    return out / name


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=14)
    p.add_argument("--keep", type=Path, default=None, help="keep the two run directories here")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.keep or Path(tmp)
        one = profile(out, "one", "single", 1, args.model, args.batch, args.steps)
        two = profile(out, "two", "ddp", 2, args.model, args.batch, args.steps)
        m1, m2 = read_manifest(one)[0] or EMPTY, read_manifest(two)[0] or EMPTY
        measured = m2.profiler.unprofiled_step_ms_median or m2.summary.step_ms_median
        manifest = m1
        if m2.comm_probe is not None and m2.comm_probe.alpha_us is not None:
            manifest = msgspec.structs.replace(m1, comm_probe=m2.comm_probe)  # 1 process: no peer to probe
        proj = project(analyze([one]), manifest, max_gpus=2,
                       measured={("ddp", 2): float(measured)} if measured else None)
        if not proj["available"]:
            print(f"projection unavailable: {proj['reason']}")
            return 1
        row = next(r for r in proj["rows"] if r["strategy"] == "ddp" and r["gpus"] == 2)
        one_ms = m1.profiler.unprofiled_step_ms_median or m1.summary.step_ms_median or float("nan")
        print(f"projection check ({args.model}, global batch {args.batch}, CPU, {m1.hardware.cpus} cores)")
        print(f"  1-process step, measured (unprofiled median): {one_ms:.3f} ms; profiler deflation "
              f"{proj['inputs']['profiler_deflation']}")
        print(f"  2-process gloo DDP step: projected {row['step_ms']:.3f} ms (compute {row['compute_ms']:.3f}, "
              f"fixed {row['fixed_ms']:.3f}, exposed allreduce {row['comm_ms']:.3f}); measured {measured:.3f} ms; "
              f"error {row.get('error_pct')} %")
        print(f"  communication model: {proj['inputs']['comm_source']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
