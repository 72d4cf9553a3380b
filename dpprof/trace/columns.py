"""Decoded event Structs -> numpy columns (one chunk at a time), and the chunks -> one set of columns.

Per-event Python work is what costs here, so each field is read in one tight pass (a list comprehension:
Python 3.11 specialises its attribute load on the Struct's slot, ~25 % faster than ``map(attrgetter)``
here) and strings are dictionary-encoded (a Kineto rank has ~200 distinct names in 300k events).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from itertools import compress, count
from operator import attrgetter
from typing import Any

import numpy as np

from dpprof.trace.decode import NO_ARGS, NO_ARGS_WIDE, Event, EventWide, needs_wide

# Event kinds (what the Kineto category says the event is).
K_OTHER, K_CPU_OP, K_USER_ANN, K_RUNTIME, K_KERNEL, K_MEMCPY, K_MEMSET, K_GPU_ANN, K_PYTHON = range(9)
KIND_NAMES = ("other", "cpu_op", "user_annotation", "runtime", "kernel", "memcpy", "memset",
              "gpu_user_annotation", "python_function")
GPU_KINDS = (K_KERNEL, K_MEMCPY, K_MEMSET)
#: Kineto categories, lower-cased, current and 2021 spellings (``Kernel``, ``Memcpy``, ``Runtime``...).
_KIND_OF_CAT: dict[str, int] = {
    "cpu_op": K_CPU_OP, "operator": K_CPU_OP, "user_annotation": K_USER_ANN,
    "cuda_runtime": K_RUNTIME, "cuda_driver": K_RUNTIME, "runtime": K_RUNTIME, "driver": K_RUNTIME,
    "hip_runtime": K_RUNTIME, "hip_driver": K_RUNTIME, "cuda_profiler_range": K_OTHER,
    "kernel": K_KERNEL, "gpu_memcpy": K_MEMCPY, "memcpy": K_MEMCPY, "gpu_memset": K_MEMSET,
    "memset": K_MEMSET, "gpu_user_annotation": K_GPU_ANN, "python_function": K_PYTHON,
}
ROW_COLUMNS = ("kind", "name_id", "ts", "dur", "tid", "device", "stream", "correlation", "external_id", "nbytes")

_get = attrgetter
#: The device of a GPU event whose id does not fit (below -1, beyond int32): the loader skips and counts it.
BAD_DEVICE = -2
_INT32_MAX = 2**31 - 1
_EVENT_TYPES = frozenset({Event, EventWide})


def is_gpu(kind: np.ndarray) -> np.ndarray:
    """Bool mask of GPU activities (kernels, copies, memsets; their codes are consecutive)."""
    return (kind >= K_KERNEL) & (kind <= K_MEMSET)


def ids(values: list[Any]) -> tuple[np.ndarray, list[Any]]:
    """Dictionary-encode ``values``: (int32 id per value, table of distinct values in first-seen order)."""
    index: defaultdict[Any, int] = defaultdict(count().__next__)  # a new value gets the next id, all in C
    codes = np.fromiter(map(index.__getitem__, values), np.int32, len(values))
    return codes, list(index)


def _opt_int(values: list[int | None]) -> np.ndarray:
    """int64 column, -1 where missing (None)."""
    try:
        return np.fromiter(values, np.int64, len(values))
    except (TypeError, OverflowError):  # a None: through float64 (exact below 2**53), so it is one C pass
        a = np.array(values, dtype=np.float64)
        return np.nan_to_num(a, nan=-1.0).astype(np.int64)


def _floats(values: list[float | None]) -> np.ndarray:
    """float64 column, NaN where None."""
    try:
        return np.fromiter(values, np.float64, len(values))
    except TypeError:
        return np.array(values, dtype=np.float64)


#: Sparse per-row extras: collective metadata (GPU rows and ``record_param_comms`` ops that carry it) and the
#: two ends of peer copies. Few rows have them, so they are kept as (row, value) tables, not full columns.
COLL_FIELDS = ("collective", "in_nelems", "out_nelems", "dtype", "pg_name", "seq", "comms_id", "src_rank",
               "dst_rank")
_COLL_INT = ("in_nelems", "out_nelems", "seq", "src_rank", "dst_rank")


@dataclass
class Extras:
    """Rows of a chunk (or of a whole trace after ``merge``) with collective metadata or peer-copy ends."""

    coll_row: np.ndarray  # int64 row indices
    coll: dict[str, list[Any]]  # COLL_FIELDS -> values (None where absent); ints for the counts
    peer_row: np.ndarray  # int64 row indices of copies that name fromDevice/toDevice
    peer_from: np.ndarray  # int32
    peer_to: np.ndarray  # int32

    @classmethod
    def empty(cls) -> Extras:
        return cls(np.zeros(0, np.int64), {f: [] for f in COLL_FIELDS}, np.zeros(0, np.int64),
                   np.zeros(0, np.int32), np.zeros(0, np.int32))


def _as_int(v: Any) -> int | None:
    try:
        return int(v) if v is not None and v == v else None
    except (TypeError, ValueError, OverflowError):
        return None


def _extras(args: list[Any], gpu_list: list[int], names: list[str], name_id: np.ndarray) -> Extras:
    """Collective metadata and peer-copy ends, read only from the rows that can carry them."""
    pc = [k for k, nm in enumerate(names) if nm == "record_param_comms"]
    host_rows = np.flatnonzero(np.isin(name_id, pc)).tolist() if pc else []
    rows = [i for i in gpu_list if args[i].collective is not None] + host_rows
    coll: dict[str, list[Any]] = {f: [getattr(args[i], f) for i in rows] for f in COLL_FIELDS}
    for f in _COLL_INT:
        coll[f] = [_as_int(v) for v in coll[f]]
    coll["pg_name"] = [None if v is None else str(v) for v in coll["pg_name"]]
    coll["comms_id"] = [None if v is None else str(v) for v in coll["comms_id"]]
    peer = [i for i in gpu_list if args[i].to_device is not None or args[i].from_device is not None]
    def dev(v: Any) -> int:
        x = _as_int(v)
        return x if x is not None and 0 <= x < 2**31 else -1
    return Extras(np.array(rows, dtype=np.int64), coll, np.array(peer, dtype=np.int64),
                  np.array([dev(args[i].from_device) for i in peer], dtype=np.int32),
                  np.array([dev(args[i].to_device) for i in peer], dtype=np.int32))


def _pid_device(pid: Any) -> int:
    if not isinstance(pid, int):
        return -1
    return pid if 0 <= pid <= _INT32_MAX else BAD_DEVICE


@dataclass
class Chunk:
    """Columns of a slice of the events; ``names``/``tids`` are the slice's own tables."""

    cols: dict[str, np.ndarray]
    names: list[str]
    tids: list[Any]
    events: int
    skipped: int
    tolerant: bool = False
    extras: Extras | None = None
    #: Decoded with the narrow args but it names events whose wide args the analysis reads: decode it again, wide.
    needs_wide: bool = False


def chunk_columns(events: list[Any], skipped: int, tolerant: bool = False) -> Chunk:
    """Columns of the complete events among ``events``; ``skipped`` events were already found unusable."""
    types = list(map(type, events))
    wide = EventWide in types
    if types.count(EventWide if wide else Event) == len(events):
        xs = events
    else:  # drop the other phases (flows, metadata) in one C pass
        xs = list(compress(events, map(_EVENT_TYPES.__contains__, types)))
    n = len(xs)
    cat_id, cats = ids([x.cat for x in xs])
    kind = np.array([_KIND_OF_CAT.get((c or "").lower(), K_OTHER) for c in cats] or [0], dtype=np.int8)[cat_id]
    name_id, names = ids([x.name for x in xs])
    if not wide and needs_wide(names):
        return Chunk({}, names, [], events=0, skipped=0, needs_wide=True)
    tid, tids = ids([x.tid for x in xs])
    ts = _floats([x.ts for x in xs])  # None -> nan
    dur = _floats([x.dur for x in xs])
    args = [x.args for x in xs]
    try:
        correlation = _opt_int([a.correlation for a in args])
    except AttributeError:  # events without args (rare in Kineto traces) get an empty one
        args = [(NO_ARGS_WIDE if wide else NO_ARGS) if a is None else a for a in args]
        correlation = _opt_int([a.correlation for a in args])
    external_id = _opt_int([a.external_id for a in args])
    gpu = np.flatnonzero(is_gpu(kind))
    # Device, stream and bytes only matter for GPU activities: read them for those rows only.
    gpu_list = gpu.tolist()
    gargs = [args[i] for i in gpu_list]
    stream = np.full(n, -1, dtype=np.int64)
    stream[gpu] = _opt_int(list(map(_get("stream"), gargs)))
    nb = np.zeros(n, dtype=np.int64)
    nb[gpu] = np.nan_to_num(np.array(list(map(_get("bytes"), gargs)), dtype=np.float64)).astype(np.int64)
    dev = _opt_int(list(map(_get("device"), gargs)))
    if np.any(dev < 0):  # no args.device: the GPU pid is the device (Kineto's "GPU N" processes use pid N)
        pid = [xs[i].pid for i in gpu_list]
        dev = np.where(dev >= 0, dev, [_pid_device(p) for p in pid])
    device = np.full(n, -1, dtype=np.int32)
    device[gpu] = np.where((dev >= -1) & (dev <= _INT32_MAX), dev, BAD_DEVICE)  # no wrap-around into int32
    extras = _extras(args, gpu_list, names, name_id) if wide else Extras.empty()
    good = np.isfinite(ts) & np.isfinite(dur) & (dur >= 0)
    cols = {"kind": kind, "name_id": name_id, "ts": ts, "dur": dur, "tid": tid, "device": device,
            "stream": stream, "correlation": correlation, "external_id": external_id, "nbytes": nb}
    n_bad = int(n - np.count_nonzero(good))
    if n_bad:
        cols = {k: v[good] for k, v in cols.items()}
        extras = renumber(extras, good)
    return Chunk(cols, names, tids, events=len(events) + skipped, skipped=skipped + n_bad, tolerant=tolerant,
                 extras=extras)


def renumber(x: Extras, good: np.ndarray) -> Extras:
    """The extras of the rows kept by ``good``, with their new row numbers."""
    new = np.cumsum(good) - 1
    keep_c = good[x.coll_row] if len(x.coll_row) else np.zeros(0, bool)
    keep_p = good[x.peer_row] if len(x.peer_row) else np.zeros(0, bool)
    coll = {f: [v for v, k in zip(vals, keep_c.tolist(), strict=True) if k] for f, vals in x.coll.items()}
    return Extras(new[x.coll_row[keep_c]], coll, new[x.peer_row[keep_p]], x.peer_from[keep_p], x.peer_to[keep_p])


def merge_extras(chunks: list[Chunk]) -> Extras:
    """The chunks' extras with row numbers of the concatenated columns (call before ``merge``)."""
    out = Extras.empty()
    rows_c, rows_p, pf, pt = [out.coll_row], [out.peer_row], [out.peer_from], [out.peer_to]
    offset = 0
    for c in chunks:
        x = c.extras
        if x is not None:
            rows_c.append(x.coll_row + offset)
            for f in COLL_FIELDS:
                out.coll[f].extend(x.coll[f])
            rows_p.append(x.peer_row + offset)
            pf.append(x.peer_from)
            pt.append(x.peer_to)
        offset += len(c.cols["ts"])
    return Extras(np.concatenate(rows_c), out.coll, np.concatenate(rows_p), np.concatenate(pf), np.concatenate(pt))


def merge(chunks: list[Chunk]) -> tuple[dict[str, np.ndarray], list[str], list[Any]]:
    """(concatenated columns, one string table, one thread table) of the chunks, in file order."""
    names: dict[str, int] = {}
    tids: dict[Any, int] = {}
    for c in chunks:  # re-number each chunk's local ids into the shared tables
        c.cols["name_id"] = np.array([names.setdefault(x, len(names)) for x in c.names] or [0],
                                     dtype=np.int32)[c.cols["name_id"]]
        c.cols["tid"] = np.array([tids.setdefault(x, len(tids)) for x in c.tids] or [0],
                                 dtype=np.int32)[c.cols["tid"]]
    cols = {k: np.concatenate([c.cols[k] for c in chunks]) for k in ROW_COLUMNS}
    return cols, list(names), list(tids)
