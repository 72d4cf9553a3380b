"""Where ``dpprof perfetto`` writes (issue 12): never through a link out of the run, ``--out -`` is standard
output, an explicit output is checked before the work; and ``--max-inflate`` bounds every read of a trace."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dpprof import cli
from dpprof.errors import TraceError
from dpprof.perfetto import merge as merge_mod
from dpprof.perfetto.rewrite import RankPlan, rewrite
from dpprof.perfetto.scan import Filter, scan
from tests.synth import write_ddp_run

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def run(tmp_path: Path) -> Path:
    traces, _ = write_ddp_run(tmp_path, 2, "balanced")
    return traces.parent


def main(argv: list[str]) -> int:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli, "COMMANDS", {"perfetto": cli.COMMANDS["perfetto"]})
        return cli.main(argv)


def test_default_output_never_follows_a_link_out_of_the_run(run: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (run / "perfetto").symlink_to(elsewhere)
    assert main(["perfetto", str(run)]) == 2
    err = capsys.readouterr().err
    assert "is a symbolic link inside the run directory" in err and err.count("\n") == 1
    assert list(elsewhere.iterdir()) == []
    # an explicit --out is the user's choice: written where it says
    assert main(["perfetto", str(run), "--out", str(elsewhere / "all.json.gz")]) == 0
    assert (elsewhere / "all.json.gz").is_file()


def test_explicit_output_is_checked_before_the_analysis(run: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    def no_analysis(*a: Any, **k: Any) -> Any:
        raise AssertionError("analysed before the output was checked")

    monkeypatch.setattr(merge_mod, "load_run", no_analysis)
    fifo = tmp_path / "out.json"
    os.mkfifo(fifo)
    assert main(["perfetto", str(run), "--out", str(fifo)]) == 2
    assert "is a FIFO (named pipe): dpprof writes only regular files" in capsys.readouterr().err
    manifest = run / "manifest.json"  # an input of the command
    link = tmp_path / "m.json"
    link.symlink_to(manifest)
    before = manifest.read_bytes()
    monkeypatch.undo()
    assert main(["perfetto", str(run), "--out", str(link)]) == 2
    assert "is an input of this command" in capsys.readouterr().err and manifest.read_bytes() == before


def test_out_dash_writes_the_json_to_standard_output(run: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DPPROF_DEBUG"}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run([sys.executable, "-m", "dpprof.cli", "perfetto", str(run), "--out", "-"],
                          capture_output=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)  # plain JSON, not gzip
    assert doc["traceEvents"] and doc["metadata"]["strategy"] == "ddp"
    assert proc.stderr.decode().startswith("wrote standard output: 2 rank(s)")
    assert not (run / "perfetto").exists() and not (run / "-").exists()


def test_out_dash_with_open_is_refused(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["perfetto", str(run), "--out", "-", "--open"]) == 2
    assert "no file for --open to serve" in capsys.readouterr().err


def test_max_inflate_bounds_the_analysis_and_both_passes(run: Path, capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    assert main(["perfetto", str(run), "--max-inflate", "1000"]) == 2
    err = capsys.readouterr().err
    assert "inflates to more than 1,000 bytes" in err and err.count("\n") == 1
    # the merge's own reads (scan, rewrite) honour it too, not only the analysis
    real = merge_mod.load_run
    monkeypatch.setattr(merge_mod, "load_run", lambda *a, **k: real(*a, **{**k, "max_inflate": None}))
    assert main(["perfetto", str(run), "--max-inflate", "1000"]) == 2
    assert "inflates to more than 1,000 bytes" in capsys.readouterr().err
    trace = next((run / "traces").iterdir())
    with pytest.raises(TraceError, match="inflates to more than 1,000 bytes"):
        scan(trace, Filter(), max_inflate=1000)
    sc = scan(trace, Filter())
    plan = RankPlan(rank=0, index=0, path=trace, shift_ns=0, ns_trace=False, id_slot=0, id_stride=10,
                    max_inflate=1000)
    with pytest.raises(TraceError, match="inflates to more than 1,000 bytes"):
        rewrite(plan, sc, lambda lines: None)
