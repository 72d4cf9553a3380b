"""Report pages written to disk: rendered completely in memory first, then written atomically, so a failure
never replaces a good page with a broken one. Default output: ``reports/<run>.html``."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from dpprof.analyze.run import Run, load_run
from dpprof.errors import DpprofError
from dpprof.fileio import is_stdout, output_target, write_text_atomic

REPORTS_DIR = Path("reports")


def output_path(out: Path | None, name: str) -> Path:
    """Where the page goes: ``out`` as given, ``out/<name>.html`` for a folder, else reports/<name>.html."""
    if out is None:
        return REPORTS_DIR / f"{name}.html"
    if is_stdout(out):
        return out
    if out.is_dir() or str(out).endswith(os.sep):
        return out / f"{name}.html"
    return out


def _refuse_special(out: Path | None) -> None:
    if out is not None and not is_stdout(out) and not out.is_dir():
        output_target(out)  # a device or a FIFO is refused before the analysis, not after it


def write_report(paths: Sequence[str | os.PathLike[str]], out: Path | None = None,
                 baseline: Sequence[str | os.PathLike[str]] = (), **diagnosis: Any) -> tuple[Path, Run]:
    """Analyze ``paths``, render the page, write it atomically; returns (path written, the Run)."""
    from dpprof.report.html import render_run

    _refuse_special(out)
    run = load_run(paths, baseline=baseline, **diagnosis)
    target = output_path(out, run.name)
    html = render_run(run, target)  # fully rendered before the file is touched
    write_text_atomic(target, html)
    return target, run


def report_run(run_dir: Path, out: Path | None = None) -> Path:
    """Write the report of ``run_dir`` (``dpprof profile --report``); returns the file written."""
    target, _ = write_report([run_dir], out)
    return target


def write_compare(a: str | Path, b: str | Path, out: Path | None = None, max_inflate: int | None = None) -> Path:
    """Analyze both runs, render the comparison, write it atomically; returns the file written."""
    from dpprof.report.html import render_compare

    _refuse_special(out)
    run_a, run_b = load_run([a], max_inflate=max_inflate), load_run([b], max_inflate=max_inflate)
    target = output_path(out, f"compare-{run_a.name}-vs-{run_b.name}")
    html = render_compare(run_a, run_b, out=target)
    write_text_atomic(target, html)
    return target


def report_after_run(run_dir: Path, prog: str, stream: IO[str] | None = None) -> int:
    """Write the HTML report of a run that has just ended (``profile --report``, ``run --report``); 0, or 1 when
    it failed (the run itself stays on disk). ``prog`` names the command in messages; the report's path goes to
    ``stream`` (default stdout). Every line is cleaned (``dpprof.term.clean``): the run's name and the error come
    from files and the command line, and may hold control characters."""
    from dpprof.term import clean

    try:
        path = report_run(run_dir)
    except DpprofError as exc:
        print(clean(f"{prog}: report failed: {exc} (the run itself is on disk: {run_dir})"), file=sys.stderr)
        return 1
    except Exception as exc:  # the run is safe on disk; a report bug must not hide that
        print(clean(f"{prog}: report failed: {type(exc).__name__}: {exc} (the run itself is on disk: "
                    f"{run_dir}; set DPPROF_DEBUG=1 and run `dpprof report {run_dir}` for details)"), file=sys.stderr)
        return 1
    print(clean(f"report: {path}"), file=stream if stream is not None else sys.stdout)
    return 0
