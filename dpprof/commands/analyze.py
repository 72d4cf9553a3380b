"""``dpprof analyze RUN_DIR|TRACE... [--json OUT|-] [--merge-nvml] [--jobs N] [--max-inflate BYTES]``.

Never imports torch or matplotlib: the analysis needs only msgspec, numpy and rich.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "Attribute every step on every GPU (DP/DDP-aware) and print/write the analysis"


def prepare_parser(p: argparse.ArgumentParser) -> None:
    from dpprof.commands.options import add_diagnosis_options, add_read_options

    p.add_argument("inputs", nargs="+", metavar="RUN_DIR|TRACE", help="a run directory, a folder of traces, "
                   "or trace files (*.json, *.json.gz), one per rank")
    p.add_argument("--json", dest="json_out", metavar="OUT", help="write the analysis JSON here, - for standard "
                   "output (the table then goes to stderr; default for a run directory: RUN/analysis.json)")
    p.add_argument("--no-json", action="store_true", help="do not write the analysis JSON")
    p.add_argument("--merge-nvml", action="store_true", help="also write NVML-merged traces into RUN/merged/")
    add_diagnosis_options(p)
    p.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="worker processes (default min(2, ranks); never more than the trace files or the CPUs)")
    add_read_options(p)
    p.add_argument("--crosscheck", choices=["hta"], default=None,
                   help="also run HTA on each rank's trace and print its figures beside dpprof's")
    p.add_argument("--quiet", action="store_true", help="print only warnings")


def run(args: argparse.Namespace) -> int:
    from dpprof.analyze.run import load_run
    from dpprof.errors import DpprofError
    from dpprof.fileio import is_stdout, output_target
    from dpprof.report.console import render, warning_lines
    from dpprof.rundir import ANALYSIS, write_json
    from dpprof.term import echo

    if args.jobs is not None and args.jobs < 1:
        raise DpprofError("--jobs must be at least 1")
    if args.crosscheck == "hta":  # before the analysis, not after it
        from dpprof.commands.options import require_extra

        require_extra("interop", "dpprof analyze --crosscheck hta")
    if args.json_out and not is_stdout(args.json_out):
        output_target(args.json_out)  # a device or FIFO is refused before the analysis, not after
    run_ = load_run(args.inputs, baseline=args.baseline, jobs=args.jobs, link_gbps=args.link_gbps,
                    param_bytes=args.param_bytes, sweep=args.sweep, max_inflate=args.max_inflate)
    analysis = run_.analysis
    out: Path | None = None
    within: Path | None = None
    if args.json_out:
        out = Path(args.json_out)
    elif run_.run_dir is not None and not args.no_json:
        out, within = run_.run_dir / ANALYSIS, run_.run_dir
    to_stdout = out is not None and not args.no_json and is_stdout(out)
    # Results first: whatever happens to the console afterwards (| head), the files are written.
    if out is not None and not args.no_json:
        write_json(out, analysis.to_json(), within=within)
    merged = []
    if args.merge_nvml:
        if run_.run_dir is None:
            raise DpprofError("--merge-nvml needs a run directory (with nvml.<host>.jsonl and a manifest)")
        from dpprof.trace.nvml_merge import merge_run

        merged = merge_run(run_.run_dir, args.max_inflate)
    console_file = sys.stderr if to_stdout else None  # --json -: the JSON owns stdout, the table goes to stderr
    if args.quiet:  # warnings, and the notes met reading the run's other files (steps, NVML), still print
        for line in warning_lines(analysis, run_.notes):
            echo(line, err=True)
    else:
        render(analysis, file=console_file, notes=run_.notes)
    if out is not None and not args.no_json and not to_stdout:
        echo(f"analysis written to {out}", err=to_stdout)
    for path in merged:
        echo(f"merged NVML samples into {path}", err=to_stdout)
    if args.crosscheck == "hta":
        from dpprof.interop.hta import crosscheck, lines

        for line in lines(crosscheck(analysis)):
            echo(line, err=to_stdout)
    return 0
