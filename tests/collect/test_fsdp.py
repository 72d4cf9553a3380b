"""FSDP in the harness (``dpprof profile --strategy fsdp``: FSDP2 over gloo on the CPU, 2 processes) and
the FSDP facts the manifest records for either API (torch/distributed/fsdp)."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from torch import nn

from dpprof.collect.fsdp_info import wrapper_kind
from dpprof.collect.models import build_model
from dpprof.collect.strategies import fsdp_units

from .helpers import FAST, manifest, only_run_dir, profile, steps, trace_json


def test_fsdp_units_hold_nearly_all_of_vgg16s_parameters():
    model = build_model("vgg16")
    units = fsdp_units(model)
    assert [type(m) for m in units].count(nn.Linear) == 1 and len(units) == 14  # 13 conv + the classifier
    in_units = sum(p.numel() for m in units for p in m.parameters())
    assert in_units / sum(p.numel() for p in model.parameters()) > 0.999  # BatchNorm's 8,448 stay at the root


def test_plain_modules_are_no_wrapper():
    assert wrapper_kind(nn.Linear(2, 2)) is None
    assert wrapper_kind(nn.DataParallel(nn.Linear(2, 2))) == "dp"


@pytest.mark.slow
def test_fsdp2_two_gloo_processes(tmp_path):
    assert profile(["--strategy", "fsdp", "--nproc", "2", "--steps", "8", "--out", str(tmp_path), *FAST]) == 0
    run = only_run_dir(tmp_path)
    assert run.name.startswith("fsdp-tiny-b16-")
    m = manifest(run)
    assert m["status"] == "complete" and m["config"]["strategy"] == "fsdp" and m["config"]["world_size"] == 2
    assert m["config"]["backend"] == "gloo" and m["config"]["per_rank_batch_size"] == 8
    # tiny: two convolutions and one linear layer sharded on their own, then the root (its BatchNorms)
    assert m["fsdp"] == {"api": "fully_shard", "units": 4, "mesh_shape": [2], "placements": ["S(0)"],
                         "sharding_strategy": None}
    assert m["model_info"]["params"] == 1610 and m["ddp"] is None
    assert m["summary"]["steps"] == 8 and m["profiler"]["profiled_steps"] == 3
    assert m["epochs"][0]["test_acc"] is not None  # held-out accuracy through the sharded model
    traces = sorted((run / "traces").iterdir())
    assert [p.name.split(".")[0] for p in traces] == ["rank0", "rank1"]
    for r, path in enumerate(traces):
        data = trace_json(path)
        assert (data["distributedInfo"]["rank"], data["distributedInfo"]["world_size"]) == (r, 2)
        assert data["dpprof"]["strategy"] == "fsdp"
        names = Counter(e.get("name") for e in data["traceEvents"])
        # FSDP2's own annotations and its collectives (FIELD_NOTES: FSDP2 on the CPU over gloo)
        assert names["FSDP::root_pre_forward"] == 3 and names["c10d::_reduce_scatter_base_"] > 0
        assert names["gloo:all_gather"] > 0
        assert [s["step"] for s in steps(run, r)] == list(range(8))
    node = json.loads(next((run / "nodes").glob("*.json")).read_text())
    assert node["ranks"] == [0, 1]
