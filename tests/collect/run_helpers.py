"""Run ``dpprof run`` from tests: as a child process (``python -m dpprof.run``, what torchrun starts), or
in this process through the CLI's ``main`` (faster, for what does not depend on process boundaries)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
SCRIPTS = REPO / "tests" / "data" / "scripts"


def env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO), KINETO_LOG_LEVEL="5", OMP_NUM_THREADS="1")


def dpprof_run(argv: list[str], cwd: Path | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    """``python -m dpprof.run ARGV`` as a child process; its exit code, stdout and stderr."""
    return subprocess.run([sys.executable, "-m", "dpprof.run", *argv], cwd=cwd or REPO, env=env(),
                          capture_output=True, text=True, timeout=timeout)


def python(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The same script run plainly, for comparison."""
    return subprocess.run([sys.executable, *argv], cwd=cwd or REPO, env=env(), capture_output=True, text=True,
                          timeout=120)


def torchrun(argv: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                           str(nproc), *argv], cwd=REPO, env=env(), capture_output=True, text=True, timeout=240)


def in_process(argv: list[str]) -> int:
    """``dpprof run ARGV`` in this process (the CLI's own error handling included)."""
    from dpprof.cli import main

    return main(["run", *argv])


def only_run(out: Path) -> Path:
    dirs = [d for d in out.iterdir() if d.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def load(path: Path) -> Any:
    return json.loads(path.read_text())


def step_records(run: Path, rank: int = 0) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / f"steps.rank{rank}.jsonl").read_text().splitlines()]


def without_kineto(text: str) -> str:
    """stderr minus libkineto's own USDT lines (torch 2.14 prints them whenever any profiler starts)."""
    return "".join(line for line in text.splitlines(keepends=True) if not line.startswith("USDT:"))
