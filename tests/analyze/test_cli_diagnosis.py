"""`dpprof analyze --json` carries the diagnosis; `--baseline` gives the data-path rule a measured ideal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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
    traces, _expected = write_dp_run(tmp_path / "dp", 4, "gpu0_bound")
    plain, based = tmp_path / "plain.json", tmp_path / "based.json"
    assert main(["analyze", str(traces), "--json", str(plain), "--quiet"]) == 0
    assert main(["analyze", str(traces), "--baseline", str(h200["single_vgg16cifar"]),
                 "--json", str(based), "--quiet"]) == 0
    ev_plain = _diagnosis(plain)["hypotheses"][0]["evidence"]
    ev_based = _diagnosis(based)["hypotheses"][0]["evidence"]
    assert ev_plain.get("ideal_source") == "estimate"
    assert ev_based.get("ideal_source") == "baseline"
    assert ev_based["ideal_us"] != ev_plain["ideal_us"]


def test_a_baseline_must_be_one_process_on_one_gpu(h200: dict[str, Path], tmp_path: Path, capsys) -> None:
    traces, _expected = write_dp_run(tmp_path / "dp", 4, "gpu0_bound")
    for bad, what in (([h200["ddp2_gloo_rank0"], h200["ddp2_gloo_rank1"]], "2 ranks"), ([traces], "4 GPUs")):
        assert main(["analyze", str(h200["dp_dup00"]), "--baseline", *map(str, bad), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert what in err and "single-GPU run" in err and "Traceback" not in err


def test_declared_bandwidth_and_size_give_a_projection(h200: dict[str, Path], tmp_path: Path) -> None:
    bare, declared = tmp_path / "bare.json", tmp_path / "declared.json"
    trace = str(h200["single_vgg16cifar"])
    assert main(["analyze", trace, "--json", str(bare), "--quiet"]) == 0
    assert main(["analyze", trace, "--link-gbps", "50", "--param-bytes", "58913064",
                 "--json", str(declared), "--quiet"]) == 0
    assert _diagnosis(bare)["projection"]["rows"] == []
    proj = _diagnosis(declared)["projection"]
    assert proj["label"] == "projection"
    rows = {(r["strategy"], r["gpus"]): r for r in proj["rows"]}
    assert set(rows) == {(s, n) for s in ("dp", "ddp") for n in range(1, 9)}
    # DP over distinct GPUs with NCCL: one copy of the parameters each way through GPU0 at 50 GB/s, whatever N,
    # plus 5 µs per hop per collective (no batch size without a manifest, so no activation term)
    assert rows[("dp", 2)]["comm_ms"] == pytest.approx(2 * 58913064 / 50e9 * 1e3 + 2 * 0.005, rel=2e-3)
    per_gpu = rows[("dp", 3)]["comm_ms"] - rows[("dp", 2)]["comm_ms"]
    assert per_gpu == pytest.approx(2 * 0.005, abs=1e-3)


def test_bad_declared_bandwidth_is_a_user_error(h200: dict[str, Path], capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["analyze", str(h200["single_vgg16cifar"]), "--link-gbps", "-3"])
    assert exc.value.code == 2
    assert "--link-gbps" in capsys.readouterr().err


def _gpu_sweep(path: Path) -> Path:
    """A sweep.json of a 4-GPU machine: DP's gap to DDP moves with the batch size (0.5 -> 0.15)."""
    from dpprof.analyze.sweep_model import SweepPoint, SweepResult
    from dpprof.rundir import write_json

    pts = []
    for b, dp, ddp in ((64, 0.3, 0.8), (256, 0.7, 0.85)):
        pts += [SweepPoint("dp", 4, b, 4, status="done", scaling_efficiency=dp),
                SweepPoint("ddp", 4, b, 1, status="done", scaling_efficiency=ddp)]
    path.mkdir(parents=True)
    write_json(path / "sweep.json", SweepResult(points=tuple(pts), machine={"cuda_devices": 4}).to_json())
    return path


def test_sweep_option_answers_the_hyperparameters_question(tmp_path: Path) -> None:
    traces, _ = write_dp_run(tmp_path / "dp", 4, "balanced")
    out = tmp_path / "a.json"
    sweep_dir = _gpu_sweep(tmp_path / "sweep")
    assert main(["analyze", str(traces), "--sweep", str(sweep_dir), "--json", str(out), "--quiet"]) == 0
    h = _diagnosis(out)["hypotheses"][2]
    assert h["verdict"] == "supported" and "dp-g4-b64-w4 (0.300) vs ddp-g4-b64-w1 (0.800)" in h["reason"]
    report = tmp_path / "r.html"
    assert main(["report", str(traces), "--sweep", str(sweep_dir / "sweep.json"), "--out", str(report)]) == 0
    assert "dp-g4-b64-w4" in report.read_text()


def test_a_bad_sweep_is_one_line_and_exit_2(tmp_path: Path, capsys) -> None:
    traces, _ = write_dp_run(tmp_path / "dp", 2, "balanced")
    (tmp_path / "nosweep").mkdir()
    assert main(["analyze", str(traces), "--sweep", str(tmp_path / "nosweep"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sweep.json" in err[0]


@pytest.mark.parametrize("field,value,named", [("scaling_efficiency", "x", "scaling_efficiency"),
                                               ("gpus", "two", "gpus")])
def test_a_sweep_field_of_the_wrong_type_is_named_in_one_line(tmp_path: Path, capsys, field, value,
                                                              named) -> None:
    traces, _ = write_dp_run(tmp_path / "dp", 2, "balanced")
    sweep_dir = _gpu_sweep(tmp_path / "sweep")
    data = json.loads((sweep_dir / "sweep.json").read_text())
    data["points"][0][field] = value
    (sweep_dir / "sweep.json").write_text(json.dumps(data))
    assert main(["analyze", str(traces), "--sweep", str(sweep_dir), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and named in err[0] and "Traceback" not in err[0]
    data["points"][0][field] = data["points"][1][field]
    data["machine"] = [1, 2]
    (sweep_dir / "sweep.json").write_text(json.dumps(data))
    assert main(["analyze", str(traces), "--sweep", str(sweep_dir), "--quiet"]) == 2
    assert "machine" in capsys.readouterr().err
