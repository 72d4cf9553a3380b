"""Cases of one readable file: tolerated variants of a good trace, and damaged events among good ones."""

from __future__ import annotations

import math
from typing import Any

from tests.data.bad.base import (
    TRACE,
    Files,
    _damage,
    _one,
    _victims,
    base_trace,
    dumps,
    gz,
    host_pid,
    steps_of,
)

# --- tolerated variants ------------------------------------------------------------------------

def top_level_list() -> Files:
    """Chrome's "JSON Array Format": a bare list of events, no metadata (valid Chrome trace)."""
    return _one(base_trace()["traceEvents"], "rank0.pt.trace.json")


def gzip_named_json() -> Files:
    return {"trace.pt.trace.json": gz(dumps(base_trace()))}


def plain_named_gz() -> Files:
    return {TRACE: dumps(base_trace())}


def utf8_bom() -> Files:
    return {"trace.pt.trace.json": b"\xef\xbb\xbf" + dumps(base_trace())}


def numbers_as_strings() -> Files:
    """ts/dur/pid/tid and the correlation of every kernel written as strings (some exporters do)."""
    t = base_trace()
    for e in t["traceEvents"]:
        if e.get("cat") in ("kernel", "cuda_runtime", "user_annotation"):
            for k in ("ts", "dur", "pid", "tid"):
                if k in e:
                    e[k] = str(e[k])
            if "correlation" in (e.get("args") or {}):
                e["args"]["correlation"] = str(e["args"]["correlation"])
    return _one(t)


def string_pids() -> Files:
    """pid/tid as strings everywhere (``"441"``, ``"stream 7"`` style names seen in older traces)."""
    t = base_trace()
    for e in t["traceEvents"]:
        if isinstance(e.get("pid"), int):
            e["pid"] = str(e["pid"])
        if isinstance(e.get("tid"), int):
            e["tid"] = f"stream {e['tid']}" if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset") \
                else str(e["tid"])
    return _one(t)


def args_null() -> Files:
    t = base_trace()
    for e in _victims(t, "cpu_op") + _victims(t, "kernel"):
        e["args"] = None
    return _one(t)


def overlapping_x_same_thread() -> Files:
    """Two host ops on the main thread that overlap without nesting, and two overlapping kernels."""
    t = base_trace()
    pid = host_pid(t)
    step = steps_of(t)[0]
    tid = step["tid"]
    s = step["ts"]
    t["traceEvents"] += [
        {"ph": "X", "cat": "cpu_op", "name": "aten::overlap_a", "pid": pid, "tid": tid, "ts": s + 50.0, "dur": 100.0},
        {"ph": "X", "cat": "cpu_op", "name": "aten::overlap_b", "pid": pid, "tid": tid, "ts": s + 100.0, "dur": 100.0},
    ]
    k = _victims(t, "kernel", 1)[0]
    t["traceEvents"].append(dict(k, ts=k["ts"] + k["dur"] / 2, name=k["name"] + "_overlap"))
    return _one(t)


def unknown_categories() -> Files:
    t = base_trace()
    pid = host_pid(t)
    s = steps_of(t)[0]["ts"]
    t["traceEvents"] += [
        {"ph": "X", "cat": cat, "name": f"mystery_{i}", "pid": pid, "tid": 1, "ts": s + 10.0 * i, "dur": 5.0}
        for i, cat in enumerate(("gpu_hw_counter", "", "Some.Vendor/Thing", "xla_op"))
    ]
    return _one(t)


def events_not_objects() -> Files:
    t = base_trace()
    t["traceEvents"][5:5] = [42, "ProfilerStep#9", None, [1, 2, 3]]
    return _one(t)


def non_utf8_bytes() -> Files:
    """A latin-1 byte (0xE9) inside one kernel name: invalid UTF-8 in an otherwise good file."""
    t = base_trace()
    k = _victims(t, "kernel", 1)[0]
    k["name"] = "caf\x00marker_" + k["name"]
    data = dumps(t).replace(b"caf\\u0000marker_", b"caf\xe9_")
    return {TRACE: gz(data)}


def deep_nesting_moderate() -> Files:
    """An event whose args nest 500 deep (parsers handle ~1000): the event is read or skipped."""
    t = base_trace()
    k = _victims(t, "cpu_op", 1)[0]
    nested: Any = []
    for _ in range(500):
        nested = [nested]
    k["args"]["deep"] = nested
    return _one(t)


def long_name() -> Files:
    """A 4 MiB kernel name (an exporter bug): analyzed, the name shortened wherever it is shown."""
    t = base_trace()
    k = _victims(t, "kernel", 1)[0]
    k["name"] = "void very_long_template_kernel<" + "float, " * (4 * 1024 * 1024 // 7) + ">()"
    return _one(t, "trace.pt.trace.json")


def missing_ts() -> Files:
    return _damage(lambda e: e.pop("ts"))()


def missing_dur() -> Files:
    return _damage(lambda e: e.pop("dur"))()


def missing_ph() -> Files:
    return _damage(lambda e: e.pop("ph"))()


def missing_name() -> Files:
    return _damage(lambda e: e.pop("name"))()


def negative_dur() -> Files:
    return _damage(lambda e: e.__setitem__("dur", -abs(e["dur"]) - 1.0))()


def nan_dur() -> Files:
    """Non-finite durations, written as Python's json does (``NaN``, ``Infinity``: not strict JSON)."""
    vals = iter([math.nan, math.inf, math.nan, -math.inf])
    return _damage(lambda e: e.__setitem__("dur", next(vals)))()


def dangling_correlation() -> Files:
    """Kernels whose launching runtime call is not in the trace (its correlation id points nowhere)."""
    return _damage(lambda e: e["args"].__setitem__("correlation", 10_000_000 + e["args"]["correlation"]))()


def no_profiler_step() -> Files:
    t = base_trace()
    t["traceEvents"] = [e for e in t["traceEvents"] if "ProfilerStep#" not in str(e.get("name", ""))]
    return _one(t)


def zero_duration_step() -> Files:
    t = base_trace()
    steps_of(t)[1]["dur"] = 0.0
    return _one(t)


def step_without_gpu_work() -> Files:
    """A third ProfilerStep with host ops only (e.g. a step that only logged)."""
    t = base_trace()
    last = steps_of(t)[-1]
    s = last["ts"] + last["dur"] + 5.0
    pid, tid = last["pid"], last["tid"]
    t["traceEvents"] += [
        dict(last, name="ProfilerStep#5", ts=s, dur=300.0, args={"External id": 9001}),
        {"ph": "X", "cat": "cpu_op", "name": "aten::item", "pid": pid, "tid": tid, "ts": s + 20.0, "dur": 200.0,
         "args": {"External id": 9002}},
    ]
    return _one(t)


def gpu_work_after_last_step() -> Files:
    t = base_trace()
    last = steps_of(t)[-1]
    end = last["ts"] + last["dur"]
    for i, k in enumerate(_victims(t, "kernel", 3)):
        t["traceEvents"].append(dict(k, ts=end + 50.0 + 20.0 * i, args=dict(k["args"], correlation=k["args"]["correlation"])))
    return _one(t)


def cpu_only() -> Files:
    """A run with no GPU: host ops only, no runtime calls, no GPU processes."""
    t = base_trace()
    t["traceEvents"] = [e for e in t["traceEvents"] if e.get("cat") in ("cpu_op", "user_annotation", "Trace")
                        or (e.get("ph") in ("M", "i") and not str((e.get("args") or {}).get("labels", "")).startswith("GPU"))]
    for k in ("cuda_driver_version", "cuda_runtime_version", "cupti_version", "deviceProperties"):
        t.pop(k, None)
    t["distributedInfo"] = {"backend": "gloo", "rank": 0, "world_size": 1}
    return _one(t)


def amd_rocm() -> Files:
    """ROCm/roctracer flavour: ``hip*`` runtime calls, AMD device names, no CUDA versions."""
    t = base_trace()
    for e in t["traceEvents"]:
        if e.get("cat") in ("cuda_runtime", "cuda_driver"):
            e["name"] = "hip" + e["name"].removeprefix("cuda").removeprefix("cu")
    for k in ("cuda_driver_version", "cuda_runtime_version", "cupti_version"):
        t.pop(k, None)
    t["roctracer_version"] = 4
    t["deviceProperties"] = [dict(p, name="AMD Instinct MI300X") for p in t.get("deviceProperties", [])]
    t["distributedInfo"] = {"backend": "nccl", "rank": 0, "world_size": 1}  # torch names RCCL "nccl"
    return _one(t)


SCHEMA_2021 = {"cpu_op": "Operator", "user_annotation": "Operator", "kernel": "Kernel", "gpu_memcpy": "Memcpy",
               "gpu_memset": "Memset", "cuda_runtime": "Runtime", "cuda_driver": "Runtime"}


def schema_2021() -> Files:
    """torch 1.8/1.9-era trace: capitalised categories, absolute µs timestamps, no baseTimeNanoseconds."""
    t = base_trace()
    base_us = t.pop("baseTimeNanoseconds") / 1000
    for k in ("distributedInfo", "trace_id", "cupti_version"):
        t.pop(k, None)
    t["schemaVersion"] = 1
    events = []
    for e in t["traceEvents"]:
        if e.get("cat") == "gpu_user_annotation":
            continue  # did not exist then
        if e.get("cat") in SCHEMA_2021:
            e["cat"] = SCHEMA_2021[e["cat"]]
        if "ts" in e:
            e["ts"] = round(e["ts"] + base_us, 3)
        events.append(e)
    t["traceEvents"] = events
    return _one(t)


def display_unit_ns() -> Files:
    """``displayTimeUnit: ns`` over µs timestamps with a nanosecond fraction, as libkineto writes it
    (``ChromeTraceLogger::handleTraceStart``): the unit is a display hint, the times stay µs."""
    t = base_trace()
    t["displayTimeUnit"] = "ns"
    return _one(t)


def epoch_ns() -> Files:
    """Absolute epoch-nanosecond ``ts`` and ns ``dur`` (above 1e17: the only ns traces) and no base."""
    t = base_trace()
    base_ns = t.pop("baseTimeNanoseconds")
    for e in t["traceEvents"]:
        if isinstance(e.get("ts"), (int, float)):
            e["ts"] = base_ns + round(e["ts"] * 1000)
        if isinstance(e.get("dur"), (int, float)):
            e["dur"] = round(e["dur"] * 1000)
    return _one(t)
