"""``dpprof run [options] SCRIPT [args]`` (or ``-m MODULE``): profile the user's own, unchanged training.

In one process (single device, nn.DataParallel) the script runs here. With ``--nproc`` (and
``--nnodes``/``--rdzv-*``) dpprof launches it through torchrun, one rank per process, as ``dpprof
profile`` launches DDP; a script that the user's own torchrun starts works too:
``torchrun --nproc-per-node 2 -m dpprof.run train.py``. Either way the run directory is the one
``dpprof profile`` writes (docs/run-format.md). dpprof's own lines go to stderr, and dpprof exits with
the script's exit code.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from dpprof.errors import DpprofError
from dpprof.term import echo

HELP = "run your own training script (single, DP, DDP, FSDP) under torch.profiler and NVML, writing one run directory"


def prepare_parser(p: argparse.ArgumentParser) -> None:
    from dpprof.collect.options import add_launch_options, add_output_options, add_profiler_options
    from dpprof.collect.stepping import STEP_ON_HELP

    p.usage = "dpprof run [options] SCRIPT [args ...]  |  dpprof run [options] -m MODULE [args ...]"
    p.epilog = ("Everything after SCRIPT (or -m MODULE) goes to the script. Steps: one per optimizer.step() "
                "unless --step-on says otherwise; the profiler window counts them. Output: "
                "OUT/run-<script>-<UTC stamp>/ as dpprof profile writes it (docs/run-format.md). Under the "
                "user's own torchrun: torchrun --nproc-per-node N -m dpprof.run [options] SCRIPT [args].")
    p.add_argument("-m", dest="as_module", action="store_true", help="run a module, as python -m does")
    p.add_argument("script_argv", nargs=argparse.REMAINDER, metavar="SCRIPT [args ...]",
                   help="the script (or with -m the module) and its arguments")
    p.add_argument("--config", help=argparse.SUPPRESS)  # a rank launched by dpprof run --nproc
    g = p.add_argument_group("steps")
    g.add_argument("--step-on", default="optimizer", help=STEP_ON_HELP)
    g.add_argument("--batch-size", type=int,
                   help="global batch size, when dim 0 of the model's first input is not it (default: inferred)")
    d = p.add_argument_group("processes (DDP/FSDP through torchrun)")
    add_launch_options(d, None, "ddp/fsdp")
    r = p.add_argument_group("profiling and output")
    add_profiler_options(r)
    add_output_options(r, "run-<script>-<UTC stamp>")
    r.add_argument("--quiet", action="store_true", help="no dpprof lines on stderr but errors")


def _command_line() -> list[str]:
    if Path(sys.argv[0]).name == "run.py" and Path(sys.argv[0]).parent.name == "dpprof":
        return [sys.executable, "-m", "dpprof.run", *sys.argv[1:]]
    return ["dpprof", *sys.argv[1:]] if sys.argv[1:2] == ["run"] else ["dpprof", "run"]


def build_config(args: argparse.Namespace) -> Any:
    """The :class:`ScriptRunConfig` from the parsed arguments (run directory not chosen yet)."""
    from dpprof.collect.config import validate_profiler
    from dpprof.collect.options import profiler_settings
    from dpprof.collect.run_config import ScriptRunConfig
    from dpprof.collect.stepping import parse_step_on

    command = list(args.script_argv)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise DpprofError("give the script to run (dpprof run [options] SCRIPT [args]) or -m MODULE")
    parse_step_on(args.step_on)
    if args.batch_size is not None and args.batch_size < 1:
        raise DpprofError("--batch-size must be at least 1")
    cfg = ScriptRunConfig(target=command[0], module=args.as_module, args=command[1:], step_on=args.step_on,
                          batch_size=args.batch_size, command=_command_line(), created_unix_ns=time.time_ns(),
                          quiet=args.quiet, nnodes=args.nnodes, **profiler_settings(args))
    validate_profiler(cfg)
    return cfg


def run(args: argparse.Namespace) -> int:
    from dpprof.commands.options import require_extra

    require_extra("collect", "dpprof run")
    from dpprof.collect.run_config import (
        ScriptRunConfig,
        default_run_name,
        shared_run_name,
        torchrun_record,
        under_torchrun,
    )

    if args.config:  # one rank of a dpprof run --nproc launch: the launcher reports
        return run_here(ScriptRunConfig.from_json(args.config), summary=False, report=False)
    cfg = build_config(args)
    if args.nproc is not None or args.nnodes > 1:
        if under_torchrun():
            raise DpprofError("already started by torchrun: leave out --nproc/--nnodes (torchrun chose them)")
        return launch(args, cfg)
    from dpprof.collect.outputs import fresh_run_dir

    torchrun = under_torchrun()
    name = args.run_name or (shared_run_name(cfg.target, cfg.module) if torchrun else
                             default_run_name(cfg.target, cfg.module, cfg.created_unix_ns))
    # the ranks of one torchrun launch create-or-join one directory; another launch's is refused
    run_dir = fresh_run_dir(Path(args.out), name, explicit=bool(args.run_name),
                            join=torchrun_record() if torchrun else None)
    cfg.run_dir, cfg.run_id = str(run_dir), run_dir.name
    rank0 = os.environ.get("RANK", "0") == "0"
    try:
        return run_here(cfg, summary=rank0, report=args.report and rank0)
    finally:
        _release_if_empty(run_dir)


def _release_if_empty(run_dir: Path) -> None:
    """A run that recorded nothing (the script was not found, a bad --step-on) leaves no run directory behind
    (under torchrun it holds the launch's record alone: every rank checks the same thing and fails alike)."""
    from dpprof.collect.run_dir import JOIN_FILE

    try:
        if [p.name for p in run_dir.iterdir()] == [JOIN_FILE]:
            (run_dir / JOIN_FILE).unlink()
        run_dir.rmdir()  # only an empty directory goes
    except OSError:
        pass


def run_here(cfg: Any, summary: bool, report: bool) -> int:
    """Run the script in this process under a :class:`RunSession`; the script's exit code. Everything
    that can refuse the run (the script, its syntax, ``--step-on``'s function) is checked before the run
    directory gets a file, so a refusal leaves an empty directory that :func:`run` removes."""
    from dpprof.collect.outputs import make_run_dir
    from dpprof.collect.script_runner import Outcome, as_main, compile_script, locate, run_code
    from dpprof.collect.script_session import RunSession
    from dpprof.collect.stepping import (
        DECORATOR,
        DecorateDefinitions,
        StepOn,
        find_function,
        parse_step_on,
        step_decorator,
    )

    script = locate(cfg.target, cfg.module, cfg.args)
    step_on = parse_step_on(cfg.step_on)
    decorate = DecorateDefinitions(step_on.qualname) if step_on.kind == "function" and not step_on.module else None
    try:
        code = compile_script(script, decorate.transform if decorate else None)
    except SyntaxError as exc:
        # What python itself prints for a script that does not compile: the error alone, no frame (its
        # traceback here would be dpprof's and ast.parse's), and exit code 1 (pythonrun.c, _PyRun_SimpleFileObject).
        # Python's own hook: nothing of the script ran to set another (torch's init_process_group replaces
        # sys.excepthook with one that prefixes "[rankN]:", which an earlier in-process run may have left).
        sys.__excepthook__(type(exc), exc.with_traceback(None), None)
        return 1
    if decorate is not None and not decorate.found:
        raise DpprofError(f"--step-on function:{step_on.target}: {script.target} defines no function or method "
                          f"{step_on.qualname} (name one in another module as function:MODULE:NAME)")
    if decorate is not None and decorate.resolved != step_on.qualname:
        step_on = StepOn("function", target=decorate.resolved)
    run_dir = Path(cfg.run_dir)
    with as_main(script) as main:
        # imported with the script's sys.path[0], as the script would import it
        function = find_function(step_on, main) if step_on.module else None
        make_run_dir(run_dir)
        session = RunSession(cfg, script, step_on, function)
        if summary and not cfg.quiet:
            echo(f"dpprof run: {script.target} -> {run_dir}", err=True)  # names from the user's files: cleaned
        if decorate is not None:  # the name the script's decorated definitions call
            main.__dict__[DECORATOR] = step_decorator(session.boundary)
        try:
            session.start()
        except BaseException as exc:  # the script never started: the run directory says why
            session.finish(Outcome("failed", 2, f"dpprof could not start: {exc}"))
            raise
        _finish_on_sigterm(session)
        outcome = run_code(code, main)
        session.finish(outcome)
    return _after(run_dir, outcome.exit_code, summary, report, cfg.quiet)


def _finish_on_sigterm(session: Any) -> None:
    """SIGTERM's default action kills the process at once: record the run first, then die by the same
    signal. Only where nobody (the script, torchrun's worker setup) handles SIGTERM already."""
    from dpprof.collect.script_runner import Outcome
    from dpprof.fileio import sigterm_unwinds

    try:
        current = signal.getsignal(signal.SIGTERM)
    except ValueError:  # not the main thread
        return
    if current is not signal.SIG_DFL and not sigterm_unwinds(current):  # dpprof's own unwinding is replaced
        return

    def handler(signum: int, frame: Any) -> None:
        session.finish(Outcome("incomplete", 128 + signum, "stopped by SIGTERM"), signal_name="SIGTERM")
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, handler)


def launch(args: argparse.Namespace, cfg: Any) -> int:
    """``--nproc``/``--nnodes``: this node's ranks through torchrun, each running :func:`run_here`."""
    from dpprof.collect.launch import launch_torchrun, torchrun_command
    from dpprof.collect.manifest import mark_unfinished
    from dpprof.collect.options import topology
    from dpprof.collect.outputs import fresh_run_dir
    from dpprof.collect.run_config import default_run_name, run_name_for_id
    from dpprof.collect.run_dir import rendezvous_record

    topo = topology(args, 1 if args.nproc is None else args.nproc)  # --nproc 0 is refused there
    cfg.nproc, cfg.nnodes = topo.nproc_per_node, topo.nnodes
    several = topo.nnodes > 1
    name = args.run_name or (run_name_for_id(cfg.target, cfg.module, args.rdzv_id) if several else
                             default_run_name(cfg.target, cfg.module, cfg.created_unix_ns))
    # the nodes of one rendezvous create-or-join one directory, as dpprof profile's do
    rdzv = rendezvous_record(args.rdzv_id, args.rdzv_endpoint, topo.nnodes) if several else None
    run_dir = fresh_run_dir(Path(args.out), name, explicit=bool(args.run_name), join=rdzv)
    cfg.run_dir, cfg.run_id = str(run_dir), run_dir.name
    if not cfg.quiet:
        echo(f"dpprof run: {cfg.target} on {topo.nproc_per_node} process(es) per node x {topo.nnodes} node(s) "
             f"through torchrun -> {run_dir}", err=True)
    done = launch_torchrun(torchrun_command(topo, ["-m", "dpprof.run", "--config", cfg.to_json()]))
    code = 0
    if done.rc != 0 and done.interrupted:
        mark_unfinished(run_dir, "incomplete", f"launcher interrupted by {done.interrupted[0]}")
        code = 130
    elif done.rc != 0:
        code = done.first_failed_exit_code() or done.rc
        mark_unfinished(run_dir, "failed", f"a rank's script failed: {done.scan.describe()}", force=True)
    _refresh_nodes(run_dir)
    return _after(run_dir, code, True, args.report, cfg.quiet)


def _refresh_nodes(run_dir: Path) -> None:
    """Once every local rank has ended: the manifest's node list and peak memory from the node files
    (rank 0 wrote the manifest before its peers had written theirs)."""
    from dpprof.collect.manifest import ManifestWriter, node_entries, read_node_files
    from dpprof.rundir import MANIFEST, read_json

    data = read_json(run_dir / MANIFEST)  # rewritten as it is: fields this function does not touch are kept
    if not isinstance(data, dict):
        return
    nodes = read_node_files(run_dir)
    data["nodes"] = node_entries(nodes)
    data["peak_memory_bytes"] = {k: v for n in nodes for k, v in n.get("peak_memory_bytes", {}).items()}
    ManifestWriter(run_dir, data).write()


def _after(run_dir: Path, code: int, summary: bool, report: bool, quiet: bool) -> int:
    """The summary (stderr), the report if asked for, and the script's exit code."""
    from dpprof.collect.summary import print_summary
    from dpprof.report.files import report_after_run

    if summary and not quiet:
        print_summary(run_dir, stderr=True)
    if report and summary:
        if any((run_dir / "traces").glob("*.pt.trace.json*")):
            report_after_run(run_dir, "dpprof run", stream=sys.stderr)
        else:
            echo(f"dpprof run: --report: no trace was written, so no report ({run_dir})", err=True)
    return code
