"""Read one Chrome/Kineto trace (``.json`` or ``.json.gz``) into compact per-rank columns.

The file is decoded a chunk of events at a time (``dpprof.trace.decode``) and each chunk turned into numpy
columns (``dpprof.trace.columns``). When one odd event breaks the typed decode (a number written as a
string, a bad type), its chunk is decoded generically and every event converted on its own with lax
typing; when the file as a whole is not the expected shape (NaN literals, a bare array of events), the whole
file is. Events that still do not fit, and those with a missing/NaN/negative duration, are skipped and
counted. Only a file that is not JSON, is cut short, or has no events is rejected (``TraceError``, one line
naming the file).

Time: all ``ts``/``dur`` columns are float64 microseconds on the trace's own clock. Traces with
``baseTimeNanoseconds`` have ``ts`` relative to it (absolute epoch ns = base + ts * 1000); 2021
traces carry absolute µs and no base (base 0). ``ts``/``dur`` are microseconds whatever
``displayTimeUnit`` says: in the Chrome trace event format it is only a hint for how a viewer displays
times, and libkineto writes it (``ChromeTraceLogger::handleTraceStart`` copies the profiler's metadata)
over µs timestamps with a nanosecond fraction. A trace is read as nanoseconds only when the bulk of its
timestamps (the median, so that one absurd event cannot decide) is above 1e17, which only epoch
nanoseconds reach (epoch µs is ~1.8e15).
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from dpprof.errors import TraceError
from dpprof.trace import classify as C
from dpprof.trace import decode as D
from dpprof.trace.columns import (  # noqa: F401 (re-exported: the loader's public names)
    BAD_DEVICE,
    GPU_KINDS,
    K_CPU_OP,
    K_GPU_ANN,
    K_KERNEL,
    K_MEMCPY,
    K_MEMSET,
    K_OTHER,
    K_PYTHON,
    K_RUNTIME,
    K_USER_ANN,
    KIND_NAMES,
    ROW_COLUMNS,
    Chunk,
    Extras,
    chunk_columns,
    is_gpu,
    merge,
    merge_extras,
    renumber,
)
from dpprof.trace.decode import read_bytes  # noqa: F401 (re-exported)
from dpprof.trace.metadata import Header, read_header

_NS_TS_THRESHOLD = 1e17  # epoch µs is ~1.7e15 today; only epoch ns exceeds 1e17
_get = attrgetter
_SHOWN = 5  # header problems spelled out in the warning


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
    #: Sparse collective metadata and peer-copy ends (``columns.Extras``).
    extras: Extras = field(default_factory=Extras.empty)
    #: (code, message, count) of what the loader skipped beyond damaged events: outliers, unknown devices.
    notes: list[tuple[str, str, int]] = field(default_factory=list)


def load_trace(path: str | Path, max_inflate: int | None = None) -> RankTrace:
    """Load one trace file into columns. Raises TraceError (one line) when it cannot be read at all.

    ``max_inflate``: most bytes a gzip file may inflate to (default ``dpprof.trace.inflate.inflate_limit``).
    """
    gc_was_on = gc.isenabled()
    gc.disable()  # millions of new objects, no cycles: collector passes would only cost time
    try:
        return _load(Path(path), max_inflate)
    finally:
        if gc_was_on:
            gc.enable()


def _load(path: Path, max_inflate: int | None) -> RankTrace:
    full_events: list[Any] | None = None
    raw: D.Buffer | None = None
    try:
        doc, chunks, raw = _decode_chunks(path, max_inflate)
        tolerant = any(c.tolerant for c in chunks)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        # Not the shape expected (or NaN literals, which msgspec rejects): decode generically.
        doc, full_events, bad = D.decode_tolerant(path, raw if raw is not None else read_bytes(path, max_inflate))
        chunks = [chunk_columns(full_events, bad)]
        tolerant = True
    del raw  # the JSON text is not needed once decoded
    if not sum(c.events for c in chunks):
        raise TraceError(f"{path}: no trace events (not a Chrome/Kineto trace?)")
    extras = merge_extras(chunks)
    cols, names, tids = merge(chunks)
    rt = RankTrace(path=str(path), names=names, kind=cols["kind"], name_id=cols["name_id"], ts=cols["ts"],
                   dur=cols["dur"], tid=cols["tid"], device=cols["device"], stream=cols["stream"],
                   correlation=cols["correlation"], external_id=cols["external_id"], nbytes=cols["nbytes"],
                   tids=tids, events=sum(c.events for c in chunks), skipped=sum(c.skipped for c in chunks),
                   extras=extras)
    if len(rt.ts) == 0:
        raise TraceError(f"{path}: no complete events with a usable time (only metadata, or every event damaged)")
    rt.tolerant = tolerant
    if np.any(rt.correlation[is_gpu(rt.kind)] < 0):
        _add_flows(rt, path, full_events, max_inflate)
    head = _fill_metadata(rt, doc)
    _drop_outliers(rt)
    _drop_unknown_devices(rt, head)
    steps = _step_names(rt)
    _clip_overlapping_steps(rt, _drop_bad_step_numbers(rt, steps))
    _drop_long_events(rt)
    if len(rt.ts) == 0:
        raise TraceError(f"{path}: no complete events with a usable time or device (every event skipped)")
    return rt


def _decode_chunks(path: Path, max_inflate: int | None) -> tuple[D.Trace, list[Chunk], D.Buffer | None]:
    """(metadata, columns per chunk of events, the file's text when it had to be read whole).

    Raises msgspec errors (and TraceError, unreadable file) when the file is not the shape expected.
    """
    chunks: list[Chunk] = []
    try:
        for last, buf in D.split_stream(path, max_inflate):
            if last:
                doc = D.decode_head(buf)
            else:
                chunks.append(_chunk(buf))
        raw = None
    except (D.NotStreamable, msgspec.DecodeError):
        # Not splittable while reading (or a cut fell inside an event, or the JSON is bad): read it whole and
        # split the events without decoding them (Raw views into ``raw``).
        raw = read_bytes(path, max_inflate)
        D.ensure_complete(raw, path)  # a cut-short file: one line now, not after decoding all of it
        chunks = []
        doc = D.decode_head(raw)
    raws = doc.traceEvents or []
    chunks += [_chunk(b"[" + b",".join(raws[i:i + D.CHUNK_EVENTS]) + b"]") for i in range(0, len(raws), D.CHUNK_EVENTS)]
    doc.traceEvents = None
    return doc, chunks, raw  # a _RawTrace, whose metadata fields are Trace's


def _chunk(buf: bytes | memoryview) -> Chunk:
    """Columns of one JSON array of events: decoded with the narrow args, again with the wide ones when it names
    collective or peer-copy events (``decode._WIDE_NAMES``)."""
    chunk = chunk_columns(*D.decode_chunk(buf))
    return chunk_columns(*D.decode_chunk(buf, wide=True)) if chunk.needs_wide else chunk


def _add_flows(rt: RankTrace, path: Path, events: list[Any] | None, max_inflate: int | None) -> None:
    """Read the ``ac2g`` flow events (only when some GPU event has no correlation id: rare)."""
    if events is None:
        events = D.decode_flows(path, max_inflate)
    flows = [e for e in events if (e.__class__ is D.FLOW_START or e.__class__ is D.FLOW_END) and e.cat == "ac2g"]
    fts = np.array(list(map(_get("ts"), flows)), dtype=np.float64)
    fid = np.array([_int_or(e.id) for e in flows], dtype=np.int64)
    ok = np.isfinite(fts) & (fid >= 0)
    index = {v: i for i, v in enumerate(rt.tids)}
    ftid = np.fromiter((index.setdefault(t, len(index)) for t in map(_get("tid"), flows)), np.int32, len(flows))
    rt.tids = list(index)
    rt.flow_ts, rt.flow_id, rt.flow_tid = fts[ok], fid[ok], ftid[ok]
    rt.flow_start = np.array([e.__class__ is D.FLOW_START for e in flows], dtype=bool)[ok]


def _int_or(v: Any, default: int = -1) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        return default


def _fill_metadata(rt: RankTrace, doc: D.Trace) -> Header:
    head = read_header(doc.distributedInfo, doc.baseTimeNanoseconds, doc.deviceProperties)
    rt.rank, rt.world_size, rt.backend, rt.pg_config = head.rank, head.world_size, head.backend, head.pg_config
    rt.base_time_ns, rt.gpu_names = head.base_time_ns, dict(head.gpu_names)
    if head.problems:
        shown = "; ".join(head.problems[:_SHOWN]) + (f"; and {len(head.problems) - _SHOWN} more"
                                                      if len(head.problems) > _SHOWN else "")
        rt.notes.append(("trace_metadata", f"trace header fields left out (as if absent): {shown}",
                         len(head.problems)))
    if len(rt.ts) and float(np.median(rt.ts)) > _NS_TS_THRESHOLD:
        rt.ts = rt.ts / 1000.0
        rt.dur = rt.dur / 1000.0
        rt.flow_ts = rt.flow_ts / 1000.0
        rt.ns_converted = True
    return head


def clock_offset_us(rt: RankTrace) -> float:
    """Add to a ts of this trace to get epoch µs (0 when the trace has absolute µs)."""
    return (rt.base_time_ns or 0) / 1000.0



#: Events further than this from the trace's median time, or longer than it, are absurd for a profile
#: (~28 hours; a profiler window lasts seconds to minutes): skipped and counted, so one event at ts 1e300
#: can neither stretch a step nor rescale the trace.
OUTLIER_US = 1e11
#: Device ids a trace may use when it has no deviceProperties (CUDA/ROCm indices on one machine).
MAX_DEVICES = 1024


def _keep_rows(rt: RankTrace, keep: np.ndarray) -> None:
    for name in ROW_COLUMNS:
        setattr(rt, name, getattr(rt, name)[keep])
    rt.extras = renumber(rt.extras, keep)


def _drop_outliers(rt: RankTrace) -> None:
    if not len(rt.ts):
        return
    mid = float(np.median(rt.ts))
    keep = (np.abs(rt.ts - mid) <= OUTLIER_US) & (rt.dur <= OUTLIER_US)
    n = len(keep) - int(np.count_nonzero(keep))
    if n:
        _keep_rows(rt, keep)
        rt.notes.append(("skipped_outliers", f"{n} events skipped: ts more than {OUTLIER_US:.0e} µs from the "
                         f"trace's median time, or dur above it (absurd for a profile)", n))
    flows = np.abs(rt.flow_ts - mid) <= OUTLIER_US
    if not flows.all():
        rt.flow_ts, rt.flow_id, rt.flow_tid, rt.flow_start = (a[flows] for a in (
            rt.flow_ts, rt.flow_id, rt.flow_tid, rt.flow_start))


def _drop_unknown_devices(rt: RankTrace, head: Header) -> None:
    """Skip GPU activities on a device the trace does not describe (deviceProperties, else ids 0-1023)."""
    listed = {d for d in head.device_ids if 0 <= d < MAX_DEVICES}
    known = np.array(sorted(listed) if listed else range(MAX_DEVICES), dtype=np.int64)
    gpu = is_gpu(rt.kind)
    bad = gpu & (rt.device != -1) & ~np.isin(rt.device, known)
    n = int(np.count_nonzero(bad))
    if n:
        ids = sorted({int(d) for d in rt.device[bad][:1000]})
        _keep_rows(rt, ~bad)
        where = "deviceProperties" if listed else f"0-{MAX_DEVICES - 1} (no deviceProperties)"
        shown = ", ".join("out of range" if d == BAD_DEVICE else str(d) for d in ids[:5]) + (
            ", ..." if len(ids) > 5 else "")
        rt.notes.append(("skipped_unknown_devices", f"{n} GPU activities skipped: device id(s) {shown} not "
                         f"among the trace's devices ({where})", n))


#: Step numbers beyond int32 are not a real run's (torch counts steps from 0 in ``profile.step()``) and overflow
#: the analysis' step columns.
MAX_STEP = 2**31 - 1
#: An event is absurdly long when it lasts more than twice the span of the trace's starts, and more than 1 s
#: beyond it. Kineto's own ``PyTorch Profiler (0)`` event encloses the whole window: ~1.0-1.1 times that span in
#: every real trace of tests/data.
LONG_FACTOR = 2.0
LONG_MARGIN_US = 1e6


def _step_names(rt: RankTrace) -> dict[int, str]:
    """name id -> the digits of every ``ProfilerStep#N`` in the string table (classify's step rule)."""
    out = {}
    for i, n in enumerate(rt.names):
        if n.startswith("ProfilerStep#") and C.classify_cpu_name(n) == C.C_STEP:
            out[i] = n[len("ProfilerStep#"):]
    return out


def _drop_bad_step_numbers(rt: RankTrace, steps: dict[int, str]) -> list[int]:
    """Skip ``ProfilerStep#N`` events (host and GPU copies) whose N is beyond ``MAX_STEP`` (``int`` is not asked
    to read thousands of digits); the name ids of the steps kept."""
    bad = [i for i, digits in steps.items() if len(digits) > 10 or int(digits) > MAX_STEP]
    if not bad:
        return list(steps)
    drop = np.isin(rt.name_id, bad)
    n = int(np.count_nonzero(drop))
    if n:
        _keep_rows(rt, ~drop)
        rt.notes.append(("skipped_step_numbers", f"{n} ProfilerStep events skipped: step number above "
                         f"{MAX_STEP:,} (torch counts steps from 0; not a real run's)", n))
    gone = set(bad)
    return [i for i in steps if i not in gone]


def _clip_overlapping_steps(rt: RankTrace, ids: list[int]) -> None:
    """A host ``ProfilerStep#N`` ending after the next one of its thread starts is cut at that start.

    torch ends a step before it opens the next (``profile.step()`` in torch/profiler/profiler.py exits the
    previous ``record_function("ProfilerStep#N")`` and then enters the next), so on one thread steps never
    overlap: a longer duration is damage, and would make a step of idle time overlapping the next.
    """
    if not ids:
        return
    host = ~is_gpu(rt.kind) & (rt.kind != K_GPU_ANN) & (rt.kind != K_OTHER)
    rows = np.flatnonzero(host & np.isin(rt.name_id, ids))
    if len(rows) < 2:
        return
    rows = rows[np.lexsort((rt.ts[rows], rt.tid[rows]))]
    same = rt.tid[rows[:-1]] == rt.tid[rows[1:]]
    gap = rt.ts[rows[1:]] - rt.ts[rows[:-1]]
    over = same & (rt.dur[rows[:-1]] - gap > 1.0)  # 1 µs: beyond float rounding of epoch-µs timestamps
    n = int(np.count_nonzero(over))
    if n:
        worst = float(np.max(rt.dur[rows[:-1]][over] - gap[over]))
        rt.dur[rows[:-1][over]] = gap[over]
        rt.notes.append(("clipped_steps", f"{n} ProfilerStep events overlapped the next step of their thread (by "
                         f"up to {worst:,.0f} µs): cut at the next step's start", n))


def _drop_long_events(rt: RankTrace) -> None:
    """Skip events longer than the trace can hold (``LONG_FACTOR``): what is left of an absurd duration below
    ``OUTLIER_US``. The span is that of the events' starts, which no duration can widen, so two absurd events
    cannot hide each other."""
    if len(rt.ts) < 2:
        return
    span = float(rt.ts.max() - rt.ts.min())
    if span <= 0:
        return
    limit = max(LONG_FACTOR * span, span + LONG_MARGIN_US)
    long = rt.dur > limit
    n = int(np.count_nonzero(long))
    if n:
        worst = float(rt.dur[long].max())
        _keep_rows(rt, ~long)
        rt.notes.append(("skipped_long_events", f"{n} events skipped: longer ({worst:,.0f} µs) than the trace's "
                         f"own span ({span:,.0f} µs from first to last start) can hold", n))
