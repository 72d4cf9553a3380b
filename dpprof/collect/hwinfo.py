"""What the manifest records about software and hardware (``versions`` and ``hardware``, docs/run-format.md).

torch and pynvml are imported inside the functions: the training process has torch loaded already, and
neither is needed to import dpprof. Anything that cannot be read is ``None`` rather than an error.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import platform
import socket
from itertools import combinations
from types import ModuleType
from typing import Any

from dpprof.collect.nvml_gpus import describe_error, import_nvml, list_gpus
from dpprof.version import __version__

#: nvidia-smi's names for the closest common PCIe ancestor of two GPUs (nvmlGpuTopologyLevel_t).
PCIE_PATH = {0: "SAME_BOARD", 10: "PIX", 20: "PXB", 30: "PHB", 40: "NODE", 50: "SYS"}


def _torch() -> ModuleType | None:
    try:
        return importlib.import_module("torch")
    except ImportError:
        return None


def _const(nv: ModuleType, name: str, default: int) -> int:
    value = getattr(nv, name, default)
    # pynvml defines NVML_P2P_CAPS_INDEX_READ as the tuple (0,) (a stray comma in its source)
    return int(value[0] if isinstance(value, tuple) else value)


def collect_versions() -> dict[str, str | None]:
    """python, torch, torchvision, cuda (torch's build), nccl (linked), driver (NVML), dpprof."""
    out: dict[str, str | None] = {"python": platform.python_version(), "torch": None, "torchvision": None,
                                  "cuda": None, "nccl": None, "driver": None, "dpprof": __version__}
    torch = _torch()
    if torch is not None:
        out["torch"] = str(torch.__version__)
        out["cuda"] = getattr(torch.version, "cuda", None)
        with contextlib.suppress(Exception):  # CPU-only builds have no NCCL
            nccl = torch.cuda.nccl.version()
            out["nccl"] = ".".join(str(v) for v in nccl) if isinstance(nccl, tuple) else str(nccl)
    with contextlib.suppress(ImportError):
        out["torchvision"] = str(importlib.import_module("torchvision").__version__)
    nv, _ = import_nvml()
    if nv is not None:
        try:
            with contextlib.suppress(Exception):
                raw = nv.nvmlSystemGetDriverVersion()
                out["driver"] = raw.decode() if isinstance(raw, bytes) else str(raw)
        finally:
            nv.nvmlShutdown()
    return out


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))  # what this process may use, not the machine's total
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _cuda_gpus(torch: ModuleType | None, use_cuda: bool = True) -> list[dict[str, Any]]:
    if torch is None or not torch.cuda.is_available():
        return []
    if not use_cuda and not torch.cuda.is_initialized():  # reading properties would initialise CUDA
        return []
    gpus = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        uuid = getattr(props, "uuid", None)
        gpus.append({"cuda_index": i, "nvml_index": None, "uuid": f"GPU-{uuid}" if uuid is not None else None,
                     "name": str(props.name), "memory_total_bytes": int(props.total_memory)})
    return gpus


def collect_hardware(use_cuda: bool = True) -> dict[str, Any]:
    """host, cpus (usable by this process), gpus (CUDA order, with NVML index and UUID), topology.

    ``use_cuda=False``: CUDA is not initialised to read the GPUs (unless it already is); NVML describes
    them, mapped to CUDA indices through CUDA_VISIBLE_DEVICES.

    ``topology`` is None without NVML. Otherwise, per pair of GPUs ``"i-j"`` (CUDA indices):
    ``p2p`` = "NVLINK" (peer access over NVLink), "PCIE" (peer reads over PCIe) or "NONE" (copies go
    through host memory); ``pcie_path`` = nvidia-smi's name of their closest common PCIe ancestor;
    and ``nvlink_active_links`` per GPU. ``warnings`` lists what could not be read.
    """
    torch = _torch()
    out: dict[str, Any] = {"host": socket.gethostname(), "cpus": _cpus(), "gpus": _cuda_gpus(torch, use_cuda),
                           "topology": None, "warnings": []}
    nv, reason = import_nvml()
    if nv is None:
        if out["gpus"]:
            out["warnings"].append(f"no GPU topology: {reason}")
        return out
    try:
        _add_nvml(nv, out, torch)
    except Exception as exc:  # a broken driver must not stop a run from starting
        out["warnings"].append(f"NVML topology unreadable: {describe_error(exc)}")
    finally:
        with contextlib.suppress(Exception):
            nv.nvmlShutdown()
    return out


def _add_nvml(nv: ModuleType, out: dict[str, Any], torch: ModuleType | None) -> None:
    cuda_uuids = [g["uuid"] for g in out["gpus"]] if out["gpus"] and all(g["uuid"] for g in out["gpus"]) \
        else None
    nvml_gpus, handles, notes = list_gpus(nv, cuda_uuids)
    out["warnings"].extend(notes)
    by_cuda = {g.cuda_index: (g, h) for g, h in zip(nvml_gpus, handles, strict=True) if g.cuda_index is not None}
    if not out["gpus"]:  # torch without CUDA (or absent) on a machine with GPUs: describe them from NVML
        for ci in sorted(by_cuda):
            g, h = by_cuda[ci]
            out["gpus"].append({"cuda_index": ci, "nvml_index": g.nvml_index, "uuid": g.uuid, "name": g.name,
                                "memory_total_bytes": int(nv.nvmlDeviceGetMemoryInfo(h).total)})
    for gpu in out["gpus"]:
        if gpu["cuda_index"] in by_cuda:
            gpu["nvml_index"] = by_cuda[gpu["cuda_index"]][0].nvml_index
            gpu["uuid"] = gpu["uuid"] or by_cuda[gpu["cuda_index"]][0].uuid
    read_index = _const(nv, "NVML_P2P_CAPS_INDEX_READ", 0)
    nvlink_index = _const(nv, "NVML_P2P_CAPS_INDEX_NVLINK", 2)
    ok = _const(nv, "NVML_P2P_STATUS_OK", 0)
    p2p: dict[str, str] = {}
    pcie_path: dict[str, str | None] = {}
    indices = sorted(by_cuda)
    for i, j in combinations(indices, 2):
        hi, hj, key = by_cuda[i][1], by_cuda[j][1], f"{i}-{j}"
        if _try(lambda a=hi, b=hj: nv.nvmlDeviceGetP2PStatus(a, b, nvlink_index)) == ok:
            p2p[key] = "NVLINK"
        elif _try(lambda a=hi, b=hj: nv.nvmlDeviceGetP2PStatus(a, b, read_index)) == ok:
            p2p[key] = "PCIE"
        else:
            p2p[key] = "NONE"
        level = _try(lambda a=hi, b=hj: nv.nvmlDeviceGetTopologyCommonAncestor(a, b))
        pcie_path[key] = PCIE_PATH.get(int(level), str(level)) if level is not None else None
    links: dict[str, int | None] = {}
    max_links = _const(nv, "NVML_NVLINK_MAX_LINKS", 18)
    enabled = _const(nv, "NVML_FEATURE_ENABLED", 1)
    for i in indices:
        count = 0
        for link in range(max_links):
            state = _try(lambda h=by_cuda[i][1], k=link: nv.nvmlDeviceGetNvLinkState(h, k))
            if state is None:  # no such link (or no NVLink at all): links are numbered from 0
                break
            count += int(state == enabled)
        links[str(i)] = count
    out["topology"] = {"p2p": p2p, "pcie_path": pcie_path, "nvlink_active_links": links}


def _try(read: Any) -> Any:
    try:
        return read()
    except Exception:  # NVML "not supported" / "invalid argument" for this pair or link
        return None
