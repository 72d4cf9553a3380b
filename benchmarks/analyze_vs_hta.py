"""dpprof analyze vs HTA on a large multi-rank directory: wall time, peak memory, MB/s of JSON.

Every run is a fresh process (no warm caches in the interpreter), repeated ``--repeat`` times with the
tools interleaved (dpprof, HTA, naive, dpprof, ...) so that drift in the machine's load hits all of
them alike; figures are medians. Peak memory is the peak of the RSS summed over the process tree,
polled every 20 ms (HTA forks a pool). The "naive" row is a deliberately simple stdlib-``json`` pass
(one Python loop summing kernel time per device), for context: it is the bar below which a design
is not worth it.

Usage: ``python benchmarks/analyze_vs_hta.py [DIR] [--repeat 3] [--json OUT] [--no-stretch]``.
Without DIR, ``benchmarks/data/r4-83mb`` is generated if missing (4 ranks x ~80 MB of JSON).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from make_large_dir import DEFAULT_OUT, make_large_dir  # noqa: E402
from procstats import RunResult, measure, median  # noqa: E402

from dpprof.errors import DpprofError  # noqa: E402
from dpprof.rundir import write_json  # noqa: E402

PY = sys.executable
TARGETS = {"speed_ratio_min": 10.0, "speed_ratio_stretch": 20.0, "memory_ratio_max": 0.35,
           "mb_per_s_stretch": 300.0, "big_wall_s_max": 5.0, "big_peak_bytes_max": 1e9}

HTA_DRIVER = """
import sys
from hta.trace_analysis import TraceAnalysis
analyzer = TraceAnalysis(trace_dir=sys.argv[1])
df = analyzer.get_temporal_breakdown(visualize=False)
print(df.to_string())
"""

NAIVE_DRIVER = """
import gzip, json, sys
from pathlib import Path
totals = {}
for path in sorted(Path(sys.argv[1]).iterdir()):
    if not path.name.endswith((".json", ".gz")):
        continue
    with (gzip.open(path, "rt") if path.suffix == ".gz" else open(path)) as fh:
        trace = json.load(fh)
    rank = (trace.get("distributedInfo") or {}).get("rank", path.name)
    for ev in trace["traceEvents"]:
        if ev.get("cat", "").lower() == "kernel":
            key = (rank, ev["args"].get("device", ev.get("pid")))
            totals[key] = totals.get(key, 0.0) + ev.get("dur", 0.0)
for key, us in sorted(totals.items(), key=str):
    print(key, round(us, 3))
"""


def dpprof_available() -> bool:
    return importlib.util.find_spec("dpprof.commands.analyze") is not None


def commands(trace_dir: Path, work: Path) -> dict[str, list[str]]:
    """The command line of each tool; all outputs go to ``work``, never into the trace folder
    (HTA would read them as traces)."""
    return {
        "dpprof": [PY, "-m", "dpprof.cli", "analyze", str(trace_dir), "--json", str(work / "analysis.json")],
        "hta": [PY, "-c", HTA_DRIVER, str(trace_dir)],
        "naive": [PY, "-c", NAIVE_DRIVER, str(trace_dir)],
    }


def json_bytes(trace_dir: Path) -> int:
    """Uncompressed JSON bytes in the folder (gzip's trailer holds the size mod 2^32: fine below 4 GB)."""
    total = 0
    for f in sorted(trace_dir.iterdir()):
        if f.name.endswith(".gz"):
            with open(f, "rb") as fh:
                fh.seek(-4, 2)
                total += int.from_bytes(fh.read(4), "little")
        elif f.name.endswith(".json"):
            total += f.stat().st_size
    return total


def run_tools(trace_dir: Path, tools: list[str], repeat: int, timeout_s: float) -> dict[str, list[RunResult]]:
    """Interleaved repetitions; a failed run stops that tool (its error is kept) but not the others."""
    results: dict[str, list[RunResult]] = {t: [] for t in tools}
    failed: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="dpprof-bench-") as tmp:
        cmds = commands(trace_dir.resolve(), Path(tmp))
        for _ in range(repeat):
            for tool in tools:
                if tool in failed:
                    continue
                r = measure(cmds[tool], timeout_s=timeout_s, cwd=tmp)
                results[tool].append(r)
                if r.returncode != 0:
                    failed.add(tool)
                    print(f"  {tool}: exit {r.returncode}: {r.stderr_tail.strip().splitlines()[-1:]}",
                          file=sys.stderr)
                else:
                    print(f"  {tool}: {r.wall_s:.2f} s, {r.peak_rss_bytes / 1e6:.0f} MB", file=sys.stderr)
    return results


def summarize(results: dict[str, list[RunResult]], nbytes: int) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for tool, runs in results.items():
        ok = [r for r in runs if r.returncode == 0]
        if not runs:
            continue
        if len(ok) < len(runs):
            bad = next(r for r in runs if r.returncode != 0)
            out[tool] = {"ok": False, "returncode": bad.returncode, "error": bad.stderr_tail.strip()[-500:]}
            continue
        wall = median([r.wall_s for r in ok])
        out[tool] = {"ok": True, "runs": len(ok), "wall_s_median": round(wall, 3),
                     "wall_s": [round(r.wall_s, 3) for r in ok],
                     "cpu_s_median": round(median([r.cpu_s for r in ok]), 3),
                     "peak_rss_bytes_median": int(median([r.peak_rss_bytes for r in ok])),
                     "peak_rss_bytes": [r.peak_rss_bytes for r in ok],
                     "json_mb_per_s": round(nbytes / 1e6 / wall, 1)}
    return out


def ratios(summary: dict[str, dict]) -> dict[str, float | bool | None]:
    d, h = summary.get("dpprof", {}), summary.get("hta", {})
    if not (d.get("ok") and h.get("ok")):
        return {}
    speed = h["wall_s_median"] / d["wall_s_median"]
    mem = d["peak_rss_bytes_median"] / h["peak_rss_bytes_median"]
    # CPU seconds move less than wall time when neighbours load the machine: a second view of speed.
    cpu = h["cpu_s_median"] / d["cpu_s_median"] if d["cpu_s_median"] > 0 else None
    return {"speed_hta_over_dpprof": round(speed, 2), "memory_dpprof_over_hta": round(mem, 3),
            "cpu_hta_over_dpprof": None if cpu is None else round(cpu, 2),
            "speed_target_met": speed >= TARGETS["speed_ratio_min"],
            "speed_stretch_met": speed >= TARGETS["speed_ratio_stretch"],
            "memory_target_met": mem <= TARGETS["memory_ratio_max"],
            "mb_per_s_stretch_met": d["json_mb_per_s"] >= TARGETS["mb_per_s_stretch"]}


def table(title: str, summary: dict[str, dict]) -> str:
    lines = [title, f"  {'tool':<8} {'wall s':>8} {'runs (s)':<24} {'cpu s':>7} {'peak MB':>8} {'MB/s':>7}"]
    for tool, s in summary.items():
        if not s["ok"]:
            lines.append(f"  {tool:<8} failed (exit {s['returncode']}): {s['error'].splitlines()[-1:]}")
            continue
        runs = " ".join(f"{w:.2f}" for w in s["wall_s"])
        lines.append(f"  {tool:<8} {s['wall_s_median']:>8.2f} {runs:<24} {s['cpu_s_median']:>7.2f} "
                     f"{s['peak_rss_bytes_median'] / 1e6:>8.0f} {s['json_mb_per_s']:>7.1f}")
    return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "MET" if ok else "not met"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dir", nargs="?", type=Path, help="trace folder (default: generated r4-83mb)")
    p.add_argument("--ranks", type=int, default=4, help="ranks of the generated folder (default 4)")
    p.add_argument("--rank-mb", type=float, default=83.0, help="MB of JSON per generated rank (default 83)")
    p.add_argument("--gzip", action="store_true", help="generate .json.gz rank files (level 1) instead of .json")
    p.add_argument("--repeat", type=int, default=3, help="runs per tool, fresh processes (default 3)")
    p.add_argument("--tools", default="dpprof,hta,naive", help="comma list of dpprof,hta,naive")
    p.add_argument("--no-stretch", action="store_true",
                   help="skip the stretch case (dpprof alone on a generated 8-rank ~1 GB folder)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per run before it is killed")
    p.add_argument("--json", type=Path, help="also write the figures here (JSON)")
    args = p.parse_args(argv)
    tools = [t for t in args.tools.split(",") if t]
    if unknown := set(tools) - {"dpprof", "hta", "naive"}:
        p.error(f"unknown tools: {sorted(unknown)}")
    if "dpprof" in tools and not dpprof_available():
        print("dpprof analyze is not available yet (no dpprof.commands.analyze): measuring the others",
              file=sys.stderr)
        tools.remove("dpprof")
    try:
        trace_dir = args.dir or ensure_dir(args.ranks, args.rank_mb, args.gzip)
        if not trace_dir.is_dir():
            raise DpprofError(f"{trace_dir}: no such folder")
        nbytes = json_bytes(trace_dir)
        if nbytes == 0:
            raise DpprofError(f"{trace_dir}: no *.json / *.gz traces")
        nfiles = sum(1 for f in trace_dir.iterdir() if f.name.endswith((".json", ".gz")))
        print(f"{trace_dir}: {nfiles} files, {nbytes / 1e6:.1f} MB of JSON; {args.repeat} runs per tool",
              file=sys.stderr)
        load_before = os.getloadavg()
        summary = summarize(run_tools(trace_dir, tools, args.repeat, args.timeout), nbytes)
        # Other users' load explains most of the spread of wall times on a shared machine: record it.
        load = [round(x, 2) for x in (*load_before, *os.getloadavg())]
        report = {"dir": str(trace_dir), "files": nfiles, "json_bytes": nbytes, "repeat": args.repeat,
                  "tools": summary, "ratios": ratios(summary), "targets": TARGETS,
                  "machine": {"cpus": os.cpu_count(), "loadavg_1_5_15_before_after": load}}
        print(table(f"\n{trace_dir.name}: {nfiles} ranks, {nbytes / 1e6:.0f} MB JSON (medians); "
                    f"{os.cpu_count()} CPUs, load average {load[0]:.1f} before, {load[3]:.1f} after", summary))
        print_ratios(report["ratios"], summary)
        if not args.no_stretch and "dpprof" in tools:
            report["stretch"] = stretch(args.repeat, args.timeout)
        if args.json:
            write_json(args.json, report)
    except DpprofError as exc:
        print(f"analyze_vs_hta: error: {exc}", file=sys.stderr)
        return 2
    return 0


def ensure_dir(ranks: int, rank_mb: float, gz: bool = False) -> Path:
    """The default generated folder, made (seconds; more with gzip) when missing or of another shape."""
    out = DEFAULT_OUT / f"r{ranks}-{rank_mb:g}mb{'-gz' if gz else ''}"
    suffix = ".pt.trace.json.gz" if gz else ".pt.trace.json"
    have = sorted(out.glob(f"rank*{suffix}")) if out.is_dir() else []
    if len(have) != ranks:
        print(f"generating {out} ...", file=sys.stderr)
        make_large_dir(out, ranks, rank_mb, gzip_level=1 if gz else None)
    return out


def print_ratios(r: dict, summary: dict[str, dict]) -> None:
    if not r:
        print("  ratios: need both dpprof and HTA results")
        return
    d = summary["dpprof"]
    print(f"  speed  HTA/dpprof   {r['speed_hta_over_dpprof']:>6.2f}x  target >= 10x: "
          f"{verdict(r['speed_target_met'])}; stretch >= 20x: {verdict(r['speed_stretch_met'])}")
    if r["cpu_hta_over_dpprof"] is not None:
        print(f"  cpu    HTA/dpprof   {r['cpu_hta_over_dpprof']:>6.2f}x  (CPU seconds, all processes)")
    print(f"  memory dpprof/HTA   {r['memory_dpprof_over_hta']:>6.3f}x  target <= 0.35x: "
          f"{verdict(r['memory_target_met'])}")
    print(f"  dpprof throughput   {d['json_mb_per_s']:>6.1f} MB/s  stretch >= 300 MB/s: "
          f"{verdict(r['mb_per_s_stretch_met'])}")
    if "naive" in summary and summary["naive"].get("ok"):
        n = summary["naive"]
        print(f"  naive stdlib json   {n['wall_s_median']:.2f} s, {n['peak_rss_bytes_median'] / 1e6:.0f} MB "
              f"(dpprof is {n['wall_s_median'] / d['wall_s_median']:.1f}x faster)")


def stretch(repeat: int, timeout_s: float) -> dict:
    """dpprof alone on 8 ranks x 125 MB (~1 GB of JSON): target < 5 s and < 1 GB peak."""
    big = ensure_dir(8, 125.0)
    nbytes = json_bytes(big)
    summary = summarize(run_tools(big, ["dpprof"], repeat, timeout_s), nbytes)
    print(table(f"\nstretch {big.name}: 8 ranks, {nbytes / 1e6:.0f} MB JSON (medians)", summary))
    d = summary["dpprof"]
    out: dict = {"dir": str(big), "json_bytes": nbytes, "dpprof": d}
    if d.get("ok"):
        out["wall_met"] = d["wall_s_median"] < TARGETS["big_wall_s_max"]
        out["memory_met"] = d["peak_rss_bytes_median"] < TARGETS["big_peak_bytes_max"]
        print(f"  1 GB 8-rank: {d['wall_s_median']:.2f} s (< 5 s: {verdict(out['wall_met'])}), "
              f"{d['peak_rss_bytes_median'] / 1e6:.0f} MB (< 1000 MB: {verdict(out['memory_met'])})")
    return out


if __name__ == "__main__":
    sys.exit(main())
