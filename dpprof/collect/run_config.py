"""The configuration of ``dpprof run`` (and of the Python API's session), and its run directory's name.

Like ``dpprof profile``'s :class:`~dpprof.collect.config.RunConfig`, it travels as JSON to every rank
that dpprof's own launcher starts. Ranks started by the user's torchrun
(``torchrun ... -m dpprof.run SCRIPT``) cannot talk to each other before the script sets up
torch.distributed, so they derive the same run directory name independently (:func:`shared_run_name`).
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dpprof.collect.config import ProfilerSettings, utc_stamp
from dpprof.errors import DpprofError

_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@dataclass
class ScriptRunConfig(ProfilerSettings):
    """What to run and how to record it. ``target``: the script's path as given, or a module (``module``)."""

    target: str = ""
    module: bool = False
    args: list[str] = field(default_factory=list)
    step_on: str = "optimizer"
    #: the global batch given on the command line; None: inferred from the model's first call
    batch_size: int | None = None
    #: torchrun's topology when dpprof itself launched the ranks (None: one process, or the user's torchrun)
    nproc: int | None = None
    nnodes: int = 1

    def manifest_config(self) -> dict[str, Any]:
        """The manifest's ``config`` before anything is inferred (docs/run-format.md, "dpprof run")."""
        return {"strategy": None, "model": None, "data": None, "batch_size": self.batch_size,
                "per_rank_batch_size": None, "gpus": None, "device_ids": None, "nproc": self.nproc,
                "nnodes": self.nnodes, "world_size": None, "epochs": None, "steps": None, "workers": None,
                "device": None, "backend": None, "step_on": self.step_on, "profile": self.profile,
                "profile_wait": self.profile_wait, "profile_warmup": self.profile_warmup,
                "profile_active": self.profile_active, "profile_all_threads": self.profile_all_threads,
                "record_shapes": self.record_shapes, "with_stack": self.with_stack,
                "nvml_period_ms": self.nvml_period_ms, "inferred": []}


def script_stem(target: str, module: bool) -> str:
    """``train`` for ``path/train.py``, ``train`` for ``-m pkg.train``: the run directory's middle part."""
    stem = target.rsplit(".", 1)[-1] if module else Path(target).stem
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in stem) or "script"


def default_run_name(target: str, module: bool, unix_ns: int | None = None) -> str:
    """``run-<script>-<UTC stamp>``."""
    return f"run-{script_stem(target, module)}-{utc_stamp(unix_ns)}"


def run_name_for_id(target: str, module: bool, run_id: str) -> str:
    """``run-<script>-<id>`` for a rendezvous or torchrun run id (a uuid: its first 8 hex digits)."""
    tag = run_id[:8] if _UUID.match(run_id) else "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id)
    return f"run-{script_stem(target, module)}-{tag}"


def under_torchrun(env: dict[str, str] | None = None) -> bool:
    """True in a process that torchrun started (it sets these for every worker)."""
    e = os.environ if env is None else env
    return "TORCHELASTIC_RUN_ID" in e and "RANK" in e and "WORLD_SIZE" in e


def shared_run_name(target: str, module: bool, env: dict[str, str] | None = None) -> str:
    """The name every rank of one torchrun launch derives alike: ``run-<script>-<torchrun run id>``.

    torchrun gives each launch a fresh uuid as its run id (``--standalone``, and a single node without a
    rendezvous endpoint: torch/distributed/run.py, ``run``); several nodes share their ``--rdzv-id``. A
    launch without one (``none``: a static rendezvous) on a single node uses its agent's start time (all
    local workers share the agent); several such nodes cannot agree: a DpprofError asks for --run-name.
    """
    e = os.environ if env is None else env
    run_id = e.get("TORCHELASTIC_RUN_ID", "none")
    stem = script_stem(target, module)
    if run_id and run_id != "none":
        return run_name_for_id(target, module, run_id)
    if e.get("GROUP_WORLD_SIZE", "1") not in ("", "1"):
        raise DpprofError("several nodes under torchrun without --rdzv-id: give dpprof --run-name NAME (the "
                          "same on every node) so that all ranks write one run directory")
    return f"run-{stem}-{utc_stamp(int(_agent_start_s() * 1e9))}"


def torchrun_record(env: dict[str, str] | None = None) -> dict[str, Any]:
    """What identifies one launch of the user's torchrun: its run id (``TORCHELASTIC_RUN_ID``: a fresh uuid
    per ``--standalone`` or single-node launch, the ``--rdzv-id`` otherwise: torch/distributed/run.py,
    ``run``). A static rendezvous has the id ``none``; on one node its workers share torchrun's agent (their
    parent), whose identity then tells two launches apart."""
    e = os.environ if env is None else env
    run_id = e.get("TORCHELASTIC_RUN_ID", "none") or "none"
    record: dict[str, Any] = {"torchrun_run_id": run_id}
    if run_id == "none" and e.get("GROUP_WORLD_SIZE", "1") in ("", "1"):
        record["torchrun_agent"] = f"{socket.gethostname()}:{os.getppid()}:{_agent_start_s():.3f}"
    return record


def _agent_start_s() -> float:
    """When this process's parent (torchrun's agent) started, in Unix seconds."""
    import psutil

    try:
        return float(psutil.Process(os.getppid()).create_time())
    except (psutil.Error, OSError):
        raise DpprofError("cannot read torchrun's start time to name the run directory: give --run-name") \
            from None
