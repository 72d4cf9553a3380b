"""Bandwidth probe and hardware/version collection (fake NVML; the GPU case only where CUDA exists)."""

from __future__ import annotations

import contextlib
import platform
import sys
import types
from typing import Any

import pytest

import dpprof
from dpprof.collect import hwinfo
from dpprof.collect.probe import NO_CUDA_NOTE, probe_bandwidth
from tests.collect.test_nvml import UUIDS, FakeNvml


@pytest.fixture
def fake_nvml(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    fake = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return fake


def fake_torch(uuids: list[str], names: list[str]) -> Any:
    """A torch whose CUDA sees ``uuids`` (without NVML's GPU- prefix, as torch reports them)."""
    props = [types.SimpleNamespace(uuid=u, name=n, total_memory=150_000_000_000) for u, n in zip(uuids, names, strict=True)]
    cuda = types.SimpleNamespace(is_available=lambda: True, device_count=lambda: len(props),
                                 get_device_properties=lambda i: props[i])
    return types.SimpleNamespace(cuda=cuda)


def test_probe_without_cuda() -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = probe_bandwidth([0, 1])
    assert result["measured"] is False and result["note"] == NO_CUDA_NOTE
    assert result["h2d_GBps"] is None and result["p2p_GBps"] == {}


def test_probe_with_no_gpu_listed() -> None:
    result = probe_bandwidth([])
    assert result["measured"] is False and "not measured" in result["note"]


@pytest.mark.gpu
def test_probe_on_gpu() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    indices = list(range(min(torch.cuda.device_count(), 2)))
    result = probe_bandwidth(indices)
    assert result["measured"] is True, result["note"]
    # any PCIe 3 x16 link or better moves pinned memory faster than 1 GB/s, and no link beats 2 TB/s
    assert 1 < result["h2d_GBps"] < 2000 and 1 < result["d2h_GBps"] < 2000
    assert len(result["p2p_GBps"]) == len(indices) * (len(indices) - 1)


def test_versions(fake_nvml: FakeNvml) -> None:
    v = hwinfo.collect_versions()
    assert v["python"] == platform.python_version() and v["dpprof"] == dpprof.__version__
    assert v["driver"] == "580.159.04" and fake_nvml.inits == fake_nvml.shutdowns == 1
    torch = sys.modules.get("torch")
    if torch is not None:
        assert v["torch"] == str(torch.__version__) and v["cuda"] == torch.version.cuda


def test_versions_without_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    assert hwinfo.collect_versions()["driver"] is None


def test_hardware_from_nvml_only(fake_nvml: FakeNvml, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hwinfo, "_torch", lambda: None)
    hw = hwinfo.collect_hardware()
    assert hw["cpus"] >= 1 and hw["host"]
    assert [(g["cuda_index"], g["nvml_index"], g["uuid"]) for g in hw["gpus"]] == \
        [(0, 0, UUIDS[0]), (1, 1, UUIDS[1]), (2, 2, UUIDS[2])]
    assert hw["gpus"][0]["memory_total_bytes"] == 141 * 2**30
    topo = hw["topology"]
    assert topo["p2p"] == {"0-1": "NVLINK", "0-2": "PCIE", "1-2": "PCIE"}
    assert topo["pcie_path"] == {"0-1": "PIX", "0-2": "SYS", "1-2": "SYS"}
    assert topo["nvlink_active_links"] == {"0": 2, "1": 2, "2": 0}


def test_hardware_maps_cuda_to_nvml_by_uuid(fake_nvml: FakeNvml, monkeypatch: pytest.MonkeyPatch) -> None:
    # CUDA (say, fastest first) sees NVML GPU 2 as cuda:0 and NVML GPU 0 as cuda:1
    cuda_uuids = [UUIDS[2][4:], UUIDS[0][4:]]
    monkeypatch.setattr(hwinfo, "_torch", lambda: fake_torch(cuda_uuids, ["H200", "H200"]))
    hw = hwinfo.collect_hardware()
    assert [(g["cuda_index"], g["nvml_index"]) for g in hw["gpus"]] == [(0, 2), (1, 0)]
    assert hw["gpus"][0]["uuid"] == UUIDS[2]
    # topology keys are CUDA indices: cuda 0-1 = NVML 2-0, a PCIe pair in the fake
    assert hw["topology"]["p2p"] == {"0-1": "PCIE"} and hw["topology"]["pcie_path"] == {"0-1": "SYS"}


def test_hardware_without_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    monkeypatch.setattr(hwinfo, "_torch", lambda: fake_torch(["abc"], ["H200"]))
    hw = hwinfo.collect_hardware()
    assert hw["topology"] is None and hw["gpus"][0]["nvml_index"] is None
    assert "not installed" in hw["warnings"][0]


class FakeCudaTorch(types.ModuleType):
    """torch with CUDA faked: a device clock advances by ``copy_ms[kind]`` per copy; events read it."""

    float32 = "float32"

    def __init__(self, copy_ms: dict[str, float], peer: bool = True) -> None:
        super().__init__("torch")
        self.clock_ms = 0.0
        fake = self

        class Tensor:
            def __init__(self, device: str) -> None:
                self.device = device

            def copy_(self, src: Tensor, non_blocking: bool = False) -> Tensor:
                on_gpu = (src.device != "cpu", self.device != "cpu")
                fake.clock_ms += copy_ms[{(False, True): "h2d", (True, False): "d2h", (True, True): "p2p"}[on_gpu]]
                return self

        class Event:
            def __init__(self, enable_timing: bool = False) -> None:
                self.t = 0.0

            def record(self) -> None:
                self.t = fake.clock_ms

            def synchronize(self) -> None:
                pass

            def elapsed_time(self, end: Event) -> float:
                return end.t - self.t

        self.empty = lambda n, dtype=None, pin_memory=False, device="cpu": Tensor(device)
        self.cuda = types.SimpleNamespace(
            is_available=lambda: True, device=lambda i: contextlib.nullcontext(), synchronize=lambda i=None: None,
            Event=Event, can_device_access_peer=lambda a, b: peer, empty_cache=lambda: None)


def test_probe_arithmetic_with_fake_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    # 64 MiB in 1.2 ms = 55.92 GB/s; 2.4 ms = 27.96; 0.16 ms = 419.43 (GB = 1e9 bytes)
    monkeypatch.setitem(sys.modules, "torch", FakeCudaTorch({"h2d": 1.2, "d2h": 2.4, "p2p": 0.16}))
    r = probe_bandwidth([1, 0, 1])
    assert r["measured"] is True and r["repeats"] == 5 and r["bytes"] == 64 * 2**20
    assert (r["h2d_GBps"], r["d2h_GBps"]) == (55.92, 27.96)  # the first listed GPU: cuda:1
    assert r["per_device"] == {"1": {"h2d_GBps": 55.92, "d2h_GBps": 27.96}, "0": {"h2d_GBps": 55.92, "d2h_GBps": 27.96}}
    assert r["p2p_GBps"] == {"1->0": 419.43, "0->1": 419.43} and r["peer_access"] == {"1->0": True, "0->1": True}


def test_probe_failure_is_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeCudaTorch({"h2d": 1.0, "d2h": 1.0, "p2p": 1.0})

    def oom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("CUDA out of memory. Tried to allocate 64.00 MiB\nmore detail")
    fake.empty = oom
    monkeypatch.setitem(sys.modules, "torch", fake)
    r = probe_bandwidth([0])
    assert r["measured"] is False and r["note"] == "bandwidth probe failed: CUDA out of memory. Tried to allocate 64.00 MiB"
