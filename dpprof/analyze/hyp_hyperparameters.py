"""Hyperparameters as the cause, tested as the study meant: does DP's gap to DDP move with batch size or workers?

With a fixed global batch every strategy's scaling efficiency moves with the batch size (a larger batch also
amortises DP's per-step fixed costs), so the efficiency of DP alone says nothing. The question is whether DP's
*gap* to DDP -- DP's scaling efficiency minus DDP's, at the same GPU count, global batch and total loader workers
-- changes with them. Loader workers are per process (``--workers``): DDP with N processes has N× the loaders, so a
DP point pairs with the DDP point of the same *total* workers. The pairs used are named in the evidence.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from dpprof.analyze.diag_figures import Context, mean, reference_row
from dpprof.analyze.model import Hypothesis
from dpprof.analyze.sweep_model import total_loader_workers
from dpprof.vocabulary import PROCESS_PER_RANK

SUPPORTED = 0.20
NOT_SUPPORTED = 0.05

RULE = (
    "from a sweep: DP's gap to DDP = DP's scaling efficiency − DDP's at the largest GPU count, for pairs of points "
    "with the same global batch and the same total loader workers (workers × processes); supported when the gap "
    f"changes by ≥ {SUPPORTED:.2f} across batch sizes or across workers, not supported when it changes by ≤ "
    f"{NOT_SUPPORTED:.2f} on every axis the pairs vary, inconclusive in between, without such pairs, without a "
    "sweep, or on the CPU (DP has no GPU path there)."
)


def total_workers(p: Any) -> int:
    """Loader workers of a sweep point over all its processes."""
    return p.total_workers if isinstance(p.total_workers, int) else \
        total_loader_workers(p.strategy, p.gpus, p.workers)


def gap_pairs(sweep: Any) -> tuple[int | None, list[dict[str, Any]]]:
    """(GPU count, pairs of DP and DDP points of equal batch and total workers with their efficiencies)."""
    done = [p for p in sweep.points if p.status == "done" and p.gpus > 1 and p.scaling_efficiency is not None]
    both = {p.gpus for p in done if p.strategy == "dp"} & {p.gpus for p in done if p.strategy in PROCESS_PER_RANK}
    if not both:
        return None, []
    n = max(both)
    dp = {(p.batch_size, total_workers(p)): p for p in done if p.strategy == "dp" and p.gpus == n}
    ddp = {(p.batch_size, total_workers(p)): p for p in done if p.strategy in PROCESS_PER_RANK and p.gpus == n}
    pairs = []
    for key in sorted(dp.keys() & ddp.keys()):
        a, b = dp[key], ddp[key]
        pairs.append({"batch_size": key[0], "total_workers": key[1], "dp": f"{a.name} ({a.scaling_efficiency:.3f})",
                      "ddp": f"{b.name} ({b.scaling_efficiency:.3f})",
                      "gap": round(a.scaling_efficiency - b.scaling_efficiency, 3)})
    return n, pairs


def _change(pairs: list[dict[str, Any]], axis: str) -> tuple[dict[str, float], float | None]:
    groups: dict[int, list[float]] = defaultdict(list)
    for p in pairs:
        groups[p[axis]].append(p["gap"])
    means = {str(k): round(mean(v), 3) for k, v in sorted(groups.items())}
    return means, round(max(means.values()) - min(means.values()), 3) if len(means) >= 2 else None


def hyperparameters(ctx: Context) -> Hypothesis:
    ref = reference_row(ctx.analysis)
    dl_pct = ref.pct(ref.categories_us["data_loading"]) if ref is not None else 0.0
    ev: dict[str, Any] = {"data_loading_pct": round(dl_pct, 1), "workers": ctx.manifest.config.workers,
                          "batch_size": ctx.manifest.config.batch_size}

    def out(verdict: str, reason: str) -> Hypothesis:
        return Hypothesis("hyperparameters", verdict, RULE, reason, ev)

    loading = f"data loading takes {dl_pct:.1f} % of this run's step"
    sweep = ctx.sweep
    if sweep is None:
        return out("inconclusive", f"no sweep to test the question (dpprof sweep --strategies dp,ddp, then "
                   f"dpprof report RUN --sweep SWEEP); {loading}")
    cuda = sweep.machine.get("cuda_devices")
    if cuda == 0:
        return out("inconclusive", "the sweep ran on the CPU, where DP has no GPU to split the batch over: DP's gap "
                   f"to DDP says nothing about its data path; {loading}")
    n, pairs = gap_pairs(sweep)
    ev["pairs"] = pairs
    if not pairs:
        return out("inconclusive", "the sweep has no DP and DDP points at the same GPU count (> 1), global batch and "
                   f"total loader workers to compare; {loading}")
    ev["gpus"] = n
    by_batch, d_batch = _change(pairs, "batch_size")
    by_workers, d_workers = _change(pairs, "total_workers")
    ev.update(gap_by_batch_size=by_batch, gap_change_batch_size=d_batch, gap_by_total_workers=by_workers,
              gap_change_total_workers=d_workers)
    changes = [(ax, c) for ax, c in (("batch size", d_batch), ("total loader workers", d_workers)) if c is not None]
    used = "; ".join(f"{p['dp']} vs {p['ddp']}" for p in pairs)
    if not changes:
        return out("inconclusive", f"{len(pairs)} pair(s) at {n} GPUs ({used}), but they vary neither batch size nor "
                   f"workers; {loading}")
    text = ", ".join(f"DP's gap to DDP at {n} GPUs changes by {c:.2f} across {ax}" for ax, c in changes)
    big = max(c for _, c in changes)
    tail = f" (pairs: {used}); {loading}"
    if big >= SUPPORTED:
        return out("supported", f"{text}{tail}")
    if all(c <= NOT_SUPPORTED for _, c in changes):
        return out("not_supported", f"{text}: the hyperparameters move DP and DDP alike{tail}")
    return out("inconclusive", f"{text}: between {NOT_SUPPORTED:.2f} and {SUPPORTED:.2f}{tail}")
