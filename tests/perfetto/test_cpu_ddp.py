"""The merged trace of a real 2-rank DDP run on the CPU (gloo, through torchrun), recorded by ``dpprof profile``
into ``tests/data/cpu/ddp2_tiny_run`` (its README says how): host-only ranks, their attribution on the host
timeline equal to ``analysis.json``, clocks as the analysis aligned them.

A recording rather than a fresh ``dpprof profile`` per test run, so that the figures checked here stay those of
one known run and the test needs neither torch nor torchrun. The workers' abort at exit that once made fresh runs
flaky here ("terminate called without an active exception", a gloo process group destroyed at interpreter
teardown) is gone: they now end with ``os._exit`` once their files are written (``dpprof.collect.worker.exit_now``),
and a fresh 2-rank DDP profile through torchrun is exercised by ``tests/collect/test_profile_e2e.py``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dpprof import cli
from dpprof.analyze.model import Analysis
from dpprof.perfetto.merge import merge
from tests.conftest import DATA
from tests.perfetto import checks

RUN = DATA / "cpu" / "ddp2_tiny_run"


@pytest.fixture()
def ddp_cpu_run(tmp_path: Path) -> Path:
    return Path(shutil.copytree(RUN, tmp_path / RUN.name))  # outputs go into the copy, never the repository


def test_merged_cpu_ddp_run(ddp_cpu_run: Path) -> None:
    result = merge([ddp_cpu_run])
    assert result.output == ddp_cpu_run / "perfetto" / "all_ranks.json.gz" and result.gpus == 0
    doc = checks.load(result.output)
    checks.check_format(doc)
    procs = checks.check_groups(doc, [0, 1])
    assert sorted(procs.values()) == [(0, -1), (1, -1)]
    checks.check_ids_per_rank(doc, procs)
    # The slices equal analysis.json as `dpprof analyze` writes it (rounded to the ns), read back.
    assert cli.main(["analyze", str(ddp_cpu_run), "--quiet"]) == 0
    analysis = Analysis.from_json(json.loads((ddp_cpu_run / "analysis.json").read_text()))
    assert analysis.strategy == "ddp" and {s.device for s in analysis.steps} == {-1}
    assert checks.check_attribution(doc, analysis) > 0
    offsets = {o.rank: o for o in analysis.clock_offsets}
    bases = {r.rank: r.base_time_ns or 0 for r in analysis.ranks}
    clock = doc["metadata"]["clock"]
    for x in doc["metadata"]["ranks"]:
        r = x["rank"]
        assert x["offset_source"] == offsets[r].source and x["offset_us"] == offsets[r].offset_us
        assert f"rank {r}: {offsets[r].source}" in clock  # the trace's text says what each rank's offset rests on
        expected_ns = bases[r] - bases[0] + round(offsets[r].offset_us * 1000)
        assert round(x["shift_us"] * 1000) == expected_ns
    # gloo's spans end when each rank's own part is done: rank 1 keeps its trace clock, and the text says so.
    assert offsets[1].source.startswith("baseTimeNanoseconds") and "'baseTimeNanoseconds': the trace clocks" in clock
    assert "'collective ends'" not in clock and "matched collectives" not in clock
    # Each rank's ProfilerStep annotations sit where the analysis's rows put the steps, moved by that shift.
    for row in analysis.steps:
        shift = next(x["shift_us"] for x in doc["metadata"]["ranks"] if x["rank"] == row.rank)
        starts = [e["ts"] for e in checks.events_of(doc, row.rank, procs) if e["name"] == f"ProfilerStep#{row.step}"]
        assert starts == [pytest.approx(row.start_us + shift, abs=1e-3)]
    # Both ranks' gloo collectives are there, on their own processes, with the waits the analysis found.
    gloo = {procs[e["pid"]][0] for e in doc["traceEvents"] if str(e.get("name", "")).startswith("gloo:")}
    assert gloo == {0, 1}
    waits = [e for e in checks.attribution(doc) if e["name"] == "peer_wait"]
    assert waits and {e["args"]["waited_for"] for e in waits} <= {"rank 0", "rank 1"}
