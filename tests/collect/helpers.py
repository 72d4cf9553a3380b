"""Run ``dpprof profile`` from tests: in-process (parser built from the collect module alone, so these
tests do not depend on the other stages importing) or as a subprocess for signal and launcher cases."""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from dpprof.commands import profile as command
from dpprof.errors import DpprofError

REPO = Path(__file__).resolve().parents[2]
#: Small, fast runs: the tiny model, small batches, a small synthetic set.
FAST = ["--model", "tiny", "--batch-size", "16", "--train-size", "128", "--test-size", "32", "--quiet"]


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="dpprof profile")
    command.prepare_parser(p)
    return p.parse_args(argv)


def profile(argv: list[str]) -> int:
    """``dpprof profile ARGV`` in this process; a DpprofError becomes its exit code as in the CLI."""
    try:
        return command.run(parse(argv))
    except DpprofError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


def main() -> None:
    sys.exit(profile(sys.argv[1:]))


def spawn(argv: list[str], **kw: Any) -> subprocess.Popen:
    """``dpprof profile ARGV`` as a child process (its own session, so signals reach only it)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-c", "from tests.collect.helpers import main; main()", *argv],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def only_run_dir(out: Path) -> Path:
    dirs = [d for d in out.iterdir() if d.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def manifest(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "manifest.json").read_text())


def trace_json(path: Path) -> dict[str, Any]:
    with gzip.open(path, "rt") as fh:
        return json.load(fh)


def steps(run_dir: Path, rank: int = 0) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / f"steps.rank{rank}.jsonl").read_text().splitlines()]
