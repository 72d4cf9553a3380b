"""Charts of a sweep report, from the measured points of a SweepResult (points not ``done`` are left out).

Units: throughput images/s (global), speedup ×, scaling efficiency % (100 = linear), epoch time s,
accuracy % (the manifest's 0..1 fractions × 100), categories ms per step.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from dpprof.analyze.model import CATEGORIES
from dpprof.analyze.sweep_model import SweepPoint, SweepResult
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

MARKERS = {"dp": "o", "ddp": "s", "single": "^"}


def done(result: SweepResult) -> list[SweepPoint]:
    return [p for p in result.points if p.status == "done"]


def _series(points: Sequence[SweepPoint]) -> dict[tuple[str, int, int], list[SweepPoint]]:
    """Points grouped by (strategy, batch size, workers), each group sorted by GPU count."""
    out: dict[tuple[str, int, int], list[SweepPoint]] = defaultdict(list)
    for p in points:
        out[(p.strategy, p.batch_size, p.workers)].append(p)
    return {k: sorted(v, key=lambda p: p.gpus) for k, v in sorted(out.items())}


def scaling(result: SweepResult) -> Plot:
    """Throughput, speedup and scaling efficiency vs GPUs, one line per strategy/batch/workers."""
    key, title = "sweep-scaling", "Throughput, speedup and scaling efficiency vs GPUs"
    series = _series([p for p in done(result) if p.images_per_s])
    if not series:
        return absent(key, title, "No configuration of the sweep finished with a throughput figure.")
    with figure(FIG_W, 3.8, ncols=3) as (fig, (ax_t, ax_s, ax_e)):
        for i, ((strategy, batch, workers), pts) in enumerate(series.items()):
            style = {"color": SERIES_COLORS[i % len(SERIES_COLORS)], "marker": MARKERS.get(strategy, "o"),
                     "markersize": 4, "linewidth": 1.4, "linestyle": "-" if strategy == "ddp" else "--"}
            label = f"{strategy} b{batch} w{workers}"
            ax_t.plot([p.gpus for p in pts], [p.images_per_s for p in pts], label=label, **style)
            sp = [p for p in pts if p.speedup is not None]
            ax_s.plot([p.gpus for p in sp], [p.speedup for p in sp], **style)
            ef = [p for p in pts if p.scaling_efficiency is not None]
            ax_e.plot([p.gpus for p in ef], [100 * (p.scaling_efficiency or 0) for p in ef], **style)
        gpus = sorted({p.gpus for pts in series.values() for p in pts})
        ax_s.plot(gpus, gpus, color="#8a94a6", linewidth=0.8, linestyle=":", label="linear")
        ax_e.axhline(100, color="#8a94a6", linewidth=0.8, linestyle=":")
        for ax, ylabel in ((ax_t, "images/s"), (ax_s, "speedup (×)"), (ax_e, "scaling efficiency (%)")):
            ax.set_xlabel("GPUs (DP devices / DDP processes)")
            ax.set_ylabel(ylabel)
            integer_axis(ax.xaxis)
        ax_t.legend(loc="upper left", fontsize=7)
        fig.tight_layout()
        note = ("Speedup = images/s ÷ images/s of the 1-GPU point of the same strategy, batch size and workers; "
                "efficiency = speedup ÷ GPUs. Dashed: DP, solid: DDP.")
        return Plot(key, title, to_svg(fig, key, title), note)


def epoch_time(result: SweepResult) -> Plot:
    """Time per epoch (s) of each finished configuration."""
    key, title = "sweep-epoch-time", "Time per epoch"
    pts = [p for p in done(result) if p.epoch_time_s]
    if not pts:
        return absent(key, title, "No configuration ran a full epoch (the sweep ran a fixed number of steps), "
                                  "so there is no time per epoch.")
    with figure(FIG_W, 1.2 + 0.3 * len(pts)) as (fig, ax):
        y = list(range(len(pts)))[::-1]
        colors = [SERIES_COLORS[0] if p.strategy == "ddp" else SERIES_COLORS[1] for p in pts]
        ax.barh(y, [p.epoch_time_s for p in pts], color=colors, height=0.7)
        for yi, p in zip(y, pts, strict=True):
            ax.text(p.epoch_time_s or 0, yi, f" {p.epoch_time_s:.2f} s", va="center", fontsize=8)
        ax.set_yticks(y, [p.name for p in pts])
        ax.set_xlabel("seconds per epoch")
        ax.grid(axis="y", visible=False)
        return Plot(key, title, to_svg(fig, key, title), "Mean time per training epoch of each configuration.")


def accuracy(result: SweepResult) -> Plot:
    """Test (solid) and train (dashed) accuracy per epoch, DP vs DDP, one panel per global batch size."""
    key, title = "sweep-accuracy", "Accuracy per epoch: DP vs DDP at the same global batch"
    pairs: list[tuple[SweepPoint, SweepPoint]] = []
    for batch in sorted({p.batch_size for p in done(result)}):
        dp_at = {(p.gpus, p.workers): p for p in done(result) if p.strategy == "dp" and p.batch_size == batch
                 and p.epochs}
        ddp_at = {(p.gpus, p.workers): p for p in done(result) if p.strategy == "ddp" and p.batch_size == batch
                  and p.epochs}
        common = sorted(set(dp_at) & set(ddp_at))
        if common:
            gw = max(common)  # the most GPUs both ran: where their batch splitting differs most
            pairs.append((dp_at[gw], ddp_at[gw]))
    if not pairs:
        return absent(key, title, "No DP and DDP configuration with the same global batch both recorded "
                                  "per-epoch accuracy (run the sweep with --epochs).")
    with figure(FIG_W, 3.2, ncols=len(pairs), squeeze=False) as (fig, axes):
        for ax, (dp, ddp) in zip(axes[0], pairs, strict=True):
            for i, p in enumerate((dp, ddp)):
                ep = list(range(1, len(p.epochs) + 1))
                color = SERIES_COLORS[1 - i]
                test = [(e, r[1]) for e, r in zip(ep, p.epochs, strict=True) if r[1] is not None]
                train = [(e, r[0]) for e, r in zip(ep, p.epochs, strict=True) if r[0] is not None]
                ax.plot([e for e, _ in test], [100 * v for _, v in test], color=color, marker="o", markersize=3,
                        label=f"{p.strategy} test")
                ax.plot([e for e, _ in train], [100 * v for _, v in train], color=color, linestyle="--",
                        label=f"{p.strategy} train")
            ax.set_title(f"batch {dp.batch_size}, {dp.gpus} GPUs, {dp.workers} workers", loc="left",
                         fontweight="normal")
            ax.set_xlabel("epoch")
            ax.set_ylabel("accuracy (%)")
            integer_axis(ax.xaxis)
            ax.legend(fontsize=7)
        fig.tight_layout()
        note = "Same global batch for both strategies (DDP splits it across processes, DP across devices)."
        return Plot(key, title, to_svg(fig, key, title), note)


def categories(result: SweepResult) -> Plot:
    """Mean profiled step of each configuration split into exclusive categories (ms)."""
    key, title = "sweep-categories", "Where the step time goes, per configuration"
    pts = [p for p in done(result) if p.categories_us]
    if not pts:
        return absent(key, title, "No configuration has a profiled step breakdown.")
    used = [c for c in CATEGORIES if any(p.categories_us.get(c, 0.0) > 0 for p in pts)]
    with figure(FIG_W, 1.4 + 0.32 * len(pts)) as (fig, ax):
        y = list(range(len(pts)))[::-1]
        left = [0.0] * len(pts)
        for cat in used:
            widths = [p.categories_us.get(cat, 0.0) / 1000.0 for p in pts]
            ax.barh(y, widths, left=left, height=0.72, color=CATEGORY_COLORS[cat], label=cat,
                    edgecolor="white", linewidth=0.4)
            left = [a + b for a, b in zip(left, widths, strict=True)]
        ax.set_yticks(y, [p.name for p in pts])
        ax.set_xlabel("mean profiled step (ms)")
        ax.grid(axis="y", visible=False)
        ax.legend(ncols=min(len(used), 5), loc="lower center", bbox_to_anchor=(0.5, 1.0))
        note = "Mean profiled step on the output device (DP) or rank 0's device; categories are exclusive."
        return Plot(key, title, to_svg(fig, key, title), note)
