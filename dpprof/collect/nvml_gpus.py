"""Which GPUs NVML sees and their CUDA indices: NVML numbers GPUs in PCI order, CUDA numbers those that
CUDA_VISIBLE_DEVICES leaves visible, in its order; the two are mapped by UUID (:func:`map_cuda_indices`).

Used by the NVML sampler (dpprof.collect.nvml) and hardware discovery (dpprof.collect.hwinfo).
``pynvml`` (nvidia-ml-py) is imported only by :func:`import_nvml`, so the package imports without it.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any


def describe_error(exc: BaseException) -> str:
    """One line naming an exception (NVML errors stringify to their NVML message)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def nvml_text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _uuid_key(uuid: str) -> str:
    """UUIDs compared without NVML's ``GPU-`` prefix (torch reports them without it), lower case."""
    uuid = uuid.strip().lower()
    return uuid[4:] if uuid.startswith("gpu-") else uuid


@dataclass(frozen=True)
class NvmlGpu:
    """One GPU as NVML sees it, with its CUDA index in this process (None when CUDA cannot see it)."""

    nvml_index: int
    cuda_index: int | None
    uuid: str
    name: str

    def to_json(self) -> dict[str, Any]:
        return {"nvml_index": self.nvml_index, "cuda_index": self.cuda_index, "uuid": self.uuid,
                "name": self.name}


def map_cuda_indices(uuids: Sequence[str], names: Sequence[str], env: Mapping[str, str] | None = None,
                     cuda_uuids: Sequence[str] | None = None) -> tuple[list[int | None], list[str]]:
    """CUDA index of each NVML GPU (list position = NVML index), and warnings about the mapping.

    ``cuda_uuids`` (CUDA's own UUIDs in CUDA order, e.g. from ``torch.cuda.get_device_properties``)
    gives an exact answer. Otherwise CUDA_VISIBLE_DEVICES is read as CUDA reads it: comma-separated
    indices or (prefixes of) UUIDs; the list ends at the first entry that is invalid, unknown or
    repeated; ``MIG-`` entries are not mapped. Integer entries and an unset variable follow NVML's PCI
    order, which is CUDA's order when CUDA_DEVICE_ORDER=PCI_BUS_ID or all GPUs are the same model.
    """
    env = os.environ if env is None else env
    n = len(uuids)
    keys = [_uuid_key(u) for u in uuids]
    result: list[int | None] = [None] * n
    warnings: list[str] = []
    if cuda_uuids is not None:
        for cuda_index, cu in enumerate(cuda_uuids):
            key = _uuid_key(cu)
            if key in keys:
                result[keys.index(key)] = cuda_index
            else:
                warnings.append(f"CUDA device {cuda_index} (UUID {cu}) not found by NVML: no samples for it")
        return result, warnings
    raw = env.get("CUDA_VISIBLE_DEVICES")
    entries = [e.strip() for e in raw.split(",")] if raw is not None else [str(i) for i in range(n)]
    order: list[int] = []
    by_index = False
    for entry in entries:
        nvml_index: int | None = None
        if entry.lstrip("-").isdigit():
            value = int(entry)
            nvml_index = value if 0 <= value < n else None
            by_index = True
        elif entry.lower().startswith("mig-"):
            warnings.append(f"CUDA_VISIBLE_DEVICES entry {entry!r} is a MIG instance: not mapped to an NVML GPU")
        elif entry:
            prefix = _uuid_key(entry)
            matches = [i for i, k in enumerate(keys) if k.startswith(prefix)]
            nvml_index = matches[0] if len(matches) == 1 else None
        if nvml_index is None or nvml_index in order:
            break  # CUDA ignores this entry and every one after it
        order.append(nvml_index)
    for cuda_index, nvml_index in enumerate(order):
        result[nvml_index] = cuda_index
    if by_index and len(set(names)) > 1 and env.get("CUDA_DEVICE_ORDER") != "PCI_BUS_ID":
        warnings.append("GPUs of different models and CUDA_DEVICE_ORDER is not PCI_BUS_ID: CUDA numbers the "
                        "fastest GPU first, so NVML-to-CUDA index mapping by PCI order may be wrong")
    return result, warnings


def list_gpus(nv: ModuleType, cuda_uuids: Sequence[str] | None = None,
              env: Mapping[str, str] | None = None) -> tuple[list[NvmlGpu], list[Any], list[str]]:
    """Every GPU NVML reports (with handles, same order) and mapping warnings. NVML must be initialised."""
    handles = [nv.nvmlDeviceGetHandleByIndex(i) for i in range(int(nv.nvmlDeviceGetCount()))]
    uuids = [nvml_text(nv.nvmlDeviceGetUUID(h)) for h in handles]
    names = [nvml_text(nv.nvmlDeviceGetName(h)) for h in handles]
    cuda, warnings = map_cuda_indices(uuids, names, env, cuda_uuids)
    gpus = [NvmlGpu(i, cuda[i], uuids[i], names[i]) for i in range(len(handles))]
    return gpus, handles, warnings


def import_nvml() -> tuple[ModuleType | None, str | None]:
    """``(pynvml, None)`` with NVML initialised, or ``(None, reason)``. Pair with ``nvmlShutdown()``."""
    try:
        nv = importlib.import_module("pynvml")
    except ImportError:
        return None, "pynvml (nvidia-ml-py) is not installed"
    try:
        nv.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound / DriverNotLoaded / anything from ctypes
        return None, f"{describe_error(exc)} (no NVIDIA driver on this machine?)"
    return nv, None
