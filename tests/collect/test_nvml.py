"""NvmlSampler against a fake pynvml: values, UUID mapping, failures, absence of NVML."""

from __future__ import annotations

import json
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dpprof.collect import nvml
from dpprof.collect.nvml import NvmlSampler, map_cuda_indices

UUIDS = ["GPU-aaaa1111-0000-0000-0000-000000000000", "GPU-bbbb2222-0000-0000-0000-000000000000",
         "GPU-cccc3333-0000-0000-0000-000000000000"]
#: Clock event reasons per GPU, bits as nvidia-ml-py 13.615 defines them: none; GpuIdle (0x1);
#: SwPowerCap (0x4) | SwThermalSlowdown (0x20) | HwPowerBrakeSlowdown (0x80).
REASONS = [0x0, 0x1, 0x4 | 0x20 | 0x80]


class FakeNVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__({3: "Not Supported", 15: "GPU is lost", 12: "NVML Shared Library Not Found",
                          13: "Function Not Found"}[value])
        self.value = value


class FakeNvml(types.ModuleType):
    """Enough of pynvml for the sampler and hwinfo. GPU i reports util 10+i, power 1000*(i+1) mW,
    clock event reasons ``REASONS[i]``, a maximum SM clock of ``max_sm_clock_mhz[i]``..."""

    NVML_ERROR_NOT_SUPPORTED = 3
    NVML_ERROR_FUNCTION_NOT_FOUND = 13
    NVML_ERROR_GPU_IS_LOST = 15
    NVML_CLOCK_SM = 1
    NVML_PCIE_UTIL_TX_BYTES = 0
    NVML_PCIE_UTIL_RX_BYTES = 1
    NVML_P2P_CAPS_INDEX_READ = (0,)  # pynvml really defines this one as a tuple
    NVML_P2P_CAPS_INDEX_NVLINK = 2
    NVML_P2P_STATUS_OK = 0
    NVML_NVLINK_MAX_LINKS = 4
    NVML_FEATURE_ENABLED = 1
    NVML_TOPOLOGY_INTERNAL, NVML_TOPOLOGY_SINGLE, NVML_TOPOLOGY_MULTIPLE = 0, 10, 20
    NVML_TOPOLOGY_HOSTBRIDGE, NVML_TOPOLOGY_NODE, NVML_TOPOLOGY_SYSTEM = 30, 40, 50

    def __init__(self, n: int = 3, names: list[str] | None = None) -> None:
        super().__init__("pynvml")
        self.NVMLError = FakeNVMLError
        self.n = n
        self.names = names or ["NVIDIA H200"] * n
        self.inits = 0
        self.shutdowns = 0
        self.reads = 0
        self.fail_after: int | None = None  # utilization reads before the GPU "is lost"
        self.power_supported = True
        self.pcie_delay_s = 0.0
        self.init_error: int | None = None
        self.max_sm_clock_mhz = [1980, 1980, 1785][:n] + [1980] * max(0, n - 3)
        #: NVML error raised by the new clock event reasons call (13: a driver older than the binding)
        self.event_reasons_error: int | None = None
        self.throttle_reasons_error: int | None = None
        self.reasons_calls: list[str] = []

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise FakeNVMLError(self.init_error)
        self.inits += 1

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlSystemGetDriverVersion(self) -> str:
        return "580.159.04"

    def nvmlDeviceGetCount(self) -> int:
        return self.n

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetUUID(self, h: int) -> bytes:
        return UUIDS[h].encode()  # old bindings return bytes

    def nvmlDeviceGetName(self, h: int) -> str:
        return self.names[h]

    def nvmlDeviceGetUtilizationRates(self, h: int) -> Any:
        self.reads += 1
        if self.fail_after is not None and self.reads > self.fail_after:
            raise FakeNVMLError(15)
        return types.SimpleNamespace(gpu=10 + h, memory=20 + h)

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Any:
        return types.SimpleNamespace(used=(h + 1) * 2**30, total=141 * 2**30)

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:
        if not self.power_supported:
            raise FakeNVMLError(3)
        return 1000 * (h + 1)

    def nvmlDeviceGetClockInfo(self, h: int, kind: int) -> int:
        assert kind == self.NVML_CLOCK_SM
        return 1980

    def nvmlDeviceGetMaxClockInfo(self, h: int, kind: int) -> int:
        assert kind == self.NVML_CLOCK_SM
        return self.max_sm_clock_mhz[h]

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: int) -> int:
        self.reasons_calls.append("event")
        if self.event_reasons_error is not None:
            raise FakeNVMLError(self.event_reasons_error)
        return REASONS[h]

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, h: int) -> int:
        self.reasons_calls.append("throttle")
        if self.throttle_reasons_error is not None:
            raise FakeNVMLError(self.throttle_reasons_error)
        return REASONS[h]

    def nvmlDeviceGetPcieThroughput(self, h: int, counter: int) -> int:
        time.sleep(self.pcie_delay_s)
        return 100 * (counter + 1)

    def nvmlDeviceGetP2PStatus(self, a: int, b: int, index: int) -> int:
        if index == self.NVML_P2P_CAPS_INDEX_NVLINK:
            return 0 if {a, b} == {0, 1} else 5
        return 0

    def nvmlDeviceGetTopologyCommonAncestor(self, a: int, b: int) -> int:
        return 10 if {a, b} == {0, 1} else 50

    def nvmlDeviceGetNvLinkState(self, h: int, link: int) -> int:
        if h == 2:
            raise FakeNVMLError(3)
        return 1 if link < 2 else 0


@pytest.fixture
def fake_nvml(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeNvml]:
    fake = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    yield fake


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def run_sampler(path: Path, seconds: float = 0.12, period_ms: int = 10, until: Any = None) -> NvmlSampler:
    """Sample for ``seconds``, or (with ``until``) until ``until(sampler)`` holds, at most 20 s."""
    with NvmlSampler(path, "hostA", period_ms=period_ms) as s:
        deadline = time.monotonic() + (20 if until else seconds)
        while time.monotonic() < deadline and not (until and until(s)):
            time.sleep(0.01)
    return s


def test_samples_values_and_header(tmp_path: Path, fake_nvml: FakeNvml, monkeypatch: pytest.MonkeyPatch) -> None:
    # the fake's PCIe read is instant, but a loaded machine can stretch it past 5 % of a 10 ms period
    monkeypatch.setattr(nvml, "PCIE_BUDGET_SHARE", 10.0)
    path = tmp_path / "nvml.hostA.jsonl"
    s = run_sampler(path, until=lambda s: len(s._costs_ns) >= 3)
    assert s.available and s.warnings == []
    rows = lines(path)
    header, samples = rows[0], [r for r in rows if r["type"] == "sample"]
    assert header["type"] == "header" and header["host"] == "hostA" and header["period_ms"] == 10
    assert [g["cuda_index"] for g in header["gpus"]] == [0, 1, 2]
    assert header["gpus"][1]["uuid"] == UUIDS[1] and header["driver"] == "580.159.04"
    assert header["pcie"]["sampled"] is True
    assert [g["sm_clock_max_mhz"] for g in header["gpus"]] == [1980, 1980, 1785]
    assert header["clock_event_reasons_call"] == "nvmlDeviceGetCurrentClocksEventReasons"
    assert "clock_event_reasons" in header["fields"]
    assert header["polls"] >= 3 and header["samples"] == 3 * header["polls"] == len(samples)
    assert header["poll_cost_us_median"] > 0 and header["sample_cost_us_median"] > 0
    first = {r["cuda_index"]: r for r in samples[:3]}
    assert first[2] == {"type": "sample", "t_ns": first[2]["t_ns"], "nvml_index": 2, "cuda_index": 2,
                        "util_gpu_pct": 12, "util_mem_pct": 22, "mem_used_bytes": 3 * 2**30,
                        "power_mw": 3000, "sm_clock_mhz": 1980, "pcie_tx_kbps": 100, "pcie_rx_kbps": 200,
                        "clock_event_reasons": 0xA4}
    assert [first[i]["clock_event_reasons"] for i in range(3)] == REASONS
    t = [r["t_ns"] for r in samples if r["cuda_index"] == 0]
    assert t == sorted(t) and abs(t[0] - time.time_ns()) < 60e9
    assert fake_nvml.inits == 1 and fake_nvml.shutdowns == 1


def test_cuda_visible_devices_uuid_and_index(tmp_path: Path, fake_nvml: FakeNvml,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # CUDA sees NVML GPU 2 as cuda:0 and NVML GPU 0 as cuda:1; NVML GPU 1 is hidden (not polled)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-cccc3333,0")
    path = tmp_path / "nvml.hostA.jsonl"
    run_sampler(path, until=lambda s: len(s._costs_ns) >= 1)
    rows = lines(path)
    assert [(g["nvml_index"], g["cuda_index"]) for g in rows[0]["gpus"]] == [(2, 0), (0, 1)]
    by_cuda = {r["cuda_index"]: r for r in rows if r["type"] == "sample"}
    assert by_cuda[0]["nvml_index"] == 2 and by_cuda[0]["util_gpu_pct"] == 12
    assert by_cuda[1]["nvml_index"] == 0 and by_cuda[1]["util_gpu_pct"] == 10
    assert set(by_cuda) == {0, 1}


@pytest.mark.parametrize(("cvd", "expected"), [
    (None, [0, 1, 2]),
    ("1,2", [None, 0, 1]),
    ("2, 0", [1, None, 0]),
    ("", [None, None, None]),
    ("-1,0", [None, None, None]),          # CUDA stops at the first invalid entry
    ("0,7,1", [0, None, None]),
    ("1,1,2", [None, 0, None]),            # a repeated entry ends the list too
    ("GPU-bbbb2222-0000-0000-0000-000000000000", [None, 0, None]),
    ("bbbb", [None, 0, None]),             # UUID prefix, without GPU-
    ("MIG-xyz", [None, None, None]),
])
def test_map_cuda_indices(cvd: str | None, expected: list[int | None]) -> None:
    env = {} if cvd is None else {"CUDA_VISIBLE_DEVICES": cvd}
    mapping, _ = map_cuda_indices(UUIDS, ["H200"] * 3, env)
    assert mapping == expected


def test_map_cuda_indices_exact_and_mixed_models() -> None:
    mapping, warnings = map_cuda_indices(UUIDS, ["a", "a", "a"], {}, cuda_uuids=["cccc3333-0000-0000-0000-000000000000",
                                                                              UUIDS[0]])
    assert mapping == [1, None, 0] and warnings == []
    _, warnings = map_cuda_indices(UUIDS, ["A100", "H200", "H200"], {})
    assert "CUDA_DEVICE_ORDER" in warnings[0]
    _, warnings = map_cuda_indices(UUIDS, ["A100", "H200", "H200"], {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"})
    assert warnings == []


def test_failure_mid_run_is_a_warning_and_file_stays_readable(tmp_path: Path, fake_nvml: FakeNvml) -> None:
    fake_nvml.fail_after = 6  # two good polls of 3 GPUs, then "GPU is lost" forever
    path = tmp_path / "nvml.hostA.jsonl"
    s = run_sampler(path, until=lambda s: s._gave_up)
    rows = lines(path)
    warnings = [r for r in rows if r["type"] == "warning"]
    assert len([r for r in rows if r["type"] == "sample"]) == 6
    assert len(warnings) == 4 and "GPU is lost" in warnings[0]["message"]
    assert "stopped after 3 failed polls" in warnings[-1]["message"]
    assert rows[0]["polls"] == 2 and s.warnings == [w["message"] for w in warnings]
    assert rows[0]["warnings"] == s.warnings


def test_unsupported_field_is_null_and_noted_once(tmp_path: Path, fake_nvml: FakeNvml) -> None:
    fake_nvml.power_supported = False
    path = tmp_path / "nvml.hostA.jsonl"
    s = run_sampler(path, until=lambda s: len(s._costs_ns) >= 2)
    samples = [r for r in lines(path) if r["type"] == "sample"]
    assert samples and all(r["power_mw"] is None and r["util_gpu_pct"] is not None for r in samples)
    assert len(s.warnings) == 3 and all("power" in w for w in s.warnings)  # once per GPU


def _reasons_of(path: Path) -> dict[int, set[int | None]]:
    out: dict[int, set[int | None]] = {}
    for r in lines(path):
        if r["type"] == "sample":
            out.setdefault(r["cuda_index"], set()).add(r["clock_event_reasons"])
    return out


@pytest.mark.parametrize("older", ["driver", "binding"])
def test_clock_event_reasons_fall_back_to_the_deprecated_call(tmp_path: Path, fake_nvml: FakeNvml,
                                                              monkeypatch: pytest.MonkeyPatch, older: str) -> None:
    if older == "driver":  # a binding that has the new call over a driver that does not
        fake_nvml.event_reasons_error = 13
    else:  # an nvidia-ml-py from before the rename
        monkeypatch.delattr(FakeNvml, "nvmlDeviceGetCurrentClocksEventReasons")
    path = tmp_path / "nvml.hostA.jsonl"
    s = run_sampler(path, until=lambda s: len(s._costs_ns) >= 2)
    assert s.warnings == []
    assert lines(path)[0]["clock_event_reasons_call"] == "nvmlDeviceGetCurrentClocksThrottleReasons"
    assert _reasons_of(path) == {i: {r} for i, r in enumerate(REASONS)}
    assert fake_nvml.reasons_calls.count("event") == (1 if older == "driver" else 0)  # tried once, at start


def test_clock_event_reasons_unreadable_are_null_and_sampling_goes_on(tmp_path: Path, fake_nvml: FakeNvml) -> None:
    fake_nvml.event_reasons_error = fake_nvml.throttle_reasons_error = 13
    fake_nvml.max_sm_clock_mhz = [1980, 0, 1980]  # 0: no maximum known
    path = tmp_path / "nvml.hostA.jsonl"
    s = run_sampler(path, until=lambda s: len(s._costs_ns) >= 2)
    header = lines(path)[0]
    assert header["clock_event_reasons_call"] is None and header["polls"] >= 2
    assert [g["sm_clock_max_mhz"] for g in header["gpus"]] == [1980, None, 1980]
    assert len(s.warnings) == 1 and "clock event reasons" in s.warnings[0] and "not in this driver" in s.warnings[0]
    assert _reasons_of(path) == {0: {None}, 1: {None}, 2: {None}}


def test_clock_event_reasons_not_supported_per_gpu_and_max_clock_error(tmp_path: Path, fake_nvml: FakeNvml,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    def max_clock(h: int, kind: int) -> int:
        raise FakeNVMLError(15)

    monkeypatch.setattr(fake_nvml, "nvmlDeviceGetMaxClockInfo", max_clock)
    fake_nvml.event_reasons_error = 3
    path = tmp_path / "nvml.hostA.jsonl"
    s = run_sampler(path, until=lambda s: len(s._costs_ns) >= 2)
    header = lines(path)[0]
    assert header["clock_event_reasons_call"] == "nvmlDeviceGetCurrentClocksEventReasons"
    assert [g["sm_clock_max_mhz"] for g in header["gpus"]] == [None, None, None]
    assert _reasons_of(path) == {0: {None}, 1: {None}, 2: {None}}
    assert sum("maximum SM clock" in w for w in s.warnings) == 3
    assert sum("clock event reasons" in w and "not supported" in w for w in s.warnings) == 3  # once per GPU
    assert header["polls"] >= 2 and not s._gave_up


def test_slow_pcie_is_skipped(tmp_path: Path, fake_nvml: FakeNvml) -> None:
    fake_nvml.pcie_delay_s = 0.004  # 8 ms per GPU for TX+RX, over 5 % of a 100 ms period
    path = tmp_path / "nvml.hostA.jsonl"
    run_sampler(path, period_ms=100, until=lambda s: len(s._costs_ns) >= 1)
    rows = lines(path)
    assert rows[0]["pcie"]["sampled"] is False and "skipped" in rows[0]["pcie"]["note"]
    assert all(r["pcie_tx_kbps"] is None for r in rows if r["type"] == "sample")


def test_no_pynvml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import raises ImportError
    path = tmp_path / "nvml.hostA.jsonl"
    s = run_sampler(path, seconds=0.02)
    assert not s.available and len(s.warnings) == 1 and "not installed" in s.warnings[0]
    rows = lines(path)
    assert len(rows) == 1 and rows[0]["available"] is False and rows[0]["warnings"] == s.warnings


def test_no_driver(tmp_path: Path, fake_nvml: FakeNvml) -> None:
    fake_nvml.init_error = 12
    s = run_sampler(tmp_path / "nvml.h.jsonl", seconds=0.02)
    assert not s.available and "Library Not Found" in s.warnings[0] and "driver" in s.warnings[0]


def test_no_visible_gpu(tmp_path: Path, fake_nvml: FakeNvml, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    s = run_sampler(tmp_path / "nvml.h.jsonl", seconds=0.02)
    assert not s.available and "visible to CUDA" in s.warnings[0]
    assert fake_nvml.shutdowns == fake_nvml.inits == 1


def test_unwritable_path_does_not_raise(tmp_path: Path, fake_nvml: FakeNvml) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    s = run_sampler(blocker / "nvml.h.jsonl", seconds=0.02)  # parent is a file
    assert not s.available and "cannot write NVML samples" in s.warnings[0]


def test_package_imports_without_pynvml() -> None:
    import subprocess
    code = ("import sys; sys.modules['pynvml'] = None; import dpprof.collect.nvml, dpprof.collect.hwinfo, "
            "dpprof.collect.probe, dpprof.trace.nvml_samples, dpprof.trace.nvml_merge; "
            "assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
