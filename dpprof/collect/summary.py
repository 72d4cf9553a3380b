"""The end-of-run summary on the console, read back from the run directory (what is on disk is the truth)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dpprof.manifest import Manifest, Summary, read_manifest


def _fmt(value: Any, spec: str, unit: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{unit}"


def _basis(summary: Summary) -> str:
    basis, n = summary.median_basis, summary.median_steps
    if basis in ("after_window", "before_window", "no_profiler"):
        return f" over {n} unprofiled step(s)"
    if basis == "all_steps":
        return " over all steps (none ran without the profiler)"
    return ""


def _script_lines(m: Manifest) -> list[str]:
    """``dpprof run``: the script, how it ended, and what was inferred."""
    script = m.script
    if script is None:
        return []
    end = f"exit code {script.exit_code}"
    if script.error and not script.error.startswith("exit code"):
        end += f": {script.error}"
    cfg = m.config
    inferred = set(cfg.inferred or [])

    def tag(key: str) -> str:
        return " (inferred)" if key in inferred else ""

    strategy = cfg.strategy or "not seen (no module was called in this process)"
    return [f"script:     {script.path}  ({end})",
            f"training:   {strategy}{tag('strategy')}, world size {cfg.world_size}, "
            f"global batch {_fmt(cfg.batch_size, 'd')}{tag('batch_size')}, device {cfg.device}, "
            f"steps on {m.stepping.means if m.stepping is not None else None}"]


def summary_lines(run_dir: Path) -> list[str]:
    """Plain lines: status, figures, and where every output is."""
    m, _ = read_manifest(run_dir)
    if m is None:
        return [f"run directory: {run_dir} (no manifest: this node does not hold global rank 0)"]
    s, prof = m.summary, m.profiler
    lines = [f"run:        {run_dir}  [{m.status}]", *_script_lines(m),
             f"steps:      {s.steps}   median {_fmt(s.step_ms_median, '.1f', ' ms')}/step   "
             f"{_fmt(s.images_per_s_median, '.0f', ' img/s')} (global)" + _basis(s)]
    if s.epochs:
        lines.append(f"accuracy:   train {_fmt(s.final_train_acc, '.3f')}   held-out "
                     f"{_fmt(s.final_test_acc, '.3f')}   ({s.epochs} epoch(s))")
    lines += [
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


def print_summary(run_dir: Path, stderr: bool = False) -> None:
    """The summary lines on stdout, or stderr (``dpprof run``: stdout is the script's)."""
    from dpprof.term import console as make_console

    console = make_console(stderr=stderr)
    for line in summary_lines(run_dir):
        console.print(line, markup=False, soft_wrap=True)
