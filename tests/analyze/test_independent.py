"""An independent, deliberately simple computation of the per-device figures agrees with the analyzer.

Plain ``json`` + ``gzip`` and loops, no dpprof code: for every GPU activity (``cat`` ``kernel``,
``gpu_memcpy``, ``gpu_memset``; device = ``args.device``, else the GPU ``pid``) of a trace file,

- ``kernel_time_us``: sum of kernel durations;
- ``comm_kernel_time_us``: the same for communication kernels (names starting ``nccl``/``rccl``/``gloo``,
  with or without ``void ``);
- ``busy_time_us``: length of the union of kernel, memcpy and memset intervals (sort, merge, add);
- ``memcpy_time_us``: sum of memcpy and memset durations; ``memcpy_bytes``: ``args.bytes`` by copy kind.

Each must agree with ``analyze([file]).devices`` within 0.5 % on every fixture in tests/data/h200/, and on
one synthetic multi-GPU DP and one DDP trace (tests/synth), which have communication kernels and several
devices where the fixtures have neither.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FIXTURES

pipeline = pytest.importorskip("dpprof.analyze.pipeline")

_GPU_CATS = ("kernel", "gpu_memcpy", "gpu_memset")
_COMM_PREFIXES = ("nccl", "rccl", "gloo")
_COPY_KINDS = ("HtoD", "DtoH", "DtoD", "PtoP")


def independent_devices(path: Path) -> dict[tuple[int, int], dict[str, Any]]:
    """Per (rank, device) figures of one trace file, computed with the simplest code possible."""
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        data = json.load(fh)
    rank = (data.get("distributedInfo") or {}).get("rank", 0)
    out: dict[tuple[int, int], dict[str, Any]] = {}
    intervals: dict[tuple[int, int], list[tuple[float, float]]] = {}
    for e in data["traceEvents"]:
        if e.get("ph") != "X" or e.get("cat") not in _GPU_CATS:
            continue
        args = e.get("args") or {}
        key = (rank, int(args.get("device", e["pid"])))
        row = out.setdefault(key, {"kernel_time_us": 0.0, "comm_kernel_time_us": 0.0, "memcpy_time_us": 0.0,
                                   "memcpy_bytes": {}})
        dur = float(e["dur"])
        intervals.setdefault(key, []).append((float(e["ts"]), float(e["ts"]) + dur))
        if e["cat"] == "kernel":
            row["kernel_time_us"] += dur
            if e["name"].removeprefix("void ").lower().startswith(_COMM_PREFIXES):
                row["comm_kernel_time_us"] += dur
        else:
            row["memcpy_time_us"] += dur
            kind = next((k for k in _COPY_KINDS if e["cat"] == "gpu_memcpy" and k in e["name"]), None)
            if kind is not None:
                row["memcpy_bytes"][kind] = row["memcpy_bytes"].get(kind, 0) + int(args.get("bytes", 0))
    for key, spans in intervals.items():
        busy, cur_start, cur_end = 0.0, None, None
        for start, end in sorted(spans):
            if cur_end is None or start > cur_end:
                if cur_end is not None:
                    busy += cur_end - cur_start
                cur_start, cur_end = start, end
            else:
                cur_end = max(cur_end, end)
        if cur_end is not None:
            busy += cur_end - cur_start
        out[key]["busy_time_us"] = busy
    return out


def _synthetic(tmp_path: Path, which: str) -> Path:
    from tests.synth import write_ddp_run, write_dp_run

    if which == "synth_dp4_gpu0_bound":
        folder, _ = write_dp_run(tmp_path, 4, "gpu0_bound")
        return next(folder.iterdir())
    folder, _ = write_ddp_run(tmp_path, 4, "straggler")
    return sorted(folder.iterdir())[0]  # rank 0: it waits for the straggler inside its NCCL kernels


@pytest.mark.parametrize("name", sorted(FIXTURES) + ["synth_dp4_gpu0_bound", "synth_ddp4_straggler_rank0"])
def test_device_figures_match_independent_computation(tmp_path: Path, name: str) -> None:
    path = FIXTURES[name] if name in FIXTURES else _synthetic(tmp_path, name)
    want = independent_devices(path)
    got = {(d.rank, d.device): d for d in pipeline.analyze([path]).devices}
    assert sorted(got) == sorted(want)
    for key, row in want.items():
        d = got[key]
        for field in ("kernel_time_us", "comm_kernel_time_us", "busy_time_us", "memcpy_time_us"):
            assert getattr(d, field) == pytest.approx(row[field], rel=0.005, abs=0.01), (key, field)
        assert {k: v for k, v in d.memcpy_bytes.items() if v} == row["memcpy_bytes"], key
    if name.startswith("synth"):
        assert sum(r["comm_kernel_time_us"] for r in want.values()) > 0  # the case the fixtures lack
