"""The real H200 traces: strategy, categories summing to the step, hand-checked busy times and DP phases."""

from __future__ import annotations

from pathlib import Path

import pytest

from dpprof.analyze.model import CATEGORIES, Analysis
from dpprof.analyze.pipeline import analyze

STRATEGY = {"single_vgg16cifar": ("single", None), "single_vgg16tv": ("single", None),
            "dp_1dev": ("dp", "one_device"), "dp_dup00": ("dp", "multi_device"),
            "ddp1_nccl_rank0": ("ddp", None), "ddp2_gloo_rank0": ("ddp", None), "ddp2_gloo_rank1": ("ddp", None)}
#: Per-step GPU busy time (union of kernels, copies, memsets clipped to the step), checked by hand.
BUSY_US = {"single_vgg16cifar": (4118, 4124, 4128), "dp_dup00": (19842, 19860, 19836),
           "ddp2_gloo_rank0": (5119, 5016, 5041)}

_cache: dict[str, Analysis] = {}


def result(h200: dict[str, Path], name: str) -> Analysis:
    if name not in _cache:
        _cache[name] = analyze([h200[name]], jobs=1)
    return _cache[name]


@pytest.mark.parametrize("name", sorted(STRATEGY))
def test_strategy_steps_and_sums(h200: dict[str, Path], name: str) -> None:
    a = result(h200, name)
    assert (a.strategy, a.dp_mode) == STRATEGY[name]
    assert [s.step for s in a.steps] == [3, 4, 5]
    assert a.ranks[0].devices == (0,)  # 16 "GPU N" metadata processes, one GPU with events
    for s in a.steps:
        assert set(s.categories_us) == set(CATEGORIES)
        assert sum(s.categories_us.values()) == pytest.approx(s.duration_us, rel=1e-3)
        assert all(v >= 0 for v in s.categories_us.values())
        assert 0 < s.busy_us < s.duration_us
    (dev,) = a.devices
    assert dev.busy_time_us <= dev.kernel_time_us + dev.memcpy_time_us + 1e-6


@pytest.mark.parametrize("name", sorted(BUSY_US))
def test_hand_checked_busy_time(h200: dict[str, Path], name: str) -> None:
    a = result(h200, name)
    assert [s.busy_us for s in a.steps] == pytest.approx(BUSY_US[name], abs=1.0)


def test_dp_dup00_phases(h200: dict[str, Path]) -> None:
    a = result(h200, "dp_dup00")
    assert a.output_device == 0 and "Gather" in a.output_device_source  # its DtoD gather copies land on GPU0
    for s in a.steps:
        g = s.dp_phase_gpu_us
        assert g["dp_reduce"] == pytest.approx(231, abs=5)
        assert g["dp_broadcast"] == pytest.approx(114, abs=8)
        assert g["dp_gather"] == pytest.approx(2, abs=1)
        assert g["dp_scatter"] == 0.0
        # dp_* categories are GPU transfer only (no NCCL with repeated devices: nothing waits) ...
        assert s.categories_us["dp_reduce"] == pytest.approx(g["dp_reduce"], abs=1)
        assert s.categories_us["dp_scatter"] == 0.0 and s.categories_us["peer_wait"] == 0.0
        # ... and the host time of each phase is reported beside them (replicate's Python copies: ms).
        for cat in ("dp_scatter", "dp_broadcast", "dp_gather", "dp_reduce"):
            assert s.dp_host_us[cat] > 50.0, cat
        assert s.dp_host_us["dp_broadcast"] > 1000.0
        # ~90 % of the step is host work inside DataParallel.forward (replica threads, cuDNN set-up).
        assert s.categories_us["host"] / s.duration_us > 0.85
        assert s.gpu0_only_us == pytest.approx(s.busy_us)  # no other GPU has activity
    assert "profile_all_threads_off" in {w.code for w in a.warnings}
    assert a.collectives == () and a.straggler_summary["verdict"] == "not_applicable"


def test_dp_1dev_has_no_replicate_gather_reduce(h200: dict[str, Path]) -> None:
    a = result(h200, "dp_1dev")
    assert a.dp_mode == "one_device" and "Scatter" in a.strategy_evidence
    for s in a.steps:
        assert s.dp_host_us["dp_scatter"] > 50.0
        assert "dp_broadcast" not in s.dp_host_us
        for cat in ("dp_broadcast", "dp_gather", "dp_reduce"):
            assert s.categories_us[cat] == 0.0
            assert s.dp_phase_gpu_us[cat] == 0.0


def test_ddp_gloo_waiting_transfer_and_straggler(h200: dict[str, Path]) -> None:
    a = analyze([h200["ddp2_gloo_rank0"], h200["ddp2_gloo_rank1"]])
    assert a.strategy == "ddp" and [r.rank for r in a.ranks] == [0, 1]
    for s in a.steps:
        assert s.categories_us["comm"] + s.categories_us["peer_wait"] > 0.4 * s.duration_us
        assert s.gpu0_only_us is None
        assert sum(s.categories_us.values()) == pytest.approx(s.duration_us)
        assert set(s.comm_by_kind_us) <= {"all_reduce", "broadcast", "other"}
        assert sum(s.comm_by_kind_us.values()) == pytest.approx(s.categories_us["comm"], abs=1e-3)
        assert sum(s.peer_wait_on_us.values()) == pytest.approx(s.categories_us["peer_wait"], abs=1e-3)
        assert s.comm_overlapped_us > 0  # gloo runs on its own threads beside backward's kernels
    # 2 gloo:broadcast + 3 gloo:all_reduce per step on each rank, matched by group, kind and order.
    assert len(a.collectives) == 15
    assert {c.name for c in a.collectives} == {"broadcast", "all_reduce"}
    assert sum(s.times_last for s in a.stragglers) == sum(1 for c in a.collectives if c.last)
    assert all(c.start_skew_us >= 0 for c in a.collectives)
    (ref, r1) = a.clock_offsets
    assert ref.source == "reference" and r1.source == "collective ends" and r1.collectives == 15
    assert abs(r1.offset_us) < 100  # both ranks ran on one machine: one clock
    assert a.straggler_summary["verdict"] == "slow_rank" and a.straggler_summary["participant"] == "rank 1"
    rank0 = [s for s in a.steps if s.rank == 0]
    assert all(set(s.peer_wait_on_us) <= {"rank 1"} for s in rank0)


def test_ddp1_nccl_shows_no_comm_and_says_why(h200: dict[str, Path]) -> None:
    a = result(h200, "ddp1_nccl_rank0")
    for s in a.steps:
        assert s.categories_us["comm"] == 0.0 and s.categories_us["peer_wait"] == 0.0
    assert "ddp_world_size_1" in {w.code for w in a.warnings}
    assert a.devices[0].comm_kernel_time_us == 0.0


def test_output_is_deterministic(h200: dict[str, Path]) -> None:
    from dpprof.rundir import dumps_json

    one = dumps_json(analyze([h200["dp_1dev"]], jobs=1).to_json())
    two = dumps_json(analyze([h200["dp_1dev"]], jobs=1).to_json())
    assert one == two
    assert Analysis.from_json(__import__("json").loads(one)).to_json() == __import__("json").loads(one)


CPU = Path(__file__).resolve().parents[1] / "data" / "cpu"


def test_real_fsdp2_over_gloo_on_the_cpu() -> None:
    """A real FSDP2 run (torch 2.14.1, 2 gloo processes): labelled fsdp, its reduce-scatter named from the
    ``c10d::_reduce_scatter_base_`` op although gloo runs it as ``gloo:all_reduce``, no DDP advice, and the
    trace clocks kept (gloo's span ends spread by ms on CPU ranks)."""
    from dpprof.analyze.diagnosis import diagnose

    a = analyze(sorted(CPU.glob("fsdp2_gloo_rank*.pt.trace.json.gz")))
    assert a.strategy == "fsdp" and "FSDP::all_gather" in a.strategy_evidence
    assert {c.name for c in a.collectives} == {"all_gather", "reduce_scatter"}
    assert len(a.collectives) == 18  # per step: 3 all-gathers forward, 3 backward (re-gather), 3 reduce-scatters
    for s in a.steps:
        assert s.device == -1 and sum(s.categories_us.values()) == pytest.approx(s.duration_us)
        assert set(s.comm_by_kind_us) <= {"all_gather", "reduce_scatter"}
        assert s.comm_overlapped_us > 0  # gloo's worker threads run beside the main thread's ops
    (_, r1) = a.clock_offsets
    assert r1.offset_us == 0.0 and r1.source.startswith("baseTimeNanoseconds") and r1.residual_us > 50
    d = diagnose(a)
    assert "ddp_buckets" not in {f.id for f in d.findings}
    assert not any("bucket_cap_mb" in x for x in d.advice)
