"""The damaged-trace corpus: every case, built from the shrunk real trace of ``base.py``.

Each case is a folder ``tests/data/bad/<case>/`` holding the file(s) ``dpprof analyze`` is pointed at.
Small cases are committed; ``LARGE`` ones (megabytes) are generated into a temporary folder at test
time. ``python tests/data/bad/generate.py [OUT]`` rewrites the committed ones (deterministic bytes;
a test checks the committed files match this script). What each case must give (analyze with a
warning, or one clear error line) is written in ``tests/reliability/test_bad_traces.py`` and
``docs/reliability.md``.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``tests`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from tests.data.bad.base import base_trace, dumps, gz, host_pid, steps_of  # noqa: E402

HERE = Path(__file__).resolve().parent
TRACE = "trace.pt.trace.json.gz"  # name of the one file of single-file cases
DAMAGED = 4  # events damaged per "skip and count" case
Files = dict[str, bytes]
Trace = dict[str, Any]


def _one(trace: Trace | list[Any], name: str = TRACE) -> Files:
    data = dumps(trace)
    return {name: gz(data) if name.endswith(".gz") else data}


def _victims(trace: Trace, cat: str = "kernel", n: int = DAMAGED) -> list[dict[str, Any]]:
    """``n`` events of category ``cat`` spread over the trace (deterministic)."""
    pool = [e for e in trace["traceEvents"] if e.get("cat") == cat]
    return pool[:: max(1, len(pool) // n)][:n]


def _damage(fn: Callable[[dict[str, Any]], None], cat: str = "kernel") -> Callable[[], Files]:
    def build() -> Files:
        t = base_trace()
        for e in _victims(t, cat):
            fn(e)
        return _one(t)
    return build


def _ranked(rank: int, world: int, **extra: Any) -> Trace:
    t = base_trace()
    t["distributedInfo"] = {"backend": "gloo", "rank": rank, "world_size": world}
    t.update(extra)
    return t


def _two_ranks(t0: Trace, t1: Trace, n0: str = "rank0.pt.trace.json.gz",
               n1: str = "rank1.pt.trace.json.gz") -> Files:
    return {**_one(t0, n0), **_one(t1, n1)}


# --- whole-file damage -------------------------------------------------------------------------

def control() -> Files:
    """The undamaged shrunk trace: what every "same as control" expectation compares with."""
    return _one(base_trace())


def empty_file() -> Files:
    return {"trace.pt.trace.json": b""}


def not_json() -> Files:
    return {"trace.pt.trace.json": b"this is a log file, not a trace\nERROR: CUDA out of memory\n"}


def binary_garbage() -> Files:
    # Deterministic pseudo-random bytes (not gzip, not UTF-8).
    return {TRACE: bytes((i * 167 + 13) % 251 for i in range(4096))}


def truncated_gzip() -> Files:
    data = gz(dumps(base_trace()))
    return {TRACE: data[: len(data) // 2]}


def truncated_json() -> Files:
    data = dumps(base_trace())
    return {"trace.pt.trace.json": data[: len(data) * 2 // 3]}


def json_scalar() -> Files:
    return {"trace.pt.trace.json": b"null\n"}


def trace_events_missing() -> Files:
    t = base_trace()
    del t["traceEvents"]
    return _one(t)


def trace_events_empty() -> Files:
    t = base_trace()
    t["traceEvents"] = []
    return _one(t)


def trace_events_not_list() -> Files:
    t = base_trace()
    t["traceEvents"] = {"ph": "X", "name": "oops"}
    return _one(t)


def metadata_only() -> Files:
    """What Kineto writes when the profiler window recorded nothing: only ``ph: M`` events."""
    t = base_trace()
    t["traceEvents"] = [e for e in t["traceEvents"] if e.get("ph") == "M"]
    return _one(t)


def deep_nesting_extreme() -> Files:
    """One event's ``args`` nested 100,000 deep: beyond any JSON parser's recursion limit."""
    head, _, tail = dumps(base_trace()).partition(b'"traceEvents": [')
    depth = 100_000
    bad = b'{"ph": "X", "cat": "cpu_op", "name": "deep", "pid": 1, "tid": 1, "ts": 1.0, "dur": 1.0, "args": ' \
        + b"[" * depth + b"]" * depth + b"}, "
    return {"trace.pt.trace.json": head + b'"traceEvents": [' + bad + tail}


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


def ns_integer() -> Files:
    """Integer nanosecond ``ts``/``dur`` (``displayTimeUnit: ns``) instead of µs with a ns fraction."""
    t = base_trace()
    t["displayTimeUnit"] = "ns"
    for e in t["traceEvents"]:
        for k in ("ts", "dur"):
            if isinstance(e.get(k), (int, float)):
                e[k] = round(e[k] * 1000)
    return _one(t)


# --- several files -----------------------------------------------------------------------------

def duplicate_ranks() -> Files:
    return _two_ranks(_ranked(0, 2), _ranked(0, 2), "a.pt.trace.json.gz", "b.pt.trace.json.gz")


def mixed_world_sizes() -> Files:
    return _two_ranks(_ranked(0, 2), _ranked(1, 4))


def different_runs_mixed() -> Files:
    """Two "ranks" from different runs: other trace_id, other backend, a base time 3 days apart."""
    t1 = _ranked(1, 2, trace_id="0123456789ABCDEF0123456789ABCDEF")
    t1["distributedInfo"]["backend"] = "nccl"
    t1["baseTimeNanoseconds"] += 3 * 86_400 * 10**9
    return _two_ranks(_ranked(0, 2), t1)


def clock_offsets() -> Files:
    """Rank 1's clock origin 5 s later and its relative timestamps 5 s earlier: the same instants."""
    t1 = _ranked(1, 2)
    t1["baseTimeNanoseconds"] += 5 * 10**9
    for e in t1["traceEvents"]:
        if isinstance(e.get("ts"), (int, float)):
            e["ts"] = round(e["ts"] - 5_000_000.0, 3)
    return _two_ranks(_ranked(0, 2), t1)


def no_distinfo_two_files() -> Files:
    """Two traces with neither ``distributedInfo`` nor a rank in the file name: ranks by order."""
    t0, t1 = base_trace(), base_trace()
    del t0["distributedInfo"], t1["distributedInfo"]
    return _two_ranks(t0, t1, "worker_a.pt.trace.json.gz", "worker_b.pt.trace.json.gz")


def one_good_one_empty() -> Files:
    """A run directory's traces where one rank's file is empty (rank died while writing)."""
    return {**_one(_ranked(0, 2), "rank0.pt.trace.json.gz"), "rank1.pt.trace.json.gz": b""}


CASES: dict[str, Callable[[], Files]] = {f.__name__: f for f in (
    control, empty_file, not_json, binary_garbage, truncated_gzip, truncated_json, json_scalar, trace_events_missing,
    trace_events_empty, trace_events_not_list, metadata_only, deep_nesting_extreme,
    top_level_list, gzip_named_json, plain_named_gz, utf8_bom, numbers_as_strings, string_pids, args_null,
    overlapping_x_same_thread, unknown_categories, events_not_objects, non_utf8_bytes, deep_nesting_moderate,
    long_name, missing_ts, missing_dur, missing_ph, missing_name, negative_dur, nan_dur, dangling_correlation,
    no_profiler_step, zero_duration_step, step_without_gpu_work, gpu_work_after_last_step, cpu_only, amd_rocm,
    schema_2021, ns_integer, duplicate_ranks, mixed_world_sizes, different_runs_mixed, clock_offsets,
    no_distinfo_two_files, one_good_one_empty,
)}
#: Generated at test time, never committed (uncompressed: 130 KB to 4 MB each).
LARGE = frozenset({"deep_nesting_extreme", "long_name", "truncated_json", "top_level_list", "plain_named_gz",
                   "utf8_bom"})


def write_case(name: str, out: Path) -> Path:
    """Write case ``name`` into ``out/<name>/`` and return that folder."""
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    for fname, data in CASES[name]().items():
        (folder / fname).write_bytes(data)
    return folder


def case_dir(name: str, tmp: Path) -> Path:
    """The folder of case ``name``: the committed one, or a fresh one under ``tmp`` for large cases."""
    return write_case(name, tmp) if name in LARGE else HERE / name


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else HERE
    for name in CASES:
        if name not in LARGE or out != HERE:
            write_case(name, out)
    sizes = {p.parent.name: p.stat().st_size for p in out.glob("*/*") if p.is_file()}
    print(json.dumps({"cases": len(CASES), "written_to": str(out), "bytes": sum(sizes.values())}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
