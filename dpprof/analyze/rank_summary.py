"""What one analysis worker sends back to the parent about one trace file (``dpprof.analyze.pipeline`` makes
it in a worker process, ``dpprof.analyze.combine`` merges all of them in the parent)."""

from __future__ import annotations

from dataclasses import dataclass, field

from dpprof.analyze import matching
from dpprof.analyze.attribution import Pieces
from dpprof.analyze.model import AnalysisWarning, DeviceSummary, KernelStat, StepBreakdown


@dataclass
class RankSummary:
    """What one worker sends back about one trace file (rank fields are provisional: 0).

    ``steps`` are provisional too: their ``comm``/``dp_*`` still hold the waiting inside collectives, which
    ``combine`` moves to ``peer_wait`` once every rank's ``executions`` are matched (``pieces`` say where).
    """

    path: str
    dist_rank: int | None
    world_size: int | None
    backend: str | None
    base_time_ns: int | None
    gpu_names: dict[str, str]
    devices: tuple[int, ...]
    events: int
    strategy: str
    strategy_evidence: str
    dp_mode: str | None
    output_device: int | None
    output_device_source: str
    profile_all_threads: bool | None
    steps: list[StepBreakdown]
    device_summaries: list[DeviceSummary]
    top_kernels: list[KernelStat]
    executions: matching.RankExecutions
    pieces: Pieces
    segments: Pieces | None = None  # every run of every row, when asked for (timeline views)
    warnings: list[AnalysisWarning] = field(default_factory=list)
    steps_start_us: float | None = None
    steps_end_us: float | None = None
    dp_replicas: int | None = None  # replica threads per DataParallel.forward (dpprof.trace.link.PhaseSpans)
