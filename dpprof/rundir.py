"""Where things are in a run directory (see docs/run-format.md), and how CLI inputs resolve to traces."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dpprof.errors import DpprofError
from dpprof.fileio import (
    MAX_SIDECAR_BYTES,
    InputTooLarge,
    check_input,
    read_input,
    remember_input,
    write_text_atomic,
)
from dpprof.schema import check_file

TRACES_DIR = "traces"
MERGED_DIR = "merged"
NODES_DIR = "nodes"
MANIFEST = "manifest.json"
ANALYSIS = "analysis.json"
MANIFEST_SCHEMA = "dpprof.manifest/1"
TRACE_SUFFIXES = (".json", ".json.gz", ".gz")
#: torch's tensorboard_trace_handler names: ``{worker}.{time_ns}.pt.trace.json[.gz]``; dpprof uses ``rank{R}``.
RANK_IN_NAME = re.compile(r"(?:^|[^a-z])rank[_-]?(\d+)(?:\D|$)", re.IGNORECASE)


def trace_file_name(rank: int, time_ns: int) -> str:
    return f"rank{rank}.{time_ns}.pt.trace.json.gz"


def rank_from_name(path: str | Path) -> int | None:
    """The rank a file name states (``rank3.…``, ``…_rank3.pt.trace…``), or None."""
    m = RANK_IN_NAME.search(Path(path).name)
    return int(m.group(1)) if m else None


def _trace_name(path: Path) -> bool:
    name = path.name
    return not name.startswith(".") and name.endswith(TRACE_SUFFIXES) and name not in (MANIFEST, ANALYSIS) \
        and path.exists() and not path.is_dir()  # a dangling link is skipped; a FIFO is refused later


def is_trace_file(path: Path) -> bool:
    return path.is_file() and _trace_name(path)


@dataclass(frozen=True)
class Inputs:
    """What a command was pointed at: the run directory (when there is one) and the trace files."""

    run_dir: Path | None
    traces: tuple[Path, ...]


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and ((path / MANIFEST).is_file() or (path / TRACES_DIR).is_dir())


def resolve_inputs(paths: Iterable[str | Path]) -> Inputs:
    """Resolve CLI arguments: one run directory, one folder of traces, or trace files.

    Raises DpprofError (one line) when a path does not exist or nothing to read is found.
    """
    given = [Path(p) for p in paths]
    if not given:
        raise DpprofError("no input: give a run directory or trace files")
    run_dir: Path | None = None
    traces: list[Path] = []
    for p in given:
        if not p.exists():
            raise DpprofError(f"{p}: no such file or directory")
        if p.is_dir():
            folder = p
            if is_run_dir(p):
                run_dir = p
                folder = p / TRACES_DIR
            found = sorted(f for f in folder.iterdir() if _trace_name(f)) if folder.is_dir() else []
            if not found:
                raise DpprofError(f"{p}: no trace files (*.json, *.json.gz) in {folder}")
            traces.extend(found)
        else:
            traces.append(p)
    for t in traces:  # up front, before anything is read: a FIFO would block, /dev/zero never end
        remember_input(t, check_input(t))
    if run_dir is None and len(given) == 1 and given[0].is_file():
        parent = given[0].parent
        if parent.name == TRACES_DIR and is_run_dir(parent.parent):
            run_dir = parent.parent
    return Inputs(run_dir=run_dir, traces=tuple(dict.fromkeys(traces)))


def load_json(path: Path) -> tuple[Any | None, str | None]:
    """(a JSON sidecar's content, None), or (None, why it was ignored) for a file above
    ``MAX_SIDECAR_BYTES`` (one line to warn with), or (None, None) when it is missing or unreadable (a
    cut-short run, nesting beyond the parser's limit). A path that exists but is not a regular file is refused
    (DpprofError)."""
    if not path.exists():
        return None, None
    check_input(path)  # a FIFO would block, a device never end: refused, not read
    try:
        return json.loads(read_input(path, max_bytes=MAX_SIDECAR_BYTES).decode("utf-8")), None
    except InputTooLarge as exc:
        return None, str(exc)
    except (DpprofError, ValueError, UnicodeDecodeError, RecursionError):  # unreadable: as if missing
        return None, None


def read_json(path: Path) -> Any | None:
    """A JSON sidecar's content, or None when it is missing, unreadable or too large (see :func:`load_json`)."""
    return load_json(path)[0]


def read_checked(path: Path, spec: dict[str, Any]) -> tuple[dict[str, Any] | None, list[str]]:
    """A JSON object file with the fields of the wrong type left out (``dpprof.schema``), and the problems (the
    file's size when it was too large to read)."""
    data, why = load_json(path)
    if data is None:
        return None, [why] if why else []
    return check_file(data, spec, path.name)


def dumps_json(obj: Any, indent: int | None = 1) -> str:
    """Deterministic JSON text: sorted keys, no NaN (null instead)."""
    return json.dumps(_clean(obj), indent=indent, sort_keys=True, allow_nan=False) + "\n"


def write_json(path: Path, obj: Any, **where: Any) -> None:
    """Write ``obj`` as deterministic JSON, atomically (``where``: see ``dpprof.fileio.atomic_open``)."""
    write_text_atomic(path, dumps_json(obj), **where)


def _clean(obj: Any) -> Any:
    if isinstance(obj, float):
        return None if obj != obj or obj in (float("inf"), float("-inf")) else obj
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj
