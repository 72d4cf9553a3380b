"""Per-device figures over a whole trace: kernel, communication and busy time, copies, top kernels (pure)."""

from __future__ import annotations

import numpy as np

from dpprof.analyze.attribution import RankTimeline, copy_bytes
from dpprof.analyze.model import DeviceSummary, KernelStat
from dpprof.trace import classify as C
from dpprof.trace import intervals as iv
from dpprof.trace.load import K_KERNEL

TOP_KERNELS = 15


def device_summaries(tl: RankTimeline, rank: int, devices: tuple[int, ...]) -> list[DeviceSummary]:
    """Per device over the whole trace: kernel time (sum), comm kernel time, busy time (union), copies."""
    out = []
    for dev in devices:
        sel = np.flatnonzero(tl.device == dev)
        d = tl.rt.dur[tl.gpu_rows[sel]]  # exact durations (end - start loses bits at epoch-sized ts)
        g = tl.gclass[sel]
        kern = tl.rt.kind[tl.gpu_rows[sel]] == K_KERNEL
        copies = np.isin(g, C.G_COPIES + (C.G_MEMSET,)) & ~kern
        out.append(DeviceSummary(
            rank=rank, device=int(dev), kernel_time_us=float(d[kern].sum()),
            comm_kernel_time_us=float(d[kern & (g == C.G_COMM)].sum()),
            busy_time_us=iv.length(iv.union(tl.start[sel], tl.end[sel])),
            memcpy_time_us=float(d[copies].sum()), memcpy_bytes=copy_bytes(tl, sel, None, None),
        ))
    return out


_KCAT = {C.G_COMPUTE: "compute", C.G_COMM: "communication", C.G_MEMSET: "memset"}


def top_kernels(tl: RankTimeline, rank: int, devices: tuple[int, ...],
                steps: list[tuple[int, float, float]], top: int = TOP_KERNELS) -> list[KernelStat]:
    """Top GPU activities per device by total time, over activities that start inside a step."""
    in_steps = np.zeros(len(tl.start), dtype=bool)
    for _, s0, s1 in steps:
        in_steps |= (tl.start >= s0) & (tl.start < s1)
    out: list[KernelStat] = []
    names = tl.rt.names
    name_id = tl.rt.name_id[tl.gpu_rows]
    for dev in devices:
        sel = np.flatnonzero(in_steps & (tl.device == dev))
        if len(sel) == 0:
            continue
        ids, inv = np.unique(name_id[sel], return_inverse=True)
        total = np.bincount(inv, weights=tl.rt.dur[tl.gpu_rows[sel]])
        count = np.bincount(inv)
        first = np.full(len(ids), -1)
        first[inv[::-1]] = sel[::-1]  # first row of each name, for its class
        order = sorted(range(len(ids)), key=lambda i: (-total[i], names[ids[i]]))[:top]
        for i in order:
            out.append(KernelStat(rank=rank, device=int(dev), name=names[ids[i]],
                                  category=_KCAT.get(int(tl.gclass[first[i]]), "memcpy"),
                                  count=int(count[i]), total_us=float(total[i])))
    return out
