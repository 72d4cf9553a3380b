"""Shared test fixtures: paths of the real H200 traces copied into tests/data/h200."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
H200 = DATA / "h200"
FIXTURES = {
    "single_vgg16cifar": H200 / "single_vgg16cifar.pt.trace.json.gz",
    "single_vgg16tv": H200 / "single_vgg16tv.pt.trace.json.gz",
    "dp_1dev": H200 / "dp_1dev.pt.trace.json.gz",
    "dp_dup00": H200 / "dp_dup00.pt.trace.json.gz",
    "ddp1_nccl_rank0": H200 / "ddp1_nccl_rank0.pt.trace.json.gz",
    "ddp2_gloo_rank0": H200 / "ddp2_gloo_rank0.pt.trace.json.gz",
    "ddp2_gloo_rank1": H200 / "ddp2_gloo_rank1.pt.trace.json.gz",
}


@pytest.fixture(scope="session")
def h200() -> dict[str, Path]:
    return dict(FIXTURES)
