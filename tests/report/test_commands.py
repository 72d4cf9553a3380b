"""`dpprof report` and `dpprof compare`: default paths, atomic writes, one-line errors."""

from __future__ import annotations

import argparse
import re
import shutil
from html import unescape
from pathlib import Path

import pytest

from dpprof.commands import compare as compare_command
from dpprof.commands import report as command
from dpprof.errors import DpprofError
from dpprof.report import files


def _args(module, argv: list[str]) -> argparse.Namespace:  # type: ignore[no-untyped-def]
    parser = argparse.ArgumentParser()
    module.prepare_parser(parser)
    return parser.parse_args(argv)


def test_report_default_path_and_output(h200: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    trace = tmp_path / "dp_1dev.pt.trace.json.gz"
    shutil.copy(h200["dp_1dev"], trace)
    assert command.run(_args(command, [str(trace)])) == 0
    out = capsys.readouterr().out
    page = tmp_path / "reports" / "dp_1dev.html"
    assert f"report: {Path('reports') / 'dp_1dev.html'}" in out
    assert "GPU0 data path: inconclusive" in out  # DP's one-device path cannot decide
    html = page.read_text(encoding="utf-8")
    assert "DP ran on one GPU" in html
    assert 'href="../dp_1dev.pt.trace.json.gz"' in html


def test_report_run_dir_with_steps_and_manifest(h200: dict[str, Path], tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "traces").mkdir(parents=True)
    shutil.copy(h200["dp_1dev"], run / "traces" / "rank0.1.pt.trace.json.gz")
    manifest = {"schema": "dpprof.manifest/1", "run_id": "dp-test", "status": "complete",
                "config": {"strategy": "dp", "batch_size": 128, "per_rank_batch_size": 128, "device": "cuda"},
                "dp_mode": "one_device", "profiler": {"overhead_ratio": 1.5},
                "summary": {"images_per_s_median": 13907.9}, "warnings": ["a manifest warning"]}
    (run / "manifest.json").write_text(__import__("json").dumps(manifest))
    lines = [f'{{"rank": 0, "epoch": 0, "step": {i}, "wall_ms": {9.0 + i % 3}, "images_per_s": 1, '
             f'"profiled": {"true" if 3 <= i <= 5 else "false"}, "loss": null}}' for i in range(12)]
    (run / "steps.rank0.jsonl").write_text("\n".join(lines) + "\n{\"rank\": 0, \"ste")  # cut short
    (tmp_path / "out").mkdir()
    out = files.report_run(run, tmp_path / "out")
    assert out == tmp_path / "out" / "dp-test.html"
    html = out.read_text(encoding="utf-8")
    # unprofiled steps (not 3..5) take 9, 10, 11 ms in turn: median 10 ms -> 128 / 0.010 s = 12,800 img/s
    assert "10.0 ms" in html and "12,800 img/s" in html and "×1.50" in html
    assert "12 steps from steps.rank*.jsonl" in html
    assert "1 unreadable line(s) in steps.rank*.jsonl were skipped" in html
    assert "[manifest] a manifest warning" in html


def test_failed_render_keeps_the_previous_report(h200: dict[str, Path], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    page = tmp_path / "r.html"
    page.write_text("GOOD", encoding="utf-8")

    def broken(*_a, **_k):  # type: ignore[no-untyped-def]
        raise DpprofError("rendering failed")

    monkeypatch.setattr("dpprof.report.html.render_run", broken)
    with pytest.raises(DpprofError):
        files.write_report([h200["dp_1dev"]], page)
    assert page.read_text(encoding="utf-8") == "GOOD"
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]  # no temporary file left behind


def test_missing_input_is_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(DpprofError, match=r"no such file or directory") as exc:
        files.write_report([tmp_path / "nope"], tmp_path / "r.html")
    assert "\n" not in str(exc.value)


def test_compare_dp_vs_ddp(h200: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    a, b = tmp_path / "dp.pt.trace.json.gz", tmp_path / "ddp.pt.trace.json.gz"
    shutil.copy(h200["dp_dup00"], a)
    shutil.copy(h200["ddp1_nccl_rank0"], b)
    assert compare_command.run(_args(compare_command, [str(a), str(b)])) == 0
    html = unescape((tmp_path / "reports" / "compare-dp-vs-ddp.html").read_text(encoding="utf-8"))
    # dp_dup00 steps ~650-780 ms, ddp1_nccl ~12-20 ms: the comparison names the faster one with the ratio
    m = re.search(r"ddp's median step is ([\d.]+)× shorter than dp's", html)
    assert m and float(m.group(1)) > 10
    assert html.count('class="verdict ') == 6  # both runs' three hypotheses
    assert html.count("<svg ") == 2
    assert "<td>dp_broadcast</td>" in html


def test_report_after_run_prints_names_escaped(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The run's name reaches the terminal from the command line and the run directory: control characters shown
    escaped, on the failure line and on the success line."""
    run = tmp_path / "r\x1b]0;pwned\x07\nforged"
    assert files.report_after_run(run, "dpprof profile") == 1
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x07" not in err and err.count("\n") == 1
    assert "r\\x1b]0;pwned\\x07\\nforged" in err

    def crash(_run: Path) -> Path:
        raise RuntimeError("bug \x1b[2J")

    monkeypatch.setattr(files, "report_run", crash)
    assert files.report_after_run(run, "dpprof run") == 1
    err = capsys.readouterr().err
    assert "\x1b" not in err and "RuntimeError: bug \\x1b[2J" in err
    monkeypatch.setattr(files, "report_run", lambda _run: tmp_path / "reports" / "x\x1b[2J.html")
    assert files.report_after_run(run, "dpprof run") == 0
    assert capsys.readouterr().out.endswith("x\\x1b[2J.html\n")
