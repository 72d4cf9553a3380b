"""What a run writes beside its traces: manifest.json, nodes/<node>.json, steps.rank{R}.jsonl.

Only global rank 0 writes the manifest (atomically, again at every epoch and at the end), each node's
local rank 0 writes its own ``nodes/<node>.json`` (so nodes never overwrite each other), and every rank
appends its own steps file line by line, flushed, so a killed run keeps every step it finished.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import statistics
import time
from pathlib import Path
from typing import IO, Any

from dpprof.errors import DpprofError
from dpprof.rundir import MANIFEST, MANIFEST_SCHEMA, NODES_DIR, read_json, write_json
from dpprof.version import __version__

STATUSES = ("running", "complete", "incomplete", "failed")


def steps_file_name(rank: int) -> str:
    return f"steps.rank{rank}.jsonl"


class StepsWriter:
    """Appends one JSON line per step to ``steps.rank{R}.jsonl`` and flushes it at once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fh: IO[str] | None = open(path, "a", encoding="utf-8")
        except OSError as exc:
            raise DpprofError(f"cannot write {path}: {exc.strerror or exc}") from None

    def write(self, record: dict[str, Any]) -> None:
        if self._fh is None:
            return
        try:
            self._fh.write(json.dumps(record, sort_keys=True, allow_nan=False) + "\n")
            self._fh.flush()
        except OSError as exc:  # full disk mid-run: one clear line, not a traceback
            raise DpprofError(f"cannot write {self.path}: {exc.strerror or exc}") from None

    def close(self) -> None:
        if self._fh is not None:
            fh, self._fh = self._fh, None
            try:
                fh.close()
            except OSError:  # already reported by write(); what was flushed is on disk
                pass


def median_or_none(values: list[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def fallback_versions() -> dict[str, Any]:
    """Versions torch itself can tell (used when dpprof.collect.hwinfo is unavailable)."""
    import torch

    try:
        import torchvision
        tv: str | None = torchvision.__version__
    except ImportError:
        tv = None
    nccl = None
    if torch.cuda.is_available():
        try:
            nccl = ".".join(str(v) for v in torch.cuda.nccl.version())
        except (AttributeError, RuntimeError, TypeError):
            nccl = None
    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": tv,
            "cuda": torch.version.cuda, "nccl": nccl, "driver": None, "dpprof": __version__}


def fallback_hardware(use_cuda: bool = True) -> dict[str, Any]:
    """Host, CPUs and the GPUs torch sees (used when dpprof.collect.hwinfo is unavailable)."""
    import torch

    gpus = []
    if torch.cuda.is_available() and (use_cuda or torch.cuda.is_initialized()):
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append({"cuda_index": i, "nvml_index": None, "uuid": None, "name": p.name,
                         "memory_total_bytes": int(p.total_memory)})
    return {"host": socket.gethostname(), "cpus": os.cpu_count() or 0, "gpus": gpus, "topology": None}


def collect_versions_and_hardware(warnings: list[str],
                                  use_cuda: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    """(versions, hardware) from dpprof.collect.hwinfo, or torch's own view when that fails.

    ``use_cuda=False``: do not initialise CUDA to read the GPUs (NVML describes them instead).
    """
    try:
        from dpprof.collect import hwinfo
    except ImportError:
        return fallback_versions(), fallback_hardware(use_cuda)
    try:
        return hwinfo.collect_versions(), hwinfo.collect_hardware(use_cuda)
    except Exception as exc:  # hardware discovery must never stop a training run
        warnings.append(f"hardware/version discovery failed ({type(exc).__name__}: {exc}); torch's view used")
        return fallback_versions(), fallback_hardware(use_cuda)


def node_gpus(use_cuda: bool = True) -> list[dict[str, Any]]:
    """This node's GPUs as the manifest's ``hardware.gpus`` lists them (for ``nodes/<node>.json``)."""
    try:
        from dpprof.collect import hwinfo

        return list(hwinfo.collect_hardware(use_cuda).get("gpus", []))
    except Exception:  # ImportError or a discovery failure: torch's view is enough here
        return list(fallback_hardware(use_cuda)["gpus"])


def probe_links(cuda_indices: list[int], warnings: list[str]) -> dict[str, Any]:
    """The manifest's ``link_bandwidth`` (dpprof.collect.probe), or an unmeasured section saying why."""
    unmeasured: dict[str, Any] = {"h2d_GBps": None, "d2h_GBps": None, "p2p_GBps": {}, "measured": False}
    try:
        from dpprof.collect.probe import probe_bandwidth
    except ImportError:
        return {**unmeasured, "note": "bandwidth probe not available in this dpprof"}
    try:
        return probe_bandwidth(cuda_indices)
    except Exception as exc:  # a failed probe costs the diagnosis one input, not the run
        warnings.append(f"link bandwidth probe failed ({type(exc).__name__}: {exc})")
        return {**unmeasured, "note": f"probe failed: {exc}"}


class ManifestWriter:
    """manifest.json of one run, kept in memory and rewritten atomically on :meth:`write`."""

    def __init__(self, run_dir: Path, data: dict[str, Any]) -> None:
        self.run_dir = run_dir
        self.data = data

    @classmethod
    def start(cls, run_dir: Path, *, run_id: str, command: list[str], created_unix_ns: int,
              config: dict[str, Any], **sections: Any) -> ManifestWriter:
        data: dict[str, Any] = {
            "schema": MANIFEST_SCHEMA, "run_id": run_id, "status": "running", "complete": False,
            "command": list(command), "created_unix_ns": int(created_unix_ns), "config": config,
            "dp_mode": None, "model_info": None, "data_info": None, "versions": None, "hardware": None,
            "link_bandwidth": None, "profiler": None, "summary": None, "epochs": [], "ddp": None, "fsdp": None,
            "peak_memory_bytes": {}, "nodes": [], "files": {"traces": [], "nvml": [], "steps": [], "merged": []},
            "warnings": [],
        }
        data.update(sections)
        m = cls(run_dir, data)
        m.write()
        return m

    def set_status(self, status: str) -> None:
        assert status in STATUSES, status
        self.data["status"] = status
        self.data["complete"] = status == "complete"

    def warn(self, message: str) -> None:
        if message not in self.data["warnings"]:
            self.data["warnings"].append(message)

    def refresh_files(self) -> None:
        """List what is on disk now (paths relative to the run directory, sorted)."""
        rd = self.run_dir

        def rel(pattern: str, folder: Path) -> list[str]:
            return sorted(str(p.relative_to(rd)) for p in folder.glob(pattern) if not p.name.startswith("."))

        self.data["files"] = {
            "traces": rel("*.pt.trace.json*", rd / "traces"),
            "merged": rel("*.pt.trace.json*", rd / "merged"),
            "nvml": rel("nvml.*.jsonl", rd),
            "steps": rel("steps.rank*.jsonl", rd),
        }

    def write(self) -> None:
        self.refresh_files()
        # The collector's own file, rewritten as the run goes (also after reading it: mark_unfinished).
        write_json(self.run_dir / MANIFEST, self.data, within=self.run_dir, replace_input=True)


def write_node_file(run_dir: Path, node_key: str, data: dict[str, Any]) -> str:
    """Write ``nodes/<node_key>.json``; returns its path relative to the run directory."""
    rel = f"{NODES_DIR}/{node_key}.json"
    write_json(run_dir / rel, data, within=run_dir)
    return rel


def merge_node_part(run_dir: Path, node_key: str, part: dict[str, Any]) -> dict[str, Any]:
    """For ranks that cannot gather over torch.distributed (``dpprof run``: the process group is the
    script's): write this rank's node record as ``nodes/.<node_key>.rank<R>.json``, then rewrite
    ``nodes/<node_key>.json`` from every part written so far, under a lock on the folder, so the
    node's last rank to finish writes the complete record. Returns the merged record."""
    import fcntl

    folder = run_dir / NODES_DIR
    write_json(folder / f".{node_key}.rank{part['ranks'][0]}.json", part)
    with open(folder / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        parts = [read_json(f) for f in sorted(folder.glob(f".{node_key}.rank*.json"))]
        mine = [x for x in parts if isinstance(x, dict)] or [part]
        merged = dict(mine[0], ranks=sorted(r for x in mine for r in x["ranks"]),
                      peak_memory_bytes={k: v for x in mine for k, v in x["peak_memory_bytes"].items()},
                      peak_rss_bytes=max(x["peak_rss_bytes"] for x in mine),
                      nvml_file=next((x["nvml_file"] for x in mine if x.get("nvml_file")), None),
                      written_unix_ns=time.time_ns())
        write_node_file(run_dir, node_key, merged)
    return merged


def read_node_files(run_dir: Path) -> list[dict[str, Any]]:
    """Every ``nodes/<node>.json`` of the run, by node rank."""
    found = [read_json(p) for p in sorted((run_dir / NODES_DIR).glob("*.json")) if not p.name.startswith(".")]
    return sorted((n for n in found if isinstance(n, dict) and "node_key" in n), key=lambda n: n["node_rank"])


def node_entries(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The manifest's ``nodes`` list from node records."""
    return [{"host": n["host"], "node_rank": n["node_rank"], "file": f"{NODES_DIR}/{n['node_key']}.json"}
            for n in nodes]


def mark_unfinished(run_dir: Path, status: str, message: str, force: bool = False) -> bool:
    """Called by a launcher after its workers died: set a manifest still ``running`` to ``status``.

    Returns True when the manifest was changed. A manifest already ``complete`` is left alone unless
    ``force`` (``dpprof run``: another rank's script failed after rank 0's ended well).
    """
    data = read_json(run_dir / MANIFEST)  # rewritten as it is: fields this function does not touch are kept
    if not isinstance(data, dict) or (data.get("status") == "complete" and not force):
        return False
    m = ManifestWriter(run_dir, data)
    if data.get("status") == "running" or status == "failed":
        m.set_status(status)
    m.data.setdefault("warnings", [])
    m.warn(message)
    m.data["ended_unix_ns"] = time.time_ns()
    m.write()
    return True
