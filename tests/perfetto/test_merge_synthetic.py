"""The merged trace of the synthetic 2- and 4-GPU DP and DDP runs (tests/synth): valid Chrome trace JSON, one
process group per rank, ids apart, attribution equal to the analysis, clocks aligned, flows and events kept."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import pytest

from dpprof.analyze.pipeline import analyze
from dpprof.perfetto.merge import merge
from dpprof.rundir import resolve_inputs
from tests.perfetto import checks
from tests.synth import write_ddp_run, write_dp_run
from tests.synth.ddp import CLOCK_SHIFT_US
from tests.synth.names import NCCL_ALLREDUCE

RUNS = [("dp", 2, "balanced"), ("dp", 4, "slow_gpu"), ("ddp", 2, "balanced"), ("ddp", 4, "straggler")]


def _original(path: Path) -> list[dict]:
    return json.loads(gzip.decompress(path.read_bytes()))["traceEvents"]


@pytest.mark.parametrize(("strategy", "gpus", "variant"), RUNS)
def test_merged_synthetic_run(tmp_path: Path, strategy: str, gpus: int, variant: str) -> None:
    write = write_dp_run if strategy == "dp" else write_ddp_run
    traces, _ = write(tmp_path, gpus, variant)
    run = traces.parent
    result = merge([run])
    assert result.output == run / "perfetto" / "all_ranks.json.gz"
    doc = checks.load(result.output)
    checks.check_format(doc)
    analysis = analyze([run])
    ranks = [r.rank for r in analysis.ranks]
    assert ranks == ([0] if strategy == "dp" else list(range(gpus)))
    procs = checks.check_groups(doc, ranks)
    assert sorted(d for r, d in procs.values() if d >= 0) == sorted(
        d for r in analysis.ranks for d in r.devices)
    checks.check_ids_per_rank(doc, procs)
    assert checks.check_attribution(doc, analysis) > 0
    # Every event of every rank is there (metadata rows are the merge's own), flows included.
    for info in analysis.ranks:
        original = [e for e in _original(Path(info.path)) if e["ph"] != "M"]
        merged = checks.events_of(doc, info.rank, procs)
        assert Counter((e["ph"], e.get("cat"), e["name"]) for e in merged) == Counter(
            (e["ph"], e.get("cat"), e["name"]) for e in original)
    assert doc["metadata"]["clock_reference_rank"] == 0


def test_ddp_clocks_aligned(tmp_path: Path) -> None:
    """Each synthetic rank's clock is off by CLOCK_SHIFT_US; merged, the ranks' allreduce kernels (which end
    together by construction) end at the same instant, and the reference rank's events keep their ts."""
    traces, _ = write_ddp_run(tmp_path, 4, "straggler")
    doc = checks.load(merge([traces.parent]).output)
    procs = checks.processes(doc)
    ends: dict[int, list[float]] = {}
    for r in range(4):
        kernels = sorted((e for e in checks.events_of(doc, r, procs) if e["name"] == NCCL_ALLREDUCE),
                         key=lambda e: e["ts"])
        ends[r] = [e["ts"] + e["dur"] for e in kernels]
    assert len(ends[0]) == 9
    for r in range(1, 4):
        assert ends[r] == pytest.approx(ends[0], abs=1e-3)
    shifts = {x["rank"]: x["shift_us"] for x in doc["metadata"]["ranks"]}
    assert shifts == pytest.approx({r: -CLOCK_SHIFT_US[r] for r in range(4)}, abs=1e-3)
    original0 = sorted(e["ts"] for e in _original(sorted(traces.iterdir())[0]) if e["ph"] == "X")
    assert sorted(e["ts"] for e in checks.events_of(doc, 0, procs) if e["ph"] == "X") == original0


def test_same_input_same_bytes(tmp_path: Path) -> None:
    traces, _ = write_ddp_run(tmp_path, 2, "balanced")
    first = merge([traces.parent], out=tmp_path / "a.json.gz").output.read_bytes()
    second = merge([traces.parent], out=tmp_path / "b.json.gz").output.read_bytes()
    assert first == second


def test_uncompressed_output_and_trace_files_input(tmp_path: Path) -> None:
    traces, _ = write_dp_run(tmp_path, 2, "balanced")
    files = sorted(traces.iterdir())
    inputs = resolve_inputs(files)
    assert inputs.run_dir is not None  # one file inside RUN/traces: the run is found
    result = merge([str(p) for p in files], out=tmp_path / "out" / "dp.json")
    doc = json.loads(result.output.read_text(encoding="utf-8"))
    checks.check_format(doc)
    assert result.json_bytes == result.file_bytes == result.output.stat().st_size


def test_attribution_is_written_a_few_steps_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rank's attribution track (tens of thousands of slices on a real trace) was built whole, as dicts and then
    as JSON, and set the merge's peak memory: it goes out in whole steps of about CHUNK_EVENTS, the same bytes."""
    from dpprof.perfetto import merge as merge_mod
    from dpprof.perfetto import tracks

    traces, _ = write_dp_run(tmp_path, 4, "slow_gpu")
    whole = merge([traces.parent], out=tmp_path / "whole.json").output.read_bytes()
    sizes: list[int] = []
    real_add = merge_mod._Sink.add

    def add(self: object, lines: list[bytes], kind: str | None = None) -> None:
        if kind == "attribution":
            sizes.append(len(lines))
        real_add(self, lines, kind)  # type: ignore[arg-type]

    monkeypatch.setattr(tracks, "CHUNK_EVENTS", 20)
    monkeypatch.setattr(merge_mod._Sink, "add", add)
    chunked = merge([traces.parent], out=tmp_path / "chunked.json").output.read_bytes()
    slices = checks.attribution(checks.load(tmp_path / "chunked.json"))
    steps = [e for e in slices if e["name"].startswith("step ")]
    per_row = max(sum(1 for e in slices if e["tid"] == s["tid"] and s["ts"] <= e["ts"] <= s["ts"] + s["dur"])
                  for s in steps)  # one step row's slices, its step slice included
    assert 20 < per_row * 2 < sum(sizes) and len(sizes) > 3
    assert max(sizes) <= 19 + per_row + 2 * 4  # whole rows past the 20th event; the thread names (4 GPUs) last
    assert chunked == whole
