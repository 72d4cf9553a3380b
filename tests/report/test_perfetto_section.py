"""The run report's "Trace files" section says how to see every rank on one Perfetto timeline."""

from __future__ import annotations

import html as html_lib
from pathlib import Path

from dpprof.analyze.run import Run
from dpprof.report.html import render_run
from tests.report.synthetic import dp_two_gpu


def test_trace_files_section_shows_the_command(dup00_run: Run, tmp_path: Path) -> None:
    page = render_run(dup00_run, tmp_path / "r.html")
    section = page.split('<section id="traces">', 1)[1].split("</section>", 1)[0]
    assert f"<code>dpprof perfetto {dup00_run.traces[0]} --open</code>" in html_lib.unescape(section)
    assert "ssh -L 9001:127.0.0.1:9001" in section


def test_command_names_the_run_directory(tmp_path: Path) -> None:
    run = tmp_path / "my run"
    page = render_run(Run.of(dp_two_gpu(), run_dir=run, traces=[run / "traces" / "rank0.pt.trace.json.gz"]),
                      out=tmp_path / "r.html")
    assert f"dpprof perfetto '{run}' --open" in html_lib.unescape(page)
    assert "dpprof perfetto RUN_DIR --open" in render_run(Run.of(dp_two_gpu()), out=tmp_path / "r.html")
