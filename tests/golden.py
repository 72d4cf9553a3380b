"""Golden outputs: ``dpprof analyze`` JSON and ``dpprof report`` pages of the fixtures, kept in tests/data/golden/.

They were written at the start of the architecture issue (11), after the collectives (9) and verdicts (10) issues
changed the schema, so that moving code around cannot change what dpprof says without a test failing
(tests/test_golden.py). When a change of output is intended, rewrite them and commit the diff with the change::

    .venv/bin/python -m tests.golden --write

Each case runs the commands as a user would (``dpprof.cli.main``); paths are written relative (``<root>`` for
the repository, ``<tmp>`` for a synthetic run's folder) so the files do not depend on where the clone lives.
``CASES`` are ``analyze`` + ``report`` of one run; ``COMPARES`` the ``compare`` page of two. Besides trace files,
they cover whole run directories: the committed CPU run ``tests/data/cpu/ddp2_tiny_run`` (as the collector wrote
it: manifest, ``nodes/``, ``steps.rank*.jsonl``, an NVML header without samples) and a synthetic 4-GPU DP run
with NVML samples and recorded step times (``_synth_dp_nvml``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from tests.conftest import DATA, FIXTURES

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = DATA / "golden"
CPU = DATA / "cpu"


def _fixture(*names: str) -> Callable[[Path], list[str]]:
    return lambda _tmp: [str(FIXTURES[n]) for n in names]


def _synth(kind: str, n: int, variant: str) -> Callable[[Path], list[str]]:
    def make(tmp: Path) -> list[str]:
        from tests.synth import write_ddp_run, write_dp_run

        writer = write_dp_run if kind == "dp" else write_ddp_run
        folder, _ = writer(tmp, n, variant)
        return [str(folder.parent)]

    return make


def _synth_dp_nvml(tmp: Path) -> list[str]:
    """The synthetic DP run over 4 GPUs (balanced) laid out as a collector would leave it: NVML samples of the 4
    GPUs every 5 ms across the trace (``nvml.synthetic.jsonl``, docs/run-format.md), the node file, and
    ``steps.rank0.jsonl`` with six steps, the profiled ones (3-5) timed as in the trace."""
    from tests.synth import write_dp_run
    from tests.synth.kineto import BASE_TIME_NS

    folder, meta = write_dp_run(tmp, 4, "balanced")
    run = folder.parent
    first_us, last_us = meta["steps"][0][1] - 1_000.0, meta["steps"][-1][2] + 1_000.0
    header = {"type": "header", "schema": "dpprof.nvml/1", "host": "synthetic", "period_ms": 5, "available": True,
              "driver": "580.00", "started_unix_ns": BASE_TIME_NS + int(first_us * 1000), "pid": 1, "pcie": None,
              "fields": ["util_gpu_pct", "util_mem_pct", "mem_used_bytes", "power_mw", "sm_clock_mhz",
                         "pcie_tx_kbps", "pcie_rx_kbps", "clock_event_reasons"],
              "gpus": [{"nvml_index": d, "cuda_index": d, "uuid": f"GPU-synthetic-{d}", "name": "NVIDIA H200",
                        "sm_clock_max_mhz": 1980} for d in range(4)],
              "clock_event_reasons_call": "nvmlDeviceGetCurrentClocksEventReasons", "warnings": []}
    lines = [header]
    for k, t_us in enumerate(range(int(first_us), int(last_us) + 1, 5_000)):
        for d in range(4):  # the output device (GPU 0) busier and hungrier than the replicas
            lines.append({"type": "sample", "t_ns": BASE_TIME_NS + t_us * 1000, "nvml_index": d, "cuda_index": d,
                          "util_gpu_pct": (96 if d == 0 else 88) - k % 3, "util_mem_pct": 30 + d,
                          "mem_used_bytes": (12 + (d == 0) * 3) * 2**30 + k * 2**20, "power_mw": 450_000 - d * 10_000,
                          "sm_clock_mhz": 1980, "pcie_tx_kbps": None, "pcie_rx_kbps": None,
                          "clock_event_reasons": 0})
    (run / "nvml.synthetic.jsonl").write_text("".join(json.dumps(x, sort_keys=True) + "\n" for x in lines))
    (run / "nodes").mkdir()
    (run / "nodes" / "synthetic.json").write_text(json.dumps(
        {"host": "synthetic", "node_key": "synthetic", "node_rank": 0, "nvml_file": "nvml.synthetic.jsonl",
         "ranks": [0], "gpus": [{"cuda_index": d, "nvml_index": d, "uuid": f"GPU-synthetic-{d}", "name": "NVIDIA H200",
                                 "memory_total_bytes": 150109880320} for d in range(4)],
         # as dpprof.collect.worker writes it: keyed node:cuda_index
         "peak_memory_bytes": {f"synthetic:{d}": (14 - (d > 0)) * 2**30 for d in range(4)}},
        sort_keys=True))
    profiled = {n: (end - start) / 1000.0 for n, start, end in meta["steps"]}
    steps = [{"rank": 0, "epoch": 0, "step": n, "wall_ms": round(profiled.get(n, 11.5 - 0.25 * n), 3),
              "images_per_s": None, "loss": None, "profiled": n in profiled, "profiler_on": n >= 1}
             for n in range(6)]
    (run / "steps.rank0.jsonl").write_text("".join(json.dumps(x, sort_keys=True) + "\n" for x in steps))
    return [str(run)]


#: name -> (inputs given a scratch folder, extra options for both commands)
CASES: dict[str, tuple[Callable[[Path], list[str]], list[str]]] = {
    "single_vgg16cifar": (_fixture("single_vgg16cifar"), []),
    "single_vgg16tv": (_fixture("single_vgg16tv"), []),
    "dp_1dev": (_fixture("dp_1dev"), []),
    "dp_dup00": (_fixture("dp_dup00"), []),
    "dp_dup00_baseline": (_fixture("dp_dup00"), ["--baseline", str(FIXTURES["single_vgg16cifar"])]),
    "ddp1_nccl": (_fixture("ddp1_nccl_rank0"), []),
    "ddp2_gloo": (_fixture("ddp2_gloo_rank0", "ddp2_gloo_rank1"), []),
    "fsdp2_gloo_cpu": (lambda _tmp: [str(CPU / f"fsdp2_gloo_rank{r}.pt.trace.json.gz") for r in (0, 1)], []),
    "synth_dp4_gpu0_bound": (_synth("dp", 4, "gpu0_bound"), []),
    "synth_dp4_slow_link": (_synth("dp", 4, "slow_link"), []),
    "synth_ddp4_straggler": (_synth("ddp", 4, "straggler"), []),
    "cpu_ddp2_tiny_run": (lambda _tmp: [str(CPU / "ddp2_tiny_run")], []),
    "synth_dp4_nvml_run": (_synth_dp_nvml, []),
}
#: name -> (the two inputs of ``dpprof compare`` given a scratch folder)
COMPARES: dict[str, Callable[[Path], list[str]]] = {
    "compare_dp_dup00_vs_ddp1": _fixture("dp_dup00", "ddp1_nccl_rank0"),
    "compare_dp4_nvml_vs_ddp4": lambda tmp: [*_synth_dp_nvml(tmp / "a"), *_synth("ddp", 4, "straggler")(tmp / "b")],
}
NAMES = sorted([*CASES, *COMPARES])


def _normalise(text: str, tmp: Path) -> str:
    # the report links traces relative to itself (it is written in tmp)
    for real, name in ((os.path.relpath(ROOT, tmp), "<root>"), (tmp.resolve(), "<tmp>"), (tmp, "<tmp>"),
                       (ROOT, "<root>")):
        text = text.replace(str(real), name)
    return text


def produce(name: str, tmp: Path) -> dict[str, str]:
    """Run the case's commands; returns {"analysis.json": ..., "report.html": ...} (``CASES``) or
    {"compare.html": ...} (``COMPARES``), with paths made relative."""
    from dpprof.cli import main

    quiet = io.StringIO()
    if name in COMPARES:
        a, b = COMPARES[name](tmp)
        with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            rc = main(["compare", a, b, "--out", str(tmp / "compare.html")])
        if rc:
            raise RuntimeError(f"golden case {name}: compare exited {rc}: {quiet.getvalue()[-2000:]}")
        return {"compare.html": _normalise((tmp / "compare.html").read_text(encoding="utf-8"), tmp)}
    make, extra = CASES[name]
    inputs = make(tmp)
    out_json, out_html = tmp / "analysis.json", tmp / "report.html"
    with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        rc_a = main(["analyze", *inputs, *extra, "--json", str(out_json), "--quiet"])
        rc_r = main(["report", *inputs, *extra, "--out", str(out_html)])
    if rc_a or rc_r:
        raise RuntimeError(f"golden case {name}: analyze exited {rc_a}, report {rc_r}: {quiet.getvalue()[-2000:]}")
    return {f: _normalise((tmp / f).read_text(encoding="utf-8"), tmp) for f in ("analysis.json", "report.html")}


def write_all(names: list[str]) -> None:
    for name in names:
        with tempfile.TemporaryDirectory(prefix="dpprof-golden-") as tmp:
            files = produce(name, Path(tmp))
        folder = GOLDEN / name
        folder.mkdir(parents=True, exist_ok=True)
        for file, text in files.items():
            (folder / file).write_text(text, encoding="utf-8")
        print(f"wrote {folder.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="rewrite the golden files")
    ap.add_argument("cases", nargs="*", default=NAMES, help="cases (default: all)")
    args = ap.parse_args()
    if not args.write:
        ap.error("nothing to do without --write (the comparison is tests/test_golden.py)")
    write_all(args.cases)
