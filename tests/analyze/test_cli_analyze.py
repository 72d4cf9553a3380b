"""``dpprof analyze`` end to end: table, JSON, exit codes, and no torch/matplotlib import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from dpprof.cli import main


def test_analyze_prints_table_and_writes_json(h200: dict[str, Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "a.json"
    rc = main(["analyze", str(h200["dp_1dev"]), "--json", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    assert "strategy: dp" in text and "scatter" in text
    data = json.loads(out.read_text())
    assert data["schema"] == "dpprof.analysis/2" and data["strategy"] == "dp"
    assert [s["step"] for s in data["steps"]] == [3, 4, 5]


def test_run_directory_default_json_and_missing_manifest(h200: dict[str, Path], tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    (run / "traces").mkdir(parents=True)
    (run / "traces" / "rank0.1.pt.trace.json.gz").write_bytes(h200["ddp2_gloo_rank0"].read_bytes())
    rc = main(["analyze", str(run)])
    captured = capsys.readouterr().out
    assert rc == 0
    assert "missing_ranks" in captured  # world size 2, rank 1 not written (yet)
    assert "no_manifest" in captured
    assert json.loads((run / "analysis.json").read_text())["strategy"] == "ddp"


def test_bad_input_is_one_line_exit_2(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "x.pt.trace.json"
    bad.write_text("{\"traceEvents\": [")
    assert main(["analyze", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "x.pt.trace.json" in err
    assert main(["analyze", str(tmp_path / "nope")]) == 2


def test_analyze_never_imports_torch_or_matplotlib(h200: dict[str, Path], tmp_path: Path) -> None:
    code = ("import sys; from dpprof.cli import main; "
            f"rc = main(['analyze', {str(h200['single_vgg16cifar'])!r}, '--json', {str(tmp_path / 'o.json')!r}]); "
            "heavy = [m for m in ('torch', 'matplotlib') if m in sys.modules]; "
            "print('HEAVY', heavy, rc, file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])
    assert "HEAVY [] 0" in proc.stderr, proc.stderr
