"""Hand-built Analysis objects (plain data, following dpprof/analyze/model.py) for report tests."""

from __future__ import annotations

from dpprof.analyze.model import (
    CATEGORIES,
    Analysis,
    AnalysisWarning,
    DeviceSummary,
    Diagnosis,
    Finding,
    Hypothesis,
    KernelStat,
    RankInfo,
    StepBreakdown,
)


def _cats(**kw: float) -> dict[str, float]:
    return {c: float(kw.get(c, 0.0)) for c in CATEGORIES}


def dp_two_gpu() -> Analysis:
    """DP over GPU0 and GPU1, 3 steps of 20 ms; GPU0 does the serial DP phases."""
    steps = []
    for k in (3, 4, 5):
        steps.append(StepBreakdown(rank=0, device=0, step=k, duration_us=20000.0,
                                   categories_us=_cats(compute=9000, dp_scatter=500, dp_broadcast=3000,
                                                       dp_gather=700, dp_reduce=2800, host=1000, idle=3000),
                                   gpu0_only_us=7000.0, start_us=k * 20000.0, busy_us=16000.0,
                                   dp_phase_gpu_us={"dp_scatter": 480.0, "dp_broadcast": 2900.0,
                                                    "dp_gather": 650.0, "dp_reduce": 2750.0}))
        steps.append(StepBreakdown(rank=0, device=1, step=k, duration_us=20000.0,
                                   categories_us=_cats(compute=9000, dp_broadcast=900, dp_reduce=400,
                                                       idle=9700),
                                   start_us=k * 20000.0, busy_us=10300.0,
                                   dp_phase_gpu_us={"dp_broadcast": 900.0, "dp_reduce": 400.0}))
    diag = Diagnosis(
        hypotheses=(
            Hypothesis("data_path", "supported", "supported when GPU0-centred work >= 50 % of the excess",
                       "GPU0-centred work is 78.5 % of the 10.0 ms excess over the ideal step",
                       {"gpu0_centred_share_pct": 78.5, "excess_ms": 10.0, "bytes_through_gpu0_bytes": 117826128}),
            Hypothesis("hardware", "not_supported", "supported when replica compute differs by >= 15 %",
                       "replica compute differs by 0.0 % across GPUs", {"compute_spread_pct": 0.0}),
            Hypothesis("hyperparameters", "inconclusive", "needs a sweep over batch size and workers",
                       "no sweep was given; data loading is 0.0 % of the step", {"data_loading_pct": 0.0}),
        ),
        findings=(Finding("host_bound", "warning", "Host-side time <script>", "1.0 ms per step on the host",
                          {"host_ms": 1.0}),),
        advice=("Use DDP instead of DP for multi-GPU training.",),
        projection={"label": "projection", "assumptions": ["link 20 GB/s"],
                    "rows": [{"strategy": s, "gpus": n, "step_ms": 20.0 / n + (2 * n if s == "dp" else 1),
                              "scaling_efficiency": 1.0 / (1 + 0.1 * n)} for s in ("dp", "ddp") for n in (1, 2, 4)]},
    )
    return Analysis(
        strategy="dp", dp_mode="multi_device", output_device=0,
        ranks=(RankInfo(rank=0, path="x/rank0.pt.trace.json.gz", world_size=1, devices=(0, 1),
                        gpu_names={"0": "NVIDIA H200", "1": "NVIDIA H200"}, events=1234),),
        devices=(DeviceSummary(0, 0, 60000.0, 0.0, 48000.0, 3000.0, {"PtoP": 1_000_000}),
                 DeviceSummary(0, 1, 30000.0, 0.0, 31000.0, 900.0, {"PtoP": 500_000})),
        steps=tuple(steps),
        warnings=(AnalysisWarning("profile_all_threads_off", "replica threads' CPU ops not recorded"),),
        top_kernels=(KernelStat(0, 0, "void cudnn::conv<float>(...)", "compute", 39, 27000.0),
                     KernelStat(0, 0, "ncclDevKernel_Broadcast_RING_LL(...)", "communication", 21, 8000.0),
                     KernelStat(0, 1, "void cudnn::conv<float>(...)", "compute", 39, 27000.0)),
        diagnosis=diag,
    )
