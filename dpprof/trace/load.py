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

import gc
import gzip
import json
import zlib
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Any, Union

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


class _Event(msgspec.Struct, tag_field="ph", tag="X", gc=False, kw_only=True):
    """A complete event (``ph: X``): every span the analysis uses."""

    cat: str | None = None
    name: str  # an event without a name cannot be classified: it is skipped and counted
    pid: int | str | None = None
    tid: int | str | None = None
    ts: float | None = None
    dur: float | None = None
    args: _Args | None = None


def _phase_struct(tag: str, fields: bool) -> type:
    # Other Chrome phases decode into small Structs; tagging on "ph" lets msgspec skip their keys and lets
    # the loader split phases by type. Flow fields (cat/ts/tid/id) are decoded only when needed.
    spec = [("cat", str | None, None), ("ts", float | None, None), ("tid", int | str | None, None),
            ("id", int | str | None, None)] if fields else []
    return msgspec.defstruct(f"_Phase_{tag}", spec, tag_field="ph", tag=tag, gc=False)


#: Every phase of the Chrome trace event format besides X; an unknown phase sends the file to the tolerant path.
_PHASES = "BEiICbneSTpsftPNODMVvRc()"
_LIGHT = {tag: _phase_struct(tag, fields=False) for tag in _PHASES}
_FULL = {tag: _phase_struct(tag, fields=True) for tag in _PHASES}
_FLOW_START, _FLOW_END = _FULL["s"], _FULL["f"]
_AnyEvent = Union[(_Event, *_LIGHT.values())]  # noqa: UP007 (built at run time)
_AnyEventFull = Union[(_Event, *_FULL.values())]  # noqa: UP007


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
    traceEvents: list[_AnyEvent] | None = None  # noqa: N815 (Kineto's key)
    distributedInfo: _Dist | None = None  # noqa: N815
    baseTimeNanoseconds: int | None = None  # noqa: N815
    displayTimeUnit: str | None = None  # noqa: N815
    deviceProperties: list[_DevProp] | None = None  # noqa: N815


class _FlowTrace(msgspec.Struct):
    traceEvents: list[_AnyEventFull] | None = None  # noqa: N815


class _RawTrace(_Trace):
    traceEvents: list[msgspec.Raw] | None = None  # type: ignore[assignment]  # noqa: N815


#: Events decoded per chunk: bounds the Python objects alive at once. Measured on a 78 MB rank trace
#: (339k events): 50k -> 184 MB peak RSS, 5k -> 143 MB and also ~15 % less CPU (cache-friendly); 1k -> no better.
CHUNK_EVENTS = 4_000
_RAW_DECODER = msgspec.json.Decoder(_RawTrace)
_CHUNK_DECODER = msgspec.json.Decoder(list[_AnyEvent])
_FLOW_DECODER = msgspec.json.Decoder(_FlowTrace)


@dataclass
class RankTrace:
    """One trace file as columns. Row i of every array is the i-th complete (``ph: X``) event."""

    path: str
    names: list[str]  # string table: event names
    kind: np.ndarray  # int8, K_* codes
    name_id: np.ndarray  # int32 into names
    ts: np.ndarray  # float64 µs
    dur: np.ndarray  # float64 µs
    tid: np.ndarray  # int32 into tids (OS thread ids are unique across the processes of one trace)
    device: np.ndarray  # int32, GPU index for GPU events, -1 otherwise
    stream: np.ndarray  # int64, -1 when absent
    correlation: np.ndarray  # int64, -1 when absent
    external_id: np.ndarray  # int64, -1 when absent
    nbytes: np.ndarray  # int64 bytes moved by copies/memsets, 0 otherwise
    tids: list[Any]
    #: ``ac2g`` flow events (start 's' / finish 'f'): id, ts (µs), tid id, is_start.
    flow_id: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    flow_ts: np.ndarray = field(default_factory=lambda: np.zeros(0))
    flow_tid: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    flow_start: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
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
    if raw[:3] == b"\xef\xbb\xbf":  # a UTF-8 byte-order mark (editors on Windows) is not JSON
        raw = raw[3:]
    return raw


def load_trace(path: str | Path) -> RankTrace:
    """Load one trace file into columns. Raises TraceError (one line) when it cannot be read at all."""
    gc_was_on = gc.isenabled()
    gc.disable()  # millions of new objects, no cycles: collector passes would only cost time
    try:
        return _load(Path(path))
    finally:
        if gc_was_on:
            gc.enable()


def _load(path: Path) -> RankTrace:
    raw = read_bytes(path)
    full_events: list[Any] | None = None
    try:
        # Split the events without decoding them (Raw views into ``raw``), then decode CHUNK_EVENTS at a
        # time into columns: only one chunk's Python objects are alive at once, which bounds memory.
        doc: Any = _RAW_DECODER.decode(raw)
        raws = doc.traceEvents or []
        chunks = [_chunk(raws[i:i + CHUNK_EVENTS]) for i in range(0, len(raws), CHUNK_EVENTS)]
        tolerant = any(c.tolerant for c in chunks)
        del raws
        doc.traceEvents = None
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        # Not the shape expected (or NaN literals, which msgspec rejects): decode generically.
        doc, full_events, bad = _decode_tolerant(path, raw)
        chunks = [_chunk_columns(full_events, bad)]
        tolerant = True
    del raw  # the JSON text is not needed once decoded
    if not sum(c.events for c in chunks):
        raise TraceError(f"{path}: no trace events (not a Chrome/Kineto trace?)")
    rt = _merge(path, chunks)
    if len(rt.ts) == 0:
        raise TraceError(f"{path}: no complete events with a usable time (only metadata, or every event damaged)")
    rt.tolerant = tolerant
    if np.any(rt.correlation[np.isin(rt.kind, GPU_KINDS)] < 0):
        _add_flows(rt, path, full_events)
    _fill_metadata(rt, doc)
    return rt


def _chunk(raws: list[msgspec.Raw]) -> _Chunk:
    """Decode a slice of the events (typed; per event with lax typing when the typed decode fails)."""
    buf = b"[" + b",".join(raws) + b"]"
    try:
        return _chunk_columns(_CHUNK_DECODER.decode(buf), 0)
    except (msgspec.ValidationError, RecursionError, UnicodeDecodeError):
        # Invalid UTF-8 inside a name should not cost the events: replace the bad bytes.
        events, bad = _convert_tolerant(msgspec.json.decode(buf.decode("utf-8", errors="replace")))
        chunk = _chunk_columns(events, bad)
        chunk.tolerant = True
        return chunk


def _decode_tolerant(path: Path, raw: bytes) -> tuple[_Trace, list[Any], int]:
    """Generic decode, then convert each event on its own with lax typing ("12" -> 12)."""
    try:
        data = msgspec.json.decode(raw)
    except (msgspec.DecodeError, RecursionError):
        try:
            # Invalid UTF-8 inside a name should not cost the whole file: replace the bad bytes.
            data = json.loads(raw.decode("utf-8", errors="replace"))
        except RecursionError:
            raise TraceError(f"{path}: JSON nested too deeply to read (recursion limit)") from None
        except ValueError:
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
    events, bad = _convert_tolerant(raw_events)
    return doc, events, bad


def _convert_tolerant(raw_events: list[Any]) -> tuple[list[Any], int]:
    """Convert generic event dicts one by one with lax typing; (events, how many could not be used)."""
    events: list[Any] = []
    bad = 0
    for ev in raw_events:
        if not isinstance(ev, dict):
            bad += 1
            continue
        try:
            events.append(msgspec.convert(ev, _AnyEventFull, strict=False))
        except msgspec.ValidationError:
            args = ev.get("args")
            # A bad value inside args should not cost the event its time: keep it without args.
            try:
                ev2 = dict(ev, args=None) if args is not None else ev
                events.append(msgspec.convert(ev2, _AnyEventFull, strict=False))
            except msgspec.ValidationError:
                bad += 1
    return events, bad


def _ids(values: list[Any]) -> tuple[np.ndarray, list[Any]]:
    """Dictionary-encode ``values``: (int32 id per value, table of distinct values in first-seen order)."""
    table = list(dict.fromkeys(values))
    index = {v: i for i, v in enumerate(table)}
    return np.fromiter(map(index.__getitem__, values), np.int32, len(values)), table


def _opt_int(values: list[int | None]) -> np.ndarray:
    """int64 column, -1 where missing. Goes through float64 (exact below 2**53) so None is one C pass."""
    a = np.array(values, dtype=np.float64)
    return np.nan_to_num(a, nan=-1.0).astype(np.int64)


_get = attrgetter


@dataclass
class _Chunk:
    """Columns of a slice of the events; ``names``/``tids`` are the slice's own tables."""

    cols: dict[str, np.ndarray]
    names: list[str]
    tids: list[Any]
    events: int
    skipped: int
    tolerant: bool = False


def _chunk_columns(events: list[Any], skipped: int) -> _Chunk:
    # One C-level pass per field (map + attrgetter): per-event Python work is what costs here.
    xs = [e for e in events if e.__class__ is _Event]
    n = len(xs)
    cats = list(map(_get("cat"), xs))
    cat_kind = {c: _KIND_OF_CAT.get((c or "").lower(), K_OTHER) for c in set(cats)}
    kind = np.fromiter(map(cat_kind.__getitem__, cats), np.int8, n)
    name_id, names = _ids(list(map(_get("name"), xs)))
    tid, tids = _ids(list(map(_get("tid"), xs)))
    ts = np.array(list(map(_get("ts"), xs)), dtype=np.float64)  # None -> nan
    dur = np.array(list(map(_get("dur"), xs)), dtype=np.float64)
    args = list(map(_get("args"), xs))
    if None in args:  # events without args (rare in Kineto traces) get an empty one
        no = _Args()
        args = [no if a is None else a for a in args]
    correlation = _opt_int(list(map(_get("correlation"), args)))
    external_id = _opt_int(list(map(_get("external_id"), args)))
    gpu = np.flatnonzero(np.isin(kind, GPU_KINDS))
    # Device, stream and bytes only matter for GPU activities: read them for those rows only.
    gargs = [args[i] for i in gpu.tolist()]
    stream = np.full(n, -1, dtype=np.int64)
    stream[gpu] = _opt_int(list(map(_get("stream"), gargs)))
    nb = np.zeros(n, dtype=np.int64)
    nb[gpu] = np.nan_to_num(np.array(list(map(_get("bytes"), gargs)), dtype=np.float64)).astype(np.int64)
    dev = _opt_int(list(map(_get("device"), gargs)))
    if np.any(dev < 0):  # no args.device: the GPU pid is the device (Kineto's "GPU N" processes use pid N)
        pid = [xs[i].pid for i in gpu.tolist()]
        dev = np.where(dev >= 0, dev, [p if isinstance(p, int) else -1 for p in pid])
    device = np.full(n, -1, dtype=np.int32)
    device[gpu] = dev
    good = np.isfinite(ts) & np.isfinite(dur) & (dur >= 0)
    cols = {"kind": kind, "name_id": name_id, "ts": ts, "dur": dur, "tid": tid, "device": device,
            "stream": stream, "correlation": correlation, "external_id": external_id, "nbytes": nb}
    n_bad = int(n - np.count_nonzero(good))
    if n_bad:
        cols = {k: v[good] for k, v in cols.items()}
    return _Chunk(cols, names, tids, events=len(events) + skipped, skipped=skipped + n_bad)


def _merge(path: Path, chunks: list[_Chunk]) -> RankTrace:
    """One RankTrace from the chunks: concatenated columns, one string table and one thread table."""
    names: dict[str, int] = {}
    tids: dict[Any, int] = {}
    for c in chunks:  # re-number each chunk's local ids into the shared tables
        c.cols["name_id"] = np.array([names.setdefault(x, len(names)) for x in c.names] or [0],
                                     dtype=np.int32)[c.cols["name_id"]]
        c.cols["tid"] = np.array([tids.setdefault(x, len(tids)) for x in c.tids] or [0],
                                 dtype=np.int32)[c.cols["tid"]]
    cols = {k: np.concatenate([c.cols[k] for c in chunks]) for k in _ROW_COLUMNS}
    return RankTrace(path=str(path), names=list(names), tids=list(tids), events=sum(c.events for c in chunks),
                     skipped=sum(c.skipped for c in chunks), **cols)


def _add_flows(rt: RankTrace, path: Path, events: list[Any] | None) -> None:
    """Read the ``ac2g`` flow events (only when some GPU event has no correlation id: rare)."""
    if events is None:
        try:
            events = _FLOW_DECODER.decode(read_bytes(path)).traceEvents or []
        except msgspec.DecodeError:
            events = []
    flows = [e for e in events if (e.__class__ is _FLOW_START or e.__class__ is _FLOW_END) and e.cat == "ac2g"]
    fts = np.array(list(map(_get("ts"), flows)), dtype=np.float64)
    fid = np.array([_int_or(e.id) for e in flows], dtype=np.int64)
    ok = np.isfinite(fts) & (fid >= 0)
    index = {v: i for i, v in enumerate(rt.tids)}
    ftid = np.fromiter((index.setdefault(t, len(index)) for t in map(_get("tid"), flows)), np.int32, len(flows))
    rt.tids = list(index)
    rt.flow_ts, rt.flow_id, rt.flow_tid = fts[ok], fid[ok], ftid[ok]
    rt.flow_start = np.array([e.__class__ is _FLOW_START for e in flows], dtype=bool)[ok]


def _int_or(v: Any, default: int = -1) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        return default


_ROW_COLUMNS = ("kind", "name_id", "ts", "dur", "tid", "device", "stream", "correlation",
                "external_id", "nbytes")


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
    return (rt.base_time_ns or 0) / 1000.0

