"""``dpprof compare A B [--out FILE]``: two runs side by side (e.g. DP vs DDP) in one HTML page.

Each of A and B is a run directory or one trace file. Default output:
``reports/compare-<A>-vs-<B>.html``. Rendered fully in memory, then written atomically.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "compare two runs side by side (e.g. DP vs DDP): step time, throughput, categories, verdicts"


def prepare_parser(p: argparse.ArgumentParser) -> None:
    from dpprof.commands.options import add_read_options

    p.add_argument("a", metavar="A", help="first run: a run directory or a trace file")
    p.add_argument("b", metavar="B", help="second run: a run directory or a trace file")
    p.add_argument("--out", type=Path, default=None, metavar="FILE",
                   help="the HTML file to write (default: reports/compare-<A>-vs-<B>.html; - for standard output)")
    add_read_options(p)


def run(args: argparse.Namespace) -> int:
    from dpprof.fileio import is_stdout
    from dpprof.report.files import write_compare
    from dpprof.term import echo

    target = write_compare(args.a, args.b, args.out, args.max_inflate)
    echo(f"comparison: {'standard output' if is_stdout(target) else target}", err=is_stdout(target))
    return 0
