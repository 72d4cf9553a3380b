"""``merge(paths) -> MergeResult``: every rank's trace, NVML counters and dpprof's attribution in one Chrome
trace that Perfetto's JSON importer loads as one timeline.

1. The cross-rank analysis runs on every rank (``dpprof.analyze.pipeline.attribute``; ``--ranks`` selects
   what is written, not what is analysed, so waits and clocks stay those of ``analysis.json``).
2. Clocks: the output's ``ts`` is µs on the reference rank's trace clock (the lowest rank, whose events keep
   their ``ts``); rank r's events move by ``(baseTimeNanoseconds_r - baseTimeNanoseconds_ref) / 1000 +
   offset_us_r``, ``offset_us_r`` being the analysis's ``clock_offsets`` (collective ends, within causal
   bounds), exactly as the analysis compares ranks. The trace's ``metadata`` says so, per rank.
3. One rank at a time, twice: a first pass finds its threads and span (``scan``), a second streams its kept
   events into the output (``rewrite``), then its attribution, NVML counters and names (``tracks``). Only
   one rank's thread table and one chunk of events are in memory; the output is written as it goes (gzip
   when the name ends in ``.gz``, atomically: a failed merge leaves no half file).
"""

from __future__ import annotations

import contextlib
import gzip
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import msgspec

from dpprof.analyze.model import Analysis, RankInfo
from dpprof.analyze.run import Run, load_run
from dpprof.analyze.segments import Segments
from dpprof.errors import DpprofError
from dpprof.fileio import atomic_open, is_stdout, output_target
from dpprof.perfetto import layout, tracks
from dpprof.perfetto.layout import Selection
from dpprof.perfetto.rewrite import RankPlan, rewrite, to_ns
from dpprof.perfetto.scan import Filter, scan, step_windows
from dpprof.rundir import resolve_inputs
from dpprof.trace.nvml_merge import nodes_for_ranks
from dpprof.trace.nvml_samples import NvmlData
from dpprof.version import __version__

#: Trace timestamps below this (µs) without baseTimeNanoseconds are not on the wall clock: NVML cannot be placed.
_ABSOLUTE_US = 1e14
#: What the merged trace says it is, first (``layout.head``) and in ``metadata.dpprof``.
_MARKER = f"dpprof {__version__} perfetto: every rank on one clock, NVML counters and dpprof's attribution as tracks"
#: gzip level of the output: level 1 of python-isal (or zlib) keeps the merge I/O-bound, about 10x smaller.
GZIP_LEVEL = 1


@dataclass(frozen=True)
class MergeResult:
    """What ``merge`` wrote: the file, its size (compressed and as JSON), events by kind, clock per rank."""

    output: Path
    ranks: tuple[int, ...]
    gpus: int
    json_bytes: int
    file_bytes: int
    counts: dict[str, int]
    clocks: tuple[str, ...]
    notes: tuple[str, ...] = ()

    @property
    def too_big(self) -> bool:
        return self.json_bytes > layout.WARN_JSON_BYTES


@dataclass
class _Sink:
    """The traceEvents array, written as it comes (texts of one or more comma-separated events, one text per
    line), with the bytes counted."""

    fh: IO[bytes]
    json_bytes: int = 0
    texts: int = 0
    counts: dict[str, int] = field(default_factory=dict)

    def write(self, data: bytes) -> None:
        self.fh.write(data)
        self.json_bytes += len(data)

    def add(self, lines: list[bytes], kind: str | None = None) -> None:
        if lines:
            self.write((b",\n" if self.texts else b"") + b",\n".join(lines))
            self.texts += len(lines)
            if kind is not None:  # texts of one event each
                self.counts[kind] = self.counts.get(kind, 0) + len(lines)


@contextlib.contextmanager
def _open(out: Path, within: Path | None) -> Iterator[IO[bytes]]:
    with atomic_open(out, "wb", compress=False, within=within) as raw:
        if is_stdout(out) or not out.name.endswith(".gz"):  # standard output: the JSON as it is
            yield raw
            return
        try:
            from isal import igzip

            gz: Any = igzip.IGzipFile(filename="", mode="wb", compresslevel=GZIP_LEVEL, fileobj=raw, mtime=0)
        except ImportError:  # pragma: no cover - isal is a dependency; zlib gives the same file, slower
            gz = gzip.GzipFile(filename="", mode="wb", compresslevel=GZIP_LEVEL, fileobj=raw, mtime=0)
        with gz:
            yield gz


def _select(analysis: Analysis, selection: Selection) -> list[RankInfo]:
    present = [r.rank for r in analysis.ranks]
    if selection.ranks is None:
        return list(analysis.ranks)
    missing = sorted(set(selection.ranks) - set(present))
    if missing:
        raise DpprofError(f"--ranks: no trace for rank(s) {layout.spell(missing)} (ranks present: "
                          f"{layout.spell(present)})")
    return [r for r in analysis.ranks if r.rank in set(selection.ranks)]


def _check_steps(analysis: Analysis, selection: Selection) -> list[str]:
    """DpprofError when none of the selected steps was profiled; a note naming those that were not."""
    if selection.steps is None:
        return []
    present = sorted({s.step for s in analysis.steps})
    if not set(selection.steps) & set(present):
        raise DpprofError(f"--steps: none of steps {layout.spell(selection.steps)} was profiled (steps present: "
                          f"{layout.spell(present) or 'none'})")
    missing = sorted(set(selection.steps) - set(present))
    if not missing:
        return []
    kept = sorted(set(selection.steps) & set(present))
    return [f"--steps: step{'s' if len(missing) > 1 else ''} {layout.spell(missing)} "
            f"{'were' if len(missing) > 1 else 'was'} not profiled (steps present: {layout.spell(present)}): "
            f"wrote step{'s' if len(kept) > 1 else ''} {layout.spell(kept)}"]


@dataclass
class _Context:
    """What every rank's part of the merge needs: the analysis, the clocks, the ids, NVML."""

    analysis: Analysis
    segments: Mapping[int, Segments]
    selection: Selection
    ref: int
    base_ref: int
    origin_ns: int  # subtracted from every merged-clock ns (0 unless the timestamps are too large for a double)
    stride: int
    nvml: NvmlData
    node_of: Callable[[int | None], str | None] | None
    notes: list[str]
    max_inflate: int | None = None


def merge(paths: Sequence[str | Path], *, out: Path | None = None, selection: Selection | None = None,
          jobs: int | None = None, max_inflate: int | None = None) -> MergeResult:
    """Write the merged trace of a run directory or trace files (module docstring); DpprofError on bad input.

    ``out``: the file to write (``-``: the JSON, uncompressed, to standard output); default
    ``RUN/perfetto/<selection>.json.gz``, written inside the run without following a link out of it (a
    ``perfetto/`` that links elsewhere is refused). ``max_inflate``: most bytes a gzip trace may inflate to.
    """
    selection = selection or Selection()
    inputs = resolve_inputs(paths)
    within: Path | None = None
    if out is None:
        target = layout.default_output(inputs.run_dir, inputs.traces, selection)
        within = target.parent.parent  # the run directory (or the traces' folder): perfetto/ is made inside it
    else:
        target = Path(out)
    if not is_stdout(target):
        layout.check_output(target, inputs.run_dir, inputs.traces)
        output_target(target, within)  # a link out of the run, a device, a FIFO or an input: refused before the work
    run = load_run(paths, jobs=jobs, segments=True, max_inflate=max_inflate)
    analysis, segments = run.analysis, run.segments or {}
    chosen = _select(analysis, selection)
    step_notes = _check_steps(analysis, selection)
    if len(chosen) > layout.MAX_RANKS:
        raise DpprofError(f"{len(chosen)} ranks: at most {layout.MAX_RANKS} fit in one merged trace (--ranks)")
    ref = next((o.rank for o in analysis.clock_offsets if o.source == "reference"), analysis.ranks[0].rank)
    nvml, node_of = _nvml(run)
    ctx = _Context(analysis=analysis, segments=segments, selection=selection, ref=ref,
                   base_ref=next(r.base_time_ns or 0 for r in analysis.ranks if r.rank == ref),
                   origin_ns=_origin(analysis, ref),
                   stride=10 ** len(str(max(len(analysis.ranks) - 1, 0))), nvml=nvml, node_of=node_of,
                   notes=[f"NVML: {w}" for w in nvml.warnings] if inputs.run_dir is not None else [],
                   max_inflate=max_inflate)
    ctx.notes += [w.message for w in analysis.warnings if w.code == "unreadable_trace"]
    ctx.notes[:0] = step_notes
    info: list[dict[str, Any]] = []
    clocks = [] if ref in {r.rank for r in chosen} else [f"rank {ref} (not written): the reference clock"]
    with _open(target, within) as fh:
        sink = _Sink(fh)
        sink.write(layout.head(_MARKER))
        for index, rinfo in enumerate(chosen):
            info.append(_write_rank(ctx, sink, index, rinfo))
            clocks.append(_clock_text(rinfo.rank, info[-1]["shift_ns"], ref, info[-1]))
        sink.write(b'\n],\n"displayTimeUnit": "ms",\n"metadata": ')
        sink.write(msgspec.json.encode(_metadata(ctx, info)) + b"}\n")
    return MergeResult(output=target, ranks=tuple(r.rank for r in chosen),
                       gpus=sum(len(x["gpu_pids"]) for x in info), json_bytes=sink.json_bytes,
                       file_bytes=sink.json_bytes if is_stdout(target) else target.stat().st_size,
                       counts=dict(sink.counts), clocks=tuple(clocks),
                       notes=tuple(ctx.notes))


def _write_rank(ctx: _Context, sink: _Sink, index: int, rinfo: RankInfo) -> dict[str, Any]:
    """One rank: its events (two passes), its attribution, its NVML counters, its names; returns its metadata."""
    r, sel = rinfo.rank, ctx.selection
    off = next((o for o in ctx.analysis.clock_offsets if o.rank == r), None)
    off_ns = round(off.offset_us * 1000) if off is not None else 0
    shift = ((rinfo.base_time_ns or 0) - ctx.base_ref) + off_ns  # the alignment
    move = shift - ctx.origin_ns  # what is added to the rank's trace-clock ns
    windows = step_windows(ctx.analysis.steps, r, sel.steps)
    plan = RankPlan(rank=r, index=index, path=Path(rinfo.path), shift_ns=move,
                    ns_trace=any(w.code == "ns_timestamps" and w.rank == r for w in ctx.analysis.warnings),
                    id_slot=[x.rank for x in ctx.analysis.ranks].index(r), id_stride=ctx.stride,
                    flt=Filter(sel.host_ops, sel.kernels, windows), max_inflate=ctx.max_inflate)
    sc = scan(plan.path, plan.flt, plan.max_inflate)
    if sc.unknown_devices:
        shown = ", ".join(map(str, sc.unknown_devices[:3])) + (" ..." if len(sc.unknown_devices) > 3 else "")
        ctx.notes.append(f"rank {r}: GPU activities on device id(s) {shown} left out (no device has such an id; "
                         "the analysis skips them too)")
    done = rewrite(plan, sc, sink.add)
    for kind, n in done.counts.items():
        sink.counts[kind] = sink.counts.get(kind, 0) + n
    if done.skipped:
        ctx.notes.append(f"rank {r}: {done.skipped} events left out: no usable phase or ts, or an X event without "
                         "a name or a usable dur (the Chrome trace format needs them; the analysis skips them too)")
    ctx.notes.extend(done.notes(r))
    wanted = set(sel.steps) if sel.steps is not None else None
    rows = [s for s in ctx.analysis.steps if s.rank == r and (wanted is None or s.step in wanted)]
    for chunk in tracks.attribution_rows(index, rows, ctx.segments.get(r), move):
        sink.add(_encode(chunk), "attribution")
    devices = sorted(set(rinfo.devices) | set(sc.gpus()))
    span = _span(plan, sc, windows)
    node = ctx.node_of(r) if ctx.node_of is not None else None
    if ctx.nvml.samples and span is not None and rinfo.devices:
        if rinfo.base_time_ns is None and (sc.first_ts or 0) < _ABSOLUTE_US:
            ctx.notes.append(f"rank {r}: no baseTimeNanoseconds and relative timestamps: NVML left out")
        else:
            lines, _, more = tracks.nvml_lines(ctx.nvml, node, index, list(rinfo.devices),
                                               ctx.base_ref - off_ns + ctx.origin_ns,
                                               *span)
            sink.add(lines, "nvml")
            ctx.notes.extend(f"rank {r}: {m}" for m in more)
    sink.add(_encode(tracks.process_rows(index, r, devices) + done.metadata()), "metadata")
    return {"rank": r, "trace": rinfo.path, "base_time_ns": rinfo.base_time_ns, "host_pid": layout.host_pid(index),
            "gpu_pids": {str(d): layout.gpu_pid(index, d) for d in devices}, "shift_ns": shift,
            "shift_us": shift / 1000, "offset_us": off.offset_us if off is not None else 0.0,
            "residual_us": off.residual_us if off is not None else None,
            "max_residual_us": off.max_residual_us if off is not None else None,
            "offset_source": off.source if off is not None else "none (one rank)", "nvml_node": node}


def _encode(rows: list[dict[str, Any]]) -> list[bytes]:
    return [msgspec.json.encode(r) for r in rows]


def _nvml(run: Run) -> tuple[NvmlData, Any]:
    nvml = run.nvml if run.nvml is not None else NvmlData()
    return nvml, (nodes_for_ranks(run.run_dir, nvml.nodes) if run.run_dir is not None and nvml.samples else None)


def _span(plan: RankPlan, sc: Any, windows: Sequence[tuple[float, float]] | None) -> tuple[int, int] | None:
    """The rank's kept time span on the merged clock, ns."""
    if windows is not None:
        if not windows:
            return None
        return to_ns(windows[0][0]) + plan.shift_ns, to_ns(windows[-1][1]) + plan.shift_ns
    if sc.first_ts is None or sc.last_end is None:
        return None
    conv = round if plan.ns_trace else to_ns
    return conv(sc.first_ts) + plan.shift_ns, conv(sc.last_end) + plan.shift_ns


#: Above this (µs) a double no longer holds a timestamp to the ns (2**53 ns): traces with such timestamps (epoch µs
#: or ns, Kineto's steady clock after ~3 months of uptime) are written from a whole second before the first step.
_EXACT_US = 8e12


def _origin(analysis: Analysis, ref: int) -> int:
    start = next((r.steps_start_us for r in analysis.ranks if r.rank == ref), None)
    if start is None or abs(start) < _EXACT_US:
        return 0
    return to_ns(start) // 10**9 * 10**9


def _clock_text(rank: int, shift_ns: int, ref: int, info: dict[str, Any]) -> str:
    if rank == ref:
        return f"rank {rank}: reference clock (its ts unchanged)"
    res = f", residual {info['residual_us']:.3f} µs" if info["residual_us"] is not None else ""
    return f"rank {rank}: moved {shift_ns / 1000:+,.3f} µs ({info['offset_source']}{res})"


def _clock_metadata(ctx: _Context, ranks: list[dict[str, Any]]) -> str:
    """The alignment in words, saying per written rank what its offset came from (``offset_source``)."""
    by_source: dict[str, list[int]] = {}
    for x in ranks:
        by_source.setdefault(x["offset_source"], []).append(x["rank"])
    used = "; ".join(f"rank{'s' if len(rs) > 1 else ''} {layout.spell(rs)}: {src}" for src, rs in by_source.items())
    glossary = []
    if any(src.startswith("collective ends") for src in by_source):
        glossary.append("'collective ends': the median difference of matched collectives' ends, within causal bounds.")
    if any(src.startswith("baseTimeNanoseconds") for src in by_source):
        glossary.append("'baseTimeNanoseconds': the trace clocks as written, not aligned on collectives, as close as "
                        "the hosts' clocks are.")
    return " ".join([f"ts: µs on rank {ctx.ref}'s trace clock (baseTimeNanoseconds {ctx.base_ref}) minus "
                     "clock_origin_us; rank r's events are moved by (its baseTimeNanoseconds - the reference's) / 1000 "
                     "+ offset_us (shift_us), offset_us from the cross-rank analysis (analysis.json clock_offsets), "
                     f"the same alignment the analysis compares ranks on. offset_us per rank: {used}.", *glossary])


def _metadata(ctx: _Context, ranks: list[dict[str, Any]]) -> dict[str, Any]:
    sel = ctx.selection
    return {
        "dpprof": _MARKER,
        "clock": _clock_metadata(ctx, ranks),
        "clock_origin_us": ctx.origin_ns / 1000,
        "clock_reference_rank": ctx.ref,
        "clock_base_time_ns": ctx.base_ref,
        "ids": f"pid = (i + 1) * {layout.PID_STRIDE} + slot (slot 0: the rank's host, 1 + g: GPU g; i: the rank's "
               f"position here); tid = pid * {layout.TID_STRIDE} + k (k 0: dpprof attribution; k {layout.SHARED_K}: "
               f"one track shared by the threads of a process beyond its first {layout.SHARED_K - 1:,}); flow/async "
               f"ids, External id and correlation = id * {ctx.stride} + the rank's position among the analysed ranks",
        "ranks": [{k: v for k, v in x.items() if k != "shift_ns"} for x in ranks],
        "selection": {"ranks": list(sel.ranks) if sel.ranks is not None else "all",
                      "steps": list(sel.steps) if sel.steps is not None else "all",
                      "host_ops": sel.host_ops, "kernels": sel.kernels},
        "strategy": ctx.analysis.strategy,
        "analysis_schema": ctx.analysis.schema,
    }
