"""Collectives matched across participants: clock alignment, last arrival, waiting vs transfer, stragglers.

Hand-built executions with known true times: each collective's kernels end together on the true clock (as
NCCL's do), a rank's trace clock is the true clock shifted by an injected offset, and every expectation below
is computed from what was injected.
"""

from __future__ import annotations

import numpy as np
import pytest

from dpprof.analyze.attribution import CAT, Pieces
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
    sm = summary(m.stragglers, steps_per_rank=1, step_us=3000.0, n_matched=2)
    assert sm["verdict"] == "slow_rank" and sm["participant"] == "rank 1"
    assert sm["caused_wait_pct_of_step"] == pytest.approx(100 * 350 / 3000, abs=0.01)


def test_tie_means_nobody_waited_and_small_lateness_is_no_straggler() -> None:
    r0 = execs([(100.0, 200.0, 0, "all_reduce", 1), (300.0, 400.0, 0, "all_reduce", 1)])
    r1 = execs([(100.0, 200.0, 1, "all_reduce", 1), (301.0, 400.0, 1, "all_reduce", 1)])
    m = match({0: r0, 1: r1})
    tie, late = m.collectives
    assert tie.last == "" and tie.last_rank == -1 and tie.wait_us == {"rank 0": 0.0, "rank 1": 0.0}
    assert late.last == "rank 1" and late.start_skew_us == pytest.approx(1.0)
    sm = summary(m.stragglers, steps_per_rank=1, step_us=10_000.0, n_matched=2)
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
    sm = summary(m.stragglers, steps_per_rank=1, step_us=2000.0, n_matched=1)
    assert sm["verdict"] == "slow_gpu" and sm["participant"] == "GPU 2"


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


def _row(cats: dict[str, float], step: int = 1, device: int = 0) -> StepBreakdown:
    full = {c: cats.get(c, 0.0) for c in CATEGORIES}
    return StepBreakdown(rank=0, device=device, step=step, duration_us=sum(full.values()), categories_us=full)


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
