"""Measured figures of a run that the diagnosis and the projection read (pure, no I/O).

Every figure is a mean per profiled step (µs) of one ``(rank, device)`` row of ``Analysis.steps``;
bytes are per step; bandwidths GB/s (1e9 bytes per second). NVML figures are summarised per GPU from
``dpprof.trace.nvml_samples.NvmlData`` (read by attribute, so a reader without some fields still works).
"""

from __future__ import annotations

import functools
import operator
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dpprof.analyze.model import CATEGORIES, Analysis
from dpprof.analyze.sweep_model import SweepResult
from dpprof.manifest import EMPTY, Manifest
from dpprof.trace.nvml_samples import CLOCK_EVENT_BITS
from dpprof.vocabulary import DP_PHASES

#: NVML clock event reasons that slow a busy GPU: power cap, hardware slowdown, thermal slowdowns, power brake.
SLOWDOWN_REASONS = functools.reduce(operator.or_, (CLOCK_EVENT_BITS[k] for k in (
    "sw_power_cap", "hw_slowdown", "sw_thermal_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown")))
#: CIFAR-shaped workloads (dpprof's models): 3×32×32 fp32 inputs, 10 fp32 logits per image.
INPUT_BYTES_PER_IMAGE = 3 * 32 * 32 * 4
OUTPUT_BYTES_PER_IMAGE = 10 * 4


@dataclass(frozen=True)
class Row:
    """Means over the profiled steps of one (rank, device) row; µs."""

    rank: int
    device: int
    steps: int
    step_us: float
    categories_us: Mapping[str, float]
    busy_us: float
    gpu0_only_us: float | None
    overlapped_us: float
    dp_phase_gpu_us: Mapping[str, float] = field(default_factory=dict)
    ptop_bytes: float = 0.0
    dp_host_us: Mapping[str, float] = field(default_factory=dict)
    peer_wait_on_us: Mapping[str, float] = field(default_factory=dict)
    peer_wait_dp_us: float = 0.0
    gpu0_serial_us: float | None = None
    autotune_us: float = 0.0
    autotune_kernels: float = 0.0
    optimizer_us: float = 0.0
    host_in_dp_us: float = 0.0

    def pct(self, us: float) -> float:
        """``us`` as a percentage of this row's mean step."""
        return 100.0 * us / self.step_us if self.step_us > 0 else 0.0

    @property
    def dp_phases_us(self) -> float:
        return sum(self.categories_us.get(c, 0.0) for c in DP_PHASES)


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def rows(analysis: Analysis) -> list[Row]:
    """One Row per (rank, device) that has steps, sorted by (rank, device)."""
    groups: dict[tuple[int, int], list[Any]] = {}
    for s in analysis.steps:
        groups.setdefault((s.rank, s.device), []).append(s)
    out = []
    for (rank, device), steps in sorted(groups.items()):
        g0 = [s.gpu0_only_us for s in steps if s.gpu0_only_us is not None]
        out.append(Row(
            rank=rank, device=device, steps=len(steps),
            step_us=mean([s.duration_us for s in steps]),
            categories_us={c: mean([s.categories_us.get(c, 0.0) for s in steps]) for c in CATEGORIES},
            busy_us=mean([s.busy_us for s in steps]),
            gpu0_only_us=mean(g0) if g0 else None,
            overlapped_us=mean([s.comm_overlapped_us for s in steps]),
            dp_phase_gpu_us={p: mean([s.dp_phase_gpu_us.get(p, 0.0) for s in steps]) for p in DP_PHASES},
            ptop_bytes=mean([float(s.memcpy_bytes.get("PtoP", 0)) for s in steps]),
            dp_host_us={p: mean([s.dp_host_us.get(p, 0.0) for s in steps]) for p in DP_PHASES
                        if any(p in s.dp_host_us for s in steps)},
            peer_wait_on_us={k: mean([s.peer_wait_on_us.get(k, 0.0) for s in steps])
                             for k in sorted({k for s in steps for k in s.peer_wait_on_us})},
            peer_wait_dp_us=mean([s.peer_wait_dp_us for s in steps]),
            gpu0_serial_us=mean(g0s) if (g0s := [s.gpu0_serial_us for s in steps if s.gpu0_serial_us is not None])
            else None,
            autotune_us=mean([s.autotune_us for s in steps]),
            autotune_kernels=mean([float(s.autotune_kernels) for s in steps]),
            optimizer_us=mean([s.optimizer_us for s in steps]),
            host_in_dp_us=mean([s.host_in_dp_us for s in steps]),
        ))
    return out


def gpu_rows(analysis: Analysis) -> list[Row]:
    """Rows of GPUs with activity (device ≥ 0 and GPU busy time in the steps or over the trace)."""
    busy_dev = {(d.rank, d.device) for d in analysis.devices if d.busy_time_us > 0 and d.device >= 0}
    return [r for r in rows(analysis) if r.device >= 0 and (r.busy_us > 0 or (r.rank, r.device) in busy_dev)]


def reference_row(analysis: Analysis) -> Row | None:
    """The row a step time is read from: DP's output device, else rank 0's first GPU, else the host."""
    all_rows = rows(analysis)
    if not all_rows:
        return None
    out_dev = analysis.output_device if analysis.output_device is not None else 0
    for r in all_rows:
        if analysis.strategy == "dp" and r.device == out_dev:
            return r
    gpus = [r for r in all_rows if r.device >= 0]
    return min(gpus or all_rows, key=lambda r: (r.rank, r.device))


def distinct_gpus(analysis: Analysis, manifest: Manifest | None) -> int:
    """GPUs with activity. DDP ranks that all name the same device on one node share one GPU."""
    g = gpu_rows(analysis)
    if analysis.strategy == "dp" or len({r.rank for r in g}) <= 1:
        return len({r.device for r in g})
    nnodes = (manifest or EMPTY).config.nnodes
    if len({r.device for r in g}) == 1 and (nnodes in (None, 1)):
        return 1
    return len(g)


def link_gbps(manifest: Manifest | None) -> tuple[float | None, str]:
    """Slowest measured GPU0↔GPUi peer bandwidth (GB/s) from the manifest, and where it came from."""
    p2p = (manifest or EMPTY).link_bandwidth.p2p_GBps
    if p2p:
        vals = [v for k, v in p2p.items() if v > 0 and "0" in k.replace("->", "-").split("-")]
        if vals:
            return min(vals), "manifest link_bandwidth.p2p_GBps (slowest pair with GPU0)"
    return None, "no peer-to-peer bandwidth in the manifest"


def allreduce_per_step(analysis: Analysis) -> dict[str, Any] | None:
    """Allreduce collectives per profiled step, counted in ``Analysis.collectives`` (matched across ranks,
    so only with 2+ ranks), over the profiled steps of the lowest rank. DDP issues one gradient allreduce
    per bucket per step; other allreduces (a metric, an epoch's accuracy) inside the window count too,
    so the figure is an upper bound on the buckets. None without allreduce collectives or steps."""
    colls = [c for c in analysis.collectives if "all_reduce" in c.name or "allreduce" in c.name]
    if not colls or not analysis.steps:
        return None
    rank = min(s.rank for s in analysis.steps)
    steps = len({s.step for s in analysis.steps if s.rank == rank})
    return {"allreduce_collectives": len(colls), "profiled_steps": steps,
            "allreduce_per_step": round(len(colls) / steps, 2)}


@dataclass(frozen=True)
class Context:
    """Everything a hypothesis reads."""

    analysis: Analysis
    manifest: Manifest = EMPTY  # EMPTY when the run has none (every field None)
    nvml: tuple[GpuNvml, ...] = ()
    baseline: Analysis | None = None
    baseline_manifest: Manifest = EMPTY
    sweep: SweepResult | None = None


@dataclass(frozen=True)
class GpuNvml:
    """NVML summary of one GPU over the run (None where NVML could not read the field)."""

    gpu: int  # CUDA index when known, else NVML index
    samples: int
    util_gpu_mean_pct: float | None  # % of time a kernel was running (NVML utilization.gpu)
    util_mem_mean_pct: float | None
    mem_used_max_bytes: int | None
    sm_clock_peak_mhz: float | None  # highest SM clock sampled
    #: Median SM clock over samples with utilization.gpu ≥ 50 % (None if none): throttling shows here.
    sm_clock_busy_median_mhz: float | None
    power_max_mw: float | None
    #: The device's maximum SM clock (nvmlDeviceGetMaxClockInfo), when the collector recorded it.
    sm_clock_limit_mhz: float | None = None
    #: Share (0..1) of busy samples whose clock event reasons include a thermal or power slowdown; None when the
    #: samples carry no reasons.
    throttle_reason_share: float | None = None


def _raw(obj: Any, *names: str) -> list[float]:
    """A per-sample series by name: an attribute, a mapping key, or a key of ``.fields``; NaN for null."""
    fields = obj.get("fields") if isinstance(obj, Mapping) else getattr(obj, "fields", None)
    for n in names:
        v = obj.get(n) if isinstance(obj, Mapping) else getattr(obj, n, None)
        if v is None and isinstance(fields, Mapping):
            v = fields.get(n)
        if v is not None:
            try:
                return [float("nan") if x is None else float(x) for x in v]
            except TypeError:
                continue
    return []


def _values(obj: Any, *names: str) -> list[float]:
    return [x for x in _raw(obj, *names) if x == x]  # NaN (a null reading) dropped


def nvml_per_gpu(nvml: Any) -> tuple[GpuNvml, ...]:
    """Per-GPU NVML summaries from an ``NvmlData`` (``.gpus``: mapping or sequence of per-GPU series)."""
    if nvml is None:
        return ()
    gpus = nvml.get("gpus") if isinstance(nvml, Mapping) else getattr(nvml, "gpus", None)
    if gpus is None:
        return ()
    items = list(gpus.items()) if isinstance(gpus, Mapping) else list(enumerate(gpus))
    out = []
    for key, g in items:
        idx = None
        for n in ("cuda_index", "nvml_index", "index"):
            v = g.get(n) if isinstance(g, Mapping) else getattr(g, n, None)
            if isinstance(v, int):
                idx = v
                break
        idx = idx if idx is not None else int(key)
        util = _values(g, "util_gpu_pct", "util_gpu")
        clock = _values(g, "sm_clock_mhz")
        raw_u, raw_c = _raw(g, "util_gpu_pct", "util_gpu"), _raw(g, "sm_clock_mhz")
        busy_clock = [c for c, u in zip(raw_c, raw_u, strict=False) if u >= 50 and c == c] \
            if len(raw_c) == len(raw_u) else []
        mem = _values(g, "mem_used_bytes")
        power = _values(g, "power_mw")
        memu = _values(g, "util_mem_pct", "util_mem")
        reasons = _raw(g, "clock_event_reasons")
        busy_reasons = [int(x) for x, u in zip(reasons, raw_u, strict=False) if u >= 50 and x == x] \
            if len(reasons) == len(raw_u) else []
        limit = g.get("sm_clock_max_mhz") if isinstance(g, Mapping) else getattr(g, "sm_clock_max_mhz", None)
        out.append(GpuNvml(
            gpu=idx, samples=max(len(util), len(mem)),
            util_gpu_mean_pct=mean(util) if util else None,
            util_mem_mean_pct=mean(memu) if memu else None,
            mem_used_max_bytes=int(max(mem)) if mem else None,
            sm_clock_peak_mhz=max(clock) if clock else None,
            sm_clock_busy_median_mhz=statistics.median(busy_clock) if busy_clock else None,
            power_max_mw=max(power) if power else None,
            sm_clock_limit_mhz=float(limit) if isinstance(limit, (int, float)) and limit > 0 else None,
            throttle_reason_share=(sum(1 for x in busy_reasons if x & SLOWDOWN_REASONS) / len(busy_reasons))
            if busy_reasons else None,
        ))
    return tuple(sorted(out, key=lambda g: g.gpu))
