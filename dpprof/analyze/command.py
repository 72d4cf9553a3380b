"""``dpprof analyze RUN_DIR|TRACE... [--json OUT] [--merge-nvml] [--jobs N]``.

Never imports torch or matplotlib: the analysis needs only msgspec, numpy and rich.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "Attribute every step on every GPU (DP/DDP-aware) and print/write the analysis"


def prepare_parser(p: argparse.ArgumentParser) -> None:
    from dpprof.analyze.rundata import add_diagnosis_options

    p.add_argument("inputs", nargs="+", metavar="RUN_DIR|TRACE", help="a run directory, a folder of traces, "
                   "or trace files (*.json, *.json.gz), one per rank")
    p.add_argument("--json", dest="json_out", metavar="OUT", help="write the analysis JSON here "
                   "(default for a run directory: RUN/analysis.json)")
    p.add_argument("--no-json", action="store_true", help="do not write the analysis JSON")
    p.add_argument("--merge-nvml", action="store_true", help="also write NVML-merged traces into RUN/merged/")
    add_diagnosis_options(p)
    p.add_argument("--jobs", type=int, default=None, metavar="N", help="worker processes (default min(2, ranks))")
    p.add_argument("--quiet", action="store_true", help="print only warnings")


def run(args: argparse.Namespace) -> int:
    from dpprof.analyze.rundata import load_run_data
    from dpprof.errors import DpprofError
    from dpprof.report.console import render
    from dpprof.rundir import ANALYSIS, write_json

    if args.jobs is not None and args.jobs < 1:
        raise DpprofError("--jobs must be at least 1")
    data = load_run_data(args.inputs, baseline=args.baseline, jobs=args.jobs, link_gbps=args.link_gbps,
                         param_bytes=args.param_bytes, sweep=args.sweep)
    inputs, analysis = data.inputs, data.analysis
    if args.quiet:
        import sys

        for w in analysis.warnings:
            who = f"rank {w.rank}: " if w.rank is not None else ""
            print(f"warning [{w.code}] {who}{w.message}", file=sys.stderr)
    else:
        render(analysis)
    out: Path | None = None
    if args.json_out:
        out = Path(args.json_out)
    elif inputs.run_dir is not None and not args.no_json:
        out = inputs.run_dir / ANALYSIS
    if out is not None and not args.no_json:
        write_json(out, analysis.to_json())
        print(f"analysis written to {out}")
    if args.merge_nvml:
        if inputs.run_dir is None:
            raise DpprofError("--merge-nvml needs a run directory (with nvml.<host>.jsonl and a manifest)")
        from dpprof.trace.nvml_merge import merge_run

        for path in merge_run(inputs.run_dir):
            print(f"merged NVML samples into {path}")
    return 0
