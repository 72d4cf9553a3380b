"""The end-of-run summary on the console, read back from the run directory (what is on disk is the truth)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dpprof.rundir import read_manifest


def _fmt(value: Any, spec: str, unit: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{unit}"


def _basis(summary: dict[str, Any]) -> str:
    basis, n = summary.get("median_basis"), summary.get("median_steps")
    if basis in ("after_window", "before_window", "no_profiler"):
        return f" over {n} unprofiled step(s)"
    if basis == "all_steps":
        return " over all steps (none ran without the profiler)"
    return ""


def _script_lines(m: dict[str, Any]) -> list[str]:
    """``dpprof run``: the script, how it ended, and what was inferred."""
    script = m.get("script")
    if not isinstance(script, dict):
        return []
    end = f"exit code {script.get('exit_code')}"
    if script.get("error") and not str(script["error"]).startswith("exit code"):
        end += f": {script['error']}"
    cfg = m.get("config") or {}
    inferred = set(cfg.get("inferred") or [])

    def tag(key: str) -> str:
        return " (inferred)" if key in inferred else ""

    return [f"script:     {script.get('path')}  ({end})",
            f"training:   {cfg.get('strategy')}{tag('strategy')}, world size {cfg.get('world_size')}, "
            f"global batch {_fmt(cfg.get('batch_size'), 'd')}{tag('batch_size')}, device {cfg.get('device')}, "
            f"steps on {(m.get('stepping') or {}).get('means')}"]


def summary_lines(run_dir: Path) -> list[str]:
    """Plain lines: status, figures, and where every output is."""
    m = read_manifest(run_dir)
    if m is None:
        return [f"run directory: {run_dir} (no manifest: this node does not hold global rank 0)"]
    s = m.get("summary") or {}
    prof = m.get("profiler") or {}
    files = m.get("files") or {}
    lines = [f"run:        {run_dir}  [{m.get('status')}]", *_script_lines(m),
             f"steps:      {s.get('steps')}   median {_fmt(s.get('step_ms_median'), '.1f', ' ms')}/step   "
             f"{_fmt(s.get('images_per_s_median'), '.0f', ' img/s')} (global)" + _basis(s)]
    if s.get("epochs"):
        lines.append(f"accuracy:   train {_fmt(s.get('final_train_acc'), '.3f')}   held-out "
                     f"{_fmt(s.get('final_test_acc'), '.3f')}   ({s.get('epochs')} epoch(s))")
    lines += [
        f"profiler:   profiled {_fmt(prof.get('profiled_step_ms_median'), '.1f', ' ms')} vs unprofiled "
        f"{_fmt(prof.get('unprofiled_step_ms_median'), '.1f', ' ms')}  "
        f"(overhead ratio {_fmt(prof.get('overhead_ratio'), '.2f')})",
    ]
    if m.get("dp_mode"):
        lines.append(f"dp mode:    {m['dp_mode']}")
    lines.append(f"manifest:   {run_dir / 'manifest.json'}")
    for key in ("traces", "nvml", "steps"):
        for rel in files.get(key, []):
            lines.append(f"{key + ':':<11} {run_dir / rel}")
    for w in m.get("warnings", []):
        lines.append(f"warning:    {w}")
    return lines


def print_summary(run_dir: Path, stderr: bool = False) -> None:
    """The summary lines on stdout, or stderr (``dpprof run``: stdout is the script's)."""
    from rich.console import Console

    console = Console(highlight=False, stderr=stderr)
    for line in summary_lines(run_dir):
        console.print(line, markup=False, soft_wrap=True)
