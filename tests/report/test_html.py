"""Run report rendering: content, determinism, escaping, self-containment (hand-built and fixture analyses)."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from dpprof.analyze.model import Analysis
from dpprof.analyze.run import Run
from dpprof.report.html import render_run
from tests.report.synthetic import dp_two_gpu

TRACE = Path("tests/data/h200/dp_dup00.pt.trace.json.gz")


def test_synthetic_report_has_verdicts_numbers_and_plots(tmp_path: Path) -> None:
    html = render_run(Run.of(dp_two_gpu(), traces=[TRACE]), out=tmp_path / "r.html")
    for verdict in ("supported", "not supported", "inconclusive"):
        assert f">{verdict}</span>" in html
    assert "GPU0-centred work is 78.5 % of the 10.0 ms excess" in html
    # per-step table: GPU0 step 3 is 20.00 ms with 3.00 ms of dp_broadcast and 2.80 ms of dp_reduce
    row = re.search(r"<td>GPU0 · step 3</td>(.*?)</tr>", html, re.S)
    assert row and re.findall(r'class="num">([^<]*)<', row.group(1))[:6] == ["20.00", "9.00", "0.50", "3.00",
                                                                            "0.70", "2.80"]
    # step breakdown, imbalance, step times, projection present; NVML and DDP overlap absent with a reason
    assert html.count("<svg ") == 4
    assert "No NVML samples: a trace file alone carries none" in html
    assert "Not a multi-process run (strategy: dp)" in html
    assert "differ by 36 %" in html  # GPU0 busy 16.0 ms vs GPU1 10.3 ms
    assert "112.4 MiB" in html  # evidence bytes shown in binary units


def test_rendering_twice_gives_identical_bytes(tmp_path: Path) -> None:
    a = render_run(Run.of(dp_two_gpu(), traces=[TRACE]), out=tmp_path / "r.html")
    b = render_run(Run.of(dp_two_gpu(), traces=[TRACE]), out=tmp_path / "r.html")
    assert a.encode() == b.encode()


def test_page_is_self_contained_and_escaped(tmp_path: Path) -> None:
    html = render_run(Run.of(dp_two_gpu(), traces=[TRACE]), out=tmp_path / "r.html")
    assert "<script" not in html.lower()
    assert "Host-side time &lt;script&gt;" in html
    assert not re.search(r'<link\b|src="https?:|@import|url\(https?:', html)
    # every id is unique although several SVGs are inlined
    ids = re.findall(r'\bid="([^"]+)"', html)
    assert len(ids) == len(set(ids)) and len(ids) > 50


def test_trace_links_are_relative_to_the_report(tmp_path: Path) -> None:
    out = tmp_path / "reports" / "r.html"
    trace = tmp_path / "traces" / "run" / "rank0.1.pt.trace.json.gz"
    html = render_run(Run.of(dp_two_gpu(), traces=[trace]), out=out)
    assert 'href="../traces/run/rank0.1.pt.trace.json.gz"' in html
    assert "ui.perfetto.dev" in html


def test_dp_dup00_report_shows_dp_phases_per_step(dup00_run: Run, tmp_path: Path) -> None:
    html = render_run(dup00_run, tmp_path / "r.html")
    for phase in ("dp_scatter", "dp_broadcast", "dp_gather", "dp_reduce"):
        assert f'<th class="num">{phase}</th>' in html
        assert f"GPU in {phase} (µs)" in html
    rows = re.findall(r"<td>GPU0 · step (\d+)</td>", html)
    assert rows == ["3", "4", "5"]
    steps = {s.step: s for s in dup00_run.analysis.steps}
    for k, s in steps.items():
        row = re.search(rf"<td>GPU0 · step {k}</td>(.*?)</tr>", html, re.S)
        assert row is not None
        cells = re.findall(r'class="num">([^<]*)<', row.group(1))
        assert cells[0] == f"{s.duration_us / 1000:,.2f}"
        assert f"{s.categories_us['dp_broadcast'] / 1000:,.2f}" in cells
    # the diagnosis' host-bound finding and the three verdicts are on the page
    assert "host_bound" in html
    assert html.count('class="verdict ') == 3


def test_ddp_report_draws_the_overlap_chart(ddp_gloo_run: Run, tmp_path: Path) -> None:
    html = render_run(ddp_gloo_run, tmp_path / "r.html")
    assert ddp_gloo_run.analysis.strategy == "ddp"
    assert 'id="fig-ddp-overlap"' in html
    fig = html.split('id="fig-ddp-overlap"', 1)[1].split("</figure>", 1)[0]
    assert "<svg " in fig, fig[:300]
    assert "rank 1" in html


def _with_comm_and_dp_host(a: Analysis) -> Analysis:
    """The synthetic DP analysis with schema /2's per-step fields filled: comm by kind and DP host time."""
    steps = tuple(replace(s, comm_by_kind_us={"all_reduce": 250.0, "broadcast": 125.0} if s.device == 0 else {},
                          dp_host_us={"dp_scatter": 410.0, "dp_gather": 77.5}) for s in a.steps)
    return replace(a, steps=steps)


def test_step_table_shows_comm_by_kind_and_dp_host_time(tmp_path: Path) -> None:
    html = render_run(Run.of(_with_comm_and_dp_host(dp_two_gpu()), traces=[TRACE]), out=tmp_path / "r.html")
    head = re.search(r"<th>device · step</th>(.*?)</tr>", html, re.S)
    assert head
    cols = re.findall(r'<th class="num">([^<]*)</th>', head.group(1))
    row = re.search(r"<td>GPU0 · step 3</td>(.*?)</tr>", html, re.S)
    assert row
    cells = dict(zip(cols, re.findall(r'class="num">([^<]*)<', row.group(1)), strict=True))
    assert cells["comm: all_reduce"] == "0.25" and cells["comm: broadcast"] == "0.12"
    assert cells["host in dp_scatter (µs)"] == "410.0" and cells["host in dp_gather (µs)"] == "77.50"
    assert "host in dp_broadcast (µs)" not in cols  # only the phases some row has
    gpu1 = re.search(r"<td>GPU1 · step 3</td>(.*?)</tr>", html, re.S)
    assert gpu1 and dict(zip(cols, re.findall(r'class="num">([^<]*)<', gpu1.group(1)), strict=True))[
        "comm: all_reduce"] == "0.00"
    plain = render_run(Run.of(dp_two_gpu(), traces=[TRACE]), out=tmp_path / "r.html")
    assert "comm: all_reduce" not in plain and "host in dp_" not in plain  # none when no row has them


def test_compare_page_has_a_row_for_each_comm_kind_and_dp_host_phase(tmp_path: Path) -> None:
    from dpprof.report.html import render_compare

    a = Run.of(dp_two_gpu(), traces=[TRACE], name="a")
    b = Run.of(_with_comm_and_dp_host(dp_two_gpu()), traces=[TRACE], name="b")
    html = render_compare(a, b, out=tmp_path / "c.html")
    rows = {m[0]: m[1:] for m in re.findall(
        r'<tr><td>([^<]*)</td><td class="num">([^<]*)</td><td class="num">([^<]*)</td><td class="num">([^<]*)</td>',
        html)}
    assert rows["comm: all_reduce"] == ("–", "0.25", "0.25")  # A has none; Δ = B − A
    assert rows["comm: broadcast"] == ("–", "0.12", "0.12")
    assert rows["host in dp_scatter"] == ("–", "0.41", "0.41") and "host in dp_gather" in rows
    assert "host in dp_reduce" not in rows
    assert "<script" not in html.lower()
