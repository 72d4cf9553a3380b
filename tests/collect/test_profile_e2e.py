"""End to end on the CPU: every strategy with the tiny model, DDP through torchrun (2 gloo processes),
and the run directory read by HTA and the TensorBoard plugin's loader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dpprof.vocabulary import DP_MARKS

from .helpers import FAST, manifest, only_run_dir, profile, steps, trace_json

pytestmark = pytest.mark.slow


def _check_common(run: Path, strategy: str, n_steps: int, ranks: int) -> dict:
    m = manifest(run)
    assert m["schema"] == "dpprof.manifest/1" and m["status"] == "complete" and m["complete"] is True
    assert m["config"]["strategy"] == strategy and m["config"]["model"] == "tiny"
    assert m["config"]["world_size"] == ranks and m["config"]["batch_size"] == 16
    assert m["model_info"]["params"] == 1610 and m["data_info"]["kind"] == "synthetic"
    # one intra-op thread per process on the CPU, whatever the strategy (set in every rank, read by rank 0)
    assert m["config"]["torch_threads"] == m["config"]["threads"] >= 1
    assert m["summary"]["steps"] == n_steps and m["summary"]["step_ms_median"] > 0
    prof = m["profiler"]
    # The run's speed: the same unprofiled steps as the profiler section (8 steps, window 2+1+3: 6, 7)
    assert m["summary"]["median_basis"] == prof["unprofiled_basis"] == "after_window"
    assert m["summary"]["median_steps"] == prof["unprofiled_steps"] == n_steps - 6
    assert m["summary"]["step_ms_median"] == prof["unprofiled_step_ms_median"]
    assert prof["profiled_steps"] == 3 and prof["overhead_ratio"] > 0
    assert prof["overhead_ratio"] == pytest.approx(prof["profiled_step_ms_median"] / prof["unprofiled_step_ms_median"],
                                                   rel=1e-3)
    traces = sorted((run / "traces").iterdir())
    assert [p.name.split(".")[0] for p in traces] == [f"rank{r}" for r in range(ranks)]
    assert m["files"]["traces"] == [f"traces/{p.name}" for p in traces]
    for r in range(ranks):
        recs = steps(run, r)
        assert [s["step"] for s in recs] == list(range(n_steps)) and all(s["rank"] == r for s in recs)
    # NVML: samples, or the sampler's warning that NVML is absent (this machine has no GPU driver)
    nvml = run / m["files"]["nvml"][0]
    header = json.loads(nvml.read_text().splitlines()[0])
    assert header["type"] == "header"
    assert header["available"] or any("NVML" in w for w in m["warnings"])
    node_files = list((run / "nodes").glob("*.json"))
    assert len(node_files) == 1
    assert sorted(json.loads(node_files[0].read_text())["ranks"]) == list(range(ranks))
    return m


def test_single(tmp_path):
    assert profile(["--strategy", "single", "--steps", "8", "--out", str(tmp_path), *FAST]) == 0
    run = only_run_dir(tmp_path)
    assert run.name.startswith("single-tiny-b16-")
    m = _check_common(run, "single", 8, 1)
    assert m["dp_mode"] is None and m["ddp"] is None
    assert m["comm_probe"] == {"measured": False, "reason": "strategy single: no process group", "backend": None,
                               "world_size": None}
    data = trace_json(next((run / "traces").iterdir()))
    assert data["distributedInfo"]["rank"] == 0 and data["distributedInfo"]["world_size"] == 1


def test_dp_without_gpu_says_so(tmp_path, capsys):
    assert profile(["--strategy", "dp", "--steps", "8", "--out", str(tmp_path), *FAST]) == 0
    run = only_run_dir(tmp_path)
    m = _check_common(run, "dp", 8, 1)
    assert m["dp_mode"] == "no_gpu"
    assert any("calls the module directly" in w for w in m["warnings"])
    assert "DataParallel mode no_gpu" in capsys.readouterr().out
    events = trace_json(next((run / "traces").iterdir()))["traceEvents"]
    names = {e.get("name") for e in events}
    assert "DataParallel.forward" in names
    assert not names & set(DP_MARKS.values())  # no GPU: DP never scatters, so no phase marks


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    assert profile(["--strategy", "ddp", "--nproc", "2", "--steps", "8", "--out", str(out), *FAST]) == 0
    return only_run_dir(out)


def test_ddp_two_gloo_processes_through_torchrun(ddp_run):
    m = _check_common(ddp_run, "ddp", 8, 2)
    assert m["config"]["backend"] == "gloo" and m["config"]["per_rank_batch_size"] == 8
    for r, path in enumerate(sorted((ddp_run / "traces").iterdir())):
        info = trace_json(path)["distributedInfo"]
        assert (info["rank"], info["world_size"], info["backend"]) == (r, 2, "gloo")
    # The tiny model's gradients (1610 fp32 parameters) fit one bucket; DDP rebuilt it after step 1.
    ddp = m["ddp"]
    assert ddp["bucket_sizes_source"] == "rebuilt" and ddp["bucket_sizes_bytes"] == [1610 * 4]
    assert ddp["buckets"] == 1 and ddp["bucket_cap_mb"] == 25.0 and 1 <= ddp["read_after_step"] < 8
    assert (ddp["gradient_as_bucket_view"], ddp["broadcast_buffers"], ddp["static_graph"],
            ddp["find_unused_parameters"]) == (False, True, False, False)
    # the allreduce probe ran before training, over the run's own gloo group
    probe = m["comm_probe"]
    assert probe["measured"] is True and (probe["backend"], probe["world_size"], probe["device"]) == ("gloo", 2, "cpu")
    assert len(probe["sizes_bytes"]) == len(probe["time_us_median"]) >= 3 and min(probe["time_us_median"]) > 0
    assert {"alpha_us", "beta_us_per_byte", "bandwidth_GBps", "fit_residual_rms_us"} <= set(probe)


def test_hta_reads_both_ranks_without_rank_warnings(ddp_run, monkeypatch):
    from hta.common import trace_file
    from hta.trace_analysis import TraceAnalysis

    warned: list[str] = []
    monkeypatch.setattr(trace_file.logger, "warning", lambda msg, *a, **k: warned.append(str(msg)))
    ta = TraceAnalysis(trace_dir=str(ddp_run / "traces"))
    assert sorted(ta.t.traces) == [0, 1]
    # HTA's two rank warnings: a file without a readable rank, two files with the same rank
    assert not [w for w in warned if "distributedInfo" in w or "same rank" in w], warned
    assert any("parse_multiple_ranks" in w for w in warned)  # the patched logger did see HTA's messages


def test_tensorboard_plugin_loader_reads_the_traces_folder(ddp_run, tmp_path):
    from torch_tb_profiler import io
    from torch_tb_profiler.profiler.loader import RunLoader

    run = RunLoader("ddp", str(ddp_run / "traces"), io.Cache(str(tmp_path))).load()
    workers = {key[0] for key in run.profiles}
    assert {"rank0", "rank1"} <= workers, run.profiles.keys()
