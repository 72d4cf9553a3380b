"""The per-step, per-GPU table on the console (rich), rendered only from an Analysis.

Printed with ``dpprof.term.console``: every string from a trace (paths, backends, warnings) is shown with its
control characters escaped."""

from __future__ import annotations

from collections.abc import Sequence
from typing import IO

from dpprof.analyze.model import CATEGORIES, Analysis, StepBreakdown
from dpprof.vocabulary import DP_MODES, DP_PHASES

#: Short column headers for the categories (same order as CATEGORIES).
SHORT: dict[str, str] = {
    "compute": "compute", "dp_scatter": "scatter", "dp_broadcast": "bcast", "dp_gather": "gather",
    "dp_reduce": "reduce", "comm": "comm", "peer_wait": "wait", "memcpy": "memcpy", "data_loading": "data",
    "host": "host", "idle": "idle",
}


def _ms(us: float | None) -> str:
    return "–" if us is None else f"{us / 1000.0:.2f}"


def where(device: int) -> str:
    """A row's device as the console names it: "host" for a rank without a GPU (device -1), else "GPU<n>"."""
    return "host" if device < 0 else f"GPU{device}"


def _inside(s: StepBreakdown) -> float:
    """The part of ``peer_wait`` spent inside collective kernels (the rest is DP's queued-work waiting)."""
    return max(0.0, s.categories_us.get("peer_wait", 0.0) - s.peer_wait_idle_us)


def _wait_split(s: StepBreakdown) -> str:
    inside, queued = _inside(s), s.peer_wait_idle_us
    if queued <= 0.0005:
        return " (inside collectives)"
    if inside <= 0.0005:
        return " (queued behind another GPU)"
    return f" (inside collectives {_ms(inside)}, queued behind another GPU {_ms(queued)})"


def comm_by_kind(steps: tuple[StepBreakdown, ...]) -> dict[tuple[int, int], dict[str, float]]:
    """Mean exposed communication per step by collective kind (µs), per (rank, device) row that has any."""
    rows: dict[tuple[int, int], list[StepBreakdown]] = {}
    for s in steps:
        rows.setdefault((s.rank, s.device), []).append(s)
    out = {}
    for key, group in sorted(rows.items()):
        kinds = sorted({k for s in group for k in s.comm_by_kind_us})
        means = {k: sum(s.comm_by_kind_us.get(k, 0.0) for s in group) / len(group) for k in kinds}
        if any(v > 0.0005 for v in means.values()):
            out[key] = means
    return out


def _shown_categories(steps: tuple[StepBreakdown, ...]) -> list[str]:
    """Categories with time in some step (the DP ones only when present), in CATEGORIES order."""
    return [c for c in CATEGORIES if any(s.categories_us.get(c, 0.0) > 0.0005 for s in steps)
            or c in ("compute", "host", "idle")]


def render(analysis: Analysis, file: IO[str] | None = None, width: int | None = None,
           notes: Sequence[str] = ()) -> None:
    """Print the header, the per-step table (ms), the per-row details, the warnings and ``notes`` (the run's
    reading notes, ``Run.notes``)."""
    from rich.table import Table
    from rich.text import Text

    from dpprof.term import clean
    from dpprof.term import console as make_console

    console = make_console(file=file, width=width)
    if width is None and not console.is_terminal:
        console.width = 160  # pipes and files: do not squeeze the table into 80 columns
    head = Text.assemble("strategy: ", (clean(analysis.strategy), "bold"))
    if analysis.dp_mode:
        mode = DP_MODES.get(analysis.dp_mode)
        head.append(clean(f" — {mode.short if mode is not None else analysis.dp_mode}"))
    if analysis.output_device is not None:
        head.append(f"; output device GPU{analysis.output_device}")
    console.print(head)
    for r in analysis.ranks:
        devs = ", ".join(where(d) for d in r.devices) or "no GPU (host timeline)"
        extra = f", world size {r.world_size} ({r.backend})" if r.world_size else ""
        console.print(f"rank {r.rank}: {r.path} — {devs}{extra}, {r.events:,} events")
    cats = _shown_categories(analysis.steps)
    table = Table(title="Per step and GPU: where the time went (ms; the categories sum to the step)",
                  show_lines=False, header_style="bold", pad_edge=False)
    for col in ("rank", "GPU", "step", "total", "busy", *(SHORT[c] for c in cats), "comm ovl", "GPU0 only"):
        table.add_column(col, justify="right", no_wrap=True)
    for s in analysis.steps:
        cells = [str(s.rank), "host" if s.device < 0 else str(s.device), str(s.step), _ms(s.duration_us),
                 _ms(s.busy_us)]
        for c in cats:
            v = s.categories_us.get(c, 0.0)
            cells.append(_ms(v) if v > 0.0005 else "·")
        cells += [_ms(s.comm_overlapped_us) if s.comm_overlapped_us else "·", _ms(s.gpu0_only_us)]
        table.add_row(*cells)
    console.print(table)
    if analysis.strategy == "dp" and any(s.dp_phase_gpu_us or s.dp_host_us for s in analysis.steps):
        console.print("Each DP phase per step (ms): GPU work launched in it / host time in it: " + "; ".join(
            f"rank {s.rank} {where(s.device)} step {s.step}: " + ", ".join(
                f"{SHORT[k]} {_ms(s.dp_phase_gpu_us.get(k, 0.0))}/{_ms(s.dp_host_us.get(k, 0.0))}"
                for k in DP_PHASES if k in s.dp_phase_gpu_us or k in s.dp_host_us)
            for s in analysis.steps if s.device >= 0), markup=False)
    kinds = comm_by_kind(analysis.steps)
    if kinds:
        console.print("Exposed communication by collective kind (ms per step, mean over the profiled steps): "
                      + "; ".join(f"rank {r} {where(d)}: " + ", ".join(f"{k} {_ms(us)}" for k, us in by.items())
                                  for (r, d), by in kinds.items()), markup=False)
    waits = [s for s in analysis.steps if s.peer_wait_on_us or s.peer_wait_idle_us > 0.0005]
    if waits:
        # peer_wait holds two waits: inside a collective kernel until its last participant starts, and (DP) idle
        # with the next work queued behind another GPU's stream (peer_wait_idle_us, outside any kernel).
        console.print("Waiting for another participant (peer_wait, ms: inside a collective kernel until its last "
                      "participant starts, or idle with work queued behind another GPU): " + "; ".join(
                          f"rank {s.rank} {where(s.device)} step {s.step}: " + ", ".join(
                              f"on {who} {_ms(us)}" for who, us in s.peer_wait_on_us.items())
                          + _wait_split(s) for s in waits),
                      markup=False)
    verdict = analysis.straggler_summary.get("verdict")
    if verdict and verdict != "not_applicable" and analysis.straggler_summary.get("text"):
        console.print(f"Stragglers (GPU-side collective starts): {analysis.straggler_summary['text']}", markup=False)
    for o in analysis.clock_offsets:
        if o.source.startswith("collective"):
            console.print(f"rank {o.rank} clock aligned by {o.offset_us:+.1f} µs from {o.collectives} collective ends "
                          f"(residual median {o.residual_us:.1f} µs, max {o.max_residual_us:.1f} µs)", markup=False)
    for line in warning_lines(analysis, notes):
        console.print(line, style="yellow")


def warning_lines(analysis: Analysis, notes: Sequence[str] = ()) -> list[str]:
    """One line per analysis warning, then one per note met while reading the run's other files (``Run.notes``:
    unreadable steps or NVML lines...), as the HTML report's Warnings section lists them."""
    out = []
    for w in analysis.warnings:
        who = f"rank {w.rank}: " if w.rank is not None else ""
        out.append(f"warning [{w.code}] {who}{w.message}")
    return out + [f"warning [read] {n}" for n in notes]
