"""Loader variants, written as small synthetic traces in the test, plus damaged input."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dpprof.analyze.pipeline import analyze
from dpprof.errors import TraceError
from dpprof.trace.load import K_CPU_OP, K_KERNEL, K_MEMCPY, K_RUNTIME, K_USER_ANN, load_trace


def X(name: str, cat: str, ts: float, dur: float, pid: Any = 1, tid: Any = 1, **args: Any) -> dict[str, Any]:
    return {"ph": "X", "cat": cat, "name": name, "pid": pid, "tid": tid, "ts": ts, "dur": dur, "args": args}


def current_trace(scale: float = 1.0, base: int | None = 1_700_000_000_000_000_000) -> dict[str, Any]:
    """One step: a kernel launched by cudaLaunchKernel inside aten::mm, a copy, a memset (µs * scale)."""
    s = scale
    ev = [
        X("ProfilerStep#7", "user_annotation", 100 * s, 100 * s),
        X("aten::mm", "cpu_op", 110 * s, 20 * s, **{"External id": 5}),
        X("cudaLaunchKernel", "cuda_runtime", 112 * s, 5 * s, correlation=42, **{"External id": 5}),
        X("gemm_kernel", "kernel", 130 * s, 30 * s, pid=0, tid=7, device=0, stream=7, correlation=42,
          **{"External id": 5}),
        X("cudaMemcpyAsync", "cuda_runtime", 120 * s, 2 * s, correlation=43),
        X("Memcpy HtoD (Pinned -> Device)", "gpu_memcpy", 165 * s, 10 * s, pid=0, tid=7, device=0,
          correlation=43, bytes=1024),
        X("Memset (Device)", "gpu_memset", 180 * s, 1 * s, pid=0, tid=7, device=0, correlation=44, bytes=4),
        {"ph": "M", "name": "process_name", "pid": 0, "tid": 0, "args": {"name": "python3"}},
    ]
    doc: dict[str, Any] = {"traceEvents": ev, "displayTimeUnit": "ms"}
    if base is not None:
        doc["baseTimeNanoseconds"] = base
    return doc


def write(tmp: Path, name: str, doc: Any, gz: bool = False) -> Path:
    path = tmp / name
    data = json.dumps(doc).encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def test_current_schema_columns(tmp_path: Path) -> None:
    rt = load_trace(write(tmp_path, "t.json.gz", current_trace(), gz=True))
    assert rt.base_time_ns == 1_700_000_000_000_000_000
    assert len(rt.ts) == 7 and rt.skipped == 0
    assert sorted(set(rt.kind.tolist())) == sorted({K_USER_ANN, K_CPU_OP, K_RUNTIME, K_KERNEL, K_MEMCPY, 6})
    k = int(np.flatnonzero(rt.kind == K_KERNEL)[0])
    assert rt.names[rt.name_id[k]] == "gemm_kernel"
    assert (rt.ts[k], rt.dur[k], rt.device[k], rt.correlation[k], rt.stream[k]) == (130.0, 30.0, 0, 42, 7)
    assert rt.nbytes[rt.kind == K_MEMCPY].tolist() == [1024]
    assert rt.device[rt.kind == K_CPU_OP].tolist() == [-1]


def test_2021_capitalised_categories(tmp_path: Path) -> None:
    doc = current_trace(base=None)
    cats = {"cpu_op": "Operator", "cuda_runtime": "Runtime", "kernel": "Kernel", "gpu_memcpy": "Memcpy",
            "gpu_memset": "Memset"}
    for e in doc["traceEvents"]:
        if e.get("cat") in cats:
            e["cat"] = cats[e["cat"]]
        if "ts" in e:
            e["ts"] += 1_600_000_000_000_000  # absolute µs
    a = analyze([write(tmp_path, "old.json", doc)])
    (step,) = a.steps
    assert step.step == 7 and step.device == 0
    assert step.busy_us == pytest.approx(41.0)  # kernel 30 + copy 10 + memset 1
    assert step.categories_us["compute"] == pytest.approx(30.0)
    assert step.categories_us["memcpy"] == pytest.approx(11.0)
    assert sum(step.categories_us.values()) == pytest.approx(step.duration_us)


def test_epoch_nanosecond_trace_is_converted(tmp_path: Path) -> None:
    """Absolute epoch nanoseconds (above 1e17) are the only timestamps read as ns."""
    doc = current_trace(scale=1000.0, base=None)
    for e in doc["traceEvents"]:
        if "ts" in e:
            e["ts"] += 1_700_000_000_000_000_000
    rt = load_trace(write(tmp_path, "ns.json", doc))
    assert rt.ns_converted
    k = int(np.flatnonzero(rt.kind == K_KERNEL)[0])
    assert rt.dur[k] == 30.0
    a = analyze([tmp_path / "ns.json"])
    assert a.steps[0].busy_us == pytest.approx(41.0)
    assert "ns_timestamps" in {w.code for w in a.warnings}


def test_display_time_unit_ns_is_only_a_display_hint(tmp_path: Path) -> None:
    """Kineto writes ``displayTimeUnit: "ns"`` over µs timestamps with a fraction: they stay µs."""
    doc = current_trace()
    doc["displayTimeUnit"] = "ns"
    for e in doc["traceEvents"]:
        if "ts" in e:
            e["ts"] += 0.125  # a nanosecond fraction, as libkineto writes it
    rt = load_trace(write(tmp_path, "kineto_ns.json", doc))
    assert not rt.ns_converted
    k = int(np.flatnonzero(rt.kind == K_KERNEL)[0])
    assert (rt.ts[k], rt.dur[k]) == (130.125, 30.0)
    a = analyze([tmp_path / "kineto_ns.json"])
    assert a.steps[0].duration_us == pytest.approx(100.0)
    assert "ns_timestamps" not in {w.code for w in a.warnings}


def test_one_absurd_timestamp_does_not_rescale_the_trace(tmp_path: Path) -> None:
    doc = current_trace()
    doc["traceEvents"].append(X("aten::add", "cpu_op", 1e300, 1.0))
    rt = load_trace(write(tmp_path, "outlier.json", doc))
    assert not rt.ns_converted
    assert analyze([tmp_path / "outlier.json"]).steps[0].duration_us == pytest.approx(100.0)


def test_hip_trace(tmp_path: Path) -> None:
    doc = current_trace()
    for e in doc["traceEvents"]:
        if e.get("name") == "cudaLaunchKernel":
            e["name"] = "hipLaunchKernel"
        elif e.get("name") == "Memcpy HtoD (Pinned -> Device)":
            e["name"] = "hipMemcpyHtoDAsync"
    a = analyze([write(tmp_path, "hip.json", doc)])
    assert a.devices[0].memcpy_bytes == {"HtoD": 1024}
    assert a.steps[0].categories_us["compute"] == pytest.approx(30.0)


def test_cpu_only_trace_gets_host_row(tmp_path: Path) -> None:
    ev = [X("ProfilerStep#1", "user_annotation", 0, 100),
          X("enumerate(DataLoader)#_SingleProcessDataLoaderIter.__next__", "user_annotation", 0, 10),
          X("aten::conv2d", "cpu_op", 20, 50), X("aten::add", "cpu_op", 30, 5)]
    a = analyze([write(tmp_path, "cpu.json", {"traceEvents": ev})])
    (step,) = a.steps
    assert step.device == -1 and a.ranks[0].devices == ()
    assert step.categories_us["data_loading"] == pytest.approx(10.0)
    assert step.categories_us["compute"] == pytest.approx(50.0)
    assert step.categories_us["idle"] == pytest.approx(40.0)
    assert a.strategy == "single"


def test_string_pids_and_numbers_as_strings(tmp_path: Path) -> None:
    doc = current_trace()
    for e in doc["traceEvents"]:
        if e.get("cat") in ("cpu_op", "user_annotation", "cuda_runtime"):
            e["pid"], e["tid"] = "host", "main"
    doc["traceEvents"][3]["ts"] = "130"  # a number written as a string: tolerant path
    rt = load_trace(write(tmp_path, "s.json", doc))
    assert rt.tolerant and rt.skipped == 0
    assert "main" in rt.tids
    a = analyze([tmp_path / "s.json"])
    assert a.steps[0].busy_us == pytest.approx(41.0)


def test_bad_events_are_skipped_and_counted(tmp_path: Path) -> None:
    doc = current_trace()
    doc["traceEvents"] += [X("k2", "kernel", 150, -5, pid=0, tid=7), X("k3", "kernel", 150, None, pid=0, tid=7),
                           {"ph": "X", "cat": "kernel", "name": "k4", "pid": 0, "tid": 7, "ts": 1, "dur": 1,
                            "args": None}, "not an event"]
    text = json.dumps(doc).replace('"dur": null', '"dur": NaN')
    path = tmp_path / "bad.json"
    path.write_text(text)
    rt = load_trace(path)
    assert rt.skipped == 3  # negative dur, NaN dur, a string instead of an event
    a = analyze([path])
    (w,) = [w for w in a.warnings if w.code == "skipped_events"]
    assert w.count == 3


def test_no_distributed_info_rank_from_name_then_order(tmp_path: Path) -> None:
    p1 = write(tmp_path, "worker_rank1.json", current_trace())
    p0 = write(tmp_path, "other.json", current_trace())
    a = analyze([p1, p0])
    assert sorted(r.rank for r in a.ranks) == [0, 1]
    assert {r.path: r.rank for r in a.ranks}[str(p1)] == 1
    assert "no_distributed_info" in {w.code for w in a.warnings}


def test_duplicate_ranks_and_mixed_world_sizes(tmp_path: Path) -> None:
    d1, d2 = current_trace(), current_trace()
    d1["distributedInfo"] = {"rank": 0, "world_size": 2, "backend": "nccl"}
    d2["distributedInfo"] = {"rank": 0, "world_size": 4, "backend": "nccl"}
    a = analyze([write(tmp_path, "a.json", d1), write(tmp_path, "b.json", d2)], jobs=1)
    assert sorted(r.rank for r in a.ranks) == [0, 1]
    codes = {w.code for w in a.warnings}
    assert {"duplicate_ranks", "mixed_world_sizes", "missing_ranks"} <= codes


@pytest.mark.parametrize("content", [b"", b"{\"traceEvents\": [", b"not json", b"{\"traceEvents\": []}", b"[]",
                                     b"{\"other\": 1}", gzip.compress(b"{\"traceEvents\": [")[:-8]])
def test_unreadable_files_raise_one_line_trace_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.pt.trace.json"
    path.write_bytes(content)
    with pytest.raises(TraceError) as err:
        load_trace(path)
    assert "\n" not in str(err.value) and "broken.pt.trace.json" in str(err.value)


def test_no_profiler_steps_whole_trace_is_one_step(tmp_path: Path) -> None:
    doc = current_trace()
    doc["traceEvents"] = [e for e in doc["traceEvents"] if e.get("name") != "ProfilerStep#7"]
    a = analyze([write(tmp_path, "nosteps.json", doc)])
    (step,) = a.steps
    assert step.step == 0 and step.start_us == 110.0 and step.duration_us == pytest.approx(71.0)
    assert "no_profiler_steps" in {w.code for w in a.warnings}


def test_flow_links_gpu_events_without_correlation(tmp_path: Path) -> None:
    """A kernel with no correlation id is linked to its launch through the ac2g flow pair."""
    ev = [X("ProfilerStep#1", "user_annotation", 0, 100),
          X("Scatter", "cpu_op", 10, 20),
          X("cudaLaunchKernel", "cuda_runtime", 12, 3),
          {"ph": "s", "id": 9, "pid": 1, "tid": 1, "ts": 12, "cat": "ac2g", "name": "ac2g"},
          X("copy_kernel", "kernel", 40, 10, pid=0, tid=7, device=0),
          {"ph": "f", "id": 9, "pid": 0, "tid": 7, "ts": 40, "cat": "ac2g", "name": "ac2g", "bp": "e"},
          X("DataParallel.forward", "user_annotation", 5, 80)]
    a = analyze([write(tmp_path, "flows.json", {"traceEvents": ev})])
    (step,) = a.steps
    assert step.dp_phase_gpu_us["dp_scatter"] == pytest.approx(10.0)
    assert step.categories_us["dp_scatter"] == pytest.approx(10.0)  # GPU transfer only
    assert step.dp_host_us["dp_scatter"] == pytest.approx(20.0)  # the Scatter op on the host
    assert "unlinked_gpu_events" not in {w.code for w in a.warnings}


def test_collective_args_stay_on_their_rows_when_outliers_are_skipped(tmp_path: Path) -> None:
    """Skipping an absurd event renumbers the rows: the sparse collective args must follow them."""
    from tests.conftest import FIXTURES

    doc = json.loads(gzip.decompress(FIXTURES["ddp1_nccl_rank0"].read_bytes()))
    doc["traceEvents"].insert(0, X("aten::add", "cpu_op", 1e300, 1.0))
    rt = load_trace(write(tmp_path, "t.json", doc))
    assert len(rt.extras.coll_row) > 0
    assert {rt.names[rt.name_id[r]] for r in rt.extras.coll_row} == {"record_param_comms"}
    assert rt.extras.coll["collective"][0] == "broadcast"
