"""The what-if projection (``Diagnosis.projection``, from dpprof.analyze.projection) as a table and a chart.

A projection is a model's prediction, never a measurement: the page labels it so and lists its
assumptions. Measured points, when the projection carries them, are drawn as markers beside the lines.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dpprof.report import fmt
from dpprof.report.svg import FIG_W, SERIES_COLORS, Plot, absent, figure, integer_axis, to_svg

KEY, TITLE = "projection", "What-if projection: step time and scaling efficiency vs GPUs"
STEP_KEYS = ("step_ms", "projected_step_ms", "step_ms_projected")
EFF_KEYS = ("scaling_efficiency", "projected_efficiency", "efficiency")
MEASURED_KEYS = ("measured_step_ms", "step_ms_measured")


def _rows(projection: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    rows = projection.get("rows") if isinstance(projection, Mapping) else None
    return [r for r in rows if isinstance(r, Mapping)] if isinstance(rows, Sequence) else []


def _first(row: Mapping[str, Any], keys: Sequence[str]) -> float | None:
    for k in keys:
        v = row.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
    return None


def projection_view(projection: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Label, assumptions and a table of the projection's rows (columns in first-seen order)."""
    if not isinstance(projection, Mapping):
        return None
    rows = _rows(projection)
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns and not isinstance(r[k], (Mapping, list, tuple))]
    assumptions = projection.get("assumptions") or []
    if isinstance(assumptions, Mapping):
        assumptions = [f"{k}: {fmt.value(v, str(k))}" for k, v in sorted(assumptions.items())]
    inputs = projection.get("inputs")
    extra = fmt.rows(inputs) if isinstance(inputs, Mapping) else []
    return {
        "label": str(projection.get("label") or "projection"),
        "model": str(projection.get("model") or ""),
        "reason": "" if rows else str(projection.get("reason") or ""),
        "assumptions": [str(a) for a in assumptions],
        "inputs": extra,
        "columns": columns,
        "rows": [[fmt.value(r.get(c), c) for c in columns] for r in rows],
    }


def projection_plot(projection: Mapping[str, Any] | None) -> Plot:
    """Projected step time (ms) and scaling efficiency per strategy vs GPU count; measured points as markers."""
    rows = _rows(projection)
    if not rows:
        reason = projection.get("reason") if isinstance(projection, Mapping) else None
        return absent(KEY, TITLE, f"Nothing projected: {reason}." if reason
                      else "No projection was computed for this run.")
    series: dict[str, list[tuple[int, float | None, float | None, float | None]]] = {}
    for r in rows:
        gpus = r.get("gpus", r.get("n"))
        if not isinstance(gpus, int):
            continue
        series.setdefault(str(r.get("strategy", "projection")), []).append(
            (gpus, _first(r, STEP_KEYS), _first(r, EFF_KEYS), _first(r, MEASURED_KEYS)))
    if not any(step is not None for pts in series.values() for _, step, _, _ in pts):
        return absent(KEY, TITLE, "The projection holds no step-time rows to draw.")
    with figure(FIG_W, 3.6, ncols=2) as (fig, (ax_t, ax_e)):
        for i, (strategy, pts) in enumerate(sorted(series.items())):
            pts.sort()
            color = SERIES_COLORS[i % len(SERIES_COLORS)]
            xs = [p[0] for p in pts if p[1] is not None]
            ax_t.plot(xs, [p[1] for p in pts if p[1] is not None], color=color, marker="o", markersize=3,
                      linewidth=1.4, label=f"{strategy} (projected)")
            meas = [(p[0], p[3]) for p in pts if p[3] is not None]
            if meas:
                ax_t.scatter([m[0] for m in meas], [m[1] for m in meas], marker="D", s=36, color=color,
                             edgecolors="black", linewidths=0.6, zorder=3, label=f"{strategy} (measured)")
            eff = [(p[0], p[2]) for p in pts if p[2] is not None]
            if eff:
                ax_e.plot([e[0] for e in eff], [100 * e[1] for e in eff], color=color, marker="o", markersize=3,
                          linewidth=1.4, label=strategy)
        ax_t.set_xlabel("GPUs")
        integer_axis(ax_t.xaxis)
        integer_axis(ax_e.xaxis)
        ax_t.set_ylabel("step time (ms)")
        ax_t.set_title("projected step time", loc="left", fontweight="normal")
        ax_t.legend()
        ax_e.set_xlabel("GPUs")
        ax_e.set_ylabel("scaling efficiency (%)")
        ax_e.axhline(100, color="#8a94a6", linewidth=0.8, linestyle="--")
        ax_e.set_title("projected scaling efficiency (100 % = linear)", loc="left", fontweight="normal")
        if ax_e.lines:
            ax_e.legend()
        fig.tight_layout()
        note = "A projection from a small model fed with this run's measured figures: not a measurement."
        return Plot(KEY, TITLE, to_svg(fig, KEY, TITLE), note)
