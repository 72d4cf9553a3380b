"""``analyze(paths) -> Analysis``: load every rank (in a bounded process pool), attribute, combine.

Attribution is two-phase. Each worker loads one trace and returns only a ``RankSummary`` (provisional step
rows, device figures, top kernels, the rank's collective executions and the pieces of its rows they cover,
warnings); the parent matches the executions across ranks, finds each collective's last arrival and moves the
waiting out of ``comm``/``dp_*`` into ``peer_wait`` (``dpprof.analyze.combine``). The parent's memory grows
with collectives, not with events or ranks.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from dpprof.analyze import attribution, matching, strategy
from dpprof.analyze.attribution import Pieces
from dpprof.analyze.combine import combine, combine_all  # noqa: F401 (combine: the parent's half, re-exported)
from dpprof.analyze.device_stats import device_summaries, top_kernels
from dpprof.analyze.dp_output import output_device as find_output_device
from dpprof.analyze.model import (
    Analysis,
    AnalysisWarning,
    StepBreakdown,
)
from dpprof.analyze.rank_summary import RankSummary
from dpprof.analyze.segments import Segments
from dpprof.errors import TraceError
from dpprof.manifest import Manifest, read_manifest
from dpprof.rundir import resolve_inputs
from dpprof.trace import classify as C
from dpprof.trace.link import host_class, link
from dpprof.trace.load import K_CPU_OP, K_OTHER, K_RUNTIME, RankTrace, load_trace


def summarize(path: str, segments: bool = False, max_inflate: int | None = None) -> RankSummary:
    """Load and attribute one trace file. Runs in a worker process; pure apart from reading ``path``.

    ``segments``: also keep every run of every step row (``RankSummary.segments``) for timeline views;
    ``max_inflate``: most bytes a gzip trace may inflate to (``dpprof.trace.inflate``)."""
    rt = load_trace(path, max_inflate)
    gpu_cls, cpu_cls = C.classify_names(rt.names)
    hcls = host_class(rt, np.array(cpu_cls, dtype=np.int16))
    communicates = rt.world_size != 1
    links, spans = link(rt, hcls, communicates)
    warnings: list[AnalysisWarning] = []
    steps = _steps(rt, hcls, warnings)
    tl = attribution.build_timeline(rt, hcls, np.array(gpu_cls, dtype=np.int16), links, spans, steps, communicates)
    devices = tuple(int(d) for d in np.unique(tl.device))
    comm_kernels = int(np.count_nonzero(tl.ex.is_kernel))
    strat, dp_mode, evidence = strategy.detect(rt, hcls, bool(devices), comm_kernels)
    out_dev, out_src = find_output_device(tl) if dp_mode == "multi_device" else (None, "")
    rows: list[StepBreakdown] = []
    pieces: list[Pieces] = []
    runs: list[Pieces] = []
    for number, s0, s1 in steps:
        r, p, sg = attribution.attribute_step(tl, 0, number, s0, s1, devices, out_dev, segments)
        rows.extend(r)
        pieces.append(p)
        if sg is not None:
            runs.append(sg)
    _trace_warnings(rt, tl, links, steps, strat, dp_mode, warnings)
    pat = _profile_all_threads(rt, links.launcher) if dp_mode == "multi_device" else None
    if pat is False:
        warnings.append(AnalysisWarning(
            "profile_all_threads_off", "DP replica threads (parallel_apply) were not recorded "
            "(profile_all_threads off): their CPU ops are missing; their time inside DataParallel.forward "
            "is counted as host"))
    span = [(s0, s1) for _, s0, s1 in steps]
    ex = tl.ex
    return RankSummary(
        path=str(path), dist_rank=rt.rank, world_size=rt.world_size, backend=rt.backend,
        base_time_ns=rt.base_time_ns, gpu_names=rt.gpu_names, devices=devices, events=rt.events,
        strategy=strat, strategy_evidence=evidence, dp_mode=dp_mode, output_device=out_dev,
        output_device_source=out_src, profile_all_threads=pat, steps=rows,
        device_summaries=device_summaries(tl, 0, devices), top_kernels=top_kernels(tl, 0, devices, steps),
        executions=matching.RankExecutions(ex.start, ex.end, ex.device, ex.kind, ex.keys(), ex.step,
                                           int(rt.base_time_ns or 0)),
        pieces=Pieces.concat(pieces), segments=Pieces.concat(runs) if segments else None, warnings=warnings,
        steps_start_us=min((a for a, _ in span), default=None), steps_end_us=max((b for _, b in span), default=None),
        dp_replicas=spans.replicas if dp_mode == "multi_device" else None,
    )


def _trace_warnings(rt: RankTrace, tl: attribution.RankTimeline, links: object, steps: list[tuple[int, float, float]],
                    strat: str, dp_mode: str | None, warnings: list[AnalysisWarning]) -> None:
    last_end = max((s1 for _, _, s1 in steps), default=None)
    if last_end is not None and len(tl.start):
        late = int(np.count_nonzero(tl.start >= last_end))
        if late:
            warnings.append(AnalysisWarning("gpu_work_after_last_step", f"{late} GPU activities start after "
                                            "the last profiled step ends; they are not attributed to a step",
                                            count=late))
    if rt.skipped:
        how = " (typed decode failed; tolerant parser used)" if rt.tolerant else ""
        warnings.append(AnalysisWarning("skipped_events", f"{rt.skipped} events skipped: missing, NaN or "
                                        f"negative ts/dur, or untypable fields{how}", count=rt.skipped))
    unlinked = getattr(links, "unlinked", 0)
    if unlinked:
        warnings.append(AnalysisWarning("unlinked_gpu_events", f"{unlinked} GPU activities have no "
                                        "launching host event (no correlation, flow or External id match); "
                                        "they cannot be in a DP phase", count=unlinked))
    if rt.ns_converted:
        warnings.append(AnalysisWarning("ns_timestamps", "timestamps were in nanoseconds; converted to µs"))
    warnings += [AnalysisWarning(code, message, count=n) for code, message, n in rt.notes]
    if strat == "ddp" and rt.world_size == 1:
        warnings.append(AnalysisWarning(
            "ddp_world_size_1", "DDP with world size 1 communicates nothing: its nccl:/gloo: spans are "
            "enqueue time and no communication kernel ran; they are counted as host work, comm is 0"))


def _steps(rt: RankTrace, hcls: np.ndarray, warnings: list[AnalysisWarning]) -> list[tuple[int, float, float]]:
    """(number, start µs, end µs) of each ProfilerStep, or the whole trace as step 0."""
    rows = np.flatnonzero(hcls == C.C_STEP)
    steps: dict[int, tuple[int, float, float]] = {}
    for r in rows[np.argsort(rt.ts[rows], kind="stable")].tolist():
        n = C.step_number(rt.names[rt.name_id[r]])
        if n is not None and n not in steps:
            steps[n] = (n, float(rt.ts[r]), float(rt.ts[r] + rt.dur[r]))
    if steps:
        return sorted(steps.values(), key=lambda s: s[1])
    real = rt.kind != K_OTHER
    if not real.any():
        return []
    s0, s1 = float(rt.ts[real].min()), float((rt.ts + rt.dur)[real].max())
    warnings.append(AnalysisWarning("no_profiler_steps", "no ProfilerStep#N in the trace: the whole trace "
                                    f"({s1 - s0:.0f} µs) is analysed as one step, numbered 0"))
    return [(0, s0, s1)]


def _profile_all_threads(rt: RankTrace, launcher: np.ndarray) -> bool | None:
    """False when some thread launched GPU work but has no recorded CPU op (DP replica threads)."""
    launch_tids = set(np.unique(rt.tid[launcher[launcher >= 0]]).tolist())
    if len(launch_tids) <= 1:
        return None
    op_tids = set(np.unique(rt.tid[(rt.kind == K_CPU_OP)]).tolist())
    runtime_only = {t for t in launch_tids if t not in op_tids}
    launches = np.isin(rt.tid, list(runtime_only)) & (rt.kind == K_RUNTIME)
    return not bool(runtime_only and launches.any())


def _pool_context() -> multiprocessing.context.BaseContext:
    # fork is the cheapest start and safe while this process runs one thread; otherwise spawn.
    if sys.platform.startswith("linux") and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def _summarize_or_error(path: str, segments: bool = False, max_inflate: int | None = None
                        ) -> RankSummary | TraceError:
    try:
        return summarize(path, segments, max_inflate)
    except TraceError as exc:  # one unreadable rank must not hide the others
        return exc


def _summaries(paths: Sequence[str], jobs: int, segments: bool = False, max_inflate: int | None = None
               ) -> tuple[list[RankSummary], list[TraceError]]:
    """Summaries of the readable files and the errors of the unreadable ones (raises when none is readable)."""
    one = partial(_summarize_or_error, segments=segments, max_inflate=max_inflate)
    if jobs <= 1 or len(paths) <= 1:
        results = [one(p) for p in paths]
    else:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=_pool_context()) as pool:
            results = list(pool.map(one, paths))
    good = [r for r in results if isinstance(r, RankSummary)]
    bad = [r for r in results if isinstance(r, TraceError)]
    if not good:
        raise bad[0]
    return good, bad


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask: a container's or taskset's share), not the
    machine's count."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


#: ``manifest=`` default of ``analyze``/``attribute``: read the run directory's manifest.
READ: Any = object()


def analyze(paths: Iterable[str | Path], *, jobs: int | None = None, max_inflate: int | None = None,
            manifest: Manifest | None = READ) -> Analysis:
    """Analyse a run directory, a folder of traces or trace files. Raises DpprofError on bad input.

    ``jobs``: worker processes (default ``min(2, ranks, cpus)``; never more than the files or the CPUs this
    process may use).
    ``max_inflate``: most bytes a gzip trace may inflate to (``dpprof.trace.inflate``).
    ``manifest``: the run's manifest when the caller has read it (``dpprof.analyze.run.load_run``).
    """
    return _analyze(paths, jobs, False, max_inflate, manifest)[0]


def attribute(paths: Iterable[str | Path], *, jobs: int | None = None, max_inflate: int | None = None,
              manifest: Manifest | None = READ) -> tuple[Analysis, dict[int, Segments]]:
    """``analyze``, plus every rank's attribution as segments (``dpprof.analyze.segments``), keyed by rank."""
    return _analyze(paths, jobs, True, max_inflate, manifest)


def _analyze(paths: Iterable[str | Path], jobs: int | None, segments: bool, max_inflate: int | None,
             manifest: Manifest | None) -> tuple[Analysis, dict[int, Segments]]:
    inputs = resolve_inputs(paths)
    files = [str(p) for p in inputs.traces]
    jobs = min(2 if jobs is None else jobs, len(files), usable_cpus())
    sums, errors = _summaries(files, max(1, jobs), segments, max_inflate)
    if manifest is READ:
        manifest, _ = read_manifest(inputs.run_dir)
    analysis, segs = combine_all(sums, manifest=manifest)
    notes = [AnalysisWarning("unreadable_trace", f"skipped: {e}") for e in errors]
    if inputs.run_dir is not None and manifest is None:
        notes.append(AnalysisWarning("no_manifest", f"{inputs.run_dir}: manifest.json is missing or unreadable "
                                     "(run still starting, or killed): analysed the trace files present"))
    if notes:
        analysis = replace(analysis, warnings=(*notes, *analysis.warnings))
    return analysis, segs
