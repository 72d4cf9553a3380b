"""What dpprof says about the fixtures does not change unless a commit means it to (tests/golden.py).

The analysis JSON is compared value by value (floats to 1e-9 relative, so a different numpy summation order is not
a change); the report page as text. A failure names the first differences and how to rewrite the files when the
change is intended.
"""

from __future__ import annotations

import difflib
import json
import math
from pathlib import Path
from typing import Any

import pytest

from tests.golden import GOLDEN, NAMES, produce

REWRITE = "if the change is intended: .venv/bin/python -m tests.golden --write, and commit the diff with it"


def _differences(want: Any, got: Any, where: str = "$") -> list[str]:
    if isinstance(want, dict) and isinstance(got, dict):
        out = [f"{where}.{k}: {'missing' if k not in got else 'unexpected'}" for k in sorted(set(want) ^ set(got))]
        for k in sorted(set(want) & set(got)):
            out += _differences(want[k], got[k], f"{where}.{k}")
        return out
    if isinstance(want, list) and isinstance(got, list):
        if len(want) != len(got):
            return [f"{where}: {len(want)} items, now {len(got)}"]
        return [d for i, (w, g) in enumerate(zip(want, got, strict=True)) for d in _differences(w, g, f"{where}[{i}]")]
    if isinstance(want, float) and isinstance(got, (int, float)) and not isinstance(got, bool):
        same = math.isclose(want, got, rel_tol=1e-9, abs_tol=1e-9) or (math.isnan(want) and math.isnan(got))
        return [] if same else [f"{where}: {want!r} -> {got!r}"]
    return [] if want == got and type(want) is type(got) else [f"{where}: {want!r} -> {got!r}"]


@pytest.mark.parametrize("name", NAMES)
def test_outputs_match_golden(name: str, tmp_path: Path) -> None:
    got = produce(name, tmp_path)
    assert sorted(got) == sorted(p.name for p in (GOLDEN / name).iterdir()), f"{name}: files differ; {REWRITE}"
    for file, text in got.items():
        want = (GOLDEN / name / file).read_text(encoding="utf-8")
        if file.endswith(".json"):
            diffs = _differences(json.loads(want), json.loads(text))
            assert not diffs, f"{name}/{file} changed ({len(diffs)} values), first: {diffs[:8]}; {REWRITE}"
        elif text != want:
            diff = list(difflib.unified_diff(want.splitlines(), text.splitlines(), "golden", "now", n=0,
                                             lineterm=""))
            pytest.fail(f"{name}/{file} changed:\n" + "\n".join(diff[:30]) + f"\n{REWRITE}")


def test_the_comparison_sees_a_change() -> None:
    want = {"a": [1.0, {"b": "x"}], "c": 2}
    assert _differences(want, {"a": [1.0 + 1e-12, {"b": "x"}], "c": 2}) == []
    assert _differences(want, {"a": [1.001, {"b": "x"}], "c": 2}) == ["$.a[0]: 1.0 -> 1.001"]
    assert _differences(want, {"a": [1.0, {"b": "y"}]}) == ["$.c: missing", "$.a[1].b: 'x' -> 'y'"]
    assert _differences({"n": 1}, {"n": True}) == ["$.n: 1 -> True"]
