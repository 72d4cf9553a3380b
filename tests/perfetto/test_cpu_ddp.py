"""The merged trace of a real 2-rank DDP run on the CPU (``dpprof profile --strategy ddp --nproc 2``, gloo,
through torchrun): host-only ranks, their attribution on the host timeline, clocks as the analysis aligned them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dpprof import cli
from dpprof.analyze.model import Analysis
from dpprof.perfetto.merge import merge
from tests.collect.helpers import FAST, only_run_dir, profile
from tests.perfetto import checks

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ddp_cpu_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp_cpu")
    assert profile(["--strategy", "ddp", "--nproc", "2", "--steps", "6", "--out", str(out), *FAST]) == 0
    return only_run_dir(out)


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
    assert {s.device for s in analysis.steps} == {-1}
    assert checks.check_attribution(doc, analysis) > 0
    offsets = {o.rank: o for o in analysis.clock_offsets}
    bases = {r.rank: r.base_time_ns or 0 for r in analysis.ranks}
    for x in doc["metadata"]["ranks"]:
        r = x["rank"]
        assert x["offset_source"] == offsets[r].source and x["offset_us"] == offsets[r].offset_us
        expected_ns = bases[r] - bases[0] + round(offsets[r].offset_us * 1000)
        assert round(x["shift_us"] * 1000) == expected_ns
    # Each rank's ProfilerStep annotations sit where the analysis's rows put the steps, moved by that shift.
    for row in analysis.steps:
        shift = next(x["shift_us"] for x in doc["metadata"]["ranks"] if x["rank"] == row.rank)
        starts = [e["ts"] for e in checks.events_of(doc, row.rank, procs) if e["name"] == f"ProfilerStep#{row.step}"]
        assert starts == [pytest.approx(row.start_us + shift, abs=1e-3)]
