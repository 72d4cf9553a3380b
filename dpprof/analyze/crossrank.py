"""Collectives matched across ranks: start skew, who everyone waited for, and a straggler summary.

Each rank contributes the host spans of its collectives (``nccl:*``, ``gloo:*``, ``rccl:*`` annotations;
gloo runs them on ``pt_gloo_runloop`` threads and emits no ``record_param_comms``), as
(process group, collective name, start in epoch µs). The k-th collective of a given name in a given
group on every rank is the same collective: matching is by order, which is what NCCL and gloo
themselves require (collectives are issued in the same order on every rank of a group). Ranks are put
on one clock with ``baseTimeNanoseconds`` (epoch ns = base + ts * 1000).

The rank that started a collective last is the one everyone waited for; its lateness is the skew
(latest start - earliest start). When every rank started at the same instant (skew under 1 ns) nobody
waited: ``last_rank`` is -1 and no rank is counted as last.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

from dpprof.analyze.model import CollectiveSkew, Straggler

#: (group, name, start epoch µs)
Collective = tuple[str, str, float]
#: Starts closer than this (µs) are a tie: nobody waited.
TIE_US = 0.001


def match(per_rank: Mapping[int, Sequence[Collective]]) -> tuple[list[CollectiveSkew], list[Straggler]]:
    """Match collectives across ranks (only those seen on at least two ranks)."""
    queues: dict[tuple[str, str], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for rank, colls in per_rank.items():
        for group, name, start in sorted(colls, key=lambda c: c[2]):
            queues[(group, name)][rank].append(start)
    skews: list[tuple[float, CollectiveSkew]] = []
    for (group, name), by_rank in queues.items():
        if len(by_rank) < 2:
            continue
        n = min(len(v) for v in by_rank.values())
        for k in range(n):
            starts = {r: v[k] for r, v in by_rank.items()}
            last = max(sorted(starts), key=lambda r: starts[r])
            first_t = min(starts.values())
            skew = starts[last] - first_t
            if skew < TIE_US:
                last = -1
            skews.append((first_t, CollectiveSkew(group=group, index=k, name=name,
                                                  start_skew_us=skew, last_rank=last,
                                                  ranks=tuple(sorted(starts)))))
    skews.sort(key=lambda x: (x[0], x[1].group, x[1].name, x[1].index))
    collectives = [s for _, s in skews]
    return collectives, stragglers(collectives)


def stragglers(collectives: Sequence[CollectiveSkew]) -> list[Straggler]:
    """Per rank: how often it was last, out of how many matched collectives, mean skew when it was."""
    seen: dict[int, int] = defaultdict(int)
    last: dict[int, list[float]] = defaultdict(list)
    for c in collectives:
        for r in c.ranks:
            seen[r] += 1
        if c.last_rank >= 0:
            last[c.last_rank].append(c.start_skew_us)
    return [Straggler(rank=r, times_last=len(last[r]), collectives=seen[r],
                      mean_lateness_us=(sum(last[r]) / len(last[r])) if last[r] else 0.0)
            for r in sorted(seen)]
