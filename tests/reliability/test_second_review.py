"""Defects a second hostile review found after the first round of fixes, each pinned by a test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dpprof.analyze.collectives import _ranks_of
from dpprof.cli import main
from dpprof.errors import DpprofError
from dpprof.perfetto.layout import parse_numbers
from dpprof.trace.nvml_merge import scan_trace


def test_a_sweep_resumed_twice_rewrites_its_own_sweep_json(tmp_path: Path, capsys) -> None:
    """The last write of sweep.json follows save()'s replace: a reused inode made it look like an input."""
    argv = ["sweep", "--out", str(tmp_path / "sw"), "--strategies", "single", "--gpus", "1", "--batch-sizes", "8",
            "--workers", "0", "--model", "tiny", "--steps", "6"]
    for _ in range(3):
        assert main(argv) == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "sw" / "sweep.json").read_text())["points"][0]["status"] == "done"


@pytest.mark.parametrize("bad", [{"cat": []}, {"cat": {"a": 1}}, {"cat": "kernel", "ts": 1e308, "dur": 1.0},
                                 {"cat": "kernel", "ts": 2000.0, "dur": 1e308}, {"cat": "kernel", "ts": -1e308}])
def test_merge_nvml_scans_an_event_of_the_wrong_shape_without_crashing(bad) -> None:
    """merge-nvml's own scan of a trace (its span and devices): a list as ``cat`` was hashed, an infinite end rounded."""
    ev = [{"ph": "X", "name": "k", "cat": "kernel", "ts": 1010.0, "dur": 10.0, "pid": 0, "tid": 7,
           "args": {"device": 0}}, {"ph": "X", "name": "x", "ts": 1020.0, "dur": 1.0, "pid": 0, "tid": 7, **bad}]
    span = scan_trace({"traceEvents": ev, "baseTimeNanoseconds": 1_700_000_000_000_000_000},
                      Path("rank0.1.pt.trace.json"))
    assert span.devices == (0,) and span.start_ns == 1_010_000 and span.end_ns <= 2_000_000  # an absurd duration adds nothing


def test_a_deeply_nested_rank_list_is_no_rank_list() -> None:
    assert _ranks_of("[" * 200_000 + "]" * 200_000) == ()
    assert _ranks_of("[0, 1]") == (0, 1)


def test_step_and_rank_selections_refuse_numbers_of_thousands_of_digits() -> None:
    with pytest.raises(DpprofError):
        parse_numbers("9" * 5000, "steps")
    assert parse_numbers("3-5", "steps") == (3, 4, 5)


def test_dpprof_run_prints_a_script_name_with_escapes_cleaned(tmp_path: Path, capsys) -> None:
    from tests.collect.run_helpers import in_process

    script = tmp_path / "ev\x1b]0;pwned\x07il.py"
    script.write_text("print('ok')\n")
    in_process(["--out", str(tmp_path / "t"), str(script)])
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x07" not in err and "\\x1b]0;pwned\\x07il.py" in err
