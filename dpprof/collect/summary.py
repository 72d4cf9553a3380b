"""The end-of-run summary on the console, read back from the run directory (what is on disk is the truth)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dpprof.manifest import Summary, read_manifest


def _fmt(value: Any, spec: str, unit: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{unit}"


def _basis(summary: Summary) -> str:
    basis, n = summary.median_basis, summary.median_steps
    if basis in ("after_window", "before_window", "no_profiler"):
        return f" over {n} unprofiled step(s)"
    if basis == "all_steps":
        return " over all steps (none ran without the profiler)"
    return ""


def summary_lines(run_dir: Path) -> list[str]:
    """Plain lines: status, figures, and where every output is."""
    m, _ = read_manifest(run_dir)
    if m is None:
        return [f"run directory: {run_dir} (no manifest: this node does not hold global rank 0)"]
    s, prof = m.summary, m.profiler
    lines = [
        f"run:        {run_dir}  [{m.status}]",
        f"steps:      {s.steps}   median {_fmt(s.step_ms_median, '.1f', ' ms')}/step   "
        f"{_fmt(s.images_per_s_median, '.0f', ' img/s')} (global)"
        + _basis(s),
        f"accuracy:   train {_fmt(s.final_train_acc, '.3f')}   held-out {_fmt(s.final_test_acc, '.3f')}"
        f"   ({s.epochs} epoch(s))",
        f"profiler:   profiled {_fmt(prof.profiled_step_ms_median, '.1f', ' ms')} vs unprofiled "
        f"{_fmt(prof.unprofiled_step_ms_median, '.1f', ' ms')}  "
        f"(overhead ratio {_fmt(prof.overhead_ratio, '.2f')})",
    ]
    if m.dp_mode:
        lines.append(f"dp mode:    {m.dp_mode}")
    lines.append(f"manifest:   {run_dir / 'manifest.json'}")
    for key, rels in (("traces", m.files.traces), ("nvml", m.files.nvml), ("steps", m.files.steps)):
        for rel in rels or []:
            lines.append(f"{key + ':':<11} {run_dir / rel}")
    for w in m.warnings or []:
        lines.append(f"warning:    {w}")
    return lines


def print_summary(run_dir: Path) -> None:
    from dpprof.term import console as make_console

    console = make_console()
    for line in summary_lines(run_dir):
        console.print(line, soft_wrap=True)
