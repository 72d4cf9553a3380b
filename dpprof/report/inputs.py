"""Everything a report is rendered from, read once: the analysis (with its diagnosis), the manifest,
NVML samples and the per-step wall times. File reading lives here; the renderers only format."""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dpprof.analyze.model import Analysis
from dpprof.analyze.rundata import load_run_data
from dpprof.errors import DpprofError
from dpprof.fileio import read_input
from dpprof.report.plots import GpuSeries, StepTime
from dpprof.rundir import MERGED_DIR
from dpprof.schema import STEP as STEP_SPEC
from dpprof.schema import check_file

_MAX_INDEX = 2**31  # ranks and steps beyond this are not from a real run
_TRACE_SUFFIX = re.compile(r"(\.pt)?\.trace\.json(\.gz)?$|\.json(\.gz)?$|\.gz$")


@dataclass(frozen=True)
class RunInputs:
    """One run's data for a report. ``name`` names the default report file (``reports/<name>.html``)."""

    name: str
    analysis: Analysis
    manifest: Mapping[str, Any] | None = None
    nvml: Any | None = None  # dpprof.trace.nvml_samples.NvmlData
    run_dir: Path | None = None
    traces: tuple[Path, ...] = ()
    merged: tuple[Path, ...] = ()
    step_times: tuple[StepTime, ...] = ()
    step_source: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)  # problems met while reading (shown as warnings)


def run_name(run_dir: Path | None, traces: Sequence[Path], manifest: Mapping[str, Any] | None) -> str:
    """Manifest run id, else the run directory's name, else the trace file's name without its suffix."""
    if manifest and isinstance(manifest.get("run_id"), str) and manifest["run_id"]:
        name = manifest["run_id"]
    elif run_dir is not None:
        name = run_dir.resolve().name
    elif len(traces) == 1:
        name = _TRACE_SUFFIX.sub("", traces[0].name)
    else:
        name = traces[0].resolve().parent.name if traces else "run"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "run"


def read_step_times(run_dir: Path | None) -> tuple[tuple[StepTime, ...], list[str]]:
    """Per-step wall times of every rank from ``steps.rank*.jsonl``; unreadable lines are counted.

    Each line is checked against ``dpprof.schema.STEP``: a line without an integer rank and step (0 to
    2**31) and a finite, non-negative wall time is skipped and counted, never turned into a figure.
    """
    if run_dir is None:
        return (), []
    out: list[StepTime] = []
    bad = 0
    for path in sorted(run_dir.glob("steps.rank*.jsonl")):
        try:
            lines = read_input(path).decode("utf-8", errors="replace").splitlines()
        except DpprofError as exc:
            return (), [str(exc)]
        for line in lines:
            if not line.strip():
                continue
            rec = _step_record(line)
            if rec is None:
                bad += 1  # a cut-short last line of a killed run, or garbage
                continue
            # steps of the profiler's wait/warmup phases are slowed too
            out.append(StepTime(rank=rec["rank"], step=rec["step"], wall_ms=float(rec["wall_ms"]),
                                profiled=bool(rec.get("profiled") or rec.get("profiler_on"))))
    notes = [f"{bad} unreadable line(s) in steps.rank*.jsonl were skipped"] if bad else []
    return tuple(sorted(out, key=lambda t: (t.rank, t.step))), notes


def _step_record(line: str) -> dict[str, Any] | None:
    try:
        data = json.loads(line)
    except (ValueError, RecursionError):
        return None
    rec, problems = check_file(data, STEP_SPEC, "")
    if rec is None or problems:
        return None
    ok = all(isinstance(rec.get(k), int) and 0 <= rec[k] < _MAX_INDEX for k in ("rank", "step"))
    return rec if ok and rec.get("wall_ms") is not None and rec["wall_ms"] >= 0 else None


def profiled_step_times(analysis: Analysis) -> tuple[StepTime, ...]:
    """Fallback when no step records exist: each profiled step's duration, one per rank and step."""
    seen: dict[tuple[int, int], float] = {}
    for s in sorted(analysis.steps, key=lambda s: (s.rank, s.step, s.device)):
        seen.setdefault((s.rank, s.step), s.duration_us)
    return tuple(StepTime(rank=r, step=k, wall_ms=d / 1000.0, profiled=True) for (r, k), d in sorted(seen.items()))


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


def load_run(paths: Sequence[str | os.PathLike[str]], baseline: Sequence[str | os.PathLike[str]] = (),
             **diagnosis: Any) -> RunInputs:
    """Resolve ``paths`` (a run directory or trace files), analyze and diagnose them, read the rest."""
    data = load_run_data(paths, baseline=baseline, **diagnosis)
    inputs, analysis, manifest = data.inputs, data.analysis, data.manifest
    notes = list(data.notes)
    step_times, more = read_step_times(inputs.run_dir)
    notes += more
    source = "steps.rank*.jsonl (every step of the run)"
    if not step_times:
        step_times, source = profiled_step_times(analysis), "the profiled steps of the trace"
    merged: tuple[Path, ...] = ()
    if inputs.run_dir is not None and (inputs.run_dir / MERGED_DIR).is_dir():
        merged = tuple(sorted(p for p in (inputs.run_dir / MERGED_DIR).iterdir() if p.name.endswith(".json.gz")))
    return RunInputs(name=run_name(inputs.run_dir, inputs.traces, manifest), analysis=analysis,
                     manifest=manifest, nvml=data.nvml, run_dir=inputs.run_dir, traces=inputs.traces, merged=merged,
                     step_times=step_times, step_source=source, notes=tuple(notes))
