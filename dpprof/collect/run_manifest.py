"""The manifest of a ``dpprof run`` (docs/run-format.md, "dpprof run"): the same file as ``dpprof
profile``'s, with the command line, the script (path, sha256, arguments, exit), how steps were found,
and what dpprof inferred about the training, each figure with how it was found."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from dpprof.collect.manifest import ManifestWriter, collect_versions_and_hardware
from dpprof.collect.model_watch import Inference
from dpprof.collect.run_config import ScriptRunConfig, under_torchrun
from dpprof.collect.script_runner import Script
from dpprof.version import __version__

#: config keys filled from the inference (listed in ``config.inferred`` when dpprof inferred them)
INFERRED_KEYS = ("strategy", "model", "batch_size", "per_rank_batch_size", "gpus", "device_ids", "world_size",
                 "device", "backend")


def launcher_command() -> list[str] | None:
    """The user's torchrun command line, read from the parent process (torchrun's agent)."""
    if not under_torchrun():
        return None
    try:
        import psutil

        return list(psutil.Process(os.getppid()).cmdline())
    except Exception:  # psutil missing or the parent gone: the manifest just lacks this line
        return None


def script_section(script: Script | None, cfg: ScriptRunConfig) -> dict[str, Any]:
    if script is None:  # the Python API: the running program is the script
        main = sys.modules.get("__main__")
        path = getattr(main, "__file__", None)
        return {"path": os.path.abspath(path) if path else None, "target": None, "module": False,
                "args": sys.argv[1:], "sha256": _sha256(path), "cwd": os.getcwd(), "python": sys.executable,
                "api": True, "exit_code": None, "error": None, "launcher_command": launcher_command()}
    return {"path": str(script.file), "target": script.target, "module": script.module, "args": script.args,
            "sha256": script.sha256, "cwd": os.getcwd(), "python": sys.executable, "api": False,
            "exit_code": None, "error": None, "launcher_command": launcher_command()}


def _sha256(path: str | None) -> str | None:
    import hashlib

    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest() if path else None
    except OSError:
        return None


def start_run_manifest(cfg: ScriptRunConfig, run_dir: Path, script: Script | None, step_on: str,
                       warnings: list[str]) -> ManifestWriter:
    """manifest.json with status ``running``, written before the script starts. Hardware is read without
    initialising CUDA (the script's own business: a fork after CUDA is set up breaks CUDA in the child)."""
    versions, hardware = collect_versions_and_hardware(warnings, use_cuda=False)
    versions.setdefault("dpprof", __version__)
    manifest = ManifestWriter.start(run_dir, run_id=cfg.run_id, command=cfg.command,
                              created_unix_ns=cfg.created_unix_ns or time.time_ns(), config=cfg.manifest_config(),
                              versions=versions, hardware=hardware, nodes=[])
    note = "not measured: dpprof run leaves the GPUs to the script"
    manifest.data["link_bandwidth"] = {"h2d_GBps": None, "d2h_GBps": None, "p2p_GBps": {}, "measured": False,
                                       "note": note}
    manifest.data["script"] = script_section(script, cfg)
    manifest.data["stepping"] = {"step_on": cfg.step_on, "means": step_on}
    manifest.data["inferred"] = {}
    manifest.data["warnings"] = list(warnings)
    manifest.write()
    return manifest


def apply_inference(manifest: ManifestWriter, inf: Inference, cfg: ScriptRunConfig) -> None:
    """Fill ``config`` and the sections the inference decides: ``inferred``, ``model_info``, ``dp_mode``."""
    c = manifest.data["config"]
    gpus = None
    if inf.device == "cuda":
        gpus = len(set(inf.device_ids or [])) if inf.strategy == "dp" else \
            (inf.local_world_size if inf.strategy in ("ddp", "fsdp") else 1)
    elif inf.device == "cpu":
        gpus = 0
    values = {"strategy": inf.strategy, "model": (inf.model_info or {}).get("name"),
              "batch_size": inf.global_batch, "per_rank_batch_size": inf.per_rank_batch, "gpus": gpus,
              "device_ids": inf.device_ids, "world_size": inf.world_size, "device": inf.device,
              "backend": inf.backend}
    given = {"batch_size", "per_rank_batch_size"} if cfg.batch_size is not None else set()
    c.update(values)
    c["inferred"] = [k for k in INFERRED_KEYS if k not in given and values[k] is not None]
    if inf.strategy in ("ddp", "fsdp") and c.get("nproc") is None:
        c["nproc"] = inf.local_world_size
    manifest.data["inferred"] = {
        "strategy": {"value": inf.strategy, "from": inf.strategy_from},
        "batch_size": {"value": inf.global_batch, "per_rank": inf.per_rank_batch,
                       "from": inf.batch_from + (f", x world size {inf.world_size}"
                                                 if inf.strategy in ("ddp", "fsdp") and cfg.batch_size is None
                                                 else "")},
        "device": {"value": inf.device, "index": inf.device_index, "from": "the model's first parameter"},
        "world_size": {"value": inf.world_size,
                       "from": "torch.distributed" if inf.backend else
                       "the launcher's WORLD_SIZE (no process group)" if inf.world_size > 1 else
                       "no process group (one process)"},
    }
    manifest.data["model_info"] = inf.model_info
    manifest.data["dp_mode"] = inf.dp_mode
    manifest.write()


def close_run_manifest(manifest: ManifestWriter, exit_code: int | None, error: str | None, stepping: dict[str, Any],
                       skip_reason: str | None, nodes: list[dict[str, Any]]) -> None:
    """The script's end and the sections only known then (before :func:`session.finalize` writes)."""
    manifest.data["script"]["exit_code"] = exit_code
    manifest.data["script"]["error"] = error
    manifest.data["stepping"].update(stepping)
    manifest.data["nodes"] = nodes
    manifest.data["profiler_skipped"] = skip_reason
