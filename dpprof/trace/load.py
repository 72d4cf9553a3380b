"""Read one Chrome/Kineto trace (``.json`` or ``.json.gz``) into compact per-rank columns.

Fast path: ``msgspec`` decodes straight into Structs holding only the fields the analysis uses
(unknown keys such as ``Input Dims`` are skipped by the decoder without building Python objects).
When one odd event breaks the typed decode (a number written as a string, a bad type), the file is
decoded generically and every event converted on its own with lax typing; events that still do not
fit, and those with a missing/NaN/negative duration, are skipped and counted. Only a file that is
not JSON, is cut short, or has no events is rejected (``TraceError``, one line naming the file).

Time: all ``ts``/``dur`` columns are float64 microseconds on the trace's own clock. Traces with
``baseTimeNanoseconds`` have ``ts`` relative to it (absolute epoch ns = base + ts * 1000); 2021
traces carry absolute µs and no base (base 0). Nanosecond traces (``displayTimeUnit: "ns"``, or
timestamps above 1e17, which only epoch nanoseconds reach) are converted to µs.
"""

from __future__ import annotations

import gzip
import json
import zlib
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from dpprof.errors import TraceError

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
_NS_TS_THRESHOLD = 1e17  # epoch µs is ~1.7e15 today; only epoch ns exceeds 1e17


class _Args(msgspec.Struct, gc=False):
    external_id: int | None = msgspec.field(default=None, name="External id")
    correlation: int | None = None
    device: int | None = None
    stream: int | None = None
    bytes: int | float | None = None
    collective: str | None = msgspec.field(default=None, name="Collective name")
    pg_name: str | None = msgspec.field(default=None, name="Process Group Name")


class _Event(msgspec.Struct, gc=False):
    ph: str = ""
    cat: str | None = None
    name: str = ""
    pid: int | str | None = None
    tid: int | str | None = None
    ts: float | None = None
    dur: float | None = None
    id: int | str | None = None
    args: _Args | None = None


class _PG(msgspec.Struct):
    pg_name: str | None = None
    pg_size: int | None = None
    ranks: list[int] | None = None


class _Dist(msgspec.Struct):
    backend: str | None = None
    rank: int | None = None
    world_size: int | None = None
    pg_config: list[_PG] | None = None
    nccl_version: str | None = None


class _DevProp(msgspec.Struct):
    id: int | None = None
    name: str | None = None


class _Trace(msgspec.Struct):
    traceEvents: list[_Event] | None = None  # noqa: N815 (Kineto's key)
    distributedInfo: _Dist | None = None  # noqa: N815
    baseTimeNanoseconds: int | None = None  # noqa: N815
    displayTimeUnit: str | None = None  # noqa: N815
    deviceProperties: list[_DevProp] | None = None  # noqa: N815


_DECODER = msgspec.json.Decoder(_Trace)


@dataclass
class RankTrace:
    """One trace file as columns. Row i of every array is the i-th complete (``ph: X``) event."""

    path: str
    names: list[str]  # string table: event names
    kind: np.ndarray  # int8, K_* codes
    name_id: np.ndarray  # int32 into names
    ts: np.ndarray  # float64 µs
    dur: np.ndarray  # float64 µs
    pid: np.ndarray  # int32 into pids
    tid: np.ndarray  # int32 into tids
    device: np.ndarray  # int32, GPU index for GPU events, -1 otherwise
    stream: np.ndarray  # int64, -1 when absent
    correlation: np.ndarray  # int64, -1 when absent
    external_id: np.ndarray  # int64, -1 when absent
    nbytes: np.ndarray  # int64 bytes moved by copies/memsets, 0 otherwise
    pids: list[Any]
    tids: list[Any]
    #: ``ac2g`` flow events (start 's' / finish 'f'): id, ts (µs), tid id, is_start.
    flow_id: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    flow_ts: np.ndarray = field(default_factory=lambda: np.zeros(0))
    flow_tid: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    flow_start: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    collective_names: dict[int, str] = field(default_factory=dict)  # row -> "Collective name"
    pg_names: dict[int, str] = field(default_factory=dict)  # row -> "Process Group Name"
    rank: int | None = None  # from distributedInfo
    world_size: int | None = None
    backend: str | None = None
    pg_config: list[dict[str, Any]] = field(default_factory=list)
    base_time_ns: int | None = None
    gpu_names: dict[str, str] = field(default_factory=dict)
    events: int = 0  # events in the file (all phases)
    skipped: int = 0  # complete events skipped (bad ts/dur or untypable)
    ns_converted: bool = False
    tolerant: bool = False  # True when the typed decode failed and the slow path ran


def read_bytes(path: Path) -> bytes:
    """Raw JSON bytes of a trace, gunzipped when the file is gzip (by magic, not by name)."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise TraceError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise TraceError(f"{path}: not a readable gzip file ({exc})") from None
    return raw


def load_trace(path: str | Path) -> RankTrace:
    """Load one trace file into columns. Raises TraceError (one line) when it cannot be read at all."""
    path = Path(path)
    raw = read_bytes(path)
    tolerant = False
    try:
        doc = _DECODER.decode(raw)
        events = doc.traceEvents
    except msgspec.ValidationError:
        tolerant = True
        doc, events, bad = _decode_tolerant(path, raw)
    except msgspec.DecodeError:
        # msgspec rejects NaN/Infinity literals that Python's json writes; try the stdlib before giving up.
        tolerant = True
        doc, events, bad = _decode_tolerant(path, raw)
    del raw
    if not events:
        raise TraceError(f"{path}: no trace events (not a Chrome/Kineto trace?)")
    rt = _columns(path, events, skipped=bad if tolerant else 0)
    rt.tolerant = tolerant
    _fill_metadata(rt, doc)
    return rt


def _decode_tolerant(path: Path, raw: bytes) -> tuple[_Trace, list[_Event], int]:
    """Generic decode, then convert each event on its own with lax typing ("12" -> 12)."""
    try:
        data = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise TraceError(f"{path}: not valid JSON (truncated or corrupt file)") from None
    if isinstance(data, list):  # a bare JSON array of events is valid Chrome trace format
        data = {"traceEvents": data}
    if not isinstance(data, dict) or not isinstance(data.get("traceEvents"), list):
        raise TraceError(f"{path}: no traceEvents list (not a Chrome/Kineto trace)")
    raw_events = data.pop("traceEvents")
    meta = {k: v for k, v in data.items() if k in ("distributedInfo", "baseTimeNanoseconds",
                                                   "displayTimeUnit", "deviceProperties")}
    try:
        doc = msgspec.convert(meta, _Trace, strict=False)
    except msgspec.ValidationError:
        doc = _Trace()
    events: list[_Event] = []
    bad = 0
    for ev in raw_events:
        if not isinstance(ev, dict):
            bad += 1
            continue
        try:
            events.append(msgspec.convert(ev, _Event, strict=False))
        except msgspec.ValidationError:
            args = ev.get("args")
            # A bad value inside args should not cost the event its time: keep it without args.
            try:
                ev2 = dict(ev, args=None) if args is not None else ev
                events.append(msgspec.convert(ev2, _Event, strict=False))
            except msgspec.ValidationError:
                bad += 1
    return doc, events, bad


def _ids(values: list[Any]) -> tuple[np.ndarray, list[Any]]:
    """Dictionary-encode ``values``: (int32 id per value, table of distinct values in first-seen order)."""
    table = list(dict.fromkeys(values))
    index = {v: i for i, v in enumerate(table)}
    return np.fromiter(map(index.__getitem__, values), np.int32, len(values)), table


def _opt_int(values: list[int | None]) -> np.ndarray:
    try:  # fast path: no missing value
        return np.array(values, dtype=np.int64)
    except TypeError:
        return np.array([-1 if v is None else v for v in values], dtype=np.int64)


_get = attrgetter


def _columns(path: Path, events: list[_Event], skipped: int) -> RankTrace:
    # Per-field passes use map(attrgetter) so the per-event work stays in C.
    phs = list(map(_get("ph"), events))
    xs = [e for e, ph in zip(events, phs, strict=True) if ph == "X"]
    n = len(xs)
    cat_id, cats = _ids(list(map(_get("cat"), xs)))
    cat_kind = np.array([_KIND_OF_CAT.get((c or "").lower(), K_OTHER) for c in cats] or [0], np.int8)
    kind = cat_kind[cat_id] if n else np.zeros(0, np.int8)
    name_id, names = _ids(list(map(_get("name"), xs)))
    pid, pids = _ids(list(map(_get("pid"), xs)))
    tid, tids = _ids(list(map(_get("tid"), xs)))
    ts = np.array(list(map(_get("ts"), xs)), dtype=np.float64)  # None -> nan
    dur = np.array(list(map(_get("dur"), xs)), dtype=np.float64)
    no = _Args()
    args = [no if a is None else a for a in map(_get("args"), xs)]
    correlation = _opt_int(list(map(_get("correlation"), args)))
    external_id = _opt_int(list(map(_get("external_id"), args)))
    stream = _opt_int(list(map(_get("stream"), args)))
    dev_arg = _opt_int(list(map(_get("device"), args)))
    nb = np.array(list(map(_get("bytes"), args)), dtype=np.float64)
    is_gpu = np.isin(kind, GPU_KINDS)
    # GPU index: args.device, else the GPU pid (Kineto's "GPU N" processes use pid N).
    pid_as_int = np.array([p if isinstance(p, int) else -1 for p in pids] or [-1], dtype=np.int64)
    device = np.where(dev_arg >= 0, dev_arg, pid_as_int[pid] if n else -1)
    device = np.where(is_gpu, device, -1).astype(np.int32)
    colls = {i: a.collective for i, a in enumerate(args) if a.collective is not None}
    pgs = {i: a.pg_name for i, a in enumerate(args) if a.pg_name is not None}

    good = np.isfinite(ts) & np.isfinite(dur) & (dur >= 0)
    n_bad = int(n - np.count_nonzero(good))
    rt = RankTrace(
        path=str(path), names=names, kind=kind, name_id=name_id, ts=ts, dur=dur, pid=pid, tid=tid,
        device=device, stream=stream, correlation=correlation, external_id=external_id,
        nbytes=np.nan_to_num(nb).astype(np.int64), pids=pids, tids=tids,
        collective_names=colls, pg_names=pgs, events=len(events) + skipped, skipped=skipped + n_bad,
    )
    if n_bad:
        _keep_rows(rt, good)
    # Flows are only needed to link GPU events that carry no correlation id (rare): skip them otherwise.
    gpu_rows = np.isin(rt.kind, GPU_KINDS)
    if np.any(rt.correlation[gpu_rows] < 0):
        flows = [e for e, ph in zip(events, phs, strict=True) if (ph == "s" or ph == "f") and e.cat == "ac2g"]
        fts = np.array(list(map(_get("ts"), flows)), dtype=np.float64)
        fid = np.array([_int_or(e.id) for e in flows], dtype=np.int64)
        ok = np.isfinite(fts) & (fid >= 0)
        index = {v: i for i, v in enumerate(tids)}
        ftid = np.fromiter((index.setdefault(t, len(index)) for t in map(_get("tid"), flows)), np.int32,
                           len(flows))
        rt.tids = list(index)
        rt.flow_ts, rt.flow_id, rt.flow_tid = fts[ok], fid[ok], ftid[ok]
        rt.flow_start = np.array([e.ph == "s" for e in flows], dtype=bool)[ok]
    return rt


def _int_or(v: Any, default: int = -1) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        return default


_ROW_COLUMNS = ("kind", "name_id", "ts", "dur", "pid", "tid", "device", "stream", "correlation",
                "external_id", "nbytes")


def _keep_rows(rt: RankTrace, keep: np.ndarray) -> None:
    """Drop rows (bad events); row-keyed dicts are renumbered."""
    new_index = np.cumsum(keep) - 1
    for col in _ROW_COLUMNS:
        setattr(rt, col, getattr(rt, col)[keep])
    rt.collective_names = {int(new_index[i]): v for i, v in rt.collective_names.items() if keep[i]}
    rt.pg_names = {int(new_index[i]): v for i, v in rt.pg_names.items() if keep[i]}


def _fill_metadata(rt: RankTrace, doc: _Trace) -> None:
    dist = doc.distributedInfo
    if dist is not None:
        rt.rank, rt.world_size, rt.backend = dist.rank, dist.world_size, dist.backend
        rt.pg_config = [{"pg_name": p.pg_name, "pg_size": p.pg_size, "ranks": p.ranks}
                        for p in dist.pg_config or []]
    rt.base_time_ns = doc.baseTimeNanoseconds
    for prop in doc.deviceProperties or []:
        if prop.id is not None and prop.name:
            rt.gpu_names[str(prop.id)] = prop.name
    unit_ns = (doc.displayTimeUnit or "").lower() == "ns"
    if len(rt.ts) and (unit_ns or float(np.nanmax(rt.ts)) > _NS_TS_THRESHOLD):
        rt.ts = rt.ts / 1000.0
        rt.dur = rt.dur / 1000.0
        rt.flow_ts = rt.flow_ts / 1000.0
        rt.ns_converted = True


def clock_offset_us(rt: RankTrace) -> float:
    """Add to a ts of this trace to get epoch µs (0 when the trace has absolute µs)."""
    return (rt.base_time_ns or 0) / 1000.0 if rt.base_time_ns is not None else 0.0


__all__ = ["RankTrace", "load_trace", "read_bytes", "clock_offset_us", "KIND_NAMES", "GPU_KINDS",
           "K_OTHER", "K_CPU_OP", "K_USER_ANN", "K_RUNTIME", "K_KERNEL", "K_MEMCPY", "K_MEMSET",
           "K_GPU_ANN", "K_PYTHON"]
