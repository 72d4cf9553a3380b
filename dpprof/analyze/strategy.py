"""Which data-parallel strategy a trace shows, read from its host ops (no configuration needed).

* ``dp``: ``DataParallel.forward`` or a DP op / dpprof DP marker. ``dp_mode``:
  ``multi_device`` when replicate/gather/reduce ran (``Broadcast``, ``Gather``, ``ReduceAddCoalesced``,
  ``dpprof::dp_replicate``...), ``one_device`` when only ``Scatter`` ran (``device_ids`` of length 1),
  ``no_gpu`` when the module was called directly with no GPU activity at all.
* ``ddp``: ``DistributedDataParallel.forward`` or the reducer ops, or collectives in a trace whose
  ``distributedInfo`` says world size > 1.
* ``single``: host ops, none of the above.
* ``unknown``: no host ops at all, or ranks that disagree (see ``combine``).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from dpprof.trace import classify as C

_MULTI = (C.C_DP_BROADCAST, C.C_DP_GATHER, C.C_DP_REDUCE)


def detect(hcls: np.ndarray, world_size: int | None, has_gpu: bool) -> tuple[str, str | None]:
    """(strategy, dp_mode) of one rank from its host-class column (``link.host_class``)."""
    present = set(np.unique(hcls[hcls >= 0]).tolist())
    if C.C_DP_FORWARD in present or present & set(C.DP_PHASE_CLASSES):
        if present & set(_MULTI):
            return "dp", "multi_device"
        if C.C_DP_SCATTER in present or has_gpu:
            return "dp", "one_device"
        return "dp", "no_gpu"
    if C.C_DDP_FORWARD in present or C.C_DDP_REDUCER in present:
        return "ddp", None
    if (world_size or 1) > 1 and present & set(C.COLLECTIVE_CLASSES):
        return "ddp", None
    if present:
        return "single", None
    return "unknown", None


def combine(per_rank: Iterable[str]) -> str:
    """The run's strategy: the ranks' common one, else ``unknown``."""
    found = set(per_rank)
    if len(found) == 1:
        return found.pop()
    return "unknown"
