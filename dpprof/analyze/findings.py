"""Findings of a diagnosis: named, measured observations beside the three hypotheses (pure).

Thresholds (shares are % of the mean step on the row named in evidence):
host-bound ≥ 50 % of the step in ``host`` (critical ≥ 80 %); DDP exposed allreduce ≥ 10 % is a warning;
data-loading bound ≥ 20 % (critical ≥ 50 %); a straggler arrives last at ≥ 60 % of the collectives;
profiler distortion when profiled steps are ≥ 1.2× the unprofiled ones.
"""

from __future__ import annotations

from typing import Any

from dpprof.analyze.diag_figures import Context, Row, get, gpu_rows, mean, reference_row, rows
from dpprof.analyze.model import Finding

HOST_BOUND_PCT = 50.0
HOST_CRITICAL_PCT = 80.0
EXPOSED_ALLREDUCE_PCT = 10.0
DATA_LOADING_PCT = 20.0
DATA_LOADING_CRITICAL_PCT = 50.0
STRAGGLER_SHARE = 0.6
PROFILER_OVERHEAD_RATIO = 1.2


def _r(x: float, nd: int = 1) -> float:
    return round(x, nd)


def findings(ctx: Context) -> tuple[Finding, ...]:
    """All findings that apply, in a fixed order."""
    out: list[Finding] = []
    for fn in (_dp_mode, _host_bound, _ddp, _buckets, _stragglers, _data_loading, _profiler):
        out.extend(fn(ctx))
    return tuple(out)


def _dp_mode(ctx: Context) -> list[Finding]:
    a = ctx.analysis
    if a.strategy != "dp":
        return []
    if a.dp_mode == "no_gpu":
        return [Finding("dp_no_gpu", "info", "DP had no GPU to split the batch over",
                        "DP had no GPU to split the batch over: the module ran directly on the host, so this "
                        "run measures the model, not data parallelism.", {"dp_mode": a.dp_mode})]
    if a.dp_mode == "one_device":
        return [Finding("dp_one_device", "info", "DP's one-device path",
                        "DataParallel with one device only scatters the batch onto it and calls the module "
                        "directly: no replicate, threads, gather or reduce.", {"dp_mode": a.dp_mode})]
    return []


def _host_bound(ctx: Context) -> list[Finding]:
    a = ctx.analysis
    ref = reference_row(a)
    if ref is None or ref.device < 0:
        return []  # a host timeline is all host: "host-bound" says nothing there
    host_pct = ref.pct(ref.categories_us["host"])
    if host_pct < HOST_BOUND_PCT:
        return []
    busy_pct = ref.pct(ref.busy_us)
    ev: dict[str, Any] = {"rank": ref.rank, "device": ref.device, "step_us": _r(ref.step_us),
                          "host_us": _r(ref.categories_us["host"]), "host_pct": _r(host_pct),
                          "gpu_busy_pct": _r(busy_pct)}
    threads_off = any(w.code == "profile_all_threads_off" for w in a.warnings)
    ev["profile_all_threads"] = not threads_off
    sev = "critical" if host_pct >= HOST_CRITICAL_PCT else "warning"
    if a.strategy == "dp" and a.dp_mode == "multi_device":
        detail = (f"{host_pct:.0f} % of the DP step ({ref.step_us / 1e3:.1f} ms) is host time inside "
                  "DataParallel.forward, in DP's replica threads (parallel_apply) and the Python replicate "
                  f"path, while GPU {ref.device} is busy only {busy_pct:.0f} % of the step: the host side, not "
                  "the GPUs, bounds this step. Fresh replica threads every step redo per-thread set-up such as "
                  "cuDNN autotuning when cudnn.benchmark is on.")
        if threads_off:
            detail += " The replica threads' CPU ops were not recorded (profile_all_threads off)."
        return [Finding("host_bound", sev, "DP step spent on the host in replica threads", detail, ev)]
    detail = (f"{host_pct:.0f} % of the step ({ref.step_us / 1e3:.1f} ms) is host time (CPU ops and kernel "
              f"launches) while GPU {ref.device} is busy only {busy_pct:.0f} % of it: the host bounds the step.")
    return [Finding("host_bound", sev, "Host-bound steps", detail, ev)]


def _comm_rows(ctx: Context) -> list[Row]:
    # DDP on CPU (gloo) has only host rows (device -1); their allreduce figures still count.
    return gpu_rows(ctx.analysis) or rows(ctx.analysis)


def ddp_overlap(ctx: Context) -> dict[str, float] | None:
    """Mean exposed and overlapped allreduce per step over the ranks (µs), the overlap ratio (0..1)."""
    rs = _comm_rows(ctx)
    if not rs:
        return None
    exposed = mean([r.categories_us["allreduce"] for r in rs])
    overlapped = mean([r.overlapped_us for r in rs])
    step = mean([r.step_us for r in rs])
    total = exposed + overlapped
    return {"exposed_us": exposed, "overlapped_us": overlapped, "step_us": step,
            "overlap_ratio": overlapped / total if total > 0 else 0.0, "comm_us": total}


def _ddp(ctx: Context) -> list[Finding]:
    a = ctx.analysis
    if a.strategy != "ddp":
        return []
    o = ddp_overlap(ctx)
    if o is None:
        return []
    if o["comm_us"] <= 0:
        ws = {r.world_size for r in a.ranks if r.world_size}
        why = "world size 1 communicates nothing" if ws == {1} else "no allreduce work was seen in the steps"
        return [Finding("ddp_no_allreduce", "info", "No allreduce in the profiled steps", f"{why}.",
                        {"world_size": sorted(ws)})]
    exposed_pct = 100 * o["exposed_us"] / o["step_us"] if o["step_us"] else 0.0
    ev = {"exposed_allreduce_us": _r(o["exposed_us"]), "overlapped_allreduce_us": _r(o["overlapped_us"]),
          "exposed_allreduce_pct": _r(exposed_pct), "overlap_ratio": round(o["overlap_ratio"], 3),
          "step_us": _r(o["step_us"])}
    sev = "warning" if exposed_pct >= EXPOSED_ALLREDUCE_PCT else "info"
    return [
        Finding("ddp_exposed_allreduce", sev, "DDP allreduce not hidden behind compute",
                f"{exposed_pct:.1f} % of the step ({o['exposed_us'] / 1e3:.2f} ms, mean over ranks) is allreduce "
                "that no compute overlaps.", ev),
        Finding("ddp_overlap", "info", "DDP communication/compute overlap",
                f"{100 * o['overlap_ratio']:.0f} % of the allreduce time ran under backward compute "
                f"({o['overlapped_us'] / 1e3:.2f} of {o['comm_us'] / 1e3:.2f} ms per step).", ev),
    ]


def _buckets(ctx: Context) -> list[Finding]:
    """DDP bucket sizes when the analysis or the manifest carries them (never guessed)."""
    if ctx.analysis.strategy != "ddp":
        return []
    sizes = getattr(ctx.analysis, "bucket_bytes", None) or get(ctx.manifest, "ddp", "bucket_bytes")
    if not sizes:
        return []
    mib = [round(s / 2**20, 1) for s in sizes]
    return [Finding("ddp_buckets", "info", "DDP gradient buckets",
                    f"{len(mib)} buckets per step: {', '.join(f'{x} MiB' for x in mib)}.",
                    {"bucket_bytes": list(sizes)})]


def _stragglers(ctx: Context) -> list[Finding]:
    out = []
    for s in ctx.analysis.stragglers:
        if s.collectives and s.times_last / s.collectives >= STRAGGLER_SHARE and s.mean_lateness_us > 0:
            out.append(Finding(
                "straggler", "warning", f"Rank {s.rank} arrives last at collectives",
                f"rank {s.rank} was the last to start {s.times_last} of {s.collectives} collectives, on average "
                f"{s.mean_lateness_us / 1e3:.2f} ms after the earliest rank: the others wait for it.",
                {"rank": s.rank, "times_last": s.times_last, "collectives": s.collectives,
                 "mean_lateness_us": _r(s.mean_lateness_us)}))
    return out


def _data_loading(ctx: Context) -> list[Finding]:
    ref = reference_row(ctx.analysis)
    if ref is None:
        return []
    pct = ref.pct(ref.categories_us["data_loading"])
    if pct < DATA_LOADING_PCT:
        return []
    workers = get(ctx.manifest, "config", "workers")
    sev = "critical" if pct >= DATA_LOADING_CRITICAL_PCT else "warning"
    return [Finding("data_loading_bound", sev, "Steps wait for the data loader",
                    f"{pct:.0f} % of the step is spent waiting for the next batch"
                    + (f" with {workers} loader workers" if workers is not None else "") + ".",
                    {"data_loading_pct": _r(pct), "data_loading_us": _r(ref.categories_us["data_loading"]),
                     "workers": workers})]


def _profiler(ctx: Context) -> list[Finding]:
    prof = get(ctx.manifest, "profiler")
    ratio = get(prof, "overhead_ratio")
    if not isinstance(ratio, (int, float)):
        return []
    ev = {"overhead_ratio": round(float(ratio), 3),
          "profiled_step_ms_median": get(prof, "profiled_step_ms_median"),
          "unprofiled_step_ms_median": get(prof, "unprofiled_step_ms_median")}
    if ratio >= PROFILER_OVERHEAD_RATIO:
        return [Finding("profiler_distortion", "warning", "The profiler slowed the profiled steps",
                        f"profiled steps took {ratio:.2f}× the unprofiled ones: absolute times in the trace are "
                        "inflated; compare shares, and unprofiled step times for speed.", ev)]
    return [Finding("profiler_overhead", "info", "Profiler overhead is small",
                    f"profiled steps took {ratio:.2f}× the unprofiled ones.", ev)]
