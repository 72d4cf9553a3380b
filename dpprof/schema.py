"""Type checks of the run directory's JSON (manifest, nodes/<node>.json, step lines) where they are read.

docs/run-format.md is the contract; a file written by hand, by another version or by an attacker may
break it. Every field a reader uses is checked here once, against the types below: a value of the wrong
type (a string for a count, NaN, Infinity, 10**400, a list for a mapping, nesting deeper than any real
file) is left out, as if absent (every reader already copes with a missing field), and named in a
problem line (``"manifest.json: config.world_size: expected an integer, got str"``). Fields the
contract does not name are kept when they are plain JSON (shallow, finite, int64); null is allowed
for every field (not for an element of a list). Semantic limits (a world size of 1e9) are the readers' to check against the files present.

The manifest will become a typed model; until then this table is where its types are written down.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class MapOf:
    """A mapping with free keys (GPU pairs, host:device labels) whose values all have type ``value``."""

    value: Any


INT, NUM, STR, BOOL = "an integer", "a number", "a string", "true/false"
#: Deeper than this, an unknown value is not plain data (the deepest real field is 4 levels down).
MAX_DEPTH = 16
_INT64 = 2**63

_GPU = {"cuda_index": INT, "nvml_index": INT, "uuid": STR, "name": STR, "memory_total_bytes": INT}
MANIFEST: dict[str, Any] = {
    "schema": STR, "run_id": STR, "status": STR, "complete": BOOL, "command": [STR], "created_unix_ns": INT,
    "ended_unix_ns": INT, "dp_mode": STR, "warnings": [STR],
    "config": {
        "strategy": STR, "model": STR, "data": STR, "data_root": STR, "batch_size": INT, "per_rank_batch_size": INT,
        "gpus": INT, "device_ids": [INT], "nproc": INT, "nnodes": INT, "world_size": INT, "epochs": INT, "steps": INT,
        "lr": NUM, "lr_rule": STR, "momentum": NUM, "workers": INT, "seed": INT, "profile_wait": INT, "profile_warmup": INT,
        "profile_active": INT, "profile_all_threads": BOOL, "record_shapes": BOOL, "with_stack": BOOL,
        "nvml_period_ms": INT, "loss_every": INT, "exact_timing": BOOL, "device": STR, "backend": STR, "threads": INT,
        "torch_threads": INT, "omp_num_threads_env": STR, "base_lr": NUM, "train_size": INT, "test_size": INT,
        "cudnn_benchmark": BOOL, "profile": BOOL},
    "model_info": {"name": STR, "params": INT, "param_bytes": INT, "buffers_bytes": INT},
    "data_info": {"kind": STR, "train_size": INT, "test_size": INT, "root": STR},
    "versions": MapOf(STR),
    "hardware": {"host": STR, "cpus": INT, "gpus": [_GPU], "warnings": [STR],
                 "topology": {"p2p": MapOf(STR), "pcie_path": MapOf(STR), "nvlink_active_links": MapOf(INT)}},
    "link_bandwidth": {"h2d_GBps": NUM, "d2h_GBps": NUM, "p2p_GBps": MapOf(NUM), "measured": BOOL, "note": STR,
                       "peer_access": MapOf(BOOL), "per_device": MapOf({"h2d_GBps": NUM, "d2h_GBps": NUM}),
                       "bytes": INT, "repeats": INT},
    "profiler": {"wait": INT, "warmup": INT, "active": INT, "profile_all_threads": BOOL, "enabled": BOOL,
                 "profiled_step_ms_median": NUM, "unprofiled_step_ms_median": NUM, "overhead_ratio": NUM,
                 "profiled_steps": INT, "unprofiled_steps": INT, "unprofiled_basis": STR},
    "summary": {"steps": INT, "step_ms_median": NUM, "images_per_s_median": NUM, "median_steps": INT,
                "median_basis": STR, "epochs": INT, "final_train_acc": NUM, "final_test_acc": NUM, "wall_s": NUM},
    "ddp": {"bucket_cap_mb": NUM, "bucket_cap_bytes": INT, "bucket_sizes_bytes": [INT], "bucket_sizes_source": STR,
            "buckets": INT, "read_after_step": INT, "gradient_as_bucket_view": BOOL, "broadcast_buffers": BOOL,
            "static_graph": BOOL, "find_unused_parameters": BOOL, "note": STR},
    "epochs": [{"epoch": INT, "train_acc": NUM, "test_acc": NUM, "loss": NUM, "time_s": NUM, "images_per_s": NUM,
                "steps": INT, "partial": BOOL}],
    "peak_memory_bytes": MapOf(INT),
    "nodes": [{"host": STR, "node_rank": INT, "file": STR}],
    "files": {"traces": [STR], "nvml": [STR], "steps": [STR], "merged": [STR]},
}
NODE: dict[str, Any] = {
    "host": STR, "node_rank": INT, "node_key": STR, "ranks": [INT], "nvml_file": STR, "gpus": [_GPU],
    "peak_memory_bytes": MapOf(INT), "peak_rss_bytes": INT, "written_unix_ns": INT,
}
STEP: dict[str, Any] = {
    "rank": INT, "epoch": INT, "step": INT, "wall_ms": NUM, "images_per_s": NUM, "profiled": BOOL, "profiler_on": BOOL, "loss": NUM,
}


def _ok_scalar(value: Any, kind: str) -> bool:
    if isinstance(value, bool):
        return kind == BOOL
    if kind == INT:
        return isinstance(value, int) and -_INT64 <= value < _INT64
    if kind == NUM:
        return (isinstance(value, int) and -_INT64 <= value < _INT64) or (
            isinstance(value, float) and math.isfinite(value))
    return kind == STR and isinstance(value, str)


def _what(value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, int) and not isinstance(value, bool) and not -_INT64 <= value < _INT64:
        return "an integer beyond 64 bits"
    return type(value).__name__


def _plain(value: Any, depth: int = 0) -> bool:
    """JSON data a generic renderer can show: finite numbers, int64, shallow."""
    if depth > MAX_DEPTH:
        return False
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _plain(v, depth + 1) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v, depth + 1) for v in value)
    return value is None or isinstance(value, (bool, str)) or _ok_scalar(value, NUM)


def _expected(spec: Any) -> str:
    if isinstance(spec, str):
        return spec
    return "a list" if isinstance(spec, list) else "an object"


def check(value: Any, spec: Any, where: str, problems: list[str]) -> tuple[bool, Any]:
    """(keep?, the value with its wrong parts left out); each part left out adds a line to ``problems``."""
    if value is None:
        return True, None
    if isinstance(spec, str):
        if _ok_scalar(value, spec):
            return True, value
    elif isinstance(spec, list) and isinstance(value, list):
        out = []
        for i, item in enumerate(value):
            if item is None:  # null is "absent" for a field, but an element of a list is never absent
                problems.append(f"{where}[{i}]: expected {_expected(spec[0])}, got null")
                continue
            keep, item = check(item, spec[0], f"{where}[{i}]", problems)
            if keep:
                out.append(item)
        return True, out
    elif isinstance(spec, (dict, MapOf)) and isinstance(value, Mapping):
        clean: dict[str, Any] = {}
        for k, v in value.items():
            sub = spec.value if isinstance(spec, MapOf) else spec.get(k, _UNKNOWN)
            name = f"{where}.{k}" if where else str(k)
            if sub is _UNKNOWN:
                if _plain(v):
                    clean[k] = v
                else:
                    problems.append(f"{name}: not plain JSON data (too deep, NaN, or a number beyond 64 bits)")
                continue
            keep, v = check(v, sub, name, problems)
            if keep:
                clean[k] = v
        return True, clean
    problems.append(f"{where or 'the file'}: expected {_expected(spec)}, got {_what(value)}")
    return False, None


_UNKNOWN = object()


def check_file(data: Any, spec: dict[str, Any], name: str) -> tuple[dict[str, Any] | None, list[str]]:
    """A decoded JSON file checked against ``spec``: (the object without its wrong fields, problems).

    None when the file is not a JSON object at all. Problems are prefixed with ``name``.
    """
    problems: list[str] = []
    keep, clean = check(data, spec, "", problems)
    if not isinstance(clean, dict):
        keep = False
        if not problems:
            problems.append(f"expected an object, got {_what(data)}")
    return (clean if keep else None), [f"{name}: {p}" for p in problems]
