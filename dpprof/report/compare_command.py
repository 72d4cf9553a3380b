"""``dpprof compare A B [--out FILE]``: two runs side by side (e.g. DP vs DDP) in one HTML page.

Each of A and B is a run directory or one trace file. Default output:
``reports/compare-<A>-vs-<B>.html``. Rendered fully in memory, then written atomically.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "compare two runs side by side (e.g. DP vs DDP): step time, throughput, categories, verdicts"


def prepare_parser(p: argparse.ArgumentParser) -> None:
    from dpprof.trace.inflate import add_read_options

    p.add_argument("a", metavar="A", help="first run: a run directory or a trace file")
    p.add_argument("b", metavar="B", help="second run: a run directory or a trace file")
    p.add_argument("--out", type=Path, default=None, metavar="FILE",
                   help="the HTML file to write (default: reports/compare-<A>-vs-<B>.html; - for standard output)")
    add_read_options(p)


def write_compare(a: str | Path, b: str | Path, out: Path | None = None, max_inflate: int | None = None) -> Path:
    """Analyze both runs, render the comparison, write it atomically; returns the file written."""
    from dpprof.analyze.run import load_run
    from dpprof.fileio import is_stdout, output_target, write_text_atomic
    from dpprof.report.command import output_path
    from dpprof.report.html import render_compare

    if out is not None and not is_stdout(out) and not out.is_dir():
        output_target(out)  # a device or a FIFO is refused before the analysis, not after it
    run_a, run_b = load_run([a], max_inflate=max_inflate), load_run([b], max_inflate=max_inflate)
    target = output_path(out, f"compare-{run_a.name}-vs-{run_b.name}")
    html = render_compare(run_a, run_b, out=target)
    write_text_atomic(target, html)
    return target


def run(args: argparse.Namespace) -> int:
    from dpprof.fileio import is_stdout
    from dpprof.term import echo

    target = write_compare(args.a, args.b, args.out, args.max_inflate)
    echo(f"comparison: {'standard output' if is_stdout(target) else target}", err=is_stdout(target))
    return 0
