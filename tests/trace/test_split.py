"""The streaming split (cut the text at newline separators while reading) against the slow split (one Raw
view per event): same columns for every shape of file, streamed or not; gunzip; DP phase spans."""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dpprof.errors import TraceError
from dpprof.trace import classify as C
from dpprof.trace import decode as D
from dpprof.trace import inflate
from dpprof.trace.columns import ROW_COLUMNS
from dpprof.trace.link import HOST_KINDS, dp_phase_spans, find_launchers, host_class
from dpprof.trace.load import RankTrace, load_trace


def _events(n: int) -> list[dict[str, Any]]:
    """n launches: a cpu op, its runtime call and kernel, with nested args (lists of objects) and a flow."""
    ev: list[dict[str, Any]] = [{"ph": "X", "cat": "user_annotation", "name": "ProfilerStep#1", "pid": 1,
                                 "tid": 1, "ts": 0.0, "dur": 10.0 * n + 50, "args": {"External id": 0}}]
    for i in range(n):
        t = 10.0 * i
        ev += [
            {"ph": "X", "cat": "cpu_op", "name": f"aten::op{i % 7}", "pid": 1, "tid": 1 + i % 2, "ts": t,
             "dur": 5.0, "args": {"External id": i + 1, "Nested": [{"a": i}, {"b": [1, {"c": 2}]}]}},
            {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 1, "tid": 1 + i % 2,
             "ts": t + 1, "dur": 2.0, "args": {"correlation": 1000 + i, "External id": i + 1}},
            {"ph": "s", "id": 1000 + i, "pid": 1, "tid": 1 + i % 2, "ts": t + 1, "cat": "ac2g", "name": "ac2g"},
            {"ph": "X", "cat": "kernel", "name": f"kernel_{i % 5}", "pid": 0, "tid": 7, "ts": t + 4,
             "dur": 3.0, "args": {"device": 0, "stream": 7, "correlation": 1000 + i}},
        ]
    return ev


def _doc(n: int = 300) -> dict[str, Any]:
    return {"schemaVersion": 1, "distributedInfo": {"rank": 0, "world_size": 2, "backend": "nccl"},
            "baseTimeNanoseconds": 1_700_000_000_000_000_000, "traceEvents": _events(n),
            "traceName": "x"}


def _slow(path: Path, monkeypatch: pytest.MonkeyPatch) -> RankTrace:
    def refuse(*_: Any) -> Any:
        raise D.NotStreamable
        yield  # a generator, like the real one

    with monkeypatch.context() as m:
        m.setattr(D, "split_stream", refuse)
        return load_trace(path)


def _same(a: RankTrace, b: RankTrace) -> None:
    for k in ROW_COLUMNS:
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k), err_msg=k)
    assert (a.names, a.tids, a.events, a.skipped, a.tolerant) == (b.names, b.tids, b.events, b.skipped, b.tolerant)
    assert (a.rank, a.world_size, a.base_time_ns) == (b.rank, b.world_size, b.base_time_ns)


def _decoded_streamed(path: Path) -> bool:
    return all(last or D.decode_chunk(buf)[0] is not None for last, buf in D.split_stream(path))


def _chunks(path: Path) -> int:
    return sum(not last for last, _ in D.split_stream(path))


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(D, "CHUNK_BYTES", 2048)
    monkeypatch.setattr(D, "PIECE_BYTES", 700)


@pytest.mark.parametrize("indent", [2, 1, "\t"])
@pytest.mark.parametrize("gz", [False, True])
def test_streamed_equals_slow_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_chunks: None,
                                   indent: Any, gz: bool) -> None:
    data = json.dumps(_doc(), indent=indent).encode()
    path = tmp_path / ("t.json.gz" if gz else "t.json")
    path.write_bytes(gzip.compress(data) if gz else data)
    assert _chunks(path) > 20  # really streamed
    rt = load_trace(path)
    assert _decoded_streamed(path)  # every cut fell between two events (none inside nested args)
    _same(rt, _slow(path, monkeypatch))
    assert len(rt.ts) == 1 + 3 * 300 and not rt.tolerant


def test_minified_and_crlf_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_chunks: None) -> None:
    mini = tmp_path / "mini.json"
    mini.write_bytes(json.dumps(_doc(), separators=(",", ":")).encode())
    with pytest.raises(D.NotStreamable):
        _chunks(mini)
    _same(load_trace(mini), _slow(mini, monkeypatch))
    crlf = tmp_path / "crlf.json"
    crlf.write_bytes(json.dumps(_doc(), indent=2).replace("\n", "\r\n").encode())
    assert _chunks(crlf) > 20
    _same(load_trace(crlf), _slow(crlf, monkeypatch))


def test_bad_event_in_a_streamed_chunk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_chunks: None) -> None:
    doc = _doc()
    doc["traceEvents"][500]["ts"] = "4000"  # a number written as a string: that chunk goes tolerant
    doc["traceEvents"][600]["dur"] = -1.0  # skipped and counted
    path = tmp_path / "t.json"
    path.write_text(json.dumps(doc, indent=2))
    rt = load_trace(path)
    _same(rt, _slow(path, monkeypatch))
    assert rt.tolerant and rt.skipped == 1


def test_nested_or_second_trace_events_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           small_chunks: None) -> None:
    nested = {"meta": {"traceEvents": _events(50)}, **_doc()}
    p1 = tmp_path / "nested.json"
    p1.write_text(json.dumps(nested, indent=2))
    with pytest.raises(D.NotStreamable):
        _chunks(p1)
    _same(load_trace(p1), _slow(p1, monkeypatch))
    text = json.dumps(_doc(), indent=2)  # a second top-level key after the first: msgspec keeps the last
    p2 = tmp_path / "twice.json"
    p2.write_text(text[:-2] + ',\n  "traceEvents": [\n  ' + json.dumps(_events(3)[1]) + "\n  ]\n}")
    rt = load_trace(p2)
    _same(rt, _slow(p2, monkeypatch))
    assert len(rt.ts) == 1


@pytest.mark.parametrize("isal", [True, False])
def test_gunzip_multi_member_and_truncated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isal: bool) -> None:
    if not isal:  # the package must work without python-isal: zlib streams the same way
        monkeypatch.setattr(inflate, "_ZLIB", zlib)
    big = tmp_path / "big.json.gz"
    big.write_bytes(gzip.compress(json.dumps(_doc(3000), indent=2).encode()))
    assert _chunks(big) > 1 and len(load_trace(big).ts) == 1 + 3 * 3000
    text = json.dumps(_doc(20), indent=2).encode()
    two = tmp_path / "two.json.gz"
    two.write_bytes(gzip.compress(text[:1000]) + gzip.compress(text[1000:]))
    assert D.read_bytes(two) == text
    assert len(load_trace(two).ts) == 1 + 3 * 20
    cut = tmp_path / "cut.json.gz"
    cut.write_bytes(gzip.compress(text)[:-100])
    with pytest.raises(TraceError, match="cut.json.gz: truncated gzip file"):
        load_trace(cut)


def _spans_reference(rt: RankTrace, hcls: np.ndarray, launcher: np.ndarray) -> list[tuple[float, float, int]]:
    """The replicate windows as first written: whole-array masks per DataParallel.forward."""
    out = []
    launch_rows = np.unique(launcher[launcher >= 0])
    rep = rt.names.index("dpprof::dp_replicate") if "dpprof::dp_replicate" in rt.names else -2
    for f in np.flatnonzero(hcls == C.C_DP_FORWARD).tolist():
        f0, f1, ftid = rt.ts[f], rt.ts[f] + rt.dur[f], rt.tid[f]
        inside = (rt.ts >= f0) & (rt.ts < f1) & (rt.tid == ftid)
        if np.any(inside & (hcls == C.C_DP_BROADCAST) & (rt.name_id == rep)):
            continue
        bcast = np.flatnonzero(inside & (hcls == C.C_DP_BROADCAST))
        if len(bcast) == 0:
            continue
        b0, b_end = rt.ts[bcast[0]], float(np.max(rt.ts[bcast] + rt.dur[bcast]))
        marker = np.flatnonzero(inside & (hcls == C.C_DP_PARALLEL_APPLY))
        if len(marker):
            w_end = float(rt.ts[marker[0]])
        else:
            others = np.setdiff1d(np.unique(rt.tid[launch_rows]), [ftid])
            first = np.flatnonzero(np.isin(rt.tid, others) & np.isin(rt.kind, HOST_KINDS)
                                   & (rt.ts >= b_end) & (rt.ts < f1))
            w_end = float(np.min(rt.ts[first])) if len(first) else b_end
        out.append((float(b0), max(w_end, b_end), int(ftid)))
    return out


@pytest.mark.parametrize("name", ["dp_dup00", "dp_1dev"])
def test_dp_phase_spans_match_reference(h200: dict[str, Path], name: str) -> None:
    rt = load_trace(h200[name])
    _, cpu_cls = C.classify_names(rt.names)
    hcls = host_class(rt, np.array(cpu_cls, dtype=np.int16))
    gpu, launcher = find_launchers(rt)
    spans = dp_phase_spans(rt, hcls, gpu, launcher)
    want = _spans_reference(rt, hcls, launcher)
    n = spans.synthetic_replicate
    k = len(spans.start) - n  # the inferred windows come after the op/marker spans
    got = list(zip(spans.start[k:].tolist(), spans.end[k:].tolist(), spans.tid[k:].tolist(), strict=True))
    assert n == len(want) and got == want
    assert n > 0 or name == "dp_1dev"


def test_dp_phase_spans_markers_and_threads(tmp_path: Path) -> None:
    """Forwards with a parallel_apply marker, with dpprof's replicate marker, and without either (the first
    host event of another launching thread ends replicate; a thread that launches nothing does not)."""
    def x(name: str, cat: str, ts: float, dur: float, tid: int, **args: Any) -> dict[str, Any]:
        return {"ph": "X", "cat": cat, "name": name, "pid": 1, "tid": tid, "ts": ts, "dur": dur, "args": args}

    ev: list[dict[str, Any]] = []
    corr = 0
    for step, kind in enumerate(["plain", "marker", "replicate", "plain"]):
        t = 1000.0 * step
        ev += [x("DataParallel.forward", "user_annotation", t, 500, 1), x("Broadcast", "cpu_op", t + 10, 20, 1),
               x("Broadcast", "cpu_op", t + 40, 30, 1), x("aten::pin", "cpu_op", t + 75, 5, 9)]
        if kind == "marker":
            ev.append(x("dpprof::dp_parallel_apply", "user_annotation", t + 90, 300, 1))
        if kind == "replicate":
            ev.append(x("dpprof::dp_replicate", "user_annotation", t + 5, 70, 1))
        for tid, t0 in ((2, t + 100), (3, t + 95)):  # replica threads launch kernels
            corr += 1
            ev += [x("aten::conv", "cpu_op", t0, 50, tid),
                   x("cudaLaunchKernel", "cuda_runtime", t0 + 5, 3, tid, correlation=corr),
                   {"ph": "X", "cat": "kernel", "name": "k", "pid": 0, "tid": 7, "ts": t0 + 10, "dur": 5,
                    "args": {"device": 0, "correlation": corr}}]
    path = tmp_path / "dp.json"
    path.write_text(json.dumps({"traceEvents": ev}, indent=2))
    rt = load_trace(path)
    _, cpu_cls = C.classify_names(rt.names)
    hcls = host_class(rt, np.array(cpu_cls, dtype=np.int16))
    gpu, launcher = find_launchers(rt)
    spans = dp_phase_spans(rt, hcls, gpu, launcher)
    k = len(spans.start) - spans.synthetic_replicate
    got = list(zip(spans.start[k:].tolist(), spans.end[k:].tolist(), strict=True))
    assert got == [(10.0, 95.0), (1010.0, 1090.0), (3010.0, 3095.0)]
    assert got == [(a, b) for a, b, _ in _spans_reference(rt, hcls, launcher)]
