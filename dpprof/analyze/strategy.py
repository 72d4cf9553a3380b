"""Which parallel strategy a trace shows, read from its host ops (no configuration needed), with the evidence.

* ``dp``: ``DataParallel.forward`` or a DP op / dpprof DP marker. ``dp_mode``: ``multi_device`` when
  replicate/gather/reduce ran (``Broadcast``, ``Gather``, ``ReduceAddCoalesced``, ``dpprof::dp_replicate``...),
  ``one_device`` when only ``Scatter`` ran (``device_ids`` of length 1), ``no_gpu`` when the module was called
  directly with no GPU activity at all.
* ``fsdp``: FSDP2 (``fully_shard``: ``FSDP::all_gather (i)``, ``FSDP::post_backward_*``... annotations,
  torch/distributed/fsdp/_fully_shard/) or FSDP1 (``FullyShardedDataParallel.*`` annotations).
* ``ddp``: ``DistributedDataParallel.forward`` or the reducer ops (torch/nn/parallel/distributed.py,
  torch/csrc/distributed/c10d/reducer.cpp).
* ``distributed``: collectives in a trace of a world larger than one, or communication kernels, that are none of
  the above (tensor or pipeline parallelism, distributed inference, hand-written collectives).
* ``single``: host ops, none of the above.
* ``unknown``: no host ops at all, or ranks that disagree (see ``combine``).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from dpprof.trace import classify as C
from dpprof.trace.load import RankTrace

_MULTI = (C.C_DP_BROADCAST, C.C_DP_GATHER, C.C_DP_REDUCE)


def _count(rt: RankTrace, hcls: np.ndarray, cls: int | tuple[int, ...]) -> str:
    """'N× name' of the most frequent host event names of a class, for the evidence line."""
    rows = np.flatnonzero(np.isin(hcls, cls))
    ids, counts = np.unique(rt.name_id[rows], return_counts=True)
    top = sorted(zip(counts.tolist(), ids.tolist(), strict=True), key=lambda x: (-x[0], rt.names[x[1]]))[:2]
    return ", ".join(f"{n}× {rt.names[i][:60]}" for n, i in top)


def detect(rt: RankTrace, hcls: np.ndarray, has_gpu: bool, comm_kernels: int) -> tuple[str, str | None, str]:
    """(strategy, dp_mode, evidence in words) of one rank from its host-class column (``link.host_class``)."""
    present = set(np.unique(hcls[hcls >= 0]).tolist())
    if C.C_DP_FORWARD in present or present & set(C.DP_PHASE_CLASSES):
        what = _count(rt, hcls, (C.C_DP_FORWARD, *C.DP_PHASE_CLASSES))
        if present & set(_MULTI):
            return "dp", "multi_device", f"DataParallel ops with replicate/gather/reduce ({what})"
        if C.C_DP_SCATTER in present or has_gpu:
            return "dp", "one_device", f"DataParallel with a Scatter only ({what})"
        return "dp", "no_gpu", f"DataParallel.forward without any GPU activity ({what})"
    if C.C_FSDP in present:
        return "fsdp", None, f"FSDP annotations ({_count(rt, hcls, C.C_FSDP)})"
    if C.C_DDP_FORWARD in present or C.C_DDP_REDUCER in present:
        return "ddp", None, f"DDP ops ({_count(rt, hcls, (C.C_DDP_FORWARD, C.C_DDP_REDUCER))})"
    coll = present & set(C.COLLECTIVE_CLASSES)
    if ((rt.world_size or 1) > 1 and coll) or comm_kernels:
        world = f"world size {rt.world_size}" if rt.world_size else "no distributedInfo"
        return "distributed", None, (f"collectives without DP, DDP or FSDP ops ({world}; "
                                     f"{_count(rt, hcls, tuple(C.COLLECTIVE_CLASSES)) or f'{comm_kernels} communication kernels'})")
    if present:
        return "single", None, "host ops without DataParallel, DDP, FSDP or collectives"
    return "unknown", None, "no host ops in the trace"


def combine(per_rank: Iterable[str]) -> str:
    """The run's strategy: the ranks' common one, else ``unknown``."""
    found = set(per_rank)
    if len(found) == 1:
        return found.pop()
    return "unknown"
