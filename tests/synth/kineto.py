"""Write one rank's Kineto (torch.profiler) trace event by event, formatted the way torch 2.11 writes it.

Event shapes, categories, argument names, flow events and metadata rows are copied from the real H200
fixtures (``tests/data/h200/``): CPU ops and annotations on the process pid, runtime rows carrying
``correlation``, an ``ac2g`` flow start (``ph: s``) on the runtime row and a flow end (``ph: f``) on the GPU
activity, GPU activities on ``pid = device`` / ``tid = stream``, 16 ``GPU N`` processes in the metadata
whatever the device count, and ``distributedInfo`` written with ``"rank": N`` (HTA finds ranks with a regex
that needs the space). All times are microseconds on the trace clock (``ts`` relative to
``baseTimeNanoseconds``, 3 decimals like torch).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dpprof.fileio import write_bytes_atomic

BASE_TIME_NS = 1790857026000000000
#: Trace-clock origin of the synthetic runs (µs), near the fixtures' clock; offsets are multiples of 1/8 µs
#: so that every timestamp is exact in binary floating point.
TS0_US = 4_940_000_000_000.0
KINETO_GPU_PROCESSES = 16
COMPUTE_STREAM = 7
COPY_KINDS = {"HtoD": "Memcpy HtoD (Pinned -> Device)", "DtoH": "Memcpy DtoH (Device -> Pinned)",
              "DtoD": "Memcpy DtoD (Device -> Device)", "PtoP": "Memcpy PtoP (Device -> Device)"}
_CBID = {"cudaLaunchKernel": 211, "cudaLaunchKernelExC": 430, "cudaMemcpyAsync": 41, "cudaMemsetAsync": 51,
         "cudaStreamWaitEvent": 147, "cudaEventRecord": 135}


@dataclass(frozen=True)
class Op:
    """A CPU op or annotation placed on a thread; ``ext`` is its ``External id``."""

    tid: int
    name: str
    cat: str
    start: float
    end: float
    ext: int


@dataclass(frozen=True)
class GpuSpan:
    """One GPU activity as placed (µs), with what the expectation needs to know about it."""

    device: int
    stream: int
    start: float
    end: float
    kind: str  # kernel | memcpy | memset
    name: str
    comm: bool  # a communication (NCCL) kernel
    launcher_tid: int
    launch_ts: float
    copy_kind: str | None = None  # HtoD | DtoH | DtoD | PtoP for copies
    nbytes: int = 0


class RankTrace:
    """The events of one rank's trace; ``write`` gzips it in torch's layout."""

    def __init__(self, *, rank: int, pid: int, devices: tuple[int, ...], world_size: int | None,
                 backend: str | None, pg_ranks: tuple[int, ...] = (), nccl_version: str | None = None,
                 first_ext: int = 1000, first_corr: int = 100000, clock_shift_us: float = 0.0,
                 subgroups: tuple[tuple[str, tuple[int, ...]], ...] = ()) -> None:
        #: This rank's clock error: every timestamp is written ``clock_shift_us`` late (another host's clock).
        self.clock_shift_us = clock_shift_us
        self.rank, self.pid, self.devices = rank, pid, devices
        self.world_size, self.backend, self.pg_ranks, self.nccl_version = world_size, backend, pg_ranks, nccl_version
        #: Further process groups the rank belongs to, (name, global ranks): torch lists every group of the rank in
        #: distributedInfo.pg_config (torch/profiler/profiler.py ``_get_distributed_info``).
        self.subgroups = subgroups
        self.ops: list[Op] = []
        self.gpu: list[GpuSpan] = []
        self.runtime_rows: list[tuple[int, float, float]] = []  # (tid, start, end)
        self._events: list[tuple[float, int, dict[str, Any]]] = []
        self._ext = itertools.count(first_ext)
        self._corr = itertools.count(first_corr)
        self._seq = itertools.count()
        self._threads: dict[int, str | None] = {pid: "python3"}
        self._streams: set[tuple[int, int]] = set()

    # --- threads and CPU side -------------------------------------------------------------------------
    def thread(self, tid: int, name: str | None) -> None:
        """Declare a CPU thread; ``None``: no ``thread_name`` row (DP's replica threads have none)."""
        self._threads[tid] = name

    def op(self, tid: int, name: str, start: float, dur: float, cat: str = "cpu_op",
           args: dict[str, Any] | None = None) -> Op:
        ext = next(self._ext)
        full = {"External id": ext, "Record function id": 0, **(args or {}), "Ev Idx": ext - 1000}
        self._add(start, {"ph": "X", "cat": cat, "name": name, "pid": self.pid, "tid": tid,
                          "ts": start, "dur": dur, "args": full})
        op = Op(tid, name, cat, start, start + dur, ext)
        self.ops.append(op)
        return op

    def annotate(self, tid: int, name: str, start: float, dur: float) -> Op:
        return self.op(tid, name, start, dur, cat="user_annotation")

    def runtime(self, tid: int, name: str, start: float, dur: float, parent: Op | None) -> int:
        """A runtime row (``cuda_runtime``) and its flow start; returns the correlation id."""
        corr = next(self._corr)
        if parent is not None:
            assert parent.tid == tid and parent.start <= start and start + dur <= parent.end, (parent, start)
        args: dict[str, Any] = {"External id": parent.ext} if parent is not None else {}
        args.update({"cbid": _CBID.get(name, 0), "correlation": corr})
        self._add(start, {"ph": "X", "cat": "cuda_runtime", "name": name, "pid": self.pid, "tid": tid,
                          "ts": start, "dur": dur, "args": args})
        self._add(start, {"ph": "s", "id": corr, "pid": self.pid, "tid": tid, "ts": start,
                          "cat": "ac2g", "name": "ac2g"})
        self.runtime_rows.append((tid, start, start + dur))
        return corr

    def op_kernel(self, tid: int, name: str, start: float, device: int, kernel: str, kernel_us: float, *,
                  wrapper: str | None = None, memset_us: float = 0.0) -> Op:
        """A CPU op that launches one kernel (after a memset when ``memset_us``) and covers it.

        Layout, µs from ``start``: optional ``wrapper`` op (e.g. ``autograd::engine::evaluate_function: X``)
        over the whole span; the op from +0.5; runtime rows from +1; GPU work from +4; the op ends 2 µs after
        the kernel and the wrapper 0.5 µs after the op. Returns the outermost op (its ``end`` is the span end).
        """
        gpu_start = start + 4.0
        if memset_us:
            gpu_start += 4.0
        end = gpu_start + memset_us + kernel_us + 2.0
        outer = self.op(tid, wrapper, start, end + 0.5 - start) if wrapper else None
        inner = self.op(tid, name, start + 0.5, end - start - 0.5)
        at = start + 1.0
        if memset_us:
            self.memset(tid, at, inner, device, gpu_start, memset_us, 1 << 20)
            at += 4.0
        self.kernel(tid, at, inner, device, kernel, gpu_start + memset_us, kernel_us)
        return outer or inner

    # --- GPU side -------------------------------------------------------------------------------------
    def kernel(self, tid: int, at: float, parent: Op | None, device: int, name: str, start: float, dur: float,
               stream: int = COMPUTE_STREAM, comm: bool = False, extra: dict[str, Any] | None = None) -> GpuSpan:
        """Launch a kernel from ``tid`` at ``at`` (runtime row of 3 µs) that runs [start, start+dur)."""
        api = "cudaLaunchKernelExC" if comm else "cudaLaunchKernel"
        corr = self.runtime(tid, api, at, 3.0, parent)
        args: dict[str, Any] = {"External id": parent.ext} if parent is not None else {}
        args.update({"queued": 0, "device": device, "context": 1, "stream": stream, "correlation": corr,
                     "registers per thread": 32, "shared memory": 0, "blocks per SM": 1.0,
                     "warps per SM": 8.0, "grid": [132, 1, 1], "block": [256, 1, 1],
                     "est. achieved occupancy %": 25})
        args.update(extra or {})
        return self._gpu("kernel", name, device, stream, start, dur, corr, args, tid, at, comm)

    def copy(self, tid: int, at: float, parent: Op | None, device: int, kind: str, start: float, dur: float,
             nbytes: int, stream: int = COMPUTE_STREAM, to_device: int | None = None) -> GpuSpan:
        """A copy running on ``device``'s ``stream``. Peer copies (``to_device`` given) carry libkineto's
        memcpy2 args (``fromDevice``/``inDevice``/``toDevice``, no ``device``: CuptiActivity.cpp)."""
        corr = self.runtime(tid, "cudaMemcpyAsync", at, 3.0, parent)
        args: dict[str, Any] = {"External id": parent.ext} if parent is not None else {}
        where = {"device": device, "context": 1} if to_device is None else {
            "fromDevice": device, "inDevice": device, "toDevice": to_device, "fromContext": 1, "inContext": 1,
            "toContext": 1}
        args.update({**where, "stream": stream, "correlation": corr, "bytes": nbytes,
                     "memory bandwidth (GB/s)": nbytes / (dur * 1e3)})
        return self._gpu("gpu_memcpy", COPY_KINDS[kind], device, stream, start, dur, corr, args, tid, at,
                         False, kind, nbytes)

    def memset(self, tid: int, at: float, parent: Op | None, device: int, start: float, dur: float,
               nbytes: int, stream: int = COMPUTE_STREAM) -> GpuSpan:
        corr = self.runtime(tid, "cudaMemsetAsync", at, 3.0, parent)
        args: dict[str, Any] = {"External id": parent.ext} if parent is not None else {}
        args.update({"device": device, "context": 1, "stream": stream, "correlation": corr, "bytes": nbytes,
                     "memory bandwidth (GB/s)": nbytes / (dur * 1e3)})
        return self._gpu("gpu_memset", "Memset (Device)", device, stream, start, dur, corr, args, tid, at,
                         False, None, nbytes)

    def gpu_annotation(self, device: int, name: str, start: float, end: float, ext: int,
                       stream: int = COMPUTE_STREAM) -> None:
        """Kineto's GPU-side copy of a CPU annotation (``gpu_user_annotation``): not GPU work."""
        self._streams.add((device, stream))
        self._add(start, {"ph": "X", "cat": "gpu_user_annotation", "name": name, "pid": device, "tid": stream,
                          "ts": start, "dur": end - start, "args": {"External id": ext}})

    def _gpu(self, cat: str, name: str, device: int, stream: int, start: float, dur: float, corr: int,
             args: dict[str, Any], tid: int, at: float, comm: bool, copy_kind: str | None = None,
             nbytes: int = 0) -> GpuSpan:
        assert start >= at, (name, start, at)
        self._streams.add((device, stream))
        self._add(start, {"ph": "X", "cat": cat, "name": name, "pid": device, "tid": stream,
                          "ts": start, "dur": dur, "args": args})
        self._add(start, {"ph": "f", "id": corr, "pid": device, "tid": stream, "ts": start,
                          "cat": "ac2g", "name": "ac2g", "bp": "e"})
        span = GpuSpan(device, stream, start, start + dur, cat.removeprefix("gpu_"), name, comm, tid, at,
                       copy_kind, nbytes)
        self.gpu.append(span)
        return span

    def _add(self, ts: float, event: dict[str, Any]) -> None:
        self._events.append((ts, next(self._seq), event))

    # --- output ---------------------------------------------------------------------------------------
    def text(self, trace_name: str) -> str:
        lines = ["", "  {", '    "schemaVersion": 1,', '    "deviceProperties": [']
        props = []
        for d in range(max(self.devices) + 1):
            props.append(
                f'    {{\n      "id": {d}, "name": "NVIDIA H200", "totalGlobalMem": 150109880320,\n'
                '      "computeMajor": 9, "computeMinor": 0,\n'
                '      "maxThreadsPerBlock": 1024, "maxThreadsPerMultiprocessor": 2048,\n'
                '      "regsPerBlock": 65536, "warpSize": 32,\n'
                '      "sharedMemPerBlock": 49152, "numSms": 132\n'
                '    , "regsPerMultiprocessor": 65536, "sharedMemPerBlockOptin": 232448,'
                ' "sharedMemPerMultiprocessor": 233472\n    }')
        lines += [",\n".join(props), "    ],", '      "trace_id": "5E1F0000000000000000000000000000",',
                  '      "record_shapes": 1,']
        if self.world_size is not None:
            groups = [("0", "default_pg", self.pg_ranks)] + [(n, "sub", r) for n, r in self.subgroups]
            info: dict[str, Any] = {"backend": self.backend, "rank": self.rank, "world_size": self.world_size,
                                    "pg_count": len(groups), "pg_config": [{
                                        "pg_name": name, "pg_desc": desc, "backend_config": f"cuda:{self.backend}",
                                        "pg_size": len(ranks), "ranks": list(ranks)} for name, desc, ranks in groups]}
            if self.nccl_version:
                info["nccl_version"] = self.nccl_version
            lines.append(f'      "distributedInfo": {json.dumps(info)},')
        lines += ['      "cuda_driver_version": 13000,', '      "cuda_runtime_version": 13000,',
                  '      "cupti_version": 130001,', '  "displayTimeUnit": "ms",',
                  f'  "baseTimeNanoseconds": {BASE_TIME_NS},', '  "traceEvents": [']
        events = [e for _, _, e in sorted(self._events, key=lambda x: (x[0], x[1]))]
        events += self._metadata()
        if self.clock_shift_us:
            events = [{**e, "ts": e["ts"] + self.clock_shift_us} for e in events]
        lines.append(",\n".join(_format_event(e) for e in events))
        lines += ["  ],", f'  "traceName": {json.dumps(trace_name)}', "}"]
        return "\n".join(lines) + "\n"

    def _metadata(self) -> list[dict[str, Any]]:
        ts = min(t for t, _, _ in self._events) - 200.0
        rows: list[dict[str, Any]] = []

        def meta(name: str, pid: int, tid: int, args: dict[str, Any]) -> None:
            rows.append({"name": name, "ph": "M", "ts": ts, "pid": pid, "tid": tid, "args": args})

        meta("process_name", self.pid, 0, {"name": "python3"})
        meta("process_labels", self.pid, 0, {"labels": "CPU"})
        for g in range(KINETO_GPU_PROCESSES):
            meta("process_name", g, 0, {"name": "python3"})
            meta("process_labels", g, 0, {"labels": f"GPU {g}"})
            meta("process_sort_index", g, 0, {"sort_index": 5000000 + g})
        for device, stream in sorted(self._streams):
            meta("thread_name", device, stream, {"name": f"stream {stream} "})
            meta("thread_sort_index", device, stream, {"sort_index": stream})
        for tid, name in sorted(self._threads.items()):
            if name is not None:
                meta("thread_name", self.pid, tid, {"name": f"thread {tid} ({name})"})
                meta("thread_sort_index", self.pid, tid, {"sort_index": tid})
        return rows

    def write(self, path: Path) -> Path:
        write_bytes_atomic(path, self.text(str(path.with_suffix(""))).encode("utf-8"))
        return path


def _format_event(e: dict[str, Any]) -> str:
    """One event in torch's multi-line layout (``ts``/``dur`` with 3 decimals)."""
    if e["ph"] == "M":
        return (f'  {{\n    "name": "{e["name"]}", "ph": "M", "ts": {e["ts"]:.3f}, "pid": {e["pid"]}, '
                f'"tid": {e["tid"]},\n    "args": {{\n      {json.dumps(e["args"])[1:-1]}\n    }}\n  }}')
    if e["ph"] in ("s", "f"):
        tail = ', "bp": "e"' if e["ph"] == "f" else ""
        return (f'  {{\n    "ph": "{e["ph"]}", "id": {e["id"]}, "pid": {e["pid"]}, "tid": {e["tid"]}, '
                f'"ts": {e["ts"]:.3f},\n    "cat": "ac2g", "name": "ac2g"{tail}\n  }}')
    return (f'  {{\n    "ph": "X", "cat": "{e["cat"]}", "name": {json.dumps(e["name"])}, "pid": {e["pid"]}, '
            f'"tid": {e["tid"]},\n    "ts": {e["ts"]:.3f}, "dur": {e["dur"]:.3f},\n'
            f'    "args": {{\n      {json.dumps(e["args"])[1:-1]}\n    }}\n  }}')
