"""The merge on the real H200 traces, with NVML samples, with each selection option, streamed one rank at a time,
on minified traces, and the command's errors and messages."""

from __future__ import annotations

import gzip
import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from dpprof import cli
from dpprof.analyze.pipeline import analyze
from dpprof.perfetto import layout
from dpprof.perfetto.layout import Selection
from dpprof.perfetto.merge import merge
from dpprof.perfetto.rewrite import to_ns
from dpprof.trace.nvml_merge import COUNTERS
from tests.perfetto import checks
from tests.synth import write_ddp_run
from tests.synth.kineto import BASE_TIME_NS
from tests.trace.test_nvml_merge import sample, write_nvml


def _events(path: Path) -> list[dict[str, Any]]:
    return json.loads(gzip.decompress(path.read_bytes()))["traceEvents"]


@pytest.fixture(scope="module")
def gloo(h200: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("gloo")
    for name in ("ddp2_gloo_rank0", "ddp2_gloo_rank1"):
        shutil.copy(h200[name], folder / h200[name].name)
    return folder


def test_real_two_rank_gloo_traces(gloo: Path) -> None:
    result = merge([gloo])
    assert result.output == gloo / "perfetto" / "all_ranks.json.gz"
    doc = checks.load(result.output)
    checks.check_format(doc)
    analysis = analyze([gloo])
    procs = checks.check_groups(doc, [0, 1])
    checks.check_ids_per_rank(doc, procs)
    assert checks.check_attribution(doc, analysis) > 0
    # Clocks: rank 1 moved by exactly the analysis's offset (same baseTimeNanoseconds), to the ns.
    off = {o.rank: o.offset_us for o in analysis.clock_offsets}
    assert off[1] != 0
    for info in analysis.ranks:
        original = sorted(to_ns(e["ts"]) for e in _events(Path(info.path)) if e["ph"] == "X")
        merged = sorted(round(e["ts"] * 1000) for e in checks.events_of(doc, info.rank, procs) if e["ph"] == "X")
        assert merged == [t + round(off[info.rank] * 1000) for t in original]
    ranks_meta = {x["rank"]: x for x in doc["metadata"]["ranks"]}
    assert ranks_meta[1]["offset_us"] == off[1] and ranks_meta[1]["offset_source"] == "collective ends"
    clock = doc["metadata"]["clock"]
    assert "clock_offsets" in clock and "rank 0: reference; rank 1: collective ends." in clock
    assert "'collective ends': the median difference of matched collectives' ends" in clock
    assert "'baseTimeNanoseconds'" not in clock  # no rank fell back on the trace clocks


def test_real_dp_trace(h200: dict[str, Path], tmp_path: Path) -> None:
    result = merge([h200["dp_dup00"]], out=tmp_path / "dp.json.gz")
    doc = checks.load(result.output)
    checks.check_format(doc)
    checks.check_groups(doc, [0])
    assert checks.check_attribution(doc, analyze([h200["dp_dup00"]])) > 1000


def test_nvml_counters_on_each_rank_clock(tmp_path: Path) -> None:
    """Two ranks on two nodes whose clocks disagree (tests/synth CLOCK_SHIFT_US): a sample taken on a node when
    its rank's ProfilerStep began lands on that step's start in the merged trace, under that rank's GPU."""
    traces, _ = write_ddp_run(tmp_path, 2, "balanced")
    run = traces.parent
    (run / "nodes").mkdir()
    starts: dict[int, list[float]] = {}
    for r, path in enumerate(sorted(traces.iterdir())):
        starts[r] = sorted(e["ts"] for e in _events(path) if e["name"].startswith("ProfilerStep#"))
        rows = [sample(BASE_TIME_NS + to_ns(t), r, 50 + r) for t in starts[r]]
        rows.append(sample(BASE_TIME_NS + to_ns(starts[r][0]) - 10**9, r, 1))  # a second before: left out
        write_nvml(run / f"nvml.node{r}.jsonl", f"node{r}", rows)
        (run / "nodes" / f"node{r}.json").write_text(json.dumps({"ranks": [r], "nvml_file": f"nvml.node{r}.jsonl"}))
    result = merge([run])
    doc = checks.load(result.output)
    checks.check_format(doc)
    procs = checks.check_groups(doc, [0, 1])
    counters = [e for e in doc["traceEvents"] if e["ph"] == "C"]
    assert result.counts["nvml"] == len(counters) > 0
    names = {name for _, name in COUNTERS}
    for r in (0, 1):
        mine = [e for e in counters if procs[e["pid"]] == (r, r)]
        util = sorted((e["ts"], e["args"]["util_gpu_pct"]) for e in mine if "util_gpu_pct" in e["args"])
        steps = sorted(e["ts"] for e in checks.events_of(doc, r, procs) if e["name"].startswith("ProfilerStep#"))
        assert util == [(pytest.approx(t, abs=1e-3), 50 + r) for t in steps]
        assert {e["name"] for e in mine} <= names
    assert {procs[e["pid"]] for e in counters} == {(0, 0), (1, 1)}


def test_nvml_merged_copies_keep_their_counters_on_the_gpu(h200: dict[str, Path], tmp_path: Path) -> None:
    """``dpprof perfetto RUN/merged`` (merge-nvml's copies, counters already inside, on Kineto's GPU pid): the
    counters stay under the GPU's process, not the host's."""
    from dpprof.trace.nvml_merge import merge_run
    from tests.trace.test_nvml_merge import make_run, samples_over, span_ns

    run = make_run(tmp_path, {"rank0.1.pt.trace.json.gz": h200["single_vgg16cifar"]})
    base, start, end = span_ns(json.loads(gzip.decompress(h200["single_vgg16cifar"].read_bytes())))
    rows, n_in = samples_over(base, start, end, cuda=0, util=40)
    write_nvml(run / "nvml.hostA.jsonl", "hostA", rows)
    merge_run(run)
    doc = checks.load(merge([run / "merged"]).output)
    checks.check_format(doc)
    procs = checks.check_groups(doc, [0])
    counters = [e for e in doc["traceEvents"] if e["ph"] == "C"]
    assert counters and {procs[e["pid"]] for e in counters} == {(0, 0)}
    assert len([e for e in counters if "util_gpu_pct" in e["args"]]) == n_in


def test_selection_options(gloo: Path, tmp_path: Path) -> None:
    analysis = analyze([gloo])
    full = checks.load(merge([gloo], out=tmp_path / "full.json.gz").output)
    # --ranks: only that rank is written; its waits are still the whole run's
    one = merge([gloo], selection=Selection(ranks=(1,)))
    assert one.output.name == "ranks_1.json.gz"
    doc = checks.load(one.output)
    checks.check_groups(doc, [1])
    checks.check_attribution(doc, analysis, ranks=[1])
    # --steps: events overlapping the step only, flows whole
    doc = checks.load(merge([gloo], out=tmp_path / "s.json.gz", selection=Selection(steps=(4,))).output)
    checks.check_format(doc)
    procs = checks.check_groups(doc, [0, 1])
    checks.check_attribution(doc, analysis, steps=[4])
    for r in (0, 1):
        row = next(s for s in analysis.steps if s.rank == r and s.step == 4)
        shift = next(x["shift_us"] for x in doc["metadata"]["ranks"] if x["rank"] == r)
        lo, hi = row.start_us + shift, row.start_us + row.duration_us + shift
        for e in checks.events_of(doc, r, procs):
            assert e["ts"] <= hi + 1e-3 and e["ts"] + e.get("dur", 0) >= lo - 1e-3, e
    _check_flows_whole(doc, full)
    assert len(doc["traceEvents"]) < len(full["traceEvents"]) / 2
    # --no-host-ops: host annotations only; --no-kernels: no GPU activity, attribution still there
    doc = checks.load(merge([gloo], out=tmp_path / "h.json.gz", selection=Selection(host_ops=False)).output)
    procs = checks.processes(doc)
    host = Counter(e["cat"] for e in doc["traceEvents"] if e["ph"] == "X" and procs[e["pid"]][1] == -1)
    assert set(host) == {"user_annotation", "Trace"}
    assert not [e for e in doc["traceEvents"] if e["ph"] in "sf"]
    doc = checks.load(merge([gloo], out=tmp_path / "k.json.gz", selection=Selection(kernels=False)).output)
    cats = Counter(e.get("cat") for e in doc["traceEvents"] if e["ph"] == "X")
    assert not {"kernel", "gpu_memcpy", "gpu_memset"} & set(cats) and cats["cpu_op"] > 0
    procs = checks.processes(doc)
    assert not [e for e in doc["traceEvents"] if e["ph"] in "stf" and procs[e["pid"]][1] >= 0]
    checks.check_attribution(doc, analysis)
    _check_flows_whole(doc, full)


def _flows(doc: dict[str, Any]) -> Counter[tuple[Any, ...]]:
    return Counter((e["cat"], e["name"], e["id"]) for e in doc["traceEvents"] if e["ph"] in "stf")


def _check_flows_whole(doc: dict[str, Any], full: dict[str, Any]) -> None:
    """A flow is written with all its events or not at all: no arrow loses an end."""
    kept, every = _flows(doc), _flows(full)
    assert kept and all(n == every[k] for k, n in kept.items())


def test_streamed_one_rank_at_a_time(gloo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No file is read whole, and each rank is read twice (threads, then events) before the next one."""
    import dpprof.perfetto.rewrite as rewrite_mod
    import dpprof.perfetto.scan as scan_mod
    from dpprof.trace import decode

    order: list[str] = []

    def recording(real: Any) -> Any:
        def wrapper(path: Path, whole: bool, decode_fn: Any, **kw: Any) -> Any:
            order.append(Path(path).name)
            assert not whole
            return real(path, whole, decode_fn, **kw)
        return wrapper

    def no_whole_read(path: Path) -> bytes:
        raise AssertionError(f"{path} read whole")

    monkeypatch.setattr(scan_mod, "chunks", recording(scan_mod.chunks))
    monkeypatch.setattr(rewrite_mod, "chunks", recording(rewrite_mod.chunks))
    monkeypatch.setattr(decode, "read_bytes", no_whole_read)
    merge([gloo], out=tmp_path / "m.json.gz", jobs=1)
    names = sorted(p.name for p in gloo.glob("*.gz"))
    assert order == [names[0], names[0], names[1], names[1]]


def test_minified_traces_are_read_whole(gloo: Path, tmp_path: Path) -> None:
    folder = tmp_path / "minified"
    folder.mkdir()
    for path in sorted(gloo.glob("*.gz")):
        doc = json.loads(gzip.decompress(path.read_bytes()))
        (folder / path.name.removesuffix(".gz")).write_text(json.dumps(doc, separators=(",", ":")))
    pretty = checks.load(merge([gloo], out=tmp_path / "p.json.gz").output)
    minified = checks.load(merge([folder], out=tmp_path / "m.json.gz").output)
    assert minified["traceEvents"] == pretty["traceEvents"]


def main(argv: list[str]) -> int:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli, "COMMANDS", {"perfetto": cli.COMMANDS["perfetto"]})
        return cli.main(argv)


def test_command_messages_and_errors(gloo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(layout, "WARN_JSON_BYTES", 1000)
    assert main(["perfetto", str(gloo), "--out", str(tmp_path / "x.json.gz")]) == 0
    out, err = capsys.readouterr()
    assert f"wrote {tmp_path / 'x.json.gz'}: 2 rank(s), 2 GPU(s)" in out and "MB of JSON" in out
    assert "clock: rank 1: moved" in out and "collective ends" in out
    assert "Perfetto's in-browser JSON importer" in err and "--no-host-ops" in err
    bad = [
        (["--out", str(gloo / "x.json.gz")], "not beside the rank traces"),
        (["--out", str(tmp_path / "rank0.pt.trace.json.gz")], "read as one rank's trace"),
        (["--out", str(tmp_path / "x.txt")], "*.json or *.json.gz"),
        (["--ranks", "5"], "no trace for rank(s) 5 (ranks present: 0-1)"),
        (["--ranks", "zero"], "expected numbers and ranges"),
        (["--steps", "40-50"], "none of steps 40-50 was profiled (steps present: 3-5)"),
        (["--keep-serving"], "go with --open"),
    ]
    # --steps beyond the profiled ones: the profiled part is written, and the rest named.
    assert main(["perfetto", str(gloo), "--steps", "4-9", "--out", str(tmp_path / "s.json.gz")]) == 0
    out, err = capsys.readouterr()
    assert "note: --steps: steps 6-9 were not profiled (steps present: 3-5): wrote steps 4-5\n" in err
    assert main(["perfetto", str(gloo), "--steps", "2-3", "--out", str(tmp_path / "s.json.gz")]) == 0
    assert "note: --steps: step 2 was not profiled (steps present: 3-5): wrote step 3\n" in capsys.readouterr().err
    for extra, message in bad:
        assert main(["perfetto", str(gloo), *extra]) == 2, extra
        out, err = capsys.readouterr()
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, (extra, err)
    assert main(["perfetto", str(tmp_path / "missing")]) == 2
    assert "no such file or directory" in capsys.readouterr().err
