"""NVML reader and merge-nvml on run directories built from the real H200 traces."""

from __future__ import annotations

import gzip
import json
import shutil
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dpprof import cli
from dpprof.errors import DpprofError
from dpprof.trace.nvml_merge import COUNTERS, format_us, merge_run, merge_run_detailed
from dpprof.trace.nvml_samples import CLOCK_EVENT_BITS, clock_events, read_nvml

COUNTER_NAMES = {name: key for key, name in COUNTERS}


def main(argv: list[str]) -> int:
    """The real CLI entry point, with only this subcommand registered (others may not exist yet)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli, "COMMANDS", {"merge-nvml": cli.COMMANDS["merge-nvml"]})
        return cli.main(argv)


def load(path: Path) -> dict[str, Any]:
    return json.loads(gzip.decompress(path.read_bytes()))


def span_ns(trace: dict[str, Any]) -> tuple[int, int, int]:
    """(base ns, first and last instant in ns relative to base), computed the plain way."""
    timed = [e for e in trace["traceEvents"] if e.get("ph") != "M" and isinstance(e.get("ts"), (int, float))]
    start = min(Decimal(str(e["ts"])) for e in timed)
    end = max(Decimal(str(e["ts"])) + Decimal(str(e.get("dur", 0))) for e in timed)
    return trace["baseTimeNanoseconds"], int(start * 1000), int(end * 1000)


def sample(t_ns: int, cuda: int, util: int, power: int | None = 200_000) -> dict[str, Any]:
    return {"type": "sample", "t_ns": t_ns, "nvml_index": cuda, "cuda_index": cuda, "util_gpu_pct": util,
            "util_mem_pct": 7, "mem_used_bytes": 3 * 2**30, "power_mw": power, "sm_clock_mhz": 1980,
            "pcie_tx_kbps": None, "pcie_rx_kbps": None}


def write_nvml(path: Path, host: str, rows: list[dict[str, Any]]) -> None:
    header = {"type": "header", "host": host, "period_ms": 5, "gpus": [
        {"nvml_index": i, "cuda_index": i, "uuid": f"GPU-{i}", "name": "NVIDIA H200"} for i in (0, 1)]}
    path.write_text("".join(json.dumps(r) + "\n" for r in [header, *rows]))


def make_run(tmp_path: Path, traces: dict[str, Path]) -> Path:
    run = tmp_path / "run"
    (run / "traces").mkdir(parents=True)
    for name, src in traces.items():
        shutil.copy(src, run / "traces" / name)
    return run


def samples_over(base: int, start: int, end: int, cuda: int, util: int) -> tuple[list[dict[str, Any]], int]:
    """Samples every 5 ms across [start, end] (relative ns) plus 3 outside it; the in-range count."""
    inside = [sample(base + t, cuda, util + k % 3) for k, t in enumerate(range(start, end + 1, 5_000_000))]
    inside.append(sample(base + end, cuda, util, power=None))  # exactly at the end: in, without power
    outside = [sample(base + start - 1, cuda, 1), sample(base + end + 1, cuda, 1), sample(base - 10**10, cuda, 1)]
    return inside + outside, len(inside)


def test_merge_single_trace(tmp_path: Path, h200: dict[str, Path]) -> None:
    run = make_run(tmp_path, {"rank0.1.pt.trace.json.gz": h200["single_vgg16cifar"]})
    original = load(h200["single_vgg16cifar"])
    base, start, end = span_ns(original)
    rows, n_in = samples_over(base, start, end, cuda=0, util=40)
    rows += [sample(base + start + 1000, 1, 99)]  # GPU 1 has no activity in this trace: not merged
    write_nvml(run / "nvml.hostA.jsonl", "hostA", rows)

    paths = merge_run(run)
    assert paths == [run / "merged" / "rank0.1.pt.trace.json.gz"]
    merged = load(paths[0])  # valid JSON
    counters = [e for e in merged["traceEvents"] if e.get("ph") == "C"]
    others = [e for e in merged["traceEvents"] if e.get("ph") != "C"]
    assert others == original["traceEvents"]
    assert {k: v for k, v in merged.items() if k != "traceEvents"} == \
        {k: v for k, v in original.items() if k != "traceEvents"}
    # one counter event per in-range sample per field NVML could read (5 fields; one sample lacks power)
    assert len(counters) == n_in * 5 - 1
    assert all(e["pid"] == 0 for e in counters)  # the pid of "GPU 0", where the kernels are
    for e in counters:
        (key, value), = e["args"].items()
        assert COUNTER_NAMES[e["name"]] == key
        assert isinstance(value, (int, float)) and not isinstance(value, bool)
        assert start <= Decimal(str(e["ts"])) * 1000 <= end
    util = sorted((e["ts"], e["args"]["util_gpu_pct"]) for e in counters if "util_gpu_pct" in e["args"])
    assert len(util) == n_in and 99 not in [v for _, v in util] and 1 not in [v for _, v in util][:-1]
    # ts text: integer ns arithmetic, 3 decimals, as torch writes it
    text = gzip.decompress(paths[0].read_bytes()).decode()
    first_ts = f"{(start) // 1000}.{start % 1000:03d}"
    assert f'"ts": {first_ts}, "args": {{"util_gpu_pct": 40}}' in text


def test_merged_ranks_still_read_by_hta(tmp_path: Path, h200: dict[str, Path]) -> None:
    pytest.importorskip("hta")
    from hta.trace_analysis import TraceAnalysis

    run = make_run(tmp_path, {"rank0.1.pt.trace.json.gz": h200["ddp2_gloo_rank0"],
                              "rank1.1.pt.trace.json.gz": h200["ddp2_gloo_rank1"]})
    rows: list[dict[str, Any]] = []
    for name in ("ddp2_gloo_rank0", "ddp2_gloo_rank1"):
        base, start, end = span_ns(load(h200[name]))
        rows += samples_over(base, start, end, cuda=0, util=50)[0]
    write_nvml(run / "nvml.hostA.jsonl", "hostA", sorted(rows, key=lambda r: r["t_ns"]))
    results, _ = merge_run_detailed(run)
    assert [r.rank for r in results] == [0, 1] and all(r.counters > 0 for r in results)
    for r in results:  # torch's `"rank": N` line survives, so HTA's line regex still finds it
        assert f'"rank": {r.rank},' in gzip.decompress(r.output.read_bytes()).decode()
    plain = TraceAnalysis(trace_dir=str(run / "traces"))
    merged = TraceAnalysis(trace_dir=str(run / "merged"))
    assert sorted(merged.t.get_ranks()) == [0, 1]
    for rank in (0, 1):
        assert len(merged.t.get_trace(rank)) == len(plain.t.get_trace(rank))
    a = plain.get_temporal_breakdown(visualize=False)
    b = merged.get_temporal_breakdown(visualize=False)
    assert a.equals(b)


def test_rank_to_node_from_node_files(tmp_path: Path, h200: dict[str, Path]) -> None:
    run = make_run(tmp_path, {"rank0.1.pt.trace.json.gz": h200["ddp2_gloo_rank0"],
                              "rank1.1.pt.trace.json.gz": h200["ddp2_gloo_rank1"]})
    for rank, node in ((0, "hostA"), (1, "hostB")):
        base, start, end = span_ns(load(h200[f"ddp2_gloo_rank{rank}"]))
        write_nvml(run / f"nvml.{node}.jsonl", node, samples_over(base, start, end, 0, util=10 * (rank + 1))[0])
    (run / "nodes").mkdir()
    # rank 1 ran on the node whose file sorts first: the rule must follow the node files, not the order
    (run / "nodes" / "hostA.json").write_text(json.dumps({"host": "hostA", "ranks": [1],
                                                           "nvml_file": "nvml.hostB.jsonl"}))
    (run / "nodes" / "hostB.json").write_text(json.dumps({"host": "hostB", "ranks": [0],
                                                           "nvml_file": "nvml.hostA.jsonl"}))
    results, _ = merge_run_detailed(run)
    assert [(r.rank, r.node) for r in results] == [(0, "hostA"), (1, "hostB")]
    for r in results:
        utils = {e["args"]["util_gpu_pct"] for e in load(r.output)["traceEvents"]
                 if e.get("ph") == "C" and "util_gpu_pct" in e["args"]}
        assert utils == {10 * (r.rank + 1) + k for k in range(3)}


def test_rank_to_node_from_manifest(tmp_path: Path, h200: dict[str, Path]) -> None:
    run = make_run(tmp_path, {"rank0.1.pt.trace.json.gz": h200["ddp2_gloo_rank0"],
                              "rank1.1.pt.trace.json.gz": h200["ddp2_gloo_rank1"]})
    for node in ("h-node0", "h-node1"):
        base, start, end = span_ns(load(h200["ddp2_gloo_rank0"]))
        write_nvml(run / f"nvml.{node}.jsonl", "h", samples_over(base, start, end, 0, util=5)[0])
    (run / "manifest.json").write_text(json.dumps({"config": {"nproc": 1}, "nodes": [
        {"host": "h", "node_rank": 0, "file": "nodes/h-node0.json"},
        {"host": "h", "node_rank": 1, "file": "nodes/h-node1.json"}]}))
    results, _ = merge_run_detailed(run)
    assert [(r.rank, r.node) for r in results] == [(0, "h-node0"), (1, "h-node1")]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["files"]["merged"] == ["merged/rank0.1.pt.trace.json.gz", "merged/rank1.1.pt.trace.json.gz"]
    assert manifest["config"] == {"nproc": 1}  # the rest kept


def test_unplaced_rank_and_no_samples_in_span(tmp_path: Path, h200: dict[str, Path]) -> None:
    run = make_run(tmp_path, {"rank0.1.pt.trace.json.gz": h200["ddp2_gloo_rank0"],
                              "rank1.1.pt.trace.json.gz": h200["ddp2_gloo_rank1"]})
    base, start, _ = span_ns(load(h200["ddp2_gloo_rank0"]))
    for node in ("a", "b"):  # two nodes, nothing saying which rank ran where; samples long before
        write_nvml(run / f"nvml.{node}.jsonl", node, [sample(base + start - 10**9, 0, 3)])
    results, _ = merge_run_detailed(run)
    assert all(r.counters == 0 and "no rule" in r.warnings[0] for r in results)
    assert gzip.decompress(results[0].output.read_bytes()) == \
        gzip.decompress((run / "traces" / "rank0.1.pt.trace.json.gz").read_bytes())
    (run / "nvml.b.jsonl").unlink()
    results, _ = merge_run_detailed(run)
    assert all(r.counters == 0 and r.samples_out_of_range == 1 and "time span" in r.warnings[0]
               for r in results)


def test_errors_are_one_line(tmp_path: Path, h200: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run(tmp_path, {"rank0.1.pt.trace.json.gz": h200["single_vgg16cifar"]})
    with pytest.raises(DpprofError, match="no NVML samples"):
        merge_run(run)
    (run / "nvml.h.jsonl").write_text(json.dumps({"type": "header", "host": "h", "available": False,
                                                  "warnings": ["NVML unavailable: no driver"]}) + "\n")
    assert main(["merge-nvml", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "NVML unavailable: no driver" in err
    assert main(["merge-nvml", str(tmp_path / "missing")]) == 2
    (run / "traces" / "rank0.1.pt.trace.json.gz").write_bytes(gzip.compress(b'{"traceEvents": [1, '))
    write_nvml(run / "nvml.h.jsonl", "h", [sample(1, 0, 1)])
    assert main(["merge-nvml", str(run)]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_cli_prints_what_it_wrote(tmp_path: Path, h200: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run(tmp_path, {"rank0.1.pt.trace.json.gz": h200["dp_1dev"]})
    base, start, end = span_ns(load(h200["dp_1dev"]))
    rows, n_in = samples_over(base, start, end, 0, util=30)
    write_nvml(run / "nvml.h.jsonl", "h", rows)
    assert main(["merge-nvml", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"{n_in * 5 - 1} counter events from {n_in} samples of h (GPU 0)" in out
    first = (run / "merged" / "rank0.1.pt.trace.json.gz").read_bytes()
    assert main(["merge-nvml", str(run)]) == 0  # deterministic: same bytes again
    assert (run / "merged" / "rank0.1.pt.trace.json.gz").read_bytes() == first


@pytest.mark.parametrize(("ns", "text"), [(0, "0.000"), (1, "0.001"), (1234567, "1234.567"), (-1500, "-1.500"),
                                          (4939957428125970, "4939957428125.970")])
def test_format_us(ns: int, text: str) -> None:
    assert format_us(ns) == text


def test_reader_tolerates_garbage_and_cut_short_line(tmp_path: Path) -> None:
    path = tmp_path / "nvml.n1.jsonl"
    good = [sample(3_000, 0, 30), sample(1_000, 0, 10), sample(2_000, 1, 20, power=None)]
    text = json.dumps({"type": "header", "host": "machine", "gpus": [{"nvml_index": 0, "cuda_index": 0,
                                                                      "uuid": "GPU-x", "name": "H200"}],
                       "warnings": ["w1"]}) + "\n"
    text += json.dumps(good[0]) + "\nnot json\n[1, 2]\n" + json.dumps({"type": "sample"}) + "\n"
    text += json.dumps(good[1]) + "\n" + json.dumps({"type": "warning", "t_ns": 5, "message": "w1"}) + "\n"
    text += json.dumps({"type": "warning", "t_ns": 6, "message": "w2"}) + "\n"
    text += json.dumps(good[2]) + "\n" + json.dumps(sample(4_000, 0, 40))[:25]  # killed mid-line
    path.write_text(text)
    data = read_nvml(tmp_path)
    f, = data.files
    assert (f.node, f.host, f.bad_lines, f.truncated, f.samples) == ("n1", "machine", 3, True, 3)
    assert f.warnings == ("w1", "w2")
    g0, g1 = data.gpus
    assert g0.label == "n1:0" and g0.uuid == "GPU-x" and g0.name == "H200"
    assert g0.t_ns.dtype == np.int64 and g0.t_ns.tolist() == [1_000, 3_000]
    assert g0.fields["util_gpu_pct"].tolist() == [10.0, 30.0]
    assert np.isnan(g1.fields["power_mw"][0]) and np.isnan(g0.fields["pcie_tx_kbps"]).all()
    # a file from before clock event reasons and maximum clocks were recorded
    assert np.isnan(g0.fields["clock_event_reasons"]).all() and g0.sm_clock_max_mhz is None
    assert not clock_events(g0.fields["clock_event_reasons"], "sw_power_cap").any()
    assert data.gpu("n1", 1) is g1 and data.gpu("machine", 0) is g0 and data.gpu("n1", 7) is None
    assert any("3 unreadable" in w for w in data.warnings) and any("cut short" in w for w in data.warnings)


def test_reader_without_files(tmp_path: Path) -> None:
    data = read_nvml(tmp_path)
    assert data.samples == 0 and data.gpus == () and "no NVML samples" in data.warnings[0]
    with pytest.raises(DpprofError):
        read_nvml(tmp_path / "missing")


def test_sampler_output_round_trips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dpprof.collect.nvml import NvmlSampler
    from tests.collect.test_nvml import FakeNvml

    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(n=2))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with NvmlSampler(tmp_path / "nvml.hostA.jsonl", "hostA", period_ms=10) as s:
        deadline = time.monotonic() + 20
        while len(s._costs_ns) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    data = read_nvml(tmp_path)
    assert data.files[0].bad_lines == 0 and not data.files[0].truncated
    g0, g1 = data.gpus
    assert len(g0) == len(g1) == data.files[0].header["polls"] >= 1
    assert set(g1.fields["util_gpu_pct"]) == {11.0} and set(g1.fields["power_mw"]) == {2000.0}
    assert g0.uuid == "GPU-aaaa1111-0000-0000-0000-000000000000"
    assert (g0.sm_clock_max_mhz, g1.sm_clock_max_mhz) == (1980, 1980)
    assert set(g0.fields["clock_event_reasons"]) == {0.0} and set(g1.fields["clock_event_reasons"]) == {1.0}
    assert clock_events(g1.fields["clock_event_reasons"], "gpu_idle").all()


def test_clock_event_reasons_and_max_clock_read_back(tmp_path: Path) -> None:
    header = {"type": "header", "host": "h", "gpus": [
        {"nvml_index": 0, "cuda_index": 0, "uuid": "GPU-0", "name": "H200", "sm_clock_max_mhz": 1980},
        {"nvml_index": 1, "cuda_index": 1, "uuid": "GPU-1", "name": "H200", "sm_clock_max_mhz": None}]}
    reasons = [0x0, 0x4 | 0x20, None, 0x40, 0x1]
    rows = [dict(sample(1000 * (k + 1), 0, 50), clock_event_reasons=r) for k, r in enumerate(reasons)]
    rows.append(dict(sample(1000, 1, 50), clock_event_reasons=0x80))
    (tmp_path / "nvml.h.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [header, *rows]))
    g0, g1 = read_nvml(tmp_path).gpus
    assert (g0.sm_clock_max_mhz, g1.sm_clock_max_mhz) == (1980, None)
    got = g0.fields["clock_event_reasons"]
    assert got[[0, 1, 3, 4]].tolist() == [0.0, 36.0, 64.0, 1.0] and np.isnan(got[2])
    thermal = clock_events(got, "sw_thermal_slowdown", "hw_thermal_slowdown")
    assert thermal.tolist() == [False, True, False, True, False]
    assert clock_events(got, "sw_power_cap").tolist() == [False, True, False, False, False]
    assert clock_events(g1.fields["clock_event_reasons"], "hw_power_brake_slowdown").tolist() == [True]
    with pytest.raises(KeyError):
        clock_events(got, "throttled")


def test_clock_event_bits_are_pynvmls() -> None:
    nv = pytest.importorskip("pynvml")
    names = {"gpu_idle": "GpuIdle", "applications_clocks_setting": "ApplicationsClocksSetting",
             "sw_power_cap": "SwPowerCap", "hw_slowdown": "HwSlowdown", "sync_boost": "SyncBoost",
             "sw_thermal_slowdown": "SwThermalSlowdown", "hw_thermal_slowdown": "HwThermalSlowdown",
             "hw_power_brake_slowdown": "HwPowerBrakeSlowdown", "display_clock_setting": "DisplayClockSetting",
             "board_limit": "BoardLimit", "reliability": "Reliability"}
    assert set(names) == set(CLOCK_EVENT_BITS)
    for ours, theirs in names.items():
        if hasattr(nv, f"nvmlClocksThrottleReason{theirs}"):  # the last two are recent additions
            assert CLOCK_EVENT_BITS[ours] == getattr(nv, f"nvmlClocksThrottleReason{theirs}")
        if hasattr(nv, f"nvmlClocksEventReason{theirs}"):  # older nvidia-ml-py has only the Throttle names
            assert CLOCK_EVENT_BITS[ours] == getattr(nv, f"nvmlClocksEventReason{theirs}")
    assert hasattr(nv, "nvmlClocksThrottleReasonGpuIdle")
