"""Smoke tests of the benchmark scripts at tiny sizes: they must keep working; nothing here is timed
against a target."""

from __future__ import annotations

import collections
import gzip
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.conftest import FIXTURES

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"
sys.path.insert(0, str(BENCH))

import gpu_check_inspect as gci  # noqa: E402
import gpu_check_report as gcr  # noqa: E402
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


# --- make gpu-check (benchmarks/gpu_check*.py, gpu_import.py): the CPU dry run, and its GPU checks on GPU data ---

GOLDEN = REPO / "tests" / "data" / "golden"
#: The checks only a GPU can answer: on the dry run they must say "skipped", never "passed".
GPU_ONLY = {"GPU kernels in the trace", "NVML samples, mapped to CUDA by UUID", "NVML sample cost measured",
            "link bandwidth probe (manifest)", "report: NVML plot", "report: top kernels", "report: link bandwidth",
            "perfetto: kernels and NVML counters", "real NVML", "harness B/A <= 1.03", "NVML B/A <= 1.03",
            "marked DP gradients == nn.DataParallel's, device_ids [0, 0]"}


@pytest.mark.slow
def test_gpu_check_dry_run_end_to_end_with_archive_and_import(tmp_path: Path) -> None:
    """`bash benchmarks/gpu_check.sh --device cpu`: every step runs, GPU-only checks are skipped (not passed),
    the summary, log and one archive land in $OUT, and gpu_import.py unpacks that archive with its README."""
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(BENCH / "gpu_check.sh"), "--device", "cpu"], capture_output=True, text=True,
                          timeout=400, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.log", "gpu_check.tar.gz"]
    summary = json.loads((out / "gpu_check.json").read_text())
    steps = {s["name"]: s for s in summary["steps"]}
    runs = ["single", "dp_nogpu", "ddp1", "run_single", "run_dp", "run_ddp1", "run_fsdp1"]
    assert list(steps) == [*runs, "gradients", "perfetto", "overhead"]
    assert summary["passed"] and summary["counts"]["failed"] == 0
    for name in runs:
        s = steps[name]
        assert s["status"] == "complete" and s["step_ms_median"] > 0 and s["images_per_s_median"] > 0, s
        statuses = {c["name"]: c["status"] for c in s["checks"]}
        assert statuses["dpprof analyze exit 0"] == statuses["dpprof report exit 0"] == "passed"
    checks = [c for s in summary["steps"] for c in s["checks"]]
    gpu = [c for c in checks if c["name"] in GPU_ONLY]
    assert {c["name"] for c in gpu} == GPU_ONLY
    assert all(c["status"] == "skipped" and "no GPU" in c["detail"] for c in gpu), gpu
    assert "skipped (no GPU (CPU dry run))" in proc.stdout and "gpu-check: passed" in proc.stdout
    assert (out / "gpu_check.log").read_text().strip().endswith(proc.stdout.strip().splitlines()[-1])
    archive = out / "gpu_check.tar.gz"
    assert archive.stat().st_size < 2 * 2**20
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        prov = json.load(tar.extractfile("gpu-check/provenance.json"))  # type: ignore[arg-type]
    assert prov["command"] == "bash benchmarks/gpu_check.sh --device cpu" and prov["device"] == "cpu"
    assert prov["versions"]["torch"] and "gpus" in prov["hardware"]
    assert not [n for n in names if n.endswith((".html", "analysis.json"))]
    assert {f"gpu-check/runs/{r}/manifest.json" for r in runs} <= set(names)
    imp = subprocess.run([sys.executable, str(BENCH / "gpu_import.py"), str(archive), "--dest", str(tmp_path / "gpu")],
                         capture_output=True, text=True, timeout=60)
    assert imp.returncode == 2 and imp.stderr.count("\n") == 1 and "--allow-cpu" in imp.stderr
    imp = subprocess.run([sys.executable, str(BENCH / "gpu_import.py"), str(archive), "--dest", str(tmp_path / "gpu"),
                          "--allow-cpu"], capture_output=True, text=True, timeout=60)
    assert imp.returncode == 0, imp.stderr
    dest = tmp_path / "gpu"
    assert sorted(p.name for p in dest.iterdir()) == sorted(["README.md", "overhead.json", "provenance.json",
                                                             "summary.json", *runs])
    readme = (dest / "README.md").read_text()
    assert prov["versions"]["torch"] in readme and "`bash benchmarks/gpu_check.sh --device cpu`" in readme
    assert "| `dp_nogpu` | `dpprof profile --strategy dp --device cpu" in readme
    ana = subprocess.run([sys.executable, "-m", "dpprof.cli", "analyze", str(dest / "ddp1"), "--no-json", "--quiet"],
                         capture_output=True, text=True, timeout=120)
    assert ana.returncode == 0, ana.stderr


def _plan(**kw: object) -> gci.Plan:
    return gci.Plan(**{"name": "x", "kind": "profile", "argv": (), **kw})  # type: ignore[arg-type]


def test_gpu_report_checks_pass_on_gpu_reports_and_fail_on_cpu_ones(tmp_path: Path) -> None:
    gpu = (GOLDEN / "synth_dp4_nvml_run" / "report.html").read_text()
    cpu = (GOLDEN / "cpu_ddp2_tiny_run" / "report.html").read_text()
    status = {c.name: c.status for c in gci.inspect_report(gpu, _plan(), cuda=True)}
    assert status["report: NVML plot"] == status["report: top kernels"] == "passed"
    assert status["report: link bandwidth"] == "failed"  # synthetic: "nothing measured"
    status = {c.name: c.status for c in gci.inspect_report(cpu, _plan(), cuda=True)}
    assert set(status.values()) == {"failed"}
    assert {c.status for c in gci.inspect_report(gpu, _plan(), cuda=False)} == {"skipped"}
    # the link bandwidth table as a report renders a measured probe (dpprof.collect.probe's fields)
    run = tmp_path / "run"
    shutil.copytree(REPO / "tests" / "data" / "cpu" / "ddp2_tiny_run", run)
    m = json.loads((run / "manifest.json").read_text())
    m["link_bandwidth"] = {"h2d_GBps": 55.2, "d2h_GBps": 54.9, "p2p_GBps": {}, "measured": True, "note": "median of 5"}
    (run / "manifest.json").write_text(json.dumps(m))
    html = tmp_path / "r.html"
    proc = subprocess.run([sys.executable, "-m", "dpprof.cli", "report", str(run), "--out", str(html)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    link = gci.inspect_report(html.read_text(), _plan(), cuda=True)[2]
    assert (link.status, link.detail) == ("passed", "h2d 55.2 GB/s, measured yes")
    assert gci.inspect_report(html.read_text(), _plan(kind="run"), cuda=True)[2].status == "skipped"


def test_gpu_run_checks_need_kernels_and_nvml_samples(tmp_path: Path) -> None:
    """On a CPU run directory the GPU checks fail (they are not vacuous); with the H200's real DDP traces
    in its place the kernel check passes."""
    run = tmp_path / "run"
    shutil.copytree(REPO / "tests" / "data" / "cpu" / "ddp2_tiny_run", run)
    plan = _plan(ranks=2)
    status = {c.name: c.status for c in gci.inspect_run(run, plan, cuda=True)[1]}
    assert status["GPU kernels in the trace"] == status["NVML samples, mapped to CUDA by UUID"] == "failed"
    assert status["link bandwidth probe (manifest)"] == "failed" and status["one trace per rank"] == "passed"
    for old, new in zip(sorted((run / "traces").iterdir()), DDP, strict=True):
        old.unlink()
        shutil.copy(new, run / "traces" / f"{old.name.split('.')[0]}.1.pt.trace.json.gz")
    figures, checks = gci.inspect_run(run, plan, cuda=True)
    status = {c.name: c.status for c in checks}
    assert status["GPU kernels in the trace"] == status["one trace per rank"] == "passed"
    assert figures["kernels"] == sum(sum(1 for e in _load(p)["traceEvents"] if e.get("cat") == "kernel") for p in DDP)


def test_gpu_archive_stays_under_its_limit_by_leaving_out_the_largest_traces(tmp_path: Path) -> None:
    work = tmp_path / "work"
    for name in ("a", "b"):
        shutil.copytree(REPO / "tests" / "data" / "cpu" / "ddp2_tiny_run", work / "runs" / name)
    shutil.copy(DDP[0], work / "runs" / "b" / "traces" / "rank0.2.pt.trace.json.gz")  # the largest
    (work / "provenance.json").write_text("{}")
    full = gcr.write_archive(work, tmp_path, ["a", "b"])
    assert full["left_out"] == [] and full["files"] == 1 + 7 + 8
    cut = gcr.write_archive(work, tmp_path, ["a", "b"], limit=full["bytes"] - 100_000)
    assert cut["left_out"] == ["runs/b/traces/rank0.2.pt.trace.json.gz"] and cut["bytes"] <= full["bytes"] - 100_000
    with tarfile.open(tmp_path / gcr.ARCHIVE) as tar:
        assert "gpu-check/runs/b/manifest.json" in tar.getnames()
        assert "gpu-check/runs/b/traces/rank0.2.pt.trace.json.gz" not in tar.getnames()


def test_gpu_import_refuses_what_is_not_its_archive(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tar.gz"
    with tarfile.open(bad, "w:gz") as tar:
        info = tarfile.TarInfo("gpu-check/../../evil")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    plain = tmp_path / "plain.tar.gz"
    plain.write_text("not an archive")
    for path, words in ((bad, "unexpected member"), (plain, "cannot read the archive")):
        proc = subprocess.run([sys.executable, str(BENCH / "gpu_import.py"), str(path), "--dest", str(tmp_path / "d")],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and words in proc.stderr, proc.stderr
    assert not (tmp_path / "d").exists() and not (tmp_path.parent / "evil").exists()


def test_dpprof_reads_and_writes_traces_without_isal(tmp_path: Path) -> None:
    """The GPU image has no python-isal (KINDS.md): analyze and perfetto fall back to zlib."""
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['isal'] = None  # import isal fails\n")
    code = ("import sys; from dpprof.cli import main; import dpprof.trace.inflate as i; import zlib; "
            "assert i._ZLIB is zlib; src, out = sys.argv[1], sys.argv[2]; "
            "sys.exit(main(['analyze', src, '--no-json', '--quiet']) or main(['perfetto', src, '--out', out]))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code, str(REPO / "tests" / "data" / "cpu" / "ddp2_tiny_run"),
                           str(tmp_path / "t.json.gz")], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(json.loads(gzip.open(tmp_path / "t.json.gz", "rt").read())["traceEvents"]) > 100


def test_gpu_check_names_an_unknown_step_in_one_line(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(BENCH / "gpu_check.py"), "--device", "cpu", "--only", "single,dp_00",
                           "--dest", str(tmp_path / "d")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "--only dp_00: no such step (steps: single,dp_nogpu,ddp1," in proc.stderr
    assert not (tmp_path / "d").exists()
