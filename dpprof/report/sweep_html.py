"""The sweep report (``dpprof sweep``): one self-contained HTML page from a SweepResult.

Shows throughput, speedup and scaling efficiency per strategy vs GPUs, time per epoch, accuracy per
epoch for DP vs DDP at the same global batch, the category breakdown per configuration, and a table of
every point (including those skipped or failed, with the reason).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dpprof.analyze.sweep_model import SweepResult
from dpprof.report import fmt, sweep_plots
from dpprof.report.run_context import link


def _final_acc(epochs: tuple[Any, ...]) -> str:
    if not epochs or epochs[-1][1] is None:
        return "–"
    return f"{100 * epochs[-1][1]:.1f} %"


def sweep_context(result: SweepResult, out: Path, sweep_dir: Path | None = None) -> dict[str, Any]:
    """Values for ``sweep.html``. ``run_dir`` of each point is relative to ``sweep_dir`` (default: out's folder)."""
    base = sweep_dir if sweep_dir is not None else out.parent
    charts = [sweep_plots.scaling(result), sweep_plots.epoch_time(result), sweep_plots.accuracy(result),
              sweep_plots.categories(result)]
    rows = []
    for p in result.points:
        href = None
        if p.run_dir:
            target = base / p.run_dir
            report = target / "report.html"
            href = link(report if report.is_file() else target, out)
        rows.append({
            "name": p.name, "status": p.status, "reason": p.reason, "href": href,
            "cells": [p.strategy, str(p.gpus), str(p.batch_size), str(p.workers),
                      fmt.num(p.step_ms_median), fmt.num(p.images_per_s),
                      fmt.num(p.speedup), "–" if p.scaling_efficiency is None else f"{100 * p.scaling_efficiency:.0f} %",
                      fmt.num(p.epoch_time_s), _final_acc(p.epochs)],
            "verdicts": [fmt.VERDICT_LABELS.get(p.verdicts.get(h, ""), "–") if p.verdicts else "–"
                         for h in ("data_path", "hardware")],
        })
    counts = {s: sum(p.status == s for p in result.points) for s in ("done", "skipped", "failed")}
    hyper = result.diagnosis.get("hyperparameters") if isinstance(result.diagnosis, dict) else None
    return {
        "title": "dpprof sweep",
        "hyper": None if not hyper else {
            "verdict": hyper.get("verdict"), "label": fmt.VERDICT_LABELS.get(hyper.get("verdict", ""), ""),
            "reason": hyper.get("reason", ""), "rule": hyper.get("rule", ""),
            "evidence": fmt.rows(hyper.get("evidence") or {})},
        "grid": fmt.rows(result.grid),
        "machine": fmt.rows(result.machine),
        "counts": counts,
        "rows": rows,
        "skipped": list(result.skipped),
        "plots": {p.key: p for p in charts},
        "plot_count": sum(p.present for p in charts),
    }


def render_sweep_html(result: SweepResult, out: Path, sweep_dir: Path | None = None) -> str:
    from dpprof.report.html import render_template

    return render_template("sweep.html", **sweep_context(result, out, sweep_dir))


def render_sweep(result: SweepResult, out: Path, sweep_dir: Path | None = None) -> Path:
    """Render the sweep page fully, then write it atomically to ``out``; returns ``out``."""
    from dpprof.fileio import write_text_atomic

    html = render_sweep_html(result, out, sweep_dir)
    write_text_atomic(out, html)
    return out
