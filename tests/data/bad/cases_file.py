"""Damaged-file cases (the whole file is unreadable) and cases made of several files."""

from __future__ import annotations

from tests.data.bad.base import TRACE, Files, _one, _ranked, _two_ranks, base_trace, dumps, gz

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
