"""``analyze(paths) -> Analysis``: load every rank (in a bounded process pool), attribute, combine.

Each worker loads one trace and returns only a ``RankSummary`` (steps, device figures, top kernels,
collective start times, warnings), so the parent's memory does not grow with events or ranks.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from itertools import islice
from pathlib import Path

import numpy as np

from dpprof.analyze import attribution, crossrank, strategy
from dpprof.analyze.model import (
    Analysis,
    AnalysisWarning,
    DeviceSummary,
    KernelStat,
    RankInfo,
    StepBreakdown,
)
from dpprof.errors import TraceError
from dpprof.rundir import rank_from_name, read_manifest, resolve_inputs
from dpprof.trace import classify as C
from dpprof.trace.link import host_class, link
from dpprof.trace.load import K_CPU_OP, K_OTHER, K_RUNTIME, RankTrace, clock_offset_us, load_trace

_COLL_NAME = ("nccl:", "gloo:", "rccl:", "mpi:", "ucc:")
_LISTED = 20  # missing ranks named in the warning


@dataclass
class RankSummary:
    """What one worker sends back about one trace file (rank fields are provisional: 0)."""

    path: str
    dist_rank: int | None
    world_size: int | None
    backend: str | None
    base_time_ns: int | None
    gpu_names: dict[str, str]
    devices: tuple[int, ...]
    events: int
    strategy: str
    dp_mode: str | None
    output_device: int | None
    profile_all_threads: bool | None
    steps: list[StepBreakdown]
    device_summaries: list[DeviceSummary]
    top_kernels: list[KernelStat]
    collectives: list[crossrank.Collective]
    warnings: list[AnalysisWarning] = field(default_factory=list)
    steps_start_us: float | None = None
    steps_end_us: float | None = None


def summarize(path: str, max_inflate: int | None = None) -> RankSummary:
    """Load and attribute one trace file. Runs in a worker process; pure apart from reading ``path``."""
    rt = load_trace(path, max_inflate)
    gpu_cls, cpu_cls = C.classify_names(rt.names)
    hcls = host_class(rt, np.array(cpu_cls, dtype=np.int16))
    communicates = rt.world_size != 1
    links, spans = link(rt, hcls, communicates)
    tl = attribution.build_timeline(rt, hcls, np.array(gpu_cls, dtype=np.int16), links, spans, communicates)
    devices = tuple(int(d) for d in np.unique(tl.device))
    strat, dp_mode = strategy.detect(hcls, rt.world_size, bool(devices))
    warnings: list[AnalysisWarning] = []
    steps = _steps(rt, hcls, warnings)
    output_device = _output_device(tl, devices) if strat == "dp" else None
    rows: list[StepBreakdown] = []
    for number, s0, s1 in steps:
        rows.extend(attribution.attribute_step(tl, 0, number, s0, s1, devices, output_device))
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
    if links.unlinked:
        warnings.append(AnalysisWarning("unlinked_gpu_events", f"{links.unlinked} GPU activities have no "
                                        "launching host event (no correlation, flow or External id match); "
                                        "they cannot be in a DP phase", count=links.unlinked))
    if rt.ns_converted:
        warnings.append(AnalysisWarning("ns_timestamps", "timestamps were in nanoseconds; converted to µs"))
    warnings += [AnalysisWarning(code, message, count=n) for code, message, n in rt.notes]
    pat = _profile_all_threads(rt, links.launcher) if dp_mode == "multi_device" else None
    if pat is False:
        warnings.append(AnalysisWarning(
            "profile_all_threads_off", "DP replica threads (parallel_apply) were not recorded "
            "(profile_all_threads off): their CPU ops are missing; their time inside DataParallel.forward "
            "is counted as host"))
    if strat == "ddp" and rt.world_size == 1:
        warnings.append(AnalysisWarning(
            "ddp_world_size_1", "DDP with world size 1 communicates nothing: its nccl:/gloo: spans are "
            "enqueue time and no communication kernel ran; they are counted as host work, allreduce is 0"))
    span = [(s0, s1) for _, s0, s1 in steps]
    return RankSummary(
        path=str(path), dist_rank=rt.rank, world_size=rt.world_size, backend=rt.backend,
        base_time_ns=rt.base_time_ns, gpu_names=rt.gpu_names, devices=devices, events=rt.events,
        strategy=strat, dp_mode=dp_mode, output_device=output_device, profile_all_threads=pat, steps=rows,
        device_summaries=attribution.device_summaries(tl, 0, devices),
        top_kernels=attribution.top_kernels(tl, 0, devices, steps),
        collectives=_collectives(rt, hcls), warnings=warnings,
        steps_start_us=min((a for a, _ in span), default=None), steps_end_us=max((b for _, b in span), default=None),
    )


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


def _output_device(tl: attribution.RankTimeline, devices: tuple[int, ...]) -> int | None:
    """DP's output device: where Gather's work ran, else Scatter's, else the lowest active GPU."""
    for phase in (2, 0):  # DP_PHASES index: dp_gather, dp_scatter
        d = tl.device[tl.phase == phase]
        if len(d):
            return int(np.bincount(d).argmax())
    return min(devices) if devices else None


def _profile_all_threads(rt: RankTrace, launcher: np.ndarray) -> bool | None:
    """False when some thread launched GPU work but has no recorded CPU op (DP replica threads)."""
    launch_tids = set(np.unique(rt.tid[launcher[launcher >= 0]]).tolist())
    if len(launch_tids) <= 1:
        return None
    op_tids = set(np.unique(rt.tid[(rt.kind == K_CPU_OP)]).tolist())
    runtime_only = {t for t in launch_tids if t not in op_tids}
    launches = np.isin(rt.tid, list(runtime_only)) & (rt.kind == K_RUNTIME)
    return not bool(runtime_only and launches.any())


def _collectives(rt: RankTrace, hcls: np.ndarray) -> list[crossrank.Collective]:
    group = str(rt.pg_config[0]["pg_name"]) if len(rt.pg_config) == 1 else "default"
    off = clock_offset_us(rt)
    rows = np.flatnonzero(hcls == C.C_COLLECTIVE)
    out = []
    for r in rows.tolist():
        name = rt.names[rt.name_id[r]]
        if name.startswith(_COLL_NAME):
            out.append((group, name, float(rt.ts[r]) + off))
    return out


def _pool_context() -> multiprocessing.context.BaseContext:
    # fork is the cheapest start and safe while this process runs one thread; otherwise spawn.
    if sys.platform.startswith("linux") and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def _summarize_or_error(path: str, max_inflate: int | None = None) -> RankSummary | TraceError:
    try:
        return summarize(path, max_inflate)
    except TraceError as exc:  # one unreadable rank must not hide the others
        return exc


def _summaries(paths: Sequence[str], jobs: int,
               max_inflate: int | None = None) -> tuple[list[RankSummary], list[TraceError]]:
    """Summaries of the readable files and the errors of the unreadable ones (raises when none is readable)."""
    one = partial(_summarize_or_error, max_inflate=max_inflate)
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


def analyze(paths: Iterable[str | Path], *, jobs: int | None = None, max_inflate: int | None = None) -> Analysis:
    """Analyse a run directory, a folder of traces or trace files. Raises DpprofError on bad input.

    ``jobs``: worker processes (default ``min(2, ranks, cpus)``; never more than the files or the CPUs).
    ``max_inflate``: most bytes a gzip trace may inflate to (``dpprof.trace.inflate``).
    """
    inputs = resolve_inputs(paths)
    files = [str(p) for p in inputs.traces]
    jobs = min(2 if jobs is None else jobs, len(files), os.cpu_count() or 1)
    sums, errors = _summaries(files, max(1, jobs), max_inflate)
    manifest = read_manifest(inputs.run_dir)
    analysis = combine(sums, manifest=manifest)
    notes = [AnalysisWarning("unreadable_trace", f"skipped: {e}") for e in errors]
    if inputs.run_dir is not None and manifest is None:
        notes.append(AnalysisWarning("no_manifest", f"{inputs.run_dir}: manifest.json is missing or unreadable "
                                     "(run still starting, or killed): analysed the trace files present"))
    if notes:
        analysis = replace(analysis, warnings=(*notes, *analysis.warnings))
    return analysis


def combine(sums: Sequence[RankSummary], manifest: dict | None = None) -> Analysis:
    """Give each summary its rank, then merge them into one Analysis (with cross-rank figures)."""
    warnings: list[AnalysisWarning] = []
    ranks = _assign_ranks(sums, warnings)
    infos, devices, steps, kernels = [], [], [], []
    per_rank_coll: dict[int, list[crossrank.Collective]] = {}
    for s, r in zip(sums, ranks, strict=True):
        infos.append(RankInfo(rank=r, path=s.path, world_size=s.world_size, backend=s.backend, devices=s.devices,
                              gpu_names=s.gpu_names, base_time_ns=s.base_time_ns,
                              profile_all_threads=s.profile_all_threads, events=s.events,
                              steps_start_us=s.steps_start_us, steps_end_us=s.steps_end_us))
        devices += [replace(d, rank=r) for d in s.device_summaries]
        steps += [replace(x, rank=r) for x in s.steps]
        kernels += [replace(k, rank=r) for k in s.top_kernels]
        warnings += [replace(w, rank=r) for w in s.warnings]
        per_rank_coll[r] = s.collectives
    sizes = {s.world_size for s in sums if s.world_size is not None}
    if len(sizes) > 1:
        warnings.append(AnalysisWarning("mixed_world_sizes", f"traces disagree on the world size: {sorted(sizes)}; "
                                        "are they from the same run?", count=len(sizes)))
    _same_run(sums, warnings)
    strat = strategy.combine(s.strategy for s in sums)
    if strat == "unknown" and len({s.strategy for s in sums}) > 1:
        warnings.append(AnalysisWarning("mixed_strategies", "ranks show different strategies: "
                                        + ", ".join(sorted({s.strategy for s in sums}))))
    _completeness(sums, ranks, manifest, warnings)
    collectives, stragglers = crossrank.match(per_rank_coll) if len(sums) > 1 else ([], [])
    first = sums[0]
    order = sorted(range(len(infos)), key=lambda i: infos[i].rank)
    return Analysis(
        strategy=strat, ranks=tuple(infos[i] for i in order),
        devices=tuple(sorted(devices, key=lambda d: (d.rank, d.device))),
        steps=tuple(sorted(steps, key=lambda x: (x.rank, x.step, x.device))),
        warnings=tuple(sorted(warnings, key=lambda w: (w.rank if w.rank is not None else -1, w.code))),
        top_kernels=tuple(sorted(kernels, key=lambda k: (k.rank, k.device, -k.total_us, k.name))),
        collectives=tuple(collectives), stragglers=tuple(stragglers),
        dp_mode=first.dp_mode if strat == "dp" else None,
        output_device=first.output_device if strat == "dp" else None,
    )


def _assign_ranks(sums: Sequence[RankSummary], warnings: list[AnalysisWarning]) -> list[int]:
    """distributedInfo rank, else the rank in the file name, else input order; duplicates renumbered."""
    known: list[int | None] = [s.dist_rank if s.dist_rank is not None else rank_from_name(s.path) for s in sums]
    free = (r for r in range(len(sums) + len(known)) if r not in set(known))
    ranks = [r if r is not None else next(free) for r in known]  # unknown: smallest unused, in input order
    guessed = [f"{Path(s.path).name} -> rank {r} (from {'its file name' if k is not None else 'input order'})"
               for s, k, r in zip(sums, known, ranks, strict=True) if s.dist_rank is None]
    if guessed and len(sums) > 1:
        warnings.append(AnalysisWarning("no_distributed_info", "no distributedInfo in " + "; ".join(guessed),
                                        count=len(guessed)))
    seen: set[int] = set()
    dups = []
    for i, r in enumerate(ranks):
        if r in seen:
            new = max(set(ranks) | seen) + 1
            dups.append(f"{Path(sums[i].path).name}: rank {r} -> {new}")
            ranks[i] = new
        seen.add(ranks[i])
    if dups:
        warnings.append(AnalysisWarning("duplicate_ranks", "several traces claim the same rank; renumbered: "
                                        + "; ".join(dups), count=len(dups)))
    return ranks


#: Ranks of one run profile the same steps: step windows further apart than this are from different runs.
SAME_RUN_GAP_S = 60.0


def _same_run(sums: Sequence[RankSummary], warnings: list[AnalysisWarning]) -> None:
    backends = {s.backend for s in sums if s.backend}
    if len(backends) > 1:
        warnings.append(AnalysisWarning("mixed_backends", f"traces disagree on the backend: {sorted(backends)}; "
                                        "are they from the same run?", count=len(backends)))
    spans = [((s.base_time_ns or 0) / 1e3 + s.steps_start_us, (s.base_time_ns or 0) / 1e3 + s.steps_end_us)
             for s in sums if s.steps_start_us is not None and s.steps_end_us is not None]
    if len(spans) > 1:
        gap_s = (max(a for a, _ in spans) - min(b for _, b in spans)) / 1e6
        if gap_s > SAME_RUN_GAP_S:
            warnings.append(AnalysisWarning("different_runs", f"the ranks' profiled steps are {gap_s:,.0f} s apart "
                                            "on the wall clock: these traces look like different runs; "
                                            "cross-rank figures are meaningless"))


def _completeness(sums: Sequence[RankSummary], ranks: list[int], manifest: dict | None,
                  warnings: list[AnalysisWarning]) -> None:
    world = max((s.world_size or 0 for s in sums), default=0)
    if manifest is not None:
        config = manifest.get("config")
        cfg = config if isinstance(config, dict) else {}
        world = max(world, int(cfg.get("world_size") or 0)) if cfg.get("strategy") == "ddp" else world
        if manifest.get("status") == "running" or manifest.get("complete") is False:
            warnings.append(AnalysisWarning("run_incomplete", f"the run is not complete (status "
                                            f"{manifest.get('status')!r}): analysed the traces written so far"))
    # Counted against the files present, never enumerated: a header may claim a world size of 1e9.
    present = set(ranks)
    n_missing = world - sum(1 for r in present if 0 <= r < world) if world > 1 else 0
    if n_missing:
        shown = list(islice((r for r in range(world) if r not in present), _LISTED))
        more = f" and {n_missing - len(shown):,} more" if n_missing > len(shown) else ""
        warnings.append(AnalysisWarning("missing_ranks", f"world size {world} but no trace for rank(s) "
                                        f"{', '.join(map(str, shown))}{more}: analysed the ranks present",
                                        count=n_missing))
