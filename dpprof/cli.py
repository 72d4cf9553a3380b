"""``dpprof`` command line: thin. Each subcommand is a module of ``dpprof.commands``.

A subcommand module exposes ``HELP`` (one line), ``prepare_parser(parser)`` and ``run(args) -> int``.
User errors (``DpprofError``) become one line on stderr (control characters escaped, see
``dpprof.term``) and exit code 2; nothing prints a traceback unless ``DPPROF_DEBUG=1``. A closed stdout
(``| head``) ends printing quietly; SIGTERM unwinds a command like Ctrl-C (``dpprof.fileio.command_scope``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from collections.abc import Sequence
from typing import NoReturn

from dpprof.errors import DpprofError, Terminated
from dpprof.version import __version__

# name -> module holding HELP / prepare_parser / run. Modules must import heavy libraries lazily.
COMMANDS: dict[str, str] = {
    "profile": "dpprof.commands.profile",
    "run": "dpprof.commands.run",
    "analyze": "dpprof.commands.analyze",
    "merge-nvml": "dpprof.commands.merge_nvml",
    "perfetto": "dpprof.commands.perfetto",
    "report": "dpprof.commands.report",
    "compare": "dpprof.commands.compare",
    "sweep": "dpprof.commands.sweep",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2 (argparse's own convention)
        from dpprof.term import clean

        self.exit(2, clean(f"{self.prog}: error: {message}") + "\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dpprof", description="Profile and diagnose PyTorch data-parallel training.")
    parser.add_argument("--version", action="version", version=f"dpprof {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.prepare_parser(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from dpprof.fileio import command_scope
    from dpprof.term import guard_streams

    with guard_streams():
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "command", None):
            parser.print_help()
            return 2
        with command_scope(), warnings.catch_warnings():
            if not os.environ.get("DPPROF_DEBUG"):
                # numpy/matplotlib warnings are for dpprof's developers: what the user must know is in
                # dpprof's own warnings. Forked analysis workers inherit the filter.
                warnings.simplefilter("ignore")
            return _run(args)


def _run(args: argparse.Namespace) -> int:
    from dpprof.term import echo

    try:
        return int(args._module.run(args) or 0)
    except DpprofError as exc:
        echo(f"dpprof {args.command}: error: {exc}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        echo(f"dpprof {args.command}: interrupted", err=True)
        return 130
    except Terminated as exc:
        echo(f"dpprof {args.command}: terminated by signal {exc.signum}", err=True)
        return 128 + exc.signum
    except Exception as exc:  # a bug, not bad input: still one line unless debugging
        if os.environ.get("DPPROF_DEBUG"):
            raise
        echo(f"dpprof {args.command}: internal error: {type(exc).__name__}: {exc} "
             "(set DPPROF_DEBUG=1 for the traceback)", err=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
