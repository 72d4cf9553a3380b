"""Two runs side by side (``dpprof compare A B``): the values and charts ``compare.html`` shows.

Per-step categories are compared on each run's reference row, the one the diagnosis reads
(``dpprof.analyze.diag_figures.reference_row``: DP's output device, else rank 0's first GPU, else the host), as
the mean over its profiled steps (ms).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from dpprof.analyze.diag_figures import reference_row
from dpprof.analyze.model import CATEGORIES
from dpprof.analyze.run import Run
from dpprof.manifest import EMPTY
from dpprof.report import fmt, run_context
from dpprof.report.plots import category_bars, device_label, mean_step_categories
from dpprof.report.svg import FIG_W, SERIES_COLORS, Plot, absent, figure, to_svg
from dpprof.vocabulary import DP_MODES, DP_PHASES, strategy_title


def _step_ms(run: Run) -> tuple[float | None, str]:
    plain, _ = run_context.unprofiled_ms(run)
    if plain:
        return plain, "unprofiled"
    return run_context.step_median_ms(run.analysis), "profiled"


def _breakdown_plot(a: Run, b: Run, labels: tuple[str, str]) -> Plot:
    key, title = "compare-breakdown", "Mean step per device, both runs"
    rows: list[tuple[str, dict[str, float]]] = []
    for label, run in zip(labels, (a, b), strict=True):
        groups: dict[tuple[int, int], list[Any]] = defaultdict(list)
        for s in run.analysis.steps:
            groups[(s.rank, s.device)].append(s)
        multi = len({r for r, _ in groups}) > 1
        for (r, d), g in sorted(groups.items()):
            rows.append((f"{label} · {device_label(r, d, multi)}", mean_step_categories(g)))
    if not rows:
        return absent(key, title, "Neither run has a profiled step.")
    note = "Mean over each device's profiled steps; the categories are exclusive and add up to the step."
    return category_bars(key, title, rows, note, xlabel="mean profiled step (ms)", height=1.4 + 0.34 * len(rows))


def _steps_plot(a: Run, b: Run, labels: tuple[str, str]) -> Plot:
    key, title = "compare-steps", "Step times of both runs"
    if not a.step_times and not b.step_times:
        return absent(key, title, "Neither run recorded step times.")
    with figure(FIG_W, 3.0) as (fig, ax):
        data, names = [], []
        for i, (label, run) in enumerate(zip(labels, (a, b), strict=True)):
            vals = [t.wall_ms for t in run.step_times if not t.profiled] or [t.wall_ms for t in run.step_times]
            if vals:
                data.append(vals)
                names.append(label)
                ax.scatter(vals, [len(data)] * len(vals), s=14, alpha=0.6, color=SERIES_COLORS[i], zorder=3)
        ax.boxplot(data, orientation="horizontal", widths=0.5, showfliers=False,
                   medianprops={"color": "#17233b", "linewidth": 1.6})
        ax.set_yticks(list(range(1, len(names) + 1)), names)
        ax.set_xlabel("step time (ms)")
        ax.grid(axis="y", visible=False)
        fig.tight_layout()
        note = "Unprofiled steps when the run recorded them (steps.rank*.jsonl), else the profiled steps."
        return Plot(key, title, to_svg(fig, key, title), note)


def _ratio_sentence(a_ms: float | None, b_ms: float | None, labels: tuple[str, str]) -> str:
    if not a_ms or not b_ms:
        return "The step times of the two runs cannot be compared (one has no steps)."
    if abs(a_ms - b_ms) / max(a_ms, b_ms) < 0.02:
        return f"{labels[0]} and {labels[1]} take the same time per step (within 2 %)."
    fast, slow = (labels[0], labels[1]) if a_ms < b_ms else (labels[1], labels[0])
    return f"{fast}'s median step is {max(a_ms, b_ms) / min(a_ms, b_ms):.2f}× shorter than {slow}'s " \
           f"({min(a_ms, b_ms):.2f} ms vs {max(a_ms, b_ms):.2f} ms)."


def _mean_of(run: Run, ref: Any, field: str) -> dict[str, float]:
    """Mean over the reference row's profiled steps of a per-step mapping (``comm_by_kind_us``, ``dp_host_us``)."""
    if ref is None:
        return {}
    steps = [s for s in run.analysis.steps if (s.rank, s.device) == (ref.rank, ref.device)]
    keys = sorted({k for s in steps for k in getattr(s, field)})
    return {k: sum(getattr(s, field).get(k, 0.0) for s in steps) / len(steps) for k in keys}


def detail_rows(a: Run, b: Run, refs: list[Any]) -> list[list[str]]:
    """Rows beside the categories: exposed communication by collective kind (parts of ``comm``) and the host
    time of each DP phase (``dp_host_us``, not a category), mean per step on each run's reference row, ms."""
    rows = []
    for field, label in (("comm_by_kind_us", "comm: {}"), ("dp_host_us", "host in {}")):
        va, vb = _mean_of(a, refs[0], field), _mean_of(b, refs[1], field)
        keys = [k for k in DP_PHASES if k in va or k in vb] if field == "dp_host_us" else sorted(set(va) | set(vb))
        rows += [[label.format(k), fmt.ms(va.get(k)), fmt.ms(vb.get(k)),
                  fmt.ms(vb.get(k, 0.0) - va.get(k, 0.0))] for k in keys]
    return rows


def compare_context(a: Run, b: Run, out: Path | None = None) -> dict[str, Any]:
    labels = ("A", "B") if a.name == b.name else (a.name, b.name)
    runs = []
    meds = []
    for run in (a, b):
        ms, kind = _step_ms(run)
        meds.append(ms)
        manifest = run.manifest or EMPTY
        ips, ips_src = run_context.throughput(run)
        mode = run_context.dp_mode(run)
        ratio = manifest.profiler.overhead_ratio
        diag = run_context.diagnosis_view(run.analysis.diagnosis)
        runs.append({
            "name": run.name,
            "facts": [
                ("strategy", strategy_title(run.analysis.strategy)),
                ("DP mode", mode or "–"),
                ("ranks", str(len(run.analysis.ranks))),
                ("GPUs with activity", str(len({(r.rank, d) for r in run.analysis.ranks for d in r.devices}))),
                ("batch size (global)", fmt.num(manifest.config.batch_size)),
                (f"median step ({kind})", f"{fmt.num(ms)} ms"),
                ("median profiled step", f"{fmt.num(run_context.step_median_ms(run.analysis))} ms"),
                ("throughput", f"{fmt.num(ips)} img/s" if ips else f"– ({ips_src})"),
                ("profiler distortion", f"×{ratio:.2f}" if ratio is not None else "–"),
            ],
            "diagnosis": diag,
            "mode_sentence": DP_MODES[mode].sentence if run.analysis.strategy == "dp" and mode in DP_MODES else "",
        })
    refs = [reference_row(a.analysis), reference_row(b.analysis)]
    ca, cb = (dict(r.categories_us) if r is not None else {} for r in refs)
    cats = [c for c in CATEGORIES if ca.get(c, 0.0) > 0 or cb.get(c, 0.0) > 0]
    cat_rows = [[c, fmt.ms(ca.get(c)), fmt.ms(cb.get(c)), fmt.ms(cb.get(c, 0.0) - ca.get(c, 0.0))] for c in cats]
    if ca or cb:
        cat_rows.append(["step", fmt.ms(sum(ca.values())), fmt.ms(sum(cb.values())),
                         fmt.ms(sum(cb.values()) - sum(ca.values()))])
    hyp_ids: list[str] = []
    for run in (a, b):
        for hyp in (run.analysis.diagnosis.hypotheses if run.analysis.diagnosis else ()):
            if hyp.id not in hyp_ids:
                hyp_ids.append(hyp.id)
    verdicts = []
    for hid in hyp_ids:
        cells = []
        for run in (a, b):
            h = next((h for h in (run.analysis.diagnosis.hypotheses if run.analysis.diagnosis else ())
                      if h.id == hid), None)
            cells.append({"verdict": h.verdict if h else "none",
                          "label": fmt.VERDICT_LABELS.get(h.verdict, h.verdict) if h else "–",
                          "reason": h.reason if h else "no diagnosis"})
        verdicts.append({"title": fmt.HYPOTHESIS_TITLES.get(hid, hid), "cells": cells})
    charts = [_breakdown_plot(a, b, labels), _steps_plot(a, b, labels)]
    where = [f"{label}: {device_label(ref.rank, ref.device, len(run.analysis.ranks) > 1)}" if ref else
             f"{label}: no profiled step" for label, run, ref in zip(labels, (a, b), refs, strict=True)]
    return {
        "title": f"dpprof compare · {labels[0]} vs {labels[1]}",
        "labels": labels,
        "runs": runs,
        "headline": _ratio_sentence(meds[0], meds[1], labels),
        "categories": cat_rows,
        "details": detail_rows(a, b, refs),
        "reference": "; ".join(where),
        "verdicts": verdicts,
        "plots": {p.key: p for p in charts},
        "plot_count": sum(p.present for p in charts),
        "traces": [[{"name": p.name, "href": run_context.link(p, out)} for p in run.traces] for run in (a, b)],
    }
