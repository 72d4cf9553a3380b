"""Collectives matched per process group, point to point and by Comms Id, through real trace files (load, attribute,
match); and the straggler summary weighed by the waiting the others could not hide.

The traces are written event by event as torch 2.11 writes them (tests/synth/kineto.py); every expectation is
what was placed in them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dpprof.analyze.pipeline import analyze
from tests.synth.ddp import write_ddp_run
from tests.synth.kineto import TS0_US, RankTrace

T0 = TS0_US + 100.0
SEND_RECV = "ncclDevKernel_SendRecv(ncclDevKernelArgsStorage<4096ul>)"
ALL_REDUCE = "ncclDevKernel_AllReduce_Sum_f32_RING_LL(ncclDevKernelArgsStorage<4096ul>)"


def test_gloo_subgroups_are_two_collectives_and_no_clock_is_shifted(tmp_path: Path) -> None:
    """Four CPU ranks on one clock, in the world group and in {0,1} / {2,3} (torch lists both in pg_config); each
    pair runs one gloo all_reduce in its subgroup, 4 ms apart. gloo's spans name no group."""
    times = {0: (100.0, 1100.0), 1: (150.0, 1100.0), 2: (5000.0, 5600.0), 3: (5400.0, 5600.0)}
    for r, (s, e) in times.items():
        tr = RankTrace(rank=r, pid=900 + r, devices=(0,), world_size=4, backend="gloo", pg_ranks=(0, 1, 2, 3),
                       subgroups=(("1", (0, 1)) if r < 2 else ("2", (2, 3)),))
        loop = 980 + r
        tr.thread(loop, "pt_gloo_runloop")  # ProcessGroupGloo.cpp runLoop: the span is the algorithm running
        tr.op(tr.pid, "c10d::allreduce_", T0 + 90.0, 5.0)
        tr.annotate(loop, "gloo:all_reduce", T0 + s, e - s)
        tr.annotate(tr.pid, "ProfilerStep#1", T0, 7000.0)
        tr.write(tmp_path / f"rank{r}.1.pt.trace.json.gz")
    a = analyze([tmp_path])
    assert [(c.group, c.ranks, dict(c.wait_us)) for c in a.collectives] == [
        ("1", (0, 1), {"rank 0": 50.0, "rank 1": 0.0}), ("2", (2, 3), {"rank 2": 400.0, "rank 3": 0.0})]
    assert [o.offset_us for o in a.clock_offsets] == [0.0, 0.0, 0.0, 0.0]
    warned = {w.rank: w for w in a.warnings if w.code == "ambiguous_process_group"}
    assert sorted(warned) == [0, 1, 2, 3] and "not used to align the clocks" in warned[2].message
    assert "0, 2" in warned[2].message
    assert a.straggler_summary["participant"] == "rank 3"  # rank 2 waited 400 µs for it; ranks 0, 1 never did


def _nccl_rank(r: int, kernels: list[tuple[str, float, float, dict[str, Any]]], stream_of: list[int]) -> RankTrace:
    """Rank r on GPU r: each collective a ``record_param_comms`` op whose args libkineto copies onto the kernel."""
    tr = RankTrace(rank=r, pid=700 + r, devices=(r,), world_size=2, backend="nccl", pg_ranks=(0, 1))
    tr.annotate(tr.pid, "ProfilerStep#1", T0, 10_000.0)
    for i, (name, start, end, args) in enumerate(kernels):
        at = T0 + 10.0 + 40.0 * i
        full = {"Process Group Name": "0", "Process Group Description": "default_pg", "Group size": 2,
                "dtype": "Float", "In msg nelems": 1000, "Out msg nelems": 1000, **args}
        op = tr.op(tr.pid, "record_param_comms", at, 30.0, args=full)
        tr.kernel(tr.pid, at + 1.0, op, r, name, T0 + start, end - start, stream=stream_of[i], comm=True,
                  extra=full)
    return tr


def test_send_recv_paired_by_their_peer_args_and_the_recv_waits_for_the_send(tmp_path: Path) -> None:
    """torch/csrc/profiler/util.cpp ``saveNcclMeta`` writes a send's receiver as ``Dst Rank`` and a recv's sender as
    ``Src Rank``; their Comms Ids need not agree (each rank numbers its own point-to-point ops)."""
    _nccl_rank(0, [(SEND_RECV, 3000.0, 3500.0, {"Collective name": "send", "Dst Rank": 1, "Comms Id": 11})],
               [21]).write(tmp_path / "rank0.1.pt.trace.json.gz")
    _nccl_rank(1, [(SEND_RECV, 2000.0, 3500.0, {"Collective name": "recv", "Src Rank": 0, "Comms Id": 42})],
               [21]).write(tmp_path / "rank1.1.pt.trace.json.gz")
    a = analyze([tmp_path])
    (c,) = a.collectives
    assert (c.name, c.last, dict(c.wait_us)) == ("send_recv", "rank 0", {"rank 0": 0.0, "rank 1": 1000.0})
    (row1,) = [s for s in a.steps if s.rank == 1]
    assert row1.peer_wait_on_us == pytest.approx({"rank 0": 1000.0})
    assert "unmatched_collectives" not in {w.code for w in a.warnings}


def test_comms_id_pairs_collectives_a_rank_ran_in_the_other_order(tmp_path: Path) -> None:
    """Rank 1 runs the second all_reduce first (another stream); the Comms Id (a size_t: it may pass int64) says
    which is which, where the order would cross them."""
    big, bigger = 2**63 + 5, 2**64 - 1
    first = {"Collective name": "allreduce", "Comms Id": big}
    second = {"Collective name": "allreduce", "Comms Id": bigger}
    _nccl_rank(0, [(ALL_REDUCE, 1000.0, 2000.0, first), (ALL_REDUCE, 1100.0, 4000.0, second)],
               [21, 22]).write(tmp_path / "rank0.1.pt.trace.json.gz")
    _nccl_rank(1, [(ALL_REDUCE, 1600.0, 4000.0, second), (ALL_REDUCE, 1700.0, 2000.0, first)],
               [22, 21]).write(tmp_path / "rank1.1.pt.trace.json.gz")
    a = analyze([tmp_path])
    assert [(c.last, c.wait_us["rank 0"]) for c in a.collectives] == [("rank 1", pytest.approx(700.0)),
                                                                       ("rank 1", pytest.approx(500.0))]
    assert a.clock_offsets[1].offset_us == pytest.approx(0.0) and a.clock_offsets[1].source == "collective ends"


def test_ddp_straggler_cost_is_the_waiting_backward_did_not_hide(tmp_path: Path) -> None:
    """The slow rank's lateness is mostly hidden by the others' remaining backward kernels: the summary's cost is
    their exposed ``peer_wait`` on it (the construction's), not the whole waiting inside the allreduce kernels."""
    traces, exp = write_ddp_run(tmp_path, 4, "straggler")
    sm = analyze([traces.parent]).straggler_summary
    others = [e for (rank, _dev, _step), e in exp["rows"].items() if rank != 3]
    want = sum(e["peer_wait_on_us"].get("rank 3", 0.0) for e in others) / len(others)
    assert (sm["verdict"], sm["participant"]) == ("slow_rank", "rank 3")
    assert sm["caused_wait_us_per_step"] == pytest.approx(want, rel=0.01)
    assert sm["in_collective_wait_us_per_step"] > 2 * sm["caused_wait_us_per_step"]


def test_a_mildly_slow_rank_whose_lateness_compute_hides_is_no_straggler(tmp_path: Path) -> None:
    traces, exp = write_ddp_run(tmp_path, 4, "mild_straggler")
    a = analyze([traces.parent])
    sm = a.straggler_summary
    others = [e for (rank, _dev, _step), e in exp["rows"].items() if rank != 3]
    exposed_pct = 100 * sum(e["peer_wait_on_us"].get("rank 3", 0.0) for e in others) / sum(
        s.duration_us for s in a.steps if s.rank != 3)
    assert exposed_pct < 2.0 <= sm["in_collective_wait_pct_of_step"]  # the raw figure would cross the threshold
    assert sm["participant"] == "rank 3" and sm["verdict"] == "none"
    assert sm["caused_wait_pct_of_step"] == pytest.approx(exposed_pct, abs=0.01)
