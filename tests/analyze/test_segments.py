"""The attribution as segments (timeline views): per step and category they sum to the Analysis rows."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest

from dpprof.analyze.pipeline import attribute
from dpprof.analyze.segments import RULES
from tests.synth import write_ddp_run, write_dp_run


def _check(paths: list[Path]) -> None:
    a, segs = attribute(paths)
    assert sorted(segs) == sorted(r.rank for r in a.ranks)
    for s in a.steps:
        g = segs[s.rank]
        totals: dict[str, float] = defaultdict(float)
        on: dict[str, float] = defaultdict(float)
        for i in range(len(g)):
            if g.step[i] == s.step and g.device[i] == s.device:
                totals[g.category[i]] += g.end[i] - g.start[i]
                if g.category[i] == "peer_wait":
                    on[g.who[i]] += g.end[i] - g.start[i]
                assert g.rule[i] in RULES
                assert s.start_us <= g.start[i] < g.end[i] <= s.start_us + s.duration_us + 1e-6
        for cat, us in s.categories_us.items():
            assert totals.get(cat, 0.0) == pytest.approx(us, abs=1e-3), (s.rank, s.device, s.step, cat)
        assert dict(on) == pytest.approx(dict(s.peer_wait_on_us), abs=1e-3)


def test_segments_sum_to_the_rows_of_synthetic_runs(tmp_path: Path) -> None:
    dp, _ = write_dp_run(tmp_path, 4, "slow_gpu")
    ddp, _ = write_ddp_run(tmp_path, 4, "straggler")
    _check([dp.parent])
    _check([ddp.parent])


def test_segments_sum_to_the_rows_of_real_traces(h200: dict[str, Path]) -> None:
    _check([h200["ddp2_gloo_rank0"], h200["ddp2_gloo_rank1"]])
    _check([h200["dp_dup00"]])
