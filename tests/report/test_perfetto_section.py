"""The run report's "Trace files" section says how to see every rank on one Perfetto timeline."""

from __future__ import annotations

import html as html_lib
from pathlib import Path

from dpprof.report.html import render_inputs, render_run
from dpprof.report.inputs import RunInputs
from tests.report.synthetic import dp_two_gpu


def test_trace_files_section_shows_the_command(dup00_run: RunInputs, tmp_path: Path) -> None:
    page = render_inputs(dup00_run, tmp_path / "r.html")
    section = page.split('<section id="traces">', 1)[1].split("</section>", 1)[0]
    assert f"<code>dpprof perfetto {dup00_run.traces[0]} --open</code>" in html_lib.unescape(section)
    assert "ssh -L 9001:127.0.0.1:9001" in section


def test_command_names_the_run_directory(tmp_path: Path) -> None:
    run = tmp_path / "my run"
    page = render_run(dp_two_gpu(), run_dir=run, trace_paths=[run / "traces" / "rank0.pt.trace.json.gz"],
                      out=tmp_path / "r.html")
    assert f"dpprof perfetto '{run}' --open" in html_lib.unescape(page)
    assert "dpprof perfetto RUN_DIR --open" in render_run(dp_two_gpu(), trace_paths=[], out=tmp_path / "r.html")
