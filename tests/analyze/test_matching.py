"""Collectives matched across participants: clock alignment, last arrival, waiting vs transfer, stragglers.

Hand-built executions with known true times: each collective's kernels end together on the true clock (as
NCCL's do), a rank's trace clock is the true clock shifted by an injected offset, and every expectation below
is computed from what was injected.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from dpprof.analyze.attribution import CAT, Pieces
from dpprof.analyze.collectives import Executions, Group, process_groups
from dpprof.analyze.combine import split_waiting
from dpprof.analyze.matching import RankExecutions, match, summary
from dpprof.analyze.model import CATEGORIES, StepBreakdown

BASE_NS = 1_790_857_026_000_000_000


def execs(rows: list[tuple[float, float, int, str, int]], group: str = "0", shift_us: float = 0.0,
          base_ns: int = BASE_NS) -> RankExecutions:
    """rows: (true start, true end, device, kind, step); the trace clock reads true time + ``shift_us``."""
    keys, seen = [], {}
    for _s, _e, dev, kind, step in rows:
        k = seen.get((kind, step, dev), 0)
        seen[(kind, step, dev)] = k + 1
        keys.append((group, kind, None, step, k))
    return RankExecutions(
        start=np.array([r[0] + shift_us for r in rows]), end=np.array([r[1] + shift_us for r in rows]),
        device=np.array([r[2] for r in rows], dtype=np.int32), kind=[r[3] for r in rows], keys=keys,
        step=[r[4] for r in rows], base_ns=base_ns)


def test_clock_offset_recovered_and_waiting_split_at_the_last_start() -> None:
    # Two all_reduces, ending together on the true clock at 1000 and 3000. Rank 1 starts them 300 and 50 µs late.
    r0 = execs([(100.0, 1000.0, 0, "all_reduce", 3), (2500.0, 3000.0, 0, "all_reduce", 3)])
    r1 = execs([(400.0, 1000.0, 1, "all_reduce", 3), (2550.0, 3000.0, 1, "all_reduce", 3)], shift_us=-250.0)
    m = match({0: r0, 1: r1})
    (o0, o1) = m.offsets
    assert o0.source == "reference" and o1.offset_us == pytest.approx(250.0) and o1.residual_us == pytest.approx(0.0)
    # Rank 0 waits from its start to rank 1's start; rank 1 does not wait.
    assert m.wait_end[0].tolist() == pytest.approx([400.0, 2550.0])
    assert m.wait_end[1].tolist() == pytest.approx([400.0 - 250.0, 2550.0 - 250.0])  # its own start: no wait
    assert m.waited_for[0] == ["rank 1", "rank 1"]
    first, second = m.collectives
    assert (first.last, first.start_skew_us, first.wait_us["rank 0"]) == ("rank 1", pytest.approx(300.0),
                                                                         pytest.approx(300.0))
    assert first.transfer_us == pytest.approx(600.0) and second.transfer_us == pytest.approx(450.0)
    (s0, s1) = m.stragglers
    assert (s1.participant, s1.times_last, s1.collectives, s1.caused_wait_us) == ("rank 1", 2, 2, pytest.approx(350.0))
    assert s0.times_last == 0
    # Rank 0's step: 3000 µs, of which the 350 µs of waiting were exposed (nothing else ran).
    rows = [_row({"peer_wait": 350.0, "compute": 2650.0}, step=3, on={"rank 1": 350.0}),
            _row({"compute": 3000.0}, step=3, rank=1)]
    sm = summary(m.stragglers, rows, m.collectives)
    assert sm["verdict"] == "slow_rank" and sm["participant"] == "rank 1"
    assert sm["caused_wait_pct_of_step"] == pytest.approx(100 * 350 / 3000, abs=0.01)
    assert sm["in_collective_wait_us_per_step"] == pytest.approx(350.0)


def test_tie_means_nobody_waited_and_small_lateness_is_no_straggler() -> None:
    r0 = execs([(100.0, 200.0, 0, "all_reduce", 1), (300.0, 400.0, 0, "all_reduce", 1)])
    r1 = execs([(100.0, 200.0, 1, "all_reduce", 1), (301.0, 400.0, 1, "all_reduce", 1)])
    m = match({0: r0, 1: r1})
    tie, late = m.collectives
    assert tie.last == "" and tie.last_rank == -1 and tie.wait_us == {"rank 0": 0.0, "rank 1": 0.0}
    assert late.last == "rank 1" and late.start_skew_us == pytest.approx(1.0)
    rows = [_row({"peer_wait": 1.0, "compute": 9999.0}, on={"rank 1": 1.0}), _row({"compute": 10_000.0}, rank=1)]
    sm = summary(m.stragglers, rows, m.collectives)
    assert sm["verdict"] == "none"  # last once by 1 µs: 0.01 % of a step


def test_dp_local_collective_across_the_gpus_of_one_trace() -> None:
    """DP's reduce: one trace, one kernel per GPU, group ``local``; GPU 2 arrives 700 µs late."""
    rows = [(1000.0, 2000.0, 0, "reduce", 5), (1100.0, 2000.0, 1, "reduce", 5), (1700.0, 2000.0, 2, "reduce", 5)]
    ex = execs(rows, group="local")
    m = match({0: ex})
    (c,) = m.collectives
    assert c.group == "local" and c.last == "GPU 2" and c.last_device == 2 and c.last_rank == 0
    assert c.wait_us == pytest.approx({"GPU 0": 700.0, "GPU 1": 600.0, "GPU 2": 0.0})
    assert m.offsets[0].source == "reference"
    rows = [_row({"peer_wait": w, "dp_reduce": 2000.0 - w}, step=5, device=d, on={"GPU 2": w} if w else None)
            for d, w in ((0, 700.0), (1, 600.0), (2, 0.0))]
    sm = summary(m.stragglers, rows, m.collectives)
    assert sm["verdict"] == "slow_gpu" and sm["participant"] == "GPU 2"
    assert sm["caused_wait_us_per_step"] == pytest.approx(650.0)  # GPU 0 and GPU 1 wait side by side


def test_ranks_aligned_through_a_subgroup_and_unmatched_executions_counted() -> None:
    """Rank 2 shares collectives only with rank 1 (another process group): its clock is chained through rank 1."""
    r0 = execs([(0.0, 100.0, 0, "all_reduce", 1)], group="A")
    r1 = execs([(10.0, 100.0, 0, "all_reduce", 1)], group="A", shift_us=40.0)
    r1b = execs([(200.0, 300.0, 0, "all_gather", 1)], group="B", shift_us=40.0)
    r2 = execs([(250.0, 300.0, 0, "all_gather", 1), (400.0, 500.0, 0, "broadcast", 1)], group="B", shift_us=-75.0)
    both = RankExecutions(np.concatenate([r1.start, r1b.start]), np.concatenate([r1.end, r1b.end]),
                          np.concatenate([r1.device, r1b.device]), r1.kind + r1b.kind, r1.keys + r1b.keys,
                          r1.step + r1b.step, BASE_NS)
    m = match({0: r0, 1: both, 2: r2})
    off = {o.rank: o for o in m.offsets}
    assert off[1].offset_us == pytest.approx(-40.0) and off[2].offset_us == pytest.approx(75.0)
    assert off[2].source == "collective ends (through rank 1)"
    assert m.unmatched == {2: 1}  # the broadcast nobody else took part in
    assert np.isnan(m.wait_end[2][1])


def test_different_bases_do_not_lose_precision() -> None:
    """Epoch µs in a double has a 0.25 µs resolution: the arithmetic must stay relative."""
    r0 = execs([(100.125, 1000.0, 0, "all_reduce", 1)])
    r1 = execs([(100.375, 1000.0, 1, "all_reduce", 1)], shift_us=-1000.0, base_ns=BASE_NS + 1_000_000)
    m = match({0: r0, 1: r1})
    assert m.offsets[1].offset_us == pytest.approx(0.0, abs=1e-6)
    assert m.collectives[0].start_skew_us == pytest.approx(0.25, abs=1e-6)


def _row(cats: dict[str, float], step: int = 1, device: int = 0, rank: int = 0,
         on: dict[str, float] | None = None) -> StepBreakdown:
    full = {c: cats.get(c, 0.0) for c in CATEGORIES}
    return StepBreakdown(rank=rank, device=device, step=step, duration_us=sum(full.values()), categories_us=full,
                         peer_wait_on_us=on or {})


def test_split_moves_only_the_waiting_and_keeps_the_sum() -> None:
    row = _row({"compute": 500.0, "comm": 400.0, "dp_reduce": 300.0, "idle": 100.0})
    pieces = Pieces(step=np.array([1, 1, 1]), device=np.array([0, 0, 0], np.int32), uid=np.array([0, 0, 1]),
                    start=np.array([1000.0, 1200.0, 2000.0]), end=np.array([1100.0, 1500.0, 2300.0]),
                    label=np.array([CAT["comm"], CAT["comm"], CAT["dp_reduce"]], np.int16),
                    waited=np.array([-1, -1, -1]))  # no queued-work wait: inside collectives only
    wait_end = np.array([1250.0, 2100.0])  # uid 0 waits until 1250, uid 1 until 2100
    (out,) = split_waiting([row], pieces, ["all_gather", "reduce"], wait_end, ["rank 3", "GPU 2"])
    c = out.categories_us
    assert c["peer_wait"] == pytest.approx(100.0 + 50.0 + 100.0)
    assert c["comm"] == pytest.approx(400.0 - 150.0) and c["dp_reduce"] == pytest.approx(200.0)
    assert sum(c.values()) == pytest.approx(row.duration_us)
    assert out.peer_wait_on_us == pytest.approx({"GPU 2": 100.0, "rank 3": 150.0})
    assert out.comm_by_kind_us == pytest.approx({"all_gather": 250.0})


# ---- keys built as a worker builds them (Executions.keys) --------------------------------------------------------
def ranked(rows: list[dict[str, Any]], shift_us: float = 0.0) -> RankExecutions:
    """One rank's executions through ``Executions.keys``. Each row: ``start``/``end`` on the true clock, ``kind``,
    and optionally ``group`` (a Group or a name; default "0"), ``size``, ``seq``, ``comms_id``, ``peer``,
    ``step`` (default 1); the trace clock reads true time + ``shift_us``."""
    n = len(rows)
    ex = Executions(
        start=np.array([r["start"] + shift_us for r in rows]), end=np.array([r["end"] + shift_us for r in rows]),
        device=np.zeros(n, np.int32), kind=[r["kind"] for r in rows], group=[r.get("group", "0") for r in rows],
        size=[r.get("size", (10, 10, "Float")) for r in rows], seq=[r.get("seq") for r in rows],
        step=[r.get("step", 1) for r in rows], is_kernel=np.ones(n, bool), tid=np.full(n, -1, np.int32),
        peer=[r.get("peer") for r in rows], comms_id=[r.get("comms_id") for r in rows])
    return RankExecutions(ex.start, ex.end, ex.device, ex.kind, ex.keys(), ex.step, BASE_NS)


W, A, B = Group("0", (0, 1, 2, 3), 4), Group("1", (0, 1), 2), Group("2", (2, 3), 2)


def test_two_nccl_groups_on_one_rank_each_collective_matched_in_its_group() -> None:
    """Ranks 0-3 all-reduce in the world group, then {0,1} and {2,3} each in their own group: same kind, size and
    step, so only the group keeps the subgroups' collectives apart. Clocks shifted per rank; all recovered."""
    shift = (0.0, 40.0, -75.0, 120.0)
    world = (100.0, 300.0, 200.0, 600.0)  # starts; ends together at 1000
    sub = (2000.0, 2100.0, 4500.0, 4200.0)  # {0,1} end at 3000, {2,3} at 5000
    per = {r: ranked([{"start": world[r], "end": 1000.0, "kind": "all_reduce", "group": W},
                      {"start": sub[r], "end": 3000.0 if r < 2 else 5000.0, "kind": "all_reduce",
                       "group": A if r < 2 else B}], shift[r]) for r in range(4)}
    m = match(per)
    assert [(c.group, c.ranks, c.last) for c in m.collectives] == [
        ("0", (0, 1, 2, 3), "rank 3"), ("1", (0, 1), "rank 1"), ("2", (2, 3), "rank 2")]
    assert m.collectives[0].wait_us == pytest.approx({"rank 0": 500.0, "rank 1": 300.0, "rank 2": 400.0,
                                                      "rank 3": 0.0})
    assert m.collectives[1].wait_us["rank 0"] == pytest.approx(100.0)
    assert m.collectives[2].wait_us["rank 3"] == pytest.approx(300.0)
    assert [o.offset_us for o in m.offsets] == pytest.approx([-s for s in shift])
    assert m.unmatched == {} and m.ambiguous == {}


def test_no_collective_across_ranks_outside_the_group() -> None:
    """Group "1" is {0,1} in the traces that list it: rank 2's execution under that name cannot belong to it."""
    per = {r: ranked([{"start": 100.0 * (r + 1), "end": 1000.0, "kind": "all_reduce", "group": A}]) for r in range(3)}
    m = match(per)
    (c,) = m.collectives
    assert c.ranks == (0, 1) and m.unmatched == {2: 1}
    # More ranks than the group has members (and no member list): no collective at all.
    small = Group("5", (), 2)
    m = match({r: ranked([{"start": 100.0, "end": 1000.0, "kind": "all_reduce", "group": small}]) for r in range(3)})
    assert m.collectives == [] and m.unmatched == {0: 1, 1: 1, 2: 1}


def test_unnamed_collectives_on_ranks_of_several_groups_are_matched_per_groups_and_do_not_align_clocks() -> None:
    """gloo spans name no group. Ranks 0,1 are in {world, "1"}, ranks 2,3 in {world, "2"}; each pair all-reduces
    in its subgroup, 4 ms apart, on one clock. Matching them by order across the world group would make one
    collective of four and shift ranks 2,3 by the 4.5 ms between the ends."""
    groups = [("0", (0, 1, 2, 3), 4), ("1", (0, 1), 2), ("2", (2, 3), 2)]
    cfg = [{"pg_name": n, "pg_size": s, "ranks": list(r)} for n, r, s in groups]
    times = {0: (100.0, 1100.0), 1: (150.0, 1100.0), 2: (5000.0, 5600.0), 3: (5400.0, 5600.0)}
    per = {}
    for r, (s, e) in times.items():
        _, unnamed = process_groups([c for c in cfg if r in c["ranks"]], r)
        assert unnamed.ambiguous
        per[r] = ranked([{"start": s, "end": e, "kind": "all_reduce", "group": unnamed, "size": None}])
    m = match(per)
    assert [(c.group, c.ranks, c.wait_us) for c in m.collectives] == [
        ("1", (0, 1), {"rank 0": 50.0, "rank 1": 0.0}), ("2", (2, 3), {"rank 2": 400.0, "rank 3": 0.0})]
    assert [o.offset_us for o in m.offsets] == [0.0, 0.0, 0.0, 0.0]
    assert all("not used to align" in o.source for o in m.offsets[1:])
    assert m.ambiguous == {0: (1, "0|1"), 1: (1, "0|1"), 2: (1, "0|2"), 3: (1, "0|2")}


def test_process_groups_of_a_rank() -> None:
    cfg = [{"pg_name": "0", "pg_size": 4, "ranks": [0, 1, 2, 3]}, {"pg_name": "1", "pg_size": 2, "ranks": "[0, 1]"},
           {"pg_name": "7", "pg_size": 1, "ranks": [0]}]
    known, unnamed = process_groups(cfg, 0)
    assert known["1"].ranks == (0, 1) and unnamed.name == "0|1"  # libkineto writes ranks as a string
    assert process_groups(cfg[:1] + cfg[2:], 0)[1] == Group("0")  # a group of one has no counterpart
    assert process_groups([], 0)[1].name == "default" and not process_groups([], 0)[1].ambiguous
    # two groups of the same members (a gloo run plus dist.new_group over all ranks): whichever ran it, the same
    # ranks took part: matched and aligning as one group, not ambiguous
    twins = [{"pg_name": "0", "pg_size": 2, "ranks": [0, 1]}, {"pg_name": "1", "pg_size": 2, "ranks": [0, 1]}]
    same = process_groups(twins, 1)[1]
    assert same.name == "0|1" and not same.ambiguous and same.ranks == (0, 1)


def test_seq_and_comms_id_keys_match_collectives_run_in_different_orders() -> None:
    """Rank 1 runs two equal all_reduces in the other order (two streams): by order they would be crossed; the
    sequence number, or the Comms Id that hashes it, pairs them. Comms Id wins over Seq."""
    for field_, ids in (("seq", (7, 8)), ("comms_id", ("h7", "h8"))):
        r0 = ranked([{"start": 100.0, "end": 1000.0, "kind": "all_reduce", field_: ids[0]},
                     {"start": 200.0, "end": 2000.0, "kind": "all_reduce", field_: ids[1]}])
        r1 = ranked([{"start": 500.0, "end": 2000.0, "kind": "all_reduce", field_: ids[1]},
                     {"start": 600.0, "end": 1000.0, "kind": "all_reduce", field_: ids[0]}])
        m = match({0: r0, 1: r1})
        assert [(c.last, c.wait_us["rank 0"]) for c in m.collectives] == [("rank 1", pytest.approx(500.0)),
                                                                           ("rank 1", pytest.approx(300.0))], field_
        assert m.offsets[1].offset_us == pytest.approx(0.0)
    r0 = ranked([{"start": 100.0, "end": 1000.0, "kind": "all_reduce", "seq": 1, "comms_id": "x"}])
    r1 = ranked([{"start": 400.0, "end": 1000.0, "kind": "all_reduce", "seq": 2, "comms_id": "x"}])
    assert len(match({0: r0, 1: r1}).collectives) == 1


def test_uneven_all_to_all_and_gather_match_whatever_their_sizes() -> None:
    for kind in ("all_to_all", "gather", "scatter"):
        m = match({0: ranked([{"start": 0.0, "end": 1000.0, "kind": kind, "size": (100, 300, "Float")}]),
                   1: ranked([{"start": 600.0, "end": 1000.0, "kind": kind, "size": (300, 100, "Float")}])})
        assert len(m.collectives) == 1 and m.collectives[0].wait_us["rank 0"] == pytest.approx(600.0), kind
    m = match({0: ranked([{"start": 0.0, "end": 1000.0, "kind": "all_reduce", "size": (100, 100, "Float")}]),
               1: ranked([{"start": 600.0, "end": 1000.0, "kind": "all_reduce", "size": (300, 300, "Float")}])})
    assert m.collectives == []  # an all_reduce's size is the same on every rank: these are two collectives


def test_send_recv_pair_by_peer_and_order_and_only_the_recv_waits() -> None:
    """Rank 0 sends to 1 twice, rank 2 sends to 1 once. The first recv from 0 is posted 300 µs before its send
    starts (it waits); the second is posted after its send started (the send does not wait for it)."""
    r0 = ranked([{"start": 400.0, "end": 1000.0, "kind": "send", "peer": 1},
                 {"start": 2000.0, "end": 2600.0, "kind": "send", "peer": 1}])
    r1 = ranked([{"start": 100.0, "end": 1000.0, "kind": "recv", "peer": 0},
                 {"start": 1200.0, "end": 1500.0, "kind": "recv", "peer": 2},
                 {"start": 2100.0, "end": 2600.0, "kind": "recv", "peer": 0}])
    r2 = ranked([{"start": 1300.0, "end": 1500.0, "kind": "send", "peer": 1}])
    m = match({0: r0, 1: r1, 2: r2})
    assert [(c.name, c.ranks, c.last, c.wait_us) for c in m.collectives] == [
        ("send_recv", (0, 1), "rank 0", {"rank 0": 0.0, "rank 1": pytest.approx(300.0)}),
        ("send_recv", (1, 2), "rank 2", {"rank 1": pytest.approx(100.0), "rank 2": 0.0}),
        ("send_recv", (0, 1), "", {"rank 0": 0.0, "rank 1": 0.0})]
    assert m.wait_end[1].tolist() == pytest.approx([400.0, 1300.0, 2100.0])
    assert m.unmatched == {}
    # Point-to-point ends are no clock signal (a send may finish before its recv starts).
    assert all(o.source in ("reference", "baseTimeNanoseconds (no shared collective)") for o in m.offsets)


def test_send_recv_without_peers_pair_only_between_two_ranks() -> None:
    send = {"start": 600.0, "end": 1000.0, "kind": "send"}
    recv = {"start": 0.0, "end": 1000.0, "kind": "recv"}
    m = match({0: ranked([send]), 1: ranked([recv])})
    assert len(m.collectives) == 1 and m.collectives[0].wait_us["rank 1"] == pytest.approx(600.0)
    m = match({0: ranked([send]), 1: ranked([recv]), 2: ranked([recv])})
    assert m.collectives == [] and m.unmatched == {0: 1, 1: 1, 2: 1}  # which recv is the send's: unknown


def test_summary_weighs_the_exposed_waiting_not_the_waiting_compute_hid() -> None:
    """Rank 1 starts 400 µs late at each of two all_reduces, but rank 0's compute runs beside them: only 40 µs
    per step is exposed (1 % of a 4000 µs step), below the 2 % threshold, while the in-kernel wait is 20 %."""
    r0 = execs([(100.0, 1000.0, 0, "all_reduce", 1), (2100.0, 3000.0, 0, "all_reduce", 1)])
    r1 = execs([(500.0, 1000.0, 1, "all_reduce", 1), (2500.0, 3000.0, 1, "all_reduce", 1)])
    m = match({0: r0, 1: r1})
    hidden = [_row({"peer_wait": 40.0, "compute": 3960.0}, on={"rank 1": 40.0}), _row({"compute": 4000.0}, rank=1)]
    sm = summary(m.stragglers, hidden, m.collectives)
    assert sm["verdict"] == "none" and sm["participant"] == "rank 1"
    assert sm["caused_wait_us_per_step"] == pytest.approx(40.0) and sm["caused_wait_pct_of_step"] == pytest.approx(1.0)
    assert sm["in_collective_wait_us_per_step"] == pytest.approx(800.0)
    assert sm["in_collective_wait_pct_of_step"] == pytest.approx(20.0)
    exposed = [_row({"peer_wait": 400.0, "compute": 3600.0}, on={"rank 1": 400.0}), _row({"compute": 4000.0}, rank=1)]
    assert summary(m.stragglers, exposed, m.collectives)["verdict"] == "slow_rank"
