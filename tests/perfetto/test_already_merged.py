"""A merged trace is known by its content (the marker it opens with), not by the folder it lies in: served again
as it is with ``--open``, refused in one line as input to a merge; a rank's trace in a folder named ``perfetto/``
is merged like any other."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest

from dpprof.cli import main
from dpprof.perfetto import layout
from dpprof.perfetto.merge import merge
from tests.perfetto import checks
from tests.synth import write_ddp_run


@pytest.fixture()
def ddp(tmp_path: Path) -> Path:
    """A 2-rank synthetic DDP run's traces/ folder."""
    return write_ddp_run(tmp_path, 2, "balanced")[0]


def test_is_merged_reads_the_marker(ddp: Path, tmp_path: Path) -> None:
    gz = merge([ddp.parent], out=tmp_path / "out" / "m.json.gz").output
    plain = merge([ddp.parent], out=tmp_path / "out" / "m.json").output
    doc = checks.load(gz)
    assert doc["otherData"]["dpprof"] == doc["metadata"]["dpprof"] and doc["metadata"]["dpprof"].startswith("dpprof ")
    assert layout.is_merged(gz) and layout.is_merged(plain)
    assert gzip.decompress(gz.read_bytes()).startswith(b'{"otherData": {"dpprof": "dpprof ')
    cut = tmp_path / "cut.json.gz"
    cut.write_bytes(gz.read_bytes()[:200])  # the head alone still says it: only the head is read
    assert layout.is_merged(cut)
    bad = [*sorted(ddp.iterdir()), tmp_path / "empty.json"]
    bad[-1].write_bytes(b"")
    for name, data in (("garbage.json.gz", b"\x1f\x8b\x08garbage"), ("other.json", b'{"traceEvents": []}'),
                       ("named.json", b'{"dpprof": "dpprof 1 perfetto", "traceEvents": []}')):
        bad.append(tmp_path / name)
        bad[-1].write_bytes(data)
    for path in bad:
        assert not layout.is_merged(path), path


def test_a_rank_trace_in_a_perfetto_folder_is_merged(ddp: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "x" / "perfetto"
    folder.mkdir(parents=True)
    trace = Path(shutil.copy(sorted(ddp.iterdir())[0], folder / "rank0.json.gz"))
    assert main(["perfetto", str(trace)]) == 0, capsys.readouterr().err
    out = folder / "perfetto" / "all_ranks.json.gz"
    assert f"wrote {out}: 1 rank(s)" in capsys.readouterr().out
    assert layout.is_merged(out)


def test_a_merged_trace_is_not_merged_again(ddp: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    merged = tmp_path / "out" / "m.json.gz"
    assert main(["perfetto", str(ddp.parent), "--out", str(merged)]) == 0
    capsys.readouterr()
    copy = Path(shutil.copy(merged, tmp_path / "loose.json.gz"))
    traces = [str(p) for p in sorted(ddp.iterdir())]
    cases = [
        ([str(merged)], "already a merged trace"),
        ([str(merged), "--steps", "3"], "already a merged trace"),
        ([str(merged), "--out", str(tmp_path / "again.json.gz")], "already a merged trace"),
        ([*traces, str(copy)], "a trace dpprof perfetto merged (into perfetto/ by default), not one rank's trace"),
        ([str(merged.parent)], "a trace dpprof perfetto merged (into perfetto/ by default), not one rank's trace"),
    ]
    for args, message in cases:
        assert main(["perfetto", *args]) == 2, args
        out, err = capsys.readouterr()
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, (args, err)
        assert not out
    assert sorted(p.name for p in merged.parent.iterdir()) == ["m.json.gz"]
    assert not (tmp_path / "again.json.gz").exists() and not (tmp_path / "perfetto").exists()
