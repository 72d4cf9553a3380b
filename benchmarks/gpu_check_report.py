"""``make gpu-check``'s record: the provenance of the machine, the summary table (printed and as JSON), and the
one archive the device tool brings back (run directories, summary, provenance, logs).

Archive layout (read by ``benchmarks/gpu_import.py``)::

    gpu-check/provenance.json    GPU, driver, torch, CUDA, NCCL, cuDNN, dpprof commit, the exact command
    gpu-check/summary.json       the summary table's data: every step's figures and checks
    gpu-check/overhead.json      benchmarks/overhead.py's figures (when it ran)
    gpu-check/logs/<step>.log    each command's own output
    gpu-check/runs/<run>/        each run directory: manifest, nodes/, nvml.*.jsonl, steps.rank*.jsonl, traces/

The HTML reports, Perfetto timelines and analysis JSON are left out: ``dpprof analyze/report/perfetto``
rebuild them from the run directories, which are what tests read.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import subprocess
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gpu_check_inspect import Outcome

ROOT = "gpu-check"
ARCHIVE = "gpu_check.tar.gz"
SUMMARY = "gpu_check.json"
#: The device tool brings back files of at most 16 MiB; stay well under it.
MAX_ARCHIVE_BYTES = 12 * 2**20
#: What a run directory keeps in the archive (the rest is rebuilt from these).
KEEP = ("manifest.json", "nodes/*.json", "nvml.*.jsonl", "steps.rank*.jsonl", "traces/rank*.pt.trace.json.gz")
PACKAGES = ("msgspec", "isal", "numpy", "matplotlib", "jinja2", "rich", "nvidia-ml-py", "torchvision")


def git_commit(repo: Path) -> dict[str, Any]:
    """The checkout's commit and whether it had changes (None where the copy carries no .git)."""
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    if head.returncode != 0:
        return {"commit": None, "dirty": None}
    return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip()) if dirty.returncode == 0 else None}


def provenance(repo: Path, device: str, command: str, argv: Sequence[str]) -> dict[str, Any]:
    """Where and how the check ran: dpprof's own view of versions and hardware (as a manifest records
    them), cuDNN, the packages dpprof imports, the checkout's commit and the exact command."""
    import torch

    from dpprof.collect import hwinfo

    # NVML describes the GPUs without a CUDA context in this process (it would hold GPU memory during the runs).
    versions, hardware = hwinfo.collect_versions(), hwinfo.collect_hardware(use_cuda=False)
    if device == "cuda" and not hardware.get("gpus"):
        hardware = hwinfo.collect_hardware(use_cuda=True)
    versions["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    packages: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = None
    return {"schema": "dpprof.gpu_check/1", "device": device, "command": command, "argv": list(argv),
            "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "versions": versions, "hardware": hardware, "packages": packages,
            "platform": platform.platform(), "git": git_commit(repo), "cpus": os.cpu_count()}


def _num(value: Any, spec: str) -> str:
    return "-" if not isinstance(value, (int, float)) else format(value, spec)


def counts(checks_of: Sequence[Outcome]) -> dict[str, int]:
    out = {"passed": 0, "failed": 0, "skipped": 0, "inconclusive": 0}
    for o in checks_of:
        for c in o.checks:
            out[c.status] = out.get(c.status, 0) + 1
    return out


def table(outcomes: Sequence[Outcome]) -> list[str]:
    """The summary table: per step its status, median step (ms) with p10-p90, img/s, the profiler's
    active-step ratio, NVML samples, and checks passed/failed/skipped."""
    head = (f"{'step':<12} {'kind':<8} {'status':<12} {'ms/step':>9} {'p10-p90 ms':>15} {'img/s':>8} "
            f"{'prof.ratio':>10} {'NVML n':>7}  {'checks p/f/s':<12}")
    lines = [head, "-" * len(head)]
    for o in outcomes:
        f = o.figures
        spread = (f"{_num(f.get('step_ms_p10'), '.2f')}-{_num(f.get('step_ms_p90'), '.2f')}"
                  if f.get("step_ms_p10") is not None else "-")
        c = counts([o])
        checks = f"{c['passed']}/{c['failed']}/{c['skipped']}" + (f" +{c['inconclusive']}?" if c["inconclusive"] else "")
        lines.append(f"{o.name:<12} {o.kind:<8} {o.status:<12} {_num(f.get('step_ms_median'), '9.2f'):>9} "
                     f"{spread:>15} {_num(f.get('images_per_s_median'), '8.0f'):>8} "
                     f"{_num(f.get('profiler_ratio'), '10.2f'):>10} {_num(f.get('nvml_samples'), 'd'):>7}  {checks}")
    return lines


def details(outcomes: Sequence[Outcome]) -> list[str]:
    """Below the table: every failed or inconclusive check with its detail, the skipped ones grouped by
    reason, and the GPU paths this machine could not exercise."""
    lines: list[str] = []
    bad = [(o.name, c) for o in outcomes for c in o.checks if c.status in ("failed", "inconclusive")]
    if bad:
        lines.append("failed or inconclusive checks:")
        lines += [f"  {name}: {c.name}: {c.status.upper()}: {c.detail}" for name, c in bad]
    reasons: dict[str, list[str]] = {}
    for o in outcomes:
        for c in o.checks:
            if c.status == "skipped":
                reasons.setdefault(c.detail, []).append(f"{o.name}/{c.name}")
    if reasons:
        lines.append("skipped checks (why):")
        for why, where in reasons.items():
            shown = ", ".join(where[:4]) + (f" and {len(where) - 4} more" if len(where) > 4 else "")
            lines.append(f"  skipped ({why}): {shown}")
    notes = sorted({n for o in outcomes for n in o.not_exercised})
    if notes:
        lines.append("not exercised on this machine (where those paths would be):")
        lines += [f"  {n}" for n in notes]
    return lines


def summary_json(outcomes: Sequence[Outcome], prov: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    c = counts(outcomes)
    return {"schema": "dpprof.gpu_check_summary/1", "device": prov["device"], "passed": c["failed"] == 0,
            "counts": c, "steps": [o.to_json() for o in outcomes], **extra}


def _members(work: Path, run_names: Sequence[str], left_out: set[Path]) -> list[tuple[Path, str]]:
    files: list[tuple[Path, str]] = []
    for name in ("provenance.json", "summary.json", "overhead.json"):
        if (work / name).is_file():
            files.append((work / name, f"{ROOT}/{name}"))
    files += [(p, f"{ROOT}/logs/{p.name}") for p in sorted((work / "logs").glob("*.log"))]
    for run in run_names:
        rd = work / "runs" / run
        for pattern in KEEP:
            files += [(p, f"{ROOT}/runs/{run}/{p.relative_to(rd).as_posix()}") for p in sorted(rd.glob(pattern))
                      if p not in left_out]
    return files


def _write(path: Path, files: Sequence[tuple[Path, str]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tarfile.open(tmp, "w:gz", compresslevel=6) as tar:
        for src, arcname in files:
            info = tar.gettarinfo(str(src), arcname)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with src.open("rb") as fh:
                tar.addfile(info, fh)
    tmp.replace(path)


def write_archive(work: Path, dest: Path, run_names: Sequence[str], limit: int = MAX_ARCHIVE_BYTES,
                  left_out: Sequence[str] = ()) -> dict[str, Any]:
    """One ``.tar.gz`` of what tests need, under ``limit`` bytes: while it is larger, the largest trace is
    left out (named in the returned ``left_out``, so the summary says what is missing). ``left_out``: paths
    (relative to ``work``) to leave out from the start, as an earlier call returned them."""
    path = dest / ARCHIVE
    omitted = {work / p for p in left_out}
    while True:
        files = _members(work, run_names, omitted)
        _write(path, files)
        size = path.stat().st_size
        traces = [p for p, _ in files if p.name.endswith(".pt.trace.json.gz")]
        if size <= limit or not traces:
            break
        omitted.add(max(traces, key=lambda p: p.stat().st_size))
    return {"path": str(path), "bytes": size, "files": len(files), "limit_bytes": limit,
            "left_out": sorted(p.relative_to(work).as_posix() for p in omitted)}
