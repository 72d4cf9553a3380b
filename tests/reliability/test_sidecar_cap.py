"""JSON sidecars of a run are read up to ``fileio.MAX_SIDECAR_BYTES`` (issue 12's audit: a 64 MB manifest.json
cost 823 MB and 16 s). A file just over it is ignored, as if absent, with one line saying so; one at the limit
is read. The files are padded valid JSON, so without the cap they would be read and used."""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from dpprof.analyze.run import load_run
from dpprof.cli import main
from dpprof.fileio import MAX_SIDECAR_BYTES, InputTooLarge, read_input
from dpprof.manifest import read_manifest
from dpprof.trace.nvml_samples import read_nvml
from tests.data.bad.base import base_trace
from tests.data.bad.generate import case_dir

CONTROL = case_dir("control", Path("/nonexistent")) / "trace.pt.trace.json.gz"


def padded(path: Path, obj: Any, size: int) -> Path:
    """``obj`` as JSON followed by spaces up to exactly ``size`` bytes (still valid JSON)."""
    text = json.dumps(obj).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text + b" " * (size - len(text)))
    assert path.stat().st_size == size
    return path


def make_run(tmp: Path, rank_file: str = "rank0.1.pt.trace.json.gz") -> Path:
    run = tmp / "run"
    (run / "traces").mkdir(parents=True)
    shutil.copy(CONTROL, run / "traces" / rank_file)
    return run


MANIFEST = {"schema": "dpprof.manifest/1", "run_id": "big", "status": "complete", "config": {"nproc": 1}}


def test_manifest_just_over_the_cap_is_ignored_and_said(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    padded(run / "manifest.json", MANIFEST, MAX_SIDECAR_BYTES + 1)
    manifest, problems = read_manifest(run)
    assert manifest is None and len(problems) == 1
    assert "manifest.json: 16,777,217 bytes, above dpprof's limit of 16,777,216" in problems[0]
    r = load_run([run])
    assert r.manifest is None and r.name != "big"
    said = [w for w in r.analysis.warnings if "above dpprof's limit" in w.message]
    assert len(said) == 1 and str(run / "manifest.json") in said[0].message


def test_manifest_at_the_cap_is_read(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    padded(run / "manifest.json", MANIFEST, MAX_SIDECAR_BYTES)
    manifest, problems = read_manifest(run)
    assert manifest is not None and manifest.run_id == "big" and problems == []


def test_report_notes_a_manifest_over_the_cap(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run(tmp_path)
    padded(run / "manifest.json", MANIFEST, MAX_SIDECAR_BYTES + 1)
    out = tmp_path / "r.html"
    assert main(["report", str(run), "--out", str(out)]) == 0, capsys.readouterr().err
    page = html.unescape(out.read_text(encoding="utf-8"))
    assert "manifest.json: 16,777,217 bytes, above dpprof's limit" in page


def test_node_file_over_the_cap_places_no_rank(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two NVML files, so only nodes/a.json says where rank 0 ran; over the cap it says nothing, and merge-nvml
    says why."""
    run = make_run(tmp_path)
    t = base_trace()
    first = min(e["ts"] for e in t["traceEvents"] if e.get("ph") == "X")
    t_ns = t["baseTimeNanoseconds"] + round(first * 1000) + 1000
    for host in ("a", "b"):
        (run / f"nvml.{host}.jsonl").write_text(json.dumps({"type": "header", "host": host}) + "\n" + json.dumps(
            {"type": "sample", "t_ns": t_ns, "cuda_index": 0, "util_gpu_pct": 50}) + "\n")
    node = {"host": "a", "ranks": [0], "nvml_file": "nvml.a.jsonl"}
    padded(run / "nodes" / "a.json", node, MAX_SIDECAR_BYTES)
    assert main(["merge-nvml", str(run)]) == 0
    assert "of a (GPU 0)" in capsys.readouterr().out
    padded(run / "nodes" / "a.json", node, MAX_SIDECAR_BYTES + 1)
    assert main(["merge-nvml", str(run)]) == 0
    out, err = capsys.readouterr()
    assert "of a (GPU 0)" not in out
    assert "nodes/a.json: 16,777,217 bytes, above dpprof's limit" in err and "no rule says which node" in err


def test_nvml_header_line_over_the_cap_is_absent(tmp_path: Path) -> None:
    path = tmp_path / "nvml.node7.jsonl"
    head = json.dumps({"type": "header", "host": "realhost"}).encode()
    sample = json.dumps({"type": "sample", "t_ns": 1, "cuda_index": 0, "util_gpu_pct": 5}).encode()
    for size, host in ((MAX_SIDECAR_BYTES, "realhost"), (MAX_SIDECAR_BYTES + 1, "node7")):
        path.write_bytes(head + b" " * (size - len(head)) + b"\n" + sample + b"\n")
        nvml = read_nvml(path)
        assert nvml.samples == 1 and nvml.files[0].host == host
        warned = [w for w in nvml.warnings if "line 1: 16,777,217 bytes" in w]
        assert len(warned) == (host == "node7")


def test_read_input_refuses_a_sparse_file_before_reading(tmp_path: Path) -> None:
    """4 GiB on paper, nothing on disk: refused from its size, so no memory is spent on it."""
    path = tmp_path / "manifest.json"
    with open(path, "wb") as fh:
        fh.write(b"{}")
        fh.truncate(4 << 30)
    with pytest.raises(InputTooLarge, match="4,294,967,296 bytes"):
        read_input(path, max_bytes=MAX_SIDECAR_BYTES)
    small = tmp_path / "small.json"
    small.write_bytes(b"{}")
    assert read_input(small, max_bytes=2) == b"{}"
    with pytest.raises(InputTooLarge, match="small.json: 2 bytes"):
        read_input(small, max_bytes=1)
