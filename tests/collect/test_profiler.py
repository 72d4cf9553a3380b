from __future__ import annotations

import re

import torch

from dpprof.collect.profiler import TraceWindow, all_threads_config
from dpprof.rundir import rank_from_name

from .helpers import trace_json


def _run(window: TraceWindow, steps: int) -> None:
    m = torch.nn.Linear(4, 4)
    with window:
        for _ in range(steps):
            m(torch.randn(2, 4)).sum().backward()
            window.step()


def test_window_writes_one_named_gzipped_trace_with_distributed_info(tmp_path):
    w = TraceWindow(tmp_path / "traces", 0, wait=1, warmup=1, active=2, use_cuda=False,
                    distributed_info={"backend": None, "rank": 0, "world_size": 1},
                    extra_metadata={"strategy": "dp"})
    _run(w, 6)
    files = sorted((tmp_path / "traces").iterdir())
    assert files == w.files and len(files) == 1
    assert re.fullmatch(r"rank0\.\d+\.pt\.trace\.json\.gz", files[0].name)
    assert rank_from_name(files[0]) == 0
    data = trace_json(files[0])
    assert data["distributedInfo"] == {"backend": None, "rank": 0, "world_size": 1}
    assert data["dpprof"]["strategy"] == "dp"
    assert data["dpprof"]["profile_all_threads"] is (all_threads_config() is not None)
    steps = {e["name"] for e in data["traceEvents"] if e.get("name", "").startswith("ProfilerStep#")}
    assert steps == {"ProfilerStep#2", "ProfilerStep#3"}
    # HTA finds ranks with the regex "rank":\s+(\d+) line by line: the spaced form must be there.
    import gzip
    text = gzip.open(files[0], "rt").read()
    assert re.search(r'"rank":\s+0', text)


def test_window_step_classes():
    w = TraceWindow(__import__("pathlib").Path("/nonexistent"), 0, wait=2, warmup=1, active=3, use_cuda=False)
    assert [w.is_active_step(i) for i in range(8)] == [False, False, False, True, True, True, False, False]
    assert [w.is_profiler_on(i) for i in range(8)] == [False, False, True, True, True, True, False, False]


def test_stopping_inside_the_active_part_still_saves_the_trace(tmp_path):
    w = TraceWindow(tmp_path, 3, wait=0, warmup=1, active=5, use_cuda=False)
    _run(w, 3)
    assert len(w.files) == 1 and w.files[0].name.startswith("rank3.")
    assert trace_json(w.files[0])["traceEvents"]


def test_no_trace_when_the_run_ends_before_the_window(tmp_path):
    w = TraceWindow(tmp_path, 0, wait=5, warmup=1, active=1, use_cuda=False)
    _run(w, 3)
    assert w.files == [] and list(tmp_path.iterdir()) == []
