"""Diagnosis of a run: the three hypotheses, findings, advice and the what-if projection (pure).

``diagnose(analysis, manifest, nvml, baseline, baseline_manifest, sweep) -> Diagnosis``; attach it with
``analysis.with_diagnosis(d)`` so the analysis JSON gains ``"diagnosis": {"hypotheses": [...], ...}``.
Rules and thresholds: :mod:`dpprof.analyze.hypotheses` (each Hypothesis states its own rule) and
:mod:`dpprof.analyze.findings`; the projection model: :mod:`dpprof.analyze.projection`.
Advice is derived from the measured numbers only: no number in it is invented.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dpprof.analyze.diag_figures import Context, nvml_per_gpu, reference_row
from dpprof.analyze.findings import EXPOSED_COMM_PCT, bucket_advice, findings
from dpprof.analyze.hypotheses import data_path, hardware, hyperparameters
from dpprof.analyze.model import Analysis, Diagnosis, Finding, Hypothesis
from dpprof.analyze.projection import project
from dpprof.analyze.sweep_model import SweepResult
from dpprof.manifest import EMPTY, Manifest
from dpprof.vocabulary import COLLECTIVE_STRATEGIES

#: Data loading above this share of the step gets loader advice (the finding starts at 20 %).
LOADER_ADVICE_PCT = 10.0


def diagnose(analysis: Analysis, manifest: Manifest | None = None, nvml: Any = None,
             baseline: Analysis | None = None, baseline_manifest: Manifest | None = None,
             sweep: SweepResult | None = None, link_gbps: float | None = None,
             param_bytes: int | None = None) -> Diagnosis:
    """Test the three hypotheses on ``analysis`` and derive findings, advice and a projection.

    ``manifest``: the run's manifest.json (config, model_info, link_bandwidth, profiler figures).
    ``nvml``: ``dpprof.trace.nvml_samples.NvmlData`` of the run. ``baseline``: a single-GPU analysis of the
    same configuration (DP's ideal step = its compute / N plus the loading and host time DP measured). ``sweep``: for the hyperparameter question and
    measured step times beside the projection. ``link_gbps`` / ``param_bytes``: a declared link bandwidth
    (GB/s) and model size (bytes) for the projection where the manifest has none (foreign traces).
    """
    ctx = Context(analysis=analysis, manifest=manifest or EMPTY, nvml=nvml_per_gpu(nvml), baseline=baseline,
                  baseline_manifest=baseline_manifest or EMPTY, sweep=sweep)
    hyps = (data_path(ctx), hardware(ctx), hyperparameters(ctx))
    found = findings(ctx)
    proj = project(analysis, manifest, link_GBps=link_gbps, measured=_measured_from_sweep(sweep, ctx.manifest),
                   param_bytes=param_bytes)
    return Diagnosis(hypotheses=hyps, findings=found, advice=tuple(advice(ctx, hyps, found, proj)),
                     projection=proj)


def _measured_from_sweep(sweep: SweepResult | None, manifest: Manifest) -> dict[tuple[str, int], float]:
    """Measured median step times (ms) of the sweep points with this run's batch size and workers."""
    batch, workers = manifest.config.batch_size, manifest.config.workers
    if sweep is None or batch is None or workers is None:
        return {}  # without the run's batch and workers no sweep point is known to be the same configuration
    return {(p.strategy, p.gpus): p.step_ms_median for p in sweep.points
            if p.status == "done" and p.step_ms_median and p.strategy in ("dp", "ddp")
            and p.batch_size == batch and p.workers == workers}


def _proj_row(proj: Mapping[str, Any], strategy: str, n: int) -> Mapping[str, Any] | None:
    return next((r for r in proj.get("rows", ()) if r["strategy"] == strategy and r["gpus"] == n), None)


def advice(ctx: Context, hyps: tuple[Hypothesis, ...], found: tuple[Finding, ...],
           proj: Mapping[str, Any]) -> list[str]:
    """Concrete advice on the strategy and its settings, each item backed by a figure of this run."""
    a, m = ctx.analysis, ctx.manifest
    h = {x.id: x for x in hyps}
    f = {x.id: x for x in found}
    out: list[str] = []
    n = int(h["data_path"].evidence.get("n_gpus") or h["hardware"].evidence.get("n_gpus") or 1)
    batch = m.config.batch_size
    if a.strategy == "dp":
        if a.dp_mode == "no_gpu":
            out.append("DP had no GPU to split the batch over, so nothing ran in parallel. For data parallelism "
                       "on CPUs use DDP with gloo processes (dpprof profile --strategy ddp --nproc N); on a GPU "
                       "machine use DDP with one process per GPU (torchrun --nproc-per-node N).")
        elif a.dp_mode == "one_device":
            out.append("With one GPU, DataParallel only adds a Scatter per step: train the plain module, "
                       "and use DDP (one process per GPU) when more GPUs are available.")
        else:
            ev = h["data_path"].evidence
            if h["data_path"].verdict == "supported":
                wi = ev.get("whatif") or {}
                why = (f"here GPU0's step would be up to {wi['saving_bound_us'] / 1e3:.2f} ms shorter without the "
                       f"data path, {ev['saving_share_of_excess_pct']:.0f} % of its excess over ideal")
            elif "host_bound" in f:
                why = f"here the DP step was {f['host_bound'].evidence['host_pct']} % host time in its replica threads"
            else:
                why = ""
            out.append("Use DistributedDataParallel instead of DataParallel for multi-GPU training (torchrun "
                       f"--nproc-per-node N, one process per GPU){': ' + why if why else ''}; DDP's allreduce "
                       "is spread over all links and overlaps backward, and there is no per-step replicate.")
    if "host_bound" in f and a.strategy == "dp" and a.dp_mode == "multi_device":
        out.append(f"The DP step is host-bound ({f['host_bound'].evidence['host_pct']} % host time): DP starts "
                   "fresh replica threads every step, which redo cuDNN autotuning when "
                   "torch.backends.cudnn.benchmark=True; set it to False under DP, or move to DDP, whose "
                   "processes keep their tuned plans.")
    elif "host_bound" in f:
        out.append(f"Steps are host-bound ({f['host_bound'].evidence['host_pct']} % host time): raise the work "
                   "per launch (larger per-GPU batch), or reduce Python overhead (torch.compile, CUDA graphs).")
    if a.strategy in COLLECTIVE_STRATEGIES:
        if "no_comm" in f:
            out.append("DDP with world size 1 communicates nothing and only adds wrappers: train the plain "
                       "module on one GPU, DDP from 2 processes up." if a.strategy == "ddp" else
                       "No collective ran in the profiled steps: with one process there is nothing to communicate.")
        ex = f.get("exposed_comm")
        shape = f["ddp_buckets"].evidence.get("shape") if "ddp_buckets" in f else None
        if ex is not None and ex.evidence["exposed_comm_pct"] >= EXPOSED_COMM_PCT:
            # The bucket finding, when present, says which way bucket_cap_mb should move.
            cap = "" if shape in ("one_bucket", "few_large", "many_small", "balanced") or a.strategy != "ddp" else \
                "a smaller bucket_cap_mb (default 25) so communication starts earlier, "
            tips = ("gradient_as_bucket_view=True, static_graph=True for a fixed graph, " if a.strategy == "ddp"
                    else "prefetching (FSDP: forward/backward prefetch) so collectives start earlier, ")
            out.append(f"{ex.evidence['exposed_comm_pct']} % of the {a.strategy.upper()} step is collective transfer "
                       f"not hidden behind compute (overlap {ex.evidence['overlap_ratio']:.0%}): try {cap}{tips}"
                       "and check the GPU links (NVLink/P2P vs PCIe).")
        tip = bucket_advice(f["ddp_buckets"]) if "ddp_buckets" in f and "no_comm" not in f else None
        if tip:
            out.append(tip)
    if a.strategy in ("single", "unknown") or (a.strategy == "ddp" and "no_comm" in f):
        r1, r2 = _proj_row(proj, "dp", 2), _proj_row(proj, "ddp", 2)
        if r1 and r2:
            out.append(f"Projection for 2 GPUs (a model, not a measurement): DP {r1['step_ms']} ms/step "
                       f"(efficiency {r1['scaling_efficiency']}), DDP {r2['step_ms']} ms/step "
                       f"(efficiency {r2['scaling_efficiency']}).")
    if batch:
        per = batch // max(n, 1)
        rule = m.config.lr_rule
        out.append(f"Batch and learning rate: this run's global batch is {batch} ({per} per GPU over {n}). "
                   "Adding GPUs at a fixed per-GPU batch multiplies the global batch: scale the learning rate "
                   "linearly with it (with a few warm-up epochs) or accuracy per epoch drops; to compare DP and "
                   "DDP accuracy, use the same global batch and LR rule"
                   + (f" (this run: {rule})." if rule else "."))
    ref = reference_row(a)
    if ref is not None:
        dl = ref.pct(ref.categories_us["data_loading"])
        workers = m.config.workers
        if dl >= LOADER_ADVICE_PCT:
            out.append(f"Data loading takes {dl:.0f} % of the step"
                       + (f" with {workers} workers" if workers is not None else "")
                       + ": raise DataLoader num_workers (DDP: per process), use pin_memory=True and "
                       "persistent_workers=True, and keep augmentation on the GPU where possible.")
    for x in found:
        if x.id == "straggler":
            who = x.evidence["participant"]
            late = x.evidence.get("mean_lateness_us")
            cost = x.evidence.get("caused_wait_pct_of_step")
            out.append(f"{who} arrives last at collectives"
                       + (f" by {late / 1e3:.2f} ms on average" if late is not None else "")
                       + (f" and costs the others {cost} % of a step" if cost is not None else "") + ": check "
                       + ("that rank's data loader, host load and GPU clocks." if who.startswith("rank") else
                          "that GPU's clocks, power and temperature (nvidia-smi -q -d PERFORMANCE) and what else runs "
                          "on it."))
    if h["hardware"].verdict == "supported":
        out.append(f"Hardware: {h['hardware'].reason}. Check cooling and power caps (nvidia-smi -q -d "
                   "PERFORMANCE) and the topology (nvidia-smi topo -m) before tuning software.")
    hp = h["hyperparameters"].evidence
    if h["hyperparameters"].verdict == "supported":
        for axis, label in (("batch_size", "batch size"), ("total_workers", "total loader workers")):
            gaps = hp.get(f"gap_by_{axis}") or {}
            if len(gaps) >= 2:
                best = max(gaps, key=lambda k: gaps[k])
                out.append(f"In the sweep, DP's gap to DDP at {hp['gpus']} GPUs (DP's scaling efficiency minus "
                           f"DDP's) is smallest at {label} {best} ({gaps[best]:+.2f}, against "
                           f"{min(gaps.values()):+.2f} at worst): tune that setting before judging DP.")
    if "profiler_distortion" in f:
        out.append(f"The profiler made steps {f['profiler_distortion'].evidence['overhead_ratio']}× slower: "
                   "judge speed by unprofiled step times, and turn off record_shapes/with_stack when not needed.")
    return out
