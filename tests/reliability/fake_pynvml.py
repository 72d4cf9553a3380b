"""A stand-in ``pynvml`` for end-to-end fault tests: one "GPU" that is lost after a few reads.

Put this file's folder first on ``PYTHONPATH`` under the name ``pynvml`` (the tests copy it to
``<tmp>/pynvml.py``) and a ``dpprof profile`` subprocess samples it instead of a real driver.
``FAKE_NVML_FAIL_AFTER`` (env, default 3) is the number of utilization reads before every call
raises ``NVMLError`` ("GPU is lost"), as a real GPU falling off the bus does. Functions the sampler or
hwinfo may call that are not defined here raise ``NVMLError`` ("Not Supported").
"""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_GPU_IS_LOST = 15
NVML_CLOCK_SM = 1
NVML_PCIE_UTIL_TX_BYTES = 0
NVML_PCIE_UTIL_RX_BYTES = 1
UUID = "GPU-fa4e0000-0000-0000-0000-000000000000"
#: nvmlClocksEventReasonSwPowerCap | nvmlClocksEventReasonSwThermalSlowdown (nvidia-ml-py 13.615)
CLOCK_EVENT_REASONS = 0x4 | 0x20
_reads = 0
_fail_after = int(os.environ.get("FAKE_NVML_FAIL_AFTER", "3"))


class NVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__({3: "Not Supported", 15: "GPU is lost"}.get(value, "Unknown Error"))
        self.value = value


def _alive() -> None:
    if _reads > _fail_after:
        raise NVMLError(NVML_ERROR_GPU_IS_LOST)


def nvmlInit() -> None:  # noqa: N802 (pynvml's names)
    pass


def nvmlShutdown() -> None:  # noqa: N802
    pass


def nvmlSystemGetDriverVersion() -> str:  # noqa: N802
    return "999.99"


def nvmlDeviceGetCount() -> int:  # noqa: N802
    return 1


def nvmlDeviceGetHandleByIndex(i: int) -> int:  # noqa: N802
    if i != 0:
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
    return 0


def nvmlDeviceGetUUID(h: int) -> str:  # noqa: N802
    return UUID


def nvmlDeviceGetName(h: int) -> str:  # noqa: N802
    return "Fake GPU (tests/reliability)"


def nvmlDeviceGetUtilizationRates(h: int) -> Any:  # noqa: N802
    global _reads
    _reads += 1
    _alive()
    return SimpleNamespace(gpu=50, memory=10)


def nvmlDeviceGetMemoryInfo(h: int) -> Any:  # noqa: N802
    _alive()
    return SimpleNamespace(total=80 * 2**30, used=2**30, free=79 * 2**30)


def nvmlDeviceGetPowerUsage(h: int) -> int:  # noqa: N802
    _alive()
    return 100_000


def nvmlDeviceGetClockInfo(h: int, clock: int) -> int:  # noqa: N802
    _alive()
    return 1500


def nvmlDeviceGetMaxClockInfo(h: int, clock: int) -> int:  # noqa: N802
    _alive()
    return 1980


def nvmlDeviceGetCurrentClocksEventReasons(h: int) -> int:  # noqa: N802
    _alive()
    return CLOCK_EVENT_REASONS


def __getattr__(name: str) -> Any:
    if name.startswith("nvml"):
        def unsupported(*_args: Any, **_kwargs: Any) -> Any:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return unsupported
    if name.startswith("NVML_"):
        return 0
    raise AttributeError(name)
