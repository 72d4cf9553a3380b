"""``dpprof report RUN_DIR|TRACE... [--out FILE]``: analyze, diagnose and write one self-contained HTML page.

The page is rendered completely in memory before anything is written, and written atomically, so a
failure never replaces a good report with a broken one. Default output: ``reports/<run>.html``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dpprof.fileio import is_stdout

if TYPE_CHECKING:
    from dpprof.analyze.run import Run

HELP = "write the HTML report of a run (run directory or trace files): verdicts, plots, tables"
REPORTS_DIR = Path("reports")


def prepare_parser(p: argparse.ArgumentParser) -> None:
    from dpprof.analyze.options import add_diagnosis_options, add_read_options

    p.add_argument("inputs", nargs="+", metavar="RUN_DIR|TRACE", help="a run directory, a folder of traces, "
                   "or trace files (*.pt.trace.json[.gz])")
    p.add_argument("--out", type=Path, default=None, metavar="FILE",
                   help="the HTML file to write (default: reports/<run>.html; a folder: <folder>/<run>.html; "
                   "- for standard output)")
    add_diagnosis_options(p)
    add_read_options(p)


def output_path(out: Path | None, name: str) -> Path:
    """Where the report goes: ``out`` as given, ``out/<name>.html`` for a folder, else reports/<name>.html."""
    if out is None:
        return REPORTS_DIR / f"{name}.html"
    if is_stdout(out):
        return out
    if out.is_dir() or str(out).endswith(os.sep):
        return out / f"{name}.html"
    return out


def write_report(paths: Sequence[str | os.PathLike[str]], out: Path | None = None,
                 baseline: Sequence[str | os.PathLike[str]] = (), **diagnosis: Any) -> tuple[Path, Run]:
    """Analyze ``paths``, render the page, write it atomically; returns (path written, the Run)."""
    from dpprof.analyze.run import load_run
    from dpprof.fileio import output_target, write_text_atomic
    from dpprof.report.html import render_run

    if out is not None and not is_stdout(out) and not out.is_dir():
        output_target(out)  # a device or a FIFO is refused before the analysis, not after it
    run = load_run(paths, baseline=baseline, **diagnosis)
    target = output_path(out, run.name)
    html = render_run(run, target)  # fully rendered before the file is touched
    write_text_atomic(target, html)
    return target, run


def report_run(run_dir: Path, out: Path | None = None) -> Path:
    """Write the report of ``run_dir`` (called by ``dpprof profile --report``); returns the file written."""
    target, _ = write_report([run_dir], out)
    return target


def run(args: argparse.Namespace) -> int:
    from dpprof.report.fmt import HYPOTHESIS_TITLES, VERDICT_LABELS
    from dpprof.term import echo

    target, run_inputs = write_report(args.inputs, args.out, baseline=args.baseline, link_gbps=args.link_gbps,
                                      param_bytes=args.param_bytes, sweep=args.sweep, max_inflate=args.max_inflate)
    err = is_stdout(target)  # --out -: the page owns stdout, the summary goes to stderr
    analysis = run_inputs.analysis
    if analysis.diagnosis is not None:
        for h in analysis.diagnosis.hypotheses:
            echo(f"  {HYPOTHESIS_TITLES.get(h.id, h.id)}: {VERDICT_LABELS.get(h.verdict, h.verdict)}", err=err)
    echo(f"report: {'standard output' if err else target}", err=err)
    return 0
