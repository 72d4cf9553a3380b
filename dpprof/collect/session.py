"""The pieces a worker assembles around the loop: manifest start and finish, NVML sampler, model placement
and data, profiler window. Kept apart from worker.py so each step reads on its own."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

from dpprof.collect.config import ProfilerSettings, RunConfig
from dpprof.collect.data import build_loaders
from dpprof.collect.identity import RankIdentity
from dpprof.collect.manifest import ManifestWriter, collect_versions_and_hardware, median_or_none, probe_links
from dpprof.collect.models import build_model, model_info
from dpprof.collect.profiler import TraceWindow
from dpprof.collect.strategies import Placement, wrap_ddp, wrap_dp, wrap_fsdp, wrap_single
from dpprof.collect.train import LoopResult
from dpprof.rundir import TRACES_DIR
from dpprof.version import __version__
from dpprof.vocabulary import PROCESS_PER_RANK


def _probe_indices(cfg: RunConfig) -> list[int]:
    if cfg.device != "cuda":
        return []
    count = torch.cuda.device_count()
    if cfg.strategy == "dp":
        return sorted(set(cfg.device_ids or range(cfg.gpus or count)))
    if cfg.strategy in PROCESS_PER_RANK:
        return list(range(min(cfg.nproc, count)))
    return [(cfg.device_ids or [0])[0]]


def start_manifest(cfg: RunConfig, ctx: RankIdentity, run_dir: Path, warnings: list[str]) -> ManifestWriter:
    """Write manifest.json with status ``running``: config, versions, hardware, link bandwidth."""
    versions, hardware = collect_versions_and_hardware(warnings)
    versions.setdefault("dpprof", __version__)
    config = cfg.manifest_section()
    # Intra-op threads of this process (DDP: each worker's, from OMP_NUM_THREADS set by the launcher).
    config["torch_threads"] = torch.get_num_threads()
    config["omp_num_threads_env"] = os.environ.get("OMP_NUM_THREADS")
    manifest = ManifestWriter.start(run_dir, run_id=cfg.run_id, command=cfg.command,
                              created_unix_ns=cfg.created_unix_ns or time.time_ns(),
                              config=config, versions=versions, hardware=hardware,
                              nodes=ctx.nodes or [])
    if cfg.probe:
        # Short (a few hundred ms on a GPU); other DDP ranks wait for it in DDP's first broadcast.
        manifest.data["link_bandwidth"] = probe_links(_probe_indices(cfg), warnings)
    else:
        manifest.data["link_bandwidth"] = {"h2d_GBps": None, "d2h_GBps": None, "p2p_GBps": {},
                                           "measured": False, "note": "probe turned off (--no-probe)"}
    manifest.data["warnings"] = list(warnings)
    manifest.write()
    return manifest


def cuda_uuids(device: str) -> list[str] | None:
    """CUDA's GPU UUIDs in CUDA order (they make the NVML-to-CUDA mapping exact), on a CUDA run."""
    if device != "cuda":
        return None
    try:
        return [str(torch.cuda.get_device_properties(i).uuid) for i in range(torch.cuda.device_count())]
    except (AttributeError, RuntimeError):
        return None


def open_nvml(period_ms: int, ctx: RankIdentity, run_dir: Path, warnings: list[str],
              uuids: list[str] | None) -> tuple[Any | None, str | None]:
    """The node's NVML sampler (local rank 0 only) and its file name, or (None, None) elsewhere."""
    if not ctx.is_node_main:
        return None, None
    name = f"nvml.{ctx.node_key}.jsonl"
    try:
        from dpprof.collect.nvml import NvmlSampler
    except ImportError:
        warnings.append("NVML sampler not available in this dpprof: no GPU samples recorded")
        return None, None
    return NvmlSampler(run_dir / name, ctx.host, period_ms=period_ms, cuda_uuids=uuids), name


def make_placement(cfg: RunConfig, ctx: RankIdentity, manifest: ManifestWriter | None,
                   warnings: list[str]) -> tuple[Placement, Any, Any]:
    """(placement, the plain model for evaluation, loaders), recording model and data in the manifest."""
    model = build_model(cfg.model, seed=cfg.seed)
    info = model_info(cfg.model, model)
    use_cuda = cfg.device == "cuda"
    if cfg.strategy == "single":
        placement = wrap_single(model, ctx.device)
    elif cfg.strategy == "dp":
        placement = wrap_dp(model, use_cuda, cfg.gpus, cfg.device_ids)
        if placement.note and ctx.is_main:
            print(f"dpprof: DataParallel mode {placement.dp_mode}: {placement.note}", flush=True)
    elif cfg.strategy == "fsdp":
        placement = wrap_fsdp(model, ctx.device, ctx.world_size)
    else:
        placement = wrap_ddp(model, ctx.device)
    loaders = build_loaders(cfg.data, root=cfg.data_root, download=cfg.download and ctx.is_main,
                            train_size=cfg.train_size, test_size=cfg.test_size, seed=cfg.seed,
                            batch_size=cfg.per_rank_batch_size, workers=cfg.workers, pin_memory=use_cuda,
                            rank=ctx.rank, world_size=ctx.world_size)
    if manifest is not None:
        manifest.data["model_info"] = info
        manifest.data["data_info"] = loaders.info
        manifest.data["dp_mode"] = placement.dp_mode
        if placement.device_ids is not None:
            manifest.data["config"]["device_ids"] = placement.device_ids
        if placement.note and placement.dp_mode == "no_gpu":
            warnings.append(placement.note)
        manifest.data["warnings"] = list(dict.fromkeys(manifest.data["warnings"] + warnings))
        manifest.write()
    # Held-out accuracy runs the plain model; FSDP2 shards the model in place (its forward gathers).
    plain = placement.module.module if cfg.strategy in ("dp", "ddp") else placement.module
    return placement, plain, loaders


def window_for(cfg: RunConfig, ctx: RankIdentity, run_dir: Path, placement: Placement) -> TraceWindow | None:
    if not cfg.profile:
        return None
    # torch writes distributedInfo itself only when torch.distributed is initialised (DDP).
    dist_info = None if ctx.distributed else {"backend": None, "rank": 0, "world_size": 1}
    meta = {"run_id": cfg.run_id, "strategy": cfg.strategy, "model": cfg.model, "rank": ctx.rank,
            "world_size": ctx.world_size, "dp_mode": placement.dp_mode, "device_ids": placement.device_ids,
            "batch_size": cfg.batch_size, "per_rank_batch_size": cfg.per_rank_batch_size,
            "dpprof_version": __version__}
    return TraceWindow(run_dir / TRACES_DIR, ctx.rank, wait=cfg.profile_wait, warmup=cfg.profile_warmup,
                       active=cfg.profile_active, use_cuda=cfg.device == "cuda",
                       all_threads=cfg.profile_all_threads, record_shapes=cfg.record_shapes,
                       with_stack=cfg.with_stack, distributed_info=dist_info, extra_metadata=meta)


def unprofiled_steps(cfg: ProfilerSettings, steps: list[dict[str, Any]]) -> tuple[str | None, list[dict[str, Any]]]:
    """The steps that ran without the profiler and stand for the run's speed, and which they are.

    ``"after_window"``: steps after the profiler window; ``"before_window"``: when none follows it, the
    wait steps except step 0 (cold caches, DDP bucket rebuild); ``"no_profiler"`` (``--no-profile``):
    every step but step 0 (all of them in a one-step run). ``(None, [])`` when there is no such step.
    Warm-up and active steps never count: the profiler inflates them (several-fold for small models
    on a CPU).
    """
    if not cfg.profile:
        later = [s for s in steps if s["step"] >= 1]
        return "no_profiler", later or list(steps)
    after = [s for s in steps if s["step"] >= cfg.profiler_window_end]
    before = [s for s in steps if 1 <= s["step"] < cfg.profile_wait]
    if after:
        return "after_window", after
    return ("before_window", before) if before else (None, [])


def profiler_section(cfg: ProfilerSettings, steps: list[dict[str, Any]], all_threads: bool) -> dict[str, Any]:
    """Median wall time of profiled (active) steps vs unprofiled ones (:func:`unprofiled_steps`), and
    their ratio."""
    profiled = [s["wall_ms"] for s in steps if s["profiled"]]
    basis, plain = unprofiled_steps(cfg, steps) if cfg.profile else (None, [])
    p, u = median_or_none(profiled), median_or_none([s["wall_ms"] for s in plain])
    return {"wait": cfg.profile_wait, "warmup": cfg.profile_warmup, "active": cfg.profile_active,
            "profile_all_threads": all_threads, "enabled": cfg.profile,
            "profiled_step_ms_median": p, "unprofiled_step_ms_median": u,
            "overhead_ratio": round(p / u, 4) if p and u else None,
            "profiled_steps": len(profiled), "unprofiled_steps": len(plain),
            "unprofiled_basis": basis}


def finalize(manifest: ManifestWriter, cfg: ProfilerSettings, result: LoopResult | None, status: str,
             signal_name: str | None, warnings: list[str], per_rank: list[dict[str, Any]]) -> None:
    """Rank 0's last manifest write: summary, profiler overhead, peak memory, status."""
    steps = result.steps if result is not None else []
    epochs = result.epochs if result is not None and result.epochs else manifest.data["epochs"]
    # The run's speed from steps without the profiler, the same steps as the profiler section's
    # unprofiled median; every step only when none ran without it (basis "all_steps").
    basis, timed = unprofiled_steps(cfg, steps)
    if not timed:
        basis, timed = "all_steps", list(steps)
    last = epochs[-1] if epochs else {}
    manifest.data["epochs"] = epochs
    manifest.data["summary"] = {
        "steps": len(steps), "step_ms_median": median_or_none([s["wall_ms"] for s in timed]),
        "images_per_s_median": median_or_none([s["images_per_s"] for s in timed if s["images_per_s"]]),
        "median_steps": len(timed), "median_basis": basis, "epochs": len(epochs),
        "final_train_acc": last.get("train_acc"), "final_test_acc": last.get("test_acc"),
        "wall_s": round(result.wall_s, 3) if result is not None else None}
    all_threads = cfg.profile_all_threads and _all_threads_supported()
    manifest.data["profiler"] = profiler_section(cfg, steps, all_threads)
    manifest.data["peak_memory_bytes"] = {k: v for n in per_rank for k, v in n["peak_memory_bytes"].items()}
    window_end = cfg.profiler_window_end
    if cfg.profile and len(steps) < window_end and status == "complete":
        warnings.append(f"run has {len(steps)} steps but the profiler window ends after step {window_end}: "
                        "the trace covers fewer active steps than asked")
    if signal_name:
        warnings.append(f"stopped by {signal_name} after {len(steps)} steps: run incomplete")
    for w in warnings:
        manifest.warn(w)
    manifest.set_status(status)
    manifest.data["ended_unix_ns"] = time.time_ns()
    manifest.write()


def _all_threads_supported() -> bool:
    from dpprof.collect.profiler import all_threads_config

    return all_threads_config() is not None
