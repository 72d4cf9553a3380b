"""``dpprof report RUN_DIR|TRACE... [--out FILE]``: analyze, diagnose and write one self-contained HTML page
(``dpprof.report.files.write_report``: rendered in memory, then written atomically)."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "write the HTML report of a run (run directory or trace files): verdicts, plots, tables"


def prepare_parser(p: argparse.ArgumentParser) -> None:
    from dpprof.commands.options import add_diagnosis_options, add_read_options

    p.add_argument("inputs", nargs="+", metavar="RUN_DIR|TRACE", help="a run directory, a folder of traces, "
                   "or trace files (*.pt.trace.json[.gz])")
    p.add_argument("--out", type=Path, default=None, metavar="FILE",
                   help="the HTML file to write (default: reports/<run>.html; a folder: <folder>/<run>.html; "
                   "- for standard output)")
    add_diagnosis_options(p)
    add_read_options(p)


def run(args: argparse.Namespace) -> int:
    from dpprof.fileio import is_stdout
    from dpprof.report.files import write_report
    from dpprof.report.fmt import HYPOTHESIS_TITLES, VERDICT_LABELS
    from dpprof.term import echo

    target, run_ = write_report(args.inputs, args.out, baseline=args.baseline, link_gbps=args.link_gbps,
                                param_bytes=args.param_bytes, sweep=args.sweep, max_inflate=args.max_inflate)
    err = is_stdout(target)  # --out -: the page owns stdout, the summary goes to stderr
    analysis = run_.analysis
    if analysis.diagnosis is not None:
        for h in analysis.diagnosis.hypotheses:
            echo(f"  {HYPOTHESIS_TITLES.get(h.id, h.id)}: {VERDICT_LABELS.get(h.verdict, h.verdict)}", err=err)
    echo(f"report: {'standard output' if err else target}", err=err)
    return 0
