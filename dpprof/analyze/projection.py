"""What-if projection: DP and DDP step time and scaling efficiency for N = 1..8 GPUs from one profile.

ALWAYS a projection (``"label": "projection"``), never a measurement. The model, per step, in µs:

- ``compute_1`` = the profile's mean GPU compute per step × the GPUs it ran on: the compute of the whole
  global batch on one GPU. It is assumed to split evenly: ``compute_1 / N`` per GPU (the optimizer step,
  which does not shrink with N, is inside it: a small error for VGG16).
- ``fixed`` = the rest of the profiled step that is neither compute nor data-parallel communication
  (data loading, host, other copies, idle): assumed not to change with N.
- DP(N) = compute_1/N + fixed + (N−1) × per-extra-GPU cost of GPU0's serialized data path, where that
  cost is either calibrated from a measured multi-GPU DP profile (its dp_* phases ÷ (N−1)) or
  ``[(params + buffers) broadcast + params reduced] / bw + batch × (input + output bytes) / N / bw``
  (GPU0's link carries every copy; inputs 3×32×32 fp32 and 10 fp32 outputs per image).
- DDP(N) = compute_1/N + fixed + exposed allreduce, with ring allreduce ``ar = 2(N−1)/N × param bytes / bw``
  and ``exposed = max(ar × (1 − overlap), ar − backward)``, backward = ⅔ of compute_1/N (forward:backward
  ≈ 1:2); overlap is the measured DDP overlap ratio when the profile has DDP communication, else 0.5.
- N = 1 for both: compute_1 + fixed. Speedup = step(1)/step(N); scaling efficiency = speedup / N.

Bandwidth: declared (``link_GBps``) or the manifest's slowest measured GPU0 peer link. Without a
bandwidth, parameter size, or GPU activity in the profile, no rows are projected and ``reason`` says why.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dpprof.analyze.diag_figures import (
    INPUT_BYTES_PER_IMAGE,
    OUTPUT_BYTES_PER_IMAGE,
    distinct_gpus,
    get,
    gpu_rows,
    link_gbps,
    mean,
    reference_row,
)
from dpprof.analyze.model import Analysis

PROJECTION_MODEL = "dpprof.projection/1"
DEFAULT_OVERLAP = 0.5
BACKWARD_SHARE = 2 / 3


def _unavailable(out: dict[str, Any], reason: str) -> dict[str, Any]:
    out.update(available=False, reason=reason, rows=[])
    return out


def project(analysis: Analysis, manifest: Mapping[str, Any] | None = None, link_GBps: float | None = None,
            max_gpus: int = 8, measured: Mapping[tuple[str, int], float] | None = None,
            param_bytes: int | None = None) -> dict[str, Any]:
    """Projected DP and DDP rows for N = 1..max_gpus (and any N in ``measured``).

    ``measured`` maps (strategy, N) to a measured step time in ms; those rows gain ``measured_step_ms``
    and ``error_pct`` = (projected − measured) / measured × 100. Rows: ``strategy``, ``gpus``, ``step_ms``,
    ``comm_ms`` (the data-parallel communication term), ``images_per_s`` (None without a batch size),
    ``speedup``, ``scaling_efficiency`` (0..1).
    """
    measured = dict(measured or {})
    out: dict[str, Any] = {"label": "projection", "model": PROJECTION_MODEL,
                           "assumptions": _assumptions(), "inputs": {}, "rows": [], "available": True,
                           "reason": ""}
    ref = reference_row(analysis)
    gpus = gpu_rows(analysis)
    if ref is None or not gpus or ref.device < 0:
        return _unavailable(out, "the profile has no GPU activity: a CPU run's compute does not predict GPU "
                            "step times")
    params = param_bytes or get(manifest, "model_info", "param_bytes")
    buffers = get(manifest, "model_info", "buffers_bytes") or 0
    if not isinstance(params, (int, float)) or params <= 0:
        return _unavailable(out, "no parameter size (manifest model_info.param_bytes, or --param-bytes) to size the communication")
    bw: float | None
    if link_GBps:
        bw, bw_src = float(link_GBps), "declared"
    else:
        bw, bw_src = link_gbps(manifest)
        bw_src = f"measured: {bw_src}" if bw else bw_src
    if not bw or bw <= 0:
        return _unavailable(out, "no link bandwidth: none measured in the manifest and none declared (--link-gbps)")
    n_prof = max(1, distinct_gpus(analysis, manifest))
    compute = mean([r.categories_us["compute"] for r in gpus])
    dp_meas = ref.dp_phases_us
    exposed_ar = ref.categories_us["comm"] + ref.categories_us["peer_wait"]
    compute_1 = compute * n_prof
    fixed = max(0.0, ref.step_us - ref.categories_us["compute"] - dp_meas - exposed_ar)
    batch = get(manifest, "config", "batch_size")
    per_byte_us = 1.0 / (bw * 1e3)  # bytes / (GB/s) → µs
    if analysis.strategy == "dp" and analysis.dp_mode == "multi_device" and n_prof >= 2 and dp_meas > 0:
        per_extra, dp_src = dp_meas / (n_prof - 1), f"calibrated from the measured {n_prof}-GPU DP phases"
    else:
        per_extra, dp_src = None, "bytes ÷ bandwidth"
    overlap, ovl_src = DEFAULT_OVERLAP, f"default {DEFAULT_OVERLAP} (no DDP communication measured)"
    if analysis.strategy == "ddp":
        ovl_exposed = mean([r.categories_us["comm"] for r in gpus])
        ovl_hidden = mean([r.overlapped_us for r in gpus])
        if ovl_exposed + ovl_hidden > 0:
            overlap, ovl_src = ovl_hidden / (ovl_exposed + ovl_hidden), "measured DDP overlap ratio"
    out["inputs"] = {
        "profile_strategy": analysis.strategy, "profile_gpus": n_prof, "profile_step_us": round(ref.step_us, 1),
        "compute_1gpu_us": round(compute_1, 1), "fixed_us": round(fixed, 1), "param_bytes": int(params),
        "buffers_bytes": int(buffers), "batch_size": batch, "link_GBps": round(bw, 3), "link_source": bw_src,
        "dp_cost_source": dp_src, "overlap": round(overlap, 3), "overlap_source": ovl_src,
    }

    def dp_comm(n: int) -> float:
        if n == 1:
            return 0.0
        if per_extra is not None:
            return per_extra * (n - 1)
        act = (batch or 0) * (INPUT_BYTES_PER_IMAGE + OUTPUT_BYTES_PER_IMAGE) * (n - 1) / n
        return ((params + buffers) * (n - 1) + params * (n - 1) + act) * per_byte_us

    def ddp_comm(n: int) -> float:
        if n == 1:
            return 0.0
        ar = 2 * (n - 1) / n * params * per_byte_us
        return max(ar * (1 - overlap), ar - BACKWARD_SHARE * compute_1 / n)

    top = max([max_gpus, *(n for _, n in measured)])
    rows: list[dict[str, Any]] = []
    for strategy, comm in (("dp", dp_comm), ("ddp", ddp_comm)):
        one = compute_1 + fixed
        for n in range(1, top + 1):
            c = comm(n)
            step = compute_1 / n + fixed + c
            speedup = one / step if step > 0 else None
            row: dict[str, Any] = {
                "strategy": strategy, "gpus": n, "step_ms": round(step / 1e3, 4), "comm_ms": round(c / 1e3, 4),
                "images_per_s": round(batch / (step / 1e6), 1) if batch and step > 0 else None,
                "speedup": round(speedup, 3) if speedup else None,
                "scaling_efficiency": round(speedup / n, 3) if speedup else None,
            }
            meas = measured.get((strategy, n))
            if meas:
                row["measured_step_ms"] = round(float(meas), 4)
                row["error_pct"] = round(100 * (step / 1e3 - meas) / meas, 1)
            rows.append(row)
    out["rows"] = rows
    return out


def _assumptions() -> list[str]:
    return [
        "compute of the global batch splits evenly over N GPUs (compute_1 / N); the optimizer step is inside it",
        "data loading, host time, other copies and idle time per step do not change with N",
        "DP: GPU0's link carries (params + buffers) × (N−1) broadcast, params × (N−1) reduced, and the "
        "batch's inputs scattered / outputs gathered, one after the other (no overlap)",
        "DDP: ring allreduce of 2(N−1)/N × parameter bytes per GPU, hidden behind backward by the overlap "
        f"ratio (measured, else {DEFAULT_OVERLAP}) and at most by backward itself (⅔ of compute)",
        "inputs are CIFAR-shaped (3×32×32 fp32), outputs 10 fp32 logits per image",
        "one link bandwidth for every GPU pair; no NVLink/PCIe topology effects, no kernel launch contention",
    ]

