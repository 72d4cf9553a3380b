"""Every trace of the damaged corpus (tests/data/bad) either merges into a valid trace whose attribution equals
the analysis, or fails as ``dpprof analyze`` does: one line, exit 2, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from dpprof.analyze.pipeline import analyze
from dpprof.cli import main
from tests.data.bad.generate import CASES, case_dir
from tests.perfetto import checks
from tests.reliability.test_bad_traces import EXPECT, Err, small_inflate_floor  # noqa: F401 (autouse fixture)


@pytest.mark.parametrize("name", sorted(CASES))
def test_damaged_trace_merges_or_fails_in_one_line(name: str, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    folder = case_dir(name, tmp_path / "case")
    files = sorted(folder.iterdir())
    args = [str(files[0])] if len(files) == 1 else [str(folder)]
    out = tmp_path / "out" / "merged.json.gz"
    rc = main(["perfetto", *args, "--out", str(out)])
    err = capsys.readouterr().err
    assert "Traceback" not in err and "internal error" not in err, err
    if isinstance(EXPECT[name], Err):
        assert rc == 2 and err.startswith("dpprof perfetto: error: ") and err.count("\n") == 1, err
        assert not out.exists()
        return
    assert rc == 0, err
    doc = checks.load(out)
    checks.check_format(doc)
    analysis = analyze(args)
    procs = checks.check_groups(doc, [r.rank for r in analysis.ranks])
    checks.check_ids_per_rank(doc, procs)
    if analysis.steps:
        checks.check_attribution(doc, analysis)
