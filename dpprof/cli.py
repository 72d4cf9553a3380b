"""``dpprof`` command line: thin. Each subcommand lives with its stage and is imported only when run.

A subcommand module exposes ``HELP`` (one line), ``prepare_parser(parser)`` and ``run(args) -> int``.
User errors (``DpprofError``) become one line on stderr and exit code 2; nothing prints a traceback
unless ``DPPROF_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from dpprof import __version__
from dpprof.errors import DpprofError

# name -> module holding HELP / prepare_parser / run. Modules must import heavy libraries lazily.
COMMANDS: dict[str, str] = {
    "profile": "dpprof.collect.command",
    "run": "dpprof.collect.run_command",
    "analyze": "dpprof.analyze.command",
    "merge-nvml": "dpprof.trace.nvml_merge_command",
    "report": "dpprof.report.command",
    "compare": "dpprof.report.compare_command",
    "sweep": "dpprof.sweep_command",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2 (argparse's own convention)
        self.exit(2, f"{self.prog}: error: {message}\n")


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
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args._module.run(args) or 0)
    except DpprofError as exc:
        print(f"dpprof {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"dpprof {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not bad input: still one line unless debugging
        if os.environ.get("DPPROF_DEBUG"):
            raise
        print(f"dpprof {args.command}: internal error: {type(exc).__name__}: {exc} "
              "(set DPPROF_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
