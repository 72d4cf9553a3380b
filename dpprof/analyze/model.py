"""The one intermediate form of dpprof: what ``analyze`` produces and every report reads.

All durations are microseconds (``*_us``), byte counts ``*_bytes``, shares ``*_pct`` (0..100).
The JSON contract (``schema: dpprof.analysis/2``) may be extended, never renamed.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dpprof.vocabulary import DP_PHASES

SCHEMA = "dpprof.analysis/2"

#: Exclusive categories of a step on one device; per step they sum to ``duration_us``.
#: ``dp_*`` and ``comm`` count GPU *transfer* only; the time a collective kernel spends waiting for its last
#: participant is ``peer_wait`` (docs/analysis-schema.md says what changed from ``/1``).
CATEGORIES: tuple[str, ...] = ("compute", *DP_PHASES, "comm", "peer_wait", "memcpy", "data_loading", "host", "idle")
VERDICTS: tuple[str, ...] = ("supported", "not_supported", "inconclusive")


@dataclass(frozen=True)
class AnalysisWarning:
    """Something skipped or doubtful; ``count`` events or files were affected."""

    code: str
    message: str
    rank: int | None = None
    count: int = 1


@dataclass(frozen=True)
class RankInfo:
    """One trace file = one rank."""

    rank: int
    path: str
    world_size: int | None = None
    backend: str | None = None
    #: GPU indices with activity in this trace (not Kineto's 16 metadata processes).
    devices: tuple[int, ...] = ()
    gpu_names: Mapping[str, str] = field(default_factory=dict)  # str(device) -> name
    base_time_ns: int | None = None
    #: True/False when the trace says whether all threads were profiled, None when it cannot tell.
    profile_all_threads: bool | None = None
    torch_version: str | None = None
    events: int = 0
    #: Trace time span covered by the steps, µs on this rank's clock.
    steps_start_us: float | None = None
    steps_end_us: float | None = None
    #: Multi-device DP: replicas per step, counted as the threads that launch GPU work inside DataParallel.forward
    #: besides its own (parallel_apply's one thread per replica); None elsewhere or when they were not recorded.
    dp_replicas: int | None = None


@dataclass(frozen=True)
class DeviceSummary:
    """Per device over the whole trace (all steps and outside them)."""

    rank: int
    device: int
    kernel_time_us: float  # sum of kernel durations
    comm_kernel_time_us: float  # sum of communication kernel durations
    busy_time_us: float  # length of the union of kernel, memcpy and memset intervals
    memcpy_time_us: float = 0.0  # sum of memcpy + memset durations
    memcpy_bytes: Mapping[str, int] = field(default_factory=dict)  # copy kind (HtoD, DtoH, DtoD, PtoP) -> bytes


@dataclass(frozen=True)
class StepBreakdown:
    """One ``ProfilerStep#N`` on one device (``device == -1``: a rank with no GPU, host timeline)."""

    rank: int
    device: int
    step: int
    duration_us: float
    categories_us: Mapping[str, float]  # every name of CATEGORIES; sums to duration_us
    #: Collective execution (kernels, or gloo spans) running under compute: hidden communication.
    comm_overlapped_us: float = 0.0
    gpu0_only_us: float | None = None  # DP only, on the output device's row; None elsewhere
    start_us: float = 0.0  # step start on the rank's trace clock
    busy_us: float = 0.0  # union of kernels, copies, memsets clipped to the step
    #: GPU busy time of work launched inside each DP phase (keys of DP_PHASES), waiting inside its
    #: collectives included (the ``dp_*`` categories hold its exposed transfer only), µs.
    dp_phase_gpu_us: Mapping[str, float] = field(default_factory=dict)
    #: Host time inside each DP phase (union of the phase's host spans in the step), µs.
    dp_host_us: Mapping[str, float] = field(default_factory=dict)
    #: The ``comm`` category by collective kind (all_reduce, all_gather, reduce_scatter, broadcast...), µs.
    comm_by_kind_us: Mapping[str, float] = field(default_factory=dict)
    #: The ``peer_wait`` category by whom was waited for ("rank 1", "GPU 2"), µs.
    peer_wait_on_us: Mapping[str, float] = field(default_factory=dict)
    #: The part of ``peer_wait`` when this GPU was idle with its next work queued behind another GPU (outside
    #: any collective kernel: DP's copies wait for the other device's stream); the rest is inside collectives.
    peer_wait_idle_us: float = 0.0
    #: The part of ``peer_wait_idle_us`` while the GPU waited for was running DP data-path work (e.g. the output
    #: device waiting for Gather's copies, which run on the source GPUs' streams).
    peer_wait_dp_us: float = 0.0
    #: DP only, on the output device's row: busy outside DP phases while no other GPU is (loss, optimizer...).
    gpu0_serial_us: float | None = None
    #: The part of ``host`` inside DP's own host windows (``DataParallel.forward``: replicate, the replica
    #: threads, gather; and every DP phase): host time DP adds, which a DDP process would not spend.
    host_in_dp_us: float = 0.0
    #: GPU busy time of the work launched inside ``Optimizer.step`` (it does not shrink with more GPUs).
    optimizer_us: float = 0.0
    #: GPU time and count of kernels launched by an autotuning loop (cuDNN benchmark, dpprof.analyze.autotune).
    autotune_us: float = 0.0
    autotune_kernels: int = 0
    #: Bytes copied in this step by copy kind.
    memcpy_bytes: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class KernelStat:
    """Top kernels per device: total time over the profiled steps."""

    rank: int
    device: int
    name: str
    category: str  # compute | communication | memcpy | memset
    count: int
    total_us: float


@dataclass(frozen=True)
class CollectiveSkew:
    """One collective matched across its participants (ranks, or the GPUs of one DP process).

    Times are GPU-side (kernel starts; gloo: its spans on ``pt_gloo_runloop``) on the aligned clock. A
    participant's kernel waits from its own start until the last participant's start; the rest is transfer.
    """

    group: str  # process group name; "local" for DP's in-process NCCL communicators
    index: int  # order within (group, name[, size])
    name: str  # normalised kind: all_reduce, all_gather, reduce_scatter, broadcast, reduce...
    start_skew_us: float  # latest start - earliest start across participants
    last_rank: int  # rank of the participant everyone waited for; -1 when all started together (a tie)
    ranks: tuple[int, ...] = ()
    last: str = ""  # label of that participant ("rank 1", "GPU 2"); "" on a tie
    last_device: int = -1
    participants: tuple[str, ...] = ()
    step: int | None = None  # ProfilerStep of the earliest participant
    transfer_us: float = 0.0  # median over participants of end - last start
    wait_us: Mapping[str, float] = field(default_factory=dict)  # per participant: its kernel's waiting


@dataclass(frozen=True)
class Straggler:
    """How often a participant (a rank, or a GPU inside DP) arrived last at a collective, and its cost."""

    rank: int
    times_last: int
    collectives: int
    mean_lateness_us: float  # mean start skew of the collectives it arrived last at
    participant: str = ""
    device: int = -1
    caused_wait_us: float = 0.0  # the others' waiting at those collectives, summed


@dataclass(frozen=True)
class ClockOffset:
    """How a rank's clock was put on the reference rank's: aligned µs = epoch µs + offset_us."""

    rank: int
    offset_us: float
    residual_us: float | None  # median |end difference| of matched collectives after alignment
    max_residual_us: float | None
    collectives: int  # matched collectives the offset rests on
    source: str  # "collective ends" | "reference" | "baseTimeNanoseconds (no shared collective)"


@dataclass(frozen=True)
class Hypothesis:
    id: str  # data_path | hardware | hyperparameters
    verdict: str  # one of VERDICTS
    rule: str  # the rule and thresholds used, in words
    reason: str  # why this verdict, in words, with the numbers
    evidence: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Finding:
    id: str  # e.g. host_bound, ddp_exposed_allreduce, data_loading_bound, straggler
    severity: str  # info | warning | critical
    title: str
    detail: str
    evidence: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Diagnosis:
    hypotheses: tuple[Hypothesis, ...]
    findings: tuple[Finding, ...] = ()
    advice: tuple[str, ...] = ()
    #: What-if projection (always labelled a projection); free-form rows, see analyze/projection.py.
    projection: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Analysis:
    strategy: str  # one of vocabulary.ANALYSIS_STRATEGIES
    ranks: tuple[RankInfo, ...]
    devices: tuple[DeviceSummary, ...]
    steps: tuple[StepBreakdown, ...]
    warnings: tuple[AnalysisWarning, ...] = ()
    top_kernels: tuple[KernelStat, ...] = ()
    collectives: tuple[CollectiveSkew, ...] = ()
    stragglers: tuple[Straggler, ...] = ()
    #: DP only: "multi_device" (replicate/parallel_apply/gather), "one_device" (Scatter then the module),
    #: "no_gpu" (the module called directly); None for other strategies.
    dp_mode: str | None = None
    #: DP output device ("GPU0") when known, found from what DP does (never a tie-break), and how.
    output_device: int | None = None
    diagnosis: Diagnosis | None = None
    schema: str = SCHEMA
    strategy_evidence: str = ""
    output_device_source: str = ""
    clock_offsets: tuple[ClockOffset, ...] = ()
    #: Who everyone waited for at collectives: {"verdict": "slow_rank" | "slow_gpu" | "output_device_late" |
    #: "none" | "not_applicable", "participant", "text", ...} (dpprof.analyze.matching.summary).
    straggler_summary: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Plain, deterministic JSON-ready dict (floats rounded to ns, keys sorted by the writer)."""
        return to_plain(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Analysis:
        if data.get("schema") != SCHEMA:
            raise ValueError(f"not a dpprof analysis (schema {data.get('schema')!r}, expected {SCHEMA!r})")
        return from_plain(cls, data)

    def with_diagnosis(self, diagnosis: Diagnosis) -> Analysis:
        return dataclasses.replace(self, diagnosis=diagnosis)


def to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return None
        return round(value, 3)
    return value


def from_plain(tp: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        kwargs = {f.name: from_plain(hints[f.name], value[f.name])
                  for f in dataclasses.fields(tp) if f.name in value}
        return tp(**kwargs)  # type: ignore[operator]  # tp is a dataclass type here
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        return from_plain(members[0], value) if len(members) == 1 else value
    if origin is tuple:
        (item, *_rest) = typing.get_args(tp)
        return tuple(from_plain(item, v) for v in value)
    if origin in (Mapping, dict) or tp is Mapping:
        args = typing.get_args(tp)
        vt = args[1] if len(args) == 2 else Any
        return {k: from_plain(vt, v) for k, v in value.items()}
    if tp is float and isinstance(value, int):
        return float(value)
    return value
