"""``dpprof analyze --crosscheck hta``: dpprof's per-rank GPU figures beside HTA's, on the same traces.

HTA (Holistic Trace Analysis, PyPI ``holistictraceanalysis``, the ``interop`` extra) reads every ``*.json``/``*.gz``
in a folder (a ``manifest.json`` beside the traces breaks it) and finds a rank from the file's text, so each trace
is given to it alone, in a temporary folder. What is compared (HTA's definitions, from its code:
hta/analyzers/breakdown_analysis.py ``get_temporal_breakdown``, hta/utils/utils.py ``is_compute_kernel``,
hta/common/trace_parser.py ``round_down_time_stamps``):

* HTA ``compute_time(us)``: the union of its "computation" kernels (names not matching ``^nccl.*Kernel``, Memcpy,
  Memset, Sync) over the GPU activities launched up to the end of the last ProfilerStep; dpprof's figure is the
  union of compute kernels in its profiled steps (``compute``, plus the kernels DP's phases launched, which
  dpprof counts as ``dp_*``).
* HTA rounds every event's start up and end down to whole µs unless ``HTA_DISABLE_NS_ROUNDING=1``: the check
  runs it without rounding, so the figures agree to well under 1 %; with its default rounding HTA's compute is
  lower by up to 2 µs per kernel.
* HTA ``kernel_time(us)`` is a span (last end − first start), not a sum: shown beside dpprof's busy time.
* HTA cannot break a CPU-only trace down (its temporal breakdown needs GPU kernels): such ranks are said so.
* HTA merges every GPU of a trace into one timeline (``get_temporal_breakdown``'s ``idle_time_per_rank`` takes
  every row with a stream, of whichever device, and merges the computation kernels' intervals), while
  dpprof attributes each GPU apart: for a rank with several GPUs (DataParallel) the sum of dpprof's per-GPU
  figures would be up to N times HTA's. Such a rank is compared on the union over its GPUs, computed from
  dpprof's own reading of the trace (``dpprof.trace.load`` columns, ``dpprof.trace.classify`` classes, clipped
  to the profiled steps of the analysis); its per-GPU figures are listed below the table.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dpprof.analyze.model import Analysis, StepBreakdown
from dpprof.errors import DpprofError
from dpprof.vocabulary import DP_PHASES

INSTALL = "pip install 'dpprof[interop]' (holistictraceanalysis)"


@dataclass(frozen=True)
class CrossRow:
    """One rank: HTA's figures and dpprof's (µs over the profiled steps), or why HTA gave none."""

    rank: int
    path: str
    hta_compute_us: float | None
    dpprof_compute_us: float
    hta_kernel_span_us: float | None
    dpprof_busy_us: float
    hta_idle_us: float | None
    note: str = ""
    #: The rank's GPUs and dpprof's compute on each (its attribution: ``compute`` + DP-phase GPU time), µs. With
    #: more than one GPU, ``dpprof_compute_us`` and ``dpprof_busy_us`` are unions over them (HTA's view).
    gpus: tuple[int, ...] = ()
    per_gpu_compute_us: tuple[float, ...] = ()

    @property
    def hta_busy_us(self) -> float | None:
        """HTA's kernel span less its idle time: the union of the GPU activities, as dpprof's busy time."""
        if self.hta_kernel_span_us is None or self.hta_idle_us is None:
            return None
        return self.hta_kernel_span_us - self.hta_idle_us

    @property
    def diff_pct(self) -> float | None:
        if self.hta_compute_us is None or self.hta_compute_us <= 0:
            return None
        return 100.0 * (self.dpprof_compute_us - self.hta_compute_us) / self.hta_compute_us


def hta_breakdown(trace: Path, *, ns_rounding: bool = False) -> dict[str, float]:
    """HTA's temporal breakdown of one trace (its one row), read with the trace alone in a temporary folder.

    ``ns_rounding=False`` sets ``HTA_DISABLE_NS_ROUNDING=1`` for the call (restored after); True leaves HTA's
    default rounding of every event to whole µs.
    """
    from hta.trace_analysis import TraceAnalysis

    with tempfile.TemporaryDirectory(prefix="dpprof-hta-") as tmp:
        alone = Path(tmp) / "trace"
        alone.mkdir()
        shutil.copy(trace, alone / trace.name)
        old = os.environ.get("HTA_DISABLE_NS_ROUNDING")
        if ns_rounding:
            os.environ.pop("HTA_DISABLE_NS_ROUNDING", None)
        else:
            os.environ["HTA_DISABLE_NS_ROUNDING"] = "1"
        try:  # HTA logs its parsing to the console: kept off dpprof's output
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                    contextlib.redirect_stderr(io.StringIO()):
                warnings.simplefilter("ignore")
                loggers = [logging.getLogger(n) for n in ("hta", "")]
                levels = [lg.level for lg in loggers]
                for lg in loggers:
                    lg.setLevel(logging.ERROR)
                try:
                    df = TraceAnalysis(trace_dir=str(alone), include_last_profiler_step=True).get_temporal_breakdown(
                        visualize=False)
                finally:
                    for lg, level in zip(loggers, levels, strict=True):
                        lg.setLevel(level)
        finally:
            if old is None:
                os.environ.pop("HTA_DISABLE_NS_ROUNDING", None)
            else:
                os.environ["HTA_DISABLE_NS_ROUNDING"] = old
    return {str(k): float(v) for k, v in df.iloc[0].to_dict().items()}


def union_over_gpus(path: Path, steps: Sequence[StepBreakdown], max_inflate: int | None = None
                    ) -> tuple[float, float]:
    """(compute, busy) µs of one trace as HTA counts them: unions over all of ``steps``' GPUs at once, clipped to
    the steps (``StepBreakdown.start_us`` + ``duration_us``, on the trace's clock).

    compute: kernels dpprof's classification table names ``compute`` (``classify.GPU_RULES``; a kernel no rule
    names is compute, as in the attribution); busy: every kernel, copy and memset (``StepBreakdown.busy_us``'s
    definition, over the GPUs together). Raises TraceError when the trace cannot be read again.
    """
    from dpprof.trace import classify as C
    from dpprof.trace import intervals as iv
    from dpprof.trace.load import K_KERNEL, is_gpu, load_trace

    rt = load_trace(path, max_inflate)
    gpu_class = np.asarray(C.classify_names(rt.names)[0], dtype=np.int16)[rt.name_id]
    windows = iv.union(np.array([s.start_us for s in steps]), np.array([s.start_us + s.duration_us for s in steps]))
    on_gpus = is_gpu(rt.kind) & np.isin(rt.device, sorted({s.device for s in steps}))
    compute = on_gpus & (rt.kind == K_KERNEL) & ((gpu_class == C.G_COMPUTE) | (gpu_class < 0))

    def covered(rows: np.ndarray) -> float:
        return iv.intersection_length(iv.union(rt.ts[rows], rt.ts[rows] + rt.dur[rows]), windows)

    return covered(compute), covered(on_gpus)


def crosscheck(analysis: Analysis, max_inflate: int | None = None) -> list[CrossRow]:
    """HTA's temporal breakdown of each rank's trace beside dpprof's figures. Raises DpprofError without HTA.

    A rank with one GPU is compared on dpprof's attribution (µs over the profiled steps); one with several on
    ``union_over_gpus`` (``max_inflate``: as for the analysis, for reading its trace again).
    """
    try:
        import hta  # noqa: F401
    except ImportError:
        raise DpprofError(f"--crosscheck hta needs HTA: {INSTALL}") from None
    out = []
    for r in analysis.ranks:
        steps = [s for s in analysis.steps if s.rank == r.rank and s.device >= 0]
        gpus = tuple(sorted({s.device for s in steps}))
        per_gpu = tuple(sum(s.categories_us["compute"] + sum(s.dp_phase_gpu_us.get(p, 0.0) for p in DP_PHASES)
                            for s in steps if s.device == d) for d in gpus)
        ours, busy = sum(per_gpu), sum(s.busy_us for s in steps)
        if not steps:
            out.append(CrossRow(r.rank, r.path, None, ours, None, busy, None,
                                "CPU-only trace: HTA's temporal breakdown needs GPU kernels"))
            continue
        if len(gpus) > 1:  # HTA's one timeline per trace: compared on the union over the rank's GPUs
            try:
                ours, busy = union_over_gpus(Path(r.path), steps, max_inflate)
            except DpprofError as exc:
                out.append(CrossRow(r.rank, r.path, None, ours, None, busy, None,
                                    f"not compared: dpprof could not read the trace again: {exc}", gpus, per_gpu))
                continue
        try:
            hta = hta_breakdown(Path(r.path))
        except Exception as exc:  # HTA's own failure on a trace: said, not fatal
            out.append(CrossRow(r.rank, r.path, None, ours, None, busy, None,
                                f"HTA failed: {type(exc).__name__}: {exc}", gpus, per_gpu))
            continue
        out.append(CrossRow(r.rank, r.path, hta.get("compute_time(us)"), ours, hta.get("kernel_time(us)"), busy,
                            hta.get("idle_time(us)"), "", gpus, per_gpu))
    return out


def lines(rows: Sequence[CrossRow]) -> list[str]:
    """The cross-check as text lines (figures in ms), with what each figure is."""
    out = ["HTA cross-check (each trace alone, HTA_DISABLE_NS_ROUNDING=1; ms over the profiled steps):",
           f"  {'rank':>4}  {'GPUs':>4}  {'HTA compute':>12}  {'dpprof compute':>14}  {'diff':>7}  {'HTA busy':>9}  "
           f"{'dpprof busy':>11}  {'HTA kernel span':>15}"]
    for r in rows:
        head = f"  {r.rank:>4}  {len(r.gpus) or '–':>4}"
        if r.hta_compute_us is None:
            out.append(f"{head}  {'–':>12}  {r.dpprof_compute_us / 1e3:>14.3f}  {'':>7}  {'–':>9}  "
                       f"{r.dpprof_busy_us / 1e3:>11.3f}  {'–':>15}  {r.note}")
            continue
        diff, busy = r.diff_pct, r.hta_busy_us
        out.append(f"{head}  {r.hta_compute_us / 1e3:>12.3f}  {r.dpprof_compute_us / 1e3:>14.3f}  "
                   f"{'' if diff is None else f'{diff:+.2f}%':>7}  {'–' if busy is None else f'{busy / 1e3:.3f}':>9}  "
                   f"{r.dpprof_busy_us / 1e3:>11.3f}  {(r.hta_kernel_span_us or 0) / 1e3:>15.3f}")
    out.append("  compute: the union of compute kernels (HTA: names not NCCL/Memcpy/Memset/Sync) in the profiled "
               "steps; with HTA's default µs rounding its figure is lower by up to 2 µs per kernel. busy: the union "
               "of kernels, copies and memsets (HTA: its kernel time less its idle time). HTA's kernel time is a "
               "span (last end − first start).")
    out.append("  dpprof, a rank with one GPU: its attribution (compute + the GPU time of DP's phases; busy). "
               "A rank with several GPUs: HTA merges them into one timeline, so dpprof's figures there are the "
               "union over the rank's GPUs (kernels as dpprof reads and classifies them, clipped to its steps).")
    for r in rows:
        if len(r.gpus) > 1:
            each = ", ".join(f"GPU{d} {us / 1e3:.3f}" for d, us in zip(r.gpus, r.per_gpu_compute_us, strict=True))
            out.append(f"  rank {r.rank}, per GPU (dpprof's attribution, ms): compute {each}; "
                       f"sum {sum(r.per_gpu_compute_us) / 1e3:.3f} (each GPU's own time: not comparable with HTA's "
                       "union)")
    return out
