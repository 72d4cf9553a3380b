"""Type checks of the run directory's JSON (manifest, nodes/<node>.json, step lines) where they are read.

docs/run-format.md is the contract; a file written by hand, by another version or by an attacker may
break it. Every field a reader uses is checked here once, against the types below: a value of the wrong
type (a string for a count, NaN, Infinity, 10**400, a list for a mapping, nesting deeper than any real
file) is left out, as if absent (every reader already copes with a missing field), and named in a
problem line (``"manifest.json: config.world_size: expected an integer, got str"``). Fields the
contract does not name are kept when they are plain JSON (shallow, finite, int64); null is allowed
for every field (not for an element of a list). Semantic limits (a world size of 1e9) are the readers' to check against the files present.

The manifest's table is derived from its typed model (``dpprof.manifest``, ``spec_of``); the node files' and
step lines' tables are written here.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class MapOf:
    """A mapping with free keys (GPU pairs, host:device labels) whose values all have type ``value``."""

    value: Any


INT, NUM, STR, BOOL = "an integer", "a number", "a string", "true/false"
#: Deeper than this, an unknown value is not plain data (the deepest real field is 4 levels down).
MAX_DEPTH = 16
_INT64 = 2**63

_GPU = {"cuda_index": INT, "nvml_index": INT, "uuid": STR, "name": STR, "memory_total_bytes": INT}
NODE: dict[str, Any] = {
    "host": STR, "node_rank": INT, "node_key": STR, "ranks": [INT], "nvml_file": STR, "gpus": [_GPU],
    "peak_memory_bytes": MapOf(INT), "peak_rss_bytes": INT, "written_unix_ns": INT,
}
STEP: dict[str, Any] = {
    "rank": INT, "epoch": INT, "step": INT, "wall_ms": NUM, "images_per_s": NUM, "profiled": BOOL, "profiler_on": BOOL, "loss": NUM,
}


def _ok_scalar(value: Any, kind: str) -> bool:
    if isinstance(value, bool):
        return kind == BOOL
    if kind == INT:
        return isinstance(value, int) and -_INT64 <= value < _INT64
    if kind == NUM:
        return (isinstance(value, int) and -_INT64 <= value < _INT64) or (
            isinstance(value, float) and math.isfinite(value))
    return kind == STR and isinstance(value, str)


def _what(value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, int) and not isinstance(value, bool) and not -_INT64 <= value < _INT64:
        return "an integer beyond 64 bits"
    return type(value).__name__


def _plain(value: Any, depth: int = 0) -> bool:
    """JSON data a generic renderer can show: finite numbers, int64, shallow."""
    if depth > MAX_DEPTH:
        return False
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _plain(v, depth + 1) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v, depth + 1) for v in value)
    return value is None or isinstance(value, (bool, str)) or _ok_scalar(value, NUM)


def _expected(spec: Any) -> str:
    if isinstance(spec, str):
        return spec
    return "a list" if isinstance(spec, list) else "an object"


def check(value: Any, spec: Any, where: str, problems: list[str]) -> tuple[bool, Any]:
    """(keep?, the value with its wrong parts left out); each part left out adds a line to ``problems``."""
    if value is None:
        return True, None
    if isinstance(spec, str):
        if _ok_scalar(value, spec):
            return True, value
    elif isinstance(spec, list) and isinstance(value, list):
        out = []
        for i, item in enumerate(value):
            if item is None:  # null is "absent" for a field, but an element of a list is never absent
                problems.append(f"{where}[{i}]: expected {_expected(spec[0])}, got null")
                continue
            keep, item = check(item, spec[0], f"{where}[{i}]", problems)
            if keep:
                out.append(item)
        return True, out
    elif isinstance(spec, (dict, MapOf)) and isinstance(value, Mapping):
        clean: dict[str, Any] = {}
        for k, v in value.items():
            sub = spec.value if isinstance(spec, MapOf) else spec.get(k, _UNKNOWN)
            name = f"{where}.{k}" if where else str(k)
            if sub is _UNKNOWN:
                if _plain(v):
                    clean[k] = v
                else:
                    problems.append(f"{name}: not plain JSON data (too deep, NaN, or a number beyond 64 bits)")
                continue
            keep, v = check(v, sub, name, problems)
            if keep:
                clean[k] = v
        return True, clean
    problems.append(f"{where or 'the file'}: expected {_expected(spec)}, got {_what(value)}")
    return False, None


_UNKNOWN = object()


def check_file(data: Any, spec: dict[str, Any], name: str) -> tuple[dict[str, Any] | None, list[str]]:
    """A decoded JSON file checked against ``spec``: (the object without its wrong fields, problems).

    None when the file is not a JSON object at all. Problems are prefixed with ``name``.
    """
    problems: list[str] = []
    keep, clean = check(data, spec, "", problems)
    if not isinstance(clean, dict):
        keep = False
        if not problems:
            problems.append(f"expected an object, got {_what(data)}")
    return (clean if keep else None), [f"{name}: {p}" for p in problems]


_SCALARS = {int: INT, float: NUM, str: STR, bool: BOOL}


def spec_of(tp: Any) -> Any:
    """The check table of a typed model: a msgspec Struct or dataclass of optional scalars, lists of them, mappings
    with string keys and nested models (``X | None`` checks as ``X``: null is allowed for every field)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        (inner,) = [a for a in args if a is not type(None)]
        return spec_of(inner)
    if tp in _SCALARS:
        return _SCALARS[tp]
    if origin is list:
        return [spec_of(args[0])]
    if origin is dict and args[0] is str:
        return MapOf(spec_of(args[1]))
    hints = typing.get_type_hints(tp) if isinstance(tp, type) else {}
    if not hints:
        raise TypeError(f"no check table for {tp!r}")
    return {name: spec_of(h) for name, h in hints.items() if not name.startswith("_")}
