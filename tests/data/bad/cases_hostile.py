"""Hostile and careless input: terminal escapes, absurd numbers, bombs, and run directories whose manifest
and sidecar files have fields of the wrong type (issue 12). Inputs that are not files at all (FIFOs,
devices, links out of a run) cannot be committed: tests/reliability/test_hostile_io.py makes them."""

from __future__ import annotations

import copy
import json
import zlib
from typing import Any

from tests.data.bad.base import (
    DAMAGED,
    TRACE,
    Files,
    Trace,
    _one,
    _ranked,
    _two_ranks,
    _victims,
    base_trace,
    dumps,
    gz,
    steps_of,
)

ESCAPES = "\x1b]0;pwned\x07\x1b[2J\x1b[Hall good\r\n\u202e"  # retitle, clear, forge a line, reorder


def _copies(t: Trace, change: dict[str, Any], cat: str = "kernel", n: int = DAMAGED) -> None:
    """Add ``n`` copies of events of ``cat`` with ``change`` applied (``args`` entries merged, None removes
    one): the real events stay untouched, so the analysis equals the control's once the copies are skipped."""
    for e in _victims(t, cat, n):
        c = copy.deepcopy(e)
        for k, v in change.items():
            if k == "args":
                c["args"] = {a: b for a, b in {**c.get("args", {}), **v}.items() if b is not None}
            else:
                c[k] = v
        t["traceEvents"].append(c)


# --- strings for the terminal ---------------------------------------------------------------------

def terminal_escapes() -> Files:
    """Control sequences in every string dpprof prints from a trace: backend, process and thread names."""
    t = base_trace()
    t["distributedInfo"]["backend"] = "nccl" + ESCAPES
    for e in t["traceEvents"]:
        if e.get("ph") == "M" and e.get("name") in ("process_name", "thread_name"):
            e["args"]["name"] = str(e["args"].get("name")) + ESCAPES
    return _one(t)


def rich_markup() -> Files:
    """Rich console markup in a backend name: text, never a style or a markup error."""
    t = base_trace()
    t["distributedInfo"]["backend"] = "[/red][bold]nccl[/][link=file:///etc/passwd]x"
    return _one(t)


# --- absurd numbers -------------------------------------------------------------------------------

def ts_outliers() -> Files:
    """Copies of 4 kernels at ts 1e300 and 4 CPU ops lasting 1e300 µs: skipped and counted, the trace is
    neither stretched nor rescaled (the median timestamp decides the unit)."""
    t = base_trace()
    _copies(t, {"ts": 1e300})
    _copies(t, {"dur": 1e300}, cat="cpu_op")
    return _one(t)


def device_ids_unknown() -> Files:
    """Copies of kernels on devices 2**40 (wrapped to GPU0 before), 2**31 (negative before), 7 and 1023 (not
    in deviceProperties)."""
    t = base_trace()
    for dev in (2**40, 2**31, 7, 1023):
        _copies(t, {"args": {"device": dev}}, n=1)
    return _one(t)


def pid_huge() -> Files:
    """Copies of kernels without ``args.device`` whose pid (then the device) is 10**30."""
    t = base_trace()
    _copies(t, {"pid": 10**30, "args": {"device": None}})
    return _one(t)


def world_size_huge() -> Files:
    """A header claiming a world size of 10**9 (allocated per rank before: 4-5 GB)."""
    t = base_trace()
    t["distributedInfo"]["world_size"] = 10**9
    return _one(t)


def rank_huge() -> Files:
    t = base_trace()
    t["distributedInfo"]["rank"] = 10**15
    return _one(t)


def step_number_huge() -> Files:
    """Copies of both steps (host and GPU annotation) numbered 10**23 - 1 and with 5,000 digits (more than
    Python's ``int`` reads from text): the step columns overflowed before (exit 1)."""
    t = base_trace()
    for e in [e for e in t["traceEvents"] if str(e.get("name", "")).startswith("ProfilerStep#")]:
        for digits in ("9" * 23, "9" * 5000):
            t["traceEvents"].append({**copy.deepcopy(e), "name": "ProfilerStep#" + digits})
    return _one(t)


def step_dur_absurd() -> Files:
    """The first step lasting 5e10 µs (14 hours: below the 1e11 µs outlier bound), and copies of 4 CPU ops lasting
    as long: the step is cut at the next step's start, the copies skipped."""
    t = base_trace()
    steps_of(t)[0]["dur"] = 5e10
    _copies(t, {"dur": 5e10}, cat="cpu_op")
    return _one(t)


def base_time_huge() -> Files:
    """Rank 1's ``baseTimeNanoseconds`` is 10**30 (beyond int64: merge-nvml and perfetto overflowed), rank 0's the
    right digits as a string. Both are left out, so both ranks stay on their own relative clock (a rank without a
    base beside one with it is moved by the other's whole epoch: see docs/reliability.md)."""
    t0, t1 = _ranked(0, 2), _ranked(1, 2)
    t0["baseTimeNanoseconds"] = str(t0["baseTimeNanoseconds"])
    t1["baseTimeNanoseconds"] = 10**30
    return _two_ranks(t0, t1)


def distinfo_wrong_types() -> Files:
    """``distributedInfo`` with a backend that is a number, a rank below 0, a world size of 0, a string for
    ``pg_config``: each field left out and named."""
    t = base_trace()
    t["distributedInfo"] = {"backend": 7, "rank": -5, "world_size": 0, "pg_config": "all"}
    return _one(t)


# --- compression ------------------------------------------------------------------------------------

def corrupt_deflate() -> Files:
    """A gzip file whose compressed body has 16 bytes overwritten in the middle."""
    data = bytearray(gz(dumps(base_trace())))
    mid = len(data) // 2
    data[mid:mid + 16] = bytes(range(16))
    return {TRACE: bytes(data)}


BOMB_BYTES = 48 << 20  # spaces inside traceEvents; tests set the 1 GiB floor of the limit to 32 MiB


def gzip_bomb() -> Files:
    """A valid start of a trace, then 48 MiB of spaces that gzip ~1000x (generated, ~50 kB)."""
    head, _, tail = dumps(base_trace()).partition(b'"traceEvents": [')
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [c.compress(head + b'"traceEvents": [\n')]
    block = b" " * (1 << 20)
    parts += [c.compress(block) for _ in range(BOMB_BYTES >> 20)]
    parts += [c.compress(tail), c.flush()]
    return {TRACE: b"".join(parts)}


# --- run directories: manifest and sidecars of the wrong types --------------------------------------

def _run(manifest: Any, sidecars: dict[str, bytes] | None = None) -> Files:
    files = {"traces/rank0.1.pt.trace.json.gz": gz(dumps(base_trace()))}
    files["manifest.json"] = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
    return {**files, **(sidecars or {})}


def _deep(depth: int) -> Any:
    v: Any = []
    for _ in range(depth):
        v = [v]
    return v


def manifest_wrong_types() -> Files:
    """Every kind of wrong value where the contract has a number, a string, a list or an object."""
    m = {"schema": "dpprof.manifest/1", "run_id": ["a"], "status": 3, "complete": "yes", "command": "dpprof",
         "config": {"strategy": "ddp", "world_size": "four", "nproc": 1e300, "batch_size": float("nan"),
                    "workers": float("inf"), "lr": 10**400, "device_ids": "0,1", "nnodes": [2],
                    "extra": _deep(50)},
         "model_info": {"param_bytes": "58913064", "params": -1e309},
         "summary": "fast", "profiler": {"overhead_ratio": "2x"}, "epochs": [1, {"loss": "NaN"}],
         "nodes": [{"node_rank": "0", "file": 7}], "hardware": {"gpus": {"0": "H200"}},
         "peak_memory_bytes": {"vm:0": "lots"}, "warnings": [1, None, "ok"], "files": {"traces": "all"}}
    return _run(json.dumps(m, allow_nan=True).encode())


def manifest_huge_counts() -> Files:
    """Right types, absurd sizes: world size and nproc of 10**9, node ranks far away."""
    m = {"schema": "dpprof.manifest/1", "run_id": "r", "status": "complete",
         "config": {"strategy": "ddp", "world_size": 10**9, "nproc": 10**9, "nnodes": 10**9},
         "nodes": [{"host": "h", "node_rank": 10**12, "file": "nodes/h.json"}]}
    return _run(m)


def sidecars_wrong_types() -> Files:
    """steps, NVML and node files with Infinity, 10**30, strings, lists and a cut-short line."""
    steps = [b'{"rank": 0, "step": 0, "wall_ms": 12.5, "profiled": false}',
             b'{"rank": 0, "step": 1, "wall_ms": Infinity}', b'{"rank": 1e300, "step": 2, "wall_ms": 1}',
             b'{"rank": 100000000000000000000000000000, "step": 3, "wall_ms": 1}',
             b'{"rank": "0", "step": 4, "wall_ms": "1"}', b'[1, 2]', b'{"rank": 0, "step": 5, "wall_ms": -1}',
             b'{"rank": 0, "step": 6, "wal']
    nvml = [b'{"type": "header", "host": ["h"], "gpus": "all", "warnings": 5}',
            b'{"type": "sample", "t_ns": 100000000000000000000000000000, "cuda_index": 0, "util_gpu_pct": 1}',
            b'{"type": "sample", "t_ns": 18446744073709551615, "cuda_index": 0}',
            b'{"type": "sample", "t_ns": 1790857026000000000, "cuda_index": 0, "util_gpu_pct": Infinity}',
            b'{"type": "sample", "t_ns": 1790857026000000000, "cuda_index": 0, "util_gpu_pct": 1e300}',
            b'{"type": "warning", "message": "\\u001b]0;pwned\\u0007"}']
    node = {"host": 5, "ranks": "0", "nvml_file": ["x"], "node_key": {"k": 1}}
    m = {"schema": "dpprof.manifest/1", "run_id": "r", "status": "complete",
         "config": {"strategy": "single", "nproc": 1}}
    return _run(m, {"steps.rank0.jsonl": b"\n".join(steps), "nvml.h.jsonl": b"\n".join(nvml) + b"\n",
                    "nodes/h.json": json.dumps(node).encode()})


def manifest_deep() -> Files:
    """A manifest nested 100,000 deep (generated: 200 kB)."""
    return _run(b'{"config": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
