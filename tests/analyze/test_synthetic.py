"""The analyzer recovers, within 1 %, the figures placed in synthetic 2- and 4-GPU DP and DDP traces.

The traces (tests/synth) copy the real event structure of the H200 fixtures and place every op, runtime row
and GPU activity at known times; the expected figures come from the builder's own record of what it
placed (tests/synth/expect.py applies issue 3's attribution rule with plain interval arithmetic). A
figure agrees when ``|got - expected| <= 1 % of expected + 0.01 µs`` (the JSON keeps ns).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dpprof.analyze.model import DP_PHASES, Analysis
from tests.synth import names as N
from tests.synth import write_ddp_run, write_dp_run
from tests.synth.ddp import DdpParams
from tests.synth.dp import VARIANTS

pipeline = pytest.importorskip("dpprof.analyze.pipeline")


def _close(got: float | None, want: float | None) -> bool:
    if want is None or got is None:
        return got is None and want is None
    return abs(got - want) <= 0.01 * abs(want) + 0.01


def _disagreements(a: Analysis, expected: dict[str, Any]) -> list[str]:
    """Every figure that differs, as ``(rank, device, step) figure: expected X, got Y`` lines."""
    rows = {(s.rank, s.device, s.step): s for s in a.steps}
    out = []
    if set(rows) != set(expected["steps"]):
        out.append(f"step rows: expected {sorted(expected['steps'])}, got {sorted(rows)}")
    for key, want in sorted(expected["steps"].items()):
        got = rows.get(key)
        if got is None:
            continue
        pairs = [("duration_us", got.duration_us, want["duration_us"]), ("busy_us", got.busy_us, want["busy_us"]),
                 ("allreduce_overlapped_us", got.allreduce_overlapped_us, want["allreduce_overlapped_us"]),
                 ("gpu0_only_us", got.gpu0_only_us, want["gpu0_only_us"])]
        pairs += [(f"categories_us.{c}", got.categories_us.get(c), v) for c, v in want["categories_us"].items()]
        if expected["strategy"] == "dp":
            pairs += [(f"dp_phase_gpu_us.{p}", got.dp_phase_gpu_us.get(p, 0.0), want["dp_phase_gpu_us"][p])
                      for p in DP_PHASES]
        out += [f"{key} {name}: expected {w}, got {g}" for name, g, w in pairs if not _close(g, w)]
    devices = {(d.rank, d.device): d for d in a.devices}
    for key, want in sorted(expected["devices"].items()):
        got = devices.get(key)
        if got is None:
            out.append(f"device {key}: missing")
            continue
        for name in ("kernel_time_us", "comm_kernel_time_us", "busy_time_us", "memcpy_time_us"):
            if not _close(getattr(got, name), want[name]):
                out.append(f"device {key} {name}: expected {want[name]}, got {getattr(got, name)}")
        if dict(got.memcpy_bytes) != want["memcpy_bytes"]:
            out.append(f"device {key} memcpy_bytes: expected {want['memcpy_bytes']}, got {dict(got.memcpy_bytes)}")
    return out


@pytest.mark.parametrize("marks", [False, True], ids=["torch_ops", "dpprof_marks"])
@pytest.mark.parametrize("n", [2, 4])
@pytest.mark.parametrize("variant", ["balanced", "gpu0_serial"])
def test_dp_figures_recovered(tmp_path: Path, n: int, variant: str, marks: bool) -> None:
    traces, expected = write_dp_run(tmp_path, n, variant, marks=marks)
    a = pipeline.analyze([traces.parent])
    assert (a.strategy, a.dp_mode, a.output_device) == ("dp", "multi_device", 0)
    assert a.ranks[0].devices == tuple(range(n))  # 16 GPU processes in the metadata, n with events
    assert _disagreements(a, expected) == []


@pytest.mark.parametrize("n,straggler", [(2, None), (2, 1), (4, None), (4, 2)])
def test_ddp_figures_recovered(tmp_path: Path, n: int, straggler: int | None) -> None:
    traces, expected = write_ddp_run(tmp_path, n, straggler=straggler)
    a = pipeline.analyze([traces.parent])
    assert a.strategy == "ddp" and [r.rank for r in a.ranks] == list(range(n))
    assert all(s.gpu0_only_us is None for s in a.steps)
    assert _disagreements(a, expected) == []


@pytest.mark.parametrize("n,straggler", [(2, 1), (4, 2), (4, None)])
def test_ddp_collectives_and_straggler(tmp_path: Path, n: int, straggler: int | None) -> None:
    traces, expected = write_ddp_run(tmp_path, n, straggler=straggler, delay_us=400.0)
    a = pipeline.analyze([traces.parent])
    want = expected["collectives"]
    assert [c.name for c in a.collectives] == [c["name"] for c in want] and len(want) == 12  # 3 steps x 4
    for got, exp in zip(a.collectives, want, strict=True):
        assert _close(got.start_skew_us, exp["skew_us"]), (exp, got)
        if exp["last_rank"] is not None:
            assert got.last_rank == exp["last_rank"], (exp, got)
    if straggler is None:
        assert all(c.start_skew_us < 0.01 for c in a.collectives)
    else:
        worst = max(a.stragglers, key=lambda s: (s.times_last, s.mean_lateness_us))
        assert worst.rank == straggler and worst.times_last >= 9  # every gradient allreduce


def test_builders_place_what_they_say(tmp_path: Path) -> None:
    """The builders' expectations against closed forms worked out by hand from the chosen durations."""
    p = VARIANTS["balanced"]
    _, e = write_dp_run(tmp_path, 2, "balanced")
    gpu1 = e["steps"][(0, 1, 3)]
    fwd, bwd = len(N.FWD_KERNELS) * p.fwd_kernel_us, len(N.BWD_KERNELS) * p.bwd_kernel_us
    assert gpu1["categories_us"]["compute"] == fwd + bwd
    assert gpu1["categories_us"]["memcpy"] == p.memset_us and gpu1["gpu0_only_us"] is None
    assert [e["steps"][(0, 0, s)]["categories_us"]["data_loading"] for s in (3, 4, 5)] == list(p.data_loading_us)
    # GPU0 alone: input copy, broadcast flatten, 2 gather copies, 2 loss, fill, 2 loss-backward kernels,
    # the 8 µs of its reduce flatten before GPU1's starts, 3 optimizer kernels.
    g0 = (p.h2d_us + p.bcast_flatten_us + 2 * p.gather_copy_us + 2 * p.loss_kernel_us + 2.0
          + 2 * p.loss_kernel_us + 8.0 + 3 * p.optim_kernel_us)
    assert e["steps"][(0, 0, 3)]["gpu0_only_us"] == g0
    s = VARIANTS["gpu0_serial"]
    _, e4 = write_dp_run(tmp_path, 4, "gpu0_serial")
    assert e4["steps"][(0, 2, 3)]["dp_phase_gpu_us"] == {
        "dp_scatter": 2 * s.scatter_copy_us, "dp_broadcast": s.bcast_nccl_us, "dp_gather": 0.0,
        "dp_reduce": s.reduce_flatten_us + s.reduce_nccl_us}
    d = DdpParams()
    _, dd = write_ddp_run(tmp_path, 2, straggler=1, delay_us=400.0)
    dev = dd["devices"]
    per_step_comm = d.bcast_us + sum(d.allreduce_us)
    assert dev[(1, 1)]["comm_kernel_time_us"] == 3 * per_step_comm
    assert dev[(0, 0)]["comm_kernel_time_us"] == 3 * (per_step_comm + 3 * 400.0)  # waits at 3 allreduces
    assert dd["steps"][(1, 1, 4)]["categories_us"]["compute"] - dd["steps"][(0, 0, 4)]["categories_us"][
        "compute"] == 400.0


def test_tied_collectives_have_no_straggler(tmp_path: Path) -> None:
    traces, expected = write_ddp_run(tmp_path, 2, straggler=None)
    a = pipeline.analyze([traces.parent])
    assert all(c["skew_us"] == 0.0 and c["last_rank"] is None for c in expected["collectives"])
    assert all(s.times_last == 0 for s in a.stragglers)
