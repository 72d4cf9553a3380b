"""NVML timelines in the run report, from the real H200 samples (tests/data/h200/nvml_samples_10ms.json)
written as a run directory's nvml.<host>.jsonl (format: docs/run-format.md)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from dpprof.report.files import report_run


def _write_nvml(path: Path, fixture: Path) -> int:
    data = json.loads(fixture.read_text())
    idx = {f: i for i, f in enumerate(data["fields"])}
    header = {"type": "header", "host": "h200", "period_ms": 10, "fields": ["util_gpu_pct", "mem_used_bytes"],
              "gpus": [{"nvml_index": 0, "cuda_index": 0, "uuid": "GPU-0", "name": "NVIDIA H200"}]}
    lines = [json.dumps(header)]
    for row in data["samples"]:
        lines.append(json.dumps({"type": "sample", "t_ns": int(row[idx["unix_s"]] * 1e9), "nvml_index": 0,
                                 "cuda_index": 0, "util_gpu_pct": row[idx["util_gpu"]],
                                 "util_mem_pct": row[idx["util_mem"]], "mem_used_bytes": row[idx["mem_used_B"]],
                                 "power_mw": row[idx["power_mW"]], "sm_clock_mhz": row[idx["sm_clock_MHz"]],
                                 "pcie_tx_kbps": None, "pcie_rx_kbps": None}))
    path.write_text("\n".join(lines) + "\n")
    return len(data["samples"])


def test_nvml_timeline_from_real_samples(h200: dict[str, Path], tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "traces").mkdir(parents=True)
    shutil.copy(h200["single_vgg16cifar"], run / "traces" / "rank0.1.pt.trace.json.gz")
    n = _write_nvml(run / "nvml.h200.jsonl", h200["single_vgg16cifar"].parent / "nvml_samples_10ms.json")
    assert n == 41  # 40 steps of ~9.5 ms sampled every 10 ms
    html = report_run(run, tmp_path / "r.html").read_text(encoding="utf-8")
    fig = html.split('id="fig-nvml-timelines"', 1)[1].split("</figure>", 1)[0]
    assert "<svg " in fig
    assert "utilization.gpu: percent of time a kernel was running" in fig
    assert "memory used (GiB)" in fig and "GPU0" in fig
