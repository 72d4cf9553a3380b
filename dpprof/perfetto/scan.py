"""First pass over one rank's trace: its threads (host or GPU), its time span, and the flows a selection cuts.

Kinds: a thread (``(pid, tid)`` of the trace) is a GPU thread when it holds GPU activities (kernels, copies,
memsets, GPU-side annotations) and its pid is an integer (Kineto: ``pid`` = device index, ``tid`` = stream), or
holds counters on such a pid (``merge-nvml``'s NVML samples); every other thread is a host thread. Deciding per
thread rather than per pid keeps a host process whose pid equals a device index (pid 1 in a container) apart
from that GPU.

Which events a selection keeps is decided here and by the second pass with the same function (``Filter``); a
flow (its events share ``cat``, ``name`` and ``id``) is dropped whole when any of its events is dropped, so
that no arrow is left without an end.
"""

from __future__ import annotations

import bisect
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dpprof.perfetto.events import Scanned, Unsplittable, chunks, decode_scanned
from dpprof.perfetto.layout import MAX_DEVICE
from dpprof.trace.nvml_merge import GPU_CATEGORIES

#: Categories of GPU activities (what ``--no-kernels`` drops) and of the threads that hold them.
GPU_ACTIVITY = frozenset(c.lower() for c in GPU_CATEGORIES)
GPU_THREAD_CATS = GPU_ACTIVITY | {"gpu_user_annotation"}
#: Host events ``--no-host-ops`` keeps: annotations (ProfilerStep#, DP phases, nccl:/gloo: ranges) and the
#: profiler's own span; CPU ops, runtime/driver calls and Python functions go.
HOST_KEPT = frozenset({"user_annotation", "trace"})
FLOW_PHASES = frozenset("stf")
_NUM = (int, float)  # type() in _NUM: numbers, not bools


def is_number(v: Any) -> bool:
    """A finite JSON number (not a bool)."""
    if isinstance(v, float):
        return math.isfinite(v)
    return isinstance(v, int) and not isinstance(v, bool)


@functools.lru_cache(maxsize=1024)
def _lower(cat: str) -> str:
    return cat.lower()


def _category(cat: Any) -> str:
    """Kineto's category, lower-cased (2021 traces capitalise them)."""
    return _lower(cat) if isinstance(cat, str) else ""


@dataclass(frozen=True)
class Filter:
    """The selection as a test on one event; ``windows``: (start, end) µs on the trace's clock, sorted."""

    host_ops: bool = True
    kernels: bool = True
    windows: tuple[tuple[float, float], ...] | None = None

    @property
    def active(self) -> bool:
        return not (self.host_ops and self.kernels and self.windows is None)

    def keep(self, ph: Any, cat: Any, ts: Any, dur: Any, gpu: bool) -> bool:
        """Whether an event (not metadata) of a host or GPU thread stays, flows' partners aside."""
        return self.kind_keeps(ph, cat, gpu) and self.in_window(ph, ts, dur)

    def kind_keeps(self, ph: Any, cat: Any, gpu: bool) -> bool:
        """``--no-kernels`` / ``--no-host-ops``: GPU activities / host ops go, with the flow ends on their threads."""
        if gpu:
            return self.kernels or not (ph in FLOW_PHASES or ph == "X" and _category(cat) in GPU_ACTIVITY)
        return self.host_ops or not (ph in FLOW_PHASES or ph == "X" and _category(cat) not in HOST_KEPT)

    def in_windows(self, ts: np.ndarray) -> np.ndarray:
        """``in_window`` of instants (flow events) at once; NaN (untimed) counts as inside."""
        if self.windows is None:
            return np.ones(len(ts), dtype=bool)
        w0 = np.array([w[0] for w in self.windows])
        w1 = np.array([w[1] for w in self.windows])
        k = np.searchsorted(w0, ts, side="right")
        inside = (k > 0) & (ts <= w1[np.maximum(k - 1, 0)])
        return inside | np.isnan(ts)

    def in_window(self, ph: Any, ts: Any, dur: Any) -> bool:
        """``--steps``: the event overlaps a selected step (an untimed event has nothing to place it by)."""
        if self.windows is None or not is_number(ts):
            return True
        end = ts + dur if ph == "X" and is_number(dur) and dur > 0 else ts
        # Windows are sorted and disjoint: the last one starting before the event's end is the only candidate.
        k = bisect.bisect_right(self.windows, (end, float("inf")))
        return k > 0 and ts <= self.windows[k - 1][1]


@dataclass
class Scan:
    """One rank's trace as the second pass needs it."""

    whole: bool  # read whole: it could not be split while read
    threads: dict[tuple[Any, Any], bool]  # (pid, tid) -> GPU thread?, in first-seen order
    first_ts: float | None = None  # µs on the trace clock (its own unit: ns for ns traces)
    last_end: float | None = None
    events: int = 0
    dropped_flows: set[tuple[Any, Any, Any]] = field(default_factory=set)
    #: GPU pids no process can be given (beyond ``layout.MAX_DEVICE``): their events are left out, as the
    #: analysis leaves them out (``trace.load``: unknown devices).
    unknown_devices: list[int] = field(default_factory=list)

    def gpus(self) -> list[int]:
        return sorted({int(p) for (p, _), g in self.threads.items() if g})


def scan(path: Path, flt: Filter, max_inflate: int | None = None) -> Scan:
    """Read ``path`` once (streamed, else whole) and return its threads, span and the flows ``flt`` cuts
    (``max_inflate``: ``--max-inflate``)."""
    try:
        return _scan(path, flt, whole=False, max_inflate=max_inflate)
    except Unsplittable:
        return _scan(path, flt, whole=True, max_inflate=max_inflate)


def thread_key(pid: Any, tid: Any) -> tuple[Any, Any]:
    """The thread an event is on; numbers written as strings (``"441"``) are the numbers."""
    if type(pid) is str and pid.isdigit():
        pid = int(pid)
    if type(tid) is str and tid.isdigit():
        tid = int(tid)
    return pid, tid


def _hashable(ev: Scanned) -> bool:
    try:
        hash((ev.pid, ev.tid, ev.id))
    except TypeError:  # a list or an object as pid/tid/id: left out in both passes
        return False
    return True


def _finite(values: list[Any]) -> np.ndarray:
    a = np.array(values, dtype=np.float64)
    return a[np.isfinite(a)]


def _scan(path: Path, flt: Filter, whole: bool, max_inflate: int | None) -> Scan:
    out = Scan(whole=whole, threads={})
    threads = out.threads
    first, last = float("inf"), float("-inf")
    by_thread: dict[tuple[Any, Any], set[tuple[Any, Any, Any]]] = {}  # the flows each thread has events of
    alias: dict[tuple[Any, Any], tuple[Any, Any]] = {}  # (pid, tid) as written -> thread_key
    counters: set[tuple[Any, Any]] = set()  # threads with counter events
    cut: set[tuple[Any, Any, Any]] = set()
    for events in chunks(path, whole, decode_scanned, max_inflate=max_inflate):
        out.events += len(events)
        real = [e for e in events if e.ph != "M"]
        try:
            raws = dict.fromkeys([(e.pid, e.tid) for e in real])
        except TypeError:
            real = [e for e in real if _hashable(e)]
            raws = dict.fromkeys([(e.pid, e.tid) for e in real])
        for raw in raws:
            if raw not in alias:
                alias[raw] = thread_key(*raw)
                threads.setdefault(alias[raw], False)
        for raw in {(e.pid, e.tid) for e in real if e.ph == "X" and type(e.cat) is str
                    and e.cat.lower() in GPU_THREAD_CATS}:
            if type(alias[raw][0]) is int:
                threads[alias[raw]] = True
        counters.update(alias[(e.pid, e.tid)] for e in real if e.ph == "C")
        starts = _finite([e.ts for e in real if type(e.ts) in _NUM])
        ends = _finite([e.ts + e.dur for e in real if e.ph == "X" and type(e.ts) in _NUM and type(e.dur) in _NUM
                        and e.dur > 0])
        if len(starts):
            first, last = min(first, float(starts.min())), max(last, float(starts.max()))
        if len(ends):
            last = max(last, float(ends.max()))
        if flt.active:
            flows = [e for e in real if e.ph in FLOW_PHASES and _hashable(e)]
            for e in flows:
                by_thread.setdefault(alias[(e.pid, e.tid)], set()).add((e.cat, e.name, e.id))
            if flt.windows is not None and flows:
                inside = flt.in_windows(np.array([e.ts if type(e.ts) in _NUM else np.nan for e in flows]))
                cut.update((e.cat, e.name, e.id) for e, ok in zip(flows, inside.tolist(), strict=True) if not ok)
    # Counters on a GPU's pid (NVML samples in merge-nvml's copies) belong to that GPU, not to the host.
    gpu_pids = {k[0] for k, gpu in threads.items() if gpu}
    for k in counters:
        if k[0] in gpu_pids and not threads[k]:
            threads[k] = True
    # A flow with events on threads whose kind the selection drops and on threads it keeps loses them all.
    dropped = [f for k, f in by_thread.items() if not flt.kind_keeps("s", None, threads[k])]
    if dropped:
        cut |= set().union(*dropped) & set().union(*(f for k, f in by_thread.items()
                                                    if flt.kind_keeps("s", None, threads[k])))
    out.dropped_flows = cut
    bad = [k for k, gpu in threads.items() if gpu and not 0 <= k[0] <= MAX_DEVICE]
    for k in bad:
        del threads[k]
    out.unknown_devices = sorted({k[0] for k in bad})
    if first <= last:
        out.first_ts, out.last_end = first, last
    return out


def sorted_threads(threads: dict[tuple[Any, Any], bool]) -> list[tuple[Any, Any]]:
    """Threads in display order: per pid (numbers first), by tid (numbers first)."""
    def order(v: Any) -> tuple[int, float, str]:
        return (0, float(v), "") if is_number(v) else (1, 0.0, str(v))

    return sorted(threads, key=lambda k: (order(k[0]), order(k[1])))


def step_windows(rows: Sequence[Any], rank: int, steps: Sequence[int] | None) -> tuple[tuple[float, float], ...] | None:
    """(start, end) µs on the rank's trace clock of its selected steps (any device's row), merged; None: all."""
    if steps is None:
        return None
    wanted = set(steps)
    spans = sorted((r.start_us, r.start_us + r.duration_us) for r in rows if r.rank == rank and r.step in wanted)
    merged: list[tuple[float, float]] = []
    for a, b in spans:
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return tuple(merged)
