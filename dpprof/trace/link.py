"""GPU activity -> the host event that launched it, and the DP phase / collective it was launched in.

Linking, in order of trust:
1. ``args.correlation`` of the GPU event = ``args.correlation`` of a runtime/driver call
   (``cudaLaunchKernel``, ``cuLaunchKernel``, ``hipLaunchKernel``, ``cudaMemcpyAsync``...). This works for
   every thread, including DP's replica threads (recorded only as runtime rows) and autograd threads.
2. ``ac2g`` flow events (start on the runtime call, finish on the GPU event), when the GPU event has no
   correlation id.
3. ``args.External id`` of the GPU event = that of a CPU op, when no runtime call is found.

A launch inherits the innermost DP phase interval *on its launching thread* that contains the launch
time. DP phase intervals are the ops ``Scatter``/``GatherBackward`` (dp_scatter), ``Broadcast`` and the
rest of replicate (dp_broadcast), ``Gather`` (dp_gather), ``BroadcastBackward``/``ReduceAddCoalesced``
(dp_reduce), or dpprof's own ``dpprof::dp_*`` markers. Replicate has no op of its own in torch: when
dpprof's ``dpprof::dp_replicate`` marker is absent, it is the window on the ``DataParallel.forward``
thread from the first ``Broadcast`` to the start of parallel_apply, i.e. the first kernel launch from
any host event of another thread that launches
GPU work, inside that ``DataParallel.forward`` (or the ``dpprof::dp_parallel_apply`` marker).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dpprof.trace import classify as C
from dpprof.trace.intervals import Intervals, Nesting, covered, union
from dpprof.trace.load import GPU_KINDS, K_CPU_OP, K_PYTHON, K_RUNTIME, K_USER_ANN, KIND_NAMES, RankTrace

HOST_KINDS = (K_CPU_OP, K_USER_ANN, K_RUNTIME, K_PYTHON)
_HOST_KIND = np.isin(np.arange(len(KIND_NAMES)), HOST_KINDS)  # by kind code: is it a host event?


@dataclass
class Links:
    """Per GPU activity row (``rows``): its launcher and the context it was launched in."""

    rows: np.ndarray  # row indices of GPU activities (kernels, copies, memsets)
    launcher: np.ndarray  # row of the launching host event, -1 when not found
    phase: np.ndarray  # int16 index into vocabulary.DP_PHASES, -1 when not launched inside a DP phase
    in_collective: np.ndarray  # bool: launched inside a collective span on the same thread
    unlinked: int  # GPU activities whose launcher was not found


def host_class(rt: RankTrace, name_class: np.ndarray) -> np.ndarray:
    """CPU class per row (``classify.CPU_CLASSES``); GPU rows and other kinds get -1."""
    cls = name_class[rt.name_id].astype(np.int16)
    return np.where(_HOST_KIND[rt.kind], cls, -1)


def find_launchers(rt: RankTrace) -> tuple[np.ndarray, np.ndarray]:
    """(GPU activity rows, launcher row per GPU row or -1)."""
    gpu = np.flatnonzero(np.isin(rt.kind, GPU_KINDS))
    rt_rows = np.flatnonzero((rt.kind == K_RUNTIME) & (rt.correlation >= 0))
    launcher = _match(rt.correlation, rt_rows, rt.correlation[gpu])
    missing = launcher < 0
    if missing.any() and len(rt.flow_id):
        launcher[missing] = _by_flows(rt, gpu[missing])
        missing = launcher < 0
    if missing.any():
        launcher[missing] = _by_external_id(rt, gpu[missing])
    return gpu, launcher


def _by_flows(rt: RankTrace, rows: np.ndarray) -> np.ndarray:
    def key(tid: int, ts: float) -> tuple[int, int]:
        return tid, int(round(ts * 1000))

    finish = {key(t, s): i for t, s, i, st in zip(rt.flow_tid.tolist(), rt.flow_ts.tolist(),
                                                  rt.flow_id.tolist(), rt.flow_start.tolist(), strict=True)
              if not st}
    start = {i: key(t, s) for t, s, i, st in zip(rt.flow_tid.tolist(), rt.flow_ts.tolist(),
                                                 rt.flow_id.tolist(), rt.flow_start.tolist(), strict=True) if st}
    runtime = {key(int(rt.tid[r]), float(rt.ts[r])): int(r) for r in np.flatnonzero(rt.kind == K_RUNTIME)}
    out = np.full(len(rows), -1, dtype=np.int64)
    for j, r in enumerate(rows.tolist()):
        fid = finish.get(key(int(rt.tid[r]), float(rt.ts[r])))
        if fid is not None and fid in start:
            out[j] = runtime.get(start[fid], -1)
    return out


def _by_external_id(rt: RankTrace, rows: np.ndarray) -> np.ndarray:
    ops = np.flatnonzero(np.isin(rt.kind, (K_CPU_OP, K_USER_ANN)) & (rt.external_id >= 0))
    return _match(rt.external_id, ops, rt.external_id[rows])


def _match(key: np.ndarray, candidates: np.ndarray, want: np.ndarray) -> np.ndarray:
    """For each wanted id (>= 0), the first candidate row whose ``key`` equals it (stable order), else -1."""
    out = np.full(len(want), -1, dtype=np.int64)
    if len(candidates) == 0:
        return out
    ids = key[candidates]
    order = np.argsort(ids, kind="stable")
    ids, rows = ids[order], candidates[order]
    k = np.clip(np.searchsorted(ids, want), 0, len(ids) - 1)
    hit = (ids[k] == want) & (want >= 0)
    out[hit] = rows[k[hit]]
    return out


@dataclass
class PhaseSpans:
    """DP phase intervals on the host: start, end (µs), label (index into DP_PHASES), thread id."""

    start: np.ndarray
    end: np.ndarray
    label: np.ndarray
    tid: np.ndarray
    synthetic_replicate: int = 0  # replicate windows inferred (no dpprof::dp_replicate marker)
    #: Replicas per DataParallel.forward (median over the forwards): threads other than the forward's own that
    #: launch GPU work inside it (parallel_apply's one thread per replica, torch/nn/parallel/parallel_apply.py);
    #: None without a forward that has such threads (one device, or replica threads not recorded).
    replicas: int | None = None


def dp_phase_spans(rt: RankTrace, hcls: np.ndarray, gpu: np.ndarray, launcher: np.ndarray) -> PhaseSpans:
    """All DP phase intervals of a rank, including the inferred replicate windows."""
    phase_of = {c: i for i, c in enumerate(C.DP_PHASE_CLASSES)}
    rows = np.flatnonzero(np.isin(hcls, C.DP_PHASE_CLASSES))
    starts = [rt.ts[rows]]
    ends = [rt.ts[rows] + rt.dur[rows]]
    labels = [np.array([phase_of[int(c)] for c in hcls[rows]], dtype=np.int16)]
    tids = [rt.tid[rows]]
    synthetic = 0
    per_forward: list[int] = []
    forwards = np.flatnonzero(hcls == C.C_DP_FORWARD).tolist()
    if forwards:
        # Everything a forward window needs, sorted by time once, so that each window is two binary searches
        # (a mask over every row per forward grew with steps x events).
        marks = np.flatnonzero((hcls == C.C_DP_BROADCAST) | (hcls == C.C_DP_PARALLEL_APPLY))
        marks = marks[np.argsort(rt.ts[marks], kind="stable")]
        m_ts = rt.ts[marks]
        # parallel_apply starts with the first host event of a thread that launches GPU work (a replica
        # thread); threads that launch nothing (pin-memory) do not count.
        launches = np.zeros(len(rt.tids) + 1, dtype=bool)  # by thread id: does it launch GPU work?
        launches[rt.tid[launcher[launcher >= 0]]] = True
        host = np.flatnonzero(launches[rt.tid] & _HOST_KIND[rt.kind])
        host = host[np.argsort(rt.ts[host], kind="stable")]
        h_ts, h_tid = rt.ts[host], rt.tid[host]
        replicate_id = _name_id(rt, "dpprof::dp_replicate")
    for f in forwards:
        f0, f1, ftid = rt.ts[f], rt.ts[f] + rt.dur[f], rt.tid[f]
        lo_f, hi_f = np.searchsorted(h_ts, f0, "left"), np.searchsorted(h_ts, f1, "left")
        threads = np.unique(h_tid[lo_f:hi_f])
        if len(threads[threads != ftid]):
            per_forward.append(int(np.count_nonzero(threads != ftid)))
        inside = marks[np.searchsorted(m_ts, f0, "left"):np.searchsorted(m_ts, f1, "left")]
        inside = np.sort(inside[rt.tid[inside] == ftid])  # row order, as the trace lists them
        bcast = inside[hcls[inside] == C.C_DP_BROADCAST]
        if np.any(rt.name_id[bcast] == replicate_id):
            continue
        if len(bcast) == 0:
            continue
        b0, b_end = rt.ts[bcast[0]], float(np.max(rt.ts[bcast] + rt.dur[bcast]))
        marker = inside[hcls[inside] == C.C_DP_PARALLEL_APPLY]
        if len(marker):
            w_end = float(rt.ts[marker[0]])
        else:
            lo, hi = np.searchsorted(h_ts, b_end, "left"), np.searchsorted(h_ts, f1, "left")
            first = np.flatnonzero(h_tid[lo:hi] != ftid)
            w_end = float(h_ts[lo + first[0]]) if len(first) else b_end
        starts.append(np.array([b0]))
        ends.append(np.array([max(w_end, b_end)]))
        labels.append(np.array([phase_of[C.C_DP_BROADCAST]], dtype=np.int16))
        tids.append(np.array([ftid], dtype=np.int32))
        synthetic += 1
    replicas = int(np.median(per_forward)) if per_forward else None
    return PhaseSpans(np.concatenate(starts), np.concatenate(ends), np.concatenate(labels),
                      np.concatenate(tids), synthetic, replicas)


def _name_id(rt: RankTrace, name: str) -> int:
    try:
        return rt.names.index(name)
    except ValueError:
        return -2


def collective_rows(hcls: np.ndarray) -> np.ndarray:
    """Rows of collective spans (``nccl:*``, ``gloo:*``, ``c10d::*``, ``record_param_comms``)."""
    return np.flatnonzero(np.isin(hcls, tuple(C.COLLECTIVE_CLASSES)))


def link(rt: RankTrace, hcls: np.ndarray, communicates: bool = True) -> tuple[Links, PhaseSpans]:
    """Link every GPU activity of a rank to its launcher, DP phase and collective context.

    ``communicates=False`` (a process group of size 1) leaves every launch outside collectives.
    """
    gpu, launcher = find_launchers(rt)
    spans = dp_phase_spans(rt, hcls, gpu, launcher)
    phase = np.full(len(gpu), -1, dtype=np.int16)
    in_coll = np.zeros(len(gpu), dtype=bool)
    ok = launcher >= 0
    l_tid, l_ts = rt.tid[launcher[ok]], rt.ts[launcher[ok]]
    coll = collective_rows(hcls) if communicates else np.zeros(0, dtype=np.int64)
    ph_ok = np.full(int(ok.sum()), -1, dtype=np.int16)
    co_ok = np.zeros(int(ok.sum()), dtype=bool)
    for t in np.unique(l_tid).tolist():
        on_t = l_tid == t
        sel = spans.tid == t
        if sel.any():
            ph_ok[on_t] = Nesting(spans.start[sel], spans.end[sel], spans.label[sel]).label_at(l_ts[on_t])
        c = coll[rt.tid[coll] == t]
        if len(c):
            u: Intervals = union(rt.ts[c], rt.ts[c] + rt.dur[c])
            co_ok[on_t] = covered(l_ts[on_t], u)
    phase[ok] = ph_ok
    in_coll[ok] = co_ok
    return Links(gpu, launcher, phase, in_coll, int((~ok).sum())), spans
