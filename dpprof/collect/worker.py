"""One rank of a run, from setup to the last file: the code single/DP run in-process and torchrun runs
per DDP process (``python -m dpprof.collect.worker CONFIG_JSON``).

Order matters: the manifest (rank 0) and the NVML sampler (local rank 0 of each node) start before
training, so a run killed at any point leaves a readable run directory; SIGINT/SIGTERM end the loop
after the current step, finished profiler windows are already on disk, and the manifest says
``incomplete``.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import torch

from dpprof.collect.comm_probe import probe_for_run
from dpprof.collect.config import RunConfig
from dpprof.collect.ddp_info import BucketWatch
from dpprof.collect.fsdp_info import fsdp_section
from dpprof.collect.identity import RankIdentity
from dpprof.collect.manifest import ManifestWriter, StepsWriter, node_gpus, steps_file_name, write_node_file
from dpprof.collect.session import cuda_uuids, finalize, make_placement, open_nvml, start_manifest, window_for
from dpprof.collect.train import LoopResult, LoopSetup, StopRequest, train_loop
from dpprof.rundir import TRACES_DIR
from dpprof.vocabulary import PROCESS_PER_RANK


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def setup_identity(cfg: RunConfig) -> RankIdentity:
    """Initialise torch.distributed for DDP and agree on node names; plain context otherwise."""
    host = socket.gethostname()
    use_cuda = cfg.device == "cuda"
    if cfg.strategy not in PROCESS_PER_RANK:
        device = torch.device("cuda", (cfg.device_ids or [0])[0]) if use_cuda else torch.device("cpu")
        return RankIdentity(host=host, node_key=host, device=device,
                       nodes=[{"host": host, "node_rank": 0, "file": f"nodes/{host}.json"}])
    import torch.distributed as dist

    ctx = RankIdentity(rank=_env_int("RANK", 0), world_size=_env_int("WORLD_SIZE", 1),
                  local_rank=_env_int("LOCAL_RANK", 0), node_rank=_env_int("GROUP_RANK", 0),
                  host=host, distributed=True)
    if use_cuda:
        torch.cuda.set_device(ctx.local_rank)
        ctx.device = torch.device("cuda", ctx.local_rank)
    dist.init_process_group(backend=cfg.backend or ("nccl" if use_cuda else "gloo"))
    everyone: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(everyone, (ctx.host, ctx.node_rank))
    nodes = sorted({(h, n) for h, n in everyone}, key=lambda hn: hn[1])
    # Two "nodes" on one host (a local multi-node test) would share <host>.json: add the node rank then.
    shared = {h for h, _ in nodes if sum(1 for h2, _ in nodes if h2 == h) > 1}
    key = {(h, n): (f"{h}-node{n}" if h in shared else h) for h, n in nodes}
    ctx.node_key = key[(ctx.host, ctx.node_rank)]
    ctx.nodes = [{"host": h, "node_rank": n, "file": f"nodes/{key[(h, n)]}.json"} for h, n in nodes]
    return ctx


@contextlib.contextmanager
def stop_on_signals(stop: StopRequest) -> Any:
    """First SIGINT/SIGTERM: finish the current step, then wrap up. A second one interrupts at once."""
    def handler(signum: int, frame: Any) -> None:
        if stop.requested:
            raise KeyboardInterrupt
        stop.signal_name = signal.Signals(signum).name

    if threading_main():
        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    else:
        old = {}
    try:
        yield stop
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def run_worker(cfg: RunConfig, progress: Any | None = None) -> int:
    """Run one rank. Returns 0 when complete, 130 when stopped by a signal (run marked incomplete)."""
    from dpprof.collect.launch import KINETO_QUIET

    # Read by libkineto when the profiler starts; torchrun workers already inherit it from the launcher.
    os.environ.setdefault("KINETO_LOG_LEVEL", KINETO_QUIET)
    run_dir = Path(cfg.run_dir)
    stop = StopRequest()
    with stop_on_signals(stop):
        ctx = setup_identity(cfg)
        finished = False
        try:
            code = _run(cfg, ctx, run_dir, stop, progress)
            finished = code == 0
            return code
        finally:
            if ctx.distributed:
                import torch.distributed as dist

                with contextlib.suppress(Exception):
                    if finished:
                        # Tear down together: a rank that destroys its gloo group while its peer is still
                        # sending aborts the peer ("terminate called without an active exception", SIGABRT).
                        dist.barrier()
                    dist.destroy_process_group()


def _run(cfg: RunConfig, ctx: RankIdentity, run_dir: Path, stop: StopRequest, progress: Any | None) -> int:
    torch.backends.cudnn.benchmark = cfg.cudnn_benchmark
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    (run_dir / TRACES_DIR).mkdir(parents=True, exist_ok=True)
    warnings: list[str] = []
    manifest: ManifestWriter | None = start_manifest(cfg, ctx, run_dir, warnings) if ctx.is_main else None
    steps_writer = StepsWriter(run_dir / steps_file_name(ctx.rank))
    sampler, nvml_file = open_nvml(cfg.nvml_period_ms, ctx, run_dir, warnings, cuda_uuids(cfg.device))
    status = "failed"
    result = LoopResult()
    watch: BucketWatch | None = None
    t0 = time.perf_counter()
    try:
        # Every rank, before training: allreduce latency and bandwidth for the projection (rank 0 records).
        comm = probe_for_run(cfg.strategy, ctx.distributed, ctx.world_size, ctx.device, cfg.comm_probe)
        if manifest is not None:
            manifest.data["comm_probe"] = comm
            manifest.write()
        with contextlib.ExitStack() as stack:
            if sampler is not None:
                stack.enter_context(sampler)
            placement, plain, loaders = make_placement(cfg, ctx, manifest, warnings)
            if cfg.strategy == "ddp" and manifest is not None:
                watch = BucketWatch(placement.module)
            if cfg.strategy == "fsdp" and manifest is not None:
                manifest.data["fsdp"] = fsdp_section(placement.module)
            window = window_for(cfg, ctx, run_dir, placement)
            if window is not None:
                stack.enter_context(window)
                warnings.extend(window.warnings)
            setup = LoopSetup(rank=ctx.rank, world_size=ctx.world_size, global_batch=cfg.batch_size,
                              steps=cfg.steps, epochs=cfg.epochs, lr=cfg.lr, momentum=cfg.momentum,
                              loss_every=cfg.loss_every, exact_timing=cfg.exact_timing)
            if window is not None:
                setup.is_profiled = window.is_active_step
                setup.is_profiler_on = window.is_profiler_on
            total = _planned_steps(cfg, len(loaders.train))
            if progress is not None:
                progress.begin(total)

            def on_step(rec: dict[str, Any]) -> None:
                steps_writer.write(rec)
                # Between steps (outside the timed part): the buckets as soon as DDP has rebuilt them.
                if watch is not None and manifest is not None and watch.poll(rec["step"]):
                    manifest.data["ddp"] = watch.section
                    manifest.write()
                if progress is not None:
                    progress.advance(rec)

            def on_epoch(rec: dict[str, Any]) -> None:
                if manifest is not None:
                    manifest.data["epochs"].append(rec)
                    manifest.write()
                if progress is not None:
                    progress.epoch(rec)

            train_loop(setup, placement.module, plain, loaders, placement.input_device,
                       placement.output_device, window, stop, on_step, on_epoch, ctx.distributed, result)
        if sampler is not None:
            warnings.extend(getattr(sampler, "warnings", []))
        status = "incomplete" if result.stopped_by else "complete"
    except KeyboardInterrupt:
        status = "incomplete"
        stop.signal_name = stop.signal_name or "SIGINT"
    except Exception as exc:
        if not stop.requested:
            raise
        # After a signal, peers leave at slightly different steps; the collective this rank was in then
        # fails. That is the interruption, not a new fault.
        status = "incomplete"
        print(f"dpprof worker rank {ctx.rank}: stopped by {stop.signal_name} while a peer was leaving "
              f"({type(exc).__name__})", file=sys.stderr, flush=True)
    finally:
        if not result.wall_s:
            result.wall_s = time.perf_counter() - t0
        steps_writer.close()
        peak = _peak_memory(cfg, ctx)
        node = {"host": ctx.host, "node_rank": ctx.node_rank, "node_key": ctx.node_key,
                "ranks": [ctx.rank], "nvml_file": nvml_file,
                "peak_memory_bytes": {f"{ctx.node_key}:{k}": v for k, v in peak.items()},
                "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "written_unix_ns": time.time_ns()}
        per_rank = _gather_node_info(ctx, node, ok=status == "complete")
        if ctx.is_node_main:
            mine = [n for n in per_rank if n["node_key"] == ctx.node_key] or [node]
            merged = dict(node, ranks=sorted(r for n in mine for r in n["ranks"]),
                          peak_memory_bytes={k: v for n in mine for k, v in n["peak_memory_bytes"].items()},
                          peak_rss_bytes=max(n["peak_rss_bytes"] for n in mine))
            merged["gpus"] = node_gpus()
            write_node_file(run_dir, ctx.node_key, merged)
        if manifest is not None:
            if watch is not None:
                manifest.data["ddp"] = watch.section
            finalize(manifest, cfg, result, status, stop.signal_name, warnings, per_rank)
    return 0 if status == "complete" else 130


def _gather_node_info(ctx: RankIdentity, node: dict[str, Any], ok: bool) -> list[dict[str, Any]]:
    """Every rank's node record, collected on all ranks; only this rank's own after a failure or signal
    (a collective with a dead peer would hang)."""
    if not (ctx.distributed and ok):
        return [node]
    import torch.distributed as dist

    everyone: list[Any] = [None] * ctx.world_size
    try:
        dist.all_gather_object(everyone, node)
    except Exception:  # a peer gone at the very end: keep what this rank knows
        return [node]
    return [n for n in everyone if n is not None]


def _peak_memory(cfg: RunConfig, ctx: RankIdentity) -> dict[int, int]:
    """Peak bytes allocated by this process on each GPU it used (empty on CPU)."""
    if cfg.device != "cuda" or not torch.cuda.is_available():
        return {}
    if cfg.strategy == "dp" and cfg.device_ids:
        devices = sorted(set(cfg.device_ids))
    else:
        devices = [ctx.device.index or 0]
    return {d: int(torch.cuda.max_memory_allocated(d)) for d in devices}


def _planned_steps(cfg: RunConfig, per_epoch: int) -> int:
    limits = []
    if cfg.steps is not None:
        limits.append(cfg.steps)
    if cfg.epochs is not None:
        limits.append(cfg.epochs * per_epoch)
    return min(limits)


def main(argv: list[str] | None = None) -> int:
    """torchrun's entry: ``python -m dpprof.collect.worker '<RunConfig JSON>'``."""
    from dpprof.collect.progress import ConsoleProgress
    from dpprof.errors import DpprofError

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m dpprof.collect.worker CONFIG_JSON", file=sys.stderr)
        return 2
    cfg = RunConfig.from_json(args[0])
    rank = _env_int("RANK", 0)
    progress = ConsoleProgress(rank=rank) if rank == 0 and not cfg.quiet else None
    try:
        return run_worker(cfg, progress)
    except DpprofError as exc:
        print(f"dpprof worker rank {rank}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    finally:
        if progress is not None:
            progress.close()


def exit_now(code: int) -> None:
    """End a torchrun worker without the interpreter's teardown, once everything it writes is on disk.

    At teardown a gloo process group still referenced by DDP's reducer (or by a probe's tensors) is destroyed
    in whatever order the interpreter frees objects; one rank in about eight then aborted with "terminate
    called without an active exception" (a joinable std::thread destroyed), SIGABRT, after a complete run
    (measured: 1 of 8 two-rank CPU runs). Every file this process writes is written and closed by then
    (atomic writes, flushed step records), so the streams are flushed and the process exits directly.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
