"""One run, loaded once: the analysis with its diagnosis and everything read beside the traces.

``load_run`` is the only reader of a run for ``analyze``, ``report``, ``compare``, ``sweep`` and ``perfetto``:
it resolves the inputs (a run directory, a folder of traces, or trace files), analyses the traces, reads the
manifest, the NVML samples and the per-step wall times (``steps.rank*.jsonl``), analyses a baseline run when one
is given, and attaches the diagnosis. Renderers take the :class:`Run` and read no file (pyinstrument's
``Session`` → renderers is the model). No torch, no matplotlib.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dpprof.analyze.model import Analysis, AnalysisWarning
from dpprof.analyze.segments import Segments
from dpprof.errors import DpprofError
from dpprof.fileio import read_input
from dpprof.manifest import Manifest, read_manifest
from dpprof.rundir import MERGED_DIR, resolve_inputs
from dpprof.schema import STEP as STEP_SPEC
from dpprof.schema import check_file

_SHOWN = 5  # manifest problems spelled out in the warning
_MAX_INDEX = 2**31  # ranks and steps beyond this are not from a real run
_TRACE_SUFFIX = re.compile(r"(\.pt)?\.trace\.json(\.gz)?$|\.json(\.gz)?$|\.gz$")
RECORDED = "steps.rank*.jsonl (every step of the run)"
PROFILED = "the profiled steps of the trace"


@dataclass(frozen=True)
class StepTime:
    """Wall time of one training step of one rank, ms (from steps.rank*.jsonl or a profiled step)."""

    rank: int
    step: int
    wall_ms: float
    profiled: bool


@dataclass(frozen=True)
class Run:
    """An analysed, diagnosed run and what was read beside it.

    ``name`` names the default report file (``reports/<name>.html``); ``step_times`` are the recorded wall
    times of every step, or the profiled steps' durations when the run recorded none (``step_source`` says
    which); ``notes``: problems met while reading, shown as warnings.
    """

    name: str
    analysis: Analysis
    manifest: Manifest | None = None
    nvml: Any | None = None  # dpprof.trace.nvml_samples.NvmlData
    run_dir: Path | None = None
    traces: tuple[Path, ...] = ()
    merged: tuple[Path, ...] = ()
    step_times: tuple[StepTime, ...] = ()
    step_source: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)
    #: Every rank's attribution as segments (``load_run(..., segments=True)``, for timeline views), keyed by rank.
    segments: Mapping[int, Segments] | None = None

    @classmethod
    def of(cls, analysis: Analysis, *, traces: Sequence[Path] = (), manifest: Manifest | None = None,
           nvml: Any | None = None, run_dir: Path | None = None, name: str | None = None,
           step_times: Sequence[StepTime] = (), merged: Sequence[Path] = (), notes: Sequence[str] = ()) -> Run:
        """A Run from data already in memory; without recorded step times, the profiled steps' durations."""
        times, source = tuple(step_times), RECORDED
        if not times:
            times, source = profiled_step_times(analysis), PROFILED
        return cls(name=name or run_name(run_dir, traces, manifest), analysis=analysis, manifest=manifest,
                   nvml=nvml, run_dir=run_dir, traces=tuple(traces), merged=tuple(merged), step_times=times,
                   step_source=source, notes=tuple(notes))


def _check_baseline(base: Analysis, paths: Sequence[str | os.PathLike[str]]) -> None:
    """A baseline is one process on one device: its compute ÷ N is DP's ideal (dpprof.analyze.costs)."""
    ranks = {r.rank for r in base.ranks}
    gpus = {d.device for d in base.devices if d.device >= 0 and d.busy_time_us > 0}
    what = f"{len(ranks)} ranks" if len(ranks) > 1 else f"{len(gpus)} GPUs" if len(gpus) > 1 else \
        "DataParallel over several devices" if base.dp_mode == "multi_device" else ""
    if what:
        raise DpprofError(f"--baseline {' '.join(map(str, paths))}: {what}; a baseline is a single-process, "
                          "single-GPU run of the same configuration (dpprof profile --strategy single)")


def load_run(paths: Sequence[str | os.PathLike[str]], *, baseline: Sequence[str | os.PathLike[str]] = (),
             jobs: int | None = None, link_gbps: float | None = None, param_bytes: int | None = None,
             sweep: Any = None, max_inflate: int | None = None, segments: bool = False) -> Run:
    """Resolve ``paths`` (a run directory or trace files), analyse them, read the rest, attach the diagnosis.

    ``baseline``: a single-GPU run of the same configuration (its compute / N is DP's ideal).
    ``link_gbps`` / ``param_bytes``: declared link bandwidth and model size for the what-if projection.
    ``sweep``: a sweep directory, its sweep.json, or a SweepResult (the hyperparameters question, and measured
    step times beside the projection).
    ``max_inflate``: most bytes a gzip trace may inflate to (``dpprof.trace.inflate``).
    ``segments``: also keep every rank's attribution as segments (``Run.segments``).
    Manifest fields of the wrong type are left out and named in the analysis' warnings.
    """
    from dpprof.analyze.diagnosis import diagnose
    from dpprof.analyze.pipeline import analyze, attribute
    from dpprof.analyze.sweep_model import SweepResult, read_sweep

    inputs = resolve_inputs([Path(p) for p in paths])
    manifest, problems = read_manifest(inputs.run_dir)
    segs = None
    if segments:
        analysis, segs = attribute([str(p) for p in paths], jobs=jobs, max_inflate=max_inflate, manifest=manifest)
    else:
        analysis = analyze([str(p) for p in paths], jobs=jobs, max_inflate=max_inflate, manifest=manifest)
    if problems:
        more = f"; and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
        analysis = replace(analysis, warnings=(*analysis.warnings, AnalysisWarning(
            "manifest_fields", "; ".join(problems[:_SHOWN]) + more, count=len(problems))))
    nvml, notes = read_nvml_data(inputs.run_dir)
    base_analysis = base_manifest = None
    if baseline:
        base_manifest, _ = read_manifest(resolve_inputs([Path(p) for p in baseline]).run_dir)
        base_analysis = analyze([str(p) for p in baseline], jobs=jobs, max_inflate=max_inflate,
                                manifest=base_manifest)
        _check_baseline(base_analysis, baseline)
    result = sweep if isinstance(sweep, SweepResult) or sweep is None else read_sweep(Path(sweep))
    if analysis.diagnosis is None:
        analysis = analysis.with_diagnosis(diagnose(analysis, manifest=manifest, nvml=nvml, baseline=base_analysis,
                                                    baseline_manifest=base_manifest, link_gbps=link_gbps,
                                                    param_bytes=param_bytes, sweep=result))
    step_times, unreadable = read_step_times(inputs.run_dir)
    merged: tuple[Path, ...] = ()
    if inputs.run_dir is not None and (inputs.run_dir / MERGED_DIR).is_dir():
        merged = tuple(sorted(p for p in (inputs.run_dir / MERGED_DIR).iterdir() if p.name.endswith(".json.gz")))
    run = Run.of(analysis, traces=inputs.traces, manifest=manifest, nvml=nvml, run_dir=inputs.run_dir,
                 step_times=step_times, merged=merged, notes=(*notes, *unreadable))
    return replace(run, segments=segs) if segs is not None else run


def run_name(run_dir: Path | None, traces: Sequence[Path], manifest: Manifest | None) -> str:
    """Manifest run id, else the run directory's name, else the trace file's name without its suffix."""
    if manifest is not None and manifest.run_id:
        name = manifest.run_id
    elif run_dir is not None:
        name = run_dir.resolve().name
    elif len(traces) == 1:
        name = _TRACE_SUFFIX.sub("", traces[0].name)
    else:
        name = traces[0].resolve().parent.name if traces else "run"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "run"


def read_nvml_data(run_dir: Path | None) -> tuple[Any | None, list[str]]:
    """NVML samples of the run (None when there are none), with a note when they cannot be read."""
    if run_dir is None or not any(run_dir.glob("nvml*.jsonl")):
        return None, []
    from dpprof.trace.nvml_samples import read_nvml

    try:
        return read_nvml(run_dir), []
    except DpprofError as exc:
        return None, [f"NVML samples not shown: {exc}"]


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
    """Each profiled step's duration, one per rank and step: the step times of a run that recorded none."""
    seen: dict[tuple[int, int], float] = {}
    for s in sorted(analysis.steps, key=lambda s: (s.rank, s.step, s.device)):
        seen.setdefault((s.rank, s.step), s.duration_us)
    return tuple(StepTime(rank=r, step=k, wall_ms=d / 1000.0, profiled=True) for (r, k), d in sorted(seen.items()))
