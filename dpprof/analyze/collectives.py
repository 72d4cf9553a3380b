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
in, and its order among the same key in that step; or the group and ``Comms Id`` / ``Seq`` when present
(``Comms Id`` first: torch/csrc/profiler/util.cpp ``saveNcclMeta`` hashes the group and sequence number into it).
Sizes are left out for ``SIZE_FREE_KINDS``: all_to_all(v) and gather/scatter move different amounts per rank by
design (uneven splits, the root's buffer). A send and a recv are one transfer: their key names the peer (``Dst
Rank`` / ``Src Rank``, global ranks) and the order among the ops between the same two ranks; the parent pairs
them (``dpprof.analyze.matching``). DP's in-process communicators have no process group: their kernels are one
collective across the devices of one trace (group ``local``).

The group (``Group``): the kernel's ``Process Group Name``, with its members and size from the trace's
``distributedInfo.pg_config`` (torch writes every group the rank belongs to: torch/profiler/profiler.py
``_get_distributed_info``). gloo spans and kernels without that arg name no group: they belong to the rank's only
group of two or more ranks, and when it has several, to one of them, unknown (an ambiguous ``Group``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dpprof.trace import classify as C
from dpprof.trace.load import K_CPU_OP, K_KERNEL, K_USER_ANN, RankTrace

LOCAL_GROUP = "local"
#: The group of a rank's unnamed collectives when its trace lists no process group (a trace without pg_config).
DEFAULT_GROUP = "default"
#: Kinds whose message sizes differ between the participants by design.
SIZE_FREE_KINDS = frozenset({"all_to_all", "gather", "scatter"})
#: Point-to-point kinds: a send and a recv are matched as a pair (by peers and order), not as a group collective.
P2P_KINDS = frozenset({"send", "recv"})

Candidate = tuple[str, tuple[int, ...], int | None]


class Group(str):
    """A process group as one rank's trace knows it: its name (a ``str``, so keys hash and compare it as fast as a
    name, and by name only), with its members and size riding along for the parent's checks
    (``dpprof.analyze.instances``), so a trace that lists fewer details still matches.

    An ambiguous group (``candidates`` set) is a collective the trace does not name on a rank of several groups:
    its name joins the candidates' (``"0|1"``), so it matches only ranks that belong to the same groups.
    """

    ranks: tuple[int, ...]  # members' global ranks; () when unknown
    size: int | None
    candidates: tuple[Candidate, ...]  # (name, ranks, size) of each group it may be

    def __new__(cls, name: str, ranks: tuple[int, ...] = (), size: int | None = None,
                candidates: tuple[Candidate, ...] = ()) -> Group:
        g = super().__new__(cls, name)
        g.ranks, g.size, g.candidates = ranks, size, candidates
        return g

    @property
    def name(self) -> str:
        return str(self)

    @property
    def ambiguous(self) -> bool:
        return bool(self.candidates)

    @staticmethod
    def of(value: str) -> Group:
        return value if isinstance(value, Group) else Group(str(value))


def _no_values(n: int) -> list[Any]:
    return [None] * n


@dataclass
class Executions:
    """One row per collective execution of a rank (µs on the rank's trace clock)."""

    start: np.ndarray
    end: np.ndarray
    device: np.ndarray  # GPU index; -1 for a gloo span (host)
    kind: list[str]
    group: Sequence[str]  # a Group, or a plain name
    size: list[tuple[Any, ...] | None]  # (in nelems, out nelems, dtype) when known
    seq: list[int | None]
    step: list[int | None]  # profiler step it was issued in
    is_kernel: np.ndarray  # bool
    tid: np.ndarray  # thread id of a gloo span; -1 for kernels
    peer: list[int | None] = field(default_factory=list)  # send: its receiver, recv: its sender (global rank)
    comms_id: list[str | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.start)

    def keys(self) -> list[tuple[Any, ...]]:
        """Matching key of each execution (see the module docstring); the order is counted per participant
        (per device: one trace drives several devices under DP)."""
        n = len(self)
        peer = self.peer or _no_values(n)
        cid = self.comms_id or _no_values(n)
        out: list[tuple[Any, ...]] = [()] * n
        counts: dict[tuple[Any, ...], int] = {}
        for i in np.argsort(self.start, kind="stable").tolist():
            g, kind = self.group[i], self.kind[i]
            # Point to point: the order among the ops between the same two ranks. Not Seq / Comms Id: each rank
            # numbers its own ops, so a send's and its recv's need not agree.
            if kind in P2P_KINDS:
                base: tuple[Any, ...] = (g, "p2p", kind, peer[i], self.step[i])
            elif cid[i] is not None:
                out[i] = (g, "id", cid[i])
                continue
            elif self.seq[i] is not None:
                out[i] = (g, "seq", self.seq[i])
                continue
            else:
                base = (g, kind, None if kind in SIZE_FREE_KINDS else self.size[i], self.step[i])
            per = (*base, int(self.device[i]))
            k = counts.get(per, 0)
            counts[per] = k + 1
            out[i] = (*base, k)
        return out


def _ranks_of(value: Any) -> tuple[int, ...]:
    """A pg_config ``ranks`` entry: a list, or the string libkineto's on-demand writer puts there (``"[0, 1]"``,
    libkineto/src/output_json.cpp ``addOnDemandDistMetadata``)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):  # a string of 200,000 nested brackets is no rank list
            return ()
    if not isinstance(value, list):
        return ()
    return tuple(int(x) for x in value if isinstance(x, int) and not isinstance(x, bool))


def process_groups(pg_config: Sequence[Mapping[str, Any]], rank: int | None) -> tuple[dict[str, Group], Group]:
    """The rank's process groups by name, and the group of the collectives its trace does not name: its only
    group of two or more ranks, ``default`` when the trace lists none, else an ambiguous group. Groups of one
    rank are left out of that choice: they have no counterpart, so nothing of theirs is ever matched."""
    known: dict[str, Group] = {}
    for pg in pg_config:
        if pg.get("pg_name") is None:
            continue
        ranks = _ranks_of(pg.get("ranks"))
        size = pg.get("pg_size")
        size = size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else (len(ranks) or None)
        known[str(pg["pg_name"])] = Group(str(pg["pg_name"]), ranks, size)
    mine = sorted((g for g in known.values() if (rank is None or not g.ranks or rank in g.ranks)
                   and (g.size is None or g.size > 1)), key=lambda g: g.name)
    if not mine:
        return known, Group(DEFAULT_GROUP)
    if len(mine) == 1:
        return known, mine[0]
    name = "|".join(g.name for g in mine)
    if mine[0].ranks and all(g.ranks == mine[0].ranks for g in mine):
        # groups of the same members (a gloo run plus dist.new_group(backend="gloo") over all ranks): whichever ran
        # it, the same ranks took part, so the collective is matched and aligns the clocks as in one group
        return known, Group(name, mine[0].ranks, mine[0].size)
    return known, Group(name, candidates=tuple((g.name, g.ranks, g.size) for g in mine))


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
    known, unnamed = process_groups(rt.pg_config, rt.rank)
    kind: list[str] = []
    group: list[Group] = []
    size: list[tuple[Any, ...] | None] = []
    seq: list[int | None] = []
    peer: list[int | None] = []
    cid: list[str | None] = []
    for r in k_rows.tolist():
        j = args_of_row.get(r)
        if j is None:
            j = ext_of_pc.get(int(rt.external_id[r]))
        a = {f: (x.coll[f][j] if j is not None else None) for f in x.coll}
        k = _kind(a["collective"]) or C.collective_kind(rt.names[rt.name_id[r]]) or "other"
        kind.append(k)
        pg = a["pg_name"]
        group.append((known.get(pg) or Group(pg)) if pg is not None else
                     (Group(LOCAL_GROUP) if len(kernel_devices) > 1 else unnamed))
        n_in, n_out = a["in_nelems"], a["out_nelems"]
        size.append((n_in, n_out, a["dtype"]) if n_in is not None and n_out is not None else None)
        seq.append(a["seq"])
        cid.append(a["comms_id"])
        peer.append(a["dst_rank"] if k == "send" else a["src_rank"] if k == "recv" else None)
    launch_ts = np.where(launcher[k_sel] >= 0, rt.ts[np.maximum(launcher[k_sel], 0)], rt.ts[k_rows])
    # gloo: the backend's spans on its runloop threads (host user annotations named gloo:*).
    g_rows = np.flatnonzero((hcls == C.C_COLLECTIVE) & (rt.kind == K_USER_ANN))
    g_rows = np.array([r for r in g_rows.tolist() if rt.names[rt.name_id[r]].startswith("gloo:")], dtype=np.int64)
    g_rows = g_rows[np.argsort(rt.ts[g_rows], kind="stable")]
    kind += _gloo_kinds(rt, hcls, g_rows)
    n_g = len(g_rows)
    group += [unnamed] * n_g
    size += [None] * n_g
    seq += [None] * n_g
    peer += [None] * n_g
    cid += [None] * n_g
    start = np.concatenate([rt.ts[k_rows], rt.ts[g_rows]])
    end = np.concatenate([rt.ts[k_rows] + rt.dur[k_rows], rt.ts[g_rows] + rt.dur[g_rows]])
    issued = np.concatenate([launch_ts, rt.ts[g_rows]])
    return Executions(
        start=start, end=end, device=np.concatenate([rt.device[k_rows], np.full(len(g_rows), -1, np.int32)]),
        kind=kind, group=group, size=size, seq=seq, step=_step_of(issued, steps),
        is_kernel=np.concatenate([np.ones(len(k_rows), bool), np.zeros(len(g_rows), bool)]),
        tid=np.concatenate([np.full(len(k_rows), -1, np.int32), rt.tid[g_rows]]), peer=peer, comms_id=cid,
    )


def _kind(collective: str | None) -> str | None:
    """The kind a ``Collective name`` arg names; ``all_to_all_single`` (ProcessGroupNCCL's ``alltoall_base``) is an
    all_to_all whatever its splits."""
    if collective is not None and collective.replace("_", "").lower().startswith("alltoall"):
        return "all_to_all"
    return C.collective_kind(collective)


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
