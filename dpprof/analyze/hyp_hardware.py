"""Hardware as the cause: how much of the excess a slow device, uneven throttling or a slow link explains.

Each term is µs per step on the step the verdict is read from (DP: the output device; DDP/FSDP: the ranks'
mean), and the verdict weighs their sum against the excess over the ideal (``dpprof.analyze.costs``):

* **slow device**: the waiting the straggler summary's participant causes (``peer_wait`` on it), when it names a
  slow GPU or rank (DP's output device arriving late is its serial data-path work, not hardware);
* **uneven throttling**: NVML shows a GPU's SM clock while busy ≥ 10 % under its maximum (the device's maximum
  clock when the collector recorded it, else the highest sample) or thermal/power clock event reasons on ≥ 10 % of
  its busy samples, while another GPU does not. Uniform throttling slows a single-GPU baseline too and cannot
  explain poor scaling: it is reported, not counted. A throttled GPU is usually the slow device above; when it is
  not, its compute above the others' median is counted;
* **slow link**: a measured peer pair under half the fastest pair's bandwidth explains (1 − slow/fast) of the
  transfer that crosses it (DP: GPU0's data-path transfer, when the pair has GPU0; DDP/FSDP: the exposed
  collective transfer, a ring is as fast as its slowest link).

Compute comparisons leave out the kernels of autotuning loops (cuDNN benchmark mode in DP's fresh threads).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from typing import Any

from dpprof.analyze.costs import Excess, collective_excess, dp_excess, model_compute, slow_output_device_us
from dpprof.analyze.diag_figures import Context, Row, distinct_gpus, gpu_rows, mean, reference_row
from dpprof.analyze.model import Hypothesis

SUPPORTED = 0.50
NOT_SUPPORTED = 0.20
MATERIAL_EXCESS_PCT = 10.0
#: What hardware explains must also be this share of the whole step to be the cause (as for the data path).
MATERIAL_EXPLAINED_PCT = 5.0
CLOCK_DROP_PCT = 10.0
REASON_SHARE = 0.10
P2P_RATIO = 0.5

RULE = (
    "share of the excess (step − ideal) that hardware explains: a slow device (the others' waiting for the GPU or "
    "rank the straggler summary names), uneven throttling (a GPU whose busy SM clock is ≥ "
    f"{CLOCK_DROP_PCT:.0f} % under its maximum, or with thermal/power clock event reasons on ≥ {100 * REASON_SHARE:.0f} "
    "% of its busy samples, while another is not; uniform throttling slows a baseline too and is only reported), "
    f"a slow link (a peer pair under {P2P_RATIO:.0%} of the fastest explains (1 − slow/fast) of the transfer "
    f"crossing it). Supported when they explain ≥ {100 * SUPPORTED:.0f} % of the excess, not supported when ≤ "
    f"{100 * NOT_SUPPORTED:.0f} % or the excess is under {MATERIAL_EXCESS_PCT:.0f} % of the step's device side (the "
    f"step less host time and data loading) or what they explain is under {MATERIAL_EXPLAINED_PCT:.0f} % of the whole "
    "step, inconclusive in between or with fewer than 2 distinct GPUs. Autotuning kernels are left out of every compute comparison."
)


def _r(x: float | None, nd: int = 1) -> float | None:
    return None if x is None else round(x, nd)


def hardware(ctx: Context) -> Hypothesis:
    a = ctx.analysis
    n = distinct_gpus(a, ctx.manifest)
    ev: dict[str, Any] = {"n_gpus": n, "topology": ctx.manifest.hardware.topology.p2p if ctx.manifest.hardware.topology else None}

    def out(verdict: str, reason: str) -> Hypothesis:
        return Hypothesis("hardware", verdict, RULE, reason, ev)

    gpus = gpu_rows(a)
    ev["autotune"] = {f"{r.rank}:{r.device}": {"kernels_per_step": _r(r.autotune_kernels), "us_per_step": _r(r.autotune_us)}
                      for r in gpus if r.autotune_kernels}
    if n < 2:
        what = "no GPU had activity (a CPU run)" if n == 0 else \
            "1 distinct GPU had activity (ranks sharing one GPU count once)"
        return out("inconclusive", f"{what}: no device-to-device difference to measure")
    ref = reference_row(a)
    assert ref is not None  # there are GPU rows
    dp = a.strategy == "dp"
    ex: Excess = dp_excess(ctx, ref, [r for r in gpus if r.device != ref.device]) if dp else collective_excess(ctx)
    compute = {f"{r.rank}:{r.device}": model_compute(r) for r in gpus}
    ev["compute_us"] = {k: _r(v) for k, v in compute.items()}
    replicas = [v for r, v in zip(gpus, compute.values(), strict=True) if not (dp and r.device == ref.device)]
    spread = max(replicas) - min(replicas) if len(replicas) >= 2 else 0.0
    ev.update(compute_spread_us=_r(spread),
              compute_spread_pct=_r(100 * spread / min(replicas)) if len(replicas) >= 2 and min(replicas) > 0 else None,
              excess_us=_r(ex.excess_us), excess_pct=_r(ex.excess_pct),
              excess_pct_of_device_side=_r(ex.excess_pct_of_device_side), ideal_source=ex.source)
    slow_us, slow_text = _slow_device(ctx, gpus, ref, dp)
    throttled, uniform = _throttling(ctx)
    ev["nvml"] = "absent" if not ctx.nvml else f"{len(ctx.nvml)} GPUs sampled"
    ev["throttled"], ev["throttling_uniform"] = throttled, uniform
    throttle_us = 0.0
    sm = a.straggler_summary
    if throttled and not uniform and sm.get("participant") not in {f"GPU {g}" for g in throttled}:
        med = statistics.median(compute.values())
        throttle_us = max((v - med for k, v in compute.items() if k.split(":")[1] in throttled), default=0.0)
    link_us, slow_links = _slow_link(ctx, ref, gpus, dp)
    ev["slow_links"] = slow_links
    explained = slow_us + throttle_us + link_us
    share = explained / ex.excess_us if ex.excess_us > 0 else 0.0
    ev["explained_us"] = {"slow_device": _r(slow_us), "throttling": _r(throttle_us), "slow_link": _r(link_us)}
    ev["explained_share_of_excess_pct"] = _r(100 * share)
    parts = [x for x in (slow_text, _throttle_text(throttled, uniform),
                         f"slow link(s) {', '.join(slow_links)}: {link_us / 1e3:.2f} ms" if slow_links else "") if x]
    nums = (f"excess {ex.excess_us / 1e3:.2f} ms ({ex.excess_pct:.0f} % of the step); hardware explains "
            f"{explained / 1e3:.2f} ms = {100 * share:.0f} % of it" + (f" ({'; '.join(parts)})" if parts else ""))
    checked = "" if ctx.nvml else "; NVML absent: throttling not checked"
    if ex.excess_pct_of_device_side < MATERIAL_EXCESS_PCT:
        return out("not_supported", f"the step is close to its ideal on the devices (the excess is "
                   f"{ex.excess_pct_of_device_side:.0f} % of its device side): {nums}{checked}")
    explained_pct = 100.0 * explained / ex.step_us if ex.step_us > 0 else 0.0
    ev["explained_pct_of_step"] = _r(explained_pct)
    if share <= NOT_SUPPORTED:
        return out("not_supported", f"{nums}{checked}")
    if explained_pct < MATERIAL_EXPLAINED_PCT:
        return out("not_supported", f"{nums}, but only {explained_pct:.1f} % of the whole step{checked}")
    if share >= SUPPORTED:
        return out("supported", nums)
    return out("inconclusive", f"{nums}: between {100 * NOT_SUPPORTED:.0f} % and {100 * SUPPORTED:.0f} %{checked}")


def _slow_device(ctx: Context, gpus: list[Row], ref: Row, dp: bool) -> tuple[float, str]:
    """The others' waiting for the participant the straggler summary names (µs per step), in words."""
    sm = ctx.analysis.straggler_summary
    if sm.get("verdict") not in ("slow_gpu", "slow_rank"):
        return 0.0, ""
    who = str(sm["participant"])
    if dp and who == f"GPU {ref.device}":
        # DP's output device itself is slow: its step is the DP step, so its extra compute is what the step loses
        slow = slow_output_device_us(ctx.analysis, ref, [r for r in gpus if r.device != ref.device])
        return slow, f"{who}, DP's output device, computes {slow / 1e3:.2f} ms per step longer than the other GPUs"
    if dp:
        waited = ref.peer_wait_on_us.get(who, 0.0)
    else:
        waited = mean([r.peer_wait_on_us.get(who, 0.0) for r in gpus if f"rank {r.rank}" != who])
    return waited, f"the others wait {waited / 1e3:.2f} ms per step for {who}"


def _throttling(ctx: Context) -> tuple[dict[str, Any], bool]:
    """GPUs that NVML shows throttled while busy (clock drop % and slowdown-reason share), and whether all are."""
    out: dict[str, Any] = {}
    for g in ctx.nvml:
        limit = g.sm_clock_limit_mhz or g.sm_clock_peak_mhz
        drop = 100 * (1 - g.sm_clock_busy_median_mhz / limit) if limit and g.sm_clock_busy_median_mhz else None
        reasons = g.throttle_reason_share
        if (drop is not None and drop >= CLOCK_DROP_PCT) or (reasons is not None and reasons >= REASON_SHARE):
            out[str(g.gpu)] = {"clock_drop_pct": _r(drop), "slowdown_reason_share": _r(reasons, 3),
                               "limit": "device maximum" if g.sm_clock_limit_mhz else "highest sample"}
    # Uniform: every GPU that worked (busy samples) is throttled; an idle GPU NVML also sampled does not count.
    worked = [g for g in ctx.nvml if g.sm_clock_busy_median_mhz is not None or str(g.gpu) in out]
    return out, bool(out) and len(out) == len(worked) and len(worked) > 1


def _throttle_text(throttled: Mapping[str, Any], uniform: bool) -> str:
    if not throttled:
        return ""
    if uniform:
        return "every GPU throttled alike (it slows a baseline too: not counted)"
    return "throttled: GPU " + ", ".join(sorted(throttled))


def _slow_link(ctx: Context, ref: Row, gpus: list[Row], dp: bool) -> tuple[float, list[str]]:
    """(µs per step the slow pairs cost, the slow pairs) from the manifest's measured peer bandwidths."""
    bws = {k: v for k, v in (ctx.manifest.link_bandwidth.p2p_GBps or {}).items() if v > 0}
    if len(bws) < 2:
        return 0.0, []
    fast = max(bws.values())
    slow = {k: v for k, v in bws.items() if v < P2P_RATIO * fast}
    if not slow:
        return 0.0, []
    worst = min(slow.values())
    if dp:
        with_gpu0 = [k for k in slow if str(ref.device) in k.replace("->", "-").split("-")]
        transfer = ref.dp_phases_us if with_gpu0 else 0.0
    else:
        transfer = mean([r.categories_us["comm"] for r in gpus])
    return transfer * (1 - worst / fast), sorted(slow)

