"""Unpack the archive ``make gpu-check`` brought back into tests/data/gpu/ and write its README.md from the
archive's provenance (GPU, driver, torch, CUDA, the exact command) and summary (what each run shows).

    python benchmarks/gpu_import.py /work/.device/.../gpu_check.tar.gz [--dest tests/data/gpu] [--force]

Each run directory becomes ``DEST/<run>/`` (as dpprof wrote it: manifest, nodes/, NVML samples, step records,
traces of the profiled steps); ``provenance.json``, ``summary.json`` and ``overhead.json`` go beside them; the
logs stay in the archive. A CPU dry-run archive is refused unless ``--allow-cpu`` (tests/data/gpu/ holds GPU runs).
Errors: one line, exit 2.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tarfile
from pathlib import Path, PurePosixPath
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from dpprof.errors import DpprofError  # noqa: E402

ROOT = "gpu-check"  # gpu_check_report.ROOT (not imported: that module needs the collector's imports)
TOP_FILES = ("provenance.json", "summary.json", "overhead.json")
MARKER = "<!-- written by benchmarks/gpu_import.py -->"


def read_archive(path: Path) -> dict[str, bytes]:
    """Every regular file of the archive under ``ROOT/``, by its path below it; anything else is refused."""
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for m in tar.getmembers():
                parts = PurePosixPath(m.name).parts
                if m.name.startswith("/") or ".." in parts or not parts or parts[0] != ROOT:
                    raise DpprofError(f"{path}: unexpected member {m.name!r}: not a gpu-check archive")
                if m.isdir():
                    continue
                if not m.isfile():
                    raise DpprofError(f"{path}: member {m.name!r} is not a regular file")
                fh = tar.extractfile(m)
                files["/".join(parts[1:])] = fh.read() if fh is not None else b""
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise DpprofError(f"{path}: cannot read the archive ({type(exc).__name__}: {exc})") from exc
    for name in ("provenance.json", "summary.json"):
        if name not in files:
            raise DpprofError(f"{path}: no {ROOT}/{name}: not a gpu-check archive")
    return files


def _cell(value: Any, spec: str) -> str:
    return "–" if not isinstance(value, (int, float)) else format(value, spec)


def _shown(argv: list[str]) -> list[str]:
    """A run's dpprof arguments without those that only place its output."""
    out: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
        elif a in ("--out", "--run-name"):
            skip = True
        elif a != "--quiet":
            out.append(a)
    return out


def readme(prov: dict[str, Any], summary: dict[str, Any], runs: list[str]) -> str:
    """tests/data/gpu/README.md: how the data was made, and what each run shows."""
    v, hw, git = prov.get("versions", {}), prov.get("hardware", {}), prov.get("git", {})
    gpus = ", ".join(f"{g.get('name')} ({g.get('memory_total_bytes', 0) / 2**30:.0f} GiB)" for g in hw.get("gpus", []))
    commit = git.get("commit") or "unknown (the copy carried no .git)"
    if git.get("dirty"):
        commit += ", with uncommitted changes"
    pk = prov.get("packages", {})
    lines = [MARKER, "# GPU runs recorded by `make gpu-check` (issue 15)", "",
             f"Recorded on {gpus or 'no GPU (device ' + str(prov.get('device')) + ': a dry run, not GPU data)'}, "
             f"NVIDIA driver {v.get('driver')}, host `{hw.get('host')}` ({prov.get('cpus')} CPUs), "
             f"{prov.get('date_utc')}.",
             f"torch {v.get('torch')} (CUDA {v.get('cuda')}, cuDNN {v.get('cudnn')}, NCCL {v.get('nccl')}), "
             f"torchvision {pk.get('torchvision')}, Python {v.get('python')}, nvidia-ml-py {pk.get('nvidia-ml-py')}, "
             f"msgspec {pk.get('msgspec')}, python-isal {pk.get('isal') or 'absent (zlib)'}; "
             f"dpprof {v.get('dpprof')} at commit {commit}.",
             f"Command: `{prov.get('command')}` (benchmarks/gpu_check.py's argv: `{' '.join(prov.get('argv', []))}`).",
             "",
             "Each folder is a run directory as dpprof wrote it (docs/run-format.md), with 2 profiled steps per "
             "trace. Reports, timelines and analysis JSON are not kept: `dpprof analyze|report|perfetto "
             "tests/data/gpu/<run>` rebuilds them. `summary.json`: every step's figures and checks; "
             "`provenance.json`: the machine and versions; `overhead.json`: benchmarks/overhead.py's figures.", "",
             "| run | what ran | status | median step (ms) | p10-p90 (ms) | img/s | profiler ratio | NVML samples "
             "| checks passed/failed/skipped |", "|---|---|---|---|---|---|---|---|---|"]
    notes: set[str] = set()
    for s in summary.get("steps", []):
        notes.update(s.get("not_exercised", []))
        if s["name"] not in runs:
            continue
        c = [x["status"] for x in s.get("checks", [])]
        spread = f"{_cell(s.get('step_ms_p10'), '.2f')}-{_cell(s.get('step_ms_p90'), '.2f')}"
        what = " ".join(_shown(s.get("command", [])[3:]))
        lines.append(f"| `{s['name']}` | `dpprof {what}` | {s.get('status')} | {_cell(s.get('step_ms_median'), '.2f')} "
                     f"| {spread} | {_cell(s.get('images_per_s_median'), '.0f')} | {_cell(s.get('profiler_ratio'), '.2f')} "
                     f"| {_cell(s.get('nvml_samples'), 'd')} | {c.count('passed')}/{c.count('failed')}/{c.count('skipped')} |")
    if notes:
        lines += ["", "Not exercised on this machine:", *[f"- {n}" for n in sorted(notes)]]
    left = (summary.get("archive") or {}).get("left_out") or []
    if left:
        lines += ["", "Left out of the archive to keep it small: " + ", ".join(f"`{p}`" for p in left) + "."]
    lines += ["", "Regenerate: on a GPU machine `make gpu-check` (the device call is in benchmarks/README.md, "
              "\"GPU figures\"), then here `python benchmarks/gpu_import.py gpu_check.tar.gz --force`.", ""]
    return "\n".join(lines)


def import_archive(archive: Path, dest: Path, force: bool = False, allow_cpu: bool = False) -> list[str]:
    """Unpack ``archive`` into ``dest`` and write its README.md; returns the run names."""
    files = read_archive(archive)
    prov, summary = (json.loads(files[n]) for n in ("provenance.json", "summary.json"))
    if prov.get("device") != "cuda" and not allow_cpu:
        raise DpprofError(f"{archive}: a dry run on the {prov.get('device')} (not GPU data); --allow-cpu unpacks it anyway")
    if dest.exists() and any(dest.iterdir()):
        if not force:
            raise DpprofError(f"{dest} is not empty; --force replaces an earlier import")
        readme_path = dest / "README.md"
        if not (readme_path.is_file() and readme_path.read_text(errors="replace").startswith(MARKER)):
            raise DpprofError(f"{dest} holds something else than an earlier import (no README.md from gpu_import.py); "
                              "not replacing it")
        shutil.rmtree(dest)
    runs = sorted({PurePosixPath(n).parts[1] for n in files if n.startswith("runs/") and len(PurePosixPath(n).parts) > 2})
    for name, body in sorted(files.items()):
        parts = PurePosixPath(name).parts
        if name in TOP_FILES:
            target = dest / name
        elif parts[0] == "runs" and len(parts) > 2:
            target = dest.joinpath(*parts[1:])
        else:
            continue  # logs stay in the archive
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(body)
    (dest / "README.md").write_text(readme(prov, summary, runs))
    return runs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("archive", type=Path, help="gpu_check.tar.gz, as make gpu-check wrote it")
    p.add_argument("--dest", type=Path, default=HERE.parent / "tests" / "data" / "gpu",
                   help="where to unpack (default tests/data/gpu)")
    p.add_argument("--force", action="store_true", help="replace an earlier import in DEST")
    p.add_argument("--allow-cpu", action="store_true", help="unpack a CPU dry run's archive too")
    args = p.parse_args(argv)
    try:
        runs = import_archive(args.archive, args.dest, args.force, args.allow_cpu)
    except DpprofError as exc:
        print(f"gpu_import: error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"gpu_import: {len(runs)} run directories into {args.dest}: {', '.join(runs)}; README.md written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
