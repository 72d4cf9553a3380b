"""Read a run's NVML samples (``nvml*.jsonl``, written by dpprof.collect.nvml) into per-GPU numpy arrays.

No torch, no pynvml. Tolerant by design: a run killed mid-write leaves a cut-short last line (reported as
``truncated``, not an error) and any line that is not a JSON object of a known type is counted in
``bad_lines`` and skipped. Units are those of the file: ``t_ns`` Unix ns (int64), ``*_pct`` percent,
``mem_used_bytes`` bytes, ``power_mw`` mW, ``sm_clock_mhz`` MHz, ``pcie_*_kbps`` KB/s, ``clock_event_reasons``
NVML's bitmask (:data:`CLOCK_EVENT_BITS`, exact as float64); a null reading is NaN, and so is every sample of a
field that an older file does not have.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from types import MappingProxyType
from typing import Any

import msgspec
import numpy as np

from dpprof.errors import DpprofError
from dpprof.fileio import MAX_SIDECAR_BYTES, read_input, too_large
from dpprof.schema import INT, NUM, STR, check_file

#: Sample fields the reader turns into arrays (float64, NaN for null); others are ignored.
FIELDS: tuple[str, ...] = (
    "util_gpu_pct", "util_mem_pct", "mem_used_bytes", "power_mw", "sm_clock_mhz",
    "pcie_tx_kbps", "pcie_rx_kbps", "clock_event_reasons",
)
PATTERN = "nvml*.jsonl"
_INT64 = 2**63
#: The header fields this reader uses (dpprof.schema: a field of the wrong type is left out and named).
HEADER_SPEC: dict[str, Any] = {
    "host": STR, "period_ms": NUM, "warnings": [STR],
    "gpus": [{"nvml_index": INT, "cuda_index": INT, "uuid": STR, "name": STR}],
}

#: Bits of ``clock_event_reasons``: why NVML says the clocks are below their maximum. Values and NVML names
#: from nvidia-ml-py 13.615.71 (``pynvml.nvmlClocksEventReason*``; the deprecated ``nvmlClocksThrottleReason*``
#: have the same values). Meanings in docs/run-format.md.
CLOCK_EVENT_BITS: Mapping[str, int] = MappingProxyType({
    "gpu_idle": 0x1,                    # nvmlClocksEventReasonGpuIdle
    "applications_clocks_setting": 0x2,  # nvmlClocksEventReasonApplicationsClocksSetting
    "sw_power_cap": 0x4,                # nvmlClocksEventReasonSwPowerCap
    "hw_slowdown": 0x8,                 # nvmlClocksEventReasonHwSlowdown
    "sync_boost": 0x10,                 # nvmlClocksEventReasonSyncBoost
    "sw_thermal_slowdown": 0x20,        # nvmlClocksEventReasonSwThermalSlowdown
    "hw_thermal_slowdown": 0x40,        # nvmlClocksEventReasonHwThermalSlowdown
    "hw_power_brake_slowdown": 0x80,    # nvmlClocksEventReasonHwPowerBrakeSlowdown
    "display_clock_setting": 0x100,     # nvmlClocksEventReasonDisplayClockSetting
    # newer drivers; nvidia-ml-py 13.615.71 names these two only as nvmlClocksThrottleReason*
    "board_limit": 0x200,               # nvmlClocksThrottleReasonBoardLimit
    "reliability": 0x400,               # nvmlClocksThrottleReasonReliability
})


def clock_events(reasons: np.ndarray, *names: str) -> np.ndarray:
    """Per sample, whether any of the named :data:`CLOCK_EVENT_BITS` is set (False where unread, NaN).

    ``clock_events(g.fields["clock_event_reasons"], "sw_thermal_slowdown", "hw_thermal_slowdown")``.
    """
    mask = 0
    for name in names:
        if name not in CLOCK_EVENT_BITS:
            raise KeyError(f"unknown clock event reason {name!r} (known: {', '.join(CLOCK_EVENT_BITS)})")
        mask |= CLOCK_EVENT_BITS[name]
    values = np.asarray(reasons, dtype=np.float64)
    read = ~np.isnan(values)
    bits = np.zeros(values.shape, dtype=np.int64)
    bits[read] = values[read].astype(np.int64)
    return read & ((bits & mask) != 0)


@dataclass(frozen=True, eq=False)
class GpuSamples:
    """All samples of one GPU of one node, sorted by time. ``fields[name]`` is aligned with ``t_ns``.

    ``node`` is the file's key (``nvml.<node>.jsonl``: the host name, or ``<host>-node<N>`` when two
    nodes of a run share a host); ``host`` is the machine the header names. ``sm_clock_max_mhz`` is the
    GPU's maximum SM clock (MHz, NVML's ``nvmlDeviceGetMaxClockInfo``, read once per run; None in files
    written before it was recorded, or when NVML could not read it).
    """

    node: str
    host: str
    cuda_index: int | None
    nvml_index: int | None
    uuid: str | None
    name: str | None
    t_ns: np.ndarray
    fields: Mapping[str, np.ndarray]
    sm_clock_max_mhz: int | None = None

    @property
    def label(self) -> str:
        """``node:cuda_index`` (``node:nvml<N>`` for a GPU CUDA could not see), as in peak_memory_bytes."""
        return f"{self.node}:{self.cuda_index}" if self.cuda_index is not None else f"{self.node}:nvml{self.nvml_index}"

    def __len__(self) -> int:
        return int(self.t_ns.size)


@dataclass(frozen=True)
class NvmlFile:
    """One ``nvml.<node>.jsonl``: its header (empty if missing), warnings, and how clean it was."""

    path: str
    node: str
    host: str
    header: Mapping[str, Any]
    warnings: tuple[str, ...]
    samples: int
    bad_lines: int
    truncated: bool


@dataclass(frozen=True, eq=False)
class NvmlData:
    """Every NVML file of a run. ``gpus`` sorted by (node, cuda_index, nvml_index)."""

    files: tuple[NvmlFile, ...] = ()
    gpus: tuple[GpuSamples, ...] = ()
    warnings: tuple[str, ...] = ()
    bad_lines: int = 0

    def gpu(self, node: str, cuda_index: int) -> GpuSamples | None:
        """The samples of CUDA device ``cuda_index`` of ``node`` (a file key, else a host name), or None."""
        for match in (lambda g: g.node == node, lambda g: g.host == node):
            for g in self.gpus:
                if match(g) and g.cuda_index == cuda_index:
                    return g
        return None

    @property
    def nodes(self) -> tuple[str, ...]:
        """The file keys (``nvml.<node>.jsonl``), sorted."""
        return tuple(sorted({f.node for f in self.files}))

    @property
    def samples(self) -> int:
        return sum(len(g) for g in self.gpus)


def node_from_name(path: Path) -> str:
    """``nvml.<node>.jsonl`` -> ``<node>``."""
    stem = path.name[: -len(".jsonl")]
    return stem[len("nvml."):] if stem.startswith("nvml.") else stem


def _decode_any(line: bytes) -> Any:
    try:
        return msgspec.json.decode(line)
    except (msgspec.DecodeError, RecursionError):
        return None


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class _Line(msgspec.Struct):
    """Any line of the file, decoded into slots (3x faster than dicts); unknown keys are ignored.

    A value of the wrong type (a string where a number belongs) makes the whole line unreadable.
    """

    type: str | None = None
    t_ns: int | None = None
    cuda_index: int | None = None
    nvml_index: int | None = None
    util_gpu_pct: float | None = None
    util_mem_pct: float | None = None
    mem_used_bytes: float | None = None
    power_mw: float | None = None
    sm_clock_mhz: float | None = None
    pcie_tx_kbps: float | None = None
    pcie_rx_kbps: float | None = None
    clock_event_reasons: float | None = None
    message: str | None = None


_line_decoder = msgspec.json.Decoder(_Line)
_values = attrgetter(*FIELDS)


def read_nvml_file(path: Path) -> tuple[NvmlFile, list[GpuSamples]]:
    """Parse one file. Raises DpprofError only when it cannot be opened at all (or is not a regular file)."""
    raw = read_input(path)
    header: dict[str, Any] = {}
    warnings: list[str] = []
    bad = 0
    truncated = False
    rows: dict[tuple[int | None, int | None], list[_Line]] = {}
    lines = raw.split(b"\n")
    last = len(lines) - 1
    for i, line in enumerate(lines):
        if len(line) > MAX_SIDECAR_BYTES:  # a header is ~1 kB a GPU, a sample ~300 bytes: not one of dpprof's
            warnings.append(too_large(f"line {i + 1}", len(line), MAX_SIDECAR_BYTES))
            continue
        if not line.strip():
            continue
        try:
            obj = _line_decoder.decode(line)
        except msgspec.DecodeError:
            if i == last:  # no newline after it: the writer was killed in the middle of this line
                truncated = True
            else:
                bad += 1
            continue
        if obj.type == "sample" and obj.t_ns is not None and 0 <= obj.t_ns < _INT64:
            rows.setdefault((obj.cuda_index, obj.nvml_index), []).append(obj)
        elif obj.type == "header" and not header:
            checked, problems = check_file(_decode_any(line), HEADER_SPEC, f"{path.name} header")
            header = checked or {}
            warnings.extend(problems)
            warnings.extend(w for w in header.get("warnings") or [] if isinstance(w, str))
        elif obj.type == "warning" and obj.message is not None:
            warnings.append(obj.message)
        else:
            bad += 1
    node = node_from_name(path)
    host = str(header.get("host") or node)
    info = {(_int_or_none(g.get("cuda_index")), _int_or_none(g.get("nvml_index"))): g
            for g in header.get("gpus") or [] if isinstance(g, dict)}
    gpus: list[GpuSamples] = []
    for (cuda_index, nvml_index), samples in rows.items():
        t = np.fromiter((s.t_ns for s in samples), dtype=np.int64, count=len(samples))
        # None -> NaN in the float conversion
        vals = np.array(list(map(_values, samples)), dtype=np.float64).reshape(len(samples), len(FIELDS))
        order = np.argsort(t, kind="stable")
        meta = info.get((cuda_index, nvml_index), {})
        gpus.append(GpuSamples(
            node=node, host=host, cuda_index=cuda_index, nvml_index=nvml_index,
            uuid=meta.get("uuid"), name=meta.get("name"), t_ns=t[order],
            fields={f: vals[order, k] for k, f in enumerate(FIELDS)},
            sm_clock_max_mhz=_int_or_none(meta.get("sm_clock_max_mhz"))))
    n = sum(len(v) for v in rows.values())
    # header warnings are repeated as lines when they happen mid-run: keep each once, in order
    nf = NvmlFile(path=str(path), node=node, host=host, header=header, warnings=tuple(dict.fromkeys(warnings)),
                  samples=n, bad_lines=bad, truncated=truncated)
    return nf, gpus


def _sort_key(g: GpuSamples) -> tuple[str, int, int]:
    return (g.node, -1 if g.cuda_index is None else g.cuda_index, -1 if g.nvml_index is None else g.nvml_index)


def read_nvml(run_dir: Path) -> NvmlData:
    """All ``nvml*.jsonl`` files directly in ``run_dir`` (or the one file ``run_dir`` names).

    A run without NVML files gives an empty NvmlData (its ``warnings`` say so); a missing ``run_dir``
    raises DpprofError. ``warnings`` are per file, prefixed with the node, plus one line per file
    with skipped or cut-short lines.
    """
    run_dir = Path(run_dir)
    if run_dir.is_file():
        paths = [run_dir]
    elif run_dir.is_dir():
        # Not only regular files: a FIFO among them is refused by read_input (it would block), not skipped.
        paths = sorted(p for p in run_dir.glob(PATTERN) if p.exists() and not p.is_dir())
    else:
        raise DpprofError(f"{run_dir}: no such file or directory")
    if not paths:
        return NvmlData(warnings=(f"no NVML samples ({PATTERN}) in {run_dir}",))
    files: list[NvmlFile] = []
    gpus: list[GpuSamples] = []
    warnings: list[str] = []
    for p in paths:
        nf, g = read_nvml_file(p)
        files.append(nf)
        gpus.extend(g)
        warnings.extend(f"{nf.node}: {w}" for w in nf.warnings)
        if nf.bad_lines:
            warnings.append(f"{p.name}: {nf.bad_lines} unreadable line(s) skipped")
        if nf.truncated:
            warnings.append(f"{p.name}: last line cut short (run killed while writing?), ignored")
    return NvmlData(files=tuple(files), gpus=tuple(sorted(gpus, key=_sort_key)), warnings=tuple(warnings),
                    bad_lines=sum(f.bad_lines for f in files))

