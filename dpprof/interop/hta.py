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

from dpprof.analyze.model import Analysis
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


def crosscheck(analysis: Analysis) -> list[CrossRow]:
    """HTA's temporal breakdown of each rank's trace beside dpprof's figures. Raises DpprofError without HTA."""
    try:
        import hta  # noqa: F401
    except ImportError:
        raise DpprofError(f"--crosscheck hta needs HTA: {INSTALL}") from None
    out = []
    for r in analysis.ranks:
        steps = [s for s in analysis.steps if s.rank == r.rank and s.device >= 0]
        ours = sum(s.categories_us["compute"] + sum(s.dp_phase_gpu_us.get(p, 0.0) for p in DP_PHASES) for s in steps)
        busy = sum(s.busy_us for s in steps)
        if not steps:
            out.append(CrossRow(r.rank, r.path, None, ours, None, busy, None,
                                "CPU-only trace: HTA's temporal breakdown needs GPU kernels"))
            continue
        try:
            hta = hta_breakdown(Path(r.path))
        except Exception as exc:  # HTA's own failure on a trace: said, not fatal
            out.append(CrossRow(r.rank, r.path, None, ours, None, busy, None,
                                f"HTA failed: {type(exc).__name__}: {exc}"))
            continue
        out.append(CrossRow(r.rank, r.path, hta.get("compute_time(us)"), ours, hta.get("kernel_time(us)"), busy,
                            hta.get("idle_time(us)")))
    return out


def lines(rows: Sequence[CrossRow]) -> list[str]:
    """The cross-check as text lines (figures in ms), with what the definitions are."""
    out = ["HTA cross-check (each trace alone, HTA_DISABLE_NS_ROUNDING=1; ms over the profiled steps):",
           f"  {'rank':>4}  {'HTA compute':>12}  {'dpprof compute':>14}  {'diff':>7}  {'HTA kernel span':>15}  "
           f"{'dpprof busy':>11}"]
    for r in rows:
        if r.hta_compute_us is None:
            out.append(f"  {r.rank:>4}  {'–':>12}  {r.dpprof_compute_us / 1e3:>14.3f}  {'':>7}  {'–':>15}  "
                       f"{r.dpprof_busy_us / 1e3:>11.3f}  {r.note}")
            continue
        diff = r.diff_pct
        out.append(f"  {r.rank:>4}  {r.hta_compute_us / 1e3:>12.3f}  {r.dpprof_compute_us / 1e3:>14.3f}  "
                   f"{'' if diff is None else f'{diff:+.2f}%':>7}  {(r.hta_kernel_span_us or 0) / 1e3:>15.3f}  "
                   f"{r.dpprof_busy_us / 1e3:>11.3f}")
    out.append("  compute: the union of compute kernels (HTA: names not NCCL/Memcpy/Memset/Sync) in the profiled "
               "steps; with HTA's default µs rounding its figure is lower by up to 2 µs per kernel. HTA's kernel "
               "time is a span (last end − first start), dpprof's busy time a union.")
    return out
