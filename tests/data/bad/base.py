"""The good trace every damaged case starts from: two real steps of an H200 trace, shrunk.

Source: ``tests/data/h200/single_vgg16cifar.pt.trace.json.gz`` (torch 2.11, one H200). We keep the
first ``WINDOW_US`` µs of ``ProfilerStep#3`` and ``#4`` on the host (DataLoader ``__next__``, the input
copies, the first conv/BN/ReLU ops and their runtime calls), every GPU activity those runtime calls
launched (matched by ``correlation``), their ``ac2g`` flows, and the metadata events. Each step is cut
to end just after its last GPU activity, and step 4 is moved to start right after step 3, so the
shrunk trace is a consistent two-step trace (~200 events) with real names, ids, threads and flows.
"""

from __future__ import annotations

import copy
import gzip
import io
import json
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

SOURCE = Path(__file__).resolve().parents[1] / "h200" / "single_vgg16cifar.pt.trace.json.gz"
WINDOW_US = 2000.0  # host time kept at the start of each step, µs
STEP_GAP_US = 5.0  # gap between the two shrunk steps, µs
HOST_CATS = ("cpu_op", "user_annotation", "cuda_runtime", "cuda_driver", "python_function")
GPU_CATS = ("kernel", "gpu_memcpy", "gpu_memset")
DIST_INFO = {"backend": "nccl", "rank": 0, "world_size": 1}


def _r(x: float) -> float:
    return round(x, 3)


@lru_cache(maxsize=1)
def _base() -> dict[str, Any]:
    src = json.loads(gzip.decompress(SOURCE.read_bytes()))
    events: list[dict[str, Any]] = src["traceEvents"]
    steps = sorted((e for e in events if e.get("cat") == "user_annotation"
                    and str(e.get("name", "")).startswith("ProfilerStep#")), key=lambda e: e["ts"])[:2]
    host_pid = steps[0]["pid"]
    kept: list[dict[str, Any]] = []
    new_start = steps[0]["ts"]
    for step in steps:
        s0 = step["ts"]
        shift = new_start - s0
        host = [e for e in events if e.get("ph") == "X" and e.get("pid") == host_pid
                and e.get("cat") in HOST_CATS and e is not step
                and s0 <= e["ts"] and e["ts"] + e.get("dur", 0) <= s0 + WINDOW_US]
        corr = {e["args"]["correlation"] for e in host if "correlation" in (e.get("args") or {})}
        gpu = [e for e in events if e.get("cat") in GPU_CATS and (e.get("args") or {}).get("correlation") in corr]
        flows = [e for e in events if e.get("cat") == "ac2g" and e.get("id") in corr]
        end = max([s0 + WINDOW_US] + [e["ts"] + e["dur"] for e in gpu]) + 10.0
        new_step = dict(step, dur=_r(end - s0))
        gpu_ann = [dict(e, dur=_r(min(e["ts"] + e["dur"], end) - e["ts"])) for e in events
                   if e.get("cat") == "gpu_user_annotation" and e.get("name") == step["name"]]
        for e in [new_step, *host, *gpu, *flows, *gpu_ann]:
            e = copy.deepcopy(e)
            e["ts"] = _r(e["ts"] + shift)
            kept.append(e)
        new_start = new_start + (end - s0) + STEP_GAP_US
    first = steps[0]["ts"]
    last = new_start
    meta = [dict(copy.deepcopy(e), ts=_r(first - 100.0)) for e in events if e.get("ph") == "M"]
    span = [dict(copy.deepcopy(e), ts=_r(first - 100.0), dur=_r(last - first + 200.0))
            for e in events if e.get("cat") == "Trace"]
    marks = []
    for e in events:
        if e.get("ph") == "i":
            e = copy.deepcopy(e)
            e["ts"] = _r(first - 100.0 if "Start" in e["name"] else last + 100.0)
            marks.append(e)
    kept.sort(key=lambda e: (e["ts"], e.get("ph", "")))
    header = {k: v for k, v in src.items() if k not in ("traceEvents", "traceName")}
    header["distributedInfo"] = dict(DIST_INFO)
    header["traceName"] = "tests/data/bad (shrunk from single_vgg16cifar)"
    return {**header, "traceEvents": meta + span + marks + kept}


def base_trace() -> dict[str, Any]:
    """A fresh deep copy of the shrunk good trace (a Kineto JSON object)."""
    return copy.deepcopy(_base())


def host_pid(trace: dict[str, Any]) -> int:
    return next(e["pid"] for e in trace["traceEvents"] if e.get("cat") == "user_annotation")


def steps_of(trace: dict[str, Any]) -> list[dict[str, Any]]:
    """The CPU ``ProfilerStep#N`` events of a trace, in time order."""
    return sorted((e for e in trace["traceEvents"] if isinstance(e, dict) and e.get("cat") == "user_annotation"
                   and str(e.get("name", "")).startswith("ProfilerStep#")), key=lambda e: e["ts"])


def dumps(obj: Any) -> bytes:
    """JSON the way torch writes it where it matters: ``"rank": 0`` keeps its space (HTA's regex)."""
    return json.dumps(obj, separators=(", ", ": ")).encode("utf-8")


def gz(data: bytes) -> bytes:
    """Deterministic gzip (no mtime, no file name) so regenerating gives identical bytes."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9, mtime=0, filename="") as fh:
        fh.write(data)
    return buf.getvalue()


# --- building blocks of the cases -------------------------------------------------------------

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
