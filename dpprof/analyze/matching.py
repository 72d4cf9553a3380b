"""Collectives matched across their participants (parent side): clocks, last arrival, waiting vs transfer.

Input: each rank's collective executions (``dpprof.analyze.collectives``: kernel or gloo-span start/end on the
rank's trace clock, with a matching key). Participants of one collective are the ranks of its process group, or,
for DP's in-process communicators (group ``local``), the GPUs of one trace.

0. **Instances.** Executions with the same key are one collective, checked against its process group; a send
   pairs with its recv; a collective whose group the traces do not name, on ranks of several groups, is matched
   among ranks of the same groups and is no clock signal (``dpprof.analyze.instances``, ``Matched.ambiguous``).
1. **Clocks.** A collective's kernels end together (each spins until the last participant has joined and the
   transfer is done), so the ranks' clocks are aligned from the matched collectives themselves: rank r's offset
   to the reference rank (the lowest) is the median of (reference end - r's end) over the collectives both took
   part in (chained through other ranks when they share none), kept inside the causal bounds (no participant
   ends a collective before the last one started); the residual is what is left of those differences after
   alignment (point-to-point pairs are left out: a send may end before its recv starts). When the ends spread
   by more than ``ENDS_AGREE_US`` (gloo on CPU ranks: each rank's span ends when its own part is done) they are
   no clock signal, and the trace clocks (``baseTimeNanoseconds``) stay, moved only as far as causality
   requires. Ranks that share no collective keep ``baseTimeNanoseconds``.
2. **Last arrival.** On the aligned clock, the participant whose execution started last is the one everyone
   waited for. Each participant's execution is *waiting* from its own start to that instant, and *transfer*
   after it. Starts closer than ``TIE_US`` are a tie: nobody waited. A recv waits until its send started; a
   send's time counts as transfer (a small send can complete into the connection's buffers before its recv is
   posted; a large one's waiting for its recv is not told apart).
3. **Stragglers.** Per participant: how often it arrived last, by how much, and the waiting it caused (the
   others' waiting at the collectives it arrived last at). The summary weighs it by the waiting it exposed:
   the others' ``peer_wait`` on it (their step rows' ``peer_wait_on_us``), not the whole waiting inside the
   kernels, which compute on other streams may hide. It names the participant that caused most of the waiting
   when that is a clear majority and its exposed waiting worth a share of the step: a slow rank (DDP, FSDP...),
   a slow GPU inside DP, DP's output device (late because of its serial data-path work), or none. Counting how
   often a participant is last would not do: DP's output device arrives last at every broadcast by a few µs (it
   flattens first) while a slow GPU is last only at the reduce, by milliseconds.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dpprof.analyze.collectives import LOCAL_GROUP
from dpprof.analyze.instances import Instance, instances
from dpprof.analyze.model import ClockOffset, CollectiveSkew, StepBreakdown, Straggler

#: Starts closer than this (µs) are a tie: nobody waited.
TIE_US = 0.001
#: A straggler caused at least this share of all the waiting at collectives ...
STRAGGLER_SHARE = 0.6
#: ... and makes the others wait, with nothing else to run, at least this share of their steps (%).
STRAGGLER_WAIT_PCT = 2.0


@dataclass
class RankExecutions:
    """What the parent needs of one rank's executions."""

    start: np.ndarray  # µs, trace clock
    end: np.ndarray
    device: np.ndarray
    kind: list[str]
    keys: list[tuple[Any, ...]]
    step: list[int | None]
    base_ns: int  # baseTimeNanoseconds (0 when absent): epoch ns = base_ns + 1000 × trace µs


@dataclass
class Matched:
    """Per rank, per execution uid: when its waiting ends (trace clock; NaN when unmatched) and for whom."""

    wait_end: dict[int, np.ndarray]
    waited_for: dict[int, list[str]]
    collectives: list[CollectiveSkew]
    stragglers: list[Straggler]
    offsets: list[ClockOffset]
    unmatched: dict[int, int]  # rank -> executions without a counterpart
    #: rank -> (executions in a group its trace does not name, the candidate groups joined by "|")
    ambiguous: dict[int, tuple[int, str]] = field(default_factory=dict)


def _label(group: str, rank: int, device: int) -> str:
    return f"GPU {device}" if group == LOCAL_GROUP else f"rank {rank}"


def match(per_rank: Mapping[int, RankExecutions]) -> Matched:
    """Match every rank's executions into collectives and split them into waiting and transfer."""
    # Epoch µs (~1.8e15) has a 0.25 µs resolution in a double: work relative to the earliest base instead.
    base0 = min((ex.base_ns for ex in per_rank.values()), default=0)
    base = {r: (ex.base_ns - base0) / 1000.0 for r, ex in per_rank.items()}
    found, ambiguous = instances(per_rank)
    offsets = _align(per_rank, base, found)
    off = {o.rank: o.offset_us for o in offsets}
    wait_end = {r: np.full(len(ex.start), np.nan) for r, ex in per_rank.items()}
    waited_for: dict[int, list[str]] = {r: [""] * len(ex.start) for r, ex in per_rank.items()}
    skews: list[tuple[float, CollectiveSkew]] = []
    for inst in found:
        members = inst.members
        ex0 = per_rank[members[0][0]]
        aligned = {(r, u): float(per_rank[r].start[u]) + base[r] + off.get(r, 0.0) for r, u in members}
        labels = {(r, u): _label(inst.label, r, int(per_rank[r].device[u])) for r, u in members}
        if inst.sender is None:
            last = max(sorted(members), key=lambda m: aligned[m])
            first_t = min(aligned.values())
        else:  # only the recv waits, until its send started
            last = inst.sender
            first_t = min(aligned[last], *(aligned[m] for m in members if m != last))
        skew = aligned[last] - first_t
        tie = skew < TIE_US
        waits: dict[str, float] = {}
        transfers = []
        for r, u in members:
            ex = per_rank[r]
            until = aligned[(r, u)] if inst.sender == (r, u) else aligned[last]
            t = float(np.clip(until - base[r] - off.get(r, 0.0), ex.start[u], ex.end[u]))
            wait_end[r][u] = ex.start[u] if tie else t
            waited_for[r][u] = "" if tie or (r, u) == last else labels[last]
            waits[labels[(r, u)]] = 0.0 if tie else t - float(ex.start[u])
            transfers.append(float(ex.end[u]) - (float(ex.start[u]) if tie else t))
        ranks = tuple(sorted({r for r, _ in members}))
        skews.append((first_t, CollectiveSkew(
            group=inst.label, index=inst.index,
            name="send_recv" if inst.sender is not None else ex0.kind[members[0][1]],
            start_skew_us=float(skew), last_rank=-1 if tie else last[0], ranks=ranks, last="" if tie else labels[last],
            last_device=-1 if tie else int(per_rank[last[0]].device[last[1]]),
            participants=tuple(sorted(labels.values())), step=ex0.step[members[0][1]],
            transfer_us=statistics.median(transfers), wait_us=waits)))
    skews.sort(key=lambda x: (x[0], x[1].group, x[1].name, x[1].index))
    collectives = [s for _, s in skews]
    unmatched = {r: int(np.count_nonzero(np.isnan(w))) for r, w in wait_end.items()}
    return Matched(wait_end, waited_for, collectives, stragglers(collectives), offsets,
                   {r: n for r, n in unmatched.items() if n}, ambiguous)


#: Collective ends that agree within this (median, µs) after alignment are a clock signal (NCCL kernels end within
#: a few µs of each other); gloo's spans on CPU ranks end when each rank's part is done, spread by far more.
ENDS_AGREE_US = 50.0


@dataclass
class _Pair:
    """What the collectives two ranks share say about their clocks (b's offset minus a's, µs)."""

    ends: list[float]  # end_a - end_b per shared collective: b's offset if ends were simultaneous
    lo: float = -np.inf  # causality: nobody finishes a collective before its last participant started
    hi: float = np.inf

    def choose(self) -> tuple[float, float, float, str]:
        """(offset of b relative to a, median residual, max residual, source)."""
        med = statistics.median(self.ends)
        res = [abs(d - med) for d in self.ends]
        if statistics.median(res) <= ENDS_AGREE_US:
            delta, how = float(np.clip(med, self.lo, self.hi)), "collective ends"
        else:  # the ends spread too much to tell a clock offset: keep the trace clocks unless they break causality
            delta = float(np.clip(0.0, self.lo, self.hi))
            how = ("baseTimeNanoseconds (collective ends spread too much to align on"
                   + (", shifted to keep every collective causal)" if delta else ")"))
        res = [abs(d - delta) for d in self.ends]
        return delta, statistics.median(res), max(res), how


def _align(per_rank: Mapping[int, RankExecutions], base: Mapping[int, float],
           insts: Sequence[Instance]) -> list[ClockOffset]:
    """Each rank's clock offset to the reference rank, from the collectives they share (module docstring)."""
    ranks = sorted(per_rank)
    if not ranks:
        return []
    pairs: dict[tuple[int, int], _Pair] = {}
    guessed: set[int] = set()  # ranks that share only collectives of a group the traces do not name
    for inst in insts:
        members = inst.members
        if not inst.aligns:
            if inst.ambiguous and len({r for r, _ in members}) > 1:
                guessed.update(r for r, _ in members)
            continue
        ends: dict[int, float] = {}
        starts: dict[int, float] = {}
        for r, u in members:
            ends.setdefault(r, float(per_rank[r].end[u]) + base[r])
            starts.setdefault(r, float(per_rank[r].start[u]) + base[r])
        for a in ends:
            for b in ends:
                if a != b:
                    p = pairs.setdefault((a, b), _Pair([]))
                    p.ends.append(ends[a] - ends[b])
                    # b's start, moved by delta, is before a's end, and a's start before b's end.
                    p.hi = min(p.hi, ends[a] - starts[b])
                    p.lo = max(p.lo, starts[a] - ends[b])
    ref = ranks[0]
    offset: dict[int, float] = {ref: 0.0}
    found: dict[int, tuple[int, float, float, str]] = {}
    frontier = [ref]
    while frontier:  # breadth first: ranks that share collectives with an aligned rank
        nxt = []
        for a in frontier:
            for b in ranks:
                if b not in offset and (a, b) in pairs:
                    delta, res, worst, how = pairs[(a, b)].choose()
                    offset[b] = offset[a] + delta
                    found[b] = (a, res, worst, how + (f" (through rank {a})" if a != ref else ""))
                    nxt.append(b)
        frontier = nxt
    out = []
    for r in ranks:
        if r == ref:
            out.append(ClockOffset(r, 0.0, None, None, 0, "reference"))
        elif r not in offset:
            out.append(ClockOffset(r, 0.0, None, None, 0, "baseTimeNanoseconds (no shared collective)" if r not in
                                   guessed else "baseTimeNanoseconds (its collectives name no process group and it "
                                   "belongs to several: not used to align)"))
        else:
            a, res, worst, how = found[r]
            out.append(ClockOffset(r, offset[r], res, worst, len(pairs[(a, r)].ends), how))
    return out


def stragglers(collectives: Sequence[CollectiveSkew]) -> list[Straggler]:
    """Per participant: how often it was last, out of how many matched collectives, mean skew when it was,
    and the waiting it caused (the others' waits at those collectives)."""
    seen: dict[str, int] = defaultdict(int)
    last: dict[str, list[float]] = defaultdict(list)
    caused: dict[str, float] = defaultdict(float)
    where: dict[str, tuple[int, int]] = {}
    for c in collectives:
        for p in c.participants:
            seen[p] += 1
            if p.startswith("GPU") and len(c.ranks) == 1:  # DP: the GPUs of one rank's trace
                where.setdefault(p, (c.ranks[0], _parse(p)[1]))
        if c.last:
            last[c.last].append(c.start_skew_us)
            caused[c.last] += sum(w for p, w in c.wait_us.items() if p != c.last)
            where[c.last] = (c.last_rank, c.last_device)
    out = []
    for p in sorted(seen, key=_participant_order):
        rank, dev = where.get(p, _parse(p))
        out.append(Straggler(rank=rank, times_last=len(last[p]), collectives=seen[p],
                             mean_lateness_us=float(sum(last[p]) / len(last[p])) if last[p] else 0.0,
                             participant=p, device=dev, caused_wait_us=caused[p]))
    return out


def _parse(label: str) -> tuple[int, int]:
    what, _, n = label.partition(" ")
    return (int(n), -1) if what == "rank" else (-1, int(n))


def _participant_order(label: str) -> tuple[str, int]:
    what, _, n = label.partition(" ")
    return what, int(n) if n.isdigit() else -1


#: DP's output device counts as late through DP's own work (not a slow device) while its replica's compute, without
#: the serial work only it does, is within this % of the other GPUs' mean.
OWN_COMPUTE_SLACK_PCT = 10.0


def _output_device_slower_pct(rows: Sequence[StepBreakdown], dev: int | None) -> float | None:
    """How much longer (%) DP's output device computes its own replica than the other GPUs theirs (means over the
    steps; autotuning kernels and its serial work left out), or None without both."""
    own = [x.categories_us.get("compute", 0.0) - x.autotune_us - (x.gpu0_serial_us or 0.0)
           for x in rows if x.device == dev]
    rest = [x.categories_us.get("compute", 0.0) - x.autotune_us for x in rows if x.device >= 0 and x.device != dev]
    if dev is None or not own or not rest or sum(rest) <= 0:
        return None
    return 100.0 * ((sum(own) / len(own)) / (sum(rest) / len(rest)) - 1.0)


def summary(strag: Sequence[Straggler], rows: Sequence[StepBreakdown], collectives: Sequence[CollectiveSkew],
            output_device: int | None = None) -> dict[str, Any]:
    """Who everyone waited for: a slow rank, a slow GPU inside DP, DP's output device (late because of its serial
    data-path work, not a slow device), or none (thresholds above), from the stragglers and the step rows.

    The participant that caused most of the waiting inside collectives is weighed by the waiting it *exposed*:
    ``caused_wait_us_per_step`` is the others' ``peer_wait`` on it, µs per step and per row of the participants it
    shares collectives with (ranks, or under DP the other GPUs of the trace), ``caused_wait_pct_of_step`` that as
    % of their steps; the thresholds apply to these. ``in_collective_wait_us_per_step`` / ``_pct_of_step``: all
    their waiting for it inside the collectives' kernels or spans, including what compute on other streams or
    threads hid.
    """
    n_matched = len(collectives)
    if n_matched == 0:
        return {"verdict": "not_applicable", "participant": None,
                "text": "no collective was matched across participants (one rank, or no communication)"}
    best = max(strag, key=lambda s: (s.caused_wait_us, s.times_last), default=None)
    total = sum(s.caused_wait_us for s in strag)
    if best is None or not best.times_last or total <= 0:
        return {"verdict": "none", "participant": None, "text": f"{n_matched} collectives, all started together"}
    share = best.caused_wait_us / total
    who = best.participant
    peers = {p for c in collectives if who in c.participants for p in c.participants} - {who}
    others = [x for x in rows if (f"rank {x.rank}" in peers if who.startswith("rank")
                                  else x.rank == best.rank and f"GPU {x.device}" in peers)]
    exposed = sum(x.peer_wait_on_us.get(who, 0.0) for x in others)
    per_step = exposed / len(others) if others else 0.0
    others_us = sum(x.duration_us for x in others)
    pct = 100 * exposed / others_us if others_us > 0 else 0.0
    # All the waiting inside its collectives, per step and per other participant (they wait side by side).
    n_ranks = len({x.rank for x in rows})
    steps_per_rank = len({(x.rank, x.step) for x in rows}) / max(n_ranks, 1)
    step_us = sum(x.duration_us for x in rows) / len(rows) if rows else 0.0
    inside = best.caused_wait_us / max(steps_per_rank, 1.0) / max(len(peers), 1)
    inside_pct = 100 * inside / step_us if step_us > 0 else 0.0
    ev = {"participant": who, "times_last": best.times_last, "collectives": best.collectives,
          "share_of_waiting": round(share, 3), "caused_wait_us_per_step": round(per_step, 3),
          "caused_wait_pct_of_step": round(pct, 2), "in_collective_wait_us_per_step": round(inside, 3),
          "in_collective_wait_pct_of_step": round(inside_pct, 2), "mean_lateness_us": round(best.mean_lateness_us, 3)}
    words = (f"{who} started last at {best.times_last} of {best.collectives} collectives "
             f"({best.mean_lateness_us:.1f} µs late on average), causing {100 * share:.0f} % of the waiting at "
             f"collectives: each of the others waited {per_step:.1f} µs per step for it with nothing else to run "
             f"({pct:.1f} % of the step; {inside:.1f} µs per step inside the collectives, hidden by compute or not)")
    if share >= STRAGGLER_SHARE and pct >= STRAGGLER_WAIT_PCT:
        slower = _output_device_slower_pct(rows, output_device) if who == f"GPU {output_device}" else None
        if slower is not None:
            ev["output_device_compute_over_others_pct"] = round(slower, 1)
        if slower is not None and slower <= OWN_COMPUTE_SLACK_PCT:
            return {"verdict": "output_device_late", **ev, "text": f"{words}: DP's output device reaches the "
                    "collectives last because it runs DP's serial work (flattening, scatter copies, loss, "
                    "optimizer) before them, a data-path cost rather than a slow device (its own replica computes "
                    f"within {OWN_COMPUTE_SLACK_PCT:.0f} % of the others': {slower:+.1f} %)"}
        if slower is not None:
            return {"verdict": "slow_gpu", **ev, "text": f"{words}: DP's output device is itself slow: its own "
                    f"replica's compute is {slower:+.1f} % against the other GPUs' (beyond "
                    f"{OWN_COMPUTE_SLACK_PCT:.0f} %), so its lateness is the device's, not only DP's serial work"}
        verdict = "slow_gpu" if who.startswith("GPU") else "slow_rank"
        return {"verdict": verdict, **ev, "text": words}
    return {"verdict": "none", **ev, "text": f"no straggler: {words} (a straggler causes ≥ "
            f"{STRAGGLER_SHARE:.0%} of the waiting and exposes ≥ {STRAGGLER_WAIT_PCT:.0f} % of a step of waiting)"}
