"""The torch.profiler window of a run and how its trace lands in ``RUN/traces/``.

One short window (wait, warmup, active steps; repeat once) so that profiling distorts only a few steps;
CPU + CUDA activities; every thread recorded where torch allows it (DP's parallel_apply threads are
invisible otherwise). The trace is named like torch's ``tensorboard_trace_handler`` would name it
(``rank{R}.{time_ns}.pt.trace.json.gz``) and written atomically, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerAction, ProfilerActivity, profile, schedule

from dpprof.fileio import atomic_open
from dpprof.rundir import trace_file_name

_RECORDING = (ProfilerAction.RECORD, ProfilerAction.RECORD_AND_SAVE)


def all_threads_config() -> Any | None:
    """``_ExperimentalConfig(profile_all_threads=True)``, or None where this torch lacks the option."""
    try:
        return torch._C._profiler._ExperimentalConfig(profile_all_threads=True)
    except (AttributeError, TypeError, RuntimeError):
        return None


class TraceWindow:
    """Wraps ``torch.profiler.profile``; call :meth:`step` once at the end of every training step.

    ``distributed_info`` (for single and DP runs, where torch.distributed is not initialised and torch
    writes none) is added to the trace as ``distributedInfo`` so every trace states its rank and world
    size the way torch does for DDP. ``extra_metadata`` goes into the trace under the key ``dpprof``.
    """

    def __init__(self, traces_dir: Path, rank: int, *, wait: int, warmup: int, active: int, use_cuda: bool,
                 all_threads: bool = True, record_shapes: bool = False, with_stack: bool = False,
                 distributed_info: dict[str, Any] | None = None,
                 extra_metadata: dict[str, Any] | None = None) -> None:
        self.traces_dir = traces_dir
        self.rank = rank
        self.wait, self.warmup, self.active = wait, warmup, active
        self.distributed_info = distributed_info
        self.extra_metadata = dict(extra_metadata or {})
        self.files: list[Path] = []
        self.warnings: list[str] = []
        self._metadata_added = False
        self._steps = 0
        self._closed = False
        activities = [ProfilerActivity.CPU]
        if use_cuda:
            activities.append(ProfilerActivity.CUDA)
        kwargs: dict[str, Any] = {}
        self.all_threads = False
        if all_threads:
            cfg = all_threads_config()
            if cfg is None:
                self.warnings.append("this torch has no profile_all_threads option: the CPU ops of DP's "
                                     "parallel_apply threads are not in the trace")
            else:
                kwargs["experimental_config"] = cfg
                self.all_threads = True
        self.extra_metadata["profile_all_threads"] = self.all_threads
        self._prof = profile(activities=activities,
                             schedule=schedule(wait=wait, warmup=warmup, active=active, repeat=1),
                             on_trace_ready=self._on_trace_ready, record_shapes=record_shapes,
                             with_stack=with_stack, **kwargs)

    # Steps are numbered from 0 in the order step() is called.
    def is_active_step(self, index: int) -> bool:
        """True for the steps inside the recorded (active) part of the window."""
        start = self.wait + self.warmup
        return start <= index < start + self.active

    def is_profiler_on(self, index: int) -> bool:
        """True for the warm-up and active steps (the profiler runs, and costs time, in both)."""
        return self.wait <= index < self.wait + self.warmup + self.active

    @property
    def finished(self) -> bool:
        """The window is over (its trace, if any, is written) or was stopped."""
        return self._closed

    def __enter__(self) -> TraceWindow:
        self._prof.__enter__()
        self._maybe_add_metadata()
        return self

    def __exit__(self, *exc: Any) -> None:
        # Stopping inside the active part still saves what was recorded (torch's RECORD -> stop path).
        if not self._closed:
            self._closed = True
            self._prof.__exit__(*exc)

    def step(self) -> None:
        if self._closed:
            return
        self._prof.step()
        self._steps += 1
        self._maybe_add_metadata()
        if self._steps >= self.wait + self.warmup + self.active:
            # The step() that left the active part has saved the trace (schedule(repeat=1) then says
            # NONE for good): stop now, so later steps no longer open a ProfilerStep range each.
            self.__exit__(None, None, None)

    def _maybe_add_metadata(self) -> None:
        # Metadata only sticks while Kineto records, so add it when the active part begins.
        if self._metadata_added or self._prof.current_action not in _RECORDING:
            return
        if self.distributed_info is not None:
            # json.dumps' default separators keep '"rank": 0', the form HTA's rank regex reads.
            self._prof.add_metadata_json("distributedInfo", json.dumps(self.distributed_info))
        self._prof.add_metadata_json("dpprof", json.dumps(self.extra_metadata, sort_keys=True))
        self._metadata_added = True

    def _on_trace_ready(self, prof: Any) -> None:
        target = self.traces_dir / trace_file_name(self.rank, time.time_ns())
        # Export outside traces/ (readers scan that folder), then gzip into place atomically.
        fd, tmp = tempfile.mkstemp(prefix=f"dpprof-rank{self.rank}-", suffix=".json")
        os.close(fd)
        try:
            prof.export_chrome_trace(tmp)
            with open(tmp, "rb") as src, atomic_open(target, "wb", compress=True) as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        finally:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        self.files.append(target)
        self._metadata_added = False
