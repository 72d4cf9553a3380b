"""The charts of a run report, drawn only from measured data (an Analysis, NVML samples, step records).

Each function returns a :class:`~dpprof.report.svg.Plot`: an inline SVG, or, when the data needed is not
there, no SVG and one sentence saying why. Times on axes are milliseconds; memory GiB; NVML
utilization.gpu is the percent of the sample period during which at least one kernel was running.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dpprof.analyze.model import CATEGORIES, Analysis, StepBreakdown
from dpprof.analyze.run import StepTime
from dpprof.report.svg import (
    CATEGORY_COLORS,
    FIG_W,
    SERIES_COLORS,
    Plot,
    absent,
    figure,
    integer_axis,
    to_svg,
)

#: Above this many (device, step) rows the breakdown shows the mean step per device instead.
MAX_STEP_ROWS = 36
#: Above this many ranks the step-time plot shows, per step, the median over ranks and the min-max band
#: (one line per rank of 3,000 ranks took minutes to draw and could not be read).
MAX_RANK_SERIES = 8


@dataclass(frozen=True)
class GpuSeries:
    """NVML samples of one GPU: seconds since the first sample of the run, percent, bytes."""

    label: str
    t_s: Sequence[float]
    util_gpu_pct: Sequence[float]
    mem_used_bytes: Sequence[float]


def nvml_series(nvml: Any | None) -> list[GpuSeries]:
    """Per-GPU series of an ``NvmlData`` for the timeline plot (seconds from the run's first sample)."""
    gpus = [g for g in (getattr(nvml, "gpus", None) or ()) if len(g.t_ns)]
    if not gpus:
        return []
    t0 = min(int(g.t_ns[0]) for g in gpus)
    hosts = {g.host for g in gpus}
    out = []
    for g in gpus:
        label = f"GPU{g.cuda_index}" if g.cuda_index is not None else f"NVML {g.nvml_index}"
        out.append(GpuSeries(label=f"{g.host}:{label}" if len(hosts) > 1 else label,
                             t_s=[(int(t) - t0) / 1e9 for t in g.t_ns],
                             util_gpu_pct=[float(v) for v in g.fields["util_gpu_pct"]],
                             mem_used_bytes=[float(v) for v in g.fields["mem_used_bytes"]]))
    return out


def nvml_mean_util(series: Sequence[GpuSeries]) -> dict[str, float]:
    """Mean utilization.gpu per GPU (%), null readings left out."""
    out = {}
    for s in series:
        vals = [v for v in s.util_gpu_pct if not math.isnan(v)]
        if vals:
            out[s.label] = sum(vals) / len(vals)
    return out


def device_label(rank: int, device: int, multi_rank: bool) -> str:
    where = "host" if device < 0 else f"GPU{device}"
    return f"rank {rank} {where}" if multi_rank else where


def _multi_rank(steps: Sequence[StepBreakdown]) -> bool:
    return len({s.rank for s in steps}) > 1


def step_breakdown(analysis: Analysis) -> Plot:
    """Stacked horizontal bars: each profiled step on each device split into exclusive categories (ms)."""
    key, title = "step-breakdown", "Where each step's time went, per GPU"
    steps = sorted(analysis.steps, key=lambda s: (s.rank, s.device, s.step))
    if not steps:
        return absent(key, title, "No profiled step was found in the trace, so there is no per-step breakdown.")
    multi = _multi_rank(steps)
    rows: list[tuple[str, Mapping[str, float]]]
    note = "Each bar is one profiled step on one device; the categories are exclusive and add up to the step."
    if len(steps) <= MAX_STEP_ROWS:
        rows = [(f"{device_label(s.rank, s.device, multi)} · step {s.step}", s.categories_us) for s in steps]
    else:
        groups: dict[tuple[int, int], list[StepBreakdown]] = defaultdict(list)
        for s in steps:
            groups[(s.rank, s.device)].append(s)
        rows = [(f"{device_label(r, d, multi)} · mean of {len(g)}", mean_step_categories(g))
                for (r, d), g in sorted(groups.items())]
        note = f"{len(steps)} device-steps: each bar is the mean step of one device; categories are exclusive."
    return category_bars(key, title, rows, note, xlabel="time (ms)", height=1.2 + 0.32 * len(rows))


def mean_step_categories(steps: Sequence[StepBreakdown]) -> dict[str, float]:
    """Mean µs per category over ``steps`` (one device's profiled steps)."""
    return {c: sum(s.categories_us.get(c, 0.0) for s in steps) / len(steps) for c in CATEGORIES}


def category_bars(key: str, title: str, rows: Sequence[tuple[str, Mapping[str, float]]], note: str, *,
                  xlabel: str, height: float) -> Plot:
    """Stacked horizontal bars, one per (label, µs per category) row, in ms; only categories in use."""
    used = [c for c in CATEGORIES if any(r[1].get(c, 0.0) > 0 for r in rows)]
    with figure(FIG_W, height) as (fig, ax):
        y = list(range(len(rows)))[::-1]
        left = [0.0] * len(rows)
        for cat in used:
            widths = [r[1].get(cat, 0.0) / 1000.0 for r in rows]
            ax.barh(y, widths, left=left, height=0.72, color=CATEGORY_COLORS[cat], label=cat,
                    edgecolor="white", linewidth=0.4)
            left = [a + b for a, b in zip(left, widths, strict=True)]
        ax.set_yticks(y, [r[0] for r in rows])
        ax.set_xlabel(xlabel)
        ax.grid(axis="y", visible=False)
        ax.legend(ncols=min(len(used), 5), loc="lower center", bbox_to_anchor=(0.5, 1.0))
        return Plot(key, title, to_svg(fig, key, title), note)


def nvml_timelines(series: Sequence[GpuSeries], why_absent: str = "") -> Plot:
    """NVML utilization.gpu (%) and memory used (GiB) over time, one line per GPU."""
    key, title = "nvml-timelines", "GPU utilization and memory over time (NVML)"
    usable = [s for s in series if len(s.t_s) > 0]
    if not usable:
        return absent(key, title, why_absent or "No NVML samples were recorded for this run.")
    with figure(FIG_W, 5.2, nrows=2, ncols=1, sharex=True) as (fig, (ax_u, ax_m)):
        for i, s in enumerate(usable):
            color = SERIES_COLORS[i % len(SERIES_COLORS)]
            ax_u.plot(s.t_s, s.util_gpu_pct, color=color, linewidth=1.2, label=s.label, drawstyle="steps-post")
            ax_m.plot(s.t_s, [b / 2**30 for b in s.mem_used_bytes], color=color, linewidth=1.2,
                      label=s.label, drawstyle="steps-post")
        ax_u.set_ylabel("utilization.gpu (%)")
        ax_u.set_ylim(-3, 103)
        ax_u.set_title("utilization.gpu: percent of time a kernel was running", loc="left", fontweight="normal")
        ax_m.set_ylabel("memory used (GiB)")
        ax_m.set_ylim(bottom=0)
        ax_m.set_xlabel("time since first sample (s)")
        ax_u.legend(loc="upper right", ncols=min(len(usable), 4))
        fig.tight_layout()
        note = ("utilization.gpu is the percent of the sample period in which one or more kernels were "
                "running: it reaches 100 % with a single busy SM, so it says the GPU was never idle, not full.")
        return Plot(key, title, to_svg(fig, key, title), note)


def imbalance(analysis: Analysis, nvml_mean_util: Mapping[str, float] | None = None) -> Plot:
    """Mean busy time per step of each GPU (ms), with each GPU's share of the busiest one."""
    key, title = "imbalance", "Load balance across GPUs"
    per: dict[tuple[int, int], list[StepBreakdown]] = defaultdict(list)
    for s in analysis.steps:
        if s.device >= 0:
            per[(s.rank, s.device)].append(s)
    if len(per) < 2:
        what = "Only one GPU" if len(per) == 1 else "No GPU (a CPU-only run)"
        return absent(key, title, f"{what} had activity in the profiled steps, so there is nothing to "
                                  "balance across GPUs.")
    multi = len({r for r, _ in per}) > 1
    labels = [device_label(r, d, multi) for r, d in sorted(per)]
    busy = [sum(s.busy_us for s in g) / len(g) / 1000.0 for _, g in sorted(per.items())]
    dur = [sum(s.duration_us for s in g) / len(g) / 1000.0 for _, g in sorted(per.items())]
    top = max(busy) or 1.0
    ncols = 2 if nvml_mean_util else 1
    with figure(FIG_W, 1.4 + 0.38 * len(labels), ncols=ncols, squeeze=False) as (fig, axes):
        ax = axes[0][0]
        y = list(range(len(labels)))[::-1]
        ax.barh(y, dur, color=CATEGORY_COLORS["idle"], height=0.7, label="step")
        ax.barh(y, busy, color=CATEGORY_COLORS["compute"], height=0.7, label="GPU busy")
        for yi, b in zip(y, busy, strict=True):
            ax.text(b, yi, f" {b:.2f} ms ({100 * b / top:.0f} %)", va="center", fontsize=8, color="#2b3445")
        ax.set_yticks(y, labels)
        ax.set_xlabel("mean per step (ms)")
        ax.grid(axis="y", visible=False)
        ax.set_xlim(0, max(dur) * 1.22)
        ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.06), ncols=2)
        if nvml_mean_util:
            ax2 = axes[0][1]
            names = sorted(nvml_mean_util)
            y2 = list(range(len(names)))[::-1]
            ax2.barh(y2, [nvml_mean_util[n] for n in names], color=CATEGORY_COLORS["comm"], height=0.7)
            ax2.set_yticks(y2, names)
            ax2.set_xlim(0, 100)
            ax2.set_xlabel("mean utilization.gpu (%)")
            ax2.set_title("NVML: percent of time a kernel was running", loc="left", fontweight="normal",
                          pad=22)
            ax2.grid(axis="y", visible=False)
        fig.tight_layout()
        spread = (max(busy) - min(busy)) / top * 100
        note = (f"GPU busy time per step (union of kernels, copies and memsets) against the step; the busiest and "
                f"least busy GPU differ by {spread:.0f} % of the busiest GPU's busy time.")
        return Plot(key, title, to_svg(fig, key, title), note)


def ddp_overlap(analysis: Analysis) -> Plot:
    """Per rank and step: collective time hidden under compute, exposed transfer, and waiting for the last
    participant (ms)."""
    key, title = "ddp-overlap", "Collective communication: overlapped, exposed transfer, waiting"
    if analysis.strategy not in ("ddp", "fsdp", "distributed"):
        return absent(key, title, f"Not a multi-process run (strategy: {analysis.strategy}), so there is no "
                                  "gradient collective to overlap.")
    rows = sorted(analysis.steps, key=lambda s: (s.rank, s.device, s.step))
    if not any(s.categories_us.get("comm", 0.0) + s.categories_us.get("peer_wait", 0.0) + s.comm_overlapped_us > 0
               for s in rows):
        return absent(key, title, "No collective communication was measured in the profiled steps "
                                  "(e.g. world size 1: DDP has nothing to reduce).")
    multi = _multi_rank(rows)
    labels = [f"{device_label(s.rank, s.device, multi)} · step {s.step}" for s in rows]
    hidden = [s.comm_overlapped_us / 1000.0 for s in rows]
    exposed = [s.categories_us.get("comm", 0.0) / 1000.0 for s in rows]
    waiting = [s.categories_us.get("peer_wait", 0.0) / 1000.0 for s in rows]
    with figure(FIG_W, 1.2 + 0.32 * len(rows)) as (fig, ax):
        y = list(range(len(rows)))[::-1]
        ax.barh(y, hidden, color="#9ab8df", height=0.7, label="overlapped with compute")
        ax.barh(y, exposed, left=hidden, color=CATEGORY_COLORS["comm"], height=0.7,
                label="exposed transfer (step waits for it)")
        ax.barh(y, waiting, left=[h + e for h, e in zip(hidden, exposed, strict=True)],
                color=CATEGORY_COLORS["peer_wait"], height=0.7, label="waiting for the last participant")
        ax.set_yticks(y, labels)
        ax.set_xlabel("collective time (ms)")
        ax.grid(axis="y", visible=False)
        ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=3)
        total = sum(hidden) + sum(exposed) + sum(waiting)
        note = (f"{100 * sum(hidden) / total:.0f} % of the collective time ran under compute; "
                f"{sum(exposed):.2f} ms exposed transfer and {sum(waiting):.2f} ms waiting for the last participant "
                f"over {len(rows)} device-steps.")
        return Plot(key, title, to_svg(fig, key, title), note)


def step_time_distribution(times: Sequence[StepTime], source: str) -> Plot:
    """Step wall time (ms) per step and its histogram; steps with the profiler on marked apart (it slows them)."""
    key, title = "step-times", "Step time distribution"
    if not times:
        return absent(key, title, "No step times were recorded (no steps.rank*.jsonl and no profiled step).")
    ranks = sorted({t.rank for t in times})
    values = sorted(t.wall_ms for t in times)
    median = values[len(values) // 2] if len(values) % 2 else (values[len(values) // 2 - 1]
                                                                + values[len(values) // 2]) / 2
    # A histogram says little about a handful of steps: it is drawn from 8 steps on.
    hist = len(values) >= 8
    kw: dict[str, Any] = {"ncols": 2, "gridspec_kw": {"width_ratios": [3, 1]}, "sharey": True} if hist else {"ncols": 1}
    by_rank: dict[int, list[StepTime]] = defaultdict(list)
    for t in times:
        by_rank[t.rank].append(t)
    with figure(FIG_W, 3.4, squeeze=False, **kw) as (fig, axes):
        ax = axes[0][0]
        if len(ranks) > MAX_RANK_SERIES:
            _rank_band(ax, by_rank)
        for i, r in enumerate(ranks if len(ranks) <= MAX_RANK_SERIES else ()):
            color = SERIES_COLORS[i % len(SERIES_COLORS)]
            mine = sorted(by_rank[r], key=lambda t: t.step)
            ax.plot([t.step for t in mine], [t.wall_ms for t in mine], color=color, linewidth=0.8, alpha=0.6)
            plain = [t for t in mine if not t.profiled]
            prof = [t for t in mine if t.profiled]
            if plain:
                ax.scatter([t.step for t in plain], [t.wall_ms for t in plain], s=14, color=color,
                           label=f"rank {r}" if len(ranks) > 1 else "step")
            if prof:
                ax.scatter([t.step for t in prof], [t.wall_ms for t in prof], s=30, facecolors="none",
                           edgecolors="#e4572e", linewidths=1.2,
                           label="profiler on (slower)" if r == ranks[0] else None)
        ax.axhline(median, color="#4a5568", linewidth=0.8, linestyle="--")
        ax.set_xlabel("step")
        integer_axis(ax.xaxis)
        ax.set_ylabel("step time (ms)")
        ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=4)
        if hist:
            bins = max(5, min(30, len(values) // 2))
            axes[0][1].hist(values, bins=bins, orientation="horizontal", color=CATEGORY_COLORS["compute"],
                            alpha=0.8)
            axes[0][1].set_xlabel("steps")
        fig.tight_layout()
        note = f"{len(values)} steps from {source}; median {median:.2f} ms (dashed line)."
        if len(ranks) > MAX_RANK_SERIES:
            note += f" {len(ranks)} ranks: per step, the median over ranks and the band from fastest to slowest."
        return Plot(key, title, to_svg(fig, key, title), note)


def _rank_band(ax: Any, by_rank: Mapping[int, Sequence[StepTime]]) -> None:
    """Per step: median wall time over the ranks (line), fastest to slowest rank (band), profiled steps marked."""
    per_step: dict[int, list[float]] = defaultdict(list)
    profiled: set[int] = set()
    for mine in by_rank.values():
        for t in mine:
            per_step[t.step].append(t.wall_ms)
            if t.profiled:
                profiled.add(t.step)
    steps = sorted(per_step)
    lo = [min(per_step[k]) for k in steps]
    hi = [max(per_step[k]) for k in steps]
    mid = [sorted(per_step[k])[len(per_step[k]) // 2] for k in steps]
    color = SERIES_COLORS[0]
    ax.fill_between(steps, lo, hi, color=color, alpha=0.25, linewidth=0, label=f"{len(by_rank)} ranks: min–max")
    ax.plot(steps, mid, color=color, linewidth=1.0, marker="o", markersize=3, label="median over ranks")
    marked = [(k, m) for k, m in zip(steps, mid, strict=True) if k in profiled]
    if marked:
        ax.scatter([k for k, _ in marked], [m for _, m in marked], s=30, facecolors="none", edgecolors="#e4572e",
                   linewidths=1.2, label="profiler on (slower)")
