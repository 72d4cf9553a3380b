"""Plain data of a sweep (``dpprof sweep``): one point per configuration, written as ``sweep.json``.

Units: ``step_ms_median`` milliseconds, ``images_per_s`` images per second (global, all ranks),
``epoch_time_s`` seconds, ``categories_us`` microseconds (mean per step on the output device / rank 0
device, every name of :data:`dpprof.analyze.model.CATEGORIES`), accuracies are fractions 0..1 as the
collector's manifest records them. ``speedup`` = images/s of this point ÷ images/s of the 1-GPU
(or 1-process) point with the same strategy, batch size and workers; ``scaling_efficiency`` =
speedup ÷ gpus (1.0 = linear). Both are None when that reference point is missing.
``workers`` is ``--workers``, DataLoader workers *per process*; ``total_workers`` is the loader workers of
the whole run (:func:`total_loader_workers`): DDP's N processes each start their own, so DDP at
``workers`` = 2 over 4 processes loads with 8 workers against DP's 2.

The JSON contract (``schema: dpprof.sweep/2``) may be extended, never renamed. ``/2`` names
``categories_us`` as the analysis' schema ``dpprof.analysis/2`` does (``allreduce`` became ``comm``, plus
``peer_wait``); a ``/1`` file is read with its old keys mapped (:data:`RENAMED_FROM_V1`), its figures as they were
measured then (a ``/1`` ``comm`` still holds the waiting that ``/2`` counts as ``peer_wait``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from dpprof.analyze.model import to_plain
from dpprof.vocabulary import PROCESS_PER_RANK

SWEEP_SCHEMA = "dpprof.sweep/2"
SWEEP_SCHEMA_V1 = "dpprof.sweep/1"
#: Keys of a ``/1`` point's ``categories_us`` renamed in ``/2`` (docs/analysis-schema.md, "What changed from /1").
RENAMED_FROM_V1: dict[str, str] = {"allreduce": "comm", "allreduce_overlapped_us": "comm_overlapped_us"}
POINT_STATUSES: tuple[str, ...] = ("done", "skipped", "failed")

#: One epoch of a point: (train_acc, test_acc, time_s); accuracies 0..1 or None when not measured.
EpochRow = tuple[float | None, float | None, float | None]


#: Strategies that run one process per GPU, each with its own DataLoader (and its own ``--workers``).


def total_loader_workers(strategy: str, processes: int, workers: int) -> int:
    """DataLoader workers of a whole run: ``workers`` per process x the processes that load (DDP/FSDP: one
    per rank, ``processes`` = world size; single and DP: the one process, whatever the GPU count)."""
    return workers * (processes if strategy in PROCESS_PER_RANK else 1)


@dataclass(frozen=True)
class SweepPoint:
    """One configuration of the grid and what its run measured."""

    strategy: str  # "dp" | "ddp" | "single"
    gpus: int  # GPUs (DP device count) or processes (DDP world size)
    batch_size: int  # global batch size
    workers: int  # DataLoader workers per process
    run_dir: str | None = None  # relative to the sweep directory
    status: str = "skipped"  # one of POINT_STATUSES
    reason: str = ""  # why skipped / failed, or notes on a done point (e.g. "DP no_gpu path")
    step_ms_median: float | None = None
    images_per_s: float | None = None
    epoch_time_s: float | None = None
    epochs: tuple[EpochRow, ...] = ()
    categories_us: Mapping[str, float] = field(default_factory=dict)
    speedup: float | None = None
    scaling_efficiency: float | None = None
    #: The run's diagnosis with the whole sweep behind it: {hypothesis id: verdict}.
    verdicts: Mapping[str, str] = field(default_factory=dict)
    #: DataLoader workers of the whole run (``workers`` x loading processes); from the run's manifest once
    #: done, else from the grid. Derived the same way when a sweep.json from before this field is read.
    total_workers: int | None = None

    def __post_init__(self) -> None:
        if self.total_workers is None:
            object.__setattr__(self, "total_workers", total_loader_workers(self.strategy, self.gpus, self.workers))

    @property
    def key(self) -> tuple[str, int, int, int]:
        """(strategy, gpus, batch_size, workers): the point's identity in the grid."""
        return (self.strategy, self.gpus, self.batch_size, self.workers)

    @property
    def name(self) -> str:
        """Folder name of the point's run directory inside the sweep directory."""
        return f"{self.strategy}-g{self.gpus}-b{self.batch_size}-w{self.workers}"


@dataclass(frozen=True)
class SweepResult:
    """The whole sweep: points in grid order, the grid asked for, the machine it ran on."""

    points: tuple[SweepPoint, ...]
    #: The grid as asked: {"strategies": [...], "gpus": [...], "batch_sizes": [...], "workers": [...],
    #: "model": str, "epochs": int|None, "steps": int|None}.
    grid: Mapping[str, Any] = field(default_factory=dict)
    #: {"host": str, "cpus": int, "cuda_devices": int, "gpu_names": [...], "torch": str}.
    machine: Mapping[str, Any] = field(default_factory=dict)
    #: One line per configuration this machine cannot run: "dp-g4-b64-w0: needs 4 GPUs, 0 available".
    skipped: tuple[str, ...] = ()
    schema: str = SWEEP_SCHEMA
    #: The verdicts the sweep makes possible (the hyperparameters question): id -> {verdict, reason, rule, evidence}.
    diagnosis: Mapping[str, Any] = field(default_factory=dict)

    def point(self, strategy: str, gpus: int, batch_size: int, workers: int) -> SweepPoint | None:
        for p in self.points:
            if p.key == (strategy, gpus, batch_size, workers):
                return p
        return None

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-ready dict (floats rounded to 3 decimals; the writer sorts keys)."""
        return to_plain(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SweepResult:
        """A sweep from its JSON (``/2``, or ``/1`` read through :func:`upgrade_v1`); ValueError otherwise."""
        if isinstance(data, Mapping) and data.get("schema") == SWEEP_SCHEMA_V1:
            data = upgrade_v1(data)
        if not isinstance(data, Mapping) or data.get("schema") != SWEEP_SCHEMA:
            got = data.get("schema") if isinstance(data, Mapping) else type(data).__name__
            raise ValueError(f"schema {got!r}, expected {SWEEP_SCHEMA!r} (or {SWEEP_SCHEMA_V1!r})")
        try:  # typed: a field of the wrong type is a one-line error naming it, not a failure later in a report
            return msgspec.convert(data, cls, strict=False)
        except msgspec.ValidationError as exc:
            raise ValueError(str(exc)) from None


def upgrade_v1(data: Mapping[str, Any]) -> dict[str, Any]:
    """A ``dpprof.sweep/1`` document as ``/2``: each point's ``categories_us`` keys renamed (:data:`RENAMED_FROM_V1`);
    what is not a mapping is left for the typed conversion to name."""
    out = {**data, "schema": SWEEP_SCHEMA}
    points = data.get("points")
    if isinstance(points, list):
        out["points"] = [{**p, "categories_us": {RENAMED_FROM_V1.get(str(k), k): v
                                                 for k, v in p["categories_us"].items()}}
                         if isinstance(p, Mapping) and isinstance(p.get("categories_us"), Mapping) else p
                         for p in points]
    return out


SWEEP_FILE = "sweep.json"


def read_sweep(path: Path) -> SweepResult:
    """A sweep from its directory or its ``sweep.json``; one-line DpprofError when it is not one."""
    from dpprof.errors import DpprofError
    from dpprof.rundir import read_json

    file = path / SWEEP_FILE if path.is_dir() else path
    data = read_json(file) if file.is_file() else None
    if data is None:
        raise DpprofError(f"{path}: no readable sweep.json (run `dpprof sweep` first)")
    try:
        return SweepResult.from_json(data)
    except (ValueError, KeyError, TypeError) as exc:
        raise DpprofError(f"{file}: not a dpprof sweep ({exc})") from None
