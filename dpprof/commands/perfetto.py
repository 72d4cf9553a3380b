"""``dpprof perfetto RUN_DIR|TRACE... [--ranks L] [--steps L] [--no-host-ops] [--no-kernels] [--open] [--out FILE|-]``.

Thin: parse, call ``dpprof.perfetto.merge.merge``, print what was written, and with ``--open`` serve it to
ui.perfetto.dev (``dpprof.perfetto.serve``). The port is taken before merging, so a busy port is said at once.
Everything printed goes through ``dpprof.term`` (names and warnings come from the run's files).

``--out -`` writes the merged trace to standard output as plain JSON (not gzipped: pipe it through ``gzip`` when
wanted; Perfetto and trace_processor read either), and the summary to stderr. It is refused when standard output
is a terminal (megabytes of JSON are of no use there) and with ``--open`` (there is no file to serve).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dpprof.perfetto.merge import MergeResult

HELP = "write one Perfetto timeline of every rank (clocks aligned, NVML counters, dpprof's attribution); --open shows it"


def prepare_parser(p: argparse.ArgumentParser) -> None:
    from dpprof.commands.options import add_read_options

    p.add_argument("inputs", nargs="+", metavar="RUN_DIR|TRACE", help="a run directory, a folder of traces, "
                   "or trace files (*.json, *.json.gz), one per rank")
    p.add_argument("--out", type=Path, default=None, metavar="FILE", help="the trace to write, *.json.gz or "
                   "*.json (default: RUN/perfetto/all_ranks.json.gz, named after the selection); - for standard output (plain "
                   "JSON, the summary then goes to stderr)")
    p.add_argument("--ranks", metavar="LIST", help="only these ranks, e.g. 0,3,7 or 0-3 (all are analysed)")
    p.add_argument("--steps", metavar="LIST", help="only these profiled steps, e.g. 3-5")
    p.add_argument("--no-host-ops", action="store_true", help="leave out CPU ops, runtime calls and Python "
                   "functions (annotations such as ProfilerStep# and DP phases stay)")
    p.add_argument("--no-kernels", action="store_true", help="leave out GPU kernels, copies and memsets")
    p.add_argument("--open", action="store_true", help="serve it on 127.0.0.1 and open it in ui.perfetto.dev")
    p.add_argument("--port", type=int, default=None, metavar="N", help="port for --open (default 9001, the only "
                   "one the UI's deep links may fetch from; 0: any free port)")
    p.add_argument("--keep-serving", action="store_true", help="with --open: serve until Ctrl-C, not only once")
    p.add_argument("--no-browser", action="store_true", help="with --open: print the link, do not open a browser")
    p.add_argument("--jobs", type=int, default=None, metavar="N", help="analysis worker processes")
    add_read_options(p)


def run(args: argparse.Namespace) -> int:
    from dpprof.errors import DpprofError
    from dpprof.fileio import is_stdout
    from dpprof.perfetto.layout import PERFETTO_DIR, Selection, parse_numbers

    if not args.open and (args.port is not None or args.keep_serving or args.no_browser):
        raise DpprofError("--port, --keep-serving and --no-browser go with --open")
    if args.jobs is not None and args.jobs < 1:
        raise DpprofError("--jobs must be at least 1")
    to_stdout = args.out is not None and is_stdout(args.out)
    if to_stdout and args.open:
        raise DpprofError("--out - writes the trace to standard output: there is no file for --open to serve")
    if to_stdout and sys.stdout.isatty():
        raise DpprofError("--out -: standard output is a terminal; pipe it (e.g. | gzip > all_ranks.json.gz) or "
                          "give a file")
    selection = Selection(ranks=parse_numbers(args.ranks, "ranks") if args.ranks is not None else None,
                          steps=parse_numbers(args.steps, "steps") if args.steps is not None else None,
                          host_ops=not args.no_host_ops, kernels=not args.no_kernels)
    given = Path(args.inputs[0])
    # An earlier output (what this command writes, into RUN/perfetto/ by default), known by its first bytes wherever
    # it lies and whatever its name: served again as it is, never merged.
    from dpprof.perfetto.layout import is_merged
    from dpprof.rundir import resolve_inputs

    merged = [p for p in resolve_inputs(args.inputs).traces if is_merged(p)]
    again = len(args.inputs) == 1 and given.is_file() and bool(merged)
    if again:
        if not args.open or args.ranks or args.steps or args.no_host_ops or args.no_kernels or args.out:
            raise DpprofError(f"{given}: already a merged trace (dpprof perfetto wrote it): only --open (and its "
                              "options) apply to it; give the run directory or the rank traces to merge again")
    elif merged:
        raise DpprofError(f"{merged[0]}: a trace dpprof perfetto merged (into {PERFETTO_DIR}/ by default), not one "
                          "rank's trace: merge the run directory or the rank traces")
    server = None
    if args.open:
        from dpprof.perfetto.serve import DEFAULT_PORT, TraceServer

        port = DEFAULT_PORT if args.port is None else args.port
        if not 0 <= port <= 65535:
            raise DpprofError(f"--port {port}: not a TCP port")
        server = TraceServer(port, log=_say)
    try:
        from dpprof.perfetto.merge import merge

        if again:
            output = given
        else:
            result = merge(args.inputs, out=args.out, selection=selection, jobs=args.jobs,
                           max_inflate=args.max_inflate)
            report(result, err=to_stdout)
            output = result.output
        if server is not None:
            from dpprof.perfetto.serve import open_in_ui

            open_in_ui(server, output, open_browser=not args.no_browser, keep_serving=args.keep_serving,
                       say=_say)
    finally:
        if server is not None:
            server.server_close()
    return 0


def _say(line: str) -> None:
    """A line of the server's (the request line holds what a client sent): cleaned, and shown at once."""
    from dpprof.term import echo

    echo(line)
    sys.stdout.flush()


def report(result: MergeResult, err: bool = False) -> None:
    """What was written: where, how big, which events, each rank's clock; a warning when it is too big. ``err``:
    the summary goes to stderr (the trace owns stdout). Every line is cleaned (``dpprof.term``): paths, notes and
    NVML warnings come from the run's files."""
    from dpprof.fileio import is_stdout
    from dpprof.perfetto.layout import WARN_JSON_BYTES
    from dpprof.term import echo

    c = result.counts
    kinds = ", ".join(f"{label} {c.get(key, 0):,}" for key, label in (
        ("host", "host"), ("gpu", "GPU"), ("flow", "flows"), ("attribution", "attribution"), ("nvml", "NVML"),
        ("other", "other"), ("metadata", "names")))
    where = "standard output" if is_stdout(result.output) else result.output
    size = "" if is_stdout(result.output) else f"{result.file_bytes / 1e6:,.1f} MB, "
    echo(f"wrote {where}: {len(result.ranks)} rank(s), {result.gpus} GPU(s); {sum(c.values()):,} events "
         f"({kinds}); {size}{result.json_bytes / 1e6:,.1f} MB of JSON", err=err)
    for line in result.clocks:
        echo(f"  clock: {line}", err=err)
    for note in result.notes:
        echo(f"note: {note}", err=True)
    if result.too_big:
        echo(f"warning: {result.json_bytes / 1e6:,.0f} MB of JSON: Perfetto's in-browser JSON importer gets slow and "
             f"may run out of memory past a few hundred MB (this warning starts at {WARN_JSON_BYTES / 1e6:,.0f} "
             "MB); keep it smaller with --ranks, --steps, --no-host-ops or --no-kernels", err=True)
