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
  2. compute kernels -> ``compute`` (communication running at the same time is hidden: its length is
     ``comm_overlapped_us``);
  3. communication kernels (NCCL/RCCL) and copies launched inside a collective's host span (gloo's
     staging copies) -> ``comm``;
  4. other copies and memsets -> ``memcpy``.
* GPU idle instants, first match wins:
  1. the host is inside a DataLoader ``__next__`` -> ``data_loading``;
  2. a gloo collective runs (its span on a ``pt_gloo_runloop`` thread) -> ``comm``;
  3. the device's next work was already launched (more than ``QUEUE_SLACK_US`` before) and another GPU of the
     trace is busy -> ``peer_wait`` on that GPU: the host is ahead and the stream waits on an event of the other
     device (DP's gather copies run on the source GPU's stream and the output device's stream waits for them,
     aten/src/ATen/native/cuda/Copy.cu ``copy_device_to_device``; DP's scatter copies wait for the
     destination's stream the same way);
  4. a host thread works: inside a cpu_op, runtime/driver call or python function on any thread, inside
     ``DataParallel.forward`` (its replica threads run there even when they were not recorded) or a DP
     phase -> ``host``. Time a thread spends inside a synchronising call (``cudaStreamSynchronize``,
     ``cudaDeviceSynchronize``, ``cudaEventSynchronize``, blocking ``cudaMemcpy``) is waiting, not work;
     annotations that only enclose (``ProfilerStep#``, ``DistributedDataParallel.forward``, ``FSDP::*``,
     ``Optimizer.*``, other user annotations) do not by themselves make the host busy;
  5. otherwise -> ``idle``.
* Collective waiting (applied after the ranks are matched, ``dpprof.analyze.matching``): the ``comm`` and
  ``dp_*`` pieces covered by a collective execution are split at the instant its last participant started:
  before it -> ``peer_wait`` (on that participant), after it -> the piece's category (transfer).
* A rank with no GPU activity gets one row with ``device == -1``, attributed on its host timeline:
  ``data_loading``, ``compute`` = time inside cpu ops (forward, backward and optimizer ops) of the threads
  that run no collective, ``comm`` = a gloo collective running while no such op runs (the rest of its span is
  ``comm_overlapped_us``), ``host`` = other host activity, ``idle``.
* ``gpu0_only_us`` (DP only, on the output device's row): time that device is busy while every other
  GPU *with activity in the trace* is idle; with no other active GPU it equals ``busy_us``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dpprof.analyze.autotune import timed_launches
from dpprof.analyze.collectives import Executions, executions
from dpprof.analyze.model import CATEGORIES, StepBreakdown
from dpprof.trace import classify as C
from dpprof.trace import intervals as iv
from dpprof.trace.link import HOST_KINDS, Links, PhaseSpans
from dpprof.trace.load import K_CPU_OP, K_KERNEL, K_MEMCPY, K_MEMSET, K_USER_ANN, RankTrace
from dpprof.vocabulary import DP_PHASES

CAT = {name: i for i, name in enumerate(CATEGORIES)}
_PHASE_CAT = np.array([CAT[p] for p in DP_PHASES], dtype=np.int16)
_HOST = CAT["host"]
#: Priority of GPU busy categories (first match wins).
_BUSY_ORDER = tuple(CAT[c] for c in (*DP_PHASES, "compute", "comm", "memcpy"))
#: Work launched longer ago than this (µs) and not yet started is queued behind a dependency, not waiting for its
#: launch (a kernel starts a few µs after its launch call returns).
QUEUE_SLACK_US = 10.0
#: Categories whose pieces are split into waiting and transfer when a collective execution covers them.
SPLIT_CATS = frozenset(CAT[c] for c in (*DP_PHASES, "comm"))


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
    launched: np.ndarray  # when each activity's launch call returned, µs (inf when its launcher is unknown)
    autotune: np.ndarray  # bool: launched by an autotuning loop (dpprof.analyze.autotune)
    optimizer: np.ndarray  # bool: launched inside ``Optimizer.step`` (the optimizer's own GPU work)
    phase: np.ndarray  # DP phase index or -1
    is_comm: np.ndarray  # communication kernel or copy inside a collective
    ex: Executions
    data_loading: iv.Intervals
    host_busy: iv.Intervals
    host_compute: iv.Intervals  # cpu ops of threads that run no collective (device -1 rows)
    gloo: iv.Intervals  # gloo collective spans (executions without a kernel)
    phase_spans: tuple[iv.Intervals, ...]  # host spans of each DP phase
    #: DP's own host windows: ``DataParallel.forward`` (replicate, the replica threads, gather) and every DP phase.
    dp_windows: iv.Intervals = (np.zeros(0), np.zeros(0))

    def exec_nesting(self, dev: int) -> iv.Nesting:
        """Executions that can cover a piece of device ``dev``'s row: its kernels and the rank's gloo spans."""
        sel = np.flatnonzero((self.ex.device == dev) | (self.ex.device < 0))
        return iv.Nesting(self.ex.start[sel], self.ex.end[sel], sel.astype(np.int64))


def _named(rt: RankTrace, prefix: str) -> np.ndarray:
    """Bool per row: the event's name starts with ``prefix``."""
    by_name = np.array([n.startswith(prefix) for n in rt.names] or [False], dtype=bool)
    return by_name[rt.name_id]


def _launched_in(rt: RankTrace, launcher: np.ndarray, spans: np.ndarray) -> np.ndarray:
    """Bool per GPU activity: its launch call lies inside one of the ``spans`` rows (on any thread)."""
    r = np.flatnonzero(spans)
    ok = launcher >= 0
    at = np.where(ok, rt.ts[np.maximum(launcher, 0)], np.nan)
    return ok & iv.covered(at, iv.union(rt.ts[r], rt.ts[r] + rt.dur[r]))


def _thread_busy(rt: RankTrace, busy_rows: np.ndarray, sync_rows: np.ndarray) -> iv.Intervals:
    """Union of the busy rows, minus, on each thread, the time that thread spends in a synchronising call."""
    sync_tids = np.unique(rt.tid[sync_rows])
    plain = busy_rows[~np.isin(rt.tid[busy_rows], sync_tids)]
    parts = [iv.union(rt.ts[plain], rt.ts[plain] + rt.dur[plain])]
    for t in sync_tids.tolist():
        b = busy_rows[rt.tid[busy_rows] == t]
        s = sync_rows[rt.tid[sync_rows] == t]
        parts.append(iv.subtract(iv.union(rt.ts[b], rt.ts[b] + rt.dur[b]), iv.union(rt.ts[s], rt.ts[s] + rt.dur[s])))
    return iv.union(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))


def build_timeline(rt: RankTrace, hcls: np.ndarray, gpu_name_class: np.ndarray, links: Links,
                   spans: PhaseSpans, steps: list[tuple[int, float, float]], communicates: bool = True
                   ) -> RankTimeline:
    """Columns of one rank for attribution. ``communicates=False`` (world size 1): collective spans are
    ordinary host work and nothing is a collective execution (a group of one moves nothing)."""
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
    busy = np.where(g == C.G_COMPUTE, CAT["compute"], np.where(is_comm, CAT["comm"], CAT["memcpy"]))
    busy = np.where(links.phase >= 0, _PHASE_CAT[np.maximum(links.phase, 0)], busy).astype(np.int16)
    start = rt.ts[rows]
    ex = executions(rt, hcls, rows, g, links.launcher, steps, communicates)

    def spans_of(mask: np.ndarray) -> iv.Intervals:
        r = np.flatnonzero(mask)
        return iv.union(rt.ts[r], rt.ts[r] + rt.dur[r])

    host_kind = np.isin(rt.kind, HOST_KINDS)
    enclosing = np.isin(hcls, tuple(C.ENCLOSING_CLASSES)) | ((rt.kind == K_USER_ANN) & (hcls == C.C_OP))
    sync_rows = np.flatnonzero(hcls == C.C_SYNC)
    busy_rows = np.flatnonzero(host_kind & (hcls >= 0) & ~enclosing & (hcls != C.C_SYNC))
    host_busy = _thread_busy(rt, busy_rows, sync_rows)
    # DP phases (the inferred replicate window included) are host work of DP's data path.
    host_busy = iv.union(np.concatenate([host_busy[0], spans.start]), np.concatenate([host_busy[1], spans.end]))
    gloo = iv.union(ex.start[ex.device < 0], ex.end[ex.device < 0])
    comm_tids = np.unique(ex.tid[ex.device < 0])  # threads that run gloo collectives
    compute_rows = (rt.kind == K_CPU_OP) & np.isin(hcls, (C.C_OP, C.C_DDP_REDUCER)) & ~np.isin(rt.tid, comm_tids)
    return RankTimeline(
        rt=rt, gpu_rows=rows, start=start, end=start + rt.dur[rows], device=rt.device[rows], gclass=g,
        busy_cat=busy, phase=links.phase, is_comm=is_comm, ex=ex,
        launched=np.where(links.launcher >= 0, rt.ts[np.maximum(links.launcher, 0)]
                          + rt.dur[np.maximum(links.launcher, 0)], np.inf),
        autotune=(links.launcher >= 0) & timed_launches(rt)[np.maximum(links.launcher, 0)],
        optimizer=_launched_in(rt, links.launcher, (hcls == C.C_OPTIMIZER) & _named(rt, "Optimizer.step")),
        data_loading=spans_of(hcls == C.C_DATA), host_busy=host_busy,
        host_compute=spans_of(compute_rows), gloo=gloo,
        phase_spans=tuple(iv.union(spans.start[spans.label == i], spans.end[spans.label == i])
                          for i in range(len(DP_PHASES))),
        dp_windows=_dp_windows(rt, hcls, spans),
    )


def _dp_windows(rt: RankTrace, hcls: np.ndarray, spans: PhaseSpans) -> iv.Intervals:
    """``DataParallel.forward`` spans and DP's phase spans, merged (torch/nn/parallel/data_parallel.py: everything
    DP adds to a step runs inside its ``forward`` or, in backward, in ``GatherBackward``/``ReduceAddCoalesced``)."""
    fwd = np.flatnonzero(hcls == C.C_DP_FORWARD)
    return iv.union(np.concatenate([rt.ts[fwd], spans.start]), np.concatenate([rt.ts[fwd] + rt.dur[fwd], spans.end]))


@dataclass
class Pieces:
    """Runs of a step's row: (step, device, start, end, category). Two uses: the stretches a collective execution
    covers (``uid`` >= 0), to be split into waiting and transfer once the ranks are matched; and, for timeline
    views, every stretch of the row (``Segments``)."""

    step: np.ndarray
    device: np.ndarray
    uid: np.ndarray  # index into the rank's Executions, -1 when no collective covers the run
    start: np.ndarray
    end: np.ndarray
    label: np.ndarray  # category index
    waited: np.ndarray  # the other GPU a queued-work peer_wait waited for, else -1

    @classmethod
    def concat(cls, parts: list[Pieces]) -> Pieces:
        if not parts:
            z = np.zeros(0)
            return cls(np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int64), z, z.copy(),
                       np.zeros(0, np.int16), np.zeros(0, np.int64))
        return cls(*(np.concatenate([getattr(p, f) for p in parts])
                     for f in ("step", "device", "uid", "start", "end", "label", "waited")))


def _runs(step: int, dev: int, bp: np.ndarray, label: np.ndarray, uid: np.ndarray, waited: np.ndarray,
          keep: np.ndarray) -> Pieces:
    """Contiguous runs of equal (label, uid, waited) among the kept pieces."""
    k = np.flatnonzero(keep)
    s, e, u, lab, w = bp[:-1][k], bp[1:][k], uid[k], label[k], waited[k]
    if len(s):
        new = np.ones(len(s), dtype=bool)
        new[1:] = (u[1:] != u[:-1]) | (lab[1:] != lab[:-1]) | (w[1:] != w[:-1]) | (s[1:] != e[:-1])
        first = np.flatnonzero(new)
        last = np.append(first[1:], len(s)) - 1
        s, e, u, lab, w = s[first], e[last], u[first], lab[first], w[first]
    n = len(s)
    return Pieces(np.full(n, step, np.int64), np.full(n, dev, np.int32), u.astype(np.int64), s, e,
                  lab.astype(np.int16), w.astype(np.int64))


def attribute_step(tl: RankTimeline, rank: int, step: int, s0: float, s1: float, devices: tuple[int, ...],
                   output_device: int | None, segments: bool = False
                   ) -> tuple[list[StepBreakdown], Pieces, Pieces | None]:
    """One StepBreakdown per device (or one ``device == -1`` row when ``devices`` is empty), the pieces that
    collective executions cover (to be split into waiting and transfer once the ranks are matched), and with
    ``segments`` every run of each row (for timeline views; ``None`` otherwise)."""
    host_b = [iv.boundaries(u, s0, s1) for u in (tl.data_loading, tl.gloo, tl.host_busy, tl.host_compute)]
    in_step = (tl.end > s0) & (tl.start < s1)
    rows, pieces, segs = [], [], []
    for dev in devices or (-1,):
        sel = np.flatnonzero(in_step & (tl.device == dev))
        gs, ge = np.maximum(tl.start[sel], s0), np.minimum(tl.end[sel], s1)
        others = np.flatnonzero(in_step & (tl.device != dev) & (tl.device >= 0))
        os_, oe = np.maximum(tl.start[others], s0), np.minimum(tl.end[others], s1)
        nest = tl.exec_nesting(dev)
        queue_b = tl.launched[tl.device == dev] + QUEUE_SLACK_US  # where queued work becomes "queued"
        bp = np.unique(np.concatenate([[s0, s1], gs, ge, *host_b, nest.boundaries(s0, s1), os_, oe,
                                       queue_b[(queue_b > s0) & (queue_b < s1)]]))
        mids, seg = (bp[:-1] + bp[1:]) / 2, np.diff(bp)
        label = np.full(len(mids), -1, dtype=np.int16)
        cats = tl.busy_cat[sel]
        for cat in _BUSY_ORDER if dev >= 0 else ():  # first match wins
            m = cats == cat
            if m.any():
                label[iv.covered(mids, iv.union(gs[m], ge[m])) & (label < 0)] = cat
        busy_us = float(seg[label >= 0].sum())
        waited, waited_dp = _paint_idle(tl, mids, label, dev, tl.device[others], os_, oe,
                                        tl.phase[others] >= 0)
        uid = nest.label_at(mids)
        uid[~np.isin(label, tuple(SPLIT_CATS))] = -1
        pieces.append(_runs(step, dev, bp, label, uid, waited, uid >= 0))
        if segments:
            segs.append(_runs(step, dev, bp, label, uid, waited, np.ones(len(label), dtype=bool)))
        sums = np.bincount(label, weights=seg, minlength=len(CATEGORIES))
        peer = {f"GPU {o}": float(seg[waited == o].sum()) for o in np.unique(waited[waited >= 0]).tolist()}
        phase = tl.phase[sel]
        gpu0_only = gpu0_serial = None
        if output_device is not None and dev == output_device:
            others_busy = iv.covered(mids, iv.union(os_, oe))
            gpu0_only = float(seg[_busy(label) & ~others_busy].sum())
            gpu0_serial = float(seg[_busy(label) & ~np.isin(label, _PHASE_CAT) & ~others_busy].sum())
        auto, opt = tl.autotune[sel], tl.optimizer[sel]
        rows.append(StepBreakdown(
            rank=rank, device=int(dev), step=step, duration_us=s1 - s0,
            categories_us={c: float(sums[i]) for i, c in enumerate(CATEGORIES)},
            comm_overlapped_us=_overlapped(tl, sel, gs, ge, dev, s0, s1), gpu0_only_us=gpu0_only, start_us=s0,
            busy_us=busy_us,
            dp_phase_gpu_us={p: iv.length(iv.union(gs[phase == i], ge[phase == i])) for i, p in enumerate(DP_PHASES)}
            if dev >= 0 else {},
            dp_host_us={p: iv.length(iv.clip(u, s0, s1)) for p, u in zip(DP_PHASES, tl.phase_spans, strict=True)
                        if len(u[0])},
            peer_wait_on_us=peer, peer_wait_idle_us=float(seg[waited >= 0].sum()),
            peer_wait_dp_us=float(seg[waited_dp].sum()), gpu0_serial_us=gpu0_serial,
            host_in_dp_us=float(seg[(label == _HOST) & iv.covered(mids, tl.dp_windows)].sum())
            if len(tl.dp_windows[0]) else 0.0,
            optimizer_us=iv.length(iv.union(gs[opt], ge[opt])),
            autotune_us=iv.length(iv.union(gs[auto], ge[auto])), autotune_kernels=int(np.count_nonzero(
                auto & (tl.start[sel] >= s0) & (tl.rt.kind[tl.gpu_rows[sel]] == K_KERNEL))),
            memcpy_bytes=copy_bytes(tl, sel, s0, s1),
        ))
    return rows, Pieces.concat(pieces), Pieces.concat(segs) if segments else None


def _paint_idle(tl: RankTimeline, mids: np.ndarray, label: np.ndarray, dev: int, o_dev: np.ndarray,
                os_: np.ndarray, oe: np.ndarray, o_dp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Label the still-unlabelled pieces (GPU idle, or a host row) in priority order, in place; returns, per
    piece, the other GPU waited for (``peer_wait`` on queued work) or -1, and whether that GPU was then running
    DP data-path work (``o_dp``: the other activities launched in a DP phase)."""
    def paint(mask: np.ndarray, cat: int) -> None:
        label[(label < 0) & mask] = cat

    paint(iv.covered(mids, tl.data_loading), CAT["data_loading"])
    if dev < 0:
        paint(iv.covered(mids, tl.host_compute), CAT["compute"])
    paint(iv.covered(mids, tl.gloo), CAT["comm"])
    waited = np.full(len(mids), -1, dtype=np.int64)
    waited_dp = np.zeros(len(mids), dtype=bool)
    if dev >= 0 and len(o_dev):
        cand = (label < 0) & _queued(tl, dev, mids)
        best_end = np.full(len(mids), -np.inf)
        for o in np.unique(o_dev).tolist():  # the busy GPU whose current work ends last is the one waited for
            s, e = iv.union(os_[o_dev == o], oe[o_dev == o])
            if not len(s):
                continue
            k = np.clip(np.searchsorted(s, mids, side="right") - 1, 0, len(s) - 1)
            inside = cand & (s[k] <= mids) & (mids < e[k]) & (e[k] > best_end)
            waited[inside], best_end[inside] = o, e[k][inside]
            dp_o = o_dp & (o_dev == o)
            waited_dp[inside] = iv.covered(mids[inside], iv.union(os_[dp_o], oe[dp_o]))
        paint(waited >= 0, CAT["peer_wait"])
    paint(iv.covered(mids, tl.host_busy), CAT["host"])
    label[label < 0] = CAT["idle"]
    return waited, waited_dp


def _busy(label: np.ndarray) -> np.ndarray:
    """Pieces a GPU activity of the row's device covers (the busy categories, not idle waiting)."""
    return np.isin(label, _BUSY_ORDER)


def _queued(tl: RankTimeline, dev: int, mids: np.ndarray) -> np.ndarray:
    """Per instant: the device's next activity was launched more than QUEUE_SLACK_US before it."""
    mine = np.flatnonzero(tl.device == dev)
    order = mine[np.argsort(tl.start[mine], kind="stable")]
    st, launched = tl.start[order], tl.launched[order]
    if len(st) == 0:
        return np.zeros(len(mids), dtype=bool)
    # The earliest launch among the activities that start at or after each instant (a later-starting one may
    # have been launched earlier, on another stream).
    first_launch = np.minimum.accumulate(launched[::-1])[::-1]
    k = np.searchsorted(st, mids, side="left")
    ok = k < len(st)
    out = np.zeros(len(mids), dtype=bool)
    out[ok] = first_launch[k[ok]] + QUEUE_SLACK_US <= mids[ok]
    return out


def _overlapped(tl: RankTimeline, sel: np.ndarray, gs: np.ndarray, ge: np.ndarray, dev: int, s0: float,
                s1: float) -> float:
    """Collective execution hidden under compute in the step: kernels of this device and gloo spans under
    its compute kernels; on a host row, gloo spans under cpu compute ops."""
    gloo = iv.clip(tl.gloo, s0, s1)
    if dev < 0:
        return iv.intersection_length(gloo, iv.clip(tl.host_compute, s0, s1))
    comm = tl.is_comm[sel]
    comp = tl.gclass[sel] == C.G_COMPUTE
    ex = iv.union(np.concatenate([gs[comm], gloo[0]]), np.concatenate([ge[comm], gloo[1]]))
    return iv.intersection_length(ex, iv.union(gs[comp], ge[comp]))


def copy_bytes(tl: RankTimeline, sel: np.ndarray, lo: float | None, hi: float | None) -> dict[str, int]:
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
