"""Every damaged trace of ``tests/data/bad/`` either analyzes or fails with one clear line (exit 2).

The table ``EXPECT`` is the decision for each case (also listed in docs/reliability.md):

* ``Ok(codes, ...)``: ``dpprof analyze`` exits 0; every step's categories sum to its duration; each
  regex in ``codes`` matches (``re.search``) the code of at least one warning, and when ``counted`` is
  set the matching warnings' ``count`` add up to at least that many skipped events. Warning codes are
  matched by regex because the codes are the analyzer's to name; the regex says what must be said.
* ``Err(pattern)``: exit 2, exactly one line on stderr starting ``dpprof analyze: error:``, naming
  the file and matching ``pattern`` (case-insensitive); never a traceback, never "internal error".

Rule of thumb behind the decisions: a damaged *event* among good ones is skipped and counted; a
damaged *file* is an error when it is the only input, and a warning when other ranks are readable.
"""

from __future__ import annotations

import html as html_lib
import json
import math
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dpprof.analyze.model import CATEGORIES
from dpprof.cli import main
from dpprof.trace import inflate
from tests.data.bad.generate import CASES, DAMAGED, LARGE, case_dir, case_files, write_case

ROOT = Path(__file__).resolve().parents[2]
UNREADABLE = r"not (valid |a )?(json|trace)|invalid|malformed|cannot (read|parse|decode)|decod|corrupt"


@dataclass(frozen=True)
class Ok:
    codes: tuple[str, ...] = ()
    counted: int = 0  # skipped events the matching warnings must count (at least)
    same_as_control: bool = False  # same steps (number, durations, GPU busy time) as the undamaged trace
    ranks: int = 1
    steps: int | None = 2  # profiler steps per rank (None: not asserted)


@dataclass(frozen=True)
class Err:
    pattern: str


EXPECT: dict[str, Ok | Err] = {
    "control": Ok(same_as_control=True),
    # whole-file damage: nothing to analyze
    "empty_file": Err(r"empty|no (trace )?events|" + UNREADABLE),
    "not_json": Err(UNREADABLE),
    "binary_garbage": Err(UNREADABLE + r"|gzip"),
    "truncated_gzip": Err(r"truncat|corrupt|gzip|compress|end of (stream|file)|incomplete"),
    "truncated_json": Err(r"truncat|incomplete|end of (data|file|input)|" + UNREADABLE),
    "json_scalar": Err(r"traceEvents|no (trace )?events|not a (chrome |kineto |json )?trace|object|expected"),
    "trace_events_missing": Err(r"traceEvents|no (trace )?events"),
    "trace_events_empty": Err(r"traceEvents|no (trace )?events|empty"),
    "trace_events_not_list": Err(r"traceEvents|no (trace )?events|list|array|expected"),
    "metadata_only": Err(r"no (trace |usable |timed |duration |complete )?(events|activit)|only metadata|nothing"),
    "deep_nesting_extreme": Err(r"nest|deep|recursion"),
    # tolerated variants of a good trace: same result as the control
    "top_level_list": Ok(same_as_control=True),
    "gzip_named_json": Ok(same_as_control=True),
    "plain_named_gz": Ok(same_as_control=True),
    "utf8_bom": Ok(same_as_control=True),
    "numbers_as_strings": Ok(same_as_control=True),
    "string_pids": Ok(same_as_control=True),
    "unknown_categories": Ok(same_as_control=True),
    "non_utf8_bytes": Ok(same_as_control=True),
    "deep_nesting_moderate": Ok(same_as_control=True),
    "long_name": Ok(same_as_control=True),
    "amd_rocm": Ok(same_as_control=True),
    "schema_2021": Ok(same_as_control=True),
    "display_unit_ns": Ok(same_as_control=True),
    "epoch_ns": Ok(("ns_timestamps",), same_as_control=True),
    # damaged events among good ones: skipped and counted
    "events_not_objects": Ok(("skip",), counted=4),
    "missing_ts": Ok(("skip",), counted=DAMAGED),
    "missing_dur": Ok(("skip",), counted=DAMAGED),
    "missing_ph": Ok(("skip",), counted=DAMAGED),
    "missing_name": Ok(("skip",), counted=DAMAGED),
    "negative_dur": Ok(("skip",), counted=DAMAGED),
    "nan_dur": Ok(("skip",), counted=DAMAGED),
    # odd but well-formed
    "args_null": Ok(),
    "overlapping_x_same_thread": Ok(),
    "dangling_correlation": Ok(),
    "no_profiler_step": Ok(("no_profiler_step",), steps=None),
    "zero_duration_step": Ok(steps=None),
    "step_without_gpu_work": Ok(steps=3),
    "gpu_work_after_last_step": Ok(("gpu_work_after_last_step",)),
    "cpu_only": Ok(),
    # several files
    "duplicate_ranks": Ok(("duplicate",), ranks=2),
    "mixed_world_sizes": Ok(("world_size",), ranks=2),
    "different_runs_mixed": Ok((r"different_run|mixed_run|run_mismatch|trace_id|backend",), ranks=2),
    "clock_offsets": Ok(ranks=2),
    "no_distinfo_two_files": Ok(("no_distributed_info",), ranks=2),
    "one_good_one_empty": Ok((r"unreadable|skipped_(file|trace|rank)|bad_trace|empty|trace_error|missing",)),
    # hostile and careless input (cases_hostile.py): printed escaped, skipped and counted, bounded
    "terminal_escapes": Ok(same_as_control=True),
    "rich_markup": Ok(same_as_control=True),
    "ts_outliers": Ok(("outlier",), counted=2 * DAMAGED, same_as_control=True),
    "device_ids_unknown": Ok(("unknown_device",), counted=4, same_as_control=True),
    "pid_huge": Ok(("unknown_device",), counted=DAMAGED, same_as_control=True),
    "world_size_huge": Ok(("missing_ranks",), counted=10**9 - 1, same_as_control=True),
    "rank_huge": Ok(),
    "step_number_huge": Ok(("skipped_step_numbers",), counted=8, same_as_control=True),
    "step_dur_absurd": Ok(("clipped_steps", "skipped_long_events")),
    "base_time_huge": Ok(("trace_metadata",), ranks=2),
    "distinfo_wrong_types": Ok(("trace_metadata",), counted=4, same_as_control=True),
    "corrupt_deflate": Err(r"gzip|corrupt|compress|" + UNREADABLE),
    "gzip_bomb": Err(r"inflat|bomb"),
    "manifest_wrong_types": Ok(("manifest_fields",), same_as_control=True),
    "manifest_huge_counts": Ok(("missing_ranks",), same_as_control=True),
    "sidecars_wrong_types": Ok(same_as_control=True),
    "manifest_deep": Ok(("no_manifest",), same_as_control=True),
}


@pytest.fixture(autouse=True)
def small_inflate_floor(monkeypatch: pytest.MonkeyPatch) -> None:
    """The limit is max(1 GiB, 50x compressed); the corpus' bomb is 48 MiB, so its floor is 32 MiB here."""
    monkeypatch.setattr(inflate, "INFLATE_FLOOR_BYTES", 32 << 20)


def test_table_covers_corpus() -> None:
    assert set(EXPECT) == set(CASES)
    ok = sum(isinstance(e, Ok) for e in EXPECT.values())
    assert len(CASES) >= 30 and ok >= len(CASES) / 2


@pytest.mark.parametrize("name", sorted(set(CASES) - LARGE))
def test_committed_case_matches_generator(name: str, tmp_path: Path) -> None:
    """The committed files are exactly what generate.py writes (so the corpus cannot drift)."""
    fresh = case_files(write_case(name, tmp_path))
    committed = case_files(case_dir(name, tmp_path / "unused"))
    assert sorted(committed) == sorted(fresh)
    for p, data in fresh.items():
        assert committed[p] == data, f"{name}/{p} differs: rerun generate.py"


def _analyze(folder: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    files = sorted(folder.iterdir())
    args = [str(files[0])] if len(files) == 1 else [str(folder)]
    rc = main(["analyze", *args, "--json", str(out)])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def check_steps(analysis: dict[str, Any]) -> None:
    """Every step: all categories present, finite, non-negative, summing to the duration."""
    for s in analysis["steps"]:
        cats = s["categories_us"]
        assert set(cats) == set(CATEGORIES), s
        for v in cats.values():
            assert v is not None and math.isfinite(v) and v >= -1e-3, s
        assert s["duration_us"] is not None and s["duration_us"] >= 0
        # to_json rounds each figure to 1 ns: allow 10 roundings on top of 1e-6 relative.
        assert abs(sum(cats.values()) - s["duration_us"]) <= max(1e-6 * s["duration_us"], 0.011), s


@pytest.fixture(scope="module")
def control(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("control") / "a.json"
    folder = case_dir("control", out.parent)
    rc = main(["analyze", str(next(folder.iterdir())), "--json", str(out)])
    assert rc == 0
    return json.loads(out.read_text())


def _step_key(a: dict[str, Any]) -> list[tuple[int, int, float, float]]:
    return sorted((s["rank"], s["step"], s["duration_us"], s["busy_us"]) for s in a["steps"])


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_trace(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                   monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    monkeypatch.delenv("DPPROF_DEBUG", raising=False)
    expect = EXPECT[name]
    folder = case_dir(name, tmp_path)
    out = tmp_path / "analysis.json"
    rc, stdout, stderr = _analyze(folder, out, capsys)
    assert "Traceback" not in stderr + stdout
    assert "\x1b" not in stderr + stdout and "\u202e" not in stderr + stdout, "a control character was printed"
    if isinstance(expect, Err):
        lines = stderr.strip().splitlines()
        assert rc == 2, f"{name}: expected exit 2, got {rc}: {stderr.strip()}"
        assert len(lines) == 1, f"{name}: expected one line on stderr, got {lines}"
        assert lines[0].startswith("dpprof analyze: error:"), lines[0]
        fname = next(folder.iterdir()).name
        assert fname in lines[0], f"{name}: message does not name the file: {lines[0]}"
        # Judge the words after the file name: the case's folder name must not satisfy the pattern.
        why = lines[0].split(fname, 1)[1]
        assert re.search(expect.pattern, why, re.IGNORECASE), f"{name}: {why!r} !~ {expect.pattern!r}"
        assert not out.exists()
        return
    assert rc == 0, f"{name}: expected it to analyze, got exit {rc}: {stderr.strip()}"
    assert stderr == "", f"{name}: nothing may reach stderr (library warnings included): {stderr!r}"
    # A 4 MiB kernel name (long_name) must not be dumped on the console.
    assert len(stdout) < 200_000
    analysis = json.loads(out.read_text())
    check_steps(analysis)
    codes = [w["code"] for w in analysis["warnings"]]
    for pattern in expect.codes:
        hits = [w for w in analysis["warnings"] if re.search(pattern, w["code"])]
        assert hits, f"{name}: no warning code matches {pattern!r}; codes: {codes}"
        if expect.counted:
            assert sum(w["count"] for w in hits) >= expect.counted, f"{name}: {hits}"
    assert len({s["rank"] for s in analysis["steps"]} | {r["rank"] for r in analysis["ranks"]}) == expect.ranks
    if expect.steps is not None:
        per_rank = {r: sum(1 for s in analysis["steps"] if s["rank"] == r and s["device"] == d)
                    for r, d in {(s["rank"], s["device"]) for s in analysis["steps"]}}
        assert set(per_rank.values()) == {expect.steps}, f"{name}: steps per rank/device {per_rank}"
    if expect.same_as_control:
        ref = request.getfixturevalue("control")
        got, want = _step_key(analysis), _step_key(ref)
        assert [g[:2] for g in got] == [w[:2] for w in want]
        for g, w in zip(got, want, strict=True):
            assert g[2] == pytest.approx(w[2], abs=1.0) and g[3] == pytest.approx(w[3], abs=1.0), (name, g, w)


def test_step_without_gpu_work_is_host_time(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "a.json"
    rc, _, err = _analyze(case_dir("step_without_gpu_work", tmp_path), out, capsys)
    assert rc == 0, err
    last = max(json.loads(out.read_text())["steps"], key=lambda s: s["step"])
    assert last["step"] == 5 and last["busy_us"] == 0 and last["categories_us"]["compute"] == 0
    assert last["duration_us"] == pytest.approx(300.0, abs=0.01)


def test_cpu_only_rows_are_host_timeline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "a.json"
    rc, _, err = _analyze(case_dir("cpu_only", tmp_path), out, capsys)
    assert rc == 0, err
    a = json.loads(out.read_text())
    assert {s["device"] for s in a["steps"]} == {-1}
    assert all(s["categories_us"]["compute"] > 0 for s in a["steps"])  # conv/BN/ReLU ops ran on the host


@pytest.mark.parametrize("name", ["truncated_gzip", "nan_dur", "deep_nesting_extreme", "one_good_one_empty"])
def test_subprocess_never_traceback(name: str, tmp_path: Path) -> None:
    """End to end through a real interpreter: exit code and stderr exactly as the table says."""
    folder = case_dir(name, tmp_path)
    files = sorted(folder.iterdir())
    target = str(files[0]) if len(files) == 1 else str(folder)
    proc = subprocess.run([sys.executable, "-m", "dpprof.cli", "analyze", target], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env=_env())
    assert "Traceback" not in proc.stderr + proc.stdout
    if isinstance(EXPECT[name], Err):
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    else:
        assert proc.returncode == 0, proc.stderr


def _env() -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if k != "DPPROF_DEBUG"}
    env["PYTHONPATH"] = str(ROOT)
    return env


@pytest.mark.parametrize("name", ["missing_ts", "gpu_work_after_last_step", "truncated_gzip"])
def test_report_on_bad_trace(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``dpprof report``: the skipped events are shown in the page; an unreadable file is one line."""
    folder = case_dir(name, tmp_path)
    html = tmp_path / "r.html"
    rc = main(["report", str(next(folder.iterdir())), "--out", str(html)])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    expect = EXPECT[name]
    if isinstance(expect, Err):
        assert rc == 2 and len(err.strip().splitlines()) == 1 and not html.exists(), err
        return
    assert rc == 0, err
    page = html.read_text(encoding="utf-8")
    assert main(["analyze", str(next(folder.iterdir())), "--json", str(tmp_path / "a.json")]) == 0
    warnings = json.loads((tmp_path / "a.json").read_text())["warnings"]
    for pattern in expect.codes:
        hits = [w for w in warnings if re.search(pattern, w["code"])]
        assert hits and all(w["code"] in page and w["message"] in html_lib.unescape(page) for w in hits), \
            f"{name}: warning {pattern!r} not shown in the report"
