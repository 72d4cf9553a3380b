"""Findings of a diagnosis: named, measured observations beside the three hypotheses (pure).

Thresholds (shares are % of the mean step on the row named in evidence):
host-bound ≥ 50 % of the step in ``host`` (critical ≥ 80 %); exposed collective transfer (``comm``) ≥ 10 %
and waiting for a late participant (``peer_wait``) ≥ 10 % are warnings; data-loading bound ≥ 20 % (critical
≥ 50 %); a straggler is named by the matched collectives' GPU-side starts (``dpprof.analyze.matching``);
profiler distortion when profiled steps are ≥ 1.2× the unprofiled ones. DDP buckets (from the manifest's
reducer figures, else the allreduce count per step in the trace): one bucket, or one holding ≥ 60 % of
the gradients, is "few/large"; ≥ 16 per step under 1 MiB each on average is "many/small"; gradients
under 2 MiB get no bucket advice; a warning only when exposed collective transfer is ≥ 10 % of the step
(waiting for a late participant is imbalance, which no bucket size cures).
"""

from __future__ import annotations

from typing import Any

from dpprof.analyze.diag_figures import (
    Context,
    Row,
    allreduce_per_step,
    gpu_rows,
    mean,
    reference_row,
    rows,
)
from dpprof.analyze.model import Finding
from dpprof.vocabulary import COLLECTIVE_STRATEGIES

HOST_BOUND_PCT = 50.0
HOST_CRITICAL_PCT = 80.0
EXPOSED_COMM_PCT = 10.0
PEER_WAIT_PCT = 10.0
DATA_LOADING_PCT = 20.0
DATA_LOADING_CRITICAL_PCT = 50.0
STRAGGLER_SHARE = 0.6
PROFILER_OVERHEAD_RATIO = 1.2
#: DDP buckets: gradients under this need no bucketing advice; a bucket holding at least this share of
#: them is "large"; at least this many collectives per step of under SMALL_BUCKET_BYTES each is "many small"
#: (1 MiB is DDP's own first-bucket size).
SMALL_MODEL_BYTES = 2 * 2**20
LARGE_BUCKET_SHARE_PCT = 60.0
MANY_BUCKETS = 16
SMALL_BUCKET_BYTES = 2**20


def _r(x: float, nd: int = 1) -> float:
    return round(x, nd)


def findings(ctx: Context) -> tuple[Finding, ...]:
    """All findings that apply, in a fixed order."""
    out: list[Finding] = []
    for fn in (_dp_mode, _host_bound, _autotuning, _collective, _buckets, _stragglers, _data_loading, _profiler):
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


#: Autotuning kernels above this share of a GPU's busy time are a warning.
AUTOTUNE_WARN_PCT = 10.0


def _autotuning(ctx: Context) -> list[Finding]:
    """Kernels of an autotuning loop (cuDNN benchmark mode: dpprof.analyze.autotune), counted and timed."""
    rs = [r for r in gpu_rows(ctx.analysis) if r.autotune_kernels > 0]
    if not rs:
        return []
    worst = max(rs, key=lambda r: r.autotune_us)
    pct = 100 * worst.autotune_us / worst.busy_us if worst.busy_us > 0 else 0.0
    per = {f"{r.rank}:{r.device}": {"kernels_per_step": _r(r.autotune_kernels), "us_per_step": _r(r.autotune_us)}
           for r in rs}
    dp = ctx.analysis.strategy == "dp"
    why = (" DP's replica threads are new every step and cuDNN's benchmark cache is per thread "
           "(aten/src/ATen/native/cudnn), so they autotune again every step." if dp else
           " Autotuning should stop after the first steps; steps that keep it include it in their time.")
    return [Finding("autotuning", "warning" if pct >= AUTOTUNE_WARN_PCT else "info",
                    "cuDNN autotuning inside the profiled steps",
                    f"{worst.autotune_kernels:.0f} kernels per step ({worst.autotune_us / 1e3:.2f} ms, {pct:.0f} % of "
                    f"GPU {worst.device}'s busy time) are autotuning candidates timed between event records "
                    "(torch.backends.cudnn.benchmark=True): GPU work, but not the model's; the hardware comparison "
                    f"leaves them out.{why}", {"per_gpu": per, "busy_pct": _r(pct)})]


def _comm_rows(ctx: Context) -> list[Row]:
    # DDP on CPU (gloo) has only host rows (device -1); their communication figures still count.
    return gpu_rows(ctx.analysis) or rows(ctx.analysis)


#: Strategies whose steps carry collectives between processes.


def comm_overlap(ctx: Context) -> dict[str, float] | None:
    """Mean per step over the ranks (µs): exposed transfer (``comm``), waiting for the last participant
    (``peer_wait``), collective time hidden under compute, and the overlap ratio (0..1) of the transfer."""
    rs = _comm_rows(ctx)
    if not rs:
        return None
    exposed = mean([r.categories_us["comm"] for r in rs])
    waiting = mean([r.categories_us["peer_wait"] for r in rs])
    overlapped = mean([r.overlapped_us for r in rs])
    step = mean([r.step_us for r in rs])
    total = exposed + overlapped
    return {"exposed_us": exposed, "peer_wait_us": waiting, "overlapped_us": overlapped, "step_us": step,
            "overlap_ratio": overlapped / total if total > 0 else 0.0, "comm_us": total + waiting}


def _waited_for(ctx: Context) -> dict[str, float]:
    """Mean ``peer_wait`` per step by whom was waited for, over the rows (µs)."""
    rs = ctx.analysis.steps
    out: dict[str, float] = {}
    for s in rs:
        for who, us in s.peer_wait_on_us.items():
            out[who] = out.get(who, 0.0) + us
    n = max(len(rs), 1)
    return {k: v / n for k, v in sorted(out.items(), key=lambda kv: -kv[1])}


def _collective(ctx: Context) -> list[Finding]:
    a = ctx.analysis
    if a.strategy not in COLLECTIVE_STRATEGIES:
        return []
    o = comm_overlap(ctx)
    if o is None:
        return []
    name = a.strategy.upper() if a.strategy != "distributed" else "Collective"
    if o["comm_us"] <= 0:
        ws = {r.world_size for r in a.ranks if r.world_size}
        why = "world size 1 communicates nothing" if ws == {1} else "no collective work was seen in the steps"
        return [Finding("no_comm", "info", "No collective communication in the profiled steps", f"{why}.",
                        {"world_size": sorted(ws)})]
    exposed_pct = 100 * o["exposed_us"] / o["step_us"] if o["step_us"] else 0.0
    wait_pct = 100 * o["peer_wait_us"] / o["step_us"] if o["step_us"] else 0.0
    ev = {"exposed_comm_us": _r(o["exposed_us"]), "exposed_comm_pct": _r(exposed_pct),
          "overlapped_comm_us": _r(o["overlapped_us"]), "overlap_ratio": round(o["overlap_ratio"], 3),
          "peer_wait_us": _r(o["peer_wait_us"]), "peer_wait_pct": _r(wait_pct), "step_us": _r(o["step_us"])}
    sev = "warning" if exposed_pct >= EXPOSED_COMM_PCT else "info"
    out = [
        Finding("exposed_comm", sev, f"{name} communication not hidden behind compute",
                f"{exposed_pct:.1f} % of the step ({o['exposed_us'] / 1e3:.2f} ms, mean over ranks) is collective "
                "transfer that no compute overlaps (waiting for the last participant not included).", ev),
        Finding("comm_overlap", "info", f"{name} communication/compute overlap",
                f"{100 * o['overlap_ratio']:.0f} % of the collective transfer ran under compute "
                f"({o['overlapped_us'] / 1e3:.2f} of {(o['overlapped_us'] + o['exposed_us']) / 1e3:.2f} ms per step).",
                ev),
    ]
    worst = max(_comm_rows(ctx), key=lambda r: r.pct(r.categories_us["peer_wait"]))
    worst_pct = worst.pct(worst.categories_us["peer_wait"])
    if worst_pct >= PEER_WAIT_PCT:
        who = _waited_for(ctx)
        top = ", ".join(f"{k} ({v / 1e3:.2f} ms/step)" for k, v in list(who.items())[:3])
        out.append(Finding("peer_wait", "warning", "Collectives wait for a late participant",
                           f"rank {worst.rank} spends {worst_pct:.1f} % of its step "
                           f"({worst.categories_us['peer_wait'] / 1e3:.2f} ms; {wait_pct:.1f} % mean over ranks) inside "
                           f"collectives waiting for the last participant to arrive, waiting for {top}. That is time "
                           "lost to imbalance (a slow rank or GPU, uneven data loading), not to the link.",
                           {**ev, "worst_rank": worst.rank, "worst_peer_wait_pct": _r(worst_pct),
                            "waited_for_us_per_row_step": {k: _r(v) for k, v in who.items()}}))
    return out


def _mib(b: float) -> str:
    return f"{b / 2**20:.1f} MiB"


def _bucket_sizes(ctx: Context) -> tuple[list[int] | None, dict[str, Any] | None, str]:
    """(sizes in bytes, per-step collective counts, source in words): the manifest's reducer figures
    first; else, for traces without them, the allreduce collectives per step in the trace."""
    ddp = ctx.manifest.ddp
    sizes = ddp.bucket_sizes_bytes if ddp is not None else None
    if ddp is not None and sizes:
        how = "rebuilt" if ddp.bucket_sizes_source == "rebuilt" else "initial, not yet rebuilt"
        return list(sizes), None, f"manifest ddp section (DDP reducer, {how} buckets)"
    counts = allreduce_per_step(ctx.analysis)
    if counts is not None:
        return None, counts, ("trace: allreduce collectives per profiled step (counted, sizes unknown; "
                              "other allreduces in the window would count too)")
    return None, None, ""


def bucket_shape(n: float, total: float | None, largest: float | None, cap: float | None) -> tuple[str, str]:
    """(shape, why) of a step's gradient buckets: ``one_bucket`` | ``few_large`` | ``many_small`` |
    ``balanced`` | ``unknown``. ``n`` buckets per step, ``total`` gradient bytes (bucket sum or model
    parameters), ``largest`` bucket bytes, ``cap`` DDP's bucket_cap in bytes; None where unknown."""
    if total is not None and total < SMALL_MODEL_BYTES:
        return "balanced", f"the gradients ({_mib(total)}) are too small for bucketing to matter"
    if round(n) <= 1:
        return "one_bucket", "all gradients go in one allreduce, which can start only once backward has ended"
    if largest is not None and total:
        share = 100 * largest / total
        if share >= LARGE_BUCKET_SHARE_PCT:
            why = (f"the largest bucket holds {share:.0f} % of the gradients: its allreduce waits for most of "
                   "backward and little of it can overlap")
            if cap and largest > 2 * cap:
                why += (f"; it is over twice bucket_cap ({_mib(cap)}), so it holds one parameter larger than "
                        "the cap, which no bucket_cap_mb can split")
            return "few_large", why
    if n >= MANY_BUCKETS and (total is None or total / n < SMALL_BUCKET_BYTES):
        per = f" of {_mib(total / n)} on average" if total else ""
        return "many_small", (f"{n:g} allreduces per step{per}: each collective pays a fixed launch and "
                              "latency cost, which many small ones multiply")
    if largest is None:
        return "unknown", (f"{n:g} per step is neither one bucket nor many small ones; without their sizes "
                           "nothing more is said")
    return "balanced", "no bucket dominates and there are few enough collectives"


def _buckets(ctx: Context) -> list[Finding]:
    """DDP gradient buckets: sizes from the manifest, or the allreduce count per step from the trace."""
    a = ctx.analysis
    if a.strategy != "ddp":
        return []
    sizes, counts, source = _bucket_sizes(ctx)
    if sizes is None and counts is None:
        return []
    params = ctx.manifest.model_info.param_bytes
    params = params if params is not None and params > 0 else None
    cap = ctx.manifest.ddp.bucket_cap_bytes if ctx.manifest.ddp is not None else None
    cap = cap if cap is not None and cap > 0 else None
    ev: dict[str, Any] = {"source": source, "param_bytes": params, "bucket_cap_bytes": cap}
    if sizes is not None:
        n: float = len(sizes)
        total: float | None = float(sum(sizes))
        largest: float | None = float(max(sizes))
        ev.update(bucket_sizes_bytes=sizes, buckets_per_step=len(sizes), gradient_bytes=int(sum(sizes)),
                  largest_bucket_pct=_r(100 * max(sizes) / sum(sizes)) if sum(sizes) else None)
        listed = ", ".join(_mib(x) for x in sizes)
        what = f"{len(sizes)} gradient bucket(s) per step: {listed} (total {_mib(sum(sizes))})"
    else:
        assert counts is not None
        n, total, largest = counts["allreduce_per_step"], (float(params) if params else None), None
        ev.update(counts, buckets_per_step=n)
        what = (f"{n:g} allreduce collectives per profiled step ({counts['allreduce_collectives']} over "
                f"{counts['profiled_steps']} steps): about one per gradient bucket")
    shape, why = bucket_shape(n, total, largest, cap)
    ev["shape"] = shape
    o = comm_overlap(ctx)
    exposed_pct = 100 * o["exposed_us"] / o["step_us"] if o and o["step_us"] else None
    ev["exposed_comm_pct"] = _r(exposed_pct) if exposed_pct is not None else None
    unbalanced = shape in ("one_bucket", "few_large", "many_small")
    sev = "warning" if unbalanced and exposed_pct is not None and exposed_pct >= EXPOSED_COMM_PCT else "info"
    basis = f" Based on: {source}" + (f"; model parameters {_mib(params)}" if params else "") + "."
    return [Finding("ddp_buckets", sev, "DDP gradient buckets", f"{what}; {why}.{basis}", ev)]


def bucket_advice(f: Finding) -> str | None:
    """Advice on bucket_cap_mb from a ``ddp_buckets`` finding, with the figures it rests on; None when the
    buckets are balanced or their sizes unknown."""
    ev = f.evidence
    shape, exposed = ev.get("shape"), ev.get("exposed_comm_pct")
    total = ev.get("gradient_bytes") or ev.get("param_bytes")
    target = max(1, round(total / 4 / 2**20)) if total else None
    size = f" (e.g. bucket_cap_mb={target}, a quarter of the {_mib(total)} of gradients)" if total else ""
    cost = f" ({exposed} % of the step is allreduce transfer not hidden behind backward)" if exposed is not None else ""
    basis = f" [based on {ev.get('source')}]"
    if shape in ("one_bucket", "few_large"):
        unsplittable = ev.get("bucket_cap_bytes") and ev.get("bucket_sizes_bytes") and \
            max(ev["bucket_sizes_bytes"]) > 2 * ev["bucket_cap_bytes"]
        if unsplittable:
            return (f"DDP buckets: one parameter is larger than bucket_cap_mb and fills a bucket by itself{cost}; "
                    "a smaller cap cannot split it: overlap comes from the other buckets, or shrink that layer "
                    f"(e.g. a smaller classifier).{basis}")
        return (f"DDP buckets are few and large{cost}: lower bucket_cap_mb{size} so allreduces start while "
                f"backward still runs.{basis}")
    if shape == "many_small":
        return (f"DDP runs many small allreduces per step{cost}: raise bucket_cap_mb{size} so fewer, larger "
                f"collectives carry the gradients.{basis}")
    return None


def _stragglers(ctx: Context) -> list[Finding]:
    """The straggler summary of the matched collectives (GPU-side starts), when it names one."""
    sm = ctx.analysis.straggler_summary
    if sm.get("verdict") not in ("slow_rank", "slow_gpu"):
        return []
    who = sm["participant"]
    what = "a rank" if sm["verdict"] == "slow_rank" else "a GPU inside DP"
    return [Finding("straggler", "warning", f"{who} arrives last at collectives",
                    f"{sm['text']}: the others wait for {what}.",
                    {k: sm[k] for k in ("participant", "times_last", "collectives", "share_of_waiting", "mean_lateness_us",
                                        "caused_wait_us_per_step", "caused_wait_pct_of_step") if k in sm})]


def _data_loading(ctx: Context) -> list[Finding]:
    ref = reference_row(ctx.analysis)
    if ref is None:
        return []
    pct = ref.pct(ref.categories_us["data_loading"])
    if pct < DATA_LOADING_PCT:
        return []
    workers = ctx.manifest.config.workers
    sev = "critical" if pct >= DATA_LOADING_CRITICAL_PCT else "warning"
    return [Finding("data_loading_bound", sev, "Steps wait for the data loader",
                    f"{pct:.0f} % of the step is spent waiting for the next batch"
                    + (f" with {workers} loader workers" if workers is not None else "") + ".",
                    {"data_loading_pct": _r(pct), "data_loading_us": _r(ref.categories_us["data_loading"]),
                     "workers": workers})]


def _profiler(ctx: Context) -> list[Finding]:
    prof = ctx.manifest.profiler
    ratio = prof.overhead_ratio
    if ratio is None:
        return []
    ev = {"overhead_ratio": round(ratio, 3), "profiled_step_ms_median": prof.profiled_step_ms_median,
          "unprofiled_step_ms_median": prof.unprofiled_step_ms_median}
    if ratio >= PROFILER_OVERHEAD_RATIO:
        return [Finding("profiler_distortion", "warning", "The profiler slowed the profiled steps",
                        f"profiled steps took {ratio:.2f}× the unprofiled ones: absolute times in the trace are "
                        "inflated; compare shares, and unprofiled step times for speed.", ev)]
    return [Finding("profiler_overhead", "info", "Profiler overhead is small",
                    f"profiled steps took {ratio:.2f}× the unprofiled ones.", ev)]
