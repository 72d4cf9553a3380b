"""The what-if projection: its documented model reproduced by hand, labels, measured-vs-projected rows."""

from __future__ import annotations

import pytest

from dpprof.analyze.projection import DEFAULT_OVERLAP, project
from tests.analyze.diag_builders import analysis, dp4

P = 50_000_000  # parameter bytes
MANIFEST = {"config": {"batch_size": 128}, "model_info": {"param_bytes": P, "buffers_bytes": 0},
            "link_bandwidth": {"p2p_GBps": {"0->1": 25.0}}}


def row(proj, strategy, n):
    return next(r for r in proj["rows"] if r["strategy"] == strategy and r["gpus"] == n)


def test_single_gpu_profile_projects_dp_and_ddp_by_the_documented_model():
    # compute 8 ms, fixed (data loading + idle) 1 ms; bw 25 GB/s → 1 byte = 1/25e3 µs.
    a = analysis("single", {(0, 0): {"compute": 8000, "data_loading": 600, "idle": 400}})
    proj = project(a, MANIFEST, max_gpus=4)
    assert proj["label"] == "projection" and proj["available"] and proj["assumptions"]
    assert proj["inputs"]["compute_1gpu_us"] == 8000 and proj["inputs"]["fixed_us"] == 1000
    assert row(proj, "dp", 1)["step_ms"] == pytest.approx(9.0) == row(proj, "ddp", 1)["step_ms"]
    n = 4
    act = 128 * (3 * 32 * 32 * 4 + 40) * (n - 1) / n
    dp = 8000 / n + 1000 + (2 * P * (n - 1) + act) / 25e3
    assert row(proj, "dp", n)["step_ms"] == pytest.approx(dp / 1e3, abs=1e-4)
    ar = 2 * (n - 1) / n * P / 25e3
    ddp = 8000 / n + 1000 + max(ar * (1 - DEFAULT_OVERLAP), ar - 2 / 3 * 8000 / n)
    assert row(proj, "ddp", n)["step_ms"] == pytest.approx(ddp / 1e3, abs=1e-4)
    assert row(proj, "ddp", n)["scaling_efficiency"] == pytest.approx(9000 / ddp / n, abs=1e-3)
    assert row(proj, "ddp", n)["images_per_s"] == pytest.approx(128 / (ddp / 1e6), rel=1e-4)
    # DP's serialized data path grows with N: its efficiency falls below DDP's
    assert row(proj, "dp", 4)["scaling_efficiency"] < row(proj, "ddp", 4)["scaling_efficiency"]


def test_declared_bandwidth_overrides_and_measured_rows_get_errors():
    a = analysis("single", {(0, 0): {"compute": 8000, "idle": 1000}})
    proj = project(a, MANIFEST, link_GBps=100.0, max_gpus=2, measured={("ddp", 2): 6.0, ("dp", 8): 20.0})
    assert proj["inputs"]["link_source"] == "declared"
    r = row(proj, "ddp", 2)
    assert r["measured_step_ms"] == 6.0
    assert r["error_pct"] == pytest.approx(100 * (r["step_ms"] - 6.0) / 6.0, abs=0.1)
    assert row(proj, "dp", 8)["measured_step_ms"] == 20.0  # rows extend to cover measured N


def test_dp_profile_calibrates_dp_cost_and_ddp_profile_measures_overlap():
    dp = dp4({"compute": 10000, "dp_broadcast": 6000}, {"compute": 10000, "idle": 6000})
    p = project(dp, MANIFEST)
    assert "calibrated" in p["inputs"]["dp_cost_source"]
    assert row(p, "dp", 4)["comm_ms"] == pytest.approx(6.0)  # reproduces the measured 4-GPU phases
    assert row(p, "dp", 2)["comm_ms"] == pytest.approx(2.0)
    ddp = analysis("ddp", {(0, 0): {"compute": 8000, "comm": 1000}, (1, 1): {"compute": 8000, "comm": 1000}},
                   overlapped={(0, 0): 3000, (1, 1): 3000})
    q = project(ddp, MANIFEST)
    assert q["inputs"]["overlap"] == pytest.approx(0.75) and q["inputs"]["overlap_source"] == "measured DDP overlap ratio"


@pytest.mark.parametrize("per,manifest,why", [
    ({(0, -1): {"compute": 5000}}, MANIFEST, "no GPU activity"),
    ({(0, 0): {"compute": 5000}}, {"link_bandwidth": {"p2p_GBps": {"0->1": 10}}}, "no parameter size"),
    ({(0, 0): {"compute": 5000}}, {"model_info": {"param_bytes": 10}}, "no link bandwidth"),
])
def test_unavailable_projection_says_why(per, manifest, why):
    proj = project(analysis("single", per), manifest)
    assert proj["label"] == "projection" and not proj["available"] and proj["rows"] == []
    assert why in proj["reason"]
