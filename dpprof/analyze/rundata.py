"""One run's analysis with its diagnosis attached, read once for `analyze`, `report` and `compare`.

Reads the manifest and NVML samples beside the traces (when the input is a run directory) and, when a
baseline run is given (a single-GPU run of the same configuration), analyses it too so the diagnosis
can take the ideal step time from it instead of estimating it. No torch, no matplotlib.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dpprof.analyze.model import Analysis, AnalysisWarning
from dpprof.errors import DpprofError
from dpprof.rundir import Inputs, read_manifest, read_manifest_checked, resolve_inputs
from dpprof.trace.inflate import add_read_options  # noqa: F401 (re-exported beside add_diagnosis_options)

_SHOWN = 5  # manifest problems spelled out in the warning


@dataclass(frozen=True)
class RunData:
    """An analysed, diagnosed run and what was read beside it. ``notes``: problems met while reading."""

    inputs: Inputs
    analysis: Analysis
    manifest: Mapping[str, Any] | None = None
    nvml: Any | None = None  # dpprof.trace.nvml_samples.NvmlData
    notes: tuple[str, ...] = field(default_factory=tuple)


def read_nvml_data(run_dir: Path | None) -> tuple[Any | None, list[str]]:
    """NVML samples of the run (None when there are none), with a note when they cannot be read."""
    if run_dir is None or not any(run_dir.glob("nvml*.jsonl")):
        return None, []
    from dpprof.trace.nvml_samples import read_nvml

    try:
        return read_nvml(run_dir), []
    except DpprofError as exc:
        return None, [f"NVML samples not shown: {exc}"]


def load_run_data(paths: Sequence[str | os.PathLike[str]], *, baseline: Sequence[str | os.PathLike[str]] = (),
                  jobs: int | None = None, link_gbps: float | None = None,
                  param_bytes: int | None = None, sweep: Any = None, max_inflate: int | None = None) -> RunData:
    """Resolve ``paths`` (a run directory or trace files), analyse them and attach the diagnosis.

    ``baseline``: a single-GPU run of the same configuration (its compute / N is DP's ideal).
    ``link_gbps`` / ``param_bytes``: declared link bandwidth and model size for the what-if projection.
    ``sweep``: a sweep directory, its sweep.json, or a SweepResult (the hyperparameters question, and measured
    step times beside the projection).
    ``max_inflate``: most bytes a gzip trace may inflate to (``dpprof.trace.inflate``).
    Manifest fields of the wrong type are left out and named in the analysis' warnings.
    """
    from dpprof.analyze.diagnosis import diagnose
    from dpprof.analyze.pipeline import analyze
    from dpprof.analyze.sweep_model import SweepResult, read_sweep

    inputs = resolve_inputs([Path(p) for p in paths])
    analysis = analyze([str(p) for p in paths], jobs=jobs, max_inflate=max_inflate)
    manifest, problems = read_manifest_checked(inputs.run_dir)
    if problems:
        analysis = replace(analysis, warnings=(*analysis.warnings, AnalysisWarning(
            "manifest_fields", "; ".join(problems[:_SHOWN]) + (f"; and {len(problems) - _SHOWN} more"
                                                               if len(problems) > _SHOWN else ""),
            count=len(problems))))
    nvml, notes = read_nvml_data(inputs.run_dir)
    base_analysis = base_manifest = None
    if baseline:
        base_inputs = resolve_inputs([Path(p) for p in baseline])
        base_analysis = analyze([str(p) for p in baseline], jobs=jobs, max_inflate=max_inflate)
        base_manifest = read_manifest(base_inputs.run_dir)
    result = sweep if isinstance(sweep, SweepResult) or sweep is None else read_sweep(Path(sweep))
    if analysis.diagnosis is None:
        analysis = analysis.with_diagnosis(diagnose(analysis, manifest=manifest, nvml=nvml, baseline=base_analysis,
                                                    baseline_manifest=base_manifest, link_gbps=link_gbps,
                                                    param_bytes=param_bytes, sweep=result))
    return RunData(inputs=inputs, analysis=analysis, manifest=manifest, nvml=nvml, notes=tuple(notes))


def add_diagnosis_options(p: Any) -> None:
    """The options of `analyze` and `report` that feed the diagnosis (argparse parser or group)."""
    p.add_argument("--baseline", nargs="+", default=(), metavar="RUN_DIR|TRACE",
                   help="a single-GPU run of the same configuration: DP's ideal step = its step / N "
                   "(otherwise the ideal is estimated and labelled so)")
    p.add_argument("--link-gbps", type=_positive_float, default=None, metavar="GBPS",
                   help="declared GPU link bandwidth (GB/s) for the what-if projection, where the run measured none")
    p.add_argument("--sweep", type=Path, default=None, metavar="SWEEP_DIR",
                   help="a `dpprof sweep` directory (or its sweep.json): answers the hyperparameters question "
                   "and puts measured step times beside the projection")
    p.add_argument("--param-bytes", type=_positive_int, default=None, metavar="BYTES",
                   help="model parameter bytes for the projection, where no manifest states them "
                   "(CIFAR VGG16: 58913064)")


def _positive_float(text: str) -> float:
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number: {text!r}")
    return value


def _positive_int(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value
