"""HTML reports: one self-contained page per run (``render_run``) or per pair of runs (``render_compare``).

Pages are jinja2 templates (``templates/``, autoescaped) with inline CSS and inline SVG charts: no
scripts, external styles or fonts, readable without JavaScript. Rendering is pure: the same inputs give
the same bytes (no dates, fixed number formats, deterministic SVG).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from dpprof import __version__
from dpprof.analyze.model import Analysis
from dpprof.report import plots, run_context
from dpprof.report.inputs import (
    RunInputs,
    nvml_mean_util,
    nvml_series,
    profiled_step_times,
    read_step_times,
)
from dpprof.report.projection_view import projection_plot, projection_view
from dpprof.report.svg import CATEGORY_COLORS, Plot

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


def _nvml_absent_reason(manifest: Mapping[str, Any] | None, nvml: Any) -> str:
    if nvml is not None:
        why = "; ".join(str(w) for w in getattr(nvml, "warnings", ())[:2])
        return f"The NVML file holds no samples ({why})." if why else "The NVML file holds no samples."
    device = run_context._get(manifest, "config", "device")
    if device == "cpu":
        return "No NVML samples: the run used no GPU (device: cpu), so there was no GPU to sample."
    if manifest is None:
        return "No NVML samples: a trace file alone carries none (give the run directory to show them)."
    return "No NVML samples were recorded for this run (see the warnings)."


def run_plots(analysis: Analysis, manifest: Mapping[str, Any] | None, nvml: Any,
              step_times: Sequence[plots.StepTime], step_source: str) -> list[Plot]:
    """The charts of a run report, in page order (absent ones carry the sentence saying why)."""
    series = nvml_series(nvml)
    mean_util = nvml_mean_util(series) if len(series) > 1 else None
    diag = analysis.diagnosis
    return [
        plots.step_breakdown(analysis),
        plots.nvml_timelines(series, _nvml_absent_reason(manifest, nvml)),
        plots.imbalance(analysis, mean_util),
        plots.ddp_overlap(analysis),
        plots.step_time_distribution(step_times, step_source),
        projection_plot(diag.projection if diag is not None else None),
    ]


def run_page_context(analysis: Analysis, manifest: Mapping[str, Any] | None, nvml: Any,
                     traces: Sequence[Path], *, name: str, out: Path | None,
                     step_times: Sequence[plots.StepTime], step_source: str,
                     merged: Sequence[Path] = (), notes: Sequence[str] = (),
                     run_dir: Path | None = None) -> dict[str, Any]:
    """Every value ``run.html`` shows, computed from the inputs (no file is read)."""
    from dpprof.perfetto.layout import command_line

    charts = run_plots(analysis, manifest, nvml, step_times, step_source)
    diag = analysis.diagnosis
    return {
        "title": f"dpprof report · {name}",
        "name": name,
        "overview": run_context.overview(analysis, manifest, step_times, step_source),
        "diagnosis": run_context.diagnosis_view(diag),
        "projection": projection_view(diag.projection if diag is not None else None),
        "plots": {p.key: p for p in charts},
        "plot_count": sum(p.present for p in charts),
        "steps": run_context.step_table(analysis),
        "devices": run_context.devices_table(analysis),
        "kernels": run_context.kernels_view(analysis),
        "comm": run_context.comm_view(analysis),
        "environment": run_context.environment(analysis, manifest),
        "warnings": run_context.warnings(analysis, manifest, nvml, notes),
        "traces": [{"name": p.name, "href": run_context.link(p, out)} for p in traces],
        "merged": [{"name": p.name, "href": run_context.link(p, out)} for p in merged],
        "perfetto_command": command_line(run_dir, traces) if run_dir is not None or traces
        else "dpprof perfetto RUN_DIR --open",
    }


def render_run(analysis: Analysis, manifest: Mapping[str, Any] | None = None, nvml: Any = None,
               run_dir: Path | None = None, trace_paths: Sequence[Path] = (), *, out: Path | None = None,
               name: str | None = None, step_times: Sequence[plots.StepTime] | None = None,
               step_source: str = "", merged: Sequence[Path] = (), notes: Sequence[str] = ()) -> str:
    """The HTML report of one run, as text.

    ``analysis`` should carry its diagnosis (``Analysis.with_diagnosis``); without one the verdict box
    says that no diagnosis was computed. ``out`` is where the page will be written: links to the trace
    files are made relative to it. Step times default to ``run_dir/steps.rank*.jsonl``, else the
    profiled steps' durations.
    """
    notes = list(notes)
    if step_times is None:
        step_times, more = read_step_times(run_dir)
        notes += more
        step_source = step_source or "steps.rank*.jsonl (every step of the run)"
        if not step_times:
            step_times, step_source = profiled_step_times(analysis), "the profiled steps of the trace"
    if name is None:
        from dpprof.report.inputs import run_name

        name = run_name(run_dir, list(trace_paths), manifest)
    context = run_page_context(analysis, manifest, nvml, list(trace_paths), name=name, out=out,
                               step_times=step_times, step_source=step_source, merged=merged, notes=notes,
                               run_dir=run_dir)
    return render_template("run.html", **context)


def render_inputs(run: RunInputs, out: Path | None = None) -> str:
    """``render_run`` for data read by :func:`dpprof.report.inputs.load_run`."""
    return render_run(run.analysis, run.manifest, run.nvml, run.run_dir, run.traces, out=out, name=run.name,
                      step_times=run.step_times, step_source=run.step_source, merged=run.merged,
                      notes=run.notes)


def render_compare(a: RunInputs, b: RunInputs, *, out: Path | None = None) -> str:
    """Two runs side by side (e.g. DP vs DDP): step time, throughput, categories, verdicts."""
    from dpprof.report.compare_view import compare_context

    return render_template("compare.html", **compare_context(a, b, out=out))
