"""Merge the ranks' summaries into one Analysis: ranks, matched collectives, waiting vs transfer, warnings.

Runs in the parent after the workers (``dpprof.analyze.pipeline``). The workers' step rows hold the whole
length of the collective executions they cover in ``comm`` / ``dp_*``; here each covered piece is split at the
instant its collective's last participant started (``dpprof.analyze.matching``): before it is ``peer_wait``
(on that participant), after it stays transfer. Memory grows with collectives, not with events.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from dpprof.analyze import matching, strategy
from dpprof.analyze.attribution import CAT, Pieces
from dpprof.analyze.model import CATEGORIES, Analysis, AnalysisWarning, RankInfo, StepBreakdown
from dpprof.analyze.rank_summary import RankSummary
from dpprof.analyze.segments import Segments, finalize
from dpprof.manifest import Manifest
from dpprof.rundir import rank_from_name
from dpprof.vocabulary import PROCESS_PER_RANK

_PEER_WAIT = CAT["peer_wait"]
_LISTED = 20  # missing ranks named in the warning
_COMM = CAT["comm"]


def combine(sums: Sequence[RankSummary], manifest: Manifest | None = None) -> Analysis:
    """Give each summary its rank, match the collectives, split their waiting off, and merge into one Analysis."""
    return combine_all(sums, manifest)[0]


def combine_all(sums: Sequence[RankSummary], manifest: Manifest | None = None
                ) -> tuple[Analysis, dict[int, Segments]]:
    """``combine``, and the segments of the ranks whose summaries carry them (``summarize(..., segments=True)``)."""
    warnings: list[AnalysisWarning] = []
    ranks = _assign_ranks(sums, warnings)
    infos, devices, kernels = [], [], []
    for s, r in zip(sums, ranks, strict=True):
        infos.append(RankInfo(rank=r, path=s.path, world_size=s.world_size, backend=s.backend, devices=s.devices,
                              gpu_names=s.gpu_names, base_time_ns=s.base_time_ns,
                              profile_all_threads=s.profile_all_threads, events=s.events,
                              steps_start_us=s.steps_start_us, steps_end_us=s.steps_end_us,
                              dp_replicas=s.dp_replicas))
        devices += [replace(d, rank=r) for d in s.device_summaries]
        kernels += [replace(k, rank=r) for k in s.top_kernels]
        warnings += [replace(w, rank=r) for w in s.warnings]
    matched = matching.match({r: s.executions for s, r in zip(sums, ranks, strict=True)})
    steps: list[StepBreakdown] = []
    segs: dict[int, Segments] = {}
    for s, r in zip(sums, ranks, strict=True):
        steps += split_waiting([replace(x, rank=r) for x in s.steps], s.pieces, s.executions.kind,
                               matched.wait_end[r], matched.waited_for[r])
        if s.segments is not None:
            segs[r] = finalize(r, s.segments, matched.wait_end[r], matched.waited_for[r])
    for r, n in sorted(matched.unmatched.items()):
        warnings.append(AnalysisWarning(
            "unmatched_collectives", f"{n} collective executions have no counterpart in the other participants' "
            "traces (a rank's trace missing, or a window that started at another step): their waiting cannot "
            "be told from their transfer and counts as transfer", rank=r, count=n))
    for r, (n, names) in sorted(matched.ambiguous.items()):
        warnings.append(AnalysisWarning(
            "ambiguous_process_group", f"{n} collective executions name no process group (gloo records none) and "
            f"this rank belongs to several ({names.replace('|', ', ')}): they were matched by order with the ranks "
            "of the same groups, and are not used to align the clocks", rank=r, count=n))
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
    first = sums[0]
    order = sorted(range(len(infos)), key=lambda i: infos[i].rank)
    analysis = Analysis(
        strategy=strat, ranks=tuple(infos[i] for i in order),
        devices=tuple(sorted(devices, key=lambda d: (d.rank, d.device))),
        steps=tuple(sorted(steps, key=lambda x: (x.rank, x.step, x.device))),
        warnings=tuple(sorted(warnings, key=lambda w: (w.rank if w.rank is not None else -1, w.code))),
        top_kernels=tuple(sorted(kernels, key=lambda k: (k.rank, k.device, -k.total_us, k.name))),
        collectives=tuple(matched.collectives), stragglers=tuple(matched.stragglers),
        dp_mode=first.dp_mode if strat == "dp" else None,
        output_device=first.output_device if strat == "dp" else None,
        output_device_source=first.output_device_source if strat == "dp" else "",
        strategy_evidence="; ".join(sorted({s.strategy_evidence for s in sums if s.strategy_evidence})),
        clock_offsets=tuple(matched.offsets) if len(sums) > 1 else (),
        straggler_summary=matching.summary(matched.stragglers, steps, matched.collectives,
                                           first.output_device if strat == "dp" else None),
    )
    return analysis, segs


def split_waiting(rows: list[StepBreakdown], pieces: Pieces, kinds: list[str], wait_end: np.ndarray,
                  waited_for: list[str]) -> list[StepBreakdown]:
    """Move the waiting part of each covered piece from its category to ``peer_wait``; fill
    ``peer_wait_on_us`` and ``comm_by_kind_us``. Categories still sum to the step."""
    by_row: dict[tuple[int, int], dict[str, Any]] = defaultdict(
        lambda: {"cats": defaultdict(float), "on": defaultdict(float), "kind": defaultdict(float)})
    we = wait_end[pieces.uid] if len(pieces.uid) else np.zeros(0)
    wait = np.where(np.isnan(we), 0.0, np.clip(np.minimum(pieces.end, np.nan_to_num(we, nan=0.0)) - pieces.start,
                                                0.0, None))
    for step, dev, uid, lab, w, s, e in zip(pieces.step.tolist(), pieces.device.tolist(), pieces.uid.tolist(),
                                            pieces.label.tolist(), wait.tolist(), pieces.start.tolist(),
                                            pieces.end.tolist(), strict=True):
        acc = by_row[(step, dev)]
        if w > 0:
            acc["cats"][CATEGORIES[lab]] -= w
            acc["cats"]["peer_wait"] += w
            acc["on"][waited_for[uid]] += w
        if lab == _COMM:
            acc["kind"][kinds[uid]] += (e - s) - w
    out = []
    for row in rows:
        got = by_row.get((row.step, row.device))
        cats = dict(row.categories_us)
        on = dict(row.peer_wait_on_us)
        kind: dict[str, float] = {}
        if got is not None:
            for c, d in got["cats"].items():
                cats[c] = max(0.0, cats[c] + d)
            for who, w in got["on"].items():
                on[who] = on.get(who, 0.0) + w
            kind = {k: v for k, v in got["kind"].items() if v > 0}
        other = cats["comm"] - sum(kind.values())
        if other > 1e-6:  # comm not covered by a collective execution (gloo staging copies...)
            kind["other"] = kind.get("other", 0.0) + other
        on = {who: us for who, us in on.items() if us > 1e-6}
        out.append(replace(row, categories_us=cats, peer_wait_on_us=dict(sorted(on.items())),
                           comm_by_kind_us=dict(sorted(kind.items()))))
    return out


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


def _completeness(sums: Sequence[RankSummary], ranks: list[int], manifest: Manifest | None,
                  warnings: list[AnalysisWarning]) -> None:
    world = max((s.world_size or 0 for s in sums), default=0)
    if manifest is not None:
        cfg = manifest.config
        world = max(world, cfg.world_size or 0) if cfg.strategy in PROCESS_PER_RANK else world
        if manifest.status == "running" or manifest.complete is False:
            warnings.append(AnalysisWarning("run_incomplete", f"the run is not complete (status "
                                            f"{manifest.status!r}): analysed the traces written so far"))
    # Counted against the files present, never enumerated: a header may claim a world size of 1e9.
    present = set(ranks)
    n_missing = world - sum(1 for r in present if 0 <= r < world) if world > 1 else 0
    if n_missing:
        shown = list(islice((r for r in range(world) if r not in present), _LISTED))
        more = f" and {n_missing - len(shown):,} more" if n_missing > len(shown) else ""
        warnings.append(AnalysisWarning("missing_ranks", f"world size {world} but no trace for rank(s) "
                                        f"{', '.join(map(str, shown))}{more}: analysed the ranks present",
                                        count=n_missing))
