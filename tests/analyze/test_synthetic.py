"""The analyzer recovers what was injected into synthetic DP, DDP and FSDP traces built with PyTorch's semantics.

The traces (tests/synth) run the host ahead of the GPUs, put copies on the streams PyTorch uses, end every NCCL
collective's kernels together, and skew the DDP ranks' clocks; the expected figures are sums of what the
builders placed (tests/synth/expect.py), never a second run of dpprof's rule. A figure agrees when
``|got - expected| <= 1 % of expected + 0.01 µs`` (the JSON keeps ns); where a DP stream waits for another
device's event the analyzer sees the waiting only ``QUEUE_SLACK_US`` after the launch (it cannot know the
launch latency), so peer waiting gets that much slack per wait.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from dpprof.analyze.attribution import QUEUE_SLACK_US
from dpprof.analyze.diagnosis import diagnose
from dpprof.analyze.model import Analysis
from dpprof.vocabulary import DP_PHASES
from tests.synth.ddp import write_ddp_run
from tests.synth.dp import VARIANTS as DP_VARIANTS
from tests.synth.dp import params as dp_params
from tests.synth.dp import write_dp_run
from tests.synth.fsdp import write_fsdp_run
from tests.synth.kineto import TS0_US, RankTrace
from tests.synth.streams import LATENCY_US

pipeline = pytest.importorskip("dpprof.analyze.pipeline")


def _close(got: float, want: float, slack: float = 0.0) -> bool:
    return abs(got - want) <= 0.01 * abs(want) + 0.01 + slack


def _rows(a: Analysis) -> dict[tuple[int, int, int], Any]:
    return {(s.rank, s.device, s.step): s for s in a.steps}


def _check_sums(a: Analysis) -> None:
    for s in a.steps:
        assert sum(s.categories_us.values()) == pytest.approx(s.duration_us, rel=1e-9), s
        assert sum(s.peer_wait_on_us.values()) == pytest.approx(s.categories_us["peer_wait"], abs=1e-6)
        assert sum(s.comm_by_kind_us.values()) == pytest.approx(s.categories_us["comm"], abs=1e-6)


# ---- DP ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("marks", [False, True], ids=["torch_ops", "dpprof_marks"])
@pytest.mark.parametrize("n", [2, 4])
@pytest.mark.parametrize("variant", sorted(DP_VARIANTS))
def test_dp_transfer_waiting_and_compute_recovered(tmp_path: Path, variant: str, n: int, marks: bool) -> None:
    traces, exp = write_dp_run(tmp_path, n, variant, marks=marks)
    a = pipeline.analyze([traces.parent])
    assert (a.strategy, a.dp_mode, a.output_device) == ("dp", "multi_device", 0)
    assert a.output_device_source.startswith("toDevice")
    assert a.ranks[0].devices == tuple(range(n))  # 16 GPU processes in the metadata, n with events
    _check_sums(a)
    rows = _rows(a)
    assert set(rows) == set(exp["rows"])
    dl = dict(zip((x[0] for x in exp["steps"]), exp["params"]["data_loading_us"], strict=True))
    bad = []
    for key, e in exp["rows"].items():
        s = rows[key]
        c = s.categories_us
        slack = (QUEUE_SLACK_US - LATENCY_US) * e["dep_waits"]
        pairs = [("compute", c["compute"], e["compute_us"], 0.0), ("memcpy", c["memcpy"], e["memcpy_us"], 0.0),
                 ("busy", s.busy_us, e["busy_us"], 0.0), ("data_loading", c["data_loading"], dl[key[2]], 0.0),
                 ("peer_wait", c["peer_wait"], e["peer_wait_us"], slack),
                 ("peer_wait_idle", s.peer_wait_idle_us, e["dep_wait_us"], slack)]
        pairs += [(p, c[p], e["dp_transfer_us"][p], 0.0) for p in DP_PHASES]
        bad += [f"{key} {name}: expected {w}, got {g}" for name, g, w, sl in pairs if not _close(g, w, sl)]
    assert bad == []


def test_dp_slow_gpu_is_waiting_not_data_path(tmp_path: Path) -> None:
    """One GPU 3x slower: GPU0's reduce kernel lasts as long as the slow replica's lead, but only its transfer is
    ``dp_reduce``; the rest is ``peer_wait`` on the slow GPU, which the straggler summary names."""
    traces, exp = write_dp_run(tmp_path, 4, "slow_gpu")
    a = pipeline.analyze([traces.parent])
    p = dp_params("slow_gpu", 4)
    for s in (x for x in a.steps if x.device == 0):
        assert s.dp_phase_gpu_us["dp_reduce"] > 10 * s.categories_us["dp_reduce"]  # the kernel is mostly waiting
        assert s.categories_us["dp_reduce"] == pytest.approx(p.flatten_us + p.reduce_transfer_us, abs=0.01)
        assert s.peer_wait_on_us["GPU 3"] >= 0.99 * s.categories_us["peer_wait"]
        assert s.categories_us["peer_wait"] > 0.5 * s.duration_us
    sm = a.straggler_summary
    assert (sm["verdict"], sm["participant"]) == ("slow_gpu", "GPU 3")
    d = diagnose(a)
    assert "straggler" in {f.id for f in d.findings}


def test_dp_gpu0_late_is_named_as_the_output_device(tmp_path: Path) -> None:
    traces, _ = write_dp_run(tmp_path, 4, "gpu0_bound")
    sm = pipeline.analyze([traces.parent]).straggler_summary
    assert (sm["verdict"], sm["participant"]) == ("output_device_late", "GPU 0")


def test_dp_host_bound_is_host_time(tmp_path: Path) -> None:
    traces, _ = write_dp_run(tmp_path, 4, "host_bound")
    a = pipeline.analyze([traces.parent])
    for s in a.steps:
        assert s.categories_us["host"] > 0.6 * s.duration_us
        assert s.categories_us["peer_wait"] < 0.01 * s.duration_us
    assert a.straggler_summary["verdict"] == "none"


@pytest.mark.parametrize("out", [1, 3])
def test_output_device_from_where_gathered_outputs_land(tmp_path: Path, out: int) -> None:
    """Gather's copies run on the source GPUs' streams (Copy.cu): the device they run on is not the output."""
    traces, _ = write_dp_run(tmp_path, 4, "balanced", output_device=out)
    a = pipeline.analyze([traces.parent])
    assert a.output_device == out and "toDevice" in a.output_device_source
    assert all(s.gpu0_only_us is None for s in a.steps if s.device != out)


def test_output_device_without_peer_copy_args_falls_back_to_same_device_copies(tmp_path: Path) -> None:
    """Older traces name no ``toDevice``: the output device's own chunk (a DtoD copy in Gather) still tells."""
    traces, _ = write_dp_run(tmp_path, 4, "balanced", output_device=2)
    path = next(traces.iterdir())
    doc = json.loads(gzip.decompress(path.read_bytes()))
    for e in doc["traceEvents"]:
        if e.get("cat") == "gpu_memcpy":
            e.get("args", {}).pop("toDevice", None)
    path.write_bytes(gzip.compress(json.dumps(doc).encode()))
    a = pipeline.analyze([path])
    assert a.output_device == 2 and "same-device copies" in a.output_device_source


# ---- DDP -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [2, 4])
@pytest.mark.parametrize("variant", ["balanced", "straggler", "slow_link"])
def test_ddp_exposed_transfer_waiting_and_overlap_recovered(tmp_path: Path, variant: str, n: int) -> None:
    traces, exp = write_ddp_run(tmp_path, n, variant)
    a = pipeline.analyze([traces.parent])
    assert a.strategy == "ddp" and [r.rank for r in a.ranks] == list(range(n))
    assert all(s.gpu0_only_us is None for s in a.steps)
    _check_sums(a)
    rows = _rows(a)
    assert set(rows) == set(exp["rows"])
    bad = []
    for key, e in exp["rows"].items():
        s = rows[key]
        c = s.categories_us
        pairs = [("compute", c["compute"], e["compute_us"]), ("comm", c["comm"], e["comm_exposed_us"]),
                 ("peer_wait", c["peer_wait"], e["wait_exposed_us"]), ("memcpy", c["memcpy"], e["memcpy_us"]),
                 ("comm_overlapped", s.comm_overlapped_us, e["comm_overlapped_us"]), ("busy", s.busy_us, e["busy_us"])]
        pairs += [(f"comm_by_kind.{k}", s.comm_by_kind_us.get(k, 0.0), v) for k, v in e["comm_by_kind_us"].items()]
        pairs += [(f"peer_wait_on.{k}", s.peer_wait_on_us.get(k, 0.0), v) for k, v in e["peer_wait_on_us"].items()]
        bad += [f"{key} {name}: expected {w}, got {g}" for name, g, w in pairs if not _close(g, w)]
    assert bad == []
    assert len(a.collectives) == exp["collectives_per_step"] * 3


@pytest.mark.parametrize("n", [2, 4])
def test_ddp_clocks_aligned_from_collective_ends(tmp_path: Path, n: int) -> None:
    traces, exp = write_ddp_run(tmp_path, n, "straggler")
    a = pipeline.analyze([traces.parent])
    shift = exp["clock_shift_us"]
    for o in a.clock_offsets:
        assert o.offset_us == pytest.approx(shift[0] - shift[o.rank], abs=1e-3), o
        if o.rank:
            assert o.source == "collective ends" and o.residual_us == pytest.approx(0.0, abs=1e-3)


def test_ddp_straggler_found_from_gpu_side_starts_not_host_enqueue(tmp_path: Path) -> None:
    """The slow rank enqueues its allreduces when the others do (its host is ahead); only its GPU is late."""
    traces, exp = write_ddp_run(tmp_path, 4, "straggler")
    host_starts: dict[int, list[float]] = {}
    for path in sorted(traces.iterdir()):
        doc = json.loads(gzip.decompress(path.read_bytes()))
        r = doc["distributedInfo"]["rank"]
        host_starts[r] = [e["ts"] - exp["clock_shift_us"][r] for e in doc["traceEvents"]
                          if e.get("name") == "c10d::allreduce_"]
    assert all(v == pytest.approx(host_starts[0], abs=1e-3) for v in host_starts.values())  # same enqueue times
    a = pipeline.analyze([traces.parent])
    sm = a.straggler_summary
    assert (sm["verdict"], sm["participant"]) == ("slow_rank", "rank 3")
    late = [c for c in a.collectives if c.name == "all_reduce"]
    assert all(c.last == "rank 3" and c.start_skew_us > 100 for c in late)
    d = diagnose(a)
    f = {x.id: x for x in d.findings}
    assert "straggler" in f and "peer_wait" in f and "rank 3" in f["peer_wait"].detail


def test_ddp_one_rank_alone_cannot_split_waiting(tmp_path: Path) -> None:
    traces, _ = write_ddp_run(tmp_path, 2, "straggler")
    a = pipeline.analyze([sorted(traces.iterdir())[0]])
    assert "unmatched_collectives" in {w.code for w in a.warnings}
    assert all(s.categories_us["peer_wait"] == 0.0 for s in a.steps)
    assert a.straggler_summary["verdict"] == "not_applicable"


# ---- FSDP and other collectives --------------------------------------------------------------------------------
def test_fsdp_labelled_and_all_gather_reduce_scatter_attributed(tmp_path: Path) -> None:
    traces, exp = write_fsdp_run(tmp_path, 2)
    a = pipeline.analyze([traces.parent])
    assert a.strategy == "fsdp" and "FSDP::" in a.strategy_evidence
    _check_sums(a)
    rows = _rows(a)
    for key, e in exp["rows"].items():
        s = rows[key]
        assert _close(s.categories_us["comm"] + s.categories_us["peer_wait"], e["collective_exposed_us"]), key
        assert _close(s.categories_us["compute"], e["compute_us"]), key
        assert set(s.comm_by_kind_us) <= {"all_gather", "reduce_scatter"}
    assert {c.name for c in a.collectives} == {"all_gather", "reduce_scatter"}
    d = diagnose(a)
    assert "ddp_buckets" not in {f.id for f in d.findings}
    assert not any("bucket_cap_mb" in x or "DistributedDataParallel" in x for x in d.advice)


def test_collectives_without_ddp_or_fsdp_are_distributed(tmp_path: Path) -> None:
    """Tensor-parallel or hand-written collectives: no DDP/FSDP ops, a world of 2 -> ``distributed``."""
    traces, _ = write_ddp_run(tmp_path, 2, "balanced")
    for path in traces.iterdir():
        doc = json.loads(gzip.decompress(path.read_bytes()))
        for e in doc["traceEvents"]:
            name = e.get("name", "")
            if name == "DistributedDataParallel.forward" or "reducer::" in name:
                e["name"] = "aten::mul" if "reducer::" in name else "Model.forward"
        path.write_bytes(gzip.compress(json.dumps(doc).encode()))
    a = pipeline.analyze([traces.parent])
    assert a.strategy == "distributed" and "world size 2" in a.strategy_evidence
    d = diagnose(a)
    assert not any("bucket_cap_mb" in x for x in d.advice)


def test_gloo_on_the_cpu_overlaps_backward(tmp_path: Path) -> None:
    """CPU ranks: a gloo collective on its runloop thread beside backward ops on the autograd thread is hidden
    (``comm_overlapped_us``), not painted before compute."""
    traces = []
    for r in range(2):
        tr = RankTrace(rank=r, pid=900 + r, devices=(0,), world_size=2, backend="gloo", pg_ranks=(0, 1))
        main, auto, loop = 900 + r, 940 + r, 980 + r
        tr.thread(loop, "pt_gloo_runloop")
        t0 = TS0_US + 100.0
        tr.op(main, "aten::linear", t0 + 10.0, 400.0)  # forward
        tr.op(auto, "AddmmBackward0", t0 + 420.0, 300.0)  # backward, first half
        tr.op(auto, "c10d::allreduce_", t0 + 722.0, 6.0)
        tr.annotate(loop, "gloo:all_reduce", t0 + 730.0 + 50.0 * r, 500.0 - 50.0 * r)  # rank 1 arrives 50 µs later
        tr.op(auto, "AddmmBackward0", t0 + 730.0, 200.0)  # backward, second half, beside the collective
        tr.annotate(main, "ProfilerStep#1", t0, 1300.0)
        traces.append(tr)
    folder = tmp_path / "traces"
    for tr in traces:
        tr.write(folder / f"rank{tr.rank}.1.pt.trace.json.gz")
    a = pipeline.analyze([folder])
    r0 = next(s for s in a.steps if s.rank == 0)
    assert r0.device == -1
    assert r0.comm_overlapped_us == pytest.approx(200.0)  # the second half of backward
    assert r0.categories_us["compute"] == pytest.approx(900.0)
    # rank 0 waits 50 µs for rank 1 (exposed: backward covers [730, 930)): 0 exposed waiting, 300 µs transfer
    assert r0.categories_us["peer_wait"] == pytest.approx(0.0, abs=1e-6)
    assert r0.categories_us["comm"] == pytest.approx(300.0)
    r1 = next(s for s in a.steps if s.rank == 1)
    assert r1.categories_us["comm"] == pytest.approx(450.0 - 150.0)
