"""The sweep runner: planning per machine, speedups, resume, failures, the command line, and a real CPU sweep."""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dpprof import sweep
from dpprof.analyze.sweep_model import SweepPoint, SweepResult
from dpprof.rundir import write_json

CPU = {"cuda_devices": 0, "cpus": 2, "host": "h"}
GRID = sweep.Grid(strategies=("dp", "ddp"), gpus=(1, 2), batch_sizes=(32,), workers=(0,), model="tiny", steps=4)


def by_name(planned):
    return {p.point.name: p for p in planned}


def test_plan_on_cpu_runs_dp_no_gpu_path_and_ddp_gloo_processes(tmp_path):
    p = by_name(sweep.plan(GRID, CPU, tmp_path / "runs"))
    assert p["dp-g2-b32-w0"].argv is None and "needs 2 CUDA devices" in p["dp-g2-b32-w0"].point.reason
    assert p["dp-g1-b32-w0"].argv is not None and "no-GPU path" in p["dp-g1-b32-w0"].point.reason
    assert "--gpus" not in p["dp-g1-b32-w0"].argv
    argv = p["ddp-g2-b32-w0"].argv
    assert argv[1:4] == ("-m", "dpprof.cli", "profile")
    assert argv[argv.index("--nproc") + 1] == "2" and argv[argv.index("--run-name") + 1] == "ddp-g2-b32-w0"
    assert argv[argv.index("--steps") + 1] == "4" and argv[argv.index("--model") + 1] == "tiny"


def test_plan_on_gpus_skips_what_the_machine_lacks(tmp_path):
    grid = sweep.Grid(strategies=("dp", "ddp", "single"), gpus=(1, 3, 4), batch_sizes=(64,), workers=(2,))
    p = by_name(sweep.plan(grid, {"cuda_devices": 3}, tmp_path))
    assert p["dp-g3-b64-w2"].argv is not None and p["dp-g3-b64-w2"].argv[-2:] == ("--gpus", "3")
    assert "this machine has 3" in p["dp-g4-b64-w2"].point.reason
    assert "not divisible by 3" in p["ddp-g3-b64-w2"].point.reason
    assert p["single-g1-b64-w2"].argv is not None and p["single-g3-b64-w2"].argv is None


def test_speedup_and_efficiency_are_against_the_one_gpu_point():
    pts = [SweepPoint("ddp", 1, 32, 0, status="done", images_per_s=100.0),
           SweepPoint("ddp", 2, 32, 0, status="done", images_per_s=150.0),
           SweepPoint("ddp", 4, 64, 0, status="done", images_per_s=300.0),  # no 1-GPU point at batch 64
           SweepPoint("dp", 2, 32, 0, status="failed")]
    out = sweep.with_speedups(pts)
    assert out[1].speedup == pytest.approx(1.5) and out[1].scaling_efficiency == pytest.approx(0.75)
    assert out[0].scaling_efficiency == pytest.approx(1.0)
    assert out[2].speedup is None and out[3].speedup is None


def _fake_runner(calls, fail=()):
    """Stands in for `dpprof profile`: writes a run directory with a manifest (figures from the run's name)."""
    def run(argv, log, timeout):
        name = argv[argv.index("--run-name") + 1]
        calls.append(name)
        if name in fail:
            log.write_text("dpprof profile: error: boom\n")
            return 2, "dpprof profile: error: boom"
        gpus = int(name.split("-g")[1].split("-")[0])
        run_dir = Path(argv[argv.index("--out") + 1]) / name
        (run_dir / "traces").mkdir(parents=True)
        write_json(run_dir / "manifest.json", {
            "schema": "dpprof.manifest/1", "summary": {"step_ms_median": 10.0 / gpus, "images_per_s_median": 100.0 * gpus * 0.8 ** (gpus - 1)},
            "epochs": [{"epoch": 0, "train_acc": 0.5, "test_acc": 0.4, "time_s": 2.0, "partial": False},
                       {"epoch": 1, "train_acc": 0.6, "test_acc": 0.5, "time_s": 4.0, "partial": False}]})
        return 0, ""
    return run


def test_run_sweep_writes_json_records_failures_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "reference_categories", lambda run_dir: {"compute": 7.0, "idle": 3.0})
    calls: list[str] = []
    grid = sweep.Grid(strategies=("ddp",), gpus=(1, 2, 4), batch_sizes=(32,), workers=(0,), model="tiny", steps=4)
    r = sweep.run_sweep(grid, tmp_path, machine=CPU, runner=_fake_runner(calls, fail={"ddp-g4-b32-w0"}))
    assert calls == ["ddp-g1-b32-w0", "ddp-g2-b32-w0", "ddp-g4-b32-w0"]
    two = r.point("ddp", 2, 32, 0)
    assert two.status == "done" and two.step_ms_median == 5.0 and two.epoch_time_s == pytest.approx(3.0)
    assert two.epochs == ((0.5, 0.4, 2.0), (0.6, 0.5, 4.0)) and two.categories_us == {"compute": 7.0, "idle": 3.0}
    assert two.speedup == pytest.approx(1.6) and two.scaling_efficiency == pytest.approx(0.8)
    four = r.point("ddp", 4, 32, 0)
    assert four.status == "failed" and "exit code 2" in four.reason and "boom" in four.reason
    on_disk = SweepResult.from_json(json.loads((tmp_path / "sweep.json").read_text()))
    assert on_disk == r
    assert "error" in two.verdicts  # the fake runs have no traces to diagnose: said, not fatal
    calls.clear()
    r2 = sweep.run_sweep(grid, tmp_path, machine=CPU, runner=_fake_runner(calls))
    assert calls == ["ddp-g4-b32-w0"]  # finished points are not run again, the failed one is
    assert r2.point("ddp", 4, 32, 0).status == "done" and r2.point("ddp", 2, 32, 0) == two


def _parse(argv):
    from dpprof.commands import sweep as sweep_command

    p = argparse.ArgumentParser(exit_on_error=False)
    sweep_command.prepare_parser(p)
    return p.parse_args(argv)


def test_command_line_parsing():
    a = _parse(["--strategies", "dp,ddp", "--gpus", "1,2,4", "--batch-sizes", "64,128,256", "--workers", "0,2,4"])
    assert a.strategies == ("dp", "ddp") and a.gpus == (1, 2, 4) and a.batch_sizes == (64, 128, 256)
    with pytest.raises((argparse.ArgumentError, SystemExit)):
        _parse(["--strategies", "dp,foo"])
    with pytest.raises((argparse.ArgumentError, SystemExit)):
        _parse(["--gpus", "1,x"])


def _cli_ready() -> str:
    from dpprof.cli import COMMANDS

    missing = [m for m in COMMANDS.values() if importlib.util.find_spec(m) is None]
    return f"the CLI cannot start yet (missing {', '.join(missing)})" if missing else ""


@pytest.mark.slow
def test_tiny_cpu_sweep_end_to_end(tmp_path):
    if why := _cli_ready():
        pytest.skip(why)
    out = tmp_path / "sw"
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "dpprof.cli", "sweep", "--model", "tiny", "--steps", "4",
                           "--strategies", "dp,ddp", "--gpus", "1,2", "--batch-sizes", "32", "--workers", "0",
                           "--out", str(out), "--no-progress"], capture_output=True, text=True, timeout=240)
    wall = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = SweepResult.from_json(json.loads((out / "sweep.json").read_text()))
    status = {p.name: p.status for p in r.points}
    assert status == {"dp-g1-b32-w0": "done", "dp-g2-b32-w0": "skipped", "ddp-g1-b32-w0": "done",
                      "ddp-g2-b32-w0": "done"}, [p.reason for p in r.points]
    d1, d2 = r.point("ddp", 1, 32, 0), r.point("ddp", 2, 32, 0)
    assert d1.images_per_s > 0 and d2.images_per_s > 0 and d2.epochs
    # the sweep stores the efficiency rounded to 3 decimals
    assert d2.scaling_efficiency == pytest.approx(d2.images_per_s / d1.images_per_s / 2, abs=5e-4)
    assert "analysis failed" not in d2.reason and d2.categories_us
    assert any("needs 2 CUDA devices" in s for s in r.skipped)
    # every finished run diagnosed with the sweep behind it; on the CPU the hyperparameters question stays open
    assert all(set(p.verdicts) == {"data_path", "hardware", "hyperparameters"} for p in r.points if p.status == "done")
    hyper = r.diagnosis["hyperparameters"]
    assert hyper["verdict"] == "inconclusive" and "CPU" in hyper["reason"]
    assert json.loads((out / "runs" / "ddp-g2-b32-w0" / "analysis.json").read_text())["diagnosis"]
    assert (out / "sweep.html").is_file(), proc.stdout
    assert "What the sweep decides" in (out / "sweep.html").read_text()
    print(f"tiny CPU sweep: {wall:.1f} s wall")


def test_total_workers_count_every_loading_process(tmp_path):
    grid = sweep.Grid(strategies=("single", "dp", "ddp"), gpus=(1, 4), batch_sizes=(64,), workers=(0, 2))
    p = {name: pl.point.total_workers for name, pl in by_name(sweep.plan(grid, {"cuda_devices": 4}, tmp_path)).items()}
    # --workers is per process: DDP's 4 ranks each start 2 workers, DP's one process starts 2
    assert p["ddp-g4-b64-w2"] == 8 and p["dp-g4-b64-w2"] == 2 and p["ddp-g1-b64-w2"] == 2
    assert p["single-g1-b64-w2"] == 2 and p["single-g4-b64-w2"] == 2  # skipped points say it too
    assert p["ddp-g4-b64-w0"] == p["dp-g4-b64-w0"] == 0
    assert SweepPoint("fsdp", 8, 64, 3).total_workers == 24


def test_total_workers_from_the_runs_manifest(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "reference_categories", lambda run_dir: {})
    run = tmp_path / "ddp-g2-b32-w2"
    (run / "traces").mkdir(parents=True)
    # a launcher that gave DDP 3 ranks of 1 worker (e.g. through extra arguments): the manifest wins
    write_json(run / "manifest.json", {"schema": "dpprof.manifest/1", "config": {"workers": 1, "world_size": 3},
                                       "summary": {}})
    point = SweepPoint("ddp", 2, 32, 2, status="pending")
    assert point.total_workers == 4 and sweep.measure(point, run).total_workers == 3
    write_json(run / "manifest.json", {"schema": "dpprof.manifest/1", "summary": {}})  # config unknown
    assert sweep.measure(point, run).total_workers == 4


def test_total_workers_in_sweep_json_and_derived_for_older_files():
    pts = (SweepPoint("ddp", 4, 64, 2, status="done", images_per_s=1.0), SweepPoint("dp", 4, 64, 2))
    data = SweepResult(points=pts).to_json()
    assert [p["total_workers"] for p in data["points"]] == [8, 2]
    old = json.loads(json.dumps(data))
    for p in old["points"]:
        del p["total_workers"]  # a sweep.json written before the field existed
    back = SweepResult.from_json(old)
    assert [p.total_workers for p in back.points] == [8, 2] and back == SweepResult.from_json(data)


def _profile_like_runner(calls, fail_times):
    """Like `dpprof profile`: refuses an existing run directory; creates it before failing (as a crash mid-run
    does) the first ``fail_times[name]`` times; writes its output into the log."""
    def run(argv, log, timeout):
        name = argv[argv.index("--run-name") + 1]
        run_dir = Path(argv[argv.index("--out") + 1]) / name
        calls.append(name)
        if run_dir.exists():
            log.write_text(f"dpprof profile: error: {run_dir} already exists\n")
            return 2, f"dpprof profile: error: {run_dir} already exists"
        run_dir.mkdir(parents=True)
        attempt = sum(c == name for c in calls)
        (run_dir / "attempt").write_text(str(attempt))
        log.write_text(f"attempt {attempt}\n")
        if attempt <= fail_times.get(name, 0):
            return 1, "RuntimeError: out of memory"
        (run_dir / "traces").mkdir()
        write_json(run_dir / "manifest.json", {"schema": "dpprof.manifest/1", "summary": {}})
        return 0, ""
    return run


def test_resume_retries_a_failed_point_whose_directory_exists(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "reference_categories", lambda run_dir: {"compute": 1.0})
    grid = sweep.Grid(strategies=("ddp",), gpus=(1,), batch_sizes=(32,), workers=(0,), model="tiny", steps=4)
    calls: list[str] = []
    runner = _profile_like_runner(calls, {"ddp-g1-b32-w0": 2})
    runs = tmp_path / "runs"
    for _attempt in (1, 2):
        r = sweep.run_sweep(grid, tmp_path, machine=CPU, runner=runner)
        point = r.point("ddp", 1, 32, 0)
        assert point.status == "failed" and "out of memory" in point.reason, point.reason
        assert "already exists" not in point.reason
    assert (runs / "ddp-g1-b32-w0.failed-1" / "attempt").read_text() == "1"
    assert (runs / "ddp-g1-b32-w0.failed-1.log").read_text() == "attempt 1\n"
    r = sweep.run_sweep(grid, tmp_path, machine=CPU, runner=runner)
    point = r.point("ddp", 1, 32, 0)
    assert point.status == "done" and "an earlier attempt is in runs/ddp-g1-b32-w0.failed-2" in point.reason
    assert (runs / "ddp-g1-b32-w0" / "attempt").read_text() == "3"
    assert (runs / "ddp-g1-b32-w0.failed-2" / "attempt").read_text() == "2"
    assert (runs / "ddp-g1-b32-w0.log").read_text() == "attempt 3\n"
    assert calls == ["ddp-g1-b32-w0"] * 3


def test_a_v1_sweep_json_is_read_with_its_keys_mapped(tmp_path):
    from dpprof.analyze.sweep_model import SWEEP_SCHEMA, read_sweep

    point = {"strategy": "ddp", "gpus": 2, "batch_size": 32, "workers": 0, "status": "done", "run_dir": None,
             "categories_us": {"compute": 7.0, "allreduce": 3.0, "allreduce_overlapped_us": 2.0, "idle": 1.0}}
    (tmp_path / "sweep.json").write_text(json.dumps({"schema": "dpprof.sweep/1", "points": [point]}))
    r = read_sweep(tmp_path)
    assert SWEEP_SCHEMA == "dpprof.sweep/2" and r.schema == SWEEP_SCHEMA
    assert dict(r.points[0].categories_us) == {"compute": 7.0, "comm": 3.0, "comm_overlapped_us": 2.0, "idle": 1.0}
    assert r.to_json()["schema"] == "dpprof.sweep/2"
    with pytest.raises(ValueError, match="expected 'dpprof.sweep/2'"):
        SweepResult.from_json({"schema": "dpprof.sweep/0", "points": []})


def test_resume_from_a_v1_file_measures_its_done_points_again(tmp_path, monkeypatch):
    grid = sweep.Grid(strategies=("ddp",), gpus=(1,), batch_sizes=(32,), workers=(0,), model="tiny", steps=4)
    run = tmp_path / "runs" / "ddp-g1-b32-w0"
    (run / "traces").mkdir(parents=True)
    write_json(run / "manifest.json", {"schema": "dpprof.manifest/1", "summary": {"images_per_s_median": 50.0}})
    old = {"strategy": "ddp", "gpus": 1, "batch_size": 32, "workers": 0, "status": "done",
           "run_dir": "runs/ddp-g1-b32-w0", "categories_us": {"compute": 7.0, "allreduce": 3.0}}
    (tmp_path / "sweep.json").write_text(json.dumps({"schema": "dpprof.sweep/1", "points": [old]}))
    monkeypatch.setattr(sweep, "reference_categories", lambda run_dir: {"compute": 7.0, "comm": 1.0, "peer_wait": 2.0})
    calls: list[str] = []
    r = sweep.run_sweep(grid, tmp_path, machine=CPU, runner=_profile_like_runner(calls, {}))
    assert calls == []  # kept, not run again
    p = r.point("ddp", 1, 32, 0)
    assert p.status == "done" and dict(p.categories_us) == {"compute": 7.0, "comm": 1.0, "peer_wait": 2.0}
    assert json.loads((tmp_path / "sweep.json").read_text())["schema"] == "dpprof.sweep/2"


def test_the_log_is_never_written_through_a_link_or_into_a_fifo(tmp_path):
    import os

    from dpprof.errors import DpprofError

    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_text("keep")
    log = tmp_path / "runs" / "x.log"
    log.parent.mkdir()
    log.symlink_to(elsewhere)
    argv = [sys.executable, "-c", "print('hello')"]
    with pytest.raises(DpprofError, match="x.log"):
        sweep.run_subprocess(argv, log, 30)
    assert elsewhere.read_text() == "keep"
    log.unlink()
    os.mkfifo(log)
    with pytest.raises(DpprofError, match="FIFO"):  # refused at once, not blocked on
        sweep.run_subprocess(argv, log, 30)
    log.unlink()
    assert sweep.run_subprocess(argv, log, 30) == (0, "hello")
    # runs/ itself a link out of the sweep: refused before anything runs
    grid = sweep.Grid(strategies=("ddp",), gpus=(1,), batch_sizes=(32,), workers=(0,), model="tiny", steps=4)
    other = tmp_path / "other"
    other.mkdir()
    (other / "runs").symlink_to(tmp_path / "runs")
    calls: list[str] = []
    with pytest.raises(DpprofError, match="symbolic link"):
        sweep.run_sweep(grid, other, machine=CPU, runner=_profile_like_runner(calls, {}))
    assert calls == []
