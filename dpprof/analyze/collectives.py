"""Where each collective of one rank *ran* (worker side): its executions, ready to be matched across participants.

A collective's execution is, for each participant:

* NCCL/RCCL: its communication kernel on one device. ProcessGroupNCCL runs it on the group's own stream after
  an event wait on the compute stream (torch/csrc/distributed/c10d/ProcessGroupNCCL.cpp, ``collective()``);
  DP's broadcast and reduce run on each device's *current* stream (torch/csrc/cuda/nccl.cpp, ``broadcast`` /
  ``reduce``, called from torch/nn/parallel/comm.py). Either way a kernel starts when its stream reaches it and
  spins until every participant has joined, so the kernels of one collective end together and a kernel's
  length is waiting + transfer.
* gloo: its span on a ``pt_gloo_runloop`` thread. ProcessGroupGloo's worker threads run the algorithm
  synchronously (torch/csrc/distributed/c10d/ProcessGroupGloo.cpp, ``runLoop``), so the span starts when that
  rank reaches the collective and ends when it completes; there is no kernel.

Host spans of the API (``c10d::*``, ``record_param_comms``, ``nccl:*``) are enqueue time: the host runs ahead of
the GPU, so they say nothing about when a collective ran.

Matching key (``key``): the process group, the kind, the message size and dtype when the trace states them
(libkineto copies ``record_param_comms``' args onto the kernel), the profiler step the collective was issued
in, and its order among the same key in that step; or the group and ``Seq`` when present. DP's in-process
communicators have no process group: their kernels are one collective across the devices of one trace
(group ``local``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from dpprof.trace import classify as C
from dpprof.trace.load import K_CPU_OP, K_KERNEL, K_USER_ANN, RankTrace

LOCAL_GROUP = "local"


@dataclass
class Executions:
    """One row per collective execution of a rank (µs on the rank's trace clock)."""

    start: np.ndarray
    end: np.ndarray
    device: np.ndarray  # GPU index; -1 for a gloo span (host)
    kind: list[str]
    group: list[str]
    size: list[tuple[Any, ...] | None]  # (in nelems, out nelems, dtype) when known
    seq: list[int | None]
    step: list[int | None]  # profiler step it was issued in
    is_kernel: np.ndarray  # bool
    tid: np.ndarray  # thread id of a gloo span; -1 for kernels

    def __len__(self) -> int:
        return len(self.start)

    def keys(self) -> list[tuple[Any, ...]]:
        """Matching key of each execution (see the module docstring); the order is counted per participant
        (per device: one trace drives several devices under DP)."""
        out: list[tuple[Any, ...]] = [()] * len(self)
        counts: dict[tuple[Any, ...], int] = {}
        for i in np.argsort(self.start, kind="stable").tolist():
            if self.seq[i] is not None:
                out[i] = (self.group[i], "seq", self.seq[i])
                continue
            base = (self.group[i], self.kind[i], self.size[i], self.step[i])
            per = (*base, int(self.device[i]))
            k = counts.get(per, 0)
            counts[per] = k + 1
            out[i] = (*base, k)
        return out


def _group_of_rank(rt: RankTrace) -> str:
    return str(rt.pg_config[0]["pg_name"]) if len(rt.pg_config) == 1 else "default"


def _step_of(times: np.ndarray, steps: list[tuple[int, float, float]]) -> list[int | None]:
    out: list[int | None] = [None] * len(times)
    for number, s0, s1 in steps:
        for i in np.flatnonzero((times >= s0) & (times < s1)).tolist():
            out[i] = number
    return out


def executions(rt: RankTrace, hcls: np.ndarray, gpu_rows: np.ndarray, gclass: np.ndarray,
               launcher: np.ndarray, steps: list[tuple[int, float, float]], communicates: bool) -> Executions:
    """Every collective execution of a rank: communication kernels and gloo runloop spans.

    ``gpu_rows``/``gclass``/``launcher``: the GPU activities, their class and launching host row (``link``).
    ``communicates=False`` (a group of one): nothing is a collective execution.
    """
    if not communicates:
        return _empty()
    x = rt.extras
    args_of_row = {int(r): j for j, r in enumerate(x.coll_row.tolist())}
    # Kernels without the args get those of the record_param_comms op they were launched under.
    ext_of_pc = {int(rt.external_id[r]): j for r, j in args_of_row.items()
                 if rt.kind[r] != K_KERNEL and rt.external_id[r] >= 0}
    k_sel = np.flatnonzero((gclass == C.G_COMM) & (rt.kind[gpu_rows] == K_KERNEL))
    k_rows = gpu_rows[k_sel]
    kernel_devices = set(rt.device[k_rows].tolist())
    rank_group = _group_of_rank(rt)
    kind, group, size, seq = [], [], [], []
    for r in k_rows.tolist():
        j = args_of_row.get(r)
        if j is None:
            j = ext_of_pc.get(int(rt.external_id[r]))
        a = {f: (x.coll[f][j] if j is not None else None) for f in x.coll}
        kind.append(C.collective_kind(a["collective"]) or C.collective_kind(rt.names[rt.name_id[r]]) or "other")
        pg = a["pg_name"]
        group.append(pg if pg is not None else (LOCAL_GROUP if len(kernel_devices) > 1 else rank_group))
        n_in, n_out = a["in_nelems"], a["out_nelems"]
        size.append((n_in, n_out, a["dtype"]) if n_in is not None and n_out is not None else None)
        seq.append(a["seq"])
    launch_ts = np.where(launcher[k_sel] >= 0, rt.ts[np.maximum(launcher[k_sel], 0)], rt.ts[k_rows])
    # gloo: the backend's spans on its runloop threads (host user annotations named gloo:*).
    g_rows = np.flatnonzero((hcls == C.C_COLLECTIVE) & (rt.kind == K_USER_ANN))
    g_rows = np.array([r for r in g_rows.tolist() if rt.names[rt.name_id[r]].startswith("gloo:")], dtype=np.int64)
    g_rows = g_rows[np.argsort(rt.ts[g_rows], kind="stable")]
    kind += _gloo_kinds(rt, hcls, g_rows)
    for _ in g_rows.tolist():
        group.append(rank_group)
        size.append(None)
        seq.append(None)
    start = np.concatenate([rt.ts[k_rows], rt.ts[g_rows]])
    end = np.concatenate([rt.ts[k_rows] + rt.dur[k_rows], rt.ts[g_rows] + rt.dur[g_rows]])
    issued = np.concatenate([launch_ts, rt.ts[g_rows]])
    return Executions(
        start=start, end=end, device=np.concatenate([rt.device[k_rows], np.full(len(g_rows), -1, np.int32)]),
        kind=kind, group=group, size=size, seq=seq, step=_step_of(issued, steps),
        is_kernel=np.concatenate([np.ones(len(k_rows), bool), np.zeros(len(g_rows), bool)]),
        tid=np.concatenate([np.full(len(k_rows), -1, np.int32), rt.tid[g_rows]]),
    )


def _gloo_kinds(rt: RankTrace, hcls: np.ndarray, g_rows: np.ndarray) -> list[str]:
    """The kind of each gloo span (in start order). The span names the algorithm gloo ran, not always the API
    call: ProcessGroupGloo runs ``_reduce_scatter_base`` as an allreduce (``gloo:all_reduce``). Each rank's
    runloop threads take the work in the order the host enqueued it (ProcessGroupGloo.cpp ``enqueue`` /
    ``runLoop``), so when every ``c10d::*`` collective op pairs with one span, the op names the kind."""
    ops = np.flatnonzero((hcls == C.C_COLLECTIVE) & (rt.kind == K_CPU_OP))
    ops = ops[np.argsort(rt.ts[ops], kind="stable")]
    api: list[str] = [k for k in (C.collective_kind(rt.names[rt.name_id[r]]) for r in ops.tolist()
                                  if rt.names[rt.name_id[r]].startswith("c10d::")) if k is not None]
    own = [C.collective_kind(rt.names[rt.name_id[r]]) or "other" for r in g_rows.tolist()]
    return api if len(api) == len(own) else own


def _empty() -> Executions:
    z = np.zeros(0)
    return Executions(z, z.copy(), np.zeros(0, np.int32), [], [], [], [], [], np.zeros(0, bool),
                      np.zeros(0, np.int32))
