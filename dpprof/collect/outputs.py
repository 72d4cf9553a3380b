"""Where ``dpprof run``'s (and ``dpprof.session``'s) run directory goes.

``dpprof profile`` creates its directory with :func:`dpprof.collect.run_dir.create_run_dir` directly; ``dpprof
run`` and the Python API go through :func:`fresh_run_dir`, which creates it the same way, atomically, for
one process as for the ranks of a torchrun launch and the nodes of a rendezvous.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dpprof.errors import DpprofError


def fresh_run_dir(out: Path, name: str, explicit: bool, join: dict[str, Any] | None = None) -> Path:
    """Create the run directory ``out/name`` and return its absolute path.

    ``explicit`` (``--run-name``): the name is checked, and a taken name is an error; a default name takes
    the next free ``name-2``, ``name-3``... ``join``: the record of a run shared by several processes that
    derive the same name without talking to each other (the ranks of one torchrun launch, the nodes of one
    rendezvous): the first creates the directory with this record, the others join it, and a directory
    holding another run's record is refused (:func:`dpprof.collect.run_dir.create_run_dir`).

    The path is absolute: the script runs in this process and may ``os.chdir``; every file of the run is
    written under this path, never relative to the working directory of the moment.
    """
    from dpprof.collect.run_dir import check_run_name, create_run_dir

    if explicit:
        check_run_name(name)
    return create_run_dir(Path(os.path.abspath(out)), name, explicit=explicit, rendezvous=join)


def make_run_dir(path: Path) -> None:
    """``path``, created when missing (a rank of ``dpprof run --nproc``: the launcher made it)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DpprofError(f"cannot create {path}: {exc.strerror or exc}") from None
