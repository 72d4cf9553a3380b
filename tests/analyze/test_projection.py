"""The what-if projection: each term against its formula, the model reproduced by hand, labels and errors."""

from __future__ import annotations

import pytest

from dpprof.analyze.projection import BACKWARD_SHARE, DEFAULT_ALPHA_US, project
from dpprof.analyze.projection_terms import (
    MiB,
    cpu_compute_us,
    ddp_exposed_us,
    default_buckets,
    dp_comm_us,
    link_beta_from_fit,
    ring_allreduce_us,
)
from dpprof.manifest import manifest_of
from tests.analyze.diag_builders import analysis, dp4

P = 50_000_000  # parameter bytes
BETA = 1 / 25e3  # 25 GB/s -> µs per byte
RAW = {"config": {"batch_size": 128}, "model_info": {"param_bytes": P, "buffers_bytes": 0},
       "link_bandwidth": {"p2p_GBps": {"0->1": 25.0}}}
MANIFEST = manifest_of(RAW)


def row(proj, strategy, n):
    return next(r for r in proj["rows"] if r["strategy"] == strategy and r["gpus"] == n)


# ---- terms -----------------------------------------------------------------------------------------------
def test_ring_allreduce_and_the_fit_beta():
    assert ring_allreduce_us(1e6, 1, 10.0, 1e-3) == 0.0
    assert ring_allreduce_us(1e6, 4, 10.0, 1e-3) == pytest.approx(10.0 + 1.5 * 1e6 * 1e-3)
    # a fit at 2 ranks measures β_fit = 2(2-1)/2 β = β; at 4 ranks β_fit = 1.5 β
    assert link_beta_from_fit(3e-3, 2) == pytest.approx(3e-3)
    assert link_beta_from_fit(1.5e-3, 4) == pytest.approx(1e-3)


def test_default_buckets_follow_ddp():
    assert default_buckets(60 * MiB) == [1 * MiB, 25 * MiB, 25 * MiB, 9 * MiB]
    assert default_buckets(0.5 * MiB) == [0.5 * MiB]


def test_only_the_last_bucket_and_what_backward_cannot_hide_are_exposed():
    assert ddp_exposed_us([100.0, 200.0, 50.0], backward_us=1000.0) == 50.0
    assert ddp_exposed_us([100.0, 200.0, 50.0], backward_us=250.0) == 50.0 + 50.0
    assert ddp_exposed_us([], 10.0) == 0.0


def test_dp_data_path_per_backend():
    nccl = dp_comm_us(P, 1000, 4000, 4, "nccl", BETA, 5.0)
    assert nccl["broadcast_us"] == pytest.approx(5.0 * 3 + (P + 1000) * BETA)
    assert nccl["reduce_us"] == pytest.approx(5.0 * 3 + P * BETA)
    copies = dp_comm_us(P, 1000, 4000, 4, "copies", BETA, 5.0)
    assert copies["broadcast_us"] == pytest.approx(3 * (P + 1000) * BETA)
    assert copies["scatter_gather_us"] == pytest.approx(4000 * 3 / 4 * BETA)
    assert sum(dp_comm_us(P, 0, 0, 1, "nccl", BETA, 5.0).values()) == 0.0


def test_cpu_threads_per_process():
    # 2 cores: 1 process with 2 threads computed the batch in 1000 µs; 2 processes get 1 thread each.
    assert cpu_compute_us(1000.0, 2, 2, 2) == pytest.approx(1000.0)
    assert cpu_compute_us(1000.0, 1, 4, 16) == pytest.approx(1000.0 / 4 / 4)


# ---- the model -------------------------------------------------------------------------------------------
def test_single_gpu_profile_projects_dp_and_ddp_by_the_documented_model():
    # compute 8 ms of which the optimizer 0.5 ms; loading 0.6, host 0.3, copies 0.1 ms
    a = analysis("single", {(0, 0): {"compute": 8000, "data_loading": 600, "host": 300, "memcpy": 100}},
                 extra={(0, 0): {"optimizer_us": 500.0}})
    proj = project(a, MANIFEST, max_gpus=4)
    assert proj["label"] == "projection" and proj["available"] and proj["assumptions"]
    i = proj["inputs"]
    assert i["dp_backend"] == "nccl" and i["dp_backend_source"].startswith("assumed")
    assert any("CIFAR-shaped" in x for x in proj["assumptions"])  # no peer copies in a one-GPU profile
    assert (i["parallel_1_us"], i["optimizer_us"], i["host_1_us"]) == (7500, 500, 300)
    one = 9000.0
    assert row(proj, "dp", 1)["step_ms"] == pytest.approx(one / 1e3) == row(proj, "ddp", 1)["step_ms"]
    n = 4
    io = 128 * (3 * 32 * 32 * 4 + 40)
    # a single-GPU trace cannot show DP's backend: DP over distinct GPUs is projected with NCCL (torch's
    # comm.cpp takes it when available): one copy of the parameters each way through GPU0, 5 µs per hop
    dp_path = 2 * (5.0 * 3 + P * BETA) + io * 3 / 4 * BETA
    dp = 7500 / n + 500 + 600 + 100 + 300 * n + dp_path
    assert row(proj, "dp", n)["step_ms"] == pytest.approx(dp / 1e3, abs=1e-4)
    buckets = default_buckets(P)
    times = [ring_allreduce_us(b, n, DEFAULT_ALPHA_US["nccl"], BETA) for b in buckets]
    exposed = ddp_exposed_us(times, BACKWARD_SHARE * 7500 / n)
    ddp = 7500 / n + 500 + (600 + 100) / n + 300 + exposed
    r = row(proj, "ddp", n)
    assert r["step_ms"] == pytest.approx(ddp / 1e3, abs=1e-4)
    assert r["scaling_efficiency"] == pytest.approx(one / ddp / n, abs=1e-3)
    assert r["images_per_s"] == pytest.approx(128 / (ddp / 1e6), rel=1e-4)
    assert row(proj, "dp", 4)["scaling_efficiency"] < r["scaling_efficiency"]


def test_dp_fixed_costs_do_not_carry_into_ddp():
    """From a host-bound 4-GPU DP profile (40 ms of host, 36 ms of it inside DataParallel.forward), DDP keeps only
    the process's own 4 ms; DP pays a thread's 9 ms per replica."""
    dp = dp4({"compute": 10000, "host": 40000, "dp_broadcast": 2000}, {"compute": 10000, "idle": 42000},
             gpu0_serial=0.0, extra={(0, 0): {"host_in_dp_us": 36000.0}})
    p = project(dp, MANIFEST)
    i = p["inputs"]
    assert i["host_1_us"] == pytest.approx(4000) and i["dp_host_per_replica_us"] == pytest.approx(9000)
    assert i["replicas_profiled"] == 4 and "calibrated" in i["dp_transfer_source"]
    assert row(p, "ddp", 4)["fixed_ms"] == pytest.approx(4.0)
    assert row(p, "dp", 4)["fixed_ms"] == pytest.approx(4.0 + 4 * 9.0)
    assert row(p, "ddp", 4)["step_ms"] < 0.5 * row(p, "dp", 4)["step_ms"]
    # the measured 4-GPU transfer is reproduced at N = 4
    assert row(p, "dp", 4)["comm_ms"] == pytest.approx(2.0)


def test_the_h200_dp_trace_does_not_project_ddp_as_slow_as_dp(h200):
    """dp_dup00 (device_ids [0, 0], host-bound in its replica threads): DP's own host time stays with DP."""
    from dpprof.analyze.pipeline import analyze
    a = analyze([h200["dp_dup00"]], jobs=1)
    m = manifest_of({"config": {"batch_size": 128, "device_ids": [0, 0]},
                     "model_info": {"param_bytes": 58_913_064}})
    p = project(a, m, link_GBps=100.0)
    i = p["inputs"]
    assert i["replicas_profiled"] == 2 and "device_ids" in i["replicas_source"]
    assert i["dp_backend"] == "nccl"  # projected onto distinct GPUs, though the profile used the copy path
    assert i["host_1_us"] < 0.05 * i["dp_host_per_replica_us"]  # ~10 ms of the ~720 ms host is outside DP
    assert row(p, "ddp", 2)["step_ms"] < 0.2 * row(p, "dp", 2)["step_ms"]
    without = project(a, manifest_of({"config": {"batch_size": 128}, "model_info": {"param_bytes": 58_913_064}}),
                      link_GBps=100.0)
    # the trace alone: its two parallel_apply threads inside DataParallel.forward (one GPU, two replicas)
    assert without["inputs"]["replicas_profiled"] == 2 and "threads" in without["inputs"]["replicas_source"]
    assert row(without, "dp", 2)["step_ms"] == pytest.approx(row(p, "dp", 2)["step_ms"], rel=1e-3)
    assert row(without, "ddp", 2)["step_ms"] < 0.2 * row(without, "dp", 2)["step_ms"]


def test_manifest_buckets_and_the_allreduce_probe():
    m = manifest_of({**RAW, "ddp": {"bucket_sizes_bytes": [10 * MiB, 30 * MiB]},
                     "comm_probe": {"backend": "nccl", "world_size": 2, "alpha_us": 40.0, "beta_us_per_byte": 2e-4}})
    a = analysis("single", {(0, 0): {"compute": 8000}})
    p = project(a, m, max_gpus=2)
    assert p["inputs"]["buckets_bytes"] == [10 * MiB, 30 * MiB] and "probe" in p["inputs"]["comm_source"]
    times = [ring_allreduce_us(b, 2, 40.0, 2e-4) for b in (10 * MiB, 30 * MiB)]
    assert row(p, "ddp", 2)["comm_ms"] == pytest.approx(ddp_exposed_us(times, BACKWARD_SHARE * 8000 / 2) / 1e3,
                                                        abs=1e-4)


def test_cpu_profile_projects_gloo_ddp_with_the_thread_rule():
    m = manifest_of({"config": {"batch_size": 64, "threads": 2}, "model_info": {"param_bytes": 4_000_000},
                     "hardware": {"cpus": 2}})
    a = analysis("single", {(0, -1): {"compute": 100000, "host": 2000, "data_loading": 1000}})
    p = project(a, m, max_gpus=2, measured={("ddp", 2): 130.0})
    assert {r["strategy"] for r in p["rows"]} == {"ddp"}  # no DP without GPUs
    assert "default" in p["inputs"]["comm_source"] and p["inputs"]["comm_backend"] == "gloo"
    r = row(p, "ddp", 2)
    assert r["compute_ms"] == pytest.approx(100.0)  # two processes of one thread: no faster than one of two
    assert r["error_pct"] == pytest.approx(100 * (r["step_ms"] - 130.0) / 130.0, abs=0.1)


def test_declared_bandwidth_overrides_and_measured_rows_get_errors():
    a = analysis("single", {(0, 0): {"compute": 8000, "idle": 1000}})
    proj = project(a, MANIFEST, link_GBps=100.0, max_gpus=2, measured={("ddp", 2): 6.0, ("dp", 8): 20.0})
    assert "declared" in proj["inputs"]["comm_source"]
    r = row(proj, "ddp", 2)
    assert r["measured_step_ms"] == 6.0
    assert r["error_pct"] == pytest.approx(100 * (r["step_ms"] - 6.0) / 6.0, abs=0.1)
    assert row(proj, "dp", 8)["measured_step_ms"] == 20.0  # rows extend to cover measured N


@pytest.mark.parametrize("per,manifest,why", [
    ({(0, -1): {"compute": 5000}}, {"model_info": {"param_bytes": 10}}, "core count"),
    ({(0, 0): {"compute": 5000}}, {"link_bandwidth": {"p2p_GBps": {"0->1": 10}}}, "no parameter size"),
    ({(0, 0): {"compute": 5000}}, {"model_info": {"param_bytes": 10}}, "no link bandwidth"),
])
def test_unavailable_projection_says_why(per, manifest, why):
    proj = project(analysis("single", per), manifest_of(manifest))
    assert proj["label"] == "projection" and not proj["available"] and proj["rows"] == []
    assert why in proj["reason"]


def test_ddp_is_projected_over_the_backend_the_run_used(h200):
    """The H200 gloo fixture ran DDP over gloo on GPUs: its allreduce is projected over the host, not the peer link."""
    from dpprof.analyze.pipeline import analyze
    a = analyze([h200["ddp2_gloo_rank0"], h200["ddp2_gloo_rank1"]], jobs=1)
    m = manifest_of({"config": {"batch_size": 64}, "model_info": {"param_bytes": 58_913_064}})
    p = project(a, m, link_GBps=100.0)
    assert p["inputs"]["comm_backend"] == "gloo" and "distributedInfo" in p["inputs"]["comm_backend_source"]
    assert "gloo over the host" in p["inputs"]["comm_source"]
    nccl = project(a, manifest_of({"config": {"batch_size": 64, "backend": "nccl"},
                                   "model_info": {"param_bytes": 58_913_064}}), link_GBps=100.0)
    assert nccl["inputs"]["comm_backend"] == "nccl" and "config.backend" in nccl["inputs"]["comm_backend_source"]
    assert row(nccl, "ddp", 2)["comm_ms"] < row(p, "ddp", 2)["comm_ms"]  # 100 GB/s link vs 2 GB/s host


def test_buckets_counted_from_a_ddp_trace_without_a_manifest(h200):
    from dpprof.analyze.pipeline import analyze
    a = analyze([h200["ddp2_gloo_rank0"], h200["ddp2_gloo_rank1"]], jobs=1)
    p = project(a, manifest_of({"model_info": {"param_bytes": 60_000_000}}), link_GBps=100.0)
    b = p["inputs"]["buckets_bytes"]
    assert p["inputs"]["buckets_source"].startswith("trace:") and len(b) >= 1
    assert sum(b) == pytest.approx(60_000_000, abs=len(b)) and max(b) - min(b) <= 1


def test_dp_is_priced_over_the_peer_link_whatever_ddp_runs_over(h200):
    """A gloo DDP profile: DDP over the host, DP's NCCL broadcast/reduce over GPU0's peer link (not gloo's 2 GB/s),
    one copy of the parameters each way (a DDP profile cannot show DP's backend: NCCL assumed)."""
    from dpprof.analyze.pipeline import analyze
    a = analyze([h200["ddp2_gloo_rank0"], h200["ddp2_gloo_rank1"]], jobs=1)
    p = project(a, manifest_of({"model_info": {"param_bytes": P}}), link_GBps=100.0)
    i = p["inputs"]
    assert i["comm_backend"] == "gloo" and i["dp_backend"] == "nccl" and "ddp profile" in i["dp_backend_source"]
    assert i["dp_beta_us_per_byte"] == pytest.approx(1 / 100e3) and "declared" in i["dp_link_source"]
    assert row(p, "dp", 2)["comm_ms"] == pytest.approx(2 * (5.0 + P / 100e3) / 1e3, rel=1e-3)
    # no peer link at all and DDP over gloo: DP is not projected, and the page says why
    bare = project(a, manifest_of({"model_info": {"param_bytes": P}}))
    assert {r["strategy"] for r in bare["rows"]} == {"ddp"}
    assert any(x.startswith("DP is not projected: no peer-link bandwidth") for x in bare["assumptions"])
