"""Inputs that are not files and outputs that must not be written (issue 12), end to end.

* FIFOs, devices and sockets given as a trace, found in ``traces/`` or standing for a manifest, an NVML or
  a steps file are refused with one line before any read (no hang: each run has a time limit).
* Outputs refuse a FIFO, a device, the command's own input, and links out of a run; ``-`` is stdout.
* A closed stdout pipe is the end of printing, not an error; SIGTERM and SIGINT remove temporary files.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dpprof.cli import main
from tests.data.bad.generate import case_dir

ROOT = Path(__file__).resolve().parents[2]
CONTROL = case_dir("control", Path("/nonexistent")) / "trace.pt.trace.json.gz"


def dpprof(*args: str, timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess[str]:
    """``python -m dpprof.cli ARGS`` in a fresh interpreter; a hang fails the test at ``timeout``."""
    env = {k: v for k, v in os.environ.items() if k != "DPPROF_DEBUG"}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "dpprof.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, **kw)


def one_error(proc: subprocess.CompletedProcess[str], pattern: str) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, (proc.returncode, proc.stderr)
    assert "internal error" not in lines[0] and "Traceback" not in proc.stderr
    assert pattern.lower() in lines[0].lower(), lines[0]
    return lines[0]


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """A copy of the run-directory case ``sidecars_wrong_types`` (trace, manifest, steps, NVML, node)."""
    dst = tmp_path / "run"
    shutil.copytree(case_dir("sidecars_wrong_types", tmp_path), dst)
    return dst


# --- inputs that are not regular files ------------------------------------------------------------------

def test_fifo_as_trace_is_refused_not_opened(tmp_path: Path) -> None:
    fifo = tmp_path / "rank0.pt.trace.json"
    os.mkfifo(fifo)
    one_error(dpprof("analyze", str(fifo)), "FIFO")
    one_error(dpprof("report", str(fifo), "--out", str(tmp_path / "r.html")), "FIFO")
    assert not (tmp_path / "r.html").exists()


def test_device_and_socket_as_trace_are_refused(tmp_path: Path) -> None:
    one_error(dpprof("analyze", "/dev/zero"), "character device")
    sock_path = tmp_path / "s.json"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(sock_path))
        one_error(dpprof("analyze", str(sock_path)), "socket")


def test_fifo_among_the_traces_is_refused(run: Path) -> None:
    os.mkfifo(run / "traces" / "rank1.1.pt.trace.json.gz")
    one_error(dpprof("analyze", str(run), "--no-json"), "rank1.1.pt.trace.json.gz: is a FIFO")
    one_error(dpprof("merge-nvml", str(run)), "FIFO")


def test_fifo_manifest_is_refused(run: Path) -> None:
    (run / "manifest.json").unlink()
    os.mkfifo(run / "manifest.json")
    one_error(dpprof("analyze", str(run), "--no-json"), "manifest.json: is a FIFO")


def test_fifo_sidecars_are_refused_without_blocking(run: Path, tmp_path: Path) -> None:
    """A FIFO for the steps file: the report is written with a note; for the NVML file: merge-nvml refuses."""
    (run / "steps.rank0.jsonl").unlink()
    os.mkfifo(run / "steps.rank0.jsonl")
    out = tmp_path / "r.html"
    proc = dpprof("report", str(run), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "steps.rank0.jsonl: is a FIFO" in out.read_text()
    (run / "nvml.h.jsonl").unlink()
    os.mkfifo(run / "nvml.h.jsonl")
    one_error(dpprof("merge-nvml", str(run)), "nvml.h.jsonl: is a FIFO")


# --- outputs -------------------------------------------------------------------------------------------

def test_output_fifo_device_link_to_device_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "out.json"
    os.mkfifo(fifo)
    one_error(dpprof("analyze", str(CONTROL), "--json", str(fifo)), "FIFO")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    link = tmp_path / "null.json"
    link.symlink_to("/dev/null")
    one_error(dpprof("analyze", str(CONTROL), "--json", str(link)), "character device")
    assert link.is_symlink() and stat.S_ISCHR(os.stat("/dev/null").st_mode)
    one_error(dpprof("report", str(CONTROL), "--out", str(link)), "character device")
    assert link.is_symlink()
    dev = tmp_path / "dev.html"
    try:
        os.mknod(dev, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # /dev/null's numbers
    except (PermissionError, OSError):
        return  # no CAP_MKNOD here: the link to /dev/null above covers devices
    one_error(dpprof("report", str(CONTROL), "--out", str(dev)), "character device")
    assert stat.S_ISCHR(os.lstat(dev).st_mode)


def test_explicit_output_link_is_written_at_its_target(tmp_path: Path) -> None:
    target = tmp_path / "real.json"
    target.write_text("old")
    link = tmp_path / "latest.json"
    link.symlink_to(target)
    assert dpprof("analyze", str(CONTROL), "--json", str(link)).returncode == 0
    assert link.is_symlink() and json.loads(target.read_text())["schema"].startswith("dpprof.analysis/")


def test_output_over_its_own_input_refused(tmp_path: Path, run: Path) -> None:
    trace = tmp_path / "T.json.gz"
    shutil.copy(CONTROL, trace)
    before = trace.read_bytes()
    one_error(dpprof("report", str(trace), "--out", str(trace)), "is an input of this command")
    one_error(dpprof("analyze", str(trace), "--json", str(trace)), "is an input")
    assert trace.read_bytes() == before
    manifest = (run / "manifest.json").read_bytes()
    one_error(dpprof("analyze", str(run), "--json", str(run / "manifest.json")), "is an input")
    assert (run / "manifest.json").read_bytes() == manifest
    other = tmp_path / "copy.json.gz"
    other.symlink_to(trace)  # the same file under another name
    one_error(dpprof("report", str(other), "--out", str(trace)), "is an input")


def test_run_subfolders_never_followed_out_of_the_run(run: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (run / "merged").symlink_to(elsewhere)
    one_error(dpprof("merge-nvml", str(run)), "symbolic link inside the run")
    assert list(elsewhere.iterdir()) == []
    (run / "merged").unlink()
    assert dpprof("merge-nvml", str(run)).returncode == 0
    assert [p.name for p in (run / "merged").iterdir()] == ["rank0.1.pt.trace.json.gz"]
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    (run / "analysis.json").symlink_to(victim)
    one_error(dpprof("analyze", str(run)), "symbolic link inside the run")
    assert victim.read_text() == "keep"


def test_dash_means_stdout(tmp_path: Path) -> None:
    proc = dpprof("analyze", str(CONTROL), "--json", "-", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["schema"].startswith("dpprof.analysis/")  # stdout holds only the JSON
    assert "Per step and GPU" in proc.stderr  # the table went to stderr
    proc = dpprof("report", str(CONTROL), "--out", "-", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.lstrip().lower().startswith("<!doctype html>"), proc.stderr
    assert "report: standard output" in proc.stderr
    assert list(tmp_path.iterdir()) == []  # no file named "-", no reports/ folder


# --- lost output -------------------------------------------------------------------------------------------

def test_closed_stdout_pipe_is_not_an_error(tmp_path: Path) -> None:
    """``dpprof analyze X --json OUT | head`` with head gone before the first line: OUT written, exit 0."""
    out = tmp_path / "a.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.Popen([sys.executable, "-m", "dpprof.cli", "analyze", str(CONTROL), "--json", str(out)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert p.stdout is not None and p.stderr is not None
    p.stdout.close()  # the reader has gone: every write to stdout fails with EPIPE
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 0, err
    assert err == "" and json.loads(out.read_text())["steps"]


SIGNAL_MID_WRITE = """
import os, signal, sys, time
import dpprof.fileio as fileio
real = os.fsync
def fsync(fd):  # the signal arrives while the temporary file is being written
    os.kill(os.getpid(), signal.SIG{sig})
    time.sleep(2)
    real(fd)
fileio.os.fsync = fsync
from dpprof.cli import main
sys.exit(main(["analyze", sys.argv[1], "--json", sys.argv[2]]))
"""


@pytest.mark.parametrize(("sig", "code"), [("TERM", 143), ("INT", 130)])
def test_signal_during_write_removes_the_temporary_file(tmp_path: Path, sig: str, code: int) -> None:
    out = tmp_path / "out" / "a.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", SIGNAL_MID_WRITE.format(sig=sig), str(CONTROL), str(out)],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == code, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert list(out.parent.iterdir()) == [], "temporary file left behind"


def test_jobs_capped_by_files_and_cpus(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    from dpprof.analyze import pipeline

    seen: list[int] = []
    real = pipeline.ProcessPoolExecutor

    def pool(max_workers: int, **kw: Any) -> Any:
        seen.append(max_workers)
        return real(max_workers=max_workers, **kw)

    monkeypatch.setattr(pipeline, "ProcessPoolExecutor", pool)
    folder = case_dir("clock_offsets", tmp_path)  # two rank files
    assert main(["analyze", str(folder), "--jobs", "1000", "--no-json"]) == 0, capsys.readouterr().err
    assert seen and max(seen) <= min(2, pipeline.usable_cpus())


@pytest.mark.parametrize(("affinity", "cpus", "pool"), [({3}, 64, []), ({0, 5}, 1, [2])])
def test_jobs_capped_by_the_cpus_this_process_may_use(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                      affinity: set[int], cpus: int, pool: list[int],
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """The affinity mask (taskset, a container's cpuset), not the machine's count: 1 usable CPU of 64 runs the
    two files in this process; 2 usable where os.cpu_count says 1 gets a pool of 2."""
    from dpprof.analyze import pipeline

    seen: list[int] = []
    real = pipeline.ProcessPoolExecutor

    def make_pool(max_workers: int, **kw: Any) -> Any:
        seen.append(max_workers)
        return real(max_workers=max_workers, **kw)

    monkeypatch.setattr(pipeline, "ProcessPoolExecutor", make_pool)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: affinity, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: cpus)
    assert main(["analyze", str(case_dir("clock_offsets", tmp_path)), "--jobs", "8", "--no-json"]) == 0, \
        capsys.readouterr().err
    assert seen == pool


def test_merge_nvml_places_ranks_without_enumerating_nproc(tmp_path: Path) -> None:
    """A manifest with nproc 10**9 and two NVML files: the node formula is a range, not 10**9 entries."""
    run = tmp_path / "run"
    shutil.copytree(case_dir("manifest_huge_counts", tmp_path), run)
    m = json.loads((run / "manifest.json").read_text())
    m["nodes"] = [{"host": "a", "node_rank": 0, "file": "nodes/a.json"}, {"host": "b", "node_rank": 1}]
    (run / "manifest.json").write_text(json.dumps(m))
    sample = {"type": "sample", "t_ns": 1790857026000000000 + 4939957429209771, "cuda_index": 0,
              "util_gpu_pct": 50}
    for host in ("a", "b"):
        (run / f"nvml.{host}.jsonl").write_text(json.dumps({"type": "header", "host": host}) + "\n"
                                                + json.dumps(sample) + "\n")
    proc = dpprof("merge-nvml", str(run), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "of a (GPU 0)" in proc.stdout
