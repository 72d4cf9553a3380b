"""Sweep report: charts from done points only, skipped/failed listed with reasons, deterministic, atomic."""

from __future__ import annotations

from pathlib import Path

from dpprof.analyze.model import CATEGORIES
from dpprof.analyze.sweep_model import SweepPoint, SweepResult
from dpprof.report.sweep_html import render_sweep, render_sweep_html


def _result(with_epochs: bool = True) -> SweepResult:
    pts = []
    for strategy, exp in (("dp", 0.5), ("ddp", 0.9)):
        for g in (1, 2, 4):
            ips = 1000.0 * g ** exp
            epochs = tuple((0.3 + 0.1 * e, 0.25 + 0.1 * e, 50000 / ips) for e in range(3)) if with_epochs else ()
            pts.append(SweepPoint(strategy, g, 128, 2, f"{strategy}-g{g}-b128-w2", "done", "", 128 / ips * 1000,
                                  ips, 50000 / ips if with_epochs else None, epochs,
                                  {c: 1000.0 for c in CATEGORIES[:2]}, ips / 1000, ips / 1000 / g))
    pts.append(SweepPoint("dp", 8, 128, 2, None, "skipped", "needs 8 GPUs, 0 available"))
    pts.append(SweepPoint("ddp", 8, 128, 2, None, "failed", "rank 3 died"))
    return SweepResult(tuple(pts), {"strategies": ["dp", "ddp"], "gpus": [1, 2, 4, 8]}, {"host": "h", "cpus": 2},
                       ("dp-g8-b128-w2: needs 8 GPUs, 0 available",))


def test_sweep_page(tmp_path: Path) -> None:
    out = render_sweep(_result(), tmp_path / "sweep.html")
    html = out.read_text(encoding="utf-8")
    assert html.count("<svg ") == 4  # scaling, epoch time, accuracy, categories
    assert "needs 8 GPUs, 0 available" in html and "rank 3 died" in html
    assert "4 done" not in html and "6 done · 1 skipped · 1 failed" in html
    # ddp at 4 GPUs: 1000 × 4^0.9 = 3482 img/s, speedup 3.48, efficiency 87 %
    assert "3,482" in html and "3.48" in html and "87 %" in html
    assert render_sweep_html(_result(), tmp_path / "sweep.html") == html


def test_sweep_without_epochs_says_why(tmp_path: Path) -> None:
    html = render_sweep_html(_result(with_epochs=False), tmp_path / "sweep.html")
    assert html.count("<svg ") == 2
    assert "No configuration ran a full epoch" in html
    assert "No DP and DDP configuration with the same global batch both recorded per-epoch accuracy" in html
