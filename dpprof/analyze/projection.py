"""What-if projection: DP and DDP step time and scaling efficiency for N = 1..8 from one profile (µs).

ALWAYS a projection (``"label": "projection"``), never a measurement. The model (terms in
:mod:`dpprof.analyze.projection_terms`, each unit-tested):

* **From the profile**, per step: ``parallel_1`` = forward + backward compute of the whole global batch on one
  device (single: its compute; DP: the fastest replica × its GPUs; DDP/FSDP: the ranks' mean × ranks), autotuning
  kernels and the optimizer left out; ``optimizer`` = the optimizer's GPU work (it does not shrink with N: every
  DDP rank and DP's GPU0 step all parameters); ``loading_1``, ``copies_1`` = data loading and copies of the whole
  batch; ``host_1`` = one process's host time per step. From a DP profile, its host time inside DP's own windows
  (``DataParallel.forward``: replicate, the replica threads, gather; and the reduce; ``host_in_dp_us``) is DP's
  and is split over its replicas (``dp_host_per_replica``; replicas from the manifest's ``device_ids``, which may
  repeat a device, else the distinct GPUs); ``host_1`` is the rest.
* **DP(N)** = parallel_1/N + optimizer + loading_1 + copies_1 + host_1 + dp_host_per_replica × N (one fresh thread
  per replica launches the same kernels, serialised by the GIL; without a DP profile host_1 × N) + GPU0's data
  path per backend (NCCL ring/tree ≈ one copy of the parameters each way through GPU0's link; copy fallback
  (N−1) copies; scatter/gather of the batch). A profile on one GPU cannot show the backend: DP over N distinct
  GPUs is projected with NCCL, as torch/csrc/cuda/comm.cpp takes it when available (labelled). A multi-GPU DP
  profile calibrates the data path: its measured transfer, scaled by the model's ratio.
* **DDP(N)** = parallel_1/N + optimizer + loading_1/N + copies_1/N + host_1 + exposed allreduce: ring allreduce per
  bucket (α + 2(N−1)/N × bytes × β; buckets from the manifest's DDP reducer, else as many equal buckets as
  allreduces per step a DDP trace shows, else DDP's defaults from the parameter bytes), the last bucket not overlapped, the others hidden behind backward (⅔ of compute) as far as it
  lasts. DP's fixed costs (its replica threads' host time, GPU0's serial work) do not carry into DDP.
* **Bandwidth per backend**: NCCL over the measured peer link (manifest, or ``--link-gbps``); gloo over the host.
  α and β come from the run's allreduce probe (manifest ``comm_probe``) when it has one, else from labelled
  defaults. CPU profiles project DDP over gloo with the collector's thread rule (cores ÷ N threads per process).
* The profile's per-step terms are divided by the run's measured profiler overhead ratio (manifest
  ``profiler.overhead_ratio``), so that rows compare with unprofiled steps.
* N = 1 for both: the single-device step. Speedup = step(1)/step(N); scaling efficiency = speedup / N.

Every input, default and assumption is listed in the result; ``measured`` rows gain ``error_pct``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dpprof.analyze.costs import dp_backend, model_compute
from dpprof.analyze.diag_figures import (
    INPUT_BYTES_PER_IMAGE,
    OUTPUT_BYTES_PER_IMAGE,
    Row,
    allreduce_per_step,
    distinct_gpus,
    gpu_rows,
    link_gbps,
    mean,
    reference_row,
    rows,
)
from dpprof.analyze.model import Analysis
from dpprof.analyze.projection_terms import (
    cpu_compute_us,
    ddp_exposed_us,
    default_buckets,
    dp_comm_us,
    link_beta_from_fit,
    ring_allreduce_us,
)
from dpprof.manifest import EMPTY, Manifest

PROJECTION_MODEL = "dpprof.projection/2"
BACKWARD_SHARE = 2 / 3
#: Labelled defaults when the run has no allreduce probe: per-collective latency (µs) and gloo's host bandwidth.
DEFAULT_ALPHA_US = {"nccl": 15.0, "gloo": 100.0}
DEFAULT_GLOO_GBPS = 2.0
DEFAULT_NCCL_HOP_ALPHA_US = 5.0


def _unavailable(out: dict[str, Any], reason: str) -> dict[str, Any]:
    out.update(available=False, reason=reason, rows=[])
    return out


def project(analysis: Analysis, manifest: Manifest | None = None, link_GBps: float | None = None,
            max_gpus: int = 8, measured: Mapping[tuple[str, int], float] | None = None,
            param_bytes: int | None = None) -> dict[str, Any]:
    """Projected DP and DDP rows for N = 1..max_gpus (and any N in ``measured``: (strategy, N) -> step ms)."""
    measured = dict(measured or {})
    out: dict[str, Any] = {"label": "projection", "model": PROJECTION_MODEL, "assumptions": [], "inputs": {},
                           "rows": [], "available": True, "reason": ""}
    ref = reference_row(analysis)
    if ref is None:
        return _unavailable(out, "the profile has no steps")
    cpu = ref.device < 0
    m = manifest or EMPTY
    params = param_bytes or m.model_info.param_bytes
    if params is None or params <= 0:
        return _unavailable(out, "no parameter size (manifest model_info.param_bytes, or --param-bytes) to size "
                            "the communication")
    cores = m.hardware.cpus
    if cpu and cores is None:
        return _unavailable(out, "a CPU profile needs the node's core count (manifest hardware.cpus) to model the "
                            "threads per process")
    p = _profile(analysis, ref, cpu, m)
    rep_src = p.pop("replicas_source", None)
    # The profiler slows what it records (most on the host and on CPU ranks): the profile's per-step terms are
    # deflated by the run's measured ratio of profiled to unprofiled step time, when the manifest has it.
    ratio = m.profiler.overhead_ratio
    ratio = ratio if ratio is not None and ratio > 1.0 else 1.0
    for k in ("parallel_1_us", "optimizer_us", "loading_1_us", "copies_1_us", "host_1_us", "dp_transfer_us",
              "dp_host_per_replica_us"):
        if k in p:
            p[k] /= ratio
    comm = _comm_model(m, link_GBps, _ddp_backend(analysis, m, cpu))
    if comm is None:
        return _unavailable(out, "no link bandwidth: none measured in the manifest, no allreduce probe, and none "
                            "declared (--link-gbps)")
    buffers = float(m.model_info.buffers_bytes or 0)
    batch = m.config.batch_size
    sizes = m.ddp.bucket_sizes_bytes if m.ddp is not None else None
    buckets, buckets_source = _buckets(analysis, sizes, params)
    measured_io = float(p.pop("io_bytes", 0.0))
    io = measured_io or (batch or 0) * (INPUT_BYTES_PER_IMAGE + OUTPUT_BYTES_PER_IMAGE)
    threads = m.config.threads or m.config.torch_threads or 1
    backend, backend_why = dp_backend(analysis)
    if not (analysis.strategy == "dp" and analysis.dp_mode == "multi_device" and distinct_gpus(analysis, None) >= 2):
        # DP projected onto N distinct GPUs: torch's broadcast_coalesced/reduce_add_coalesced take NCCL when it is
        # available for the tensors (torch/csrc/cuda/comm.cpp), which only a DP profile over 2+ GPUs can show.
        what = "it had one GPU" if analysis.strategy == "dp" else f"it is a {analysis.strategy} profile"
        backend, backend_why = "nccl", ("assumed: DP over distinct GPUs uses NCCL (torch/csrc/cuda/comm.cpp); the "
                                        f"profile cannot show DP's backend ({what})")
    dp_beta, dp_link_source = _dp_link(m, link_GBps, comm)
    dp_cal = p.pop("dp_transfer_us", None)
    n_prof = int(p.pop("n_prof"))

    def compute(n: int) -> float:
        if cpu:
            return cpu_compute_us(p["parallel_1_us"], threads, n, cores or 1) + p["optimizer_us"]
        return p["parallel_1_us"] / n + p["optimizer_us"]

    def dp_path(n: int) -> float:
        beta = dp_beta or 0.0
        t = sum(dp_comm_us(params, buffers, io, n, backend, beta, DEFAULT_NCCL_HOP_ALPHA_US).values())
        if dp_cal is not None and n_prof > 1:  # scale the measured transfer by the model's ratio
            at = sum(dp_comm_us(params, buffers, io, n_prof, backend, beta, DEFAULT_NCCL_HOP_ALPHA_US).values())
            return dp_cal * t / at if at > 0 else 0.0
        return t

    def ddp_comm(n: int) -> float:
        times = [ring_allreduce_us(b, n, comm["alpha_us"], comm["beta_us_per_byte"]) for b in buckets]
        backward = BACKWARD_SHARE * (compute(n) - p["optimizer_us"])
        return ddp_exposed_us(times, backward)

    strategies = [("ddp", ddp_comm)] if cpu or dp_beta is None else [("dp", dp_path), ("ddp", ddp_comm)]
    one = compute(1) + p["loading_1_us"] + p["copies_1_us"] + p["host_1_us"]
    top = max([max_gpus, *(n for _, n in measured)])
    rows_out: list[dict[str, Any]] = []
    for strategy, comm_fn in strategies:
        for n in range(1, top + 1):
            if strategy == "dp":
                dp_host = p.get("dp_host_per_replica_us", p["host_1_us"]) * n  # one fresh thread per replica
                fixed = p["loading_1_us"] + p["copies_1_us"] + (p["host_1_us"] if "dp_host_per_replica_us" in p
                                                                 else 0.0) + dp_host
            else:
                fixed = (p["loading_1_us"] + p["copies_1_us"]) / n + p["host_1_us"]
            if n == 1:
                fixed = one - compute(1)
            c = comm_fn(n) if n > 1 else 0.0
            step = compute(n) + fixed + c if n > 1 else one
            rows_out.append(_row(strategy, n, step, one, c, compute(n), fixed, batch, measured))
    out["rows"] = rows_out
    out["inputs"] = {**{k: round(v, 1) for k, v in p.items()}, "profile_strategy": analysis.strategy,
                     "profile_devices": n_prof, "cpu_profile": cpu, "param_bytes": int(params),
                     "buffers_bytes": int(buffers), "batch_size": batch, "dp_backend": backend,
                     **({"replicas_source": rep_src} if rep_src else {}),
                     "dp_backend_source": backend_why, "dp_link_source": dp_link_source,
                     **({"dp_beta_us_per_byte": dp_beta} if dp_beta is not None else {}),
                     "dp_transfer_source": "calibrated from the measured "
                     f"{n_prof}-GPU DP transfer" if dp_cal is not None and n_prof > 1 else "bytes × β",
                     "buckets_bytes": [int(b) for b in buckets],
                     "buckets_source": buckets_source,
                     "profiler_deflation": round(ratio, 3),
                     **comm, **({"cores": cores, "threads_profiled": threads} if cpu else {})}
    out["assumptions"] = _assumptions(cpu, comm)
    if not cpu and dp_beta is None:
        out["assumptions"].append(f"DP is not projected: {dp_link_source}")
    if not cpu and io and not measured_io:
        out["assumptions"].append("DP's scatter and gather move CIFAR-shaped batches (3×32×32 fp32 inputs, 10 fp32 "
                                  "outputs per image): the profile shows no peer copies to measure them")
    if ratio > 1.0:
        out["assumptions"].append(f"the profile's times are divided by the profiler's measured overhead ratio "
                                  f"({ratio:.2f}: profiled ÷ unprofiled median step)")
    return out


def _row(strategy: str, n: int, step: float, one: float, comm: float, compute: float, fixed: float,
         batch: Any, measured: Mapping[tuple[str, int], float]) -> dict[str, Any]:
    speedup = one / step if step > 0 else None
    row: dict[str, Any] = {
        "strategy": strategy, "gpus": n, "step_ms": round(step / 1e3, 4), "compute_ms": round(compute / 1e3, 4),
        "fixed_ms": round(fixed / 1e3, 4), "comm_ms": round(comm / 1e3, 4),
        "images_per_s": round(batch / (step / 1e6), 1) if batch and step > 0 else None,
        "speedup": round(speedup, 3) if speedup else None,
        "scaling_efficiency": round(speedup / n, 3) if speedup else None,
    }
    meas = measured.get((strategy, n))
    if meas:
        row["measured_step_ms"] = round(float(meas), 4)
        row["error_pct"] = round(100 * (step / 1e3 - meas) / meas, 1)
    return row


def replicas(analysis: Analysis, manifest: Manifest) -> tuple[int, str]:
    """(replicas of a multi-device DP run, where the count came from): the manifest's ``device_ids`` (which may
    repeat a device, e.g. ``[0, 0]``), else the replica threads the trace shows (``RankInfo.dp_replicas``), else
    the distinct GPUs with activity in the trace."""
    ids = manifest.config.device_ids
    if ids and len(ids) > 1:
        return len(ids), f"manifest config.device_ids {list(ids)}"
    threads = [r.dp_replicas for r in analysis.ranks if r.dp_replicas]
    if threads:
        return max(threads), "the trace: threads launching GPU work inside DataParallel.forward (parallel_apply)"
    return max(1, distinct_gpus(analysis, None)), "distinct GPUs with activity in the trace"


def _buckets(analysis: Analysis, sizes: Any, params: float) -> tuple[list[float], str]:
    """DDP's gradient buckets (bytes) and where they came from: the manifest (DDP's reducer), else the number of
    allreduces per step a DDP trace shows (sizes taken equal), else DDP's defaults from the parameter bytes."""
    if sizes:
        return [float(x) for x in sizes], "manifest ddp section (DDP's reducer)"
    per_step = allreduce_per_step(analysis) if analysis.strategy == "ddp" else None
    k = int(round(per_step["allreduce_per_step"])) if per_step else 0
    if per_step is not None and k >= 1:
        return [params / k] * k, (f"trace: {per_step['allreduce_per_step']} allreduces per step (DDP's buckets; "
                                  "sizes taken equal, the parameter bytes split over them)")
    return default_buckets(params), "DDP defaults (1 MiB first, then 25 MiB) from the parameter bytes"


def _profile(analysis: Analysis, ref: Row, cpu: bool, manifest: Manifest) -> dict[str, Any]:
    """The profile's per-step terms (module docstring)."""
    rs = (rows(analysis) if cpu else gpu_rows(analysis)) or [ref]
    n_prof = max(1, len({r.rank for r in rs}) if cpu else distinct_gpus(analysis, None))
    opt = ref.optimizer_us
    out: dict[str, Any] = {"n_prof": float(n_prof), "optimizer_us": opt}
    if analysis.strategy == "dp" and analysis.dp_mode == "multi_device" and not cpu:
        n_rep, src = replicas(analysis, manifest)
        own = max(0.0, model_compute(ref) - (ref.gpu0_serial_us or 0.0))
        replica = min([own, *(model_compute(r) for r in rs if r.device != ref.device)])
        # a repeated device runs its replicas one after the other: its compute is theirs together
        out["parallel_1_us"] = replica * n_prof if n_prof > 1 else max(0.0, model_compute(ref) - opt)
        out["loading_1_us"] = ref.categories_us["data_loading"]
        out["copies_1_us"] = ref.categories_us["memcpy"]
        # DP's own host time (DataParallel.forward: replicate, one thread per replica; its reduce) is shared by
        # its replicas and does not carry into DDP; the rest of the process's host time does.
        in_dp = min(ref.host_in_dp_us, ref.categories_us["host"])
        out["host_1_us"] = ref.categories_us["host"] - in_dp
        out["dp_host_per_replica_us"] = in_dp / n_rep
        out["replicas_profiled"] = float(n_rep)
        out["replicas_source"] = src
        if n_prof > 1:
            out["dp_transfer_us"] = ref.dp_phases_us
        out["io_bytes"] = sum(r.ptop_bytes for r in rs)
    elif analysis.strategy in ("ddp", "fsdp", "distributed") and len({r.rank for r in rs}) > 1:
        out["parallel_1_us"] = mean([model_compute(r) - r.optimizer_us for r in rs]) * n_prof
        out["loading_1_us"] = mean([r.categories_us["data_loading"] for r in rs]) * n_prof
        out["copies_1_us"] = mean([r.categories_us["memcpy"] for r in rs]) * n_prof
        out["host_1_us"] = mean([r.categories_us["host"] for r in rs])
    else:
        out["parallel_1_us"] = max(0.0, model_compute(ref) - opt)
        out["loading_1_us"] = ref.categories_us["data_loading"]
        out["copies_1_us"] = ref.categories_us["memcpy"]
        out["host_1_us"] = ref.categories_us["host"]
    return out


def _peer_link(manifest: Manifest, declared: float | None) -> tuple[float | None, str]:
    """GPU0's peer-link bandwidth (GB/s) and where it came from: declared (``--link-gbps``), else the manifest's."""
    return (float(declared), "declared (--link-gbps)") if declared else link_gbps(manifest)


def _dp_link(manifest: Manifest, declared: float | None, comm: Mapping[str, Any]) -> tuple[float | None, str]:
    """(β in µs per byte over GPU0's peer link, where it came from) for DP's data path, whatever DDP runs over: a
    declared bandwidth, else the manifest's measured peer link, else DDP's own NCCL model; None when none of them."""
    bw, src = _peer_link(manifest, declared)
    if bw:
        return 1.0 / (bw * 1e3), f"GPU0's peer link: {src}"
    if comm.get("comm_backend") == "nccl":
        return float(comm["beta_us_per_byte"]), f"DDP's NCCL model ({comm['comm_source']})"
    return None, ("no peer-link bandwidth for DP's NCCL broadcast/reduce (none measured in the manifest, none "
                  "declared with --link-gbps), and DDP's model is over gloo")


def _ddp_backend(analysis: Analysis, manifest: Manifest, cpu: bool) -> tuple[str, str]:
    """(backend DDP is projected over, why): the profiled run's own process-group backend when it had one (the
    manifest's ``config.backend``, else the traces' ``distributedInfo``), else gloo on the CPU and NCCL on GPUs."""
    if analysis.strategy in ("ddp", "fsdp", "distributed"):
        if manifest.config.backend in ("gloo", "nccl"):
            return manifest.config.backend, "the run's backend (manifest config.backend)"
        seen = {r.backend for r in analysis.ranks if r.backend in ("gloo", "nccl")}
        if len(seen) == 1:
            b = seen.pop()
            return b, "the run's backend (the traces' distributedInfo)"
    return ("gloo", "a CPU profile: gloo") if cpu else ("nccl", "GPUs: NCCL")


def _comm_model(manifest: Manifest, link: float | None, chosen: tuple[str, str]) -> dict[str, Any] | None:
    """α (µs) and per-link β (µs/byte) for DDP's allreduce, with where each came from."""
    backend, why = chosen
    probe = manifest.comm_probe
    if probe is not None and probe.backend == backend and probe.alpha_us is not None and \
            probe.beta_us_per_byte is not None and probe.world_size is not None and probe.beta_us_per_byte > 0:
        return {"comm_backend": backend, "comm_backend_source": why, "alpha_us": probe.alpha_us,
                "beta_us_per_byte": link_beta_from_fit(probe.beta_us_per_byte, probe.world_size),
                "comm_source": f"measured: the run's {backend} allreduce probe (manifest comm_probe)"}
    if backend == "gloo":
        return {"comm_backend": backend, "comm_backend_source": why, "alpha_us": DEFAULT_ALPHA_US[backend],
                "beta_us_per_byte": 1.0 / (DEFAULT_GLOO_GBPS * 1e3),
                "comm_source": f"default: α {DEFAULT_ALPHA_US[backend]:.0f} µs, gloo over the host at "
                               f"{DEFAULT_GLOO_GBPS} GB/s (no allreduce probe in the manifest)"}
    bw, src = _peer_link(manifest, link)
    if not bw:
        return None
    return {"comm_backend": backend, "comm_backend_source": why, "alpha_us": DEFAULT_ALPHA_US[backend],
            "beta_us_per_byte": 1.0 / (bw * 1e3),
            "link_GBps": round(bw, 3), "comm_source": f"NCCL over the peer link: {src}; α default "
            f"{DEFAULT_ALPHA_US[backend]:.0f} µs (no allreduce probe)"}


def _assumptions(cpu: bool, comm: Mapping[str, Any]) -> list[str]:
    out = [
        "forward and backward split evenly over N devices; the optimizer does not shrink with N (every DDP rank and "
        "DP's GPU0 step all parameters); autotuning kernels are left out",
        "DDP: each process loads and copies its 1/N of the batch (loaders per process); one process's host time "
        "per step does not change with N; DP: one process loads and copies the whole batch",
        f"DDP: ring allreduce per bucket, α + 2(N−1)/N × bytes × β ({comm['comm_source']}); the last bucket cannot "
        "overlap; the others hide behind backward (⅔ of compute) as far as it lasts",
        "one link bandwidth for every GPU pair; no NVLink/PCIe topology effects",
    ]
    if cpu:
        out.append("CPU: N processes get cores ÷ N threads each (the collector's rule); compute scales linearly "
                   "with threads; DP has no GPU to split over and is not projected")
    else:
        out.append("DP: one fresh thread per replica launches the same kernels, serialised by the GIL: DP's own host "
                   "time (inside DataParallel.forward and its reduce) per replica × N, the rest of the process's host "
                   "time once; DDP keeps only that rest (its processes have no replicate, replica threads or reduce); "
                   "replicate's per-module Python copies are not modelled beyond that; GPU0's data path per backend: "
                   f"NCCL ring/tree ≈ one copy each way with {DEFAULT_NCCL_HOP_ALPHA_US:.0f} µs per hop, copy "
                   "fallback (N−1) copies; scatter/gather (N−1)/N of the batch's inputs and outputs")
    return out
