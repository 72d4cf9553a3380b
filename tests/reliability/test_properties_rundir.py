"""Property test: random manifests and sidecar files of the wrong types never make a command crash (issue 12).

A run directory holds one good trace and, drawn by hypothesis, a manifest, ``steps.rank*.jsonl``, an
``nvml.<host>.jsonl`` and a ``nodes/<host>.json`` shaped like docs/run-format.md but with any value
anywhere: strings for numbers, lists for objects, NaN, Infinity, 10**400, huge and negative integers, rich
markup and terminal escapes, nesting. ``analyze``, ``merge-nvml`` and ``report`` must each either work
(exit 0, nothing on stderr but dpprof's own warnings) or refuse in one line (exit 2): never exit 1, never
a traceback, never a raw control character.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpprof.cli import main
from dpprof.manifest import MANIFEST_SPEC as MANIFEST
from dpprof.schema import BOOL, INT, NODE, NUM, STEP, STR, MapOf
from dpprof.trace.nvml_samples import HEADER_SPEC
from tests.data.bad.generate import case_dir

CONTROL = case_dir("control", Path("/nonexistent")) / "trace.pt.trace.json.gz"
#: A time inside the control trace's span (base time + its first step), Unix ns.
T_IN_TRACE = 1_790_857_026_000_000_000 + 4_939_957_429_209_771
SAMPLE = {"type": STR, "t_ns": INT, "cuda_index": INT, "nvml_index": INT, "util_gpu_pct": NUM,
          "mem_used_bytes": NUM, "power_mw": NUM, "message": STR}

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.just(10**400), st.just(-(10**30)),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["[/red]", "[bold]x", "\x1b]0;t\x07", "\x1b[2J", "NaN", "1e300", "", "0", "-1", "nccl"]),
)
anything = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                        | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=6)
#: Right-typed values, absurd ones included; strings from the vocabulary the readers branch on.
WORDS = ("ddp", "dp", "single", "running", "complete", "incomplete", "failed", "cuda", "cpu", "multi_device",
         "one_device", "no_gpu", "nccl", "gloo", "h", "nodes/h.json", "nvml.h.jsonl", "after_window")
RIGHT = {INT: st.one_of(st.integers(-3, 16), st.integers(-(2**63), 2**63 - 1), st.just(T_IN_TRACE)),
         NUM: st.floats(allow_nan=False, allow_infinity=False),
         STR: st.one_of(st.sampled_from(WORDS), st.text(max_size=12)), BOOL: st.booleans()}


#: A sample line of the right types (the merge has something to insert), with absurd values among them.
good_sample = st.fixed_dictionaries({
    "type": st.just("sample"), "t_ns": st.integers(T_IN_TRACE - 10**6, T_IN_TRACE + 10**9),
    "cuda_index": st.sampled_from([0, 0, 1, -1, 2**40]), "nvml_index": st.integers(-1, 3),
    "util_gpu_pct": st.floats(-1e300, 1e300), "mem_used_bytes": st.sampled_from([0, 2**62, None]),
    "power_mw": st.integers(0, 10**6)})


@st.composite
def shaped(draw: st.DrawFn, spec: Any, depth: int = 0) -> Any:
    """A value shaped like ``spec`` (dpprof.schema) where each part may be of any type instead."""
    if isinstance(spec, dict) and depth < 4 and draw(st.integers(0, 4)):
        out = {k: draw(shaped(v, depth + 1)) for k, v in sorted(spec.items()) if draw(st.booleans())}
        if draw(st.booleans()):
            out[draw(st.text(max_size=6))] = draw(anything)
        return out
    if isinstance(spec, list) and depth < 4 and draw(st.integers(0, 3)):
        return draw(st.lists(shaped(spec[0], depth + 1), max_size=3))
    if isinstance(spec, MapOf) and depth < 4 and draw(st.integers(0, 3)):
        return draw(st.dictionaries(st.text(max_size=6), shaped(spec.value, depth + 1), max_size=3))
    if isinstance(spec, str) and draw(st.booleans()):
        return draw(RIGHT[spec])
    return draw(anything)


def _fields(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {"value": value}


def _line(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


@st.composite
def run_files(draw: st.DrawFn) -> dict[str, bytes]:
    files = {"manifest.json": _line(draw(shaped(MANIFEST)))}
    if draw(st.booleans()):
        files["steps.rank0.jsonl"] = b"\n".join(_line(draw(shaped(STEP))) for _ in range(draw(st.integers(0, 6))))
    if draw(st.booleans()):
        header = {"type": "header", **_fields(draw(shaped(HEADER_SPEC)))} if draw(st.integers(0, 3)) \
            else draw(anything)
        samples = [{"type": "sample", **_fields(draw(shaped(SAMPLE)))} for _ in range(draw(st.integers(0, 3)))]
        samples += draw(st.lists(good_sample, max_size=4))
        files["nvml.h.jsonl"] = b"\n".join(_line(x) for x in [header, *samples]) + draw(st.sampled_from([b"\n", b""]))
    if draw(st.booleans()):
        files["nodes/h.json"] = _line(draw(shaped(NODE)))
    return files


def _write_run(root: Path, files: dict[str, bytes]) -> Path:
    run = root / "run"
    (run / "traces").mkdir(parents=True)
    shutil.copy(CONTROL, run / "traces" / "rank0.1.pt.trace.json.gz")
    for name, data in files.items():
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_bytes(data)
    return run


def _check(cmd: list[str], capsys: pytest.CaptureFixture[str], quiet_stderr: bool) -> None:
    rc = main(cmd)
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "internal error" not in err, err
    assert "\x1b" not in out + err and "\x07" not in out + err, "a raw control character was printed"
    assert rc in (0, 2), (rc, err)
    if rc == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"dpprof {cmd[0]}: error:"), err
    elif quiet_stderr:
        assert err == "", err


SETTINGS = {"deadline": None, "derandomize": True,
            "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                      HealthCheck.data_too_large]}


@settings(max_examples=40, **SETTINGS)
@given(files=run_files())
def test_analyze_and_merge_nvml_never_crash(files: dict[str, bytes], capsys: pytest.CaptureFixture[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        run = _write_run(Path(tmp), files)
        _check(["analyze", str(run)], capsys, quiet_stderr=True)
        _check(["merge-nvml", str(run)], capsys, quiet_stderr=False)  # NVML warnings go to stderr


@settings(max_examples=12, **SETTINGS)
@given(files=run_files())
def test_report_never_crashes(files: dict[str, bytes], capsys: pytest.CaptureFixture[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        run = _write_run(Path(tmp), files)
        _check(["report", str(run), "--out", str(Path(tmp) / "r.html")], capsys, quiet_stderr=True)
