"""Property tests: random VALID Kineto traces never crash the analyzer, and its figures add up.

A trace is drawn as a spec (devices, steps, host ops, the GPU work each op launches), written the way
torch writes it (``ProfilerStep#N`` user annotation, ``cpu_op``s on the main thread, ``cudaLaunchKernel``
/ ``cudaMemcpyAsync`` runtime rows with correlation ids, ``ac2g`` flows, kernels / memcpys / memsets /
NCCL kernels on 1-4 GPUs, two streams per GPU so activities overlap), then analyzed in-process. The
expected figures are computed here independently with plain loops:

* every step's categories sum to its duration (1e-6 relative);
* GPU-busy categories (``compute``, ``dp_*``, ``comm``, ``peer_wait``, ``memcpy``) sum to the step's busy time,
  which is the union of that device's activities clipped to the step (with world size 1 nothing is a
  collective; without ``distributedInfo`` the NCCL kernels of several GPUs are matched as DP's in-process
  collectives and their waiting moves from ``comm`` to ``peer_wait``, both busy time; the part of
  ``peer_wait`` spent idle with work queued behind another GPU, ``peer_wait_idle_us``, is not busy);
* per device, ``kernel_time_us`` is the sum of kernel durations and ``busy_time_us`` the union length.
"""

from __future__ import annotations

import gzip
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpprof.analyze.model import CATEGORIES
from dpprof.vocabulary import DP_PHASES

PID = 4242
MAIN_TID = 4242
BASE_NS = 1_790_857_026_000_000_000
T0_US = 4_939_957_428_000.0  # torch-like relative timestamps, µs
GPU_BUSY = ("compute", "comm", "peer_wait", "memcpy", *DP_PHASES)
KINDS = {  # kind -> (category, name, runtime call)
    "kernel": ("kernel", "void at::native::vectorized_elementwise_kernel<4>(int, float*)", "cudaLaunchKernel"),
    "gemm": ("kernel", "sm90_xmma_gemm_f32f32_tf32f32_f32_nn_n_tilesize128x128x32", "cudaLaunchKernelExC"),
    "nccl": ("kernel", "ncclDevKernel_AllReduce_Sum_f32_RING_LL(ncclDevComm*, unsigned long, ncclWork*)",
             "cudaLaunchKernelExC"),
    "memcpy": ("gpu_memcpy", "Memcpy HtoD (Pinned -> Device)", "cudaMemcpyAsync"),
    "memset": ("gpu_memset", "Memset (Device)", "cudaMemsetAsync"),
}


@dataclass(frozen=True)
class Launch:
    kind: str
    device: int
    stream: int
    delay_ns: int  # from the runtime call's start to the activity's start (queueing)
    dur_ns: int


@dataclass(frozen=True)
class Op:
    gap_ns: int  # idle host time before the op
    dur_ns: int
    launches: tuple[Launch, ...]


def _launch(n_dev: int) -> st.SearchStrategy[Launch]:
    return st.builds(Launch, kind=st.sampled_from(sorted(KINDS)), device=st.integers(0, n_dev - 1),
                     stream=st.sampled_from([7, 13]), delay_ns=st.integers(1_000, 400_000),
                     dur_ns=st.integers(1, 300_000))


@st.composite
def specs(draw: st.DrawFn) -> tuple[int, list[tuple[bool, list[Op]]], bool]:
    """(devices, steps, has distributedInfo); a step is (has a DataLoader ``__next__`` first, its host ops)."""
    n_dev = draw(st.integers(1, 4))
    op = st.builds(Op, gap_ns=st.integers(0, 50_000), dur_ns=st.integers(1_000, 200_000),
                   launches=st.lists(_launch(n_dev), max_size=4).map(tuple))
    steps = draw(st.lists(st.tuples(st.booleans(), st.lists(op, max_size=6)), min_size=1, max_size=3))
    return n_dev, steps, draw(st.booleans())


def _us(ns: int) -> float:
    return round(T0_US + ns / 1000, 3)


def build_trace(n_dev: int, steps: list[tuple[bool, list[Op]]], dist: bool = True
                ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The Kineto JSON object and the list of GPU activities placed (for the independent figures)."""
    ev: list[dict[str, Any]] = [
        {"name": "process_name", "ph": "M", "ts": _us(0), "pid": PID, "tid": 0, "args": {"name": "python3"}},
        {"name": "thread_name", "ph": "M", "ts": _us(0), "pid": PID, "tid": MAIN_TID, "args": {"name": "python3"}},
    ]
    for d in range(8):  # Kineto lists more GPU processes than there are GPUs
        ev.append({"name": "process_labels", "ph": "M", "ts": _us(0), "pid": d, "tid": 0, "args": {"labels": f"GPU {d}"}})
    gpu: list[dict[str, Any]] = []
    corr = 100
    ext = 1
    t = 10_000  # ns from T0
    stream_free: dict[tuple[int, int], int] = {}
    for number, (loader, ops) in enumerate(steps, start=1):
        start = t
        t += 2_000
        if loader:
            ev.append({"ph": "X", "cat": "user_annotation", "name": "enumerate(DataLoader)#_SingleProcessDataLoaderIter.__next__",
                       "pid": PID, "tid": MAIN_TID, "ts": _us(t), "dur": 30.0, "args": {"External id": ext}})
            ext += 1
            t += 31_000
        for op in ops:
            t += op.gap_ns
            rt_t = t + 500
            for la in op.launches:
                cat, name, call = KINDS[la.kind]
                ev.append({"ph": "X", "cat": "cuda_runtime", "name": call, "pid": PID, "tid": MAIN_TID,
                           "ts": _us(rt_t), "dur": 2.0, "args": {"cbid": 211, "correlation": corr}})
                g0 = max(rt_t + la.delay_ns, stream_free.get((la.device, la.stream), 0))
                stream_free[(la.device, la.stream)] = g0 + la.dur_ns
                act = {"ph": "X", "cat": cat, "name": name, "pid": la.device, "tid": la.stream, "ts": _us(g0),
                       "dur": la.dur_ns / 1000, "args": {"External id": ext, "device": la.device, "context": 1,
                                                         "stream": la.stream, "correlation": corr}}
                if cat != "kernel":
                    act["args"]["bytes"] = 4096
                gpu.append(act)
                ev.append({"ph": "s", "id": corr, "pid": PID, "tid": MAIN_TID, "ts": _us(rt_t), "cat": "ac2g", "name": "ac2g"})
                ev.append({"ph": "f", "id": corr, "pid": la.device, "tid": la.stream, "ts": _us(g0), "cat": "ac2g",
                           "name": "ac2g", "bp": "e"})
                corr += 1
                rt_t += 2_500
            dur = max(op.dur_ns, rt_t - t)
            ev.append({"ph": "X", "cat": "cpu_op", "name": "aten::add_", "pid": PID, "tid": MAIN_TID, "ts": _us(t),
                       "dur": dur / 1000, "args": {"External id": ext}})
            ext += 1
            t += dur
        t += 3_000
        ev.append({"ph": "X", "cat": "user_annotation", "name": f"ProfilerStep#{number}", "pid": PID, "tid": MAIN_TID,
                   "ts": _us(start), "dur": (t - start) / 1000, "args": {"External id": ext}})
        ext += 1
        t += 5_000
    trace = {"schemaVersion": 1, "distributedInfo": {"backend": "nccl", "rank": 0, "world_size": 1},
             "displayTimeUnit": "ms", "baseTimeNanoseconds": BASE_NS, "traceEvents": ev + gpu}
    if not dist:
        del trace["distributedInfo"]
    return trace, gpu


def union_us(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end) intervals, by sorting (deliberately simple)."""
    total, cur_s, cur_e = 0.0, None, None
    for s, e in sorted(intervals):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        total += cur_e - cur_s
    return total


def _analyze(trace: dict[str, Any]) -> Any:
    from dpprof.analyze import analyze

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rank0.pt.trace.json.gz"
        path.write_bytes(gzip.compress(json.dumps(trace, separators=(", ", ": ")).encode(), mtime=0))
        return analyze([path])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs())
def test_random_valid_traces(spec: tuple[int, list[tuple[bool, list[Op]]], bool]) -> None:
    n_dev, steps, dist = spec
    trace, gpu = build_trace(n_dev, steps, dist)
    a = _analyze(trace)  # never raises
    step_spans = {int(e["name"].split("#")[1]): (e["ts"], e["ts"] + e["dur"]) for e in trace["traceEvents"]
                  if e.get("cat") == "user_annotation" and e["name"].startswith("ProfilerStep#")}
    used = sorted({g["pid"] for g in gpu})
    rows = {(s.device, s.step): s for s in a.steps}
    expected_devices = used or [-1]
    assert {d for d, _ in rows} == set(expected_devices), (used, sorted(rows))
    for dev in expected_devices:
        assert {n for d, n in rows if d == dev} == set(step_spans)
    for (dev, number), s in rows.items():
        assert set(s.categories_us) == set(CATEGORIES)
        assert all(v >= -1e-9 for v in s.categories_us.values()), s
        assert abs(sum(s.categories_us.values()) - s.duration_us) <= 1e-6 * max(s.duration_us, 1.0), s
        lo, hi = step_spans[number]
        assert s.duration_us == _approx(hi - lo)
        if dev < 0:  # a rank without GPU activity: attributed on its host timeline, no GPU busy time
            continue
        clipped = [(max(g["ts"], lo), min(g["ts"] + g["dur"], hi)) for g in gpu
                   if g["pid"] == dev and g["ts"] < hi and g["ts"] + g["dur"] > lo]
        busy = union_us(clipped)
        assert s.busy_us == _approx(busy), (dev, number)
        # peer_wait is busy inside collective kernels; its idle part (queued work behind another GPU) is not.
        in_kernels = sum(s.categories_us[c] for c in GPU_BUSY) - s.peer_wait_idle_us
        assert in_kernels == _approx(busy), (dev, number, s.categories_us, s.peer_wait_idle_us)
    for d in a.devices:
        mine = [g for g in gpu if g["pid"] == d.device]
        assert d.kernel_time_us == _approx(sum(g["dur"] for g in mine if g["cat"] == "kernel"))
        assert d.comm_kernel_time_us == _approx(sum(g["dur"] for g in mine if g["name"].startswith("nccl")))
        assert d.busy_time_us == _approx(union_us([(g["ts"], g["ts"] + g["dur"]) for g in mine]))


def _approx(x: float) -> Any:
    import pytest

    # Timestamps carry 3 decimals (ns); float64 at ~5e12 µs keeps ~1e-3 µs: allow a few ns per interval.
    return pytest.approx(x, rel=1e-6, abs=0.02)


# --- interval arithmetic (dpprof/trace/intervals.py), checked against brute force on integer points ---

_ivs = st.lists(st.tuples(st.integers(0, 200), st.integers(0, 60)), max_size=25)


def _arrays(pairs: list[tuple[int, int]]) -> tuple[Any, Any]:
    import numpy as np

    return np.array([float(s) for s, _ in pairs]), np.array([float(s + d) for s, d in pairs])


def _inside(pairs: list[tuple[int, int]], x: float) -> bool:
    return any(s <= x < s + d for s, d in pairs)


GRID = [i + 0.5 for i in range(-2, 262)]  # midpoints: every unit cell of the integer line


@settings(max_examples=150, deadline=None)
@given(_ivs, st.integers(0, 260), st.integers(0, 260))
def test_union_and_clip(pairs: list[tuple[int, int]], lo: int, hi: int) -> None:
    import numpy as np

    from dpprof.trace import intervals as iv

    u = iv.union(*_arrays(pairs))
    s, e = u
    assert np.all(e > s) and np.all(s[1:] > e[:-1]), "union must be sorted, disjoint, non-empty pieces"
    total = sum(d for _, d in pairs)
    assert iv.length(u) <= total + 1e-9
    assert iv.length(u) >= max((d for _, d in pairs), default=0)
    assert iv.length(u) == sum(_inside(pairs, x) for x in GRID)  # integer ends: cells are all in or out
    assert np.array_equal(iv.union(s, e)[0], s) and np.array_equal(iv.union(s, e)[1], e)  # idempotent
    pts = np.array(GRID)
    assert iv.covered(pts, u).tolist() == [_inside(pairs, x) for x in GRID]
    lo, hi = min(lo, hi), max(lo, hi)
    c = iv.clip(u, float(lo), float(hi))
    assert iv.length(c) <= min(iv.length(u), hi - lo) + 1e-9
    assert np.all(c[0] >= lo) and np.all(c[1] <= hi)
    assert iv.length(c) == sum(_inside(pairs, x) for x in GRID if lo <= x < hi)


@settings(max_examples=100, deadline=None)
@given(_ivs, _ivs)
def test_intersection_length(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> None:
    from dpprof.trace import intervals as iv

    ua, ub = iv.union(*_arrays(a)), iv.union(*_arrays(b))
    got = iv.intersection_length(ua, ub)
    assert got == iv.intersection_length(ub, ua)
    assert got <= min(iv.length(ua), iv.length(ub)) + 1e-9
    assert got == sum(_inside(a, x) and _inside(b, x) for x in GRID)


@settings(max_examples=100, deadline=None)
@given(_ivs, _ivs)
def test_subtract(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> None:
    import numpy as np

    from dpprof.trace import intervals as iv

    ua, ub = iv.union(*_arrays(a)), iv.union(*_arrays(b))
    s, e = iv.subtract(ua, ub)
    assert np.all(e > s) and np.all(s[1:] >= e[:-1]), "pieces must be sorted and disjoint"
    assert iv.covered(np.array(GRID), (s, e)).tolist() == [_inside(a, x) and not _inside(b, x) for x in GRID]


@settings(max_examples=100, deadline=None)
@given(_ivs)
def test_nesting_labels_follow_documented_rule(pairs: list[tuple[int, int]]) -> None:
    """Each instant takes the label of the interval painted last among those covering it, painting in
    order of (start, longest first): the innermost one for properly nested intervals."""
    import numpy as np

    from dpprof.trace import intervals as iv

    starts, ends = _arrays(pairs)
    labels = np.arange(len(pairs), dtype=np.int16)
    nest = iv.Nesting(starts, ends, labels)
    got = nest.label_at(np.array(GRID)).tolist()
    order = sorted((i for i, (_, d) in enumerate(pairs) if d > 0), key=lambda i: (pairs[i][0], -pairs[i][1]))
    want = []
    for x in GRID:
        hits = [i for i in order if pairs[i][0] <= x < pairs[i][0] + pairs[i][1]]
        want.append(hits[-1] if hits else -1)
    assert got == want
