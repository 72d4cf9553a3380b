"""Where ``dpprof run``'s (and ``dpprof.session``'s) run directory goes.

``dpprof profile`` creates its directory with :func:`dpprof.collect.run_dir.create_run_dir` directly (it also
joins the other nodes of a rendezvous); a run that is not shared is created the same way, atomically.
"""

from __future__ import annotations

from pathlib import Path

from dpprof.errors import DpprofError


def fresh_run_dir(out: Path, name: str, shared: bool, explicit: bool) -> Path:
    """A fresh run directory ``out/name``, created; ``name-2``, ``name-3``... when that one is taken.

    ``shared``: the ranks or nodes of one run derive the same name independently and must land in the
    same directory, so it is returned as is. ``explicit`` (``--run-name``): a taken name is an error.
    """
    if shared:
        return out / name
    from dpprof.collect.run_dir import check_run_name, create_run_dir

    if explicit:
        check_run_name(name)
    return create_run_dir(out, name, explicit=explicit)  # made by one mkdir: two runs never share it


def make_run_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DpprofError(f"cannot create {path}: {exc.strerror or exc}") from None
