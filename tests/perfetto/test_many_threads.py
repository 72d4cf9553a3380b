"""A process with more than a thousand threads: DataParallel starts one new thread per replica in every forward
(``parallel_apply``, torch/nn/parallel/parallel_apply.py: ``threading.Thread(target=_worker, ...)`` per module),
and ``profile_all_threads`` records each of them, so a long window of an 8-GPU DP run holds thousands."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from dpprof.analyze.pipeline import analyze
from dpprof.perfetto import layout
from dpprof.perfetto.merge import merge
from tests.perfetto import checks
from tests.synth.kineto import TS0_US, RankTrace
from tests.synth.names import PROFILER_STEP

MAIN_TID = 4242
THREADS_PER_STEP = 600  # 75 steps of an 8-GPU DP forward
STEPS = (1, 2)
REPLICA_TID0 = 139_700_000  # parallel_apply's threads: large ids, no thread_name row (tests/synth/dp.py)


def _write(folder: Path) -> Path:
    """One rank, host only: per step a ProfilerStep on the main thread and ``THREADS_PER_STEP`` fresh threads with
    one 2 µs op each, one after the other inside the step (1,200 threads, ~2,400 events in all)."""
    tr = RankTrace(rank=0, pid=MAIN_TID, devices=(0,), world_size=None, backend=None)
    tid = REPLICA_TID0
    t = TS0_US + 1000.0
    for step in STEPS:
        start = t
        for _ in range(THREADS_PER_STEP):
            tr.thread(tid, None)
            tr.op(tid, "aten::addmm", t + 1.0, 2.0)
            tid += 1
            t += 4.0
        tr.annotate(MAIN_TID, PROFILER_STEP.format(step), start, t - start)
        t += 10.0
    folder.mkdir(parents=True)
    return tr.write(folder / "rank0.1.pt.trace.json")


def _host_threads(doc: dict) -> Counter[int]:
    """Events per tid on the rank's host process (the trace's own events, not dpprof's tracks)."""
    return Counter(e["tid"] for e in doc["traceEvents"] if e["ph"] == "X" and e["pid"] == layout.host_pid(0)
                   and e.get("cat") != "dpprof")


def test_twelve_hundred_threads_get_a_track_each(tmp_path: Path) -> None:
    trace = _write(tmp_path / "run")
    result = merge([trace], out=tmp_path / "m.json.gz")
    doc = checks.load(result.output)
    checks.check_format(doc)  # every pid and tid below 2**31
    checks.check_groups(doc, [0])
    per_tid = _host_threads(doc)
    assert len(per_tid) == 1 + len(STEPS) * THREADS_PER_STEP  # the main thread and every replica thread
    assert sorted(per_tid.values()).count(1) == len(STEPS) * THREADS_PER_STEP
    assert not [n for n in result.notes if "share one track" in n]
    assert checks.check_attribution(doc, analyze([trace])) > 0


def test_threads_beyond_the_stride_share_one_track(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past ``SHARED_K`` (9,999 by default; 1,000 here) the rest of a process's threads share its last track,
    named and said in a note; no event is lost."""
    monkeypatch.setattr(layout, "SHARED_K", 1000)
    trace = _write(tmp_path / "run")
    result = merge([trace], out=tmp_path / "m.json.gz")
    doc = checks.load(result.output)
    checks.check_format(doc)
    checks.check_groups(doc, [0])
    per_tid = _host_threads(doc)
    shared_tid = layout.host_pid(0) * layout.TID_STRIDE + 1000
    threads = 1 + len(STEPS) * THREADS_PER_STEP
    assert len(per_tid) == 1000 and per_tid[shared_tid] == threads - 999
    assert sum(per_tid.values()) == len(STEPS) * (THREADS_PER_STEP + 1)  # every op and ProfilerStep kept
    names = {e["tid"]: e["args"]["name"] for e in doc["traceEvents"] if e["ph"] == "M" and e["name"] == "thread_name"}
    assert names[shared_tid] == f"{threads - 999} more threads (one shared track)"
    assert f"rank 0: process {layout.host_pid(0)} has {threads:,} threads: the {threads - 999} after the first 999 " \
           "share one track" in " ".join(result.notes)
