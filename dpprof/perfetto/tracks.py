"""dpprof's own tracks in the merged trace: process names, the attribution per step and GPU, NVML counters.

Attribution: one thread ``dpprof attribution`` (sorted first) in each GPU's process, or in the host process of
a rank without GPU activity (its rows are ``device: -1``). Per step row of the analysis it holds a slice
``step N`` over the step with the row's totals in ``args``, and inside it one slice per contiguous stretch of
one category (``dpprof.analyze.segments``: neighbouring segments of the same category, rule and waited-for
participant are one stretch), named by the category, with ``us``, the rule in words (``rule``, key
``rule_id``) and, for ``peer_wait``, ``waited_for``. Times are integer ns on the merged clock, children
clamped into their step so that they nest; per step and category the slices sum to the row's figure.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from dpprof.analyze.model import StepBreakdown
from dpprof.analyze.segments import RULES, Segments
from dpprof.perfetto import layout
from dpprof.perfetto.rewrite import thread_rows, to_ns
from dpprof.trace.nvml_merge import TraceSpan, counter_lines
from dpprof.trace.nvml_samples import NvmlData

ATTRIBUTION_THREAD = "dpprof attribution"
CATEGORY = "dpprof"
#: Attribution events encoded and written at a time (whole steps).
CHUNK_EVENTS = 4096
#: Segments closer than this (µs) are one stretch when their category, rule and waited-for party agree.
_TOUCH_US = 1e-6


def process_rows(index: int, rank: int, gpus: Sequence[int]) -> list[dict[str, Any]]:
    """``process_name`` (``rank R · host``, ``rank R · GPU g``) and ``process_sort_index`` (= pid) rows; Perfetto's
    JSON importer reads only the names (``JsonTraceParserImpl::ParseJsonPacket``), chrome://tracing both."""
    procs = [(layout.host_pid(index), f"rank {rank} · host")]
    procs += [(layout.gpu_pid(index, g), f"rank {rank} · GPU {g}") for g in sorted(set(gpus))]
    rows: list[dict[str, Any]] = []
    for pid, name in procs:
        rows.append({"name": "process_name", "ph": "M", "ts": 0, "pid": pid, "tid": 0, "args": {"name": name}})
        rows.append({"name": "process_sort_index", "ph": "M", "ts": 0, "pid": pid, "tid": 0,
                     "args": {"sort_index": pid}})
    return rows


def ns_array(us: np.ndarray) -> np.ndarray:
    """``to_ns`` over an array (same rounding: the nearest ns of the fractional part, half to even)."""
    q = np.floor(us)
    return q.astype(np.int64) * 1000 + np.rint((us - q) * 1000).astype(np.int64)


def stretches(seg: Segments) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(first segment, start µs, end µs) of each stretch: neighbouring segments (segments are sorted by step,
    device and start) of one step and device with the same category, rule and waited-for party, joined."""
    n = len(seg)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0), np.zeros(0)
    same = np.zeros(n, dtype=bool)
    if n > 1:
        cat, who, rule = np.array(seg.category), np.array(seg.who), np.array(seg.rule)
        same[1:] = ((seg.step[1:] == seg.step[:-1]) & (seg.device[1:] == seg.device[:-1]) & (cat[1:] == cat[:-1])
                    & (who[1:] == who[:-1]) & (rule[1:] == rule[:-1]) & (seg.start[1:] - seg.end[:-1] <= _TOUCH_US))
    first = np.flatnonzero(~same)
    return first, seg.start[first], np.maximum.reduceat(seg.end, first)


def _step_args(row: StepBreakdown) -> dict[str, Any]:
    args: dict[str, Any] = {"step": row.step, "device": row.device, "duration_us": round(row.duration_us, 3),
                            "categories_us": {c: round(v, 3) for c, v in row.categories_us.items() if v > 0}}
    for name in ("peer_wait_on_us", "comm_by_kind_us", "dp_host_us", "dp_phase_gpu_us"):
        value = getattr(row, name)
        if value:
            args[name] = {k: round(v, 3) for k, v in value.items()}
    args["busy_us"] = round(row.busy_us, 3)
    args["comm_overlapped_us"] = round(row.comm_overlapped_us, 3)
    return args


def attribution_rows(index: int, rows: Sequence[StepBreakdown], seg: Segments | None,
                     shift_ns: int) -> Iterator[list[dict[str, Any]]]:
    """The attribution track events of one rank's step ``rows`` (see the module docstring), metadata last, in
    lists of whole steps of about ``CHUNK_EVENTS`` events: a rank has tens of thousands of them, and holding them all
    as dicts (then as JSON) at once was the merge's peak of memory."""
    first, a_ns, b_ns = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    groups: dict[tuple[int, int], tuple[int, int]] = {}  # (step, device) -> its stretches [lo, hi)
    if seg is not None and len(seg):
        first, a, b = stretches(seg)
        a_ns, b_ns = ns_array(a) + shift_ns, ns_array(b) + shift_ns
        key = np.stack([seg.step[first], seg.device[first].astype(np.int64)], axis=1)
        cuts = np.flatnonzero(np.any(key[1:] != key[:-1], axis=1)) + 1
        for lo, hi in zip([0, *cuts.tolist()], [*cuts.tolist(), len(first)], strict=True):
            groups[(int(key[lo, 0]), int(key[lo, 1]))] = (lo, hi)
    events: list[dict[str, Any]] = []
    threads: dict[int, int] = {}
    for row in sorted(rows, key=lambda r: (r.step, r.device)):
        if len(events) >= CHUNK_EVENTS:
            yield events
            events = []
        pid = layout.host_pid(index) if row.device < 0 else layout.gpu_pid(index, row.device)
        tid = threads.setdefault(pid, layout.thread_tid(pid, 0))
        s0 = to_ns(row.start_us) + shift_ns
        s1 = max(s0, to_ns(row.start_us + row.duration_us) + shift_ns)
        events.append({"ph": "X", "cat": CATEGORY, "name": f"step {row.step}", "pid": pid, "tid": tid,
                       "ts": s0 / 1000, "dur": (s1 - s0) / 1000, "args": _step_args(row)})
        lo, hi = groups.get((row.step, row.device), (0, 0))
        starts = np.clip(a_ns[lo:hi], s0, s1)
        ends = np.clip(b_ns[lo:hi], starts, s1)
        for i, t0, t1 in zip(first[lo:hi].tolist(), starts.tolist(), ends.tolist(), strict=True):
            if t1 <= t0:
                continue
            assert seg is not None
            args: dict[str, Any] = {"us": (t1 - t0) / 1000, "rule": RULES.get(seg.rule[i], seg.rule[i]),
                                    "rule_id": seg.rule[i]}
            if seg.who[i]:
                args["waited_for"] = seg.who[i]
            events.append({"ph": "X", "cat": CATEGORY, "name": seg.category[i], "pid": pid, "tid": tid,
                           "ts": t0 / 1000, "dur": (t1 - t0) / 1000, "args": args})
    for pid, tid in threads.items():
        events += thread_rows(pid, tid, ATTRIBUTION_THREAD, 0)
    if events:
        yield events


def nvml_lines(nvml: NvmlData, node: str | None, index: int, devices: Sequence[int], base_ns: int,
               start_ns: int, end_ns: int) -> tuple[list[bytes], int, list[str]]:
    """Counter events of ``devices``' samples on ``node`` inside [start_ns, end_ns] (merged clock, ns from
    ``base_ns``, which is the reference base minus the rank's offset); (lines, samples used, notes)."""
    lines: list[bytes] = []
    used = 0
    notes: list[str] = []
    span = TraceSpan(base_ns=base_ns, start_ns=start_ns, end_ns=end_ns, devices=tuple(devices), rank=None,
                     events=0)
    for dev in devices:
        gpu = nvml.gpu(node, dev) if node is not None else None
        if gpu is None:
            notes.append(f"no NVML samples for {node or '?'}:{dev}")
            continue
        more, n_in, _ = counter_lines(gpu, layout.gpu_pid(index, dev), span)
        lines += more
        used += n_in
    return lines, used, notes
