"""Lay synthetic rank traces out as a dpprof run directory (docs/run-format.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dpprof.rundir import MANIFEST, TRACES_DIR, trace_file_name, write_json
from tests.synth.kineto import BASE_TIME_NS, RankTrace

#: CIFAR VGG16 (BN, 512->10), the study's model (FIELD_NOTES "Sizes that matter").
VGG16_CIFAR_PARAMS = 14_728_266


def write_run(run_dir: Path, traces: list[RankTrace], *, strategy: str, gpus: int,
              backend: str | None = None) -> Path:
    """Write ``run_dir/traces/rank{R}.{time_ns}.pt.trace.json.gz`` per rank and a ``manifest.json``.

    The manifest states only what the synthetic run defines (strategy, GPUs, model size) and says it is
    synthetic; figures a real collection would measure (bandwidth, step times, accuracy) are null.
    Returns the ``traces/`` folder.
    """
    folder = run_dir / TRACES_DIR
    files = []
    for tr in traces:
        path = folder / trace_file_name(tr.rank, BASE_TIME_NS)
        tr.write(path)
        files.append(f"{TRACES_DIR}/{path.name}")
    world = len(traces) if strategy in ("ddp", "fsdp") else 1
    write_json(run_dir / MANIFEST, _manifest(run_dir.name, strategy, gpus, world, backend, files))
    return folder


def _manifest(run_id: str, strategy: str, gpus: int, world: int, backend: str | None,
              files: list[str]) -> dict[str, Any]:
    return {
        "schema": "dpprof.manifest/1", "run_id": run_id, "status": "complete", "complete": True,
        "command": ["tests/synth"], "created_unix_ns": BASE_TIME_NS,
        "config": {"strategy": strategy, "model": "vgg16_cifar", "data": "synthetic", "data_root": None,
                   "batch_size": 128, "per_rank_batch_size": 128 // world, "gpus": gpus,
                   "device_ids": list(range(gpus)) if strategy == "dp" else None,
                   "nproc": world, "nnodes": 1, "world_size": world, "epochs": None, "steps": 6,
                   "lr": 0.1, "lr_rule": "fixed", "momentum": 0.9, "workers": 4, "seed": 0,
                   "profile_wait": 1, "profile_warmup": 2, "profile_active": 3, "profile_all_threads": False,
                   "record_shapes": True, "with_stack": False, "nvml_period_ms": 100, "loss_every": 0,
                   "exact_timing": False, "device": "cuda", "backend": backend},
        "dp_mode": "multi_device" if strategy == "dp" else None,
        "model_info": {"name": "vgg16_cifar", "params": VGG16_CIFAR_PARAMS,
                       "param_bytes": 4 * VGG16_CIFAR_PARAMS, "buffers_bytes": 0},
        "hardware": {"host": "synthetic", "cpus": 16,
                     "gpus": [{"cuda_index": i, "nvml_index": i, "uuid": None, "name": "NVIDIA H200",
                               "memory_total_bytes": 150109880320} for i in range(gpus)],
                     "topology": None},
        "link_bandwidth": {"h2d_GBps": None, "d2h_GBps": None, "p2p_GBps": {}, "measured": False,
                           "note": "synthetic trace: nothing measured"},
        "files": {"traces": files, "nvml": [], "steps": [], "merged": []},
        "warnings": ["synthetic run written by tests/synth (known phase durations, not a measurement)"],
    }
