"""``dpprof perfetto`` on the 4-rank benchmark directory: wall time, CPU time, peak memory, size of the merged trace.

The merge first runs the cross-rank analysis (as ``dpprof analyze`` does), then streams the ranks into the output
one at a time (a first pass for each rank's threads, a second for its events). So its peak memory should be the
analysis's, plus about one rank's thread table and one chunk of events, and must not grow with the number of
ranks: the same merge on a 1-rank directory of the same rank size is measured beside it, and ``dpprof analyze``
alone for context. Each run is a fresh process, repeated ``--repeat`` times, interleaved; medians are reported.
Peak memory is the RSS summed over the process tree (the analysis forks a pool), polled every 20 ms.

Usage: ``python benchmarks/perfetto_merge.py [DIR] [--repeat 3] [--json OUT]``. Without DIR,
``benchmarks/data/r4-83mb`` (and ``r1-83mb``) are generated if missing.
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from analyze_vs_hta import ensure_dir, json_bytes  # noqa: E402
from procstats import RunResult, measure, median  # noqa: E402

from dpprof.errors import DpprofError  # noqa: E402
from dpprof.rundir import write_json  # noqa: E402

PY = sys.executable


def variants(trace_dir: Path, one_rank: Path | None, work: Path) -> dict[str, list[str]]:
    """Command lines; every output goes to ``work``, never beside the traces."""
    base = [PY, "-m", "dpprof.cli"]
    out = {
        "analyze (context)": [*base, "analyze", str(trace_dir), "--json", str(work / "analysis.json"), "--quiet"],
        "perfetto": [*base, "perfetto", str(trace_dir), "--out", str(work / "all.json.gz")],
        "perfetto --no-host-ops": [*base, "perfetto", str(trace_dir), "--no-host-ops", "--out",
                                   str(work / "no_host_ops.json.gz")],
        "perfetto --ranks 0": [*base, "perfetto", str(trace_dir), "--ranks", "0", "--out", str(work / "rank0.json.gz")],
    }
    if one_rank is not None:
        out[f"perfetto, 1 rank ({one_rank.name})"] = [*base, "perfetto", str(one_rank), "--out",
                                                      str(work / "one.json.gz")]
    return out


def output_of(cmd: list[str]) -> Path | None:
    return Path(cmd[cmd.index("--out") + 1]) if "--out" in cmd else None


def gunzipped_bytes(path: Path) -> int:
    """Bytes of JSON in a gzip file, read through (the trailer's size is mod 2**32)."""
    total = 0
    with gzip.open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            total += len(block)
    return total


def run(trace_dir: Path, one_rank: Path | None, repeat: int, timeout_s: float) -> dict[str, dict]:
    results: dict[str, list[RunResult]] = {}
    sizes: dict[str, tuple[int, int]] = {}
    with tempfile.TemporaryDirectory(prefix="dpprof-perfetto-bench-") as tmp:
        cmds = variants(trace_dir.resolve(), one_rank.resolve() if one_rank else None, Path(tmp))
        for _ in range(repeat):
            for name, cmd in cmds.items():
                r = measure(cmd, timeout_s=timeout_s, cwd=tmp)
                results.setdefault(name, []).append(r)
                if r.returncode != 0:
                    raise DpprofError(f"{name}: exit {r.returncode}: {r.stderr_tail.strip().splitlines()[-1:]}")
                print(f"  {name}: {r.wall_s:.2f} s, {r.cpu_s:.2f} s CPU, {r.peak_rss_bytes / 1e6:.0f} MB",
                      file=sys.stderr)
                out = output_of(cmd)
                if out is not None and name not in sizes:
                    sizes[name] = (out.stat().st_size, gunzipped_bytes(out))
    summary = {}
    for name, runs in results.items():
        file_b, json_b = sizes.get(name, (0, 0))
        summary[name] = {"runs": len(runs), "wall_s_median": median([r.wall_s for r in runs]),
                         "wall_s": [r.wall_s for r in runs], "cpu_s_median": median([r.cpu_s for r in runs]),
                         "peak_rss_bytes_median": int(median([r.peak_rss_bytes for r in runs])),
                         "peak_rss_bytes": [r.peak_rss_bytes for r in runs],
                         "output_bytes": file_b, "output_json_bytes": json_b}
    return summary


def table(title: str, summary: dict[str, dict]) -> str:
    lines = [title, f"  {'run':<34} {'wall s':>7} {'cpu s':>7} {'peak MB':>8} {'out MB':>7} {'out JSON MB':>12}"]
    for name, s in summary.items():
        lines.append(f"  {name:<34} {s['wall_s_median']:>7.2f} {s['cpu_s_median']:>7.2f} "
                     f"{s['peak_rss_bytes_median'] / 1e6:>8.0f} {s['output_bytes'] / 1e6:>7.1f} "
                     f"{s['output_json_bytes'] / 1e6:>12.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dir", nargs="?", type=Path, help="trace folder (default: generated benchmarks/data/r4-83mb)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--no-one-rank", action="store_true", help="skip the 1-rank comparison")
    p.add_argument("--json", type=Path, help="write the figures here")
    args = p.parse_args(argv)
    try:
        trace_dir = args.dir or ensure_dir(4, 83.0)
        one_rank = None if args.no_one_rank else (ensure_dir(1, 83.0) if args.dir is None else None)
        nbytes = json_bytes(trace_dir)
        nfiles = len([f for f in trace_dir.iterdir() if f.name.endswith((".json", ".gz"))])
        load = (*os.getloadavg(),)
        summary = run(trace_dir, one_rank, max(1, args.repeat), args.timeout)
        load += (*os.getloadavg(),)
        print(table(f"\n{trace_dir.name}: {nfiles} ranks, {nbytes / 1e6:.0f} MB JSON (medians of {args.repeat}); "
                    f"{os.cpu_count()} CPUs, load average {load[0]:.1f} before, {load[3]:.1f} after", summary))
        if args.json:
            write_json(args.json, {"dir": str(trace_dir), "json_bytes": nbytes, "ranks": nfiles, "runs": summary,
                                   "machine": {"cpus": os.cpu_count(), "loadavg_1_5_15_before_after": load}})
    except DpprofError as exc:
        print(f"perfetto_merge: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
