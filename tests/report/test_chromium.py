"""The report in a real browser: headless Chromium screenshots it (not blank) and its DOM holds the verdicts
and the expected number of charts. Skipped only when no Chromium binary can be found."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from dpprof.analyze.run import Run
from dpprof.report.html import render_run
from tests.report.synthetic import dp_two_gpu

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("Chromium not found (Debian package `chromium`: make chromium)")


def _run(tmp: Path, page: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [_chromium(), *FLAGS, f"--user-data-dir={tmp / 'profile'}", *extra, page.resolve().as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def _screenshot_colours(tmp: Path, page: Path) -> int:
    from PIL import Image

    shot = tmp / "shot.png"
    proc = _run(tmp, page, f"--screenshot={shot}", "--window-size=1280,4000")
    assert shot.is_file(), proc.stderr[-2000:]
    with Image.open(shot) as im:
        assert im.size == (1280, 4000)
        colours = im.convert("RGB").getcolors(maxcolors=1 << 20) or []
    return len(colours)


def test_synthetic_report_in_chromium(tmp_path: Path) -> None:
    page = tmp_path / "r.html"
    page.write_text(render_run(Run.of(dp_two_gpu(), traces=[]), out=page), encoding="utf-8")
    assert _screenshot_colours(tmp_path, page) > 500  # a blank page has 1; text + charts have thousands
    dom = _run(tmp_path, page, "--dump-dom").stdout
    assert dom.count("<svg") == 4
    for verdict in (">supported<", ">not supported<", ">inconclusive<"):
        assert verdict in dom


def test_fixture_report_in_chromium(dup00_run: Run, tmp_path: Path) -> None:
    page = tmp_path / "dup00.html"
    html = render_run(dup00_run, page)
    page.write_text(html, encoding="utf-8")
    assert _screenshot_colours(tmp_path, page) > 500
    dom = _run(tmp_path, page, "--dump-dom").stdout
    # dp_dup00 runs on one GPU from a bare trace: step breakdown and step times are drawn; NVML (no run
    # directory), imbalance (one GPU), DDP overlap (not DDP) and projection (no parameter size) are not
    expected = html.count("<svg ")
    assert expected == 2
    assert dom.count("<svg") == expected
    assert dom.count('class="noplot"') == 4
    for h in dup00_run.analysis.diagnosis.hypotheses:  # type: ignore[union-attr]
        assert f'id="hyp-{h.id}"' in dom
        assert h.reason.split(":")[0] in dom
