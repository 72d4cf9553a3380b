"""Selections, output names and places, and the pid/tid scheme of the merged trace."""

from __future__ import annotations

from pathlib import Path

import pytest

from dpprof.errors import DpprofError
from dpprof.perfetto import layout
from dpprof.perfetto.layout import Selection


def test_numbers_and_ranges() -> None:
    assert layout.parse_numbers("0,3,7", "ranks") == (0, 3, 7)
    assert layout.parse_numbers("3-5", "steps") == (3, 4, 5)
    assert layout.parse_numbers(" 7, 0-2 ,2", "ranks") == (0, 1, 2, 7)
    for bad in ("", "a", "1,,2", "-1", "3-", "1-2-3"):
        with pytest.raises(DpprofError, match="expected numbers and ranges"):
            layout.parse_numbers(bad, "ranks")
    with pytest.raises(DpprofError, match="runs backwards"):
        layout.parse_numbers("5-3", "steps")
    assert layout.spell((0, 1, 2, 5, 7, 8)) == "0-2,5,7-8"


def test_file_names_say_what_was_kept() -> None:
    assert Selection().stem() == "all_ranks"
    assert Selection(ranks=(0, 3, 4, 5), steps=(3,), host_ops=False, kernels=False).stem() == \
        "ranks_0.3-5_steps_3_no-host-ops_no-kernels"


def test_output_place(tmp_path: Path) -> None:
    run = tmp_path / "run"
    traces = [run / "traces" / "rank0.1.pt.trace.json.gz"]
    assert layout.default_output(run, traces, Selection()) == run / "perfetto" / "all_ranks.json.gz"
    loose = [tmp_path / "x" / "a.json.gz"]
    assert layout.default_output(None, loose, Selection(steps=(4,))) == tmp_path / "x" / "perfetto" / \
        "all_ranks_steps_4.json.gz"
    layout.check_output(run / "perfetto" / "all_ranks.json.gz", run, traces)
    for bad in (run / "traces" / "m.json.gz", run / "merged" / "m.json.gz", tmp_path / "x" / "m.json.gz",
                tmp_path / "m.pt.trace.json.gz", tmp_path / "m.html"):
        with pytest.raises(DpprofError):
            layout.check_output(bad, run, [*traces, *loose])


def test_ids_sort_by_rank_then_device_and_stay_int32() -> None:
    assert layout.host_pid(0) < layout.gpu_pid(0, 0) < layout.gpu_pid(0, 7) < layout.host_pid(1)
    top_pid = layout.gpu_pid(layout.MAX_RANKS - 1, layout.MAX_DEVICE)
    top = layout.thread_tid(top_pid, layout.SHARED_K)
    assert top < 2**31 and layout.thread_tid(layout.host_pid(0), 0) > top_pid  # no tid is also a pid
    with pytest.raises(DpprofError):
        layout.gpu_pid(0, layout.MAX_DEVICE + 1)
    # DP starts new replica threads every step: thousands of threads get their own track, the rest share one.
    pid = layout.host_pid(0)
    tids = {layout.thread_tid(pid, k) for k in range(layout.SHARED_K)}
    assert len(tids) == layout.SHARED_K >= 9_999 and max(tids) < layout.thread_tid(layout.host_pid(0) + 1, 0)
    assert layout.thread_tid(pid, layout.SHARED_K + 5) == layout.thread_tid(pid, layout.SHARED_K) == max(tids) + 1


def test_command_line_quotes_paths(tmp_path: Path) -> None:
    assert layout.command_line(Path("runs/a b"), []) == "dpprof perfetto 'runs/a b' --open"
    assert layout.command_line(None, [Path("t0.json"), Path("t1.json")]) == "dpprof perfetto t0.json t1.json --open"


def test_perfetto_never_imports_torch(tmp_path: Path) -> None:
    """The merge and the server run where torch is not installed: torch, pynvml and matplotlib made unimportable."""
    import subprocess
    import sys

    from tests.synth import write_ddp_run

    traces, _ = write_ddp_run(tmp_path, 2, "balanced")
    code = ("import sys; [sys.modules.__setitem__(m, None) for m in ('torch', 'pynvml', 'matplotlib')]; "
            "from dpprof.cli import main; sys.exit(main(['perfetto', sys.argv[1]]))")
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", code, str(traces.parent)], capture_output=True, text=True,
                          timeout=120, cwd=repo)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (traces.parent / "perfetto" / "all_ranks.json.gz").is_file()
