"""One rank's recording of a user's own training (``dpprof run`` and ``dpprof.session()``).

The same run directory as ``dpprof profile`` writes (docs/run-format.md): global rank 0 starts the
manifest before the script runs and rewrites it at the first step (what was inferred) and at the end;
each node's local rank 0 runs the NVML sampler; every rank appends its step records and writes its
profiler window's trace. Nothing here talks to other ranks: the process group belongs to the script.
Ranks and nodes come from torchrun's environment (RANK, LOCAL_RANK, GROUP_RANK, ...).
"""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from dpprof.collect.children import ChildProcesses
from dpprof.collect.ddp_info import BucketWatch
from dpprof.collect.dp_marks import marking_all
from dpprof.collect.fsdp_info import fsdp_section
from dpprof.collect.identity import RankIdentity
from dpprof.collect.manifest import (
    ManifestWriter,
    StepsWriter,
    merge_node_part,
    node_entries,
    node_gpus,
    read_node_files,
    steps_file_name,
)
from dpprof.collect.model_watch import Inference, ModelWatch
from dpprof.collect.patches import Patches
from dpprof.collect.recorder import StepRecorder
from dpprof.collect.run_config import ScriptRunConfig, under_torchrun
from dpprof.collect.run_manifest import apply_inference, close_run_manifest, start_run_manifest
from dpprof.collect.script_runner import Outcome, Script
from dpprof.collect.script_window import ScriptWindow
from dpprof.collect.session import finalize, open_nvml
from dpprof.collect.stepping import (
    BackwardSteps,
    FunctionTarget,
    OptimizerSteps,
    StepOn,
    function_steps,
    parse_step_on,
)
from dpprof.collect.train import LoopResult
from dpprof.rundir import TRACES_DIR
from dpprof.version import __version__
from dpprof.vocabulary import DP_MODES

#: The sessions recording now, innermost last (``dpprof.session()`` inside one opens nothing).
ACTIVE: list[RunSession] = []


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.lstrip("-").isdigit() else default


def identity_from_env() -> RankIdentity:
    """This process's place in the run, from torchrun's environment (one process without it). Several
    nodes key their files ``<host>-node<N>``: without talking to each other they cannot tell whether
    two of them share a host."""
    import torch

    host = socket.gethostname()
    if not under_torchrun():
        return RankIdentity(host=host, node_key=host, device=torch.device("cpu"))
    node_rank = _env_int("GROUP_RANK", 0)
    several = _env_int("GROUP_WORLD_SIZE", 1) > 1
    return RankIdentity(rank=_env_int("RANK", 0), world_size=_env_int("WORLD_SIZE", 1),
                   local_rank=_env_int("LOCAL_RANK", 0), node_rank=node_rank, host=host,
                   node_key=f"{host}-node{node_rank}" if several else host, distributed=True)


class RunSession:
    """Start with :meth:`start`, end with :meth:`finish`; steps end through the step source, or
    :meth:`step` with ``step_on="manual"``."""

    def __init__(self, cfg: ScriptRunConfig, script: Script | None = None, step_on: StepOn | None = None,
                 function: FunctionTarget | None = None) -> None:
        self.cfg = cfg
        self.script = script
        #: ``step_on``: as resolved (a bare function name found nested); ``function``: where
        #: ``function:MODULE:NAME`` (or the API's NAME in __main__) lives, looked up before the run began
        self.step_on: StepOn = step_on or parse_step_on(cfg.step_on)
        self._function = function
        self.ctx = identity_from_env()
        self.run_dir = Path(cfg.run_dir)
        self.warnings: list[str] = []
        self.manifest: ManifestWriter | None = None
        self.inference: Inference | None = None
        self.finished = False
        self._patches = Patches()
        self._stack = contextlib.ExitStack()
        self._optimizers: OptimizerSteps | None = None
        self.window = ScriptWindow(None, self.say)  # replaced by start(); stands in until then
        self.recorder: StepRecorder | None = None
        self.watch: ModelWatch | None = None
        self._bucket_watch: BucketWatch | None = None
        self._children: ChildProcesses | None = None
        self._nvml_file: str | None = None
        self._t0 = time.perf_counter()

    def say(self, message: str) -> None:
        """dpprof's own lines: stderr, never the script's stdout; rank 0 only."""
        if self.ctx.rank == 0 and not self.cfg.quiet:
            print(f"dpprof: {message}", file=sys.stderr, flush=True)
        if message not in self.warnings:
            self.warnings.append(message)

    # --- start --------------------------------------------------------------------------------------
    def start(self) -> None:
        """Everything before the script's first line. Each piece is undone by :meth:`finish`, in
        reverse order, however far this got."""
        from dpprof.collect.launch import KINETO_QUIET

        ACTIVE.append(self)
        (self.run_dir / TRACES_DIR).mkdir(parents=True, exist_ok=True)
        if self.ctx.rank == 0:
            self.manifest = start_run_manifest(self.cfg, self.run_dir, self.script, self.step_on.describe(),
                                               self.warnings)
        writer = StepsWriter(self.run_dir / steps_file_name(self.ctx.rank))
        self._stack.callback(writer.close)
        # Read by libkineto when the profiler starts (as dpprof profile's workers do); a user's value stays.
        os.environ.setdefault("KINETO_LOG_LEVEL", KINETO_QUIET)
        sampler, self._nvml_file = open_nvml(self.cfg.nvml_period_ms, self.ctx, self.run_dir, self.warnings, None)
        if sampler is not None:
            self._stack.callback(lambda: self.warnings.extend(getattr(sampler, "warnings", [])))
            self._stack.enter_context(sampler)
        self.window = ScriptWindow(self._trace_window(), self.say)
        self._stack.callback(self.window.close)
        self.recorder = StepRecorder(self.ctx.rank, writer, self.window, self.say, self._first_boundary,
                                     self._after_record)
        self._stack.callback(self.recorder.close)
        self.watch = ModelWatch(self._first_call)
        self._stack.callback(self.watch.stop)
        self._stack.enter_context(marking_all())
        self._stack.callback(self._patches.restore)
        self._children = ChildProcesses(self._patches)
        self._install_step_source()
        self.window.begin()
        self.recorder.start()

    def _trace_window(self) -> Any:
        if not self.cfg.profile:
            return None
        import torch

        from dpprof.collect.profiler import TraceWindow

        meta = {"run_id": self.cfg.run_id, "rank": self.ctx.rank, "source": "dpprof run",
                "step_on": self.cfg.step_on, "dpprof_version": __version__}
        c = self.cfg
        # distributedInfo as for single/DP traces until the first step shows a process group (torch's own then)
        info = {"backend": None, "rank": self.ctx.rank, "world_size": self.ctx.world_size}
        window = TraceWindow(self.run_dir / TRACES_DIR, self.ctx.rank, wait=c.profile_wait, warmup=c.profile_warmup,
                             active=c.profile_active, use_cuda=torch.cuda.is_available(),
                             all_threads=c.profile_all_threads, record_shapes=c.record_shapes,
                             with_stack=c.with_stack, distributed_info=info, extra_metadata=meta)
        self.warnings.extend(window.warnings)
        return window

    def _install_step_source(self) -> None:
        s = self.step_on
        if s.kind == "optimizer":
            self._optimizers = OptimizerSteps(s.index, self.boundary, self._patches)
            self._stack.callback(self._optimizers.close)
        elif s.kind == "backward":
            BackwardSteps(s.every, self.boundary, self._patches)
        elif s.kind == "function" and self._function is not None:
            # (the script's own definitions are decorated in its syntax tree instead: commands/run.py)
            function_steps(self._function, self.boundary, self._patches)

    # --- during the run -----------------------------------------------------------------------------
    def step(self) -> None:
        """End the current step (the Python API's ``Session.step()``)."""
        self.boundary(None)

    @property
    def steps(self) -> int:
        """Steps ended so far."""
        return self.recorder.boundaries if self.recorder is not None else 0

    def boundary(self, grad_scaler_skipped: Any = None) -> None:
        """A step source's end of step (``--step-on function:NAME`` in the script calls this)."""
        if self.recorder is not None:
            self.recorder.boundary(grad_scaler_skipped)

    def _first_call(self, module: Any) -> None:
        first = next(iter(module.parameters()), None)
        if self.recorder is not None:
            self.recorder.start(first.device if first is not None else None)

    def _first_boundary(self) -> None:
        inf = self._infer()
        if self.recorder is not None:
            self.recorder.global_batch = inf.global_batch
        if inf.dp_mode in DP_MODES and DP_MODES[inf.dp_mode].note:
            self.say(f"DataParallel mode {inf.dp_mode}: {DP_MODES[inf.dp_mode].note}")
        if inf.per_rank_batch is None:
            self.say(f"batch size unknown ({inf.batch_from}): images_per_s is null; give --batch-size "
                     "(batch_size= in dpprof.session)")
        window = self.window.window
        if window is not None:  # before the active part begins, when the metadata goes in
            window.extra_metadata.update({
                "strategy": inf.strategy, "model": (inf.model_info or {}).get("name"), "world_size": inf.world_size,
                "dp_mode": inf.dp_mode, "device_ids": inf.device_ids, "batch_size": inf.global_batch,
                "per_rank_batch_size": inf.per_rank_batch})
            # torch writes distributedInfo itself when a process group is up
            window.distributed_info = None if inf.backend else \
                {"backend": None, "rank": self.ctx.rank, "world_size": inf.world_size}  # (WORLD_SIZE, or 1)
        if self.manifest is not None:
            apply_inference(self.manifest, inf, self.cfg)
            try:  # private APIs of DDP and FSDP: a failure costs a section, not the run's step records
                if inf.strategy == "fsdp" and inf.wrapper is not None:
                    self.manifest.data["fsdp"] = fsdp_section(inf.wrapper)
                if inf.wrapper_kind == "ddp":
                    self._bucket_watch = BucketWatch(inf.wrapper)
                    self.manifest.data["ddp"] = self._bucket_watch.section
            except Exception as exc:
                self.say(f"{inf.strategy} settings not recorded ({type(exc).__name__}: {exc})")
            self.manifest.data["warnings"] = list(dict.fromkeys(self.manifest.data["warnings"] + self.warnings))
            self.manifest.write()

    def _infer(self) -> Inference:
        """What the modules called so far say (once: the watch stops here)."""
        if self.inference is None:
            assert self.watch is not None, "started sessions have a watch"
            self.watch.stop()
            try:
                self.inference = self.watch.infer(self.cfg.batch_size)
            except Exception as exc:  # an exotic model must not stop the step records
                self.say(f"could not infer the training's setup ({type(exc).__name__}: {exc})")
                self.inference = Inference(strategy_from="not inferred", batch_from="not inferred")
        return self.inference

    def _after_record(self, rec: dict[str, Any]) -> None:
        watch, manifest = self._bucket_watch, self.manifest
        if watch is not None and manifest is not None and watch.poll(rec["step"]):
            manifest.data["ddp"] = watch.section
            manifest.write()

    # --- the end ------------------------------------------------------------------------------------
    def finish(self, outcome: Outcome, signal_name: str | None = None) -> None:
        """Record how the script ended; every file is complete on disk afterwards. Idempotent."""
        if self.finished:
            return
        self.finished = True
        if self in ACTIVE:
            ACTIVE.remove(self)
        if self.inference is None and self.watch is not None and self.manifest is not None:
            apply_inference(self.manifest, self._infer(), self.cfg)  # no step ended: still say what ran
        self._stack.close()
        node = self._write_node_part()
        if self.manifest is None:
            return
        m = self.manifest
        rec = self.recorder
        records = list(rec.records) if rec is not None else []
        recorded = rec.recorded if rec is not None else 0
        nodes = read_node_files(self.run_dir)
        stepping: dict[str, Any] = {"boundaries": recorded,
                                    "grad_scaler_skipped_steps": rec.skipped_steps if rec is not None else 0}
        if self._optimizers is not None:
            stepping.update(self._optimizers.section())
        if self.recorder is not None:
            stepping.update(self.recorder.cost_section())
        close_run_manifest(m, outcome.exit_code, outcome.error, stepping, self.window.skip_reason,
                           node_entries(nodes))
        if self._bucket_watch is not None:
            m.data["ddp"] = self._bucket_watch.section
        if outcome.status == "failed":
            self.warnings.append(f"the script failed: {outcome.error}")
        spawned = self._children is not None and self._children.started > 0
        if spawned and self.watch is not None and not self.watch.called:
            assert self._children is not None
            self.warnings.append(self._children.advice())
        elif not records:
            self.warnings.append(f"no steps recorded: nothing ended a step ({self.step_on.describe()}); "
                                 "choose another --step-on")
        if self.recorder is not None and self.recorder.failed:
            self.warnings.append(self.recorder.failed)
        ran = any(r["profiler_on"] for r in records)
        cfg = self.cfg if ran or self.window.skip_reason is None else replace(self.cfg, profile=False)
        if recorded > len(records):
            self.warnings.append(f"{recorded} steps: the summary's medians are over the first {len(records)} "
                                 "(every step is in the steps files)")
        result = LoopResult(steps=records, wall_s=time.perf_counter() - self._t0)
        finalize(m, cfg, result, outcome.status, signal_name, self.warnings, nodes or [node])
        if recorded > len(records):
            m.data["summary"]["steps"] = recorded
            m.write()

    def _write_node_part(self) -> dict[str, Any]:
        import torch

        peak: dict[str, int] = {}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            devices = set(self.inference.device_ids or []) if self.inference and self.inference.dp_mode else set()
            devices |= {torch.cuda.current_device()}
            peak = {f"{self.ctx.node_key}:{d}": int(torch.cuda.max_memory_allocated(d)) for d in sorted(devices)}
        part = {"host": self.ctx.host, "node_rank": self.ctx.node_rank, "node_key": self.ctx.node_key,
                "ranks": [self.ctx.rank], "nvml_file": self._nvml_file, "peak_memory_bytes": peak,
                "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "gpus": node_gpus(use_cuda=False), "written_unix_ns": time.time_ns()}
        try:
            return merge_node_part(self.run_dir, self.ctx.node_key, part)
        except Exception as exc:  # the node file is a convenience; the run is on disk regardless
            self.warnings.append(f"node file not written ({type(exc).__name__}: {exc})")
            return part

