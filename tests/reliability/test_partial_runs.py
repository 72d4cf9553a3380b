"""Run directories cut short or still being written, and writes that fail half-way (in-process).

* ``dpprof analyze`` / ``dpprof report`` on a run whose manifest says ``running``, has no manifest, or
  lacks a rank's trace: they analyze what is complete and say what is missing (a warning).
* A write that fails (disk full at fsync, read-only folder, crash mid-render) leaves the previous good
  file byte-for-byte intact, no temporary file behind, and the user one line with exit 2.
  These faults are injected by monkeypatching, so they also run where mounting a tmpfs is not allowed.
"""

from __future__ import annotations

import errno
import html as html_lib
import json
import re
from pathlib import Path
from typing import Any

import pytest

from dpprof import fileio
from dpprof.cli import main
from dpprof.errors import DpprofError
from tests.data.bad.base import base_trace, dumps, gz


def make_run(tmp: Path, *, ranks_present: tuple[int, ...] = (0,), world: int = 2, status: str | None = "running",
             nvml_tail: bytes = b'{"type": "sample", "t_ns": 17908') -> Path:
    """A run directory as a killed / still-running collector leaves it (docs/run-format.md)."""
    run = tmp / "run"
    (run / "traces").mkdir(parents=True)
    names = []
    for r in range(world):
        name = f"rank{r}.1790857026000000000.pt.trace.json.gz"
        names.append(f"traces/{name}")
        if r in ranks_present:
            t = base_trace()
            t["distributedInfo"] = {"backend": "gloo", "rank": r, "world_size": world}
            (run / "traces" / name).write_bytes(gz(dumps(t)))
    # The atomic writer's temporary file of a trace that was being written when the run stopped.
    (run / "traces" / f".rank{world - 1}.1790857026000000000.pt.trace.json.gz.x1y2.tmp").write_bytes(b"\x1f\x8b")
    if status is not None:
        manifest = {"schema": "dpprof.manifest/1", "run_id": "cut-short", "status": status, "complete": False,
                    "command": ["dpprof", "profile"], "created_unix_ns": 1790857026000000000,
                    "config": {"strategy": "ddp", "model": "tiny", "world_size": world, "nproc": world, "nnodes": 1,
                               "batch_size": 32, "per_rank_batch_size": 32 // world, "device": "cpu",
                               "backend": "gloo"},
                    "files": {"traces": names, "nvml": ["nvml.host.jsonl"], "steps": [], "merged": []},
                    "warnings": []}
        (run / "manifest.json").write_text(json.dumps(manifest, indent=1))
    header = {"type": "header", "host": "host", "period_ms": 100, "fields": [], "gpus": []}
    (run / "nvml.host.jsonl").write_bytes(json.dumps(header).encode() + b"\n" + nvml_tail)
    return run


def analyze_json(args: list[str], tmp: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any], str]:
    out = tmp / "analysis.json"
    rc = main(["analyze", *args, "--json", str(out)])
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err + cap.out
    return rc, (json.loads(out.read_text()) if out.exists() else {}), cap.out + cap.err


def _codes(a: dict[str, Any]) -> list[str]:
    return [w["code"] for w in a.get("warnings", [])]


def test_run_still_running_missing_rank(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run(tmp_path)
    rc, a, text = analyze_json([str(run)], tmp_path, capsys)
    assert rc == 0, text
    assert {s["rank"] for s in a["steps"]} == {0}
    codes = _codes(a)
    assert any(re.search(r"running|incomplete|in_progress|not_complete", c) for c in codes), codes
    missing = [w for w in a["warnings"] if re.search(r"missing", w["code"])]
    assert missing and any("1" in w["message"] for w in missing), f"rank 1's missing trace not named: {a['warnings']}"


def test_run_without_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The collector died before rank 0 wrote a manifest: the traces alone still analyze."""
    run = make_run(tmp_path, ranks_present=(0, 1), status=None)
    rc, a, text = analyze_json([str(run)], tmp_path, capsys)
    assert rc == 0, text
    assert {s["rank"] for s in a["steps"]} == {0, 1}


def test_cut_short_manifest_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A manifest cut mid-write (not written atomically by some older tool) is ignored, not fatal."""
    run = make_run(tmp_path, ranks_present=(0, 1))
    (run / "manifest.json").write_text('{"schema": "dpprof.manifest/1", "status": "runn')
    rc, a, text = analyze_json([str(run)], tmp_path, capsys)
    assert rc == 0, text
    assert {s["rank"] for s in a["steps"]} == {0, 1}


def test_report_on_cut_short_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run(tmp_path)
    html = tmp_path / "r.html"
    rc = main(["report", str(run), "--out", str(html)])
    err = capsys.readouterr().err
    assert rc == 0 and "Traceback" not in err, err
    page = html.read_text(encoding="utf-8")
    _, a, _ = analyze_json([str(run)], tmp_path, capsys)
    said = [w for w in a["warnings"] if re.search(r"missing|running|incomplete", w["code"])]
    assert len(said) >= 2, a["warnings"]
    for w in said:  # the page says what the analysis says: the run is unfinished, rank 1 is missing
        assert w["code"] in page and w["message"] in html_lib.unescape(page), f"not in the report: {w}"


def test_nvml_reader_tolerates_cut_line(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    nvml_samples = pytest.importorskip("dpprof.trace.nvml_samples")
    data = nvml_samples.read_nvml(run)  # the half-written last line is counted, not fatal
    assert data is not None


# --- failing writes ----------------------------------------------------------------------------

def _control_trace() -> str:
    from tests.data.bad.generate import HERE

    return str(next((HERE / "control").iterdir()))


@pytest.mark.parametrize("fault", ["enospc_at_fsync", "erofs_at_create", "crash_mid_write"])
def test_analyze_json_keeps_previous_file(fault: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "analysis.json"
    assert main(["analyze", _control_trace(), "--json", str(out)]) == 0
    good = out.read_bytes()
    capsys.readouterr()
    _inject(fault, monkeypatch)
    rc = main(["analyze", _control_trace(), "--json", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("dpprof analyze: error:"), err
    assert re.search(EXPECTED_MESSAGE[fault], err[0], re.IGNORECASE), err[0]
    assert out.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["analysis.json"], "temporary file left behind"


@pytest.mark.parametrize("fault", ["enospc_at_fsync", "erofs_at_create"])
def test_report_keeps_previous_file(fault: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    html = tmp_path / "r.html"
    assert main(["report", _control_trace(), "--out", str(html)]) == 0, capsys.readouterr().err
    good = html.read_bytes()
    capsys.readouterr()
    _inject(fault, monkeypatch)
    rc = main(["report", _control_trace(), "--out", str(html)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("dpprof report: error:"), err
    assert html.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html"], "temporary file left behind"


EXPECTED_MESSAGE = {"enospc_at_fsync": "no space left", "erofs_at_create": "read-only",
                    "crash_mid_write": "no space left"}


def _inject(fault: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make dpprof.fileio's next write fail the way a real disk does."""
    if fault == "enospc_at_fsync":  # tmpfs/ext4 report a full disk at write or fsync
        def fsync(fd: int) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(fileio.os, "fsync", fsync)
    elif fault == "erofs_at_create":
        def mkstemp(*a: Any, **k: Any) -> Any:
            raise OSError(errno.EROFS, "Read-only file system")
        monkeypatch.setattr(fileio.tempfile, "mkstemp", mkstemp)
    else:  # half the bytes reach the disk, then the device is full
        real_fdopen = fileio.os.fdopen

        class HalfFull:
            def __init__(self, raw: Any) -> None:
                self.raw, self.left = raw, 64

            def write(self, b: bytes) -> int:
                if len(b) > self.left:
                    self.raw.write(bytes(b[: self.left]))
                    raise OSError(errno.ENOSPC, "No space left on device")
                self.left -= len(b)
                return self.raw.write(b)

            def __getattr__(self, name: str) -> Any:
                return getattr(self.raw, name)

            def __enter__(self) -> HalfFull:
                return self

            def __exit__(self, *exc: Any) -> None:
                self.raw.close()

        monkeypatch.setattr(fileio.os, "fdopen", lambda fd, mode="r": HalfFull(real_fdopen(fd, mode)))


def test_atomic_open_keeps_old_content_on_error(tmp_path: Path) -> None:
    """The primitive itself: an exception inside the ``with`` leaves the old file and no temp file."""
    target = tmp_path / "report.html"
    target.write_text("good")
    with pytest.raises(RuntimeError), fileio.atomic_open(target) as fh:
        fh.write("half a page")
        raise RuntimeError("renderer crashed")
    assert target.read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]
    with pytest.raises(DpprofError, match="no space left"), pytest.MonkeyPatch.context() as mp:
        _inject("enospc_at_fsync", mp)
        fileio.write_text_atomic(target, "new")
    assert target.read_text() == "good"
