"""Where a collect command's run directory goes, and what it writes once the run has ended (the report).

Shared by ``dpprof profile`` and ``dpprof run``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import IO

from dpprof.errors import DpprofError


def fresh_run_dir(out: Path, name: str, shared: bool, explicit: bool) -> Path:
    """A fresh run directory ``out/name``; ``name-2``, ``name-3``... when that one is taken and not empty.

    ``shared``: the ranks or nodes of one run derive the same name independently and must land in the
    same directory, so it is returned as is. ``explicit`` (``--run-name``): a taken name is an error.
    """
    path = out / name
    if shared:
        return path
    if path.exists() and any(path.iterdir()):
        if explicit:
            raise DpprofError(f"{path} already exists and is not empty: choose another --run-name")
        n = 2
        while (out / f"{name}-{n}").exists():
            n += 1
        path = out / f"{name}-{n}"
    return path


def make_run_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DpprofError(f"cannot create {path}: {exc.strerror or exc}") from None


def report_after_run(run_dir: Path, prog: str, stream: IO[str] | None = None) -> int:
    """Write the HTML report of a finished run; 0, or 1 when it failed (the run itself stays on disk).

    ``prog`` names the command in messages; the report's path goes to ``stream`` (default stdout).
    """
    try:
        from dpprof.report.command import report_run
    except ImportError:
        print(f"{prog}: --report: the report writer is not available in this dpprof; "
              f"run `dpprof report {run_dir}` once it is", file=sys.stderr)
        return 0
    try:
        path = report_run(run_dir)
    except DpprofError as exc:
        print(f"{prog}: report failed: {exc} (the run itself is on disk: {run_dir})", file=sys.stderr)
        return 1
    except Exception as exc:  # the run is safe on disk; a report bug must not hide that
        print(f"{prog}: report failed: {type(exc).__name__}: {exc} (the run itself is on disk: "
              f"{run_dir}; set DPPROF_DEBUG=1 and run `dpprof report {run_dir}` for details)", file=sys.stderr)
        return 1
    print(f"report: {path}", file=stream if stream is not None else sys.stdout)
    return 0
