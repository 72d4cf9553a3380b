"""How a model is spread over devices: single device, nn.DataParallel (with phase markers), DDP, FSDP2.

DP's forward does four things torch does not mark in a trace (it only marks ``DataParallel.forward``):
scatter the batch, replicate the module, run the replicas in threads, gather the outputs.
:class:`MarkedDataParallel` names each of them with a ``record_function`` range; the analyzer keys on
exactly these names (:data:`DP_MARKS`). The backward phases (GatherBackward, BroadcastBackward /
ReduceAddCoalesced) run in autograd and are already named by torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.profiler import record_function

from dpprof.errors import DpprofError
from dpprof.vocabulary import DP_MARKS, DP_MODES, dp_mode_of


class MarkedDataParallel(nn.DataParallel):
    """``nn.DataParallel`` with each forward phase inside a named profiler range.

    Only the four hook methods DP's own ``forward`` calls are overridden, each delegating to DP's
    implementation unchanged, so the semantics (and the gradients) are exactly DP's.
    """

    def scatter(self, inputs: tuple[Any, ...], kwargs: dict[str, Any] | None,
                device_ids: Sequence[int | torch.device]) -> Any:
        with record_function(DP_MARKS["scatter"]):
            return super().scatter(inputs, kwargs, device_ids)

    def replicate(self, module: Any, device_ids: Sequence[int | torch.device]) -> Any:
        with record_function(DP_MARKS["replicate"]):
            return super().replicate(module, device_ids)

    def parallel_apply(self, replicas: Sequence[Any], inputs: Sequence[Any], kwargs: Any) -> Any:
        with record_function(DP_MARKS["parallel_apply"]):
            return super().parallel_apply(replicas, inputs, kwargs)

    def gather(self, outputs: Any, output_device: int | torch.device) -> Any:
        with record_function(DP_MARKS["gather"]):
            return super().gather(outputs, output_device)


@dataclass
class Placement:
    """Where a wrapped model runs: ``input_device`` gets the batch, ``output_device`` the loss inputs."""

    module: Any
    input_device: torch.device
    output_device: torch.device
    dp_mode: str | None = None
    device_ids: list[int] | None = None
    note: str | None = None


def dp_device_ids(gpus: int, device_ids: list[int] | None, available: int) -> list[int]:
    """The device list DP will use: ``device_ids`` as given, else the first ``gpus`` GPUs (0 = all)."""
    if device_ids:
        bad = [d for d in device_ids if d < 0 or d >= available]
        if bad:
            raise DpprofError(f"--device-ids {bad} not visible (this machine shows {available} GPU(s))")
        return list(device_ids)
    if gpus > available:
        raise DpprofError(f"--gpus {gpus} but only {available} GPU(s) are visible")
    return list(range(gpus or available))


def wrap_single(model: nn.Module, device: torch.device) -> Placement:
    return Placement(model.to(device), device, device)


def wrap_dp(model: nn.Module, use_cuda: bool, gpus: int, device_ids: list[int] | None) -> Placement:
    """``MarkedDataParallel`` over the chosen GPUs, and which of DP's three paths it will take."""
    if not use_cuda:
        # DataParallel itself finds no GPU, sets device_ids=[] and calls the module directly.
        wrapped = MarkedDataParallel(model)
        cpu = torch.device("cpu")
        return Placement(wrapped, cpu, cpu, "no_gpu", [], DP_MODES["no_gpu"].note)
    ids = dp_device_ids(gpus, device_ids, torch.cuda.device_count())
    first = torch.device("cuda", ids[0])
    wrapped = MarkedDataParallel(model.to(first), device_ids=ids)
    if dp_mode_of(len(ids)) == "one_device":
        return Placement(wrapped, first, first, "one_device", ids, DP_MODES["one_device"].note)
    note = None
    if len(set(ids)) < len(ids):
        note = f"device_ids {ids} repeat a GPU: DP's full path on fewer physical GPUs (no NCCL, no peer copies)"
    return Placement(wrapped, first, first, "multi_device", ids, note)


def wrap_ddp(model: nn.Module, device: torch.device) -> Placement:
    """DDP with one device per process (``device`` is this rank's GPU, or the CPU under gloo)."""
    from torch.nn.parallel import DistributedDataParallel

    model = model.to(device)
    ids = [device.index] if device.type == "cuda" else None
    wrapped = DistributedDataParallel(model, device_ids=ids)
    return Placement(wrapped, device, device, None, ids)


def fsdp_units(model: nn.Module) -> list[nn.Module]:
    """The modules ``wrap_fsdp`` shards on their own: every convolution and linear layer (they hold nearly
    all the bytes: 99.9 % of CIFAR VGG16's). The rest (BatchNorm) stays with the root's unit."""
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def wrap_fsdp(model: nn.Module, device: torch.device, world_size: int) -> Placement:
    """FSDP2 over all ranks: ``fully_shard`` per layer (:func:`fsdp_units`), then the root, on a 1-D
    device mesh of the ranks (on the CPU a gloo mesh: ``init_device_mesh("cpu", (world,))``, checked with
    torch 2.14.1)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    model = model.to(device)
    mesh = init_device_mesh(device.type, (world_size,))
    for unit in fsdp_units(model):
        fully_shard(unit, mesh=mesh)
    fully_shard(model, mesh=mesh)
    ids = [device.index] if device.type == "cuda" else None
    return Placement(model, device, device, None, ids)
