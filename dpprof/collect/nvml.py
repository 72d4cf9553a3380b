"""Background NVML sampler: one JSON line per GPU per poll, appended to ``nvml.<host>.jsonl`` as it goes.

Format: docs/run-format.md ("nvml.<host>.jsonl"). Units are in the field names: ``*_pct`` percent,
``*_bytes`` bytes, ``power_mw`` milliwatts, ``sm_clock_mhz`` MHz, ``pcie_*_kbps`` KB/s, ``t_ns`` Unix ns,
``clock_event_reasons`` NVML's bitmask of why the clocks are below their maximum (bits in
:data:`dpprof.trace.nvml_samples.CLOCK_EVENT_BITS`); each GPU's ``sm_clock_max_mhz`` is in the header.

``util_gpu_pct`` is NVML's utilization.gpu: the percent of the driver's own sample period (1/6 s to 1 s
depending on the product) during which one or more kernels ran. One busy SM saturates it, and polling
faster than that period repeats values.

NVML numbers GPUs in PCI order; CUDA numbers the GPUs that CUDA_VISIBLE_DEVICES leaves visible, in its
order. Samples carry both indices, mapped by UUID (see :func:`map_cuda_indices`).

``pynvml`` (nvidia-ml-py) is imported only when a sampler starts, so the package imports without it.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import threading
import time
from array import array
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType, TracebackType
from typing import IO, Any

from dpprof.collect.nvml_gpus import (
    NvmlGpu,
    describe_error,
    import_nvml,
    list_gpus,
    map_cuda_indices,
    nvml_text,
)
from dpprof.errors import DpprofError
from dpprof.fileio import atomic_open

#: Re-exported: callers import the GPU list and index mapping from here too.
__all__ = ["NvmlGpu", "NvmlSampler", "describe_error", "import_nvml", "list_gpus", "map_cuda_indices"]

SCHEMA = "dpprof.nvml/1"
#: Sample fields, in the order they are written.
FIELDS: tuple[str, ...] = (
    "util_gpu_pct", "util_mem_pct", "mem_used_bytes", "power_mw", "sm_clock_mhz",
    "pcie_tx_kbps", "pcie_rx_kbps", "clock_event_reasons",
)
#: NVML calls that read the clock event reasons bitmask, newest first: the throttle-reasons call is
#: deprecated (nvidia-ml-py 13: "will be removed in CUDA 14.0") but is all that older bindings and
#: drivers have. Both return the same bits.
CLOCK_REASON_CALLS: tuple[str, ...] = (
    "nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons",
)
#: pynvml's NVML_ERROR_FUNCTION_NOT_FOUND: the binding has the function, the driver's library does not.
NVML_ERROR_FUNCTION_NOT_FOUND = 13
#: Consecutive failed polls after which the sampler gives up (the run goes on without samples).
MAX_CONSECUTIVE_FAILURES = 3
#: PCIe throughput is read only if reading it on every GPU costs at most this share of the period:
#: NVML measures it by counting bytes over ~20 ms inside the call, which blocks the sampler thread.
PCIE_BUDGET_SHARE = 0.05


def _dumps(obj: Mapping[str, Any]) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


class NvmlSampler:
    """Polls every CUDA-visible GPU every ``period_ms`` on a daemon thread, writing ``path`` as it goes.

    Use as a context manager. Without pynvml, a driver or a GPU it records one warning (in the file's
    header and in ``.warnings``) and does nothing else; NVML failing mid-run writes warning lines and,
    after ``MAX_CONSECUTIVE_FAILURES`` failed polls in a row, stops sampling. Neither stops the run.
    At exit the header is rewritten with the measured cost of sampling (``poll_cost_us_median``: one
    poll of all GPUs, µs; ``sample_cost_us_median``: that divided by the number of GPUs).
    ``cuda_uuids`` (optional, CUDA order) makes the NVML-to-CUDA mapping exact.
    """

    def __init__(self, path: Path, host: str, period_ms: int = 100,
                 cuda_uuids: Sequence[str] | None = None) -> None:
        if period_ms <= 0:
            raise DpprofError(f"NVML period must be a positive number of milliseconds, got {period_ms}")
        self.path = Path(path)
        self.host = host
        self.period_ms = int(period_ms)
        self.warnings: list[str] = []
        self.available = False
        self._cuda_uuids = list(cuda_uuids) if cuda_uuids is not None else None
        self._nv: ModuleType | None = None
        self._gpus: list[NvmlGpu] = []
        self._handles: list[Any] = []
        self._fh: IO[str] | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._header: dict[str, Any] = {}
        self._unsupported: set[tuple[int, str]] = set()
        self._costs_ns = array("q")
        self._samples = 0
        self._failures = 0
        self._gave_up = False
        self._reasons_call: str | None = None

    # -- life cycle -------------------------------------------------------------------------------
    def __enter__(self) -> NvmlSampler:
        self._header = {"type": "header", "schema": SCHEMA, "host": self.host, "period_ms": self.period_ms,
                        "fields": list(FIELDS), "gpus": [], "available": False, "driver": None,
                        "started_unix_ns": time.time_ns(), "pid": os.getpid(), "pcie": None, "warnings": []}
        self._start_nvml()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "w", encoding="utf-8")  # closed by stop()
            self._write_line(self._header_obj())
        except OSError as exc:
            self._warn(f"cannot write NVML samples to {self.path}: {exc.strerror or exc}; sampling disabled")
            self._close_file()
            self._shutdown_nvml()
            self.available = False
        if self.available:
            self._thread = threading.Thread(target=self._loop, name="dpprof-nvml", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop the thread, close the file, write the sampling cost into the header. Idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10 + self.period_ms / 1000)
            if self._thread.is_alive():
                self._warn("NVML sampler thread did not stop within 10 s (a hung NVML call?)")
            self._thread = None
        was_open = self._fh is not None
        self._close_file()
        self._shutdown_nvml()
        if was_open:
            self._finalize_header()

    # -- set-up -----------------------------------------------------------------------------------
    def _start_nvml(self) -> None:
        nv, reason = import_nvml()
        if nv is None:
            self._warn(f"NVML unavailable: {reason}; no GPU samples recorded, the run continues")
            return
        self._nv = nv
        try:
            self._header["driver"] = nvml_text(nv.nvmlSystemGetDriverVersion())
            gpus, handles, notes = list_gpus(nv, self._cuda_uuids)
        except Exception as exc:
            self._warn(f"NVML unavailable: listing GPUs failed ({describe_error(exc)}); no GPU samples recorded")
            self._shutdown_nvml()
            return
        for note in notes:
            self._warn(note)
        visible = [(g, h) for g, h in zip(gpus, handles, strict=True) if g.cuda_index is not None]
        visible.sort(key=lambda gh: gh[0].cuda_index or 0)
        if not visible:
            why = "NVML reports no GPU" if not gpus else \
                f"none of NVML's {len(gpus)} GPUs is visible to CUDA (CUDA_VISIBLE_DEVICES=" \
                f"{os.environ.get('CUDA_VISIBLE_DEVICES')!r})"
            self._warn(f"NVML unavailable: {why}; no GPU samples recorded")
            self._shutdown_nvml()
            return
        self._gpus = [g for g, _ in visible]
        self._handles = [h for _, h in visible]
        self._header["gpus"] = [dict(g.to_json(), sm_clock_max_mhz=self._max_sm_clock(g, h))
                                for g, h in zip(self._gpus, self._handles, strict=True)]
        self._header["pcie"] = self._check_pcie()
        self._header["clock_event_reasons_call"] = self._reasons_call = self._pick_reasons_call()
        self.available = True
        self._header["available"] = True

    def _max_sm_clock(self, gpu: NvmlGpu, handle: Any) -> int | None:
        """The GPU's maximum SM clock (MHz), read once: the reference a sampled clock is compared with."""
        nv = self._nv
        assert nv is not None
        try:
            mhz = int(nv.nvmlDeviceGetMaxClockInfo(handle, nv.NVML_CLOCK_SM))
        except Exception as exc:  # any failure here costs one header field, never the run
            self._warn(f"NVML cannot read the maximum SM clock of GPU {gpu.cuda_index} ({describe_error(exc)}): "
                       "recorded as null")
            return None
        return mhz if mhz > 0 else None  # 0 is what some virtualised GPUs report: no maximum known

    def _pick_reasons_call(self) -> str | None:
        """The first of :data:`CLOCK_REASON_CALLS` that this pynvml and driver have (tried on the first
        GPU), or None (the field is then null in every sample)."""
        nv = self._nv
        assert nv is not None
        missing = []
        for name in CLOCK_REASON_CALLS:
            call = getattr(nv, name, None)
            if call is None:
                missing.append(f"{name} not in this pynvml")
                continue
            try:
                call(self._handles[0])
            except Exception as exc:
                if getattr(exc, "value", None) == getattr(nv, "NVML_ERROR_FUNCTION_NOT_FOUND",
                                                          NVML_ERROR_FUNCTION_NOT_FOUND):
                    missing.append(f"{name} not in this driver")
                    continue
                # Not supported on this GPU, or a transient error: the per-sample reads note it.
            return name
        self._warn(f"NVML cannot read clock event reasons ({'; '.join(missing)}): recorded as null")
        return None

    def _check_pcie(self) -> dict[str, Any]:
        """Time one TX+RX read on the first GPU; keep PCIe fields only if all GPUs fit the budget."""
        nv = self._nv
        assert nv is not None
        t0 = time.perf_counter_ns()
        try:
            nv.nvmlDeviceGetPcieThroughput(self._handles[0], nv.NVML_PCIE_UTIL_TX_BYTES)
            nv.nvmlDeviceGetPcieThroughput(self._handles[0], nv.NVML_PCIE_UTIL_RX_BYTES)
        except Exception as exc:
            return {"sampled": False, "read_cost_us": None, "note": f"not readable ({describe_error(exc)})"}
        cost_us = (time.perf_counter_ns() - t0) / 1000
        per_poll_us = cost_us * len(self._handles)
        budget_us = PCIE_BUDGET_SHARE * self.period_ms * 1000
        if per_poll_us > budget_us:
            return {"sampled": False, "read_cost_us": round(cost_us, 1),
                    "note": f"skipped: reading PCIe TX+RX takes {cost_us / 1000:.1f} ms per GPU "
                            f"(NVML counts bytes inside the call), over {PCIE_BUDGET_SHARE:.0%} of the period"}
        return {"sampled": True, "read_cost_us": round(cost_us, 1), "note": "TX+RX KB/s as NVML reports them"}

    # -- sampling thread --------------------------------------------------------------------------
    def _loop(self) -> None:
        period_ns = self.period_ms * 1_000_000
        next_t = time.monotonic_ns()
        while not self._stop.is_set():
            try:
                self._poll()
            except (OSError, ValueError) as exc:  # the file (full disk; closed by a timed-out stop)
                self._warn(f"writing NVML samples failed ({exc}); sampling stopped")
                return
            if self._gave_up:
                return
            next_t += period_ns
            now = time.monotonic_ns()
            if next_t <= now:  # a slow poll: skip the missed slots instead of bursting to catch up
                next_t += ((now - next_t) // period_ns + 1) * period_ns
            self._stop.wait((next_t - now) / 1e9)

    def _poll(self) -> None:
        t0 = time.perf_counter_ns()
        try:
            records = [self._read(i) for i in range(len(self._gpus))]
        except Exception as exc:  # NVML errors and anything the binding raises: never kill the run
            self._failures += 1
            self._warn_line(f"NVML read failed ({describe_error(exc)}); "
                            f"failure {self._failures} of {MAX_CONSECUTIVE_FAILURES} in a row")
            if self._failures >= MAX_CONSECUTIVE_FAILURES:
                self._gave_up = True
                self._warn_line(f"NVML sampling stopped after {MAX_CONSECUTIVE_FAILURES} failed polls in a row")
            return
        self._costs_ns.append(time.perf_counter_ns() - t0)
        self._failures = 0
        for rec in records:
            self._write_line(rec)
        assert self._fh is not None
        self._fh.flush()
        self._samples += len(records)

    def _read(self, i: int) -> dict[str, Any]:
        nv, h, gpu = self._nv, self._handles[i], self._gpus[i]
        assert nv is not None
        rec: dict[str, Any] = {"type": "sample", "t_ns": time.time_ns(), "nvml_index": gpu.nvml_index,
                               "cuda_index": gpu.cuda_index}
        util = self._field(gpu, "utilization", lambda: nv.nvmlDeviceGetUtilizationRates(h))
        rec["util_gpu_pct"] = None if util is None else int(util.gpu)
        rec["util_mem_pct"] = None if util is None else int(util.memory)
        mem = self._field(gpu, "memory", lambda: nv.nvmlDeviceGetMemoryInfo(h))
        rec["mem_used_bytes"] = None if mem is None else int(mem.used)
        rec["power_mw"] = self._int(self._field(gpu, "power", lambda: nv.nvmlDeviceGetPowerUsage(h)))
        rec["sm_clock_mhz"] = self._int(
            self._field(gpu, "sm clock", lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM)))
        call = self._reasons_call
        rec["clock_event_reasons"] = None if call is None else self._int(
            self._field(gpu, "clock event reasons", lambda: getattr(nv, call)(h)))
        pcie = self._header.get("pcie") or {}
        for key, counter in (("pcie_tx_kbps", "NVML_PCIE_UTIL_TX_BYTES"), ("pcie_rx_kbps", "NVML_PCIE_UTIL_RX_BYTES")):
            rec[key] = self._int(self._field(
                gpu, key, lambda c=counter: nv.nvmlDeviceGetPcieThroughput(h, getattr(nv, c)))) \
                if pcie.get("sampled") else None
        return rec

    @staticmethod
    def _int(value: Any) -> int | None:
        return None if value is None else int(value)

    def _field(self, gpu: NvmlGpu, what: str, read: Any) -> Any:
        """One NVML read; a field this GPU does not support becomes null from then on (noted once)."""
        key = (gpu.nvml_index, what)
        if key in self._unsupported:
            return None
        try:
            return read()
        except Exception as exc:
            unsupported = (getattr(self._nv, "NVML_ERROR_NOT_SUPPORTED", 3),
                           getattr(self._nv, "NVML_ERROR_FUNCTION_NOT_FOUND", NVML_ERROR_FUNCTION_NOT_FOUND))
            if getattr(exc, "value", None) not in unsupported:
                raise
            self._unsupported.add(key)
            self._warn_line(f"NVML cannot read {what} on GPU {gpu.cuda_index} ({gpu.name}): not supported "
                            f"({describe_error(exc)}), recorded as null")
            return None

    # -- output -----------------------------------------------------------------------------------
    def _warn(self, message: str) -> None:
        self.warnings.append(message)

    def _warn_line(self, message: str) -> None:
        """A warning that happened mid-run: in ``.warnings`` and as a line of the file."""
        self._warn(message)
        with contextlib.suppress(OSError):
            self._write_line({"type": "warning", "t_ns": time.time_ns(), "message": message})
            if self._fh is not None:
                self._fh.flush()

    def _write_line(self, obj: Mapping[str, Any]) -> None:
        if self._fh is not None:
            self._fh.write(_dumps(obj) + "\n")

    def _header_obj(self) -> dict[str, Any]:
        return {**self._header, "warnings": list(self.warnings)}

    def _close_file(self) -> None:
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._fh.close()
            self._fh = None

    def _shutdown_nvml(self) -> None:
        if self._nv is not None:
            with contextlib.suppress(Exception):
                self._nv.nvmlShutdown()
            self._nv = None

    def _finalize_header(self) -> None:
        costs = sorted(self._costs_ns)
        poll_us = statistics.median(costs) / 1000 if costs else None
        self._header.update({
            "stopped_unix_ns": time.time_ns(), "polls": len(costs), "samples": self._samples,
            "poll_cost_us_median": None if poll_us is None else round(poll_us, 1),
            "poll_cost_us_p90": round(costs[int(0.9 * (len(costs) - 1))] / 1000, 1) if costs else None,
            "sample_cost_us_median": None if poll_us is None or not self._gpus
            else round(poll_us / len(self._gpus), 1),
        })
        # Rewrite the file with the final header, streaming (the file can be large); a failure keeps
        # the file as it was: the samples matter more than the cost figures.
        try:
            with open(self.path, encoding="utf-8") as src, atomic_open(self.path, "w") as dst:
                src.readline()
                dst.write(_dumps(self._header_obj()) + "\n")
                for line in src:
                    dst.write(line)
        except (OSError, DpprofError) as exc:
            self._warn(f"could not write the NVML header's final figures ({exc})")
