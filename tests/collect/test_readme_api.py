"""The README's Python API example, run exactly as printed there."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .run_helpers import REPO, load, only_run, python, step_records


def readme_example() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    m = re.search(r"<!-- api-example -->\n```python\n(.*?)```", text, re.DOTALL)
    assert m, "the README lost its API example"
    return m.group(1)


def test_example_is_short():
    assert len(readme_example().strip().splitlines()) <= 16


@pytest.mark.slow
def test_readme_api_example_runs_and_records(tmp_path):
    (tmp_path / "train.py").write_text(readme_example())
    proc = python(["train.py"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = only_run(tmp_path / "traces")
    printed = proc.stdout.strip().removeprefix("profiled into ")
    assert Path(printed).is_absolute() and Path(printed).resolve() == run.resolve()  # absolute: see outputs.py
    m = load(run / "manifest.json")
    assert m["status"] == "complete" and m["script"]["api"] is True
    assert m["script"]["path"] == str(tmp_path / "train.py") and m["stepping"]["step_on"] == "manual"
    assert m["config"]["batch_size"] == 16 and m["model_info"]["params"] == 32 * 64 + 64 + 64 * 10 + 10
    assert len(m["files"]["traces"]) == 1
    assert [s["profiled"] for s in step_records(run)] == [False] * 3 + [True] * 3 + [False] * 4
