"""Second pass over one rank's trace: every event the selection keeps, moved onto the merged clock and ids.

Per event: ``pid``/``tid`` become the rank's new process and thread (``dpprof.perfetto.layout``); ``ts`` moves
by the rank's clock shift, computed in integer nanoseconds (Kineto's ``ts`` has 3 decimals on ~5e12 µs, where a
double has ~1 ns of resolution: adding a shift in floating point would move ends past their parents' ends);
ids that link events (flow ``id``/``bind_id``, async ``id``, ``args`` ``External id`` and ``correlation``)
become ``id * stride + slot``, unique per rank and readable (the last digits are the rank's slot). Nothing
else changes: names, categories, args and their order stay as the trace wrote them. Metadata rows (``ph: M``)
are replaced by the merge's own names; the trace's thread names are kept.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from dpprof.errors import TraceError
from dpprof.perfetto import layout
from dpprof.perfetto.events import Unsplittable, chunks, decode_generic, decode_pairs
from dpprof.perfetto.scan import FLOW_PHASES, Filter, Scan, is_number, sorted_threads, thread_key

_INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class RankPlan:
    """How one rank's trace goes into the merged one."""

    rank: int
    index: int  # position among the merged ranks: its pids
    path: Path
    shift_ns: int  # added to a trace-clock ns to get the merged clock
    ns_trace: bool  # ts/dur written in ns (epoch-ns traces): divided by 1000
    id_slot: int  # position among every analysed rank: its ids
    id_stride: int  # a power of ten above the number of analysed ranks
    flt: Filter = Filter()
    max_inflate: int | None = None  # --max-inflate: most bytes a gzip trace may inflate to


@dataclass(frozen=True)
class Thread:
    pid: int
    tid: int
    gpu: bool
    k: int  # sort index inside its process (0 is dpprof's attribution track)


@dataclass
class Rewritten:
    """What the pass wrote: events by kind, and the threads that received any (with their names)."""

    counts: dict[str, int] = field(default_factory=lambda: {"host": 0, "gpu": 0, "flow": 0, "other": 0})
    threads: dict[tuple[Any, Any], Thread] = field(default_factory=dict)
    names: dict[tuple[Any, Any], str] = field(default_factory=dict)
    used: set[Thread] = field(default_factory=set)
    #: the trace's (pid, tid) as written -> its thread (numbers written as strings are the numbers: thread_key)
    by_raw: dict[tuple[Any, Any], Thread | None] = field(default_factory=dict)
    skipped: int = 0  # events the Chrome trace format cannot hold (no ts, an X without dur or name...)
    #: new pid -> how many of its threads share its last track (more threads than ``layout.SHARED_K``)
    shared: dict[int, int] = field(default_factory=dict)

    def thread(self, raw: tuple[Any, Any]) -> Thread | None:
        """The thread of an event's (pid, tid) as written (raises TypeError when they are unhashable)."""
        if raw not in self.by_raw:
            self.by_raw[raw] = self.threads.get(thread_key(*raw))
        return self.by_raw[raw]

    def metadata(self) -> list[dict[str, Any]]:
        """``thread_name`` and ``thread_sort_index`` rows of the threads that hold events (one per track)."""
        rows: list[dict[str, Any]] = []
        named: set[Thread] = set()
        for key, th in self.threads.items():
            if th in self.used and th not in named:
                named.add(th)
                n = self.shared.get(th.pid, 0) if th.k == layout.SHARED_K else 0
                name = (f"{n:,} more threads (one shared track)" if n else
                        self.names.get(key) or default_name(key, th.gpu))
                rows += thread_rows(th.pid, th.tid, name, th.k)
        return rows

    def notes(self, rank: int) -> list[str]:
        """What the user should know about the rank's threads (the shared tracks)."""
        return [f"rank {rank}: process {pid} has {layout.SHARED_K - 1 + n:,} threads: the {n:,} after the first "
                f"{layout.SHARED_K - 1:,} share one track, where their slices may overlap"
                for pid, n in sorted(self.shared.items())]


def thread_rows(pid: int, tid: int, name: str, sort_index: int) -> list[dict[str, Any]]:
    return [{"name": "thread_name", "ph": "M", "ts": 0, "pid": pid, "tid": tid, "args": {"name": name}},
            {"name": "thread_sort_index", "ph": "M", "ts": 0, "pid": pid, "tid": tid,
             "args": {"sort_index": sort_index}}]


def default_name(key: tuple[Any, Any], gpu: bool) -> str:
    pid, tid = key
    if gpu:
        return f"stream {tid}"
    if is_number(pid):
        return f"thread {tid}"
    return " ".join(str(v) for v in key if v not in (None, "")) or "events without pid or tid"


def thread_map(index: int, sc: Scan) -> tuple[dict[tuple[Any, Any], Thread], dict[int, int]]:
    """The rank's threads in display order, numbered per new process from 1; and per new pid, how many threads
    share its last track (a process with more than ``layout.SHARED_K`` threads: ``layout.thread_tid``)."""
    out: dict[tuple[Any, Any], Thread] = {}
    per_pid: dict[int, int] = {}
    for key in sorted_threads(sc.threads):
        gpu = sc.threads[key]
        pid = layout.gpu_pid(index, int(key[0])) if gpu else layout.host_pid(index)
        k = per_pid[pid] = per_pid.get(pid, 0) + 1
        out[key] = Thread(pid, layout.thread_tid(pid, k), gpu, min(k, layout.SHARED_K))
    shared = {pid: n - layout.SHARED_K + 1 for pid, n in per_pid.items() if n > layout.SHARED_K}
    return out, shared


def to_ns(ts: float | int) -> int:
    """Exact integer ns of a µs timestamp written with at most 3 decimals (the float's nearest ns)."""
    if isinstance(ts, int):
        return ts * 1000
    q = math.floor(ts)
    return int(q) * 1000 + round((ts - q) * 1000)


def rewrite(plan: RankPlan, sc: Scan, emit: Callable[[list[bytes]], None]) -> Rewritten:
    """Stream ``plan.path`` again, emitting each chunk's kept events (JSON text each); see the module doc."""
    threads, shared = thread_map(plan.index, sc)
    out = Rewritten(threads=threads, shared=shared)
    decode = _selecting(plan, sc, out) if plan.flt.active else decode_generic
    try:
        for events in chunks(plan.path, sc.whole, decode, max_inflate=plan.max_inflate):
            emit(_chunk(events, plan, sc, out))
    except Unsplittable:  # the first pass read it streamed: the file changed in between
        raise TraceError(f"{plan.path}: changed while it was being merged") from None
    return out


def _keep(th: Thread | None, flt: Filter, dropped: set[tuple[Any, Any, Any]], ph: Any, cat: Any, ts: Any,
          dur: Any, name: Any, id_: Any) -> bool:
    """Whether a (non-metadata) event of thread ``th`` is written: its thread, kind and time, and its flow whole."""
    if th is None:
        return False
    if not (flt.kernels if th.gpu else flt.host_ops) and not flt.kind_keeps(ph, cat, th.gpu):
        return False
    if flt.windows is not None and not flt.in_window(ph, ts, dur):
        return False
    return not (dropped and ph in FLOW_PHASES and (cat, name, id_) in dropped)


def _selecting(plan: RankPlan, sc: Scan, out: Rewritten) -> Callable[[bytes | memoryview], list[Any]]:
    """A chunk decoder that decodes only the events the selection keeps (and metadata): with ``--steps`` or
    ``--no-host-ops`` most events are dropped, and decoding their ``args`` is most of the cost."""
    flt, dropped = plan.flt, sc.dropped_flows

    def decode(buf: bytes | memoryview) -> list[Any]:
        pairs = decode_pairs(buf)
        if pairs is None:
            return decode_generic(buf)  # the tolerant path; _chunk filters it all the same
        kept = []
        for ev, raw in zip(*pairs, strict=True):
            try:
                if ev.ph == "M" or _keep(out.thread((ev.pid, ev.tid)), flt, dropped, ev.ph, ev.cat, ev.ts, ev.dur,
                                         ev.name, ev.id):
                    kept.append(decode_generic(raw))
            except TypeError:  # unhashable pid, tid or id: left out
                continue
        return kept

    return decode


def _new_id(v: Any, stride: int, slot: int) -> Any:
    if type(v) is str and v.isdigit():
        v = int(v)
    if type(v) is int and v >= 0:
        new = v * stride + slot
        return new if new <= _INT64_MAX else v
    return v


def _chunk(events: list[Any], plan: RankPlan, sc: Scan, out: Rewritten) -> list[bytes]:
    """The chunk's kept events, rewritten, as one JSON text of comma-separated events (or nothing)."""
    by_raw, counts, used = out.by_raw, out.counts, out.used
    flt, dropped, active = plan.flt, sc.dropped_flows, plan.flt.active
    shift, ns, stride, slot = plan.shift_ns, plan.ns_trace, plan.id_stride, plan.id_slot
    kept: list[dict[str, Any]] = []
    n_host = n_gpu = n_flow = n_other = 0
    for ev in events:
        if type(ev) is not dict:
            continue
        ph = ev.get("ph")
        if ph == "M":
            _name(ev, out.names)
            continue
        raw = (ev.get("pid"), ev.get("tid"))
        try:
            th = by_raw[raw] if raw in by_raw else out.thread(raw)
            if th is None or active and not _keep(th, flt, dropped, ph, ev.get("cat"), ev.get("ts"), ev.get("dur"),
                                                  ev.get("name"), ev.get("id")):
                continue
        except TypeError:  # unhashable pid, tid or id: left out by the first pass too
            continue
        if not _times(ev, ph, shift, ns):
            out.skipped += 1
            continue
        ev["pid"], ev["tid"] = th.pid, th.tid
        if "id" in ev:
            ev["id"] = _new_id(ev["id"], stride, slot)
        if "bind_id" in ev:
            ev["bind_id"] = _new_id(ev["bind_id"], stride, slot)
        args = ev.get("args")
        if type(args) is dict:
            if "External id" in args:
                args["External id"] = _new_id(args["External id"], stride, slot)
            if "correlation" in args:
                args["correlation"] = _new_id(args["correlation"], stride, slot)
        kept.append(ev)
        used.add(th)
        if ph == "X":
            if th.gpu:
                n_gpu += 1
            else:
                n_host += 1
        elif ph in FLOW_PHASES:
            n_flow += 1
        else:
            n_other += 1
    counts["host"] += n_host
    counts["gpu"] += n_gpu
    counts["flow"] += n_flow
    counts["other"] += n_other
    if not kept:
        return []
    try:
        return [msgspec.json.encode(kept)[1:-1]]
    except (TypeError, OverflowError):  # an int beyond 64 bits somewhere: JSON, but not re-encodable; skip it
        return [line for line in map(_encode_or_none, kept) if line is not None]


def _number(v: Any) -> int | float | None:
    """A finite number, also when written as a string (some exporters do); None otherwise."""
    if type(v) is int:
        return v
    if type(v) is str:
        try:
            v = int(v) if v.strip().lstrip("-").isdigit() else float(v)
        except ValueError:
            return None
    return v if type(v) is int or type(v) is float and math.isfinite(v) else None


def _times(ev: dict[str, Any], ph: Any, shift: int, ns: bool) -> bool:
    """Numbers for ``ts`` (moved by ``shift``), ``dur`` and counter values; False when the event cannot be written
    as the Chrome trace format wants it (no phase or ``ts``; an X without a name or with no or a negative ``dur``;
    a counter without a numeric value): such events are what the analysis skips too."""
    ts = ev.get("ts")
    if type(ts) is not float or not math.isfinite(ts):  # the usual case first: a float from the decoder
        ts = _number(ts)
    if ts is None or not isinstance(ph, str):
        return False
    if ph == "X":
        dur = ev.get("dur")
        if type(dur) is not float or not math.isfinite(dur):
            dur = _number(dur)
        if dur is None or dur < 0 or not isinstance(ev.get("name"), str):
            return False
        ev["dur"] = dur / 1000 if ns else dur
    elif ph == "C":
        args = ev.get("args")
        values = {k: n for k, v in args.items() if (n := _number(v)) is not None} if type(args) is dict else {}
        if not values:
            return False
        ev["args"] = values
    ev["ts"] = (round(ts) + shift) / 1000 if ns else (to_ns(ts) + shift) / 1000 if shift else ts
    return True


def _encode_or_none(ev: dict[str, Any]) -> bytes | None:
    try:
        return msgspec.json.encode(ev)
    except (TypeError, OverflowError):
        return None


def _name(ev: dict[str, Any], names: dict[tuple[Any, Any], str]) -> None:
    """Keep the first ``thread_name`` the trace gives a thread."""
    args = ev.get("args")
    if ev.get("name") == "thread_name" and isinstance(args, dict):
        name = args.get("name")
        if isinstance(name, str) and name.strip():
            try:
                names.setdefault(thread_key(ev.get("pid"), ev.get("tid")), name)
            except TypeError:
                pass
