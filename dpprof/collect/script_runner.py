"""Run a user's script (or ``-m`` module) in this process exactly as ``python`` would.

What the script sees is what ``python SCRIPT ARGS`` / ``python -m MODULE ARGS`` gives it: ``sys.argv``
(the script as given, then its arguments; for ``-m`` the module's file), ``sys.path[0]`` (the script's
directory, symlinks resolved; the working directory for ``-m``), a fresh ``__main__`` module with
``__name__ == "__main__"``, an absolute ``__file__``, ``__spec__`` (None for a script), the working
directory untouched. Its source is compiled from its own file name, so tracebacks and warnings name
the script's lines; an uncaught exception is printed by ``sys.excepthook`` without dpprof's frames.
Exit codes follow Python's: ``sys.exit(n)`` -> n, ``sys.exit("text")`` -> the text on stderr and 1, an
uncaught exception -> 1, Ctrl-C -> 130. (coverage.py's ``execfile.PyRunner`` does the same job.)
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import hashlib
import importlib.machinery
import importlib.util
import os
import sys
import traceback
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dpprof.errors import DpprofError


@dataclass
class Script:
    """A located script: its file and source, and what Python would set for it."""

    target: str
    module: bool
    args: list[str]
    file: Path
    source: bytes
    argv0: str
    path0: str
    spec: Any = None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.source).hexdigest()

    @property
    def argv(self) -> list[str]:
        return [self.argv0, *self.args]


@dataclass
class Outcome:
    """How the script ended: ``status`` complete | failed | incomplete (Ctrl-C), its exit code, and for a
    failure the exception's last line or ``exit code N``."""

    status: str
    exit_code: int
    error: str | None = None


def locate(target: str, module: bool, args: list[str]) -> Script:
    """Find the script or module; a DpprofError (one line) when there is nothing to run."""
    if not module:
        path = Path(target)
        if not path.is_file():
            raise DpprofError(f"{target}: no such file" if not path.exists() else f"{target}: not a file")
        try:
            source = path.read_bytes()
        except OSError as exc:
            raise DpprofError(f"cannot read {target}: {exc.strerror or exc}") from None
        return Script(target, False, list(args), Path(os.path.abspath(target)), source, target,
                      os.path.dirname(os.path.realpath(target)))
    cwd = os.getcwd()
    sys.path.insert(0, cwd)  # python -m finds the module from the working directory first
    try:
        spec = importlib.util.find_spec(target)
        if spec is not None and spec.submodule_search_locations is not None:  # a package: its __main__
            spec = importlib.util.find_spec(f"{target}.__main__")
    except (ImportError, ValueError) as exc:
        raise DpprofError(f"-m {target}: {exc}") from None
    finally:
        sys.path.remove(cwd)
    if spec is None or not spec.origin or not isinstance(spec.loader, importlib.machinery.SourceFileLoader):
        raise DpprofError(f"-m {target}: no module with Python source of that name (is it importable from "
                          f"{cwd}?)")
    source = Path(spec.origin).read_bytes()
    return Script(target, True, list(args), Path(spec.origin), source, spec.origin, cwd, spec)


@contextlib.contextmanager
def as_main(script: Script) -> Iterator[types.ModuleType]:
    """``sys.argv``, ``sys.path[0]`` and a fresh ``__main__`` module as Python sets them; restored after."""
    main = types.ModuleType("__main__")
    main.__dict__.update({"__file__": str(script.file), "__builtins__": builtins, "__cached__": None})
    if script.spec is not None:
        main.__spec__ = script.spec
        main.__loader__ = script.spec.loader
        main.__package__ = script.spec.parent
    else:
        main.__spec__ = None
        main.__loader__ = importlib.machinery.SourceFileLoader("__main__", str(script.file))
        main.__package__ = None
    saved = (sys.argv, sys.path[0] if sys.path else None, sys.modules.get("__main__"))
    sys.argv = script.argv
    if sys.path:
        sys.path[0] = script.path0
    else:
        sys.path.append(script.path0)
    sys.modules["__main__"] = main
    try:
        yield main
    finally:
        sys.argv = saved[0]
        if saved[1] is not None:
            sys.path[0] = saved[1]
        if saved[2] is not None:
            sys.modules["__main__"] = saved[2]


def compile_script(script: Script, transform: Callable[[ast.Module], ast.Module] | None = None) -> Any:
    """The script's code object (``transform`` may edit its syntax tree first). A SyntaxError propagates:
    :func:`run_code` reports it as Python would."""
    tree = ast.parse(script.source, filename=str(script.file))
    if transform is not None:
        tree = ast.fix_missing_locations(transform(tree))
    # dont_inherit: dpprof's own __future__ imports must not change how the script compiles
    return compile(tree, str(script.file), "exec", dont_inherit=True)


def run_code(code: Any, main: types.ModuleType) -> Outcome:
    """Execute the script's code in ``main``; never raises for what the script does."""
    try:
        exec(code, main.__dict__)
    except SystemExit as exc:
        return _exit_outcome(exc.code)
    except KeyboardInterrupt as exc:
        _print_uncaught(exc)
        return Outcome("incomplete", 130, "KeyboardInterrupt")
    except BaseException as exc:  # noqa: B036 - the script's own uncaught exception, reported as Python does
        _print_uncaught(exc)
        return Outcome("failed", 1, last_line(exc))
    return Outcome("complete", 0)


def _exit_outcome(code: Any) -> Outcome:
    if code is None:
        return Outcome("complete", 0)
    if isinstance(code, int):
        return Outcome("complete" if code == 0 else "failed", code, None if code == 0 else f"exit code {code}")
    print(code, file=sys.stderr)  # sys.exit("message"): Python prints it and exits with 1
    return Outcome("failed", 1, f"exit code 1 ({code})")


def last_line(exc: BaseException) -> str:
    """``ValueError: bad input``: the last line of the exception's report."""
    return traceback.format_exception_only(type(exc), exc)[-1].strip()


def _print_uncaught(exc: BaseException) -> None:
    tb = exc.__traceback__
    # The first entry is run_code's exec; a SyntaxError raised by compile has no script frame at all.
    if tb is not None and tb.tb_frame.f_code is run_code.__code__:
        tb = tb.tb_next
    # The default hook prints the exception's own __traceback__ (pythonrun.c, _PyErr_Display): set it.
    sys.excepthook(type(exc), exc.with_traceback(tb), tb)
