"""Faults during collection: Ctrl-C / SIGTERM, a DDP rank that dies, NVML failing mid-run, full and
read-only output folders. Each runs the real ``dpprof profile`` (tiny model, CPU) in a subprocess.

What must hold (issue "Reliability"): what was written survives and is readable (traces of finished
profiler windows, ``nvml.<host>.jsonl``, ``steps.rank*.jsonl``, a manifest marked ``incomplete``),
``dpprof analyze`` reads it, and the user gets one clear line, never a traceback.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dpprof.trace.nvml_samples import read_nvml

ROOT = Path(__file__).resolve().parents[2]
PROFILE = ["profile", "--model", "tiny", "--batch-size", "16", "--workers", "0"]
# The profiler window (wait 2 + warmup 1 + active 3) ends at step 6: its trace is on disk after it.
WINDOW_END_STEP = 6

pytestmark = pytest.mark.slow


def env(**extra: str) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k not in ("DPPROF_DEBUG",)}
    e["PYTHONPATH"] = os.pathsep.join([*extra.pop("PREPEND_PATH", "").split(os.pathsep), str(ROOT)]).strip(os.pathsep)
    e.update(extra)
    return e


def dpprof(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dpprof.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=kw.pop("timeout", 300), env=kw.pop("env", env()), **kw)


def start(*args: str, environ: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "dpprof.cli", *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environ or env(),
                            start_new_session=True)  # its own process group, like a terminal job


def wait_for(cond: Callable[[], Any], proc: subprocess.Popen[str], timeout: float, what: str) -> Any:
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        got = cond()
        if got:
            return got
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"dpprof profile ended (exit {proc.returncode}) before {what}:\n{err[-3000:]}")
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def run_dirs(out: Path) -> list[Path]:
    return sorted(p for p in out.glob("*") if (p / "traces").is_dir() or (p / "manifest.json").is_file())


def traces(run: Path) -> list[Path]:
    return sorted((run / "traces").glob("*.pt.trace.json*"))


def steps_done(run: Path) -> int:
    f = run / "steps.rank0.jsonl"
    return len(f.read_text().splitlines()) if f.is_file() else 0


def assert_readable(run: Path) -> dict[str, Any]:
    """Manifest, traces, NVML and step files all parse; returns the manifest."""
    manifest = json.loads((run / "manifest.json").read_text())
    for t in traces(run):
        data = json.loads(gzip.decompress(t.read_bytes()) if t.suffix == ".gz" else t.read_bytes())
        assert data["traceEvents"], t
    nvml = sorted(run.glob("nvml*.jsonl"))
    assert nvml, "no nvml.<host>.jsonl (samples or a warning that NVML is absent must be recorded)"
    for f in [*nvml, *run.glob("steps.rank*.jsonl")]:
        lines = f.read_text().splitlines()
        assert lines, f
        for line in lines:
            json.loads(line)
    return manifest


def assert_analyzes(run: Path, tmp: Path) -> dict[str, Any]:
    out = tmp / "analysis.json"
    p = dpprof("analyze", str(run), "--json", str(out))
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    a = json.loads(out.read_text())
    assert a["steps"], "no step analyzed"
    return a


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_mid_run_keeps_what_was_written(sig: signal.Signals, tmp_path: Path) -> None:
    out = tmp_path / "runs"
    proc = start(*PROFILE, "--strategy", "single", "--steps", "100000", "--out", str(out))
    run = wait_for(lambda: next((r for r in run_dirs(out) if traces(r) and steps_done(r) > WINDOW_END_STEP), None),
                   proc, 240, "the first profiler window's trace")
    # Ctrl-C reaches the whole foreground process group; `kill` (SIGTERM) reaches one process.
    if sig == signal.SIGINT:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"dpprof profile did not stop within 90 s of {sig.name}")
    assert "Traceback" not in err, err[-3000:]
    assert proc.returncode != 0, "an interrupted run must not exit 0"
    manifest = assert_readable(run)
    assert manifest["status"] == "incomplete" and manifest["complete"] is False, manifest.get("status")
    assert_analyzes(run, tmp_path)


def _worker_with_rank(launcher: int, rank: int) -> int | None:
    import psutil

    for child in psutil.Process(launcher).children(recursive=True):
        try:
            if child.environ().get("RANK") == str(rank) and "torch.distributed.run" not in " ".join(child.cmdline()):
                return child.pid
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return None


def test_ddp_rank_dies(tmp_path: Path) -> None:
    """SIGKILL one DDP worker (rank 1) after the profiler window: the launcher exits non-zero naming
    rank 1, and rank 0's trace (written before the death) analyzes."""
    out = tmp_path / "runs"
    proc = start(*PROFILE, "--strategy", "ddp", "--nproc", "2", "--steps", "100000", "--out", str(out))
    run = wait_for(lambda: next((r for r in run_dirs(out) if len(traces(r)) >= 2), None), proc, 300,
                   "both ranks' traces")
    victim = wait_for(lambda: _worker_with_rank(proc.pid, 1), proc, 30, "the rank 1 worker process")
    os.kill(victim, signal.SIGKILL)
    try:
        stdout, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("the launcher did not exit within 120 s of rank 1 dying")
    assert proc.returncode != 0
    # The workers' and torchrun's own stderr pass through (rank 0's gloo error, torchrun's summary);
    # dpprof's verdict is its last line, one line naming the rank that died.
    last = err.strip().splitlines()[-1] if err.strip() else ""
    assert last.startswith("dpprof profile: error:") and "rank 1" in last.lower(), \
        f"the launcher's last line must name rank 1: {last!r}"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] in ("failed", "incomplete"), manifest["status"]
    rank0 = [t for t in traces(run) if t.name.startswith("rank0.")]
    assert rank0
    a = assert_analyzes(run, tmp_path)
    assert 0 in {s["rank"] for s in a["steps"]}


def test_nvml_failing_mid_run(tmp_path: Path) -> None:
    """The only GPU NVML sees is lost after 3 reads: a warning line in nvml.jsonl, the run completes."""
    fake = tmp_path / "fake"
    fake.mkdir()
    shutil.copy(Path(__file__).with_name("fake_pynvml.py"), fake / "pynvml.py")
    out = tmp_path / "runs"
    e = env(PREPEND_PATH=str(fake), FAKE_NVML_FAIL_AFTER="3", CUDA_VISIBLE_DEVICES="0")
    p = dpprof(*PROFILE, "--strategy", "single", "--steps", "40", "--nvml-period-ms", "20", "--out", str(out), env=e)
    assert p.returncode == 0, p.stderr[-3000:]
    (run,) = run_dirs(out)
    manifest = assert_readable(run)
    assert manifest["status"] == "complete"
    lines = [json.loads(x) for f in run.glob("nvml*.jsonl") for x in f.read_text().splitlines()]
    kinds = [x.get("type") for x in lines]
    assert "sample" in kinds, "the fake GPU was never sampled (was the sampler started on a CPU run?)"
    # the clock event reasons and the maximum SM clock reach the run directory and its reader
    assert lines[0]["gpus"][0]["sm_clock_max_mhz"] == 1980
    assert {x["clock_event_reasons"] for x in lines if x.get("type") == "sample"} == {0x4 | 0x20}
    (gpu,) = read_nvml(run).gpus
    assert gpu.sm_clock_max_mhz == 1980 and set(gpu.fields["clock_event_reasons"]) == {36.0}
    warnings = [x for x in lines if x.get("type") == "warning"]
    assert warnings and kinds.index("warning") > kinds.index("sample"), kinds
    assert any("lost" in w["message"].lower() or "fail" in w["message"].lower() for w in warnings), warnings


def _fill(folder: Path) -> None:
    """Fill a filesystem to the last byte (unbuffered writes, so the failure is ours to catch)."""
    fd = os.open(folder / "ballast", os.O_WRONLY | os.O_CREAT)
    try:
        for chunk in (4096, 1):
            while True:
                try:
                    if os.write(fd, b"\0" * chunk) < chunk:
                        break
                except OSError:
                    break
    finally:
        os.close(fd)


#: libkineto's own C++ log lines (``USDT:…``, ``ERROR:2026-… DeviceProperties.cpp…`` on a machine
#: without CUDA): printed by torch, not by dpprof, so not counted as dpprof's output.
KINETO_LOG = re.compile(r"^(USDT|ERROR|WARNING|INFO|STAGE):\d{4}-\d\d-\d\d ")


def _one_line(p: subprocess.CompletedProcess[str], fragment: str) -> None:
    lines = [x for x in p.stderr.strip().splitlines() if not KINETO_LOG.match(x)]
    assert p.returncode == 2, f"exit {p.returncode}: {p.stderr[-2000:]}"
    assert len(lines) == 1 and "Traceback" not in p.stderr, lines
    assert fragment.lower() in lines[0].lower(), lines[0]


def test_profile_into_full_dir(tmpfs: Callable[..., Path]) -> None:
    mnt = tmpfs(size="64k")
    (mnt / "ballast").write_bytes(bytes(48 * 1024))  # 16 KiB left: less than a tiny run writes (~35 KiB)
    p = dpprof(*PROFILE, "--strategy", "single", "--steps", "8", "--out", str(mnt / "runs"), timeout=300)
    _one_line(p, "no space left")


def test_profile_into_read_only_dir(tmpfs: Callable[..., Path]) -> None:
    mnt = tmpfs(size="1m", read_only=True)
    p = dpprof(*PROFILE, "--strategy", "single", "--steps", "8", "--out", str(mnt / "runs"), timeout=300)
    _one_line(p, "read-only")


def test_analyze_json_into_full_and_read_only(tmpfs: Callable[..., Path]) -> None:
    from tests.data.bad.generate import case_dir

    trace = str(next(case_dir("control", Path("/nonexistent")).iterdir()))
    full = tmpfs(size="64k")
    _fill(full)
    _one_line(dpprof("analyze", trace, "--json", str(full / "a.json")), "no space left")
    assert not [p for p in full.iterdir() if p.name.endswith(".tmp")], "temporary file left behind"
    ro = tmpfs(size="64k", read_only=True)
    _one_line(dpprof("analyze", trace, "--json", str(ro / "a.json")), "read-only")
    _one_line(dpprof("report", trace, "--out", str(ro / "r.html")), "read-only")
