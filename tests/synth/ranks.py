"""Several processes (ranks) stepping together through their collectives, for the DDP and FSDP builders.

Each rank's step is a generator that runs its host code and yields a ``Launch`` at every collective; the
driver gathers one launch per rank (every rank issues its group's collectives in the same order, which NCCL
requires), places the collective with ``streams.collective`` and resumes the ranks. Every rank's clock can be
off by a constant (``clock_shift_us``), as another host's clock would be.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from tests.synth.kineto import Op, RankTrace
from tests.synth.streams import Member, Placed, Streams, collective, item, launching_op

__all__ = ["NCCL_STREAM", "Launch", "RankStep", "comm_ops", "item", "launching_op", "run_steps"]

NCCL_STREAM = 21


@dataclass(frozen=True)
class Launch:
    """What a rank yields at a collective: its kernel launch, and the collective's name, kind and transfer."""

    tid: int
    at: float
    parent: Op
    stream: int
    kernel: str
    kind: str
    transfer_us: float
    extra: dict[str, Any]


RankStep = Generator[Launch, list[Placed], float]


def run_steps(streams: list[Streams], step: Callable[[Streams, int, float, int], RankStep],
              numbers: tuple[int, ...], t0: float) -> dict[int, list[tuple[int, float, float]]]:
    """Run ``step(streams, number, start, k)`` on every rank for each step number; returns each rank's steps."""
    out: dict[int, list[tuple[int, float, float]]] = {st.tr.rank: [] for st in streams}
    t = t0
    for k, number in enumerate(numbers):
        gens = [step(st, number, t, k) for st in streams]
        pending: list[Launch | None] = [next(g) for g in gens]
        ends: dict[int, float] = {}
        while any(x is not None for x in pending):
            launches = [x for x in pending if x is not None]
            assert len(launches) == len(gens), "ranks disagree on the collectives of a step"
            first = launches[0]
            placed = collective([Member(st, la.tid, la.at, la.parent, st.tr.rank, la.stream, f"rank {st.tr.rank}")
                                 for st, la in zip(streams, launches, strict=True)],
                                first.kernel, first.kind, first.transfer_us, "comm", first.extra)
            nxt: list[Launch | None] = []
            for st, g, p in zip(streams, gens, placed, strict=True):
                try:
                    nxt.append(g.send([p]))
                except StopIteration as stop:
                    ends[st.tr.rank] = stop.value
                    nxt.append(None)
            pending = nxt
        for st in streams:
            out[st.tr.rank].append((number, t, ends[st.tr.rank]))
        t = max(ends.values()) + 20.0
    return out


def comm_ops(tr: RankTrace, tid: int, c10d: str, coll_name: str, annotation: str, at: float, n_in: int, n_out: int,
             ranks: int) -> tuple[Op, dict[str, Any]]:
    """``c10d::<op>`` > ``record_param_comms`` > ``nccl:<name>`` (30 µs of host time from ``at``), as the NCCL
    process group records them (torch/csrc/distributed/c10d/ProcessGroupNCCL.cpp, ``RECORD_PARAM_COMMS``);
    returns the annotation the kernel is launched in and the args libkineto copies onto that kernel."""
    group = str(list(range(ranks)))
    tr.op(tid, c10d, at, 30.0)
    tr.op(tid, "record_param_comms", at + 2.0, 26.0, args={
        "Collective name": coll_name, "Process Group Description": "default_pg", "dtype": "Float", "Rank": tr.rank,
        "Out msg nelems": n_out, "Process Group Name": "0", "Global rank stride": 1, "Out split size": "[]",
        "In split size": "[]", "Process Group Ranks": group, "Group size": ranks, "Global rank start": 0,
        "In msg nelems": n_in})
    ann = tr.annotate(tid, annotation, at + 5.0, 20.0)
    return ann, {"Collective name": coll_name, "In msg nelems": n_in, "Out msg nelems": n_out, "Group size": ranks,
                 "dtype": "Float", "In split size": "[]", "Out split size": "[]", "Process Group Name": "0",
                 "Process Group Description": "default_pg", "Process Group Ranks": group}
