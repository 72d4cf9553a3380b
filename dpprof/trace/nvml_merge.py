"""Merge a run's NVML samples into copies of its rank traces, as Chrome ``ph:"C"`` counter events.

For each trace in ``RUN/traces/`` a copy with the same name is written to ``RUN/merged/``. The copy is
the original text with counter events inserted at the start of ``traceEvents``: nothing else is
re-serialised, so torch's own formatting (``"rank": 0`` on its own line, which HTA finds with the regex
``"rank":\\s+(\\d+)``) and every other byte stay as they were.

Counters go on the pid of the GPU they describe (Kineto's ``GPU N`` process, N = CUDA index, the
``device`` of the trace's kernels), one event per sample and field, at ``(t_ns - baseTimeNanoseconds) /
1000`` µs computed in integers and written with 3 decimals like torch. Only GPUs with activity in the
trace get counters (Kineto lists 16 GPU processes on any machine), and only samples inside the trace's
time span (first to last non-metadata event). Perfetto shows one track per field, named
``"<event name> <arg key>"``.

Which node's NVML file (``nvml.<node>.jsonl``) belongs to a rank, first rule that answers:
1. ``nodes/<node>.json`` lists the rank in ``"ranks"`` (its ``"nvml_file"`` names the file, else
   ``nvml.<node>.jsonl``) — what ``dpprof profile`` writes;
2. the run has one NVML file (single-node runs): every rank;
3. the manifest's ``nodes`` (``node_rank``, ``file`` = ``nodes/<node>.json``) with ``config.nproc``
   processes per node: torchrun numbers ranks node by node, so node rank = rank // nproc.
A rank no rule places gets a copy without counters and a warning.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from dpprof.errors import DpprofError, TraceError
from dpprof.fileio import write_bytes_atomic
from dpprof.manifest import EMPTY, read_manifest
from dpprof.rundir import (
    MANIFEST,
    MERGED_DIR,
    NODES_DIR,
    TRACES_DIR,
    rank_from_name,
    read_checked,
    read_json,
    resolve_inputs,
    write_json,
)
from dpprof.schema import NODE as NODE_SPEC
from dpprof.trace.decode import Buffer, read_bytes
from dpprof.trace.metadata import base_time_ok
from dpprof.trace.nvml_samples import GpuSamples, NvmlData, node_from_name, read_nvml

#: (sample field, counter event name): one Perfetto track per field. utilization.gpu is labelled with
#: what it measures: the share of NVML's sample period in which any kernel ran, not SM occupancy.
COUNTERS: tuple[tuple[str, str], ...] = (
    ("util_gpu_pct", "NVML GPU utilization % (time any kernel ran)"),
    ("util_mem_pct", "NVML memory utilization % (time memory was read or written)"),
    ("mem_used_bytes", "NVML memory used"),
    ("power_mw", "NVML power"),
    ("sm_clock_mhz", "NVML SM clock"),
    ("pcie_tx_kbps", "NVML PCIe TX"),
    ("pcie_rx_kbps", "NVML PCIe RX"),
)
GPU_CATEGORIES = frozenset({"kernel", "gpu_memcpy", "gpu_memset", "Kernel", "Memcpy", "Memset"})
_TRACE_EVENTS = re.compile(rb'"traceEvents"\s*:\s*\[')
#: Timestamps above this many µs are absolute (epoch) rather than relative to baseTimeNanoseconds.
_ABSOLUTE_US = 10**14
_INT64 = 2**63


@dataclass(frozen=True)
class MergeResult:
    """What merging one rank trace did: where it wrote, whose samples (node), which GPUs, how many events."""

    source: Path
    output: Path
    rank: int | None
    node: str | None
    devices: tuple[int, ...]
    counters: int
    samples_in_range: int
    samples_out_of_range: int
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class TraceSpan:
    """What the merge needs from a trace: its clock, span (ns relative to base), GPUs and rank."""

    base_ns: int
    start_ns: int
    end_ns: int
    devices: tuple[int, ...]
    rank: int | None
    events: int
    #: Why NVML samples cannot be placed on this trace's clock (None: they can); the merge copies it without them.
    no_clock: str | None = None
    warnings: tuple[str, ...] = ()


#: A timestamp or duration beyond this (µs, ~3 million years) is no clock's: the event is not used for the span.
_ABSURD_US = 1e17

def _decode(raw: Buffer, path: Path) -> dict[str, Any]:
    try:
        obj = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise TraceError(f"{path}: not valid JSON ({exc})") from None
    except RecursionError:
        raise TraceError(f"{path}: JSON nested too deeply to read (recursion limit)") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("traceEvents"), list):
        raise TraceError(f"{path}: not a Chrome/Kineto trace (no traceEvents list)")
    return obj


def _int(value: Any) -> int | None:
    """An int64 (a JSON integer beyond 64 bits is not one: numpy's int64 arithmetic would overflow on it)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and -_INT64 <= value < _INT64 else None


def scan_trace(obj: Mapping[str, Any], path: Path) -> TraceSpan:
    """Time span, base time, active GPUs and rank of a decoded trace."""
    start, end = None, None
    devices: set[int] = set()
    for ev in obj["traceEvents"]:
        if not isinstance(ev, dict) or ev.get("ph") == "M":
            continue
        ts = ev.get("ts")
        if isinstance(ts, (int, float)) and not isinstance(ts, bool) and abs(ts) < _ABSURD_US:
            dur = ev.get("dur")
            t_end = ts + dur if isinstance(dur, (int, float)) and not isinstance(dur, bool) and 0 < dur < _ABSURD_US \
                else ts
            start = ts if start is None or ts < start else start
            end = t_end if end is None or t_end > end else end
        cat = ev.get("cat")
        if isinstance(cat, str) and cat in GPU_CATEGORIES:
            args = ev.get("args")
            dev = _int(args.get("device")) if isinstance(args, dict) else None
            dev = dev if dev is not None else _int(ev.get("pid"))
            if dev is not None:
                devices.add(dev)
    if start is None or end is None:
        raise TraceError(f"{path}: no timed events")
    warnings: list[str] = []
    raw_base = obj.get("baseTimeNanoseconds")
    base = raw_base if base_time_ok(raw_base) else None  # the loader's rule (dpprof.trace.metadata)
    if base is None and raw_base is not None:
        warnings.append(f"{path.name}: baseTimeNanoseconds is not an integer of epoch nanoseconds (1970 to 2116): "
                        "ignored")
    no_clock = None
    if base is None:
        if start < _ABSOLUTE_US:
            no_clock = "no usable baseTimeNanoseconds and relative timestamps: cannot place NVML samples"
        base = 0  # older traces: absolute µs since the epoch
    info = obj.get("distributedInfo")
    rank = _int(info.get("rank")) if isinstance(info, dict) else None
    rank = rank if rank is not None else rank_from_name(path)
    return TraceSpan(base_ns=base, start_ns=round(start * 1000), end_ns=round(end * 1000),
                     devices=tuple(sorted(devices)), rank=rank, events=len(obj["traceEvents"]), no_clock=no_clock,
                     warnings=tuple(warnings))


def format_us(rel_ns: int) -> str:
    """Integer ns as µs with exactly 3 decimals (torch's format), exact for any int64."""
    sign = "-" if rel_ns < 0 else ""
    q, r = divmod(abs(rel_ns), 1000)
    return f"{sign}{q}.{r:03d}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def counter_lines(gpu: GpuSamples, pid: int, span: TraceSpan) -> tuple[list[bytes], int, int]:
    """Counter events (one JSON text each) for the samples of ``gpu`` inside ``span``; in/out counts."""
    # The window in absolute ns, computed and clamped in Python ints: sample times are int64 and any sum with a
    # hostile base or span would wrap silently (or raise) in numpy.
    lo, hi = max(span.base_ns + span.start_ns, -_INT64), min(span.base_ns + span.end_ns, _INT64 - 1)
    inside = (gpu.t_ns >= lo) & (gpu.t_ns <= hi) if lo <= hi else np.zeros(len(gpu), dtype=bool)
    out: list[bytes] = []
    for k in np.flatnonzero(inside):
        ts = format_us(int(gpu.t_ns[k]) - span.base_ns)
        for key, name in COUNTERS:
            value = gpu.fields[key][k]
            if np.isnan(value):  # a field NVML could not read: no point to draw
                continue
            out.append(f'{{"ph": "C", "cat": "nvml", "name": "{name}", "pid": {pid}, "tid": 0, '
                       f'"ts": {ts}, "args": {{"{key}": {_number(value)}}}}}'.encode())
    n_in = int(inside.sum())
    return out, n_in, len(gpu) - n_in


def insert_events(raw: Buffer, lines: list[bytes], path: Path) -> Buffer:
    """``raw`` with ``lines`` inserted as the first elements of its top-level traceEvents array."""
    if not lines:
        return raw
    m = _TRACE_EVENTS.search(raw)
    if m is None:
        raise TraceError(f"{path}: traceEvents array not found in the text")
    rest = raw[m.end():]
    empty = rest.lstrip()[:1] == b"]"
    body = b"\n  " + b",\n  ".join(lines) + (b"" if empty else b",")
    return raw[:m.end()] + body + rest


def _node_of_file(name: Any) -> str | None:
    """``nvml.<node>.jsonl`` (or a path ending in it) -> ``<node>``."""
    if not isinstance(name, str):
        return None
    base = Path(name).name
    return node_from_name(Path(base)) if base.endswith(".jsonl") else None


def nodes_for_ranks(run_dir: Path, nvml_nodes: tuple[str, ...], notes: list[str] | None = None
                    ) -> Callable[[int | None], str | None]:
    """rank -> node key of its NVML file, by the rules in the module docstring.

    ``notes``: receives what was wrong in the node files (fields left out, a file too large) and a manifest ignored
    for its size."""
    by_rank: dict[int, str] = {}
    notes = [] if notes is None else notes
    nodes_dir = run_dir / NODES_DIR
    if nodes_dir.is_dir() and not nodes_dir.is_symlink():
        for f in sorted(nodes_dir.glob("*.json")):
            node, problems = read_checked(f, NODE_SPEC)
            notes.extend(f"{NODES_DIR}/{p}" if p.startswith(f.name) else p for p in problems)
            if node is not None and isinstance(node.get("ranks"), list):
                key = _node_of_file(node.get("nvml_file")) or str(node.get("node_key") or f.stem)
                by_rank.update({r: key for r in node["ranks"] if _int(r) is not None})
    only = nvml_nodes[0] if len(nvml_nodes) == 1 else None
    manifest, problems = read_manifest(run_dir)
    if manifest is None:
        notes.extend(problems)  # a manifest ignored (too large): its nodes place no rank
    manifest = manifest or EMPTY
    nproc = manifest.config.nproc
    # (first rank, ranks, node key) per node: ranges, not one entry per rank (a manifest may say nproc 1e9).
    blocks = [(n.node_rank * nproc, nproc, Path(n.file).stem if n.file else str(n.host))
              for n in manifest.nodes or [] if n.node_rank is not None and nproc]

    def node_of(rank: int | None) -> str | None:
        if rank is not None and rank in by_rank:
            return by_rank[rank]
        if only is not None:
            return only
        return next((key for first, n, key in blocks if rank is not None and first <= rank < first + n), None)

    return node_of


def merge_trace(source: Path, output: Path, nvml: NvmlData, node_of: Callable[[int | None], str | None],
                max_inflate: int | None = None, within: Path | None = None) -> MergeResult:
    """Write ``output``: ``source`` plus counters from the samples of the trace's GPUs on the node
    ``node_of(rank)`` names (rank from the trace's distributedInfo, else its file name).

    ``within``: the run directory ``output`` must stay inside (no link followed below it)."""
    raw = read_bytes(source, max_inflate)
    obj = _decode(raw, source)
    span = scan_trace(obj, source)
    node = node_of(span.rank)
    warnings: list[str] = list(span.warnings)
    lines: list[bytes] = []
    n_in = n_out = 0
    if span.no_clock is not None:
        warnings.append(f"{source.name}: {span.no_clock}; copied without NVML")
    elif node is None:
        warnings.append(f"{source.name}: rank {span.rank}: no rule says which node ran it; copied without NVML")
    elif not span.devices:
        warnings.append(f"{source.name}: no GPU activity in the trace; copied without NVML")
    else:
        for dev in span.devices:
            gpu = nvml.gpu(node, dev)
            if gpu is None:
                warnings.append(f"{source.name}: no NVML samples for {node}:{dev}")
                continue
            more, i, o = counter_lines(gpu, dev, span)
            lines += more
            n_in, n_out = n_in + i, n_out + o
        if n_in == 0 and not warnings:
            warnings.append(f"{source.name}: no NVML sample inside the trace's time span "
                            f"(profiled window shorter than the NVML period?)")
    merged = insert_events(raw, lines, source)
    if lines:  # the insertion point was found by text: check that exactly these events were added
        check = _decode(merged, output)
        if len(check["traceEvents"]) != span.events + len(lines):
            raise TraceError(f"{source}: inserting NVML counters did not give a valid trace")
    write_bytes_atomic(output, merged, within=within)
    return MergeResult(source=source, output=output, rank=span.rank, node=node, devices=span.devices,
                       counters=len(lines), samples_in_range=n_in, samples_out_of_range=n_out,
                       warnings=tuple(warnings))


def merge_run_detailed(run_dir: Path, max_inflate: int | None = None) -> tuple[list[MergeResult], NvmlData]:
    """Merge every rank trace of ``run_dir``; DpprofError when there are no traces or no samples.

    ``RUN/merged/`` is created inside the run: a ``merged`` that is a link (to anywhere) is refused.
    """
    run_dir = Path(run_dir)
    traces_dir = run_dir / TRACES_DIR
    try:
        traces = list(resolve_inputs([run_dir]).traces) if traces_dir.is_dir() else []
    except DpprofError as exc:
        if "no trace files" not in str(exc):
            raise
        traces = []
    if not traces:
        raise DpprofError(f"{run_dir}: no rank traces in {traces_dir}")
    nvml = read_nvml(run_dir)
    if nvml.samples == 0:
        why = nvml.warnings[0] if nvml.warnings else "the NVML files hold no samples"
        raise DpprofError(f"{run_dir}: no NVML samples to merge ({why})")
    notes: list[str] = []
    node_of = nodes_for_ranks(run_dir, nvml.nodes, notes)
    if notes:  # printed with the NVML warnings
        nvml = replace(nvml, warnings=(*nvml.warnings, *notes))
    results = [merge_trace(path, run_dir / MERGED_DIR / path.name, nvml, node_of, max_inflate, within=run_dir)
               for path in traces]
    _list_in_manifest(run_dir)
    return results, nvml


def _list_in_manifest(run_dir: Path) -> None:
    """Record the merged files in ``manifest.json``'s ``files.merged`` (when there is a manifest).

    The manifest is read as it is, not type-checked: the rewrite must not drop the fields it does not touch.
    """
    manifest = read_json(run_dir / MANIFEST)
    if not isinstance(manifest, dict):
        return
    merged = sorted(str(p.relative_to(run_dir)) for p in (run_dir / MERGED_DIR).glob("*.pt.trace.json*")
                    if not p.name.startswith("."))
    files = manifest.get("files")
    files = files if isinstance(files, dict) else {}
    manifest["files"] = {**files, "merged": merged}
    write_json(run_dir / MANIFEST, manifest, within=run_dir, replace_input=True)  # a deliberate rewrite


def merge_run(run_dir: Path, max_inflate: int | None = None) -> list[Path]:
    """Write ``RUN/merged/<trace name>`` for every rank trace of ``run_dir``; the paths written."""
    results, _ = merge_run_detailed(run_dir, max_inflate)
    return [r.output for r in results]
