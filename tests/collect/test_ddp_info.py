"""The manifest's ddp section from DDP's reducer figures, and the summary's choice of steps."""

from __future__ import annotations

from typing import Any

import pytest

from dpprof.collect.config import RunConfig
from dpprof.collect.ddp_info import MAX_WATCH_STEPS, BucketWatch, ddp_section, parse_sizes
from dpprof.collect.session import profiler_section, unprofiled_steps


class FakeDDP:
    """What DistributedDataParallel exposes: settings as attributes, the reducer's figures as strings."""

    def __init__(self, data: dict[str, Any] | None, **attrs: Any) -> None:
        self.data = data
        self.calls = 0
        for k, v in attrs.items():
            setattr(self, k, v)

    def _get_ddp_logging_data(self) -> dict[str, Any]:
        self.calls += 1
        if self.data is None:
            raise AttributeError("no logger")
        return self.data


def test_parse_sizes():
    assert parse_sizes("84440, 80800") == [84440, 80800]
    assert parse_sizes("88840") == [88840]
    assert parse_sizes([1, 2]) == [1, 2]
    assert parse_sizes("") is None and parse_sizes(None) is None and parse_sizes("1, x") is None


def test_section_prefers_rebuilt_buckets_and_reads_settings_from_attributes():
    ddp = FakeDDP({"bucket_sizes": "165240", "rebuilt_bucket_sizes": "84440, 80800", "bucket_cap_bytes": 1},
                  bucket_bytes_cap=25 * 2**20, gradient_as_bucket_view=True, broadcast_buffers=False,
                  static_graph=True, find_unused_parameters=False)
    s = ddp_section(ddp, step=2)
    assert s["bucket_sizes_bytes"] == [84440, 80800] and s["bucket_sizes_source"] == "rebuilt"
    assert s["buckets"] == 2 and s["bucket_cap_mb"] == 25.0 and s["bucket_cap_bytes"] == 25 * 2**20
    assert (s["gradient_as_bucket_view"], s["broadcast_buffers"], s["static_graph"],
            s["find_unused_parameters"]) == (True, False, True, False)
    assert s["read_after_step"] == 2 and s["note"] is None


def test_section_falls_back_to_logging_keys_and_initial_buckets():
    ddp = FakeDDP({"bucket_sizes": "1048576, 2000", "bucket_cap_bytes": 2**20, "gradient_as_bucket_view": 0,
                   "broadcast_buffers": 1, "find_unused_parameters": 0})
    s = ddp_section(ddp)
    assert s["bucket_sizes_bytes"] == [1048576, 2000] and s["bucket_sizes_source"] == "initial"
    assert s["bucket_cap_mb"] == 1.0 and s["broadcast_buffers"] is True and s["static_graph"] is None
    assert "not rebuilt" in s["note"]


def test_section_without_reducer_figures_says_so():
    s = ddp_section(FakeDDP(None))
    assert s["bucket_sizes_bytes"] is None and s["bucket_sizes_source"] is None and s["buckets"] is None
    assert s["bucket_cap_mb"] is None and "reports no bucket sizes" in s["note"]


def test_watch_stops_after_the_rebuild_or_after_max_steps():
    data: dict[str, Any] = {"bucket_sizes": "100"}
    ddp = FakeDDP(data)
    w = BucketWatch(ddp)
    assert w.poll(0) is False and not w.done  # same initial buckets: nothing new to write
    data["rebuilt_bucket_sizes"] = "60, 40"
    assert w.poll(1) is True and w.done and w.section["bucket_sizes_bytes"] == [60, 40]
    calls = ddp.calls
    assert w.poll(2) is False and ddp.calls == calls  # no more reads once rebuilt
    never = BucketWatch(FakeDDP({"bucket_sizes": "100"}))
    assert never.poll(MAX_WATCH_STEPS) is False and never.done


def _steps(n: int, cfg: RunConfig) -> list[dict[str, Any]]:
    start = cfg.profile_wait + cfg.profile_warmup
    on = range(cfg.profile_wait, cfg.profiler_window_end)
    # profiled steps 10x slower, step 0 5x: neither may reach the run's speed
    return [{"step": i, "wall_ms": 100.0 if start <= i < cfg.profiler_window_end else 50.0 if i == 0 else 10.0 + i,
             "profiled": start <= i < cfg.profiler_window_end, "profiler_on": i in on} for i in range(n)]


@pytest.mark.parametrize("n,basis,picked", [(9, "after_window", [6, 7, 8]), (6, "before_window", [1]),
                                            (1, None, [])])
def test_unprofiled_steps(n, basis, picked):
    cfg = RunConfig(strategy="single", model="tiny")  # window: wait 2, warm-up 1, active 3
    b, steps = unprofiled_steps(cfg, _steps(n, cfg))
    assert b == basis and [s["step"] for s in steps] == picked
    if picked:
        sec = profiler_section(cfg, _steps(n, cfg), True)
        assert sec["unprofiled_basis"] == basis and sec["unprofiled_steps"] == len(picked)


def test_unprofiled_steps_without_profiler():
    cfg = RunConfig(strategy="single", model="tiny", profile=False)
    b, steps = unprofiled_steps(cfg, _steps(4, cfg))
    assert b == "no_profiler" and [s["step"] for s in steps] == [1, 2, 3]
    assert profiler_section(cfg, _steps(4, cfg), True)["unprofiled_step_ms_median"] is None
