"""``dpprof merge-nvml RUN_DIR``: copies of the rank traces with NVML counters, in ``RUN/merged/``."""

from __future__ import annotations

import argparse
from pathlib import Path

from dpprof.errors import DpprofError

HELP = "write RUN/merged/: each rank trace plus the NVML samples as counter tracks (open in Perfetto)"


def prepare_parser(parser: argparse.ArgumentParser) -> None:
    from dpprof.commands.options import add_read_options

    parser.add_argument("run_dir", metavar="RUN_DIR", type=Path, help="a run directory written by `dpprof profile`")
    add_read_options(parser)


def run(args: argparse.Namespace) -> int:
    from dpprof.term import echo
    from dpprof.trace.nvml_merge import merge_run_detailed

    run_dir: Path = args.run_dir
    if not run_dir.is_dir():
        raise DpprofError(f"{run_dir}: not a directory")
    results, nvml = merge_run_detailed(run_dir, args.max_inflate)
    for note in nvml.warnings:
        echo(f"warning: NVML: {note}", err=True)
    for r in results:
        gpus = ", ".join(f"GPU {d}" for d in r.devices) or "no GPU"
        echo(f"{r.output}: rank {r.rank if r.rank is not None else '?'}, {r.counters} counter events from "
             f"{r.samples_in_range} samples of {r.node or '?'} ({gpus}); "
             f"{r.samples_out_of_range} samples outside the trace's span left out")
        for note in r.warnings:
            echo(f"warning: {note}", err=True)
    return 0
