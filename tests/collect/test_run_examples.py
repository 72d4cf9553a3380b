"""End to end on the CPU: each example of examples/ under ``dpprof run`` (DDP and FSDP with 2 gloo
processes, through dpprof's launcher and through the user's own torchrun), then analysed and reported."""

from __future__ import annotations

import gzip
import importlib.util
import json
import re
from pathlib import Path

import pytest

from dpprof.cli import main as cli

from .run_helpers import EXAMPLES, dpprof_run, load, only_run, step_records, torchrun, without_kineto

pytestmark = pytest.mark.slow
STEPS = ["--steps", "8", "--batch-size", "16", "--log-every", "4"]


def _example_params() -> int:
    spec = importlib.util.spec_from_file_location("examples_common", EXAMPLES / "common.py")
    assert spec is not None and spec.loader is not None
    common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(common)
    return sum(p.numel() for p in common.small_cnn().parameters())


def _trace(path: Path) -> dict:
    with gzip.open(path, "rt") as fh:
        return json.load(fh)


def _check(run: Path, strategy: str, ranks: int, per_rank_batch: int) -> dict:
    """What every example's run directory holds, whatever the strategy."""
    m = load(run / "manifest.json")
    cfg = m["config"]
    assert m["status"] == "complete" and m["script"]["exit_code"] == 0 and m["script"]["error"] is None
    assert (cfg["strategy"], cfg["world_size"], cfg["device"]) == (strategy, ranks, "cpu")
    assert cfg["per_rank_batch_size"] == per_rank_batch and cfg["batch_size"] == per_rank_batch * ranks
    assert {"strategy", "batch_size", "world_size", "device"} <= set(cfg["inferred"])
    assert m["model_info"]["params"] == _example_params()
    assert m["script"]["sha256"] and m["script"]["path"].startswith(str(EXAMPLES))
    assert m["summary"]["steps"] == 8 and m["profiler"]["profiled_steps"] == 3
    traces = sorted((run / "traces").iterdir())
    assert [p.name.split(".")[0] for p in traces] == [f"rank{r}" for r in range(ranks)]
    for r, path in enumerate(traces):
        data = _trace(path)
        assert (data["distributedInfo"]["rank"], data["distributedInfo"]["world_size"]) == (r, ranks)
        assert data["dpprof"]["strategy"] == strategy and data["dpprof"]["source"] == "dpprof run"
        recs = step_records(run, r)
        assert [s["step"] for s in recs] == list(range(8))
        assert [s["step"] for s in recs if s["profiled"]] == [3, 4, 5]  # wait 2, warm-up 1, active 3
        for s in recs:  # global images per second from the inferred global batch
            assert s["images_per_s"] == pytest.approx(per_rank_batch * ranks / (s["wall_ms"] / 1e3), rel=1e-3)
    node = load(next(p for p in (run / "nodes").glob("*.json") if not p.name.startswith(".")))
    assert node["ranks"] == list(range(ranks))
    return m


def _analyse_and_report(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> dict:
    assert cli(["analyze", str(run), "--quiet"]) == 0
    analysis = load(run / "analysis.json")
    page = tmp_path / "report.html"
    assert cli(["report", str(run), "--out", str(page)]) == 0
    assert "<html" in page.read_text(encoding="utf-8")[:500].lower()
    capsys.readouterr()
    return analysis


def test_single_example(tmp_path, capsys):
    proc = dpprof_run(["--out", "t", "--report", str(EXAMPLES / "single.py"), *STEPS], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the script's stdout is its own; dpprof speaks on stderr
    assert re.fullmatch(r"(step \d: loss \d\.\d{3}\n)+", proc.stdout), proc.stdout
    assert "dpprof run: " in proc.stderr and "run: " in proc.stderr and "dpprof" not in proc.stdout
    run = only_run(tmp_path / "t")
    report = re.search(r"^report: (\S+\.html)$", proc.stderr, re.MULTILINE)
    assert report and (tmp_path / report.group(1)).is_file()  # --report: written where dpprof report writes
    assert run.name.startswith("run-single-")
    m = _check(run, "single", 1, 16)
    assert m["dp_mode"] is None and m["ddp"] is None and m["fsdp"] is None
    assert m["inferred"]["batch_size"]["from"].startswith("dim 0 of the first tensor given to the first module")
    analysis = _analyse_and_report(run, tmp_path, capsys)
    assert analysis["strategy"] == "single"


def test_dp_example_without_gpu(tmp_path, capsys):
    proc = dpprof_run(["--out", str(tmp_path / "t"), str(EXAMPLES / "dp.py"), *STEPS])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "DataParallel mode no_gpu" in proc.stderr
    m = _check(only_run(tmp_path / "t"), "dp", 1, 16)
    assert m["dp_mode"] == "no_gpu" and m["config"]["device_ids"] == []
    assert m["inferred"]["strategy"]["from"] == "DataParallel module called in the first step"
    assert m["model_info"]["counted_from"] == "parameters"
    run = only_run(tmp_path / "t")
    names = {e.get("name") for e in _trace(next((run / "traces").iterdir()))["traceEvents"]}
    assert "DataParallel.forward" in names  # no GPU: DP calls the module directly, so no phase marks
    _analyse_and_report(run, tmp_path, capsys)


def test_ddp_example_two_gloo_processes_through_dpprof(tmp_path, capsys):
    proc = dpprof_run(["--nproc", "2", "--out", str(tmp_path / "t"), str(EXAMPLES / "ddp.py"), *STEPS])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(rank 0 of 2)" in proc.stdout
    run = only_run(tmp_path / "t")
    m = _check(run, "ddp", 2, 16)
    assert m["config"]["backend"] == "gloo" and m["config"]["nproc"] == 2
    assert m["command"][:4] == [m["script"]["python"], "-m", "dpprof.run", "--nproc"]
    ddp = m["ddp"]  # the whole small CNN fits DDP's first bucket, rebuilt after the first iteration
    assert ddp["bucket_sizes_source"] == "rebuilt" and ddp["bucket_sizes_bytes"] == [_example_params() * 4]
    for path in sorted((run / "traces").iterdir()):
        assert _trace(path)["distributedInfo"]["backend"] == "gloo"  # written by torch itself
    analysis = _analyse_and_report(run, tmp_path, capsys)
    assert analysis["strategy"] == "ddp" and len(analysis["ranks"]) == 2


def test_fsdp2_example_under_the_users_torchrun(tmp_path, capsys):
    proc = torchrun(["-m", "dpprof.run", "--out", str(tmp_path / "t"), str(EXAMPLES / "fsdp.py"), *STEPS])
    assert proc.returncode == 0, without_kineto(proc.stderr)[-3000:]
    run = only_run(tmp_path / "t")
    # every rank derived the same name from torchrun's run id (a uuid with --standalone)
    assert re.fullmatch(r"run-fsdp-[0-9a-f]{8}", run.name)
    m = _check(run, "fsdp", 2, 16)
    assert m["fsdp"]["api"] == "fully_shard" and m["fsdp"]["units"] == 6 and m["fsdp"]["mesh_shape"] == [2]
    assert m["model_info"]["counted_from"] == "DTensor global sizes"
    launcher = " ".join(m["script"]["launcher_command"])
    assert "torch.distributed.run" in launcher and "-m dpprof.run" in launcher
    assert proc.stderr.count("dpprof run: ") == 1  # rank 0 speaks for the run
    _analyse_and_report(run, tmp_path, capsys)


def test_fsdp1_example_through_dpprof(tmp_path):
    proc = dpprof_run(["--nproc", "2", "--quiet", "--out", str(tmp_path / "t"), str(EXAMPLES / "fsdp.py"),
                       "--fsdp1", *STEPS])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "dpprof" not in without_kineto(proc.stderr)  # --quiet
    m = _check(only_run(tmp_path / "t"), "fsdp", 2, 16)
    assert m["fsdp"] == {"api": "FullyShardedDataParallel", "units": 1, "sharding_strategy": "FULL_SHARD",
                         "mesh_shape": None, "placements": None}
    assert m["model_info"]["counted_from"].startswith("FlatParameter._numels")
