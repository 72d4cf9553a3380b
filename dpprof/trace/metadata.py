"""A trace's header (``distributedInfo``, ``baseTimeNanoseconds``, ``deviceProperties``), checked field by field.

Who writes them, and so what a real value is:

* ``distributedInfo``: torch's ``_KinetoProfile._get_distributed_info`` (torch/profiler/profiler.py), added with
  ``add_metadata_json``: ``backend`` a string, ``rank`` from ``dist.get_rank()`` (0 or more), ``world_size`` from
  ``dist.get_world_size()`` (1 or more), ``pg_config`` a list of objects (``pg_name``, ``pg_size``, ``ranks``).
* ``baseTimeNanoseconds``: libkineto's ``ChromeTraceLogger::handleTraceStart`` (libkineto/src/output_json.cpp)
  writes the profiler's clock origin, an ``int64_t`` of epoch nanoseconds: after 1970, and taken here to be
  before 2116 (``MAX_BASE_NS``), so that two ranks' bases differ by less than int64 can hold (the timelines add
  that difference to every timestamp in int64 ns).
* ``deviceProperties``: libkineto's ``devicePropertiesJson`` (libkineto/src/CudaDeviceProperties.cpp), a list of
  objects with an integer ``id`` and a ``name``.

A value that is not of that shape (a string for the rank, a rank below 0, a world size below 1, a base time
beyond 64 bits or not an integer) is left out, as if absent: every reader already copes with a missing field.
Each one is named in :attr:`Header.problems`, which the loader turns into the warning ``trace_metadata``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

_INT64 = 2**63
#: Epoch ns of 2116: a base time at or above it (or below 0, before 1970) is no profiler clock's.
MAX_BASE_NS = 2**62


def base_time_ok(value: Any) -> bool:
    """Whether ``value`` is a usable ``baseTimeNanoseconds``: an integer of epoch ns in [0, ``MAX_BASE_NS``)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < MAX_BASE_NS


@dataclass(frozen=True)
class Header:
    """The checked header: ``None``/empty where the trace has no usable value; ``problems``: one line per field
    left out."""

    rank: int | None = None
    world_size: int | None = None
    backend: str | None = None
    pg_config: list[dict[str, Any]] = field(default_factory=list)
    base_time_ns: int | None = None
    gpu_names: dict[str, str] = field(default_factory=dict)
    device_ids: frozenset[int] = frozenset()  # ids listed in deviceProperties
    problems: tuple[str, ...] = ()


def _what(value: Any) -> str:
    """A value described without echoing text from the file (strings may hold anything)."""
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int):
        return str(value) if -_INT64 <= value < _INT64 else "an integer beyond 64 bits"
    if isinstance(value, float):
        return str(value) if not math.isfinite(value) else f"a fraction ({value:.6g})"
    return {str: "a string", list: "a list", dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)


def _int(value: Any, low: int = -_INT64) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value < _INT64


class _Checker:
    def __init__(self) -> None:
        self.problems: list[str] = []

    def bad(self, where: str, expected: str, value: Any) -> None:
        self.problems.append(f"{where}: expected {expected}, got {_what(value)}")

    def integer(self, obj: dict[str, Any], key: str, where: str, low: int, expected: str) -> int | None:
        value = obj.get(key)
        if value is None:
            return None
        if not _int(value, low):
            self.bad(f"{where}.{key}", expected, value)
            return None
        return int(value)

    def string(self, obj: dict[str, Any], key: str, where: str) -> str | None:
        value = obj.get(key)
        if value is None or isinstance(value, str):
            return value
        self.bad(f"{where}.{key}", "a string", value)
        return None


def read_header(dist: Any, base: Any, props: Any) -> Header:
    """Check the three header fields as decoded (plain JSON values); see the module docstring."""
    c = _Checker()
    rank = world = backend = None
    pgs: list[dict[str, Any]] = []
    if isinstance(dist, dict):
        rank = c.integer(dist, "rank", "distributedInfo", 0, "an integer of 0 or more")
        world = c.integer(dist, "world_size", "distributedInfo", 1, "an integer of 1 or more")
        backend = c.string(dist, "backend", "distributedInfo")
        pgs = _pg_config(dist.get("pg_config"), c)
    elif dist is not None:
        c.bad("distributedInfo", "an object", dist)
    base_ns = None
    if base_time_ok(base):
        base_ns = int(base)
    elif base is not None:
        c.bad("baseTimeNanoseconds", "an integer of epoch nanoseconds (1970 to 2116)", base)
    names: dict[str, str] = {}
    ids: set[int] = set()
    if isinstance(props, list):
        for i, prop in enumerate(props):
            if not isinstance(prop, dict):
                c.bad(f"deviceProperties[{i}]", "an object", prop)
                continue
            dev = c.integer(prop, "id", f"deviceProperties[{i}]", -_INT64, "an integer")
            name = c.string(prop, "name", f"deviceProperties[{i}]")
            if dev is not None:
                ids.add(dev)
                if name:
                    names[str(dev)] = name
    elif props is not None:
        c.bad("deviceProperties", "a list", props)
    return Header(rank=rank, world_size=world, backend=backend, pg_config=pgs, base_time_ns=base_ns,
                  gpu_names=names, device_ids=frozenset(ids), problems=tuple(c.problems))


def _pg_config(value: Any, c: _Checker) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        c.bad("distributedInfo.pg_config", "a list", value)
        return []
    out = []
    for i, pg in enumerate(value):
        where = f"distributedInfo.pg_config[{i}]"
        if not isinstance(pg, dict):
            c.bad(where, "an object", pg)
            continue
        name = pg.get("pg_name")
        if name is not None and not isinstance(name, str) and not _int(name):
            c.bad(f"{where}.pg_name", "a string", name)
            name = None
        ranks = pg.get("ranks")
        # torch writes a list (torch/profiler/profiler.py ``_get_distributed_info``), libkineto's on-demand writer a
        # string ("[0, 1]", ``addOnDemandDistMetadata`` in libkineto/src/output_json.cpp): both are kept, the
        # string parsed where the groups are read (dpprof.analyze.collectives).
        if ranks is not None and not isinstance(ranks, str) and \
                not (isinstance(ranks, list) and all(_int(r, 0) for r in ranks)):
            c.bad(f"{where}.ranks", "a list of ranks", ranks)
            ranks = None
        out.append({"pg_name": name, "pg_size": c.integer(pg, "pg_size", where, 1, "an integer of 1 or more"),
                    "ranks": ranks})
    return out
