"""Turn one :class:`~dpprof.analyze.run.Run` into the values the templates show.

No file is read here and nothing is drawn: every figure comes from the run's Analysis, manifest or step
records. Times are shown in milliseconds unless a column says µs.
"""

from __future__ import annotations

import os
import urllib.parse
from collections import defaultdict
from pathlib import Path
from typing import Any

from dpprof.analyze.model import CATEGORIES, Analysis, Diagnosis
from dpprof.analyze.run import Run
from dpprof.manifest import EMPTY
from dpprof.report import fmt
from dpprof.report.plots import device_label
from dpprof.vocabulary import DP_MODES, DP_PHASES, STRATEGY_NAMES, StrategyName

#: Kernels listed per device in the top-kernels table.
TOP_KERNELS = 10
MAX_STEP_ROWS = 240


def link(path: Path, out: Path | None) -> str:
    """URL of ``path`` relative to the folder the report is written to (or to the working directory)."""
    base = out.resolve().parent if out is not None else Path.cwd()
    rel = os.path.relpath(path.resolve(), base)
    return urllib.parse.quote(Path(rel).as_posix())


def dp_mode(run: Run) -> str | None:
    a = run.analysis
    return a.dp_mode or ((run.manifest or EMPTY).dp_mode if a.strategy == "dp" else None)


def step_median_ms(analysis: Analysis) -> float | None:
    durations = {(s.rank, s.step): s.duration_us for s in analysis.steps}
    m = fmt.median(list(durations.values()))
    return None if m is None else m / 1000.0


def unprofiled_ms(run: Run) -> tuple[float | None, str]:
    """Median step time without the profiler (ms) and where it comes from."""
    prof = (run.manifest or EMPTY).profiler
    m = prof.unprofiled_step_ms_median
    if m is not None and m > 0:
        return m, f"manifest profiler section ({prof.unprofiled_basis or 'steps without the profiler'})"
    plain = [t.wall_ms for t in run.step_times if not t.profiled]
    return fmt.median(plain), "steps.rank*.jsonl, steps with the profiler off"


def throughput(run: Run) -> tuple[float | None, str]:
    """Images per second (global) without the profiler, and where the figure comes from."""
    manifest = run.manifest or EMPTY
    batch = manifest.config.batch_size
    med, _ = unprofiled_ms(run)
    if batch is not None and med:
        return batch / (med / 1000.0), f"global batch {batch} ÷ unprofiled median step"
    ips = manifest.summary.images_per_s_median
    if ips is not None and ips > 0:
        # Manifests before summary.median_basis took the median over all steps, profiled ones included.
        basis = manifest.summary.median_basis
        over = "all steps, profiled ones included" if basis in (None, "all_steps") else "unprofiled steps"
        return ips, f"manifest summary (median over {over})"
    return None, "unknown: the trace does not record the batch size (no manifest)"


def _strategy_tile(strategy: str, mode: str | None) -> tuple[str, str]:
    name = STRATEGY_NAMES.get(strategy, StrategyName(strategy, ""))
    return name.short, " · ".join(x for x in (name.long, mode) if x)


def overview(run: Run) -> dict[str, Any]:
    """Headline sentences and the key-figure tiles at the top of the report."""
    analysis, manifest = run.analysis, run.manifest or EMPTY
    mode = dp_mode(run)
    sentences = []
    if analysis.strategy == "dp" and mode in DP_MODES:
        sentences.append(DP_MODES[mode].sentence)
    devices = sorted({(r.rank, d) for r in analysis.ranks for d in r.devices})
    gpu_text = ", ".join(device_label(r, d, len(analysis.ranks) > 1) for r, d in devices) or "none (CPU only)"
    plain, plain_source = unprofiled_ms(run)
    ips, ips_source = throughput(run)
    short, long = _strategy_tile(analysis.strategy, mode)
    tiles = [
        ("Strategy", short, " · ".join(x for x in (long, analysis.strategy_evidence) if x)),
        ("Ranks", str(len(analysis.ranks)), f"GPUs with activity: {gpu_text}"),
        ("Profiled step (median)", f"{fmt.num(step_median_ms(analysis))} ms",
         f"{len({(s.rank, s.step) for s in analysis.steps})} rank-steps in the profiler window"),
        ("Step, unprofiled (median)", f"{fmt.num(plain)} ms" if plain else "–",
         plain_source if plain else "no step recorded without the profiler"),
        ("Throughput", f"{fmt.num(ips)} img/s" if ips else "–", ips_source),
    ]
    ratio = manifest.profiler.overhead_ratio
    if ratio is not None:
        tiles.append(("Profiler distortion", f"×{ratio:.2f}", "profiled ÷ unprofiled median step time"))
    model = manifest.model_info
    if model.name:
        tiles.append(("Model", model.name, f"{fmt.num(model.params)} parameters, {fmt.size(model.param_bytes)}"))
    batch = manifest.config.batch_size
    if batch is not None:
        tiles.append(("Batch size (global)", fmt.num(batch),
                      f"{fmt.num(manifest.config.per_rank_batch_size)} per rank"))
    if manifest.status:
        tiles.append(("Run status", manifest.status, "manifest.json"))
    return {"sentences": sentences, "tiles": tiles}


def diagnosis_view(diag: Diagnosis | None) -> dict[str, Any] | None:
    """The verdict box: three hypotheses with verdict, rule, reason and evidence; findings; advice."""
    if diag is None:
        return None
    hyps = []
    for h in diag.hypotheses:
        hyps.append({"id": h.id, "title": fmt.HYPOTHESIS_TITLES.get(h.id, h.id),
                     "question": fmt.HYPOTHESIS_QUESTIONS.get(h.id, ""), "verdict": h.verdict,
                     "verdict_label": fmt.VERDICT_LABELS.get(h.verdict, h.verdict), "rule": h.rule,
                     "reason": h.reason, "evidence": fmt.rows(h.evidence)})
    order = {"critical": 0, "warning": 1, "info": 2}
    findings = [{"id": f.id, "severity": f.severity, "title": f.title, "detail": f.detail,
                 "evidence": fmt.rows(f.evidence)}
                for f in sorted(diag.findings, key=lambda f: (order.get(f.severity, 3), f.id))]
    return {"hypotheses": hyps, "findings": findings, "advice": list(diag.advice)}


def step_table(analysis: Analysis) -> dict[str, Any]:
    """Per profiled step and device: duration, exclusive categories (ms), then what lies beside them: the ``comm``
    category by collective kind (ms), DP phase GPU work and DP phase host time (µs), each only when some row has
    it."""
    steps = sorted(analysis.steps, key=lambda s: (s.rank, s.device, s.step))
    multi = len({s.rank for s in steps}) > 1
    always = {"compute", "idle"} | (set(DP_PHASES) if analysis.strategy == "dp" else set())
    cats = [c for c in CATEGORIES if c in always or any(s.categories_us.get(c, 0.0) > 0 for s in steps)]
    kinds = sorted({k for s in steps for k, v in s.comm_by_kind_us.items() if v > 0})
    phase_cols = [p for p in DP_PHASES if any(p in s.dp_phase_gpu_us for s in steps)] \
        if analysis.strategy == "dp" else []
    host_cols = [p for p in DP_PHASES if any(p in s.dp_host_us for s in steps)]
    has_gpu0 = any(s.gpu0_only_us is not None for s in steps)
    has_overlap = any(s.comm_overlapped_us > 0 for s in steps)
    rows = []
    for s in steps[:MAX_STEP_ROWS]:
        cells = [fmt.ms(s.duration_us)] + [fmt.ms(s.categories_us.get(c, 0.0)) for c in cats]
        cells.append(fmt.ms(s.busy_us) if s.device >= 0 else "–")  # a host row has no GPU
        cells += [fmt.ms(s.comm_by_kind_us.get(k, 0.0)) for k in kinds]
        cells += [fmt.num(s.dp_phase_gpu_us.get(p), 4) if p in s.dp_phase_gpu_us else "–" for p in phase_cols]
        cells += [fmt.num(s.dp_host_us.get(p), 4) if p in s.dp_host_us else "–" for p in host_cols]
        if has_gpu0:
            cells.append(fmt.ms(s.gpu0_only_us))
        if has_overlap:
            cells.append(fmt.ms(s.comm_overlapped_us))
        rows.append({"label": f"{device_label(s.rank, s.device, multi)} · step {s.step}", "cells": cells})
    columns = ["step"] + list(cats) + ["GPU busy"]
    columns += [f"comm: {k}" for k in kinds]
    columns += [f"GPU in {p} (µs)" for p in phase_cols]
    columns += [f"host in {p} (µs)" for p in host_cols]
    columns += ["GPU0-only"] if has_gpu0 else []
    columns += ["comm. overlapped"] if has_overlap else []
    more = len(steps) - MAX_STEP_ROWS
    return {"columns": columns, "rows": rows, "categories": cats, "comm_kinds": kinds, "dp_host": host_cols,
            "note": f"{more} more rows not shown" if more > 0 else ""}


def devices_table(analysis: Analysis) -> list[list[str]]:
    multi = len(analysis.ranks) > 1
    out = []
    for d in sorted(analysis.devices, key=lambda d: (d.rank, d.device)):
        copies = ", ".join(f"{k} {fmt.size(v)}" for k, v in sorted(d.memcpy_bytes.items())) or "none"
        out.append([device_label(d.rank, d.device, multi), fmt.ms(d.kernel_time_us), fmt.ms(d.comm_kernel_time_us),
                    fmt.ms(d.memcpy_time_us), fmt.ms(d.busy_time_us), copies])
    return out


def kernels_view(analysis: Analysis) -> list[dict[str, Any]]:
    """Top kernels per device, by total time over the profiled steps."""
    groups: dict[tuple[int, int], list[Any]] = defaultdict(list)
    for k in analysis.top_kernels:
        groups[(k.rank, k.device)].append(k)
    totals = {(d.rank, d.device): d.kernel_time_us + d.memcpy_time_us for d in analysis.devices}
    multi = len(analysis.ranks) > 1
    out = []
    for key, ks in sorted(groups.items()):
        top = sorted(ks, key=lambda k: (-k.total_us, k.name))[:TOP_KERNELS]
        out.append({"device": device_label(key[0], key[1], multi), "rows": [
            {"name": k.name, "short": k.name if len(k.name) <= 96 else k.name[:93] + "…", "category": k.category,
             "count": fmt.num(k.count), "total": fmt.ms(k.total_us), "mean": fmt.num(k.total_us / max(k.count, 1)),
             "share": fmt.pct(k.total_us, totals.get(key, 0.0))} for k in top]})
    return out


def comm_view(analysis: Analysis) -> dict[str, Any]:
    """Collectives matched across their participants: who arrived last, the waiting it caused, the clocks."""
    worst = sorted(analysis.collectives, key=lambda c: (-c.start_skew_us, c.group, c.index))[:10]
    return {
        "collectives": len(analysis.collectives),
        "summary": analysis.straggler_summary.get("text", ""),
        "worst": [[c.group, str(c.index), c.name, "–" if c.step is None else str(c.step), fmt.ms(c.start_skew_us, 3),
                   c.last or "tie", fmt.ms(c.transfer_us, 3)] for c in worst],
        "stragglers": [[s.participant or f"rank {s.rank}", f"{s.times_last} of {s.collectives}",
                        fmt.ms(s.mean_lateness_us, 3), fmt.ms(s.caused_wait_us, 3)]
                       for s in analysis.stragglers],
        "clocks": [[f"rank {o.rank}", f"{o.offset_us:+.1f}", "–" if o.residual_us is None else f"{o.residual_us:.1f}",
                    str(o.collectives), o.source] for o in analysis.clock_offsets],
    }


def environment(run: Run) -> list[dict[str, Any]]:
    """Configuration and environment tables from the manifest, or from the traces when there is none."""
    analysis, m = run.analysis, run.manifest
    sections = []
    if m is not None:
        sections.append({"title": "Configuration", "rows": fmt.rows(m.config.shown())})
        sections.append({"title": "Versions", "rows": fmt.rows(m.versions)})
        hw_rows = fmt.rows(m.hardware.shown(), skip=("gpus",))
        for g in m.hardware.gpus or []:
            hw_rows.append((f"GPU{g.cuda_index}", f"{g.name} · {fmt.size(g.memory_total_bytes)} · "
                            f"NVML index {g.nvml_index}"))
        sections.append({"title": "Hardware", "rows": hw_rows})
        sections.append({"title": "Link bandwidth (measured at collection)", "rows": fmt.rows(m.link_bandwidth.shown())})
        sections.append({"title": "Profiler window and distortion", "rows": fmt.rows(m.profiler.shown())})
        # Run speed over unprofiled steps (summary.median_basis says which); DDP's buckets and settings.
        sections.append({"title": "Run summary", "rows": fmt.rows(m.summary.shown())})
        sections.append({"title": "DDP buckets and settings (from the reducer)",
                         "rows": fmt.rows(m.ddp.shown() if m.ddp is not None else None)})
        for title, section in (("FSDP", m.fsdp), ("Script (dpprof run)", m.script),
                               ("Steps of the script (dpprof run)", m.stepping)):
            if section is not None:
                sections.append({"title": title, "rows": fmt.rows(section.shown())})
        sections.append({"title": "Model and data", "rows": fmt.rows(m.model_info.shown()) + fmt.rows(m.data_info.shown())})
        if m.peak_memory_bytes:
            sections.append({"title": "Peak GPU memory", "rows": fmt.rows(m.peak_memory_bytes)})
    rank_rows = []
    for r in sorted(analysis.ranks, key=lambda r: r.rank):
        gpus = ", ".join(f"{k}: {v}" for k, v in sorted(r.gpu_names.items())) or "none"
        rank_rows.append((f"rank {r.rank}", f"world size {fmt.num(r.world_size)} · backend {r.backend or '–'} · "
                                           f"GPUs {gpus} · torch {r.torch_version or '–'} · all threads profiled: "
                                           f"{fmt.num(r.profile_all_threads)} · {fmt.num(r.events)} events"))
    sections.append({"title": "Traces as recorded", "rows": rank_rows})
    return [s for s in sections if s["rows"]]


def warnings(run: Run) -> list[str]:
    out = []
    for w in run.analysis.warnings:
        where = f" (rank {w.rank})" if w.rank is not None else ""
        count = f" ×{w.count}" if w.count != 1 else ""
        out.append(f"[{w.code}]{where}{count} {w.message}")
    out += [f"[manifest] {w}" for w in (run.manifest or EMPTY).warnings or []]
    out += [f"[nvml] {w}" for w in (getattr(run.nvml, "warnings", None) or []) if isinstance(w, str)]
    out += [f"[report] {n}" for n in run.notes]
    return out
