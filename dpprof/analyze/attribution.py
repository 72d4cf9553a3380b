"""Where each step's time went on each GPU: the attribution rule, implemented with numpy intervals.

The rule (also printed in the report):

* A step is the host ``ProfilerStep#N`` span (the GPU-side ``gpu_user_annotation`` copy is not a second
  step). GPU intervals are clipped to it. A trace without ProfilerStep is analysed as one step,
  numbered 0, covering the whole trace (warning ``no_profiler_steps``).
* For each step and each GPU with activity, the step's wall time is cut at every event boundary and
  each piece gets exactly one category, so the categories sum to the step's duration.
* GPU busy instants (a kernel, copy or memset of that GPU runs), first match wins:
  1. work launched inside a DP phase (see ``dpprof.trace.link``) -> ``dp_scatter`` | ``dp_broadcast`` |
     ``dp_gather`` | ``dp_reduce`` (in that order when phases overlap);
  2. compute kernels -> ``compute`` (communication running at the same time counts as compute; its
     overlapped length is ``allreduce_overlapped_us``);
  3. communication kernels (NCCL/RCCL/gloo) and copies/memsets launched inside a collective span
     (gloo's staging copies) -> ``allreduce``;
  4. other copies and memsets -> ``memcpy``.
* GPU idle instants, looking at every host thread of the rank, first match wins:
  1. inside a DataLoader ``__next__`` -> ``data_loading``;
  2. inside a DP phase span (innermost; the replicate window included) -> that ``dp_*``;
  3. inside a collective span (``nccl:*``, ``gloo:*``, ``c10d::*``, ``record_param_comms``) -> ``allreduce``;
  4. inside any cpu_op, runtime/driver call or python function on any thread, or inside
     ``DataParallel.forward`` (its replica threads run there even when they were not recorded)
     -> ``host``; annotations that only enclose (``ProfilerStep#``, ``DistributedDataParallel.forward``,
     ``Optimizer.*``, other user annotations) do not by themselves make the host busy;
  5. otherwise -> ``idle``.
* A rank with no GPU activity gets one row with ``device == -1``, attributed on its host timeline:
  data_loading, dp_* phases, allreduce (collective spans), ``compute`` = time inside cpu ops
  (forward, backward and optimizer ops), ``host`` = other host activity, ``idle``.
* ``gpu0_only_us`` (DP only, on the output device's row): time that device is busy while every other
  GPU *with activity in the trace* is idle; with no other active GPU it equals ``busy_us``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dpprof.analyze.model import CATEGORIES, DP_PHASES, DeviceSummary, KernelStat, StepBreakdown
from dpprof.trace import classify as C
from dpprof.trace import intervals as iv
from dpprof.trace.link import HOST_KINDS, Links, PhaseSpans
from dpprof.trace.load import K_CPU_OP, K_KERNEL, K_MEMCPY, K_MEMSET, K_USER_ANN, RankTrace

CAT = {name: i for i, name in enumerate(CATEGORIES)}
_PHASE_CAT = np.array([CAT[p] for p in DP_PHASES], dtype=np.int16)
TOP_KERNELS = 15
#: Priority of GPU busy categories (first match wins).
_BUSY_ORDER = tuple(CAT[c] for c in (*DP_PHASES, "compute", "allreduce", "memcpy"))


@dataclass
class RankTimeline:
    """Everything attribution needs about one rank, computed once (columns over its GPU activities)."""

    rt: RankTrace
    gpu_rows: np.ndarray
    start: np.ndarray  # GPU activity start, µs
    end: np.ndarray
    device: np.ndarray
    gclass: np.ndarray  # classify.GPU_CLASSES code
    busy_cat: np.ndarray  # category index of each activity when busy (rule above)
    phase: np.ndarray  # DP phase index or -1
    is_comm: np.ndarray  # communication kernel or copy inside a collective
    data_loading: iv.Intervals
    collectives: iv.Intervals
    host_busy: iv.Intervals
    host_compute: iv.Intervals  # cpu ops (for device -1 rows)
    phases: iv.Nesting


def build_timeline(rt: RankTrace, hcls: np.ndarray, gpu_name_class: np.ndarray, links: Links,
                   spans: PhaseSpans, communicates: bool = True) -> RankTimeline:
    """Columns of one rank for attribution. ``communicates=False`` (world size 1): collective spans are
    ordinary host work, not ``allreduce`` (a group of one moves nothing; its spans are enqueue time)."""
    rows = links.rows
    kind = rt.kind[rows]
    g = gpu_name_class[rt.name_id[rows]].astype(np.int16)
    # No rule matched: the Kineto category decides.
    g = np.where(g >= 0, g, np.where(kind == K_MEMCPY, C.G_MEMCPY, np.where(kind == K_MEMSET, C.G_MEMSET,
                                                                            C.G_COMPUTE)))
    # A kernel named like a copy (e.g. "Memcpy DtoD" kernels) stays a copy; a copy event is never compute.
    g = np.where((kind != K_KERNEL) & (g == C.G_COMPUTE), C.G_MEMCPY, g)
    is_copy = np.isin(g, C.G_COPIES + (C.G_MEMSET,))
    is_comm = (g == C.G_COMM) | (is_copy & links.in_collective)
    busy = np.where(g == C.G_COMPUTE, CAT["compute"], np.where(is_comm, CAT["allreduce"], CAT["memcpy"]))
    busy = np.where(links.phase >= 0, _PHASE_CAT[np.maximum(links.phase, 0)], busy).astype(np.int16)
    start = rt.ts[rows]

    def spans_of(mask: np.ndarray) -> iv.Intervals:
        r = np.flatnonzero(mask)
        return iv.union(rt.ts[r], rt.ts[r] + rt.dur[r])

    host_kind = np.isin(rt.kind, HOST_KINDS)
    enclosing = np.isin(hcls, tuple(C.ENCLOSING_CLASSES)) | ((rt.kind == K_USER_ANN) & (hcls == C.C_OP))
    return RankTimeline(
        rt=rt, gpu_rows=rows, start=start, end=start + rt.dur[rows], device=rt.device[rows], gclass=g,
        busy_cat=busy, phase=links.phase, is_comm=is_comm,
        data_loading=spans_of(hcls == C.C_DATA),
        collectives=spans_of(np.isin(hcls, tuple(C.COLLECTIVE_CLASSES)) & communicates),
        host_busy=spans_of(host_kind & (hcls >= 0) & (~enclosing | (~communicates & (hcls == C.C_COLLECTIVE)))),
        host_compute=spans_of((rt.kind == K_CPU_OP) & np.isin(hcls, (C.C_OP, C.C_DDP_REDUCER))),
        phases=iv.Nesting(spans.start, spans.end, spans.label),
    )


def _paint_idle(tl: RankTimeline, mids: np.ndarray, label: np.ndarray, cpu_only: bool) -> None:
    """Label the still-unlabelled pieces (GPU idle) in priority order, in place."""
    def paint(mask: np.ndarray, cat: int | np.ndarray) -> None:
        free = label < 0
        sel = free & mask
        label[sel] = cat if np.isscalar(cat) else cat[sel]  # type: ignore[index]

    paint(iv.covered(mids, tl.data_loading), CAT["data_loading"])
    ph = tl.phases.label_at(mids)
    paint(ph >= 0, _PHASE_CAT[np.maximum(ph, 0)])
    paint(iv.covered(mids, tl.collectives), CAT["allreduce"])
    if cpu_only:
        paint(iv.covered(mids, tl.host_compute), CAT["compute"])
    paint(iv.covered(mids, tl.host_busy), CAT["host"])
    label[label < 0] = CAT["idle"]


def _host_boundaries(tl: RankTimeline, s0: float, s1: float) -> list[np.ndarray]:
    return [iv.boundaries(tl.data_loading, s0, s1), iv.boundaries(tl.collectives, s0, s1),
            iv.boundaries(tl.host_busy, s0, s1), iv.boundaries(tl.host_compute, s0, s1),
            tl.phases.boundaries(s0, s1)]


def attribute_step(tl: RankTimeline, rank: int, step: int, s0: float, s1: float, devices: tuple[int, ...],
                   output_device: int | None) -> list[StepBreakdown]:
    """One StepBreakdown per device (or one ``device == -1`` row when ``devices`` is empty)."""
    host_b = _host_boundaries(tl, s0, s1)
    in_step = (tl.end > s0) & (tl.start < s1)
    out = []
    for dev in devices or (-1,):
        sel = np.flatnonzero(in_step & (tl.device == dev))
        gs, ge = np.maximum(tl.start[sel], s0), np.minimum(tl.end[sel], s1)
        bp = np.unique(np.concatenate([[s0, s1], gs, ge, *host_b]))
        mids, seg = (bp[:-1] + bp[1:]) / 2, np.diff(bp)
        label = np.full(len(mids), -1, dtype=np.int16)
        cats = tl.busy_cat[sel]
        for cat in _BUSY_ORDER:  # first match wins
            m = cats == cat
            if not m.any():
                continue
            cov = iv.covered(mids, iv.union(gs[m], ge[m])) & (label < 0)
            label[cov] = cat
        busy_us = float(seg[label >= 0].sum())
        _paint_idle(tl, mids, label, cpu_only=dev == -1)
        sums = np.bincount(label, weights=seg, minlength=len(CATEGORIES))
        comm = tl.is_comm[sel]
        comp = tl.gclass[sel] == C.G_COMPUTE
        overlapped = iv.intersection_length(iv.union(gs[comm], ge[comm]), iv.union(gs[comp], ge[comp]))
        phase = tl.phase[sel]
        dp_gpu = {p: iv.length(iv.union(gs[phase == i], ge[phase == i])) for i, p in enumerate(DP_PHASES)}
        gpu0_only = None
        if output_device is not None and dev == output_device:
            others = np.flatnonzero(in_step & (tl.device != dev) & (tl.device >= 0))
            o = iv.union(np.maximum(tl.start[others], s0), np.minimum(tl.end[others], s1))
            gpu0_only = busy_us - iv.intersection_length(iv.union(gs, ge), o)
        out.append(StepBreakdown(
            rank=rank, device=int(dev), step=step, duration_us=s1 - s0,
            categories_us={c: float(sums[i]) for i, c in enumerate(CATEGORIES)},
            allreduce_overlapped_us=overlapped, gpu0_only_us=gpu0_only, start_us=s0, busy_us=busy_us,
            dp_phase_gpu_us=dp_gpu if dev >= 0 else {}, memcpy_bytes=_copy_bytes(tl, sel, s0, s1),
        ))
    return out


def _copy_bytes(tl: RankTimeline, sel: np.ndarray, lo: float | None, hi: float | None) -> dict[str, int]:
    """Bytes of copies (by kind) that start inside [lo, hi) (all of ``sel`` when lo is None)."""
    if lo is None or hi is None:
        starts_in = np.ones(len(sel), dtype=bool)
    else:
        starts_in = (tl.start[sel] >= lo) & (tl.start[sel] < hi)
    g = tl.gclass[sel]
    nbytes = tl.rt.nbytes[tl.gpu_rows[sel]]
    out: dict[str, int] = {}
    for code, kind in C.COPY_KIND.items():
        m = starts_in & (g == code)
        if m.any():
            out[kind] = int(nbytes[m].sum())
    return out


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
            memcpy_time_us=float(d[copies].sum()), memcpy_bytes=_copy_bytes(tl, sel, None, None),
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
