"""What-if terms the verdicts share: the ideal step and the excess over it, DP's backend and its bytes (pure).

All figures are means per profiled step, µs (bytes per step). Each function returns its terms so that the
verdicts can list them in their evidence.

* **DP ideal** (``dp_excess``): with a single-GPU baseline run, the baseline's compute ÷ N (scaled to this run's
  batch when it differs) plus the data loading and host time DP really incurs per step (measured on the output
  device in the DP run: DP loads the whole global batch in one process, so that is not divided by N); without a
  baseline, an estimate: the fastest replica's compute (GPU0's own replica is its compute less the serial work
  it does alone; autotuning kernels left out: a slow GPU must not set the ideal) plus the same measured data
  loading and host time. GPU0's extra serial work (loss over the whole batch,
  optimizer) is *not* in either ideal: it is part of what the data-path question tests.
* **Collective ideal** (``collective_excess``, DDP/FSDP/distributed): per rank, its own compute, data loading and
  host time; the excess is the rest of its step (exposed transfer, waiting, copies, idle), averaged over ranks.
* **Material excess**: an excess is judged against the step's *device side* (the step less its host time and
  data loading, which are in the ideal), so that a host-bound step does not make device-side costs look small.
* **DP backend and bytes through GPU0** (``dp_backend``, ``dp_bytes``): with NCCL (distinct devices) DP's
  broadcast and reduce are ring/tree collectives (torch/csrc/cuda/comm.cpp -> torch/csrc/cuda/nccl.cpp), so GPU0's
  link carries about one copy of the parameters out and one in whatever N is; the copy fallback (no NCCL, or
  repeated devices) sends (N-1) copies from GPU0. Scatter and gather move the batch's inputs/outputs, measured
  from the trace's peer copies when it has them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dpprof.analyze.collectives import LOCAL_GROUP
from dpprof.analyze.diag_figures import (
    INPUT_BYTES_PER_IMAGE,
    OUTPUT_BYTES_PER_IMAGE,
    Context,
    Row,
    gpu_rows,
    mean,
    reference_row,
    rows,
)
from dpprof.analyze.model import Analysis
from dpprof.manifest import Manifest


@dataclass(frozen=True)
class Excess:
    """A step, its ideal and the difference, with the terms and where the ideal came from."""

    step_us: float
    ideal_us: float
    source: str  # "baseline" | "estimate"
    terms: Mapping[str, float] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    #: The step less its host time and data loading (both in the ideal): what the devices' own work and waiting
    #: took. Whether an excess is material is judged against it, so that a host-bound step (say 80 % host) does
    #: not make every device-side cost look small.
    device_side_us: float = 0.0

    @property
    def excess_us(self) -> float:
        return max(0.0, self.step_us - self.ideal_us)

    @property
    def excess_pct(self) -> float:
        return 100.0 * self.excess_us / self.step_us if self.step_us > 0 else 0.0

    @property
    def excess_pct_of_device_side(self) -> float:
        return 100.0 * self.excess_us / self.device_side_us if self.device_side_us > 0 else 0.0


def model_compute(r: Row) -> float:
    """A row's compute without the kernels of an autotuning loop (dpprof.analyze.autotune)."""
    return max(0.0, r.categories_us["compute"] - r.autotune_us)


def dp_excess(ctx: Context, ref: Row, others: list[Row]) -> Excess:
    """The DP step on the output device against its ideal (module docstring)."""
    loading, host = ref.categories_us["data_loading"], ref.categories_us["host"]
    base = reference_row(ctx.baseline) if ctx.baseline is not None else None
    n = 1 + len({r.device for r in others})
    if base is not None:
        scale, notes = 1.0, tuple[str, ...]()
        b, bb = ctx.manifest.config.batch_size, ctx.baseline_manifest.config.batch_size
        if b and bb and b != bb:
            scale = b / bb
            notes = (f"baseline batch {bb} scaled linearly to {b}",)
        per_gpu = model_compute(base) * scale / n
        return Excess(ref.step_us, per_gpu + loading + host, "baseline",
                      {"compute_per_gpu_us": per_gpu, "data_loading_us": loading, "host_us": host}, notes,
                      ref.step_us - loading - host)
    # GPU0's own replica: its compute less the serial work it does alone (loss, optimizer).
    own = max(0.0, model_compute(ref) - (ref.gpu0_serial_us or 0.0))
    replica = min([own, *(model_compute(r) for r in others)])
    return Excess(ref.step_us, replica + loading + host, "estimate",
                  {"replica_compute_us": replica, "data_loading_us": loading, "host_us": host},
                  device_side_us=ref.step_us - loading - host)


def slow_output_device_us(analysis: Analysis, ref: Row, others: list[Row]) -> float:
    """When the straggler summary names DP's output device itself as a slow GPU (``dpprof.analyze.matching``: its own
    replica computes beyond the others'), how much longer it computes than the other GPUs' mean, optimizer left out
    (µs per step); 0 otherwise. Its lone tail of compute is then a slow device, not DP's serial work."""
    sm = analysis.straggler_summary
    if sm.get("verdict") != "slow_gpu" or sm.get("participant") != f"GPU {ref.device}" or not others:
        return 0.0
    rest = sum(model_compute(r) for r in others) / len(others)
    return max(0.0, model_compute(ref) - ref.optimizer_us - rest)


def collective_excess(ctx: Context) -> Excess:
    """Per rank: step against its own compute, data loading and host time; averaged over the ranks."""
    rs = gpu_rows(ctx.analysis) or rows(ctx.analysis)
    ideal = [model_compute(r) + r.categories_us["data_loading"] + r.categories_us["host"] for r in rs]
    return Excess(mean([r.step_us for r in rs]), mean(ideal), "estimate",
                  {"compute_us": mean([model_compute(r) for r in rs]),
                   "data_loading_us": mean([r.categories_us["data_loading"] for r in rs]),
                   "host_us": mean([r.categories_us["host"] for r in rs])},
                  device_side_us=mean([r.step_us - r.categories_us["data_loading"] - r.categories_us["host"]
                                       for r in rs]))


def dp_backend(analysis: Analysis) -> tuple[str, str]:
    """("nccl" | "copies", why): how DP's broadcast and reduce crossed the GPUs in this trace."""
    local = [c for c in analysis.collectives if c.group == LOCAL_GROUP]
    if local:
        return "nccl", f"{len(local)} NCCL collectives across the GPUs (DP's broadcast/reduce)"
    return "copies", "no NCCL collective across the GPUs: DP's copy fallback (repeated devices, or no NCCL)"


def dp_bytes(analysis: Analysis, manifest: Manifest, n: int, backend: str) -> dict[str, Any]:
    """Bytes through GPU0's link per DP step, per term, for the backend (module docstring)."""
    params = manifest.model_info.param_bytes
    buffers = manifest.model_info.buffers_bytes or 0
    out: dict[str, Any] = {"backend": backend}
    moved = sum(r.ptop_bytes for r in gpu_rows(analysis))
    if moved > 0:
        out["scatter_gather_bytes"] = int(moved)
        out["scatter_gather_source"] = "measured: the trace's peer copies per step"
    else:
        batch = manifest.config.batch_size
        if batch:
            out["scatter_gather_bytes"] = int(batch * (INPUT_BYTES_PER_IMAGE + OUTPUT_BYTES_PER_IMAGE) * (n - 1) / n)
            out["scatter_gather_source"] = "estimated: CIFAR-shaped inputs (3x32x32 fp32), 10 fp32 outputs per image"
    if params is not None and params > 0:
        copies = 1 if backend == "nccl" else n - 1
        out["broadcast_bytes"] = int((params + buffers) * copies)
        out["reduce_bytes"] = int(params * copies)
        out["params_source"] = ("manifest model_info; NCCL ring/tree: about one copy each way through GPU0"
                                if backend == "nccl" else "manifest model_info; copy fallback: (N-1) copies from GPU0")
    out["total_bytes"] = sum(v for k, v in out.items() if k.endswith("_bytes"))
    return out
