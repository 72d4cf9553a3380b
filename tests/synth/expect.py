"""The figures a correct analyzer must report for a synthetic run, computed from what the builder placed.

This applies issue 3's attribution rule literally to the builder's own record of every op, runtime row and
GPU activity (not to the written file), with plain interval arithmetic, so it shares no code with dpprof:

- DP phase ops: ``Scatter`` and ``GatherBackward`` → ``dp_scatter``, ``Broadcast`` → ``dp_broadcast``,
  ``Gather`` → ``dp_gather``, ``BroadcastBackward``/``ReduceAddCoalesced`` → ``dp_reduce``; dpprof's
  markers ``dpprof::dp_scatter``/``dp_replicate``/``dp_gather`` likewise (``dp_parallel_apply`` only encloses).
- GPU busy instant, first match wins: work launched (runtime row on the launching thread) inside a DP phase
  op → that ``dp_*``; a compute kernel → ``compute``; a communication kernel, or a copy launched inside a
  collective op → ``allreduce``; other copies and memsets → ``memcpy``.
- GPU idle instant, any thread of the rank, first match wins: inside a DataLoader ``__next__`` →
  ``data_loading``; inside the innermost DP phase op → that ``dp_*``; inside a collective (``nccl:*``,
  ``gloo:*``, ``c10d::*``) → ``allreduce``; inside any ``cpu_op``, runtime row or ``DataParallel.forward``
  → ``host``; else ``idle`` (``ProfilerStep#``, ``DistributedDataParallel.forward``, ``Optimizer.*`` only
  enclose).

All figures are microseconds.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from tests.synth.kineto import GpuSpan, Op, RankTrace

Interval = tuple[float, float]
CATEGORIES = ("compute", "dp_scatter", "dp_broadcast", "dp_gather", "dp_reduce",
              "allreduce", "memcpy", "data_loading", "host", "idle")
#: GatherBackward counts as a scatter as a whole (its only work is ``Scatter.apply`` of grad_output), not
#: only the ``Scatter`` nested in it: the analyzer's classification table says so, and so does torch's code.
DP_PHASE_OPS = {"Scatter": "dp_scatter", "GatherBackward": "dp_scatter", "Broadcast": "dp_broadcast",
                "Gather": "dp_gather", "BroadcastBackward": "dp_reduce", "ReduceAddCoalesced": "dp_reduce",
                "dpprof::dp_scatter": "dp_scatter", "dpprof::dp_replicate": "dp_broadcast",
                "dpprof::dp_gather": "dp_gather"}
DP_PHASES = ("dp_scatter", "dp_broadcast", "dp_gather", "dp_reduce")
COLLECTIVE_PREFIXES = ("nccl:", "gloo:", "c10d::")
_BUSY_ORDER = ("dp_scatter", "dp_broadcast", "dp_gather", "dp_reduce", "compute", "allreduce", "memcpy")


def union(intervals: Iterable[Interval]) -> list[Interval]:
    out: list[Interval] = []
    for s, e in sorted(i for i in intervals if i[1] > i[0]):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def length(intervals: Iterable[Interval]) -> float:
    return sum(e - s for s, e in union(intervals))


def intersect(a: Sequence[Interval], b: Sequence[Interval]) -> list[Interval]:
    a, b = union(a), union(b)
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        s, e = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if e > s:
            out.append((s, e))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def clip(intervals: Iterable[Interval], lo: float, hi: float) -> list[Interval]:
    return union((max(s, lo), min(e, hi)) for s, e in intervals)


def _innermost_phase(ops: Iterable[Op], t: float, tid: int | None = None) -> str | None:
    """The DP phase of the innermost (latest-starting) DP phase op covering instant ``t``."""
    best: Op | None = None
    for op in ops:
        if op.name in DP_PHASE_OPS and op.start <= t < op.end and (tid is None or op.tid == tid):
            if best is None or op.start > best.start:
                best = op
    return DP_PHASE_OPS[best.name] if best else None


def busy_category(trace: RankTrace, span: GpuSpan) -> str:
    phase = _innermost_phase(trace.ops, span.launch_ts, span.launcher_tid)
    if phase:
        return phase
    if span.kind == "kernel":
        return "allreduce" if span.comm else "compute"
    in_collective = any(op.tid == span.launcher_tid and op.start <= span.launch_ts < op.end
                        and op.name.startswith(COLLECTIVE_PREFIXES) for op in trace.ops)
    return "allreduce" if in_collective else "memcpy"


def idle_category(trace: RankTrace, t: float) -> str:
    covering = [op for op in trace.ops if op.start <= t < op.end]
    if any(op.name.startswith("enumerate(DataLoader)") and op.name.endswith("__next__") for op in covering):
        return "data_loading"
    phase = _innermost_phase(covering, t)
    if phase:
        return phase
    if any(op.name.startswith(COLLECTIVE_PREFIXES) for op in covering):
        return "allreduce"
    if any(op.cat == "cpu_op" or op.name == "DataParallel.forward" for op in covering):
        return "host"
    if any(s <= t < e for _, s, e in trace.runtime_rows):
        return "host"
    return "idle"


def _step_categories(trace: RankTrace, device: int, lo: float, hi: float,
                     tagged: list[tuple[GpuSpan, str]]) -> dict[str, float]:
    cats = dict.fromkeys(CATEGORIES, 0.0)
    mine = [(s, c) for s, c in tagged if s.device == device and s.end > lo and s.start < hi]
    cuts = {lo, hi}
    for s, _ in mine:
        cuts.update((max(s.start, lo), min(s.end, hi)))
    for op in trace.ops:
        cuts.update(t for t in (op.start, op.end) if lo < t < hi)
    for _, s, e in trace.runtime_rows:
        cuts.update(t for t in (s, e) if lo < t < hi)
    edges = sorted(cuts)
    for a, b in zip(edges, edges[1:], strict=False):
        mid = (a + b) / 2
        busy = {c for s, c in mine if s.start <= mid < s.end}
        cat = next((c for c in _BUSY_ORDER if c in busy), None) or idle_category(trace, mid)
        cats[cat] += b - a
    return cats


def expected_figures(traces: Sequence[RankTrace], steps: dict[int, list[tuple[int, float, float]]],
                     strategy: str, output_device: int | None = None) -> dict[str, Any]:
    """Expected analysis figures: ``steps[(rank, device, step)]`` and ``devices[(rank, device)]``."""
    out: dict[str, Any] = {"strategy": strategy, "output_device": output_device, "steps": {}, "devices": {}}
    for tr in traces:
        tagged = [(s, busy_category(tr, s)) for s in tr.gpu]
        active = sorted({s.device for s in tr.gpu})
        for device in active:
            spans = [s for s in tr.gpu if s.device == device]
            kernels = [s for s in spans if s.kind == "kernel"]
            bytes_by_kind: dict[str, int] = {}
            for s in spans:
                if s.copy_kind:
                    bytes_by_kind[s.copy_kind] = bytes_by_kind.get(s.copy_kind, 0) + s.nbytes
            out["devices"][(tr.rank, device)] = {
                "kernel_time_us": sum(s.end - s.start for s in kernels),
                "comm_kernel_time_us": sum(s.end - s.start for s in kernels if s.comm),
                "busy_time_us": length((s.start, s.end) for s in spans),
                "memcpy_time_us": sum(s.end - s.start for s in spans if s.kind != "kernel"),
                "memcpy_bytes": bytes_by_kind,
            }
        for number, lo, hi in steps[tr.rank]:
            for device in active:
                spans = [s for s in tr.gpu if s.device == device]
                comm = [(s.start, s.end) for s in spans if s.kind == "kernel" and s.comm]
                compute = [(s.start, s.end) for s in spans if s.kind == "kernel" and not s.comm]
                busy = clip(((s.start, s.end) for s in spans), lo, hi)
                row: dict[str, Any] = {
                    "duration_us": hi - lo,
                    "start_us": lo,
                    "categories_us": _step_categories(tr, device, lo, hi, tagged),
                    "busy_us": length(busy),
                    "allreduce_overlapped_us": length(intersect(clip(comm, lo, hi), clip(compute, lo, hi))),
                    "dp_phase_gpu_us": {p: length(clip(((s.start, s.end) for s, c in tagged
                                                        if s.device == device and c == p), lo, hi))
                                        for p in DP_PHASES},
                    "gpu0_only_us": None,
                }
                if strategy == "dp" and device == output_device:
                    others = clip(((s.start, s.end) for s in tr.gpu if s.device != device), lo, hi)
                    row["gpu0_only_us"] = length(busy) - length(intersect(busy, others))
                out["steps"][(tr.rank, device, number)] = row
    return out
