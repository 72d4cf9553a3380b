"""HTML reports: one self-contained page per run (``render_run``) or per pair of runs (``render_compare``).

Pages are jinja2 templates (``templates/``, autoescaped) with inline CSS and inline SVG charts: no
scripts, external styles or fonts, readable without JavaScript. Rendering is pure: the same inputs give
the same bytes (no dates, fixed number formats, deterministic SVG).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from dpprof.analyze.run import Run
from dpprof.report import plots, run_context
from dpprof.report.projection_view import projection_plot, projection_view
from dpprof.report.svg import CATEGORY_COLORS, Plot
from dpprof.version import __version__

TEMPLATES = Path(__file__).parent / "templates"


@lru_cache(maxsize=1)
def environment() -> Any:
    """The jinja2 environment: autoescape on, undefined variables are errors (a broken page never ships)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True)
    env.globals.update(category_colors=CATEGORY_COLORS, dpprof_version=__version__)
    return env


def render_template(template: str, **context: Any) -> str:
    return str(environment().get_template(template).render(**context))


def _nvml_absent_reason(run: Run) -> str:
    if run.nvml is not None:
        why = "; ".join(str(w) for w in getattr(run.nvml, "warnings", ())[:2])
        return f"The NVML file holds no samples ({why})." if why else "The NVML file holds no samples."
    if run.manifest is None:
        return "No NVML samples: a trace file alone carries none (give the run directory to show them)."
    if run.manifest.config.device == "cpu":
        return "No NVML samples: the run used no GPU (device: cpu), so there was no GPU to sample."
    return "No NVML samples were recorded for this run (see the warnings)."


def run_plots(run: Run) -> list[Plot]:
    """The charts of a run report, in page order (absent ones carry the sentence saying why)."""
    analysis = run.analysis
    series = plots.nvml_series(run.nvml)
    mean_util = plots.nvml_mean_util(series) if len(series) > 1 else None
    diag = analysis.diagnosis
    return [
        plots.step_breakdown(analysis),
        plots.nvml_timelines(series, _nvml_absent_reason(run)),
        plots.imbalance(analysis, mean_util),
        plots.ddp_overlap(analysis),
        plots.step_time_distribution(run.step_times, run.step_source),
        projection_plot(diag.projection if diag is not None else None),
    ]


def run_page_context(run: Run, out: Path | None) -> dict[str, Any]:
    """Every value ``run.html`` shows, computed from the run (no file is read)."""
    from dpprof.perfetto.layout import command_line

    charts = run_plots(run)
    analysis = run.analysis
    diag = analysis.diagnosis
    return {
        "title": f"dpprof report · {run.name}",
        "name": run.name,
        "overview": run_context.overview(run),
        "diagnosis": run_context.diagnosis_view(diag),
        "projection": projection_view(diag.projection if diag is not None else None),
        "plots": {p.key: p for p in charts},
        "plot_count": sum(p.present for p in charts),
        "steps": run_context.step_table(analysis),
        "devices": run_context.devices_table(analysis),
        "kernels": run_context.kernels_view(analysis),
        "comm": run_context.comm_view(analysis),
        "environment": run_context.environment(run),
        "warnings": run_context.warnings(run),
        "traces": [{"name": p.name, "href": run_context.link(p, out)} for p in run.traces],
        "merged": [{"name": p.name, "href": run_context.link(p, out)} for p in run.merged],
        "perfetto_command": command_line(run.run_dir, run.traces) if run.run_dir is not None or run.traces
        else "dpprof perfetto RUN_DIR --open",
    }


def render_run(run: Run, out: Path | None = None) -> str:
    """The HTML report of one run, as text.

    The run's analysis should carry its diagnosis (``dpprof.analyze.run.load_run`` attaches it); without one the
    verdict box says that no diagnosis was computed. ``out`` is where the page will be written: links to the
    trace files are made relative to it.
    """
    return render_template("run.html", **run_page_context(run, out))


def render_compare(a: Run, b: Run, *, out: Path | None = None) -> str:
    """Two runs side by side (e.g. DP vs DDP): step time, throughput, categories, verdicts."""
    from dpprof.report.compare_view import compare_context

    return render_template("compare.html", **compare_context(a, b, out=out))
