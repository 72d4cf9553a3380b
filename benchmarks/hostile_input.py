"""Memory and time of dpprof on hostile input (issue 12): a gzip bomb, a truncated large trace, a report of
a 3,000-rank steps file. Each command runs in a fresh process; peak memory is the RSS summed over its
process tree (benchmarks/procstats.py).

Usage: ``python benchmarks/hostile_input.py [--tree DIR] [--bomb-mb 4] [--trace-mb 200] [--ranks 3000]
[--json OUT]``. ``--tree`` measures another checkout of dpprof (e.g. the commit before the fix) with the
same inputs: its ``dpprof`` package is put first on ``PYTHONPATH``. Inputs are written to a temporary
folder and removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

from make_large_dir import make_large_dir  # noqa: E402
from procstats import RunResult, measure  # noqa: E402

CONTROL = REPO / "tests" / "data" / "bad" / "control" / "trace.pt.trace.json.gz"
MiB = 1 << 20


def write_bomb(path: Path, compressed_mb: float) -> int:
    """A trace head, then spaces inside traceEvents until the gzip is ``compressed_mb`` MiB (~1000x)."""
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = b" " * (4 * MiB)
    size = 0
    with open(path, "wb") as fh:
        fh.write(c.compress(b'{"schemaVersion": 1, "traceEvents": [\n'))
        while size < compressed_mb * MiB:
            size += fh.write(c.compress(block))
        fh.write(c.compress(b"]}") + c.flush())
    return path.stat().st_size


def write_truncated(folder: Path, trace_mb: float) -> tuple[Path, Path]:
    """A plain-JSON rank trace of ``trace_mb`` MB and a copy cut at two thirds."""
    info = make_large_dir(folder / "good", ranks=1, rank_mb=trace_mb)
    good = folder / "good" / info["files"][0]["path"]
    cut = folder / "cut" / good.name
    cut.parent.mkdir()
    with open(good, "rb") as src, open(cut, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
        dst.truncate(good.stat().st_size * 2 // 3)
    return good, cut


def write_steps_run(folder: Path, ranks: int, steps: int = 10) -> Path:
    run = folder / "run"
    (run / "traces").mkdir(parents=True)
    shutil.copy(CONTROL, run / "traces" / "rank0.1.pt.trace.json.gz")
    with open(run / "steps.rank0.jsonl", "w") as fh:
        for r in range(ranks):
            for s in range(steps):
                fh.write(json.dumps({"rank": r, "epoch": 0, "step": s, "wall_ms": 10.0 + r % 7 + s / 10,
                                     "profiled": 3 <= s < 6}) + "\n")
    return run


def run(tree: Path, *args: str) -> RunResult:
    env = dict(os.environ, PYTHONPATH=str(tree))
    env.pop("DPPROF_DEBUG", None)
    # From inside the tree: ``-m`` puts the working directory first on sys.path, before PYTHONPATH.
    return measure([sys.executable, "-m", "dpprof.cli", *args], env=env, timeout_s=1800, cwd=str(tree))


def row(name: str, r: RunResult, **extra: object) -> dict:
    print(f"{name:<28} exit {r.returncode}  wall {r.wall_s:7.2f} s  cpu {r.cpu_s:7.2f} s  "
          f"peak {r.peak_rss_bytes / MiB:8.0f} MiB  {r.stderr_tail.strip().splitlines()[-1][:90] if r.stderr_tail.strip() else ''}")
    return {"name": name, "exit": r.returncode, "wall_s": round(r.wall_s, 3), "cpu_s": round(r.cpu_s, 3),
            "peak_rss_bytes": r.peak_rss_bytes, **extra}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tree", type=Path, default=REPO, help="the dpprof checkout to measure (default: this one)")
    p.add_argument("--bomb-mb", type=float, default=4.0, help="compressed size of the gzip bomb, MiB (default 4)")
    p.add_argument("--trace-mb", type=float, default=200.0, help="JSON MB of the truncated trace (default 200)")
    p.add_argument("--ranks", type=int, default=3000, help="ranks in the steps file (default 3000)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="dpprof-hostile-") as tmp:
        folder = Path(tmp)
        bomb = folder / "bomb.pt.trace.json.gz"
        compressed = write_bomb(bomb, args.bomb_mb)
        rows.append(row("gzip bomb", run(args.tree, "analyze", str(bomb), "--no-json"), compressed_bytes=compressed))
        bomb.unlink()
        good, cut = write_truncated(folder, args.trace_mb)
        rows.append(row("truncated trace (2/3)", run(args.tree, "analyze", str(cut), "--no-json"),
                        json_bytes=cut.stat().st_size))
        rows.append(row("the same trace, whole", run(args.tree, "analyze", str(good), "--no-json"),
                        json_bytes=good.stat().st_size))
        good.unlink()
        cut.unlink()
        steps_run = write_steps_run(folder, args.ranks)
        rows.append(row(f"report, {args.ranks:,}-rank steps", run(args.tree, "report", str(steps_run), "--out",
                                                                  str(folder / "r.html"))))
    if args.json:
        args.json.write_text(json.dumps({"tree": str(args.tree), "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
