"""Creating a run directory: atomically, and never inside another run.

Checking that a folder does not exist and then creating it are two steps: two ``dpprof profile`` started
together with the same ``--out``/``--run-name`` both passed the check and wrote into one folder. The
folder is therefore made by one system call that fails when it exists (``mkdir``): the run that gets it
owns it; another run with an explicit ``--run-name`` is refused, one with the default name takes the next
free ``-2``, ``-3`` suffix.

The nodes of a multi-node run share one folder on a shared file system, so a node must join a folder it
did not create, but only that of its own run: the first node creates the folder already holding
``.dpprof-run.json`` (made under a temporary name, then renamed into place, so no node ever sees the folder
without it), which records the rendezvous (id, endpoint, nodes). A node joins a folder whose record is
the same rendezvous and whose run is not finished; anything else is refused. The ranks of a script
started by the user's own torchrun (``dpprof run`` or ``dpprof.session`` under torchrun) do the same with
torchrun's run id as the record (:func:`dpprof.collect.run_config.torchrun_record`).

Run names go into a folder name, the manifest, every trace's metadata and the report's file name and
page: only letters, digits, ``.``, ``_`` and ``-`` are accepted.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from dpprof.errors import DpprofError
from dpprof.fileio import UMASK
from dpprof.manifest import read_manifest
from dpprof.rundir import read_json

RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
JOIN_FILE = ".dpprof-run.json"


def check_run_name(name: str) -> str:
    """``name`` when it can name a run directory; DpprofError (one line) otherwise."""
    if not RUN_NAME.fullmatch(name) or ".." in name:
        raise DpprofError(f"--run-name {name!r}: use 1-128 letters, digits, '.', '_' or '-', starting with a letter "
                          "or digit (it names a folder and goes into the traces, the manifest and the report)")
    return name


def _mkdir_out(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DpprofError(f"cannot create {out}: {exc.strerror or exc}") from None


def create_run_dir(out: Path, name: str, *, explicit: bool, rendezvous: dict[str, Any] | None = None) -> Path:
    """Create ``out/name`` (or, for a default name, the first free ``name-N``) and return it.

    ``rendezvous`` (multi-node runs): join ``out/name`` when another node of the same rendezvous created it.
    """
    _mkdir_out(out)
    if rendezvous is not None:
        return _create_or_join(out / name, rendezvous)
    n = 1
    while True:
        path = out / (name if n == 1 else f"{name}-{n}")
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            if explicit:
                raise DpprofError(f"{path} already exists: a new run never writes into an existing run "
                                  "directory (choose another --run-name)") from None
            n += 1
        except OSError as exc:
            raise DpprofError(f"cannot create {path}: {exc.strerror or exc}") from None


def _create_or_join(path: Path, rendezvous: dict[str, Any]) -> Path:
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        (tmp / JOIN_FILE).write_text(json.dumps(rendezvous, sort_keys=True) + "\n", encoding="utf-8")
    except OSError as exc:
        raise DpprofError(f"cannot create {path}: {exc.strerror or exc}") from None
    try:
        os.rename(tmp, path)  # fails when the folder exists with content: another node (or run) has it
        os.chmod(path, 0o777 & ~UMASK)  # mkdtemp makes 0700
        return path
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    record = read_json(path / JOIN_FILE)
    if record != json.loads(json.dumps(rendezvous)):
        raise DpprofError(f"{path} already exists and is not a run of this rendezvous ({_describe(rendezvous)}): "
                          "a node or rank joins only the run directory of its own rendezvous or torchrun run id "
                          "(choose another --run-name)")
    manifest, _ = read_manifest(path)
    status = manifest.status if manifest is not None else None
    if status not in (None, "running"):
        raise DpprofError(f"{path}: the run of this rendezvous id has ended ({status}): give a new --rdzv-id "
                          "or --run-name")
    return path


def _describe(rendezvous: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(rendezvous.items()))


def rendezvous_record(rdzv_id: str | None, endpoint: str | None, nnodes: int) -> dict[str, Any]:
    """What identifies a multi-node run: its rendezvous id (torchrun's default ``dpprof``), endpoint, nodes."""
    return {"rdzv_id": rdzv_id or "dpprof", "rdzv_endpoint": endpoint, "nnodes": nnodes}
