"""Launcher behaviour that needs real processes: two nodes through c10d rendezvous on 127.0.0.1, a rank
that dies, and SIGTERM in the middle of a run."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

import psutil
import pytest

from .helpers import FAST, manifest, spawn, steps, trace_json

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(predicate, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError("timed out waiting")


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_two_nodes_write_one_run_directory(tmp_path):
    port = _free_port()
    common = ["--strategy", "ddp", "--nproc", "1", "--nnodes", "2", "--rdzv-endpoint", f"127.0.0.1:{port}",
              "--rdzv-id", "nodes-test", "--steps", "8", "--out", str(tmp_path), *FAST]
    procs = [spawn([*common, "--node-rank", str(n)]) for n in (0, 1)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    run = tmp_path / "ddp-tiny-b16-nodes-test"
    assert [d.name for d in tmp_path.iterdir()] == [run.name]
    traces = sorted((run / "traces").iterdir())
    assert [p.name.split(".")[0] for p in traces] == ["rank0", "rank1"]
    assert [trace_json(p)["distributedInfo"]["world_size"] for p in traces] == [2, 2]
    m = manifest(run)
    assert m["status"] == "complete" and m["config"]["nnodes"] == 2 and m["config"]["world_size"] == 2
    # both "nodes" run on this host: each gets its own node file and NVML file, none overwritten
    node_files = sorted((run / "nodes").glob("*.json"))
    assert len(node_files) == 2 and len(m["nodes"]) == 2
    assert sorted(json.loads(f.read_text())["ranks"][0] for f in node_files) == [0, 1]
    assert len(m["files"]["nvml"]) == 2
    assert len(steps(run, 0)) == len(steps(run, 1)) == 8


def test_a_dead_rank_is_named_and_the_run_marked_failed(tmp_path):
    proc = spawn(["--strategy", "ddp", "--nproc", "2", "--steps", "100000", "--loss-every", "0",
                  "--out", str(tmp_path), *FAST])
    try:
        _wait_for(lambda: any(_lines(p) > 3 for p in tmp_path.glob("*/steps.rank1.jsonl")), 120)
        victim = next(c for c in psutil.Process(proc.pid).children(recursive=True)
                      if c.environ().get("RANK") == "1" and "dpprof.collect.worker" in " ".join(c.cmdline()))
        victim.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err
    assert "rank 1 (killed by SIGKILL)" in err
    assert "ChildFailedError" not in err and "Root Cause" not in err, err[-3000:]
    run = next(tmp_path.iterdir())
    m = manifest(run)
    assert m["status"] == "failed" and m["complete"] is False
    assert any("rank 1" in w for w in m["warnings"])


def test_sigterm_mid_run_keeps_the_trace_and_marks_incomplete(tmp_path):
    proc = spawn(["--strategy", "single", "--steps", "100000", "--out", str(tmp_path), *FAST])
    try:
        # the profiler window (steps 2..5) is over once 8 steps are on disk
        _wait_for(lambda: any(_lines(p) >= 8 for p in tmp_path.glob("*/steps.rank0.jsonl")), 120)
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    run = next(tmp_path.iterdir())
    m = manifest(run)
    assert m["status"] == "incomplete" and m["complete"] is False
    assert any("SIGTERM" in w for w in m["warnings"])
    recs = steps(run)
    assert m["summary"]["steps"] == len(recs) >= 8
    assert [r["step"] for r in recs] == list(range(len(recs)))
    (trace,) = (run / "traces").iterdir()
    assert trace_json(trace)["traceEvents"]


def test_ctrl_c_on_a_ddp_run_marks_it_incomplete(tmp_path):
    proc = spawn(["--strategy", "ddp", "--nproc", "2", "--steps", "100000", "--loss-every", "0",
                  "--out", str(tmp_path), *FAST], start_new_session=True)
    try:
        _wait_for(lambda: any(_lines(p) >= 8 for p in tmp_path.glob("*/steps.rank1.jsonl")), 120)
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group
        _, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    run = next(tmp_path.iterdir())
    m = manifest(run)
    assert m["status"] == "incomplete", (m["status"], m["warnings"])
    assert m["summary"]["steps"] >= 8
    assert len(list((run / "traces").iterdir())) == 2
