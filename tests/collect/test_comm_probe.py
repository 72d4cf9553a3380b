"""The allreduce probe: the α-β fit on synthetic timings, the manifest section, the cases where it cannot
run, and the real thing over 2 gloo processes (also checked end to end in test_profile_e2e.py)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dpprof.collect import comm_probe
from dpprof.collect.comm_probe import fit_alpha_beta, probe_for_run, summarise

from .helpers import parse

SIZES = [4096, 65536, 1 << 20, 4 << 20, 16 << 20]


def test_fit_recovers_alpha_and_beta_of_an_exact_line() -> None:
    alpha, beta = 25.0, 1 / 40_000  # 25 µs, 40 GB/s
    fit = fit_alpha_beta(SIZES, [alpha + beta * s for s in SIZES])
    assert fit.alpha_us == pytest.approx(alpha, rel=1e-9) and fit.beta_us_per_byte == pytest.approx(beta, rel=1e-9)
    assert fit.bandwidth_GBps == pytest.approx(40.0, rel=1e-9)
    assert fit.residual_rms_us == pytest.approx(0, abs=1e-6) and fit.residual_rms_pct == pytest.approx(0, abs=1e-6)


def test_fit_weights_relative_error_so_noise_on_the_largest_message_does_not_decide_alpha() -> None:
    alpha, beta = 20.0, 1 / 10_000
    rng = np.random.default_rng(0)
    times = [(alpha + beta * s) * (1 + rng.normal(0, 0.02)) for s in SIZES]
    times[-1] *= 1.05  # 5 % on 1.7 ms is ~84 µs, four times alpha
    fit = fit_alpha_beta(SIZES, times)
    assert fit.alpha_us == pytest.approx(alpha, rel=0.1) and fit.beta_us_per_byte == pytest.approx(beta, rel=0.1)
    # an unweighted fit on the same points gets alpha wrong by more than it is worth
    ols_beta, ols_alpha = np.polyfit(SIZES, times, 1)
    assert abs(ols_alpha - alpha) > 2 * abs(fit.alpha_us - alpha)
    resid = np.array(times) - (fit.alpha_us + fit.beta_us_per_byte * np.array(SIZES))
    assert fit.residual_rms_us == pytest.approx(float(np.sqrt(np.mean(resid ** 2))))
    assert 0.5 < fit.residual_rms_pct < 5


def test_fit_without_growth_has_no_bandwidth_and_bad_input_raises() -> None:
    fit = fit_alpha_beta([1000, 2000, 4000], [50.0, 49.0, 48.0])
    assert fit.beta_us_per_byte < 0 and fit.bandwidth_GBps is None
    for sizes, times in (([4096], [10.0]), ([4096, 4096], [10.0, 11.0]), ([1, 2], [1.0, 0.0]), ([1, 2], [1.0])):
        with pytest.raises(ValueError):
            fit_alpha_beta(sizes, times)


def test_section_takes_the_median_of_the_repeats() -> None:
    sizes = [1000, 3000]
    rows = [[12.0, 10.0, 500.0, 11.0, 10.5], [30.0, 31.0, 29.0, 28.0, 90.0]]  # one slow outlier each
    s = summarise("gloo", 4, "cpu", sizes, rows, duration_ms=12.34)
    assert s["measured"] is True and (s["backend"], s["world_size"], s["device"]) == ("gloo", 4, "cpu")
    assert s["sizes_bytes"] == sizes and s["time_us_median"] == [11.0, 30.0] and s["repeats"] == 5
    # two points: the line through (1000, 11) and (3000, 30), alpha 1.5 µs, beta 0.0095 µs/byte
    assert s["alpha_us"] == pytest.approx(1.5) and s["beta_us_per_byte"] == pytest.approx(0.0095)
    assert s["bandwidth_GBps"] == pytest.approx(round(1e-3 / 0.0095, 4))
    assert s["bus_bandwidth_GBps"] == pytest.approx(round(1e-3 / 0.0095 * 2 * 3 / 4, 4))
    assert s["fit_residual_rms_us"] == pytest.approx(0, abs=1e-3) and s["duration_ms"] == 12.3
    assert "note" not in s


def test_not_ddp_means_not_measured() -> None:
    for strategy in ("single", "dp"):
        s = probe_for_run(strategy, False, 1, "cpu")
        assert s == {"measured": False, "reason": f"strategy {strategy}: no process group", "backend": None,
                     "world_size": None}


def test_no_comm_probe_flag(tmp_path: Path) -> None:
    from dpprof.commands.profile import build_config

    base = ["--strategy", "ddp", "--nproc", "2", "--device", "cpu", "--out", str(tmp_path)]
    assert build_config(parse(base), [])[0].comm_probe is True
    assert build_config(parse([*base, "--no-comm-probe"]), [])[0].comm_probe is False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _group_worker(rank: int, world: int, port: int, out: Any) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        out.put((rank, probe_for_run("ddp", True, world, "cpu"), probe_for_run("ddp", True, world, "cpu", False)))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_measure_and_agree() -> None:
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_group_worker, args=(r, 2, port, q)) for r in range(2)]
    for p in procs:
        p.start()
    res = {rank: (on, off) for rank, on, off in (q.get(timeout=120) for _ in procs)}
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    (s0, off0), (s1, off1) = res[0], res[1]
    assert s0["measured"] is True, s0
    assert (s0["backend"], s0["world_size"], s0["device"]) == ("gloo", 2, "cpu")
    assert s0["sizes_bytes"] == list(comm_probe.CPU_SIZES_BYTES) and s0["repeats"] == comm_probe.REPEATS
    # every rank ends with the same slowest-rank times (one MAX all_reduce)
    assert s0["time_us_median"] == s1["time_us_median"] and all(t > 0 for t in s0["time_us_median"])
    # Times are measured, so under load the fit may find no growth with size: then it says so instead of a bandwidth.
    if s0["beta_us_per_byte"] > 0:
        assert s0["bandwidth_GBps"] > 0
    else:
        assert s0["bandwidth_GBps"] is None and "note" in s0
    assert off0["reason"] == off1["reason"] == "turned off (--no-comm-probe)" and off0["measured"] is False
    print(f"gloo probe, 2 processes: {s0}")


def test_world_size_one_is_not_measured(tmp_path: Path) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert probe_for_run("ddp", True, 1, "cpu") == {
            "measured": False, "reason": "world size 1: no peer to reduce with", "backend": "gloo", "world_size": 1}
    finally:
        dist.destroy_process_group()
