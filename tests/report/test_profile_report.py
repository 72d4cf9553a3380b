"""End to end on this CPU machine: `dpprof profile --strategy dp ... --report` ends with a report saying DP had
no GPU to split the batch over and the data-path verdict is inconclusive, other sections from measured data."""

from __future__ import annotations

import re
import subprocess
import sys
from html import unescape
from pathlib import Path

import pytest


@pytest.mark.slow
def test_cpu_dp_profile_ends_with_report(tmp_path: Path) -> None:
    try:
        import torch
    except ImportError:
        pytest.skip("torch is not installed")
    if torch.cuda.is_available():
        pytest.skip("this checks the no-GPU path of DP; a GPU is present")
    cmd = [sys.executable, "-m", "dpprof.cli", "profile", "--strategy", "dp", "--model", "tiny", "--steps", "7",
           "--batch-size", "32", "--out", str(tmp_path / "traces"), "--report"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = re.search(r"report:\s+(\S+\.html)", proc.stdout)
    assert m, proc.stdout[-2000:]
    page = Path(m.group(1)) if Path(m.group(1)).is_absolute() else tmp_path / m.group(1)
    html = unescape(page.read_text(encoding="utf-8"))
    assert "DP had no GPU to split the batch over: the module ran directly" in html
    card = html.split('id="hyp-data_path"', 1)[1].split("</div>", 1)[0]
    assert ">inconclusive<" in card
    # measured sections: the host-timeline step breakdown and the step times of every step are drawn
    assert 'id="fig-step-breakdown"' in html and 'id="fig-step-times"' in html
    for key in ("step-breakdown", "step-times"):
        assert "<svg " in html.split(f'id="fig-{key}"', 1)[1].split("</figure>", 1)[0]
    assert "steps from steps.rank*.jsonl" in html
    assert re.search(r"<td>host · step \d+</td>", html)
    assert "rank0." in html and "ui.perfetto.dev" in html
