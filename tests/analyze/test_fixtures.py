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
    assert a.output_device == 0
    for s in a.steps:
        g = s.dp_phase_gpu_us
        assert g["dp_reduce"] == pytest.approx(231, abs=5)
        assert g["dp_broadcast"] == pytest.approx(114, abs=8)
        assert g["dp_gather"] == pytest.approx(2, abs=1)
        assert g["dp_scatter"] == 0.0
        for cat in ("dp_scatter", "dp_broadcast", "dp_gather", "dp_reduce"):
            assert s.categories_us[cat] > 50.0, cat  # host time in each phase, µs
        # ~90 % of the step is host work inside DataParallel.forward (replica threads, cuDNN set-up).
        assert s.categories_us["host"] / s.duration_us > 0.85
        assert s.gpu0_only_us == pytest.approx(s.busy_us)  # no other GPU has activity
    assert "profile_all_threads_off" in {w.code for w in a.warnings}


def test_dp_1dev_has_no_replicate_gather_reduce(h200: dict[str, Path]) -> None:
    a = result(h200, "dp_1dev")
    for s in a.steps:
        assert s.categories_us["dp_scatter"] > 50.0
        for cat in ("dp_broadcast", "dp_gather", "dp_reduce"):
            assert s.categories_us[cat] == 0.0
            assert s.dp_phase_gpu_us[cat] == 0.0


def test_ddp_gloo_shows_allreduce_and_ranks_match(h200: dict[str, Path]) -> None:
    a = analyze([h200["ddp2_gloo_rank0"], h200["ddp2_gloo_rank1"]])
    assert a.strategy == "ddp" and [r.rank for r in a.ranks] == [0, 1]
    for s in a.steps:
        assert s.categories_us["allreduce"] > 0.4 * s.duration_us
        assert s.gpu0_only_us is None
    assert len(a.collectives) == 15  # 6 gloo:broadcast + 9 gloo:all_reduce, matched by order
    assert {c.name for c in a.collectives} == {"gloo:broadcast", "gloo:all_reduce"}
    assert sum(s.times_last for s in a.stragglers) == 15
    assert all(c.start_skew_us >= 0 for c in a.collectives)


def test_ddp1_nccl_shows_no_allreduce_and_says_why(h200: dict[str, Path]) -> None:
    a = result(h200, "ddp1_nccl_rank0")
    for s in a.steps:
        assert s.categories_us["allreduce"] == 0.0
    assert "ddp_world_size_1" in {w.code for w in a.warnings}
    assert a.devices[0].comm_kernel_time_us == 0.0


def test_output_is_deterministic(h200: dict[str, Path]) -> None:
    from dpprof.rundir import dumps_json

    one = dumps_json(analyze([h200["dp_1dev"]], jobs=1).to_json())
    two = dumps_json(analyze([h200["dp_1dev"]], jobs=1).to_json())
    assert one == two
    assert Analysis.from_json(__import__("json").loads(one)).to_json() == __import__("json").loads(one)


def test_crossrank_matching_by_order_ties_and_straggler() -> None:
    from dpprof.analyze.crossrank import match

    colls, strag = match({0: [("0", "nccl:all_reduce", 100.0), ("0", "nccl:all_reduce", 200.0)],
                          1: [("0", "nccl:all_reduce", 100.0), ("0", "nccl:all_reduce", 230.0)]})
    assert [(c.index, c.start_skew_us, c.last_rank) for c in colls] == [(0, 0.0, -1), (1, 30.0, 1)]
    assert [(s.rank, s.times_last, s.collectives, s.mean_lateness_us) for s in strag] == [(0, 0, 2, 0.0),
                                                                                          (1, 1, 2, 30.0)]
