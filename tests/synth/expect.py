"""Expected figures of a synthetic run, summed from what the builders placed (``tests.synth.streams.Placed``).

Nothing here re-implements dpprof's attribution: the figures are sums of durations and waits the construction
chose, and, where a collective kernel runs beside compute on another stream (DDP, FSDP), the part of its
waiting/transfer that no compute kernel covers (plain interval arithmetic: that is what "exposed" means).

Per (rank, device, step), in µs:

* ``compute_us``: compute kernels; ``memcpy_us``: host<->device copies;
* ``dp_transfer_us[phase]``: DP data-path work (copies, flattens, and collective kernels after their last
  participant started); ``collective_wait_us``: collective kernels' time before the last participant started;
* ``comm_exposed_us`` / ``wait_exposed_us``: a process group's collective kernels, transfer and waiting, not
  covered by compute; ``comm_overlapped_us``: their time under compute;
* ``dep_wait_us``: time a stream sat idle on another device's event (DP's copies), by the device whose event it
  waited on directly (``dep_waits`` of them);
* ``peer_wait_us``: all waiting (DP collectives + exposed process-group waiting + stream waits on peers), and
  ``peer_wait_on_us`` by whom;
* ``busy_us``: the union of the device's activities; ``collective_exposed_us``: the union of the process group's
  collective kernels not covered by compute (when they overlap each other, the sums above count an instant twice).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from tests.synth.streams import Placed

Interval = tuple[float, float]
DP_ROLES = ("dp_scatter", "dp_broadcast", "dp_gather", "dp_reduce")


def union(intervals: Iterable[Interval]) -> list[Interval]:
    out: list[Interval] = []
    for s, e in sorted(i for i in intervals if i[1] > i[0]):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def length(intervals: Iterable[Interval]) -> float:
    return sum(e - s for s, e in union(intervals))


def minus(a: Interval, cover: list[Interval]) -> float:
    """Length of ``a`` not covered by the (sorted, disjoint) ``cover``."""
    s, e = a
    left = e - s
    for cs, ce in cover:
        left -= max(0.0, min(e, ce) - max(s, cs))
    return left


def expected_rows(placed: list[Placed], steps: dict[int, list[tuple[int, float, float]]]
                  ) -> dict[tuple[int, int, int], dict[str, Any]]:
    """The figures of every (rank, device, step) row with activity, from the placed activities."""
    groups: dict[tuple[int, int, int], list[Placed]] = defaultdict(list)
    for p in placed:
        number = next((n for n, s0, s1 in steps[p.rank] if s0 <= p.span.start < s1), None)
        assert number is not None, f"activity outside every step: {p.span}"
        groups[(p.rank, p.device, number)].append(p)
    return {key: _row(ps) for key, ps in sorted(groups.items())}


def _row(ps: list[Placed]) -> dict[str, Any]:
    hide = union((p.span.start, p.span.end) for p in ps if p.role == "compute" or p.role in DP_ROLES)
    comp = union((p.span.start, p.span.end) for p in ps if p.role == "compute")
    on: dict[str, float] = defaultdict(float)
    dp: dict[str, float] = dict.fromkeys(DP_ROLES, 0.0)
    row = {"compute_us": 0.0, "memcpy_us": 0.0, "collective_wait_us": 0.0, "comm_exposed_us": 0.0,
           "wait_exposed_us": 0.0, "comm_overlapped_us": 0.0, "dep_wait_us": 0.0, "dep_waits": 0}
    kinds: dict[str, float] = defaultdict(float)
    for p in ps:
        dur = p.span.end - p.span.start
        if p.dep_wait_us > 0:
            row["dep_wait_us"] += p.dep_wait_us
            row["dep_waits"] += 1
            on[f"GPU {p.dep_on}"] += p.dep_wait_us
        if p.role == "compute":
            row["compute_us"] += dur
        elif p.role == "memcpy":
            row["memcpy_us"] += dur
        elif p.role in DP_ROLES:
            dp[p.role] += dur - p.wait_us
            row["collective_wait_us"] += p.wait_us
            if p.wait_us > 0:
                on[p.waited_on] += p.wait_us
        elif p.role == "comm":
            mid = p.span.start + p.wait_us
            waited = minus((p.span.start, mid), hide)
            moved = minus((mid, p.span.end), hide)
            row["wait_exposed_us"] += waited
            row["comm_exposed_us"] += moved
            kinds[p.kind] += moved
            row["comm_overlapped_us"] += dur - minus((p.span.start, p.span.end), comp)
            if waited > 0:
                on[p.waited_on] += waited
    row["dp_transfer_us"] = dp
    row["comm_by_kind_us"] = dict(kinds)
    row["peer_wait_us"] = row["collective_wait_us"] + row["wait_exposed_us"] + row["dep_wait_us"]
    row["peer_wait_on_us"] = dict(on)
    row["busy_us"] = length((p.span.start, p.span.end) for p in ps)
    # Collective kernels that overlap each other (FSDP's all-gather and reduce-scatter streams): each instant
    # counts once, as the union of their time that no compute covers.
    comm_union = union((p.span.start, p.span.end) for p in ps if p.role == "comm")
    row["collective_exposed_us"] = sum(minus(iv, hide) for iv in comm_union)
    return row
