"""`dpprof analyze --json` carries the diagnosis; `--baseline` gives the data-path rule a measured ideal."""

from __future__ import annotations

import json
from pathlib import Path

from dpprof.cli import main
from tests.synth import write_dp_run


def _diagnosis(out: Path) -> dict:
    return json.loads(out.read_text())["diagnosis"]


def test_analysis_json_gains_the_diagnosis(h200: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "a.json"
    assert main(["analyze", str(h200["dp_dup00"]), "--json", str(out), "--quiet"]) == 0
    diag = _diagnosis(out)
    assert [h["id"] for h in diag["hypotheses"]] == ["data_path", "hardware", "hyperparameters"]
    data_path = diag["hypotheses"][0]
    assert data_path["verdict"] == "inconclusive" and "1 GPU" in data_path["reason"]
    assert any("host" in a for a in diag["advice"])


def test_baseline_run_gives_a_measured_ideal(h200: dict[str, Path], tmp_path: Path) -> None:
    traces, _expected = write_dp_run(tmp_path / "dp", 4, "gpu0_serial")
    plain, based = tmp_path / "plain.json", tmp_path / "based.json"
    assert main(["analyze", str(traces), "--json", str(plain), "--quiet"]) == 0
    assert main(["analyze", str(traces), "--baseline", str(h200["single_vgg16cifar"]),
                 "--json", str(based), "--quiet"]) == 0
    ev_plain = _diagnosis(plain)["hypotheses"][0]["evidence"]
    ev_based = _diagnosis(based)["hypotheses"][0]["evidence"]
    assert ev_plain.get("ideal_source") == "estimate"
    assert ev_based.get("ideal_source") == "baseline"
    assert ev_based["ideal_us"] != ev_plain["ideal_us"]
