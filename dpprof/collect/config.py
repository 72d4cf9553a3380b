"""The configuration of one profiling run: what ``dpprof profile`` was asked to do, as plain data.

The same object travels from the command line to every DDP worker (as JSON on torchrun's command line),
so all ranks of all nodes agree on it, and it is written verbatim into ``manifest.json["config"]``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from dpprof.errors import DpprofError
from dpprof.vocabulary import PROFILE_STRATEGIES

DATA_KINDS = ("synthetic", "cifar10")
#: The learning-rate rule, stated once: the manifest and ``--help`` quote it.
BASE_BATCH = 128
LR_RULE = f"lr = base_lr x global_batch / {BASE_BATCH} (linear scaling; the same global batch gives the same lr for every strategy)"


def scaled_lr(base_lr: float, global_batch: int) -> float:
    """Learning rate for a global batch of ``global_batch`` images under :data:`LR_RULE`."""
    return base_lr * global_batch / BASE_BATCH


_C = TypeVar("_C", bound="ProfilerSettings")


@dataclass
class ProfilerSettings:
    """What ``dpprof profile`` and ``dpprof run`` configure alike: the run directory and its identity, the
    command line, the profiler window and the NVML sampler.

    The window is counted in steps: ``profile_wait`` steps without the profiler, ``profile_warmup`` steps
    with it (discarded), ``profile_active`` steps recorded into the trace; once.
    """

    run_dir: str = ""
    run_id: str = ""
    command: list[str] = field(default_factory=list)
    created_unix_ns: int = 0
    quiet: bool = False
    profile: bool = True
    profile_wait: int = 2
    profile_warmup: int = 1
    profile_active: int = 3
    profile_all_threads: bool = True
    record_shapes: bool = False
    with_stack: bool = False
    nvml_period_ms: int = 100

    @property
    def profiler_window_end(self) -> int:
        """Index (0-based) of the first step after the profiler's active window."""
        return self.profile_wait + self.profile_warmup + self.profile_active

    def to_json(self) -> str:
        """The whole configuration as JSON: how it travels to every worker on torchrun's command line."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls: type[_C], text: str) -> _C:
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise DpprofError(f"bad worker configuration: {exc}") from None
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})


def validate_profiler(s: ProfilerSettings) -> None:
    """Raise DpprofError (one line) for a window or sampler setting that cannot work."""
    for name in ("profile_wait", "profile_warmup"):
        if getattr(s, name) < 0:
            raise DpprofError(f"--{name.replace('_', '-')} must not be negative")
    if s.profile_active < 1:
        raise DpprofError("--profile-active must be at least 1")
    if s.nvml_period_ms < 1:
        raise DpprofError("--nvml-period-ms must be at least 1")


@dataclass
class RunConfig(ProfilerSettings):
    """Everything a worker needs. Sizes are images; times are steps unless a name says ``_ms``."""

    strategy: str = "dp"
    model: str = "vgg16"
    data: str = "synthetic"
    data_root: str | None = None
    download: bool = False
    train_size: int | None = None  # None: 2048 synthetic / all 50000 CIFAR-10
    test_size: int | None = None  # None: 512 synthetic / all 10000 CIFAR-10
    batch_size: int = 128  # global, for every strategy
    per_rank_batch_size: int = 128
    gpus: int = 0
    device_ids: list[int] | None = None
    nproc: int = 1
    nnodes: int = 1
    world_size: int = 1
    epochs: int | None = None
    steps: int | None = 12
    base_lr: float = 0.05
    lr: float = 0.05
    lr_rule: str = LR_RULE
    momentum: float = 0.9
    workers: int = 0
    seed: int = 0
    loss_every: int = 10
    exact_timing: bool = False
    device: str = "cpu"
    backend: str | None = None
    cudnn_benchmark: bool = True
    probe: bool = True
    comm_probe: bool = True  # the allreduce probe at the start of a DDP run (dpprof.collect.comm_probe)
    #: intra-op CPU threads per process (torch.set_num_threads); None = torch's default.
    threads: int | None = None

    def manifest_section(self) -> dict[str, Any]:
        """The ``config`` section of manifest.json (docs/run-format.md)."""
        keep = ("strategy", "model", "data", "data_root", "batch_size", "per_rank_batch_size", "gpus",
                "device_ids", "nproc", "nnodes", "world_size", "epochs", "steps", "lr", "base_lr", "lr_rule",
                "momentum", "workers", "seed", "profile_wait", "profile_warmup", "profile_active",
                "profile_all_threads", "record_shapes", "with_stack", "nvml_period_ms", "loss_every",
                "exact_timing", "device", "backend", "train_size", "test_size", "cudnn_benchmark", "profile",
                "threads")
        d = dataclasses.asdict(self)
        return {k: d[k] for k in keep}


def utc_stamp(unix_ns: int | None = None) -> str:
    """``20261127T172000`` (UTC, seconds) for run directory names."""
    t = (unix_ns if unix_ns is not None else time.time_ns()) / 1e9
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(t))


def default_run_name(cfg: RunConfig, rdzv_id: str | None = None, unix_ns: int | None = None) -> str:
    """``<strategy>-<model>-b<batch>-<UTC stamp>``; with several nodes the stamp is the rendezvous id,
    because every node must derive the same name without talking to the others first."""
    suffix = _safe(rdzv_id) if rdzv_id else utc_stamp(unix_ns)
    return f"{cfg.strategy}-{cfg.model}-b{cfg.batch_size}-{suffix}"


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def validate(cfg: RunConfig) -> None:
    """Raise DpprofError (one line) for a configuration that cannot run."""
    if cfg.strategy not in PROFILE_STRATEGIES:
        raise DpprofError(f"unknown strategy {cfg.strategy!r} (choose from {', '.join(PROFILE_STRATEGIES)})")
    if cfg.data not in DATA_KINDS:
        raise DpprofError(f"unknown data {cfg.data!r} (choose from {', '.join(DATA_KINDS)})")
    if cfg.batch_size < 1:
        raise DpprofError("--batch-size must be at least 1")
    if cfg.batch_size % cfg.world_size:
        raise DpprofError(f"--batch-size {cfg.batch_size} (global) is not divisible by the world size "
                          f"{cfg.world_size}: DDP splits the global batch evenly over ranks")
    if cfg.steps is not None and cfg.steps < 1:
        raise DpprofError("--steps must be at least 1 (or leave it out and give --epochs)")
    if cfg.epochs is not None and cfg.epochs < 1:
        raise DpprofError("--epochs must be at least 1")
    if cfg.steps is None and cfg.epochs is None:
        raise DpprofError("give --steps or --epochs")
    validate_profiler(cfg)
    for name in ("loss_every", "train_size", "test_size", "workers"):
        value = getattr(cfg, name)
        if value is not None and value < 0:
            raise DpprofError(f"--{name.replace('_', '-')} must not be negative")
    if cfg.train_size is not None and cfg.train_size < cfg.batch_size:
        raise DpprofError(f"--train-size {cfg.train_size} is smaller than one global batch ({cfg.batch_size})")
    if cfg.data == "cifar10" and not cfg.data_root:
        raise DpprofError("--data cifar10 needs --data-root DIR")
    if cfg.run_dir and Path(cfg.run_dir).is_file():
        raise DpprofError(f"{cfg.run_dir}: exists and is a file")
