"""Measured figures of a run, and the three hypotheses of the study tested against them.

Every figure is a mean per profiled step (µs) of one ``(rank, device)`` row of ``Analysis.steps``.
Pure functions: no I/O, no printing. The rules and thresholds are stated in each Hypothesis' ``rule``.

- ``data_path``: DP's excess step time over the ideal is mostly GPU0-centred work.
- ``hardware``: the excess comes from the devices or links (unequal compute of equal work, throttling,
  unequal links).
- ``hyperparameters``: the excess comes from batch size or loader workers.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from dpprof.analyze.diag_figures import (
    Context,
    GpuNvml,
    distinct_gpus,
    get,
    gpu0_bytes_per_step,
    gpu_rows,
    link_gbps,
    mean,
    reference_row,
)
from dpprof.analyze.model import DP_PHASES, Hypothesis

# data_path: share of the excess that is GPU0-centred work.
DATA_PATH_SUPPORTED = 0.50
DATA_PATH_NOT_SUPPORTED = 0.20
#: Below this excess (% of the step) DP is close to ideal: there is nothing for the data path to explain.
MATERIAL_EXCESS_PCT = 10.0
# hardware: spread of equal replica compute across GPUs (% of the fastest).
HW_SPREAD_SUPPORTED_PCT = 15.0
HW_SPREAD_NOT_SUPPORTED_PCT = 5.0
HW_CLOCK_DROP_PCT = 10.0  # an SM clock this far below its peak while busy = throttling
HW_P2P_RATIO = 0.5  # a GPU pair below half the fastest pair's bandwidth = an unequal link
# hyperparameters: change of scaling efficiency across batch sizes or workers (0..1 units).
HP_EFF_SUPPORTED = 0.20
HP_EFF_NOT_SUPPORTED = 0.05
DATA_LOADING_BOUND_PCT = 30.0


def _verdict(share: float, hi: float, lo: float) -> str:
    return "supported" if share >= hi else "not_supported" if share <= lo else "inconclusive"


def _r(x: float | None, nd: int = 1) -> float | None:
    return None if x is None else round(x, nd)


DATA_PATH_RULE = (
    "excess = mean DP step on GPU0 minus the ideal (single-GPU step / N from a baseline run, else estimated "
    "as one replica's compute + GPU0's extra compute + data loading); GPU0-centred work = time in the "
    "dp_scatter/dp_broadcast/dp_gather/dp_reduce phases on GPU0. Supported when GPU0-centred work is "
    f"≥ {100 * DATA_PATH_SUPPORTED:.0f} % of the excess, not supported when ≤ {100 * DATA_PATH_NOT_SUPPORTED:.0f} % or when the "
    f"excess is under {MATERIAL_EXCESS_PCT:.0f} % of the step (DP close to ideal), inconclusive in between or "
    "when the run has fewer than 2 GPUs with activity or is not a multi-device DP run."
)


def data_path(ctx: Context) -> Hypothesis:
    a, m = ctx.analysis, ctx.manifest
    ref = reference_row(a)
    ev: dict[str, Any] = {"strategy": a.strategy, "dp_mode": a.dp_mode}

    def out(verdict: str, reason: str) -> Hypothesis:
        return Hypothesis("data_path", verdict, DATA_PATH_RULE, reason, ev)

    if ref is not None:
        ev["step_us"] = _r(ref.step_us)
        ev["dp_phases_us"] = {p: _r(ref.categories_us.get(p, 0.0)) for p in DP_PHASES}
        ev["dp_phases_pct"] = _r(ref.pct(ref.dp_phases_us))
        ev["gpu0_only_us"] = _r(ref.gpu0_only_us)
        ev["gpu0_only_pct"] = _r(ref.pct(ref.gpu0_only_us)) if ref.gpu0_only_us is not None else None
    if a.strategy != "dp":
        return out("inconclusive", f"the run is {a.strategy}, not DataParallel: it has no GPU0 data path to test")
    if a.dp_mode == "no_gpu" or ref is None or ref.device < 0:
        return out("inconclusive", "DP had no GPU to split the batch over: the module ran directly")
    if a.dp_mode == "one_device":
        return out("inconclusive", "DP's one-device path: a Scatter onto one GPU, then the module ran "
                   "directly (no replicate, threads, gather or reduce)")
    gpus = gpu_rows(a)
    n = len({r.device for r in gpus})
    ev["n_gpus"] = n
    if n < 2:
        return out("inconclusive", f"only {n} GPU had activity: DP's data path crosses no link here "
                   f"(DP phases were {ev.get('dp_phases_pct', 0)} % of the step)")
    others = [r for r in gpus if r.device != ref.device]
    replica = statistics.median(r.categories_us["compute"] for r in others)
    base = reference_row(ctx.baseline) if ctx.baseline is not None else None
    if base is not None:
        scale = 1.0
        b, bb = get(m, "config", "batch_size"), get(ctx.baseline_manifest, "config", "batch_size")
        if b and bb and b != bb:
            scale = b / bb  # baseline at another batch size: scaled linearly, said in evidence
            ev["baseline_batch_scale"] = round(scale, 3)
        ideal = base.step_us * scale / n
        ev["ideal_source"] = "baseline"
    else:
        extra = max(0.0, ref.categories_us["compute"] - replica)  # loss + optimizer on GPU0 only
        ideal = replica + extra + ref.categories_us["data_loading"]
        ev["ideal_source"] = "estimate"
    excess = max(0.0, ref.step_us - ideal)
    centred = ref.dp_phases_us
    share = centred / excess if excess > 0 else 0.0
    others_busy = mean([r.busy_us for r in others])
    ev.update({
        "ideal_us": _r(ideal), "excess_us": _r(excess), "excess_pct": _r(ref.pct(excess)),
        "gpu0_centred_us": _r(centred), "gpu0_centred_share_of_excess_pct": _r(100 * share),
        "busy_us_gpu0": _r(ref.busy_us), "busy_us_others_mean": _r(others_busy),
        "busy_imbalance_pct": _r(100 * (ref.busy_us - others_busy) / others_busy) if others_busy else None,
        "replica_compute_us": _r(replica),
    })
    ev.update(_nvml_imbalance(ctx.nvml, ref.device))
    bytes_ = gpu0_bytes_per_step(a, m, n)
    bw, bw_src = link_gbps(m)
    ev["gpu0_bytes_per_step"] = bytes_
    ev["link_GBps"], ev["link_source"] = bw, bw_src
    if bw:
        t = bytes_["total_bytes"] / (bw * 1e3)  # bytes / (GB/s) → µs
        ev["link_time_us"], ev["link_time_pct_of_step"] = _r(t), _r(ref.pct(t))
    nums = (f"step {ref.step_us / 1e3:.2f} ms vs ideal {ideal / 1e3:.2f} ms ({ev['ideal_source']}): excess "
            f"{excess / 1e3:.2f} ms ({ref.pct(excess):.0f} % of the step); GPU0-centred DP phases "
            f"{centred / 1e3:.2f} ms = {100 * share:.0f} % of the excess")
    if ref.pct(excess) < MATERIAL_EXCESS_PCT:
        return out("not_supported", f"DP is close to ideal: {nums}")
    verdict = _verdict(share, DATA_PATH_SUPPORTED, DATA_PATH_NOT_SUPPORTED)
    tail = {"supported": "GPU0's data path explains most of the excess",
            "not_supported": "the excess lies elsewhere (see host/idle/compute shares)",
            "inconclusive": f"between {100 * DATA_PATH_NOT_SUPPORTED:.0f} % and {100 * DATA_PATH_SUPPORTED:.0f} %: "
                            "the data path explains part of the excess, not most of it"}[verdict]
    return out(verdict, f"{nums}: {tail}")


def _nvml_imbalance(nvml: Sequence[GpuNvml], gpu0: int) -> dict[str, Any]:
    if len(nvml) < 2:
        return {"nvml": "absent" if not nvml else "one GPU sampled"}
    util = {str(g.gpu): _r(g.util_gpu_mean_pct) for g in nvml}
    mem = {str(g.gpu): g.mem_used_max_bytes for g in nvml}
    g0 = next((g for g in nvml if g.gpu == gpu0), None)
    rest = [g for g in nvml if g.gpu != gpu0]
    ev: dict[str, Any] = {"nvml_util_gpu_pct": util, "nvml_mem_used_max_bytes": mem}
    if g0 is not None and rest and g0.util_gpu_mean_pct is not None:
        vals = [g.util_gpu_mean_pct for g in rest if g.util_gpu_mean_pct is not None]
        if vals:
            ev["nvml_util_gpu0_minus_rest_pts"] = _r(g0.util_gpu_mean_pct - mean(vals))
    if g0 is not None and rest and g0.mem_used_max_bytes:
        vals_m = [g.mem_used_max_bytes for g in rest if g.mem_used_max_bytes]
        if vals_m:
            ev["nvml_mem_gpu0_over_rest_pct"] = _r(100 * (g0.mem_used_max_bytes / mean(vals_m) - 1))
    return ev


HARDWARE_RULE = (
    "equal replica work should take equal GPU compute time. Supported when the slowest GPU's compute is "
    f"≥ {HW_SPREAD_SUPPORTED_PCT:.0f} % above the fastest's (for DP, GPU0 also runs the loss and optimizer, "
    "so with one other GPU only a replica slower than GPU0 counts), or NVML shows a GPU's SM clock while busy "
    f"≥ {HW_CLOCK_DROP_PCT:.0f} % below its peak (throttling), or a GPU pair's measured P2P bandwidth is under "
    f"{HW_P2P_RATIO:.0%} of the fastest pair's; not supported when the spread is ≤ {HW_SPREAD_NOT_SUPPORTED_PCT:.0f} % "
    "with no throttling and no unequal link; inconclusive in between or with fewer than 2 distinct GPUs."
)


def hardware(ctx: Context) -> Hypothesis:
    a, m = ctx.analysis, ctx.manifest
    gpus = gpu_rows(a)
    n = distinct_gpus(a, m)
    ev: dict[str, Any] = {"n_gpus": n, "topology": get(m, "hardware", "topology", "p2p")}

    def out(verdict: str, reason: str) -> Hypothesis:
        return Hypothesis("hardware", verdict, HARDWARE_RULE, reason, ev)

    if n < 2:
        what = "no GPU had activity (a CPU run)" if n == 0 else \
            "1 distinct GPU had activity (ranks sharing one GPU count once)"
        return out("inconclusive", f"{what}: no device-to-device difference to measure")
    compute = {f"{r.rank}:{r.device}": r.categories_us["compute"] for r in gpus}
    ev["compute_us"] = {k: _r(v) for k, v in compute.items()}
    ref = reference_row(a)
    if a.strategy == "dp" and ref is not None:
        replicas = [r.categories_us["compute"] for r in gpus if r.device != ref.device]
        if len(replicas) >= 2:
            spread_us, base = max(replicas) - min(replicas), min(replicas)
        else:
            base = ref.categories_us["compute"]
            spread_us = max(0.0, (replicas[0] if replicas else 0.0) - base)
    else:
        vals = list(compute.values())
        spread_us, base = max(vals) - min(vals), min(vals)
    spread_pct = 100 * spread_us / base if base > 0 else 0.0
    ev.update(compute_spread_us=_r(spread_us), compute_spread_pct=_r(spread_pct))
    throttled = {}
    for g in ctx.nvml:
        if g.sm_clock_max_mhz and g.sm_clock_busy_median_mhz:
            drop = 100 * (1 - g.sm_clock_busy_median_mhz / g.sm_clock_max_mhz)
            if drop >= HW_CLOCK_DROP_PCT:
                throttled[str(g.gpu)] = _r(drop)
    ev["nvml"] = "absent" if not ctx.nvml else f"{len(ctx.nvml)} GPUs sampled"
    ev["sm_clock_drop_pct"] = throttled
    p2p = get(m, "link_bandwidth", "p2p_GBps")
    bws = {str(k): float(v) for k, v in p2p.items() if isinstance(v, (int, float)) and v > 0} \
        if isinstance(p2p, Mapping) else {}
    ev["p2p_GBps"] = bws
    slow_links = sorted(k for k, v in bws.items() if v < HW_P2P_RATIO * max(bws.values())) if bws else []
    ev["slow_links"] = slow_links
    signals = []
    if spread_pct >= HW_SPREAD_SUPPORTED_PCT:
        signals.append(f"equal replica work takes {spread_pct:.0f} % ({spread_us / 1e3:.2f} ms) longer on the "
                       "slowest GPU")
    if throttled:
        signals.append("SM clock below peak while busy on GPU " + ", ".join(f"{k} (−{v} %)" for k, v in throttled.items()))
    if slow_links:
        signals.append(f"link(s) {', '.join(slow_links)} under {HW_P2P_RATIO:.0%} of the fastest pair's bandwidth")
    if signals:
        return out("supported", "; ".join(signals))
    checked = "no throttling seen by NVML" if ctx.nvml else "NVML absent: throttling not checked"
    if spread_pct <= HW_SPREAD_NOT_SUPPORTED_PCT:
        return out("not_supported", f"replica compute differs by {spread_pct:.1f} % across GPUs, {checked}, "
                   f"{'links agree' if bws else 'no per-pair bandwidth to compare'}")
    return out("inconclusive", f"replica compute differs by {spread_pct:.1f} % across GPUs: between "
               f"{HW_SPREAD_NOT_SUPPORTED_PCT:.0f} % and {HW_SPREAD_SUPPORTED_PCT:.0f} %; {checked}")


HYPERPARAMETERS_RULE = (
    "from a sweep: DP's scaling efficiency (speedup ÷ GPUs) at the largest GPU count, averaged per batch size "
    f"and per worker count. Supported when it changes by ≥ {HP_EFF_SUPPORTED:.2f} (i.e. {100 * HP_EFF_SUPPORTED:.0f} "
    f"percentage points) across batch sizes or workers, or when data loading alone takes ≥ {DATA_LOADING_BOUND_PCT:.0f} % "
    f"of the step; not supported when it changes by ≤ {HP_EFF_NOT_SUPPORTED:.2f} on every swept axis; "
    "inconclusive in between or without a sweep that varies them (the strategy used is named in evidence)."
)


def _efficiency_spread(sweep: Any, strategy: str) -> dict[str, Any] | None:
    pts = [p for p in sweep.points if p.status == "done" and p.strategy == strategy and p.gpus > 1
           and p.scaling_efficiency is not None]
    if not pts:
        return None
    nmax = max(p.gpus for p in pts)
    pts = [p for p in pts if p.gpus == nmax]
    out: dict[str, Any] = {"strategy": strategy, "gpus": nmax}
    for axis, attr in (("batch_size", "batch_size"), ("workers", "workers")):
        groups: dict[int, list[float]] = {}
        for p in pts:
            groups.setdefault(getattr(p, attr), []).append(p.scaling_efficiency)
        means = {str(k): round(mean(v), 3) for k, v in sorted(groups.items())}
        out[f"efficiency_by_{axis}"] = means
        out[f"efficiency_change_{axis}"] = round(max(means.values()) - min(means.values()), 3) \
            if len(means) >= 2 else None
    return out


def hyperparameters(ctx: Context) -> Hypothesis:
    a, m = ctx.analysis, ctx.manifest
    ref = reference_row(a)
    dl_pct = ref.pct(ref.categories_us["data_loading"]) if ref is not None else 0.0
    ev: dict[str, Any] = {"data_loading_pct": _r(dl_pct), "workers": get(m, "config", "workers"),
                          "batch_size": get(m, "config", "batch_size")}

    def out(verdict: str, reason: str) -> Hypothesis:
        return Hypothesis("hyperparameters", verdict, HYPERPARAMETERS_RULE, reason, ev)

    loading = f"data loading takes {dl_pct:.1f} % of the step"
    spread = None
    if ctx.sweep is not None:
        for strat in dict.fromkeys(("dp", a.strategy, "ddp")):
            spread = _efficiency_spread(ctx.sweep, strat)
            if spread is not None:
                break
    if spread is not None:
        ev["sweep"] = spread
    if dl_pct >= DATA_LOADING_BOUND_PCT:
        return out("supported", f"{loading}: the loader (workers, batch size) bounds the step")
    changes = [] if spread is None else \
        [(ax, spread[f"efficiency_change_{ax}"]) for ax in ("batch_size", "workers")
         if spread[f"efficiency_change_{ax}"] is not None]
    if not changes:
        why = "no sweep" if ctx.sweep is None else (
            "the sweep has no multi-GPU point with a scaling efficiency" if spread is None else
            f"the sweep varies neither batch size nor workers at {spread['gpus']} GPUs")
        return out("inconclusive", f"{why} to test the question; {loading}")
    assert spread is not None  # changes come from it
    text = ", ".join(f"{spread['strategy'].upper()} scaling efficiency at {spread['gpus']} GPUs changes by "
                     f"{c:.2f} across {ax.replace('_', ' ')}" for ax, c in changes)
    big = max(c for _, c in changes)
    if big >= HP_EFF_SUPPORTED:
        return out("supported", f"{text}; {loading}")
    if all(c <= HP_EFF_NOT_SUPPORTED for _, c in changes):
        return out("not_supported", f"{text}; {loading}")
    return out("inconclusive", f"{text}: between {HP_EFF_NOT_SUPPORTED:.2f} and {HP_EFF_SUPPORTED:.2f}; {loading}")
