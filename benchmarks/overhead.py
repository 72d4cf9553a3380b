"""Collection overhead: what dpprof's harness, its profiler window and its NVML sampler cost per step.

Three A/B comparisons on the same model, batch and data loader, each timed by the harness's own step
clock (``dpprof.collect.train.StepClock``: host clock on the CPU, CUDA events on a GPU):

- harness:  a bare PyTorch loop (A) vs ``dpprof.collect.train.train_loop`` (B), both unprofiled;
- profiler: ``train_loop`` unprofiled (A) vs ``train_loop`` under dpprof's ``TraceWindow`` with the
  default settings (CPU+CUDA activities, all threads, no shapes/stack), active steps only (B). The
  step that exports the trace is left out of B and reported on its own (``export_s``);
- nvml:     ``train_loop`` without (A) vs with ``NvmlSampler`` at its default period (B). Without an
  NVIDIA driver (this CPU machine) a fake ``pynvml`` stands in, each call sleeping ``--fake-nvml-call-us``
  (NVML calls release the GIL as the sleep does): what is measured is the sampler thread's own cost.

Step times drift 10-40 % from run to run, more than the effects measured, so A and B alternate in
blocks (ABBA...), each block's median step time is taken, and the figure is the mean of the B/A ratios of
adjacent pairs with a Student-t 95 % confidence interval. Usage:
``python benchmarks/overhead.py [--model tiny|vgg16] [--pairs 8] [--steps 12] [--json OUT]``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from procstats import mean_ci95  # noqa: E402

from dpprof.errors import DpprofError  # noqa: E402
from dpprof.rundir import write_json  # noqa: E402

TARGETS = {"harness_ratio_max": 1.03, "nvml_ratio_max": 1.01}
DEFAULT_BATCH = {"tiny": 128, "vgg16": 32, "vgg16-tv": 32, "resnet18": 32}
DEFAULT_STEPS = {"tiny": 12, "vgg16": 3, "vgg16-tv": 3, "resnet18": 3}
WARMUP_STEPS = 2  # per block, untimed: the loader's first batch and allocator warm-up


class Bench:
    """Model, data and the two ways of running a block of steps; figures are ms per step."""

    def __init__(self, model_name: str, batch: int, steps: int, seed: int = 0) -> None:
        import torch

        from dpprof.collect.config import RunConfig
        from dpprof.collect.data import build_loaders
        from dpprof.collect.models import build_model
        from dpprof.collect.strategies import wrap_single

        self.torch = torch
        self.cfg = RunConfig()
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.steps, self.batch = steps, batch
        n = WARMUP_STEPS + steps
        # Enough batches for one block per epoch; a tiny held-out set: train_loop evaluates per "epoch".
        self.loaders = build_loaders("synthetic", root=None, download=False, train_size=batch * (n + 1),
                                     test_size=batch, seed=seed, batch_size=batch, workers=self.cfg.workers,
                                     pin_memory=self.device.type == "cuda")
        self.placement = wrap_single(build_model(model_name, seed), self.device)
        self.model = self.placement.module
        self.bare_opt = torch.optim.SGD(self.model.parameters(), lr=self.cfg.lr, momentum=self.cfg.momentum,
                                        weight_decay=5e-4)

    def bare_block(self) -> list[float]:
        """A plain loop (load, copy, forward, loss, backward, step), timed by the same StepClock."""
        from dpprof.collect.train import StepClock

        torch, dev = self.torch, self.device
        crit = torch.nn.CrossEntropyLoss()
        clock = StepClock(dev, exact=False)
        batches = iter(self.loaders.train)
        self.model.train()
        for s in range(WARMUP_STEPS + self.steps):
            clock.start(s)
            x, y = next(batches)
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            loss = crit(self.model(x), y)
            self.bare_opt.zero_grad(set_to_none=True)
            loss.backward()
            self.bare_opt.step()
            clock.stop()
        return [ms for s, ms in clock.ready(wait=True) if s >= WARMUP_STEPS]

    def harness_block(self, window: Any | None = None) -> list[dict[str, Any]]:
        """``train_loop`` for one block, as ``dpprof profile`` calls it; its per-step records."""
        from dpprof.collect.train import LoopSetup, StopRequest, train_loop

        cfg = self.cfg
        setup = LoopSetup(rank=0, world_size=1, global_batch=self.batch, steps=WARMUP_STEPS + self.steps,
                          epochs=None, lr=cfg.lr, momentum=cfg.momentum, loss_every=cfg.loss_every,
                          exact_timing=False)
        if window is not None:
            setup.is_profiled = window.is_active_step
            setup.is_profiler_on = window.is_profiler_on
        records: list[dict[str, Any]] = []
        train_loop(setup, self.model, self.model, self.loaders, self.placement.input_device,
                   self.placement.output_device, window, StopRequest(), records.append, lambda _: None)
        return records

    def harness_ms(self) -> list[float]:
        return [r["wall_ms"] for r in self.harness_block() if r["step"] >= WARMUP_STEPS]

    def profiled_ms(self, tmp: Path, export_s: list[float]) -> list[float]:
        """Active steps under dpprof's TraceWindow (warm-up steps = the block's warm-up)."""
        from dpprof.collect.profiler import TraceWindow

        cfg = self.cfg
        window = TraceWindow(tmp, 0, wait=WARMUP_STEPS - 1, warmup=1, active=self.steps,
                             use_cuda=self.device.type == "cuda", all_threads=cfg.profile_all_threads,
                             record_shapes=cfg.record_shapes, with_stack=cfg.with_stack,
                             distributed_info={"backend": None, "rank": 0, "world_size": 1})
        with window:
            recs = self.harness_block(window)
        for f in window.files:
            f.unlink()
        active = [r for r in recs if r["profiled"]]
        if len(active) < 2:
            raise DpprofError(f"the profiler window recorded {len(active)} steps; need at least 2")
        # The last active step's window.step() exports the trace: a one-off cost, reported apart.
        *steps, last = active
        mean = statistics.fmean(r["wall_ms"] for r in steps)
        export_s.append(max(0.0, (last["wall_ms"] - mean) / 1e3))
        return [r["wall_ms"] for r in steps]

    def nvml_ms(self, tmp: Path) -> list[float]:
        from dpprof.collect.nvml import NvmlSampler

        with NvmlSampler(tmp / "nvml.bench.jsonl", "bench", period_ms=self.cfg.nvml_period_ms) as sampler:
            ms = self.harness_ms()
        if not sampler.available:
            raise DpprofError(f"NVML sampler did not run: {sampler.warnings}")
        return ms


def fake_nvml(call_us: float) -> types.ModuleType:
    """Enough of pynvml for NvmlSampler: one GPU, constant readings, each call sleeping ``call_us``."""
    nv = types.ModuleType("pynvml")
    delay = call_us / 1e6

    def call(value: Any) -> Callable[..., Any]:
        def f(*_: Any) -> Any:
            time.sleep(delay)
            return value
        return f

    util = types.SimpleNamespace(gpu=50, memory=20)
    mem = types.SimpleNamespace(used=1 << 30, total=1 << 34, free=(1 << 34) - (1 << 30))
    for name, value in {
        "nvmlInit": None, "nvmlShutdown": None, "nvmlSystemGetDriverVersion": "fake",
        "nvmlDeviceGetCount": 1, "nvmlDeviceGetHandleByIndex": object(), "nvmlDeviceGetUUID": "GPU-fake",
        "nvmlDeviceGetName": "fake GPU", "nvmlDeviceGetUtilizationRates": util,
        "nvmlDeviceGetMemoryInfo": mem, "nvmlDeviceGetPowerUsage": 100_000, "nvmlDeviceGetClockInfo": 1500,
        "nvmlDeviceGetPcieThroughput": 1000,
    }.items():
        setattr(nv, name, call(value))
    nv.NVML_CLOCK_SM, nv.NVML_PCIE_UTIL_TX_BYTES, nv.NVML_PCIE_UTIL_RX_BYTES = 1, 0, 1
    nv.NVML_ERROR_NOT_SUPPORTED = 3
    return nv


@contextlib.contextmanager
def nvml_or_fake(call_us: float) -> Iterator[str]:
    """Yields what the NVML comparison runs against: the real NVML when it starts, else the fake."""
    from dpprof.collect.nvml import import_nvml

    nv, reason = import_nvml()
    if nv is not None:
        nv.nvmlShutdown()
        yield "real NVML"
        return
    saved = sys.modules.get("pynvml")
    sys.modules["pynvml"] = fake_nvml(call_us)
    try:
        yield f"fake pynvml, {call_us:g} us per call (real NVML unavailable: {reason})"
    finally:
        if saved is None:
            sys.modules.pop("pynvml", None)
        else:
            sys.modules["pynvml"] = saved


def ab_blocks(run_a: Callable[[], list[float]], run_b: Callable[[], list[float]], pairs: int) -> dict:
    """Alternate A and B blocks (AB, BA, AB, ...); per pair the ratio of median step times B/A.

    The block's median, not its mean: on a shared machine a neighbour's burst slows a few steps of one
    block by 2-3x, which says nothing about dpprof; a cost paid on every step moves the median alike.
    """
    a_means: list[float] = []
    b_means: list[float] = []
    for i in range(pairs):
        if i % 2 == 0:
            a = statistics.median(run_a())
            b = statistics.median(run_b())
        else:
            b = statistics.median(run_b())
            a = statistics.median(run_a())
        a_means.append(a)
        b_means.append(b)
    return ab_summary(a_means, b_means)


def ab_summary(a_means: list[float], b_means: list[float]) -> dict:
    """Per pair the ratio B/A of block medians; their mean with a 95 % confidence interval."""
    pairs = len(a_means)
    ratios = [b / a for a, b in zip(a_means, b_means, strict=True)]
    mean, lo, hi = mean_ci95(ratios)
    return {"pairs": pairs, "a_ms_median_mean": round(statistics.fmean(a_means), 3),
            "b_ms_median_mean": round(statistics.fmean(b_means), 3),
            "a_steps_per_s": round(1e3 / statistics.fmean(a_means), 2),
            "b_steps_per_s": round(1e3 / statistics.fmean(b_means), 2),
            "ratio_mean": round(mean, 4), "ratio_ci95": [round(lo, 4), round(hi, 4)],
            "ratios": [round(r, 4) for r in ratios]}


def line(name: str, r: dict, target: float | None) -> str:
    lo, hi = r["ratio_ci95"]
    text = (f"  {name:<9} A {r['a_ms_median_mean']:8.2f} ms/step  B {r['b_ms_median_mean']:8.2f} ms/step  "
            f"B/A {r['ratio_mean']:.3f} (95% CI {lo:.3f}..{hi:.3f}, {r['pairs']} pairs)")
    if target is not None:
        verdict = "met" if hi <= target else ("not met" if lo > target else "inconclusive (CI spans it)")
        text += f"  target <= {target:.2f}: {verdict}"
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny", choices=sorted(DEFAULT_BATCH), help="model (default tiny)")
    p.add_argument("--batch", type=int, help="batch size (default 128 for tiny, 32 otherwise)")
    p.add_argument("--steps", type=int, help="timed steps per block (default 12 for tiny, 3 otherwise)")
    p.add_argument("--pairs", type=int, default=8, help="A/B block pairs per comparison (default 8)")
    p.add_argument("--only", default="harness,profiler,nvml", help="comma list of harness,profiler,nvml")
    p.add_argument("--fake-nvml-call-us", type=float, default=18.0,
                   help="latency of one fake NVML call (default 18: ~0.11 ms per 6-field sample on an H200)")
    p.add_argument("--json", type=Path, help="also write the figures here (JSON)")
    args = p.parse_args(argv)
    only = [x for x in args.only.split(",") if x]
    if args.pairs < 2:
        p.error("--pairs must be >= 2 (a confidence interval needs two ratios)")
    try:
        report = run(args, only)
        if args.json:
            write_json(args.json, report)
    except DpprofError as exc:
        print(f"overhead: error: {exc}", file=sys.stderr)
        return 2
    return 0


def run(args: argparse.Namespace, only: list[str]) -> dict:
    import torch

    batch = args.batch or DEFAULT_BATCH[args.model]
    steps = args.steps or DEFAULT_STEPS[args.model]
    t0 = time.perf_counter()
    bench = Bench(args.model, batch, steps)
    device = torch.cuda.get_device_name(0) if bench.device.type == "cuda" else \
        f"CPU ({torch.get_num_threads()} torch threads)"
    report: dict[str, Any] = {"model": args.model, "batch": batch, "steps_per_block": steps,
                              "device": device, "torch": torch.__version__, "targets": TARGETS}
    print(f"overhead: model {args.model}, batch {batch}, {steps} steps/block, {args.pairs} pairs, {device}")
    # One untimed block of each kind first: one-off costs (allocator growth, first-use kernel selection,
    # the optimizer's momentum buffers) would otherwise land in the first pair only.
    bench.bare_block()
    bench.harness_ms()
    with tempfile.TemporaryDirectory(prefix="dpprof-overhead-") as tmp_name:
        tmp = Path(tmp_name)
        if "harness" in only:
            r = report["harness"] = ab_blocks(bench.bare_block, bench.harness_ms, args.pairs)
            print(line("harness", r, TARGETS["harness_ratio_max"]) + "   (A bare loop, B dpprof train_loop)")
        if "profiler" in only:
            export_s: list[float] = []
            r = report["profiler"] = ab_blocks(bench.harness_ms, lambda: bench.profiled_ms(tmp, export_s),
                                               args.pairs)
            r["export_s_median"] = round(statistics.median(export_s), 3)
            print(line("profiler", r, None) + f"   trace export {r['export_s_median']:.2f} s per window")
        if "nvml" in only:
            with nvml_or_fake(args.fake_nvml_call_us) as what:
                r = report["nvml"] = ab_blocks(bench.harness_ms, lambda: bench.nvml_ms(tmp), args.pairs)
                r["nvml"] = what
                r["period_ms"] = bench.cfg.nvml_period_ms
            print(line("nvml", r, TARGETS["nvml_ratio_max"]) + f"   ({what}, every {r['period_ms']} ms)")
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    report["loadavg_1_5_15_after"] = [round(x, 2) for x in os.getloadavg()]
    print(f"  ({report['wall_s']:.0f} s; load average now {report['loadavg_1_5_15_after'][0]:.1f} "
          f"on {os.cpu_count()} CPUs)")
    return report


if __name__ == "__main__":
    sys.exit(main())
