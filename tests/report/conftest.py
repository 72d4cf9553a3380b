"""Report test fixtures: fixture runs analyzed once per session (analysis is the slow part)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dpprof.analyze.run import Run, load_run


@pytest.fixture(scope="session")
def dup00_run(h200: dict[str, Path]) -> Run:
    return load_run([h200["dp_dup00"]])


@pytest.fixture(scope="session")
def ddp_gloo_run(h200: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Run:
    folder = tmp_path_factory.mktemp("ddp2_gloo")
    for name in ("ddp2_gloo_rank0", "ddp2_gloo_rank1"):
        (folder / h200[name].name).write_bytes(h200[name].read_bytes())
    return load_run([folder])
