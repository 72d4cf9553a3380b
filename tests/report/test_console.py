"""The console (``dpprof analyze``): every straggler verdict printed, host rows named "host", DP's queued-work
waits labelled apart from waiting inside collectives, comm by collective kind, and the run's reading notes."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path

import pytest

from dpprof.analyze.model import CATEGORIES, Analysis, RankInfo, StepBreakdown
from dpprof.analyze.run import load_run
from dpprof.cli import main
from dpprof.report.console import render


def _text(analysis: Analysis, notes: tuple[str, ...] = ()) -> str:
    out = io.StringIO()
    render(analysis, file=out, width=400, notes=notes)
    return out.getvalue()


def _row(device: int, **kw: object) -> StepBreakdown:
    cats = {c: 0.0 for c in CATEGORIES}
    cats.update(kw.pop("cats", {}))  # type: ignore[call-overload]
    return StepBreakdown(rank=0, device=device, step=3, duration_us=sum(cats.values()), categories_us=cats,
                         **kw)  # type: ignore[arg-type]


def test_output_device_late_verdict_is_printed(tmp_path: Path) -> None:
    from tests.synth import write_dp_run

    traces, _ = write_dp_run(tmp_path, 4, "gpu0_bound")  # GPU0's serial data path makes it arrive last
    analysis = load_run([traces.parent]).analysis
    assert analysis.straggler_summary["verdict"] == "output_device_late"
    text = _text(analysis)
    assert "Stragglers (GPU-side collective starts): GPU 0 started last" in text
    assert "DP's output device reaches the collectives last" in text


def test_host_rows_are_named_host_and_waits_are_labelled() -> None:
    host = _row(-1, cats={"compute": 5000.0, "peer_wait": 2000.0}, peer_wait_on_us={"rank 1": 2000.0})
    queued = _row(1, cats={"compute": 5000.0, "peer_wait": 1500.0}, peer_wait_on_us={"GPU 0": 1500.0},
                  peer_wait_idle_us=1500.0)
    both = _row(2, cats={"compute": 5000.0, "peer_wait": 1500.0}, peer_wait_on_us={"GPU 0": 1500.0},
                peer_wait_idle_us=500.0)
    a = Analysis(strategy="dp", ranks=(RankInfo(rank=0, path="t.json", devices=(1, 2)),), devices=(),
                 steps=(host, queued, both))
    text = _text(a)
    assert "GPU-1" not in text
    assert "rank 0 host step 3: on rank 1 2.00 (inside collectives)" in text
    # DP's queued work waits outside any collective kernel: not called waiting inside collectives
    assert "rank 0 GPU1 step 3: on GPU 0 1.50 (queued behind another GPU)" in text
    assert "rank 0 GPU2 step 3: on GPU 0 1.50 (inside collectives 1.00, queued behind another GPU 0.50)" in text
    assert "Waiting inside collectives" not in text


def test_comm_by_kind_is_printed_per_row() -> None:
    rows = (_row(0, cats={"compute": 5000.0, "comm": 3000.0}, comm_by_kind_us={"all_reduce": 2000.0,
                                                                               "all_gather": 1000.0}),
            replace(_row(0, cats={"compute": 5000.0, "comm": 1000.0}, comm_by_kind_us={"all_reduce": 1000.0}),
                    step=4))
    a = Analysis(strategy="ddp", ranks=(RankInfo(rank=0, path="t.json", devices=(0,)),), devices=(), steps=rows)
    text = _text(a)
    assert "Exposed communication by collective kind (ms per step, mean over the profiled steps): " \
           "rank 0 GPU0: all_gather 0.50, all_reduce 1.50" in text
    assert "collective kind" not in _text(replace(a, steps=tuple(replace(s, comm_by_kind_us={}) for s in rows)))


@pytest.fixture()
def run_with_bad_steps_line(tmp_path: Path) -> Path:
    from tests.synth import write_dp_run

    traces, _ = write_dp_run(tmp_path, 2, "gpu0_bound")
    run = traces.parent
    good = {"rank": 0, "epoch": 0, "step": 0, "wall_ms": 10.0, "images_per_s": 1.0, "profiled": False}
    (run / "steps.rank0.jsonl").write_text(json.dumps(good) + "\n{garbage\n")
    return run


@pytest.mark.parametrize("quiet", [False, True])
def test_analyze_prints_the_runs_notes(run_with_bad_steps_line: Path, quiet: bool,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    args = ["analyze", str(run_with_bad_steps_line), "--no-json"] + (["--quiet"] if quiet else [])
    assert main(args) == 0
    out = capsys.readouterr()
    shown = out.err if quiet else out.out
    assert "warning [read] 1 unreadable line(s) in steps.rank*.jsonl were skipped" in shown
    if quiet:
        assert "Per step and GPU" not in out.out
