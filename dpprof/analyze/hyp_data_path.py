"""The study's hypothesis: DP scales poorly because of its data-path dependence on GPU0 (a what-if estimate).

The output device (GPU0) finishes the DP step: its step is the DP step. The data path's cost is how much shorter
that step would be if the data path were free:

* GPU0's data-path **transfer** (``dp_scatter``/``dp_broadcast``/``dp_gather``/``dp_reduce``: copies, flattens and
  NCCL transfer; the waiting inside DP's collectives is not in them);
* GPU0's **waiting on other GPUs' data-path work** (``peer_wait_dp_us``: Gather's copies run on the source GPUs'
  streams and GPU0's stream waits for them);
* GPU0's **serial work** while every other GPU is idle (``gpu0_serial_us``: the loss over the whole batch, the
  optimizer), which only GPU0 does because DP gathers there.

These are exclusive stretches of GPU0's timeline; DP's data path runs on each device's current stream
(torch/csrc/cuda/nccl.cpp, aten/src/ATen/native/cuda/Copy.cu), so no other GPU0 work runs beside them and removing
them shortens GPU0's step by at most their sum: the estimate is an upper bound. It is weighed against the excess
over the ideal (``dpprof.analyze.costs``). Host time (replica threads, replicate's Python) and waiting for a slow
GPU are reported beside it as causes of their own, never as data path.
"""

from __future__ import annotations

from typing import Any

from dpprof.analyze.costs import dp_backend, dp_bytes, dp_excess, model_compute, slow_output_device_us
from dpprof.analyze.diag_figures import Context, GpuNvml, gpu_rows, link_gbps, mean, reference_row
from dpprof.analyze.findings import HOST_BOUND_PCT
from dpprof.analyze.model import Hypothesis
from dpprof.vocabulary import DP_PHASES

SUPPORTED = 0.50
NOT_SUPPORTED = 0.20
#: Below this excess (% of the step's device side) DP is close to ideal: there is nothing for the data path to explain.
MATERIAL_EXCESS_PCT = 10.0
#: A saving under this share of the whole step cannot be what makes DP slow, whatever share of the excess it is (a
#: host-bound step's device side is small: most of its little excess can be data path).
MATERIAL_SAVING_PCT = 5.0

RULE = (
    "what-if on the output device (GPU0), whose step is the DP step: saving = GPU0's data-path transfer "
    "(dp_scatter + dp_broadcast + dp_gather + dp_reduce, without the waiting inside DP's collectives) + GPU0's "
    "waiting on other GPUs' data-path work (Gather's copies on their streams) + GPU0's serial work while every "
    "other GPU is idle (loss over the whole batch, optimizer): how much shorter GPU0's step would be if the data "
    "path were free, an upper bound (these stretches are exclusive on GPU0's timeline). ideal = a single-GPU "
    "baseline's compute ÷ N, else the fastest replica's compute (GPU0's own without its serial work; autotuning "
    "kernels left out), "
    "plus the data loading and host time DP incurs per step (measured); excess = step − ideal. Supported when the "
    f"saving is ≥ {100 * SUPPORTED:.0f} % of the excess, not supported when ≤ {100 * NOT_SUPPORTED:.0f} % or when "
    f"the excess is under {MATERIAL_EXCESS_PCT:.0f} % of the step's device side (the step less its host time and "
    "data loading, so that a host-bound step does not hide the data path: DP close to ideal) or when the saving is "
    f"under {MATERIAL_SAVING_PCT:.0f} % of the whole step (it cannot be what makes DP slow), inconclusive in "
    "between or with fewer than 2 GPUs with activity or outside multi-device DP. Host time (host-bound DP) and "
    "waiting for a slow GPU are causes of their own, reported beside, never counted as data path."
)


def _r(x: float | None, nd: int = 1) -> float | None:
    return None if x is None else round(x, nd)


def data_path(ctx: Context) -> Hypothesis:
    a = ctx.analysis
    ref = reference_row(a)
    ev: dict[str, Any] = {"strategy": a.strategy, "dp_mode": a.dp_mode}

    def out(verdict: str, reason: str) -> Hypothesis:
        return Hypothesis("data_path", verdict, RULE, reason, ev)

    if ref is not None:
        ev["step_us"] = _r(ref.step_us)
        ev["dp_transfer_us"] = {p: _r(ref.categories_us.get(p, 0.0)) for p in DP_PHASES}
        ev["dp_host_us"] = {p: _r(v) for p, v in ref.dp_host_us.items()}
        ev["dp_gpu_us"] = {p: _r(ref.dp_phase_gpu_us.get(p, 0.0)) for p in DP_PHASES}
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
    host_dp = sum(ref.dp_host_us.values())
    if n < 2:
        return out("inconclusive", f"only {n} GPU had activity: DP's data path crosses no link here (per step: "
                   f"{sum(ref.categories_us.get(p, 0.0) for p in DP_PHASES) / 1e3:.2f} ms of GPU transfer in DP "
                   f"phases, {host_dp / 1e3:.2f} ms of host time in them)")
    others = [r for r in gpus if r.device != ref.device]
    ex = dp_excess(ctx, ref, others)
    transfer = ref.dp_phases_us
    # GPU0 alone at work is DP's serial work (loss, optimizer), unless GPU0 is itself the slow device: then the
    # tail of its own replica's compute is in that lone stretch too, and is hardware's, not the data path's
    slow_own = slow_output_device_us(a, ref, others)
    serial = max(0.0, (ref.gpu0_serial_us or 0.0) - slow_own)
    if slow_own:
        ev["gpu0_slow_compute_us"] = _r(slow_own)
    saving = transfer + ref.peer_wait_dp_us + serial
    share = saving / ex.excess_us if ex.excess_us > 0 else 0.0
    host, wait = ref.categories_us["host"], ref.categories_us["peer_wait"]
    ev.update({
        "ideal_us": _r(ex.ideal_us), "ideal_source": ex.source, "ideal_terms_us": {k: _r(v) for k, v in ex.terms.items()},
        "excess_us": _r(ex.excess_us), "excess_pct": _r(ex.excess_pct),
        "whatif": {"dp_transfer_us": _r(transfer), "wait_on_peer_data_path_us": _r(ref.peer_wait_dp_us),
                   "gpu0_serial_us": _r(serial), "saving_bound_us": _r(saving),
                   "step_without_data_path_us": _r(ref.step_us - saving)},
        "saving_share_of_excess_pct": _r(100 * share),
        "beside": {"host_us": _r(host), "host_pct": _r(ref.pct(host)), "peer_wait_us": _r(wait),
                   "peer_wait_on_us": {k: _r(v) for k, v in ref.peer_wait_on_us.items()},
                   "data_loading_us": _r(ref.categories_us["data_loading"])},
        "replica_compute_us": _r(mean([model_compute(r) for r in others])),
        "busy_us_gpu0": _r(ref.busy_us), "busy_us_others_mean": _r(mean([r.busy_us for r in others])),
    })
    ev.update(_nvml_imbalance(ctx.nvml, ref.device))
    backend, why = dp_backend(a)
    ev["backend"], ev["backend_evidence"] = backend, why
    moved = dp_bytes(a, ctx.manifest, n, backend)
    ev["gpu0_bytes_per_step"] = moved
    bw, bw_src = link_gbps(ctx.manifest)
    ev["link_GBps"], ev["link_source"] = bw, bw_src
    if bw:
        t = moved["total_bytes"] / (bw * 1e3)  # bytes / (GB/s) -> µs
        ev["link_time_us"], ev["link_time_pct_of_step"] = _r(t), _r(ref.pct(t))
    nums = (f"step {ref.step_us / 1e3:.2f} ms vs ideal {ex.ideal_us / 1e3:.2f} ms ({ex.source}): excess "
            f"{ex.excess_us / 1e3:.2f} ms ({ex.excess_pct:.0f} % of the step); without the data path GPU0's step "
            f"would be at most {saving / 1e3:.2f} ms shorter (transfer {transfer / 1e3:.2f}, waiting on others' "
            f"data-path copies {ref.peer_wait_dp_us / 1e3:.2f}, serial work {serial / 1e3:.2f}) = {100 * share:.0f} % "
            "of the excess")
    beside = _beside(ref.pct(host), wait, ref)
    material = ex.excess_pct_of_device_side
    ev["excess_pct_of_device_side"] = _r(material)
    if material < MATERIAL_EXCESS_PCT:
        return out("not_supported", f"DP is close to ideal on the devices (the excess is {material:.0f} % of the "
                   f"step's {ex.device_side_us / 1e3:.2f} ms device side): {nums}{beside}")
    saving_pct = ref.pct(saving)
    ev["saving_pct_of_step"] = _r(saving_pct)
    if share <= NOT_SUPPORTED:
        return out("not_supported", f"{nums}: the excess lies elsewhere{beside}")
    if saving_pct < MATERIAL_SAVING_PCT:
        return out("not_supported", f"{nums}, but at most {saving_pct:.1f} % of the whole step: the data path is not "
                   f"what makes this DP step slow{beside}")
    if share >= SUPPORTED:
        return out("supported", f"{nums}: GPU0's data path explains most of the excess{beside}")
    return out("inconclusive", f"{nums}: between {100 * NOT_SUPPORTED:.0f} % and {100 * SUPPORTED:.0f} %, the data "
               f"path explains part of the excess, not most of it{beside}")


def _beside(host_pct: float, wait_us: float, ref: Any) -> str:
    parts = []
    if host_pct >= HOST_BOUND_PCT:
        parts.append(f"the step is host-bound, {host_pct:.0f} % host time: a cause of its own (finding host_bound)")
    elif host_pct >= 1.0:
        parts.append(f"host time {host_pct:.0f} % of the step")
    if wait_us >= 5.0 and ref.peer_wait_on_us:  # under 5 µs a step it would print as 0.00 ms
        who = max(ref.peer_wait_on_us, key=lambda k: ref.peer_wait_on_us[k])
        parts.append(f"waiting for other GPUs {wait_us / 1e3:.2f} ms per step (mostly {who})")
    return f" (beside it: {'; '.join(parts)})" if parts else ""


def _nvml_imbalance(nvml: tuple[GpuNvml, ...], gpu0: int) -> dict[str, Any]:
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
