"""What the loader checks after decoding (issue 12's audit): absurd step numbers and durations, header fields
of the wrong type or range, a base time beyond int64 through merge-nvml. Cases from tests/data/bad."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dpprof.analyze.pipeline import analyze
from dpprof.cli import main
from dpprof.trace.load import load_trace
from dpprof.trace.metadata import read_header
from dpprof.trace.nvml_merge import COUNTERS, TraceSpan, counter_lines, format_us
from dpprof.trace.nvml_samples import FIELDS, GpuSamples
from tests.data.bad.base import _ranked, _two_ranks, base_trace, dumps, gz, steps_of
from tests.data.bad.generate import case_dir

H200 = Path(__file__).resolve().parents[1] / "data" / "h200"
NOPE = Path("/nonexistent")


def _notes(path: Path) -> dict[str, int]:
    return {code: n for code, _, n in load_trace(path).notes}


def _write(tmp: Path, trace: dict[str, Any], name: str = "trace.pt.trace.json.gz") -> Path:
    path = tmp / name
    path.write_bytes(gz(dumps(trace)))
    return path


# --- steps ------------------------------------------------------------------------------------------------

def test_step_numbers_beyond_int32_are_skipped_and_counted() -> None:
    rt = load_trace(case_dir("step_number_huge", NOPE) / "trace.pt.trace.json.gz")
    used = {rt.names[i] for i in np.unique(rt.name_id)}
    assert {n for n in used if n.startswith("ProfilerStep#")} == {"ProfilerStep#3", "ProfilerStep#4"}
    assert {code: n for code, _, n in rt.notes} == {"skipped_step_numbers": 8}


def test_step_overlapping_the_next_is_cut_at_its_start() -> None:
    """The audit's case: one step's dur set to 5e10 µs printed a 50,000,000 ms step overlapping the next."""
    t = base_trace()
    s3, s4 = steps_of(t)
    a = analyze([case_dir("step_dur_absurd", NOPE) / "trace.pt.trace.json.gz"])
    got = {s.step: s.duration_us for s in a.steps}
    assert got == pytest.approx({3: s4["ts"] - s3["ts"], 4: s4["dur"]}, abs=1e-3)
    counts = {w.code: w.count for w in a.warnings}
    assert counts["clipped_steps"] == 1 and counts["skipped_long_events"] == 4
    assert "cut at the next step's start" in next(w.message for w in a.warnings if w.code == "clipped_steps")


def test_absurd_last_step_is_skipped_not_stretched(tmp_path: Path) -> None:
    """No next step to cut it at: longer than the trace's span can hold, so skipped and counted."""
    t = base_trace()
    steps_of(t)[-1]["dur"] = 5e10
    a = analyze([_write(tmp_path, t)])
    assert [s.step for s in a.steps] == [3]
    assert {w.code: w.count for w in a.warnings}.get("skipped_long_events") == 1


def test_two_absurd_events_do_not_hide_each_other(tmp_path: Path) -> None:
    """The span is that of the starts: a second 5e10 µs event cannot make the first look ordinary."""
    t = base_trace()
    s3, s4 = steps_of(t)
    s3["dur"] = s4["dur"] = 5e10
    notes = _notes(_write(tmp_path, t))
    assert notes == {"clipped_steps": 1, "skipped_long_events": 1}


@pytest.mark.parametrize("name", sorted(p.name for p in H200.glob("*.pt.trace.json.gz")))
def test_real_traces_are_not_clipped_or_skipped(name: str) -> None:
    """Kineto's ``PyTorch Profiler (0)`` encloses the whole window; real steps never overlap."""
    assert not set(_notes(H200 / name)) & {"clipped_steps", "skipped_long_events", "skipped_step_numbers",
                                           "trace_metadata"}


# --- the header -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("dist", "want", "problems"), [
    ({"backend": "nccl", "rank": 3, "world_size": 4}, (3, 4, "nccl"), 0),
    ({"backend": 7, "rank": -5, "world_size": 0}, (None, None, None), 3),
    ({"rank": "0", "world_size": [1], "backend": {"x": 1}}, (None, None, None), 3),
    ({"rank": 1.5, "world_size": 1e300, "backend": "gloo"}, (None, None, "gloo"), 2),
    ({"rank": True, "world_size": 10**30}, (None, None, None), 2),
    ([1, 2], (None, None, None), 1),
])
def test_distributed_info_fields_are_checked_one_by_one(dist: Any, want: tuple[Any, ...], problems: int) -> None:
    head = read_header(dist, 1_790_857_026_000_000_000, [{"id": 0, "name": "H200"}])
    assert (head.rank, head.world_size, head.backend) == want
    assert len(head.problems) == problems, head.problems
    assert head.base_time_ns == 1_790_857_026_000_000_000 and head.gpu_names == {"0": "H200"}


@pytest.mark.parametrize("base", [10**30, 2**63 - 1, 2**62, -1, -(2**63), float("inf"), 1.79e18,
                                  "1790857026000000000", [1], True])
def test_base_time_not_epoch_ns_is_absent(base: Any) -> None:
    """Beyond int64 (merge-nvml's np.int64 raised), or an int64 before 1970 or after 2116: two such bases of one run
    differ by more than int64 holds (perfetto's shift of every timestamp raised)."""
    head = read_header(None, base, None)
    assert head.base_time_ns is None and len(head.problems) == 1
    assert head.problems[0].startswith("baseTimeNanoseconds: expected an integer of epoch nanoseconds")


@pytest.mark.parametrize("base", [0, 1_790_857_026_000_000_000, 2**62 - 1])
def test_base_time_of_epoch_ns_is_kept(base: int) -> None:
    head = read_header(None, base, None)
    assert head.base_time_ns == base and not head.problems


def test_perfetto_with_bases_at_the_int64_ends(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each base fits int64, their difference does not: perfetto raised OverflowError (exit 1)."""
    t0, t1 = _ranked(0, 2), _ranked(1, 2)
    t0["baseTimeNanoseconds"], t1["baseTimeNanoseconds"] = -(2**63), 2**63 - 1
    (tmp_path / "t").mkdir()
    for name, data in _two_ranks(t0, t1).items():
        (tmp_path / "t" / name).write_bytes(data)
    out = tmp_path / "p.json.gz"
    assert main(["perfetto", str(tmp_path / "t"), "--out", str(out)]) == 0, capsys.readouterr().err
    assert out.stat().st_size > 0


def test_wrong_header_costs_only_its_fields(tmp_path: Path) -> None:
    """Before, one wrong field made the typed decode fail and the whole header was dropped without a word."""
    t = base_trace()
    t["distributedInfo"] = {"backend": "gloo", "rank": "1", "world_size": 2,
                            "pg_config": [{"pg_name": "0", "pg_size": 2, "ranks": [0, 1]}, "x"]}
    t["deviceProperties"] = [{"id": "0", "name": "H200"}, {"id": 0, "name": "H200"}, 5]
    rt = load_trace(_write(tmp_path, t))
    assert (rt.rank, rt.world_size, rt.backend, rt.base_time_ns) == (None, 2, "gloo", t["baseTimeNanoseconds"])
    assert rt.pg_config == [{"pg_name": "0", "pg_size": 2, "ranks": [0, 1]}] and rt.gpu_names == {"0": "H200"}
    (note,) = [n for n in rt.notes if n[0] == "trace_metadata"]
    assert note[2] == 4 and "distributedInfo.rank" in note[1] and "deviceProperties[2]" in note[1]
    assert not rt.tolerant  # the events still took the typed path


def test_rank_below_zero_is_not_printed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", str(case_dir("distinfo_wrong_types", NOPE)), "--no-json"]) == 0
    out = capsys.readouterr().out
    assert "│  -5 │" not in out and "trace_metadata" in out


# --- a base time beyond int64 through the NVML merge --------------------------------------------------------

def _samples(t_ns: list[int]) -> GpuSamples:
    n = len(t_ns)
    return GpuSamples(node="h", host="h", cuda_index=0, nvml_index=0, uuid=None, name=None,
                      t_ns=np.array(t_ns, dtype=np.int64),
                      fields={f: np.full(n, 1.0) for f in FIELDS},
                      sm_clock_max_mhz=None)


@pytest.mark.parametrize(("base", "inside"), [(2**63 - 1, 3), (-(2**63), 3), (0, 3), (10**30, 0)])
def test_counter_lines_never_overflow(base: int, inside: int) -> None:
    """Times relative to the base are exact whatever the base (numpy's int64 wrapped, or raised on 10**30)."""
    gpu = _samples([0, 5_000, 2**63 - 1])
    span = TraceSpan(base_ns=base, start_ns=-(10**20), end_ns=10**20, devices=(0,), rank=0, events=1)
    lines, n_in, n_out = counter_lines(gpu, 0, span)
    assert (n_in, n_out) == (inside, 3 - inside) and len(lines) == len(COUNTERS) * n_in
    if inside:
        assert f'"ts": {format_us(0 - base)},'.encode() in lines[0]


def test_merge_nvml_with_a_base_time_beyond_int64(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Rank 1's base 10**30 crashed merge-nvml (np.int64 of it); now rank 0 is merged and rank 1 copied."""
    run = tmp_path / "run"
    (run / "traces").mkdir(parents=True)
    t0, t1 = _ranked(0, 2), _ranked(1, 2)
    t1["baseTimeNanoseconds"] = 10**30
    for name, data in _two_ranks(t0, t1).items():
        (run / "traces" / name).write_bytes(data)
    first = min(e["ts"] for e in t0["traceEvents"] if e.get("ph") == "X")
    t = t0["baseTimeNanoseconds"] + round(first * 1000) + 1000
    rows = [{"type": "header", "host": "h"}] + [{"type": "sample", "t_ns": t + k * 100_000, "cuda_index": 0,
                                                 "util_gpu_pct": 50} for k in range(5)]
    (run / "nvml.h.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["merge-nvml", str(run)]) == 0
    out, err = capsys.readouterr()
    assert "rank 0, 5 counter events from 5 samples" in out
    assert "rank1.pt.trace.json.gz: baseTimeNanoseconds is not an integer of epoch nanoseconds" in err
    assert "cannot place NVML samples; copied without NVML" in err
    same = [gzip.decompress((run / d / "rank1.pt.trace.json.gz").read_bytes()) for d in ("traces", "merged")]
    assert same[0] == same[1]


def test_pg_config_ranks_as_libkineto_on_demand_writes_them_are_kept() -> None:
    """libkineto's on-demand writer puts a group's ranks as a string ("[0, 1]"): not a wrong type, kept."""
    from dpprof.trace.metadata import read_header

    head = read_header({"rank": 0, "world_size": 2, "pg_config": [
        {"pg_name": "0", "pg_size": 2, "ranks": "[0, 1]"}, {"pg_name": "1", "pg_size": 2, "ranks": {"x": 1}}]},
        None, None)
    assert head.pg_config[0]["ranks"] == "[0, 1]"
    assert head.pg_config[1]["ranks"] is None and len(head.problems) == 1 and "pg_config[1].ranks" in head.problems[0]
