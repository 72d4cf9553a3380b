"""Smoke tests of the benchmark scripts at tiny sizes: they must keep working; nothing here is timed
against a target."""

from __future__ import annotations

import collections
import gzip
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FIXTURES

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"
sys.path.insert(0, str(BENCH))

import make_large_dir as mld  # noqa: E402
from procstats import mean_ci95, measure  # noqa: E402

DDP = [FIXTURES["ddp2_gloo_rank0"], FIXTURES["ddp2_gloo_rank1"]]


def _load(path: Path) -> dict:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return json.load(fh)


def test_repeats_events_with_continuing_steps_and_fresh_ids(tmp_path: Path) -> None:
    src = json.loads(gzip.open(DDP[0], "rt").read())
    one_copy = mld.load_source(DDP[0]).copy_bytes
    info = mld.make_large_dir(tmp_path, ranks=2, rank_mb=3 * one_copy / 1e6, sources=DDP)
    assert [f["copies"] for f in info["files"]] == [3, 3]
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["rank0.1790857026000000000.pt.trace.json", "rank1.1790857026000000000.pt.trace.json"]
    out = _load(tmp_path / names[0])
    src_ev, out_ev = src["traceEvents"], out["traceEvents"]
    once = [e for e in src_ev if e.get("ph") in ("M", "i") or e.get("cat") == "Trace"]
    assert len(out_ev) == 3 * (len(src_ev) - len(once)) + len(once)
    steps = sorted({int(e["name"].split("#")[1]) for e in out_ev if e.get("name", "").startswith("ProfilerStep#")})
    src_steps = sorted({int(e["name"].split("#")[1]) for e in src_ev if e.get("name", "").startswith("ProfilerStep#")})
    assert steps == list(range(src_steps[0], src_steps[0] + 3 * len(src_steps)))
    kernels = [e for e in out_ev if e.get("cat") == "kernel"]
    corr = collections.Counter(e["args"]["correlation"] for e in kernels)
    src_corr = collections.Counter(e["args"]["correlation"] for e in src_ev if e.get("cat") == "kernel")
    assert max(corr.values()) == max(src_corr.values())  # no new collisions across copies
    # Every kernel still has its launching runtime call (same correlation) in the same copy.
    runtime = {e["args"]["correlation"]: e for e in out_ev if e.get("cat") in ("cuda_runtime", "cuda_driver")}
    for k in kernels:
        launch = runtime[k["args"]["correlation"]]
        assert launch["ts"] <= k["ts"]
        assert k["ts"] - launch["ts"] < 1e6  # µs: within one copy, not a copy's span away
    # Later copies are shifted: no event of copy 2 starts before copy 1 ends.
    span = [e for e in out_ev if e.get("cat") == "Trace"][0]
    assert span["dur"] >= max(e["ts"] + e.get("dur", 0) for e in out_ev if e.get("ph") == "X") - span["ts"] - 1


def test_each_rank_has_its_distributed_info_in_torch_spacing(tmp_path: Path) -> None:
    mld.make_large_dir(tmp_path, ranks=3, rank_mb=0.5, sources=[FIXTURES["single_vgg16cifar"]], gzip_level=1)
    files = sorted(tmp_path.iterdir())
    assert [f.name.split(".")[0] for f in files] == ["rank0", "rank1", "rank2"]
    for r, f in enumerate(files):
        assert f.name.endswith(".pt.trace.json.gz")
        text = gzip.open(f, "rt").read()
        # HTA finds the rank with this regex, line by line; compact "rank":0 would be missed.
        assert re.findall(r'"rank":\s+(\d+)', text)[:1] == [str(r)]
        info = json.loads(text)["distributedInfo"]
        assert (info["rank"], info["world_size"]) == (r, 3)


def test_bad_source_is_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "compact.json"
    bad.write_text(json.dumps({"traceEvents": [{"ph": "X", "ts": 1, "dur": 1}]}))
    proc = subprocess.run([sys.executable, str(BENCH / "make_large_dir.py"), str(tmp_path / "o"),
                           "--source", str(bad), "--rank-mb", "1"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "torch's export format" in proc.stderr


def test_hta_reads_generated_ranks(tmp_path: Path) -> None:
    pytest.importorskip("hta")
    mld.make_large_dir(tmp_path, ranks=2, rank_mb=1, sources=DDP)
    code = ("import sys; from hta.trace_analysis import TraceAnalysis; "
            "a = TraceAnalysis(trace_dir=sys.argv[1]); print(sorted(a.t.traces))")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                          timeout=180, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[0, 1]"


def test_analyze_vs_hta_runs_and_writes_json(tmp_path: Path) -> None:
    traces = tmp_path / "traces"
    mld.make_large_dir(traces, ranks=2, rank_mb=1, sources=DDP)
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(BENCH / "analyze_vs_hta.py"), str(traces), "--tools",
                           "dpprof,naive", "--repeat", "1", "--no-stretch", "--json", str(out)],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    for tool in ("dpprof", "naive"):
        r = report["tools"][tool]
        assert r["ok"], r
        assert r["runs"] == 1 and r["peak_rss_bytes_median"] > 10e6 and r["wall_s_median"] > 0
    assert report["ratios"] == {}  # no HTA row: no ratio is claimed
    assert sorted(p.name for p in traces.iterdir()) == [  # nothing written into the trace folder
        "rank0.1790857026000000000.pt.trace.json", "rank1.1790857026000000000.pt.trace.json"]
    assert report["json_bytes"] == sum(f.stat().st_size for f in traces.iterdir())
    assert "naive" in proc.stdout


def test_measure_sums_rss_over_children() -> None:
    # A parent holding ~0 and two children holding 60 MB each: the tree's sum must exceed one child's.
    code = ("import subprocess, sys; c = 'b = bytearray(60_000_000); import time; time.sleep(0.6)'; "
            "ps = [subprocess.Popen([sys.executable, '-c', c]) for _ in range(2)]; [p.wait() for p in ps]")
    r = measure([sys.executable, "-c", code], timeout_s=60)
    assert r.returncode == 0
    assert r.peak_rss_bytes > 120e6
    assert r.wall_s >= 0.6 and r.samples > 5


def test_mean_ci95_brackets_the_mean() -> None:
    m, lo, hi = mean_ci95([1.0, 1.02, 0.98, 1.01, 0.99])
    assert lo < m < hi and abs(m - 1.0) < 1e-12 and hi - lo < 0.05


def _bench(tmp_path: Path, script: str, args: list[str]) -> tuple[dict, str]:
    """Run a benchmark script with --json; (its report, its stdout)."""
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(BENCH / script), *args, "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(out.read_text()), proc.stdout


def _check_pairs(r: dict, pairs: int) -> None:
    assert r["pairs"] == pairs and len(r["ratios"]) == pairs and all(x > 0 for x in r["ratios"])
    lo, hi = r["ratio_ci95"]
    assert lo <= r["ratio_mean"] <= hi


def test_overhead_runs_all_three_comparisons(tmp_path: Path) -> None:
    report, _ = _bench(tmp_path, "overhead.py", ["--model", "tiny", "--batch", "16", "--steps", "2", "--pairs", "2"])
    for name in ("harness", "profiler", "nvml"):
        _check_pairs(report[name], 2)
    assert report["nvml"]["period_ms"] > 0
    assert report["nvml"]["nvml"].startswith(("real NVML", "fake pynvml"))


@pytest.mark.slow
def test_projection_check_runs_end_to_end() -> None:
    """The projection check profiles a 1-process and a 2-process CPU run and prints projected vs measured."""
    proc = subprocess.run([sys.executable, str(BENCH / "projection_check.py"), "--model", "tiny", "--batch", "32",
                           "--steps", "6"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = re.search(r"projected ([\d.]+) ms .* measured ([\d.]+) ms; error (-?[\d.]+) %", proc.stdout)
    assert m, proc.stdout
    projected, measured, error = (float(x) for x in m.groups())
    # the figures are printed to 0.001 ms, the error (to 0.1 %) from the unrounded ones
    assert error == pytest.approx(100 * (projected - measured) / measured, abs=0.1 + 0.1 * (1 + projected / measured) / measured)


def test_hostile_input_script_runs(tmp_path: Path) -> None:
    """benchmarks/hostile_input.py at tiny sizes: every row measured, the bomb and the cut trace refused."""
    out = tmp_path / "h.json"
    proc = subprocess.run([sys.executable, str(BENCH / "hostile_input.py"), "--bomb-mb", "0.05", "--trace-mb", "1",
                           "--ranks", "20", "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["gzip bomb"]["exit"] == 2 and rows["truncated trace (2/3)"]["exit"] == 2
    assert rows["the same trace, whole"]["exit"] == 0 and rows["report, 20-rank steps"]["exit"] == 0


def test_perfetto_merge_runs_and_writes_json(tmp_path: Path) -> None:
    traces = tmp_path / "traces"
    mld.make_large_dir(traces, ranks=2, rank_mb=1, sources=DDP)
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(BENCH / "perfetto_merge.py"), str(traces), "--repeat", "1",
                           "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    runs = report["runs"]
    assert set(runs) == {"analyze (context)", "perfetto", "perfetto --no-host-ops", "perfetto --ranks 0"}
    for name in ("perfetto", "perfetto --no-host-ops", "perfetto --ranks 0"):
        assert runs[name]["peak_rss_bytes_median"] > 10e6 and runs[name]["output_json_bytes"] > 0
    assert runs["perfetto --ranks 0"]["output_json_bytes"] < runs["perfetto"]["output_json_bytes"]
    assert sorted(p.name for p in traces.iterdir()) == [  # nothing written beside the traces
        "rank0.1790857026000000000.pt.trace.json", "rank1.1790857026000000000.pt.trace.json"]


def test_run_overhead_compares_plain_and_dpprof_run_processes(tmp_path: Path) -> None:
    report, stdout = _bench(tmp_path, "run_overhead.py", ["--pairs", "2", "--steps", "13", "--skip", "10",
                                                           "--batch", "16"])
    for kind in ("wall", "cpu"):
        _check_pairs(report[kind], 2)
    # dpprof's step records and the script's own clock time the same steps; its own cost is measured
    assert 0.5 < report["dpprof_record_vs_script_clock_median"] < 2
    assert report["hook_us_median"] > 0 and 0 < report["hook_share_of_step_pct"] < 100
    assert "run wall" in stdout and "run cpu" in stdout
