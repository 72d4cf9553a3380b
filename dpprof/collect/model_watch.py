"""What an unchanged script trains, seen from the modules it calls in its first step.

A global forward pre-hook (``torch.nn.modules.module.register_module_forward_pre_hook``: it sees every
module call before its forward, positional inputs only) watches from the session's start to the end of
the first step, then is removed, so later steps keep PyTorch's hook-free fast path. It notes the first
data-parallel wrapper called (DP, DDP, FSDP1, or an FSDP2 root: :mod:`dpprof.collect.fsdp_info`), the
first module with parameters called, and dim 0 of the first tensor each was given: the batch size.

A model called with keyword arguments only (``model(**batch)``, ``m(x=...)``) gives a global pre-hook no
tensor: ``Module._call_impl`` (torch/nn/modules/module.py) passes kwargs only to pre-hooks registered on
the module itself with ``with_kwargs=True``, never to global ones. Global *forward* hooks do take
``with_kwargs=True`` (``register_module_forward_hook``, torch >= 2.1): one reads the keyword inputs of
those first calls whose positional inputs held no tensor, when the call returns. On an older torch the
batch size of such a model stays unknown, and the run says so.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dpprof.collect.fsdp_info import STRATEGY_OF, inner_module, model_name, param_count, wrapper_kind
from dpprof.vocabulary import dp_mode_of

NOT_CALLED = "no module was called in this process before the first step ended"


@dataclass
class Inference:
    """What dpprof inferred, each figure with how (``*_from``); None where it could not tell. ``strategy``
    is None when no module was called at all: nothing was seen to call it single."""

    strategy: str | None = "single"
    strategy_from: str = "no DataParallel, DistributedDataParallel or FSDP module was called in the first step"
    wrapper_kind: str | None = None
    per_rank_batch: int | None = None
    batch_from: str = NOT_CALLED
    device: str | None = None
    device_index: int | None = None
    dp_mode: str | None = None
    device_ids: list[int] | None = None
    world_size: int = 1
    local_world_size: int = 1
    backend: str | None = None
    model_info: dict[str, Any] | None = None
    #: the modules themselves (not written anywhere): the wrapper and the user's model
    wrapper: Any = field(default=None, repr=False)
    model: Any = field(default=None, repr=False)

    @property
    def global_batch(self) -> int | None:
        """Images per step over all ranks: DP's input is the whole batch; DDP/FSDP ranks each get theirs."""
        if self.per_rank_batch is None:
            return None
        return self.per_rank_batch * (self.world_size if self.strategy in ("ddp", "fsdp") else 1)


def first_batch(args: Any, kwargs: dict[str, Any] | None = None) -> int | None:
    """dim 0 of the first tensor among a call's positional inputs, then its keyword inputs (looking one
    level into lists, tuples and dicts), or None."""
    import torch

    items = list(args) if isinstance(args, (tuple, list)) else [args]
    items += list((kwargs or {}).values())
    for item in items:
        inner = list(item.values()) if isinstance(item, dict) else \
            list(item) if isinstance(item, (tuple, list)) else [item]
        for t in inner:
            if isinstance(t, torch.Tensor) and t.dim() >= 1:
                return int(t.shape[0])
    return None


def _has_params(module: Any) -> bool:
    return next(iter(module.parameters()), None) is not None


def _device_ids(wrapper: Any) -> list[int] | None:
    ids = getattr(wrapper, "device_ids", None)
    if ids is None:
        return None
    return [int(getattr(d, "index", d) or 0) for d in ids]


class ModelWatch:
    """The global forward pre-hook of the first step. ``on_first_call(module)`` runs once, at the first
    module call (the clock of step 0 starts there)."""

    def __init__(self, on_first_call: Callable[[Any], None] | None = None) -> None:
        from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

        self.on_first_call = on_first_call
        self.wrapper: tuple[str, Any, int | None] | None = None
        self.model: tuple[Any, int | None] | None = None
        self.called = False
        self.sees_kwargs = True
        self._pending: set[int] = set()  # id() of noted modules whose first call gave no positional tensor
        self._handles: list[Any] = [register_module_forward_pre_hook(self._hook)]
        try:
            self._handles.append(register_module_forward_hook(self._after_call, with_kwargs=True))
        except TypeError:  # torch < 2.1: no keyword inputs for global hooks
            self.sees_kwargs = False

    def _hook(self, module: Any, args: Any) -> None:
        if not self.called:
            self.called = True
            if self.on_first_call is not None:
                self.on_first_call(module)
        if self.wrapper is None:
            kind = wrapper_kind(module)
            if kind is not None:
                self.wrapper = (kind, module, self._batch(module, args))
        if self.model is None and _has_params(module):
            self.model = (module, self._batch(module, args))

    def _batch(self, module: Any, args: Any) -> int | None:
        batch = first_batch(args)
        if batch is None:
            self._pending.add(id(module))
        return batch

    def _after_call(self, module: Any, args: Any, kwargs: dict[str, Any], output: Any) -> None:
        """The end of a call: the keyword inputs of a noted module's first call, when its positional ones had
        no tensor (the first return of that module is the end of its first call)."""
        if id(module) not in self._pending:
            return
        self._pending.discard(id(module))
        batch = first_batch((), kwargs)
        if self.wrapper is not None and self.wrapper[1] is module and self.wrapper[2] is None:
            self.wrapper = (self.wrapper[0], module, batch)
        if self.model is not None and self.model[0] is module and self.model[1] is None:
            self.model = (module, batch)

    def stop(self) -> None:
        while self._handles:
            self._handles.pop().remove()

    def infer(self, batch_size: int | None = None) -> Inference:
        """The inference from what was seen; ``batch_size`` (the global batch given on the command line)
        replaces the batch size seen."""
        inf = Inference()
        _distributed(inf)
        if not self.called:
            inf.strategy, inf.strategy_from = None, NOT_CALLED
        model: Any = None
        if self.wrapper is not None:
            kind, wrapper, batch = self.wrapper
            inf.wrapper_kind, inf.wrapper = kind, wrapper
            inf.strategy = STRATEGY_OF[kind]
            inf.strategy_from = f"{type(wrapper).__name__} module called in the first step"
            model = inner_module(wrapper)
            inf.per_rank_batch = batch
            inf.batch_from = f"dim 0 of the first tensor given to {type(wrapper).__name__}" if batch is not None \
                else self._no_tensor(wrapper)
            if kind == "dp":
                inf.device_ids = _device_ids(wrapper) or []
                inf.dp_mode = dp_mode_of(len(inf.device_ids or ()))
            elif kind == "ddp":
                inf.device_ids = _device_ids(wrapper)
            count, size, how = param_count(wrapper)
            inf.model_info = {"name": model_name(wrapper), "params": count, "param_bytes": size,
                              "buffers_bytes": _buffer_bytes(model), "counted_from": how}
        elif self.model is not None:
            model, batch = self.model
            inf.per_rank_batch = batch
            inf.batch_from = f"dim 0 of the first tensor given to the first module called ({type(model).__name__})" \
                if batch is not None else self._no_tensor(model)
            inf.model_info = {"name": type(model).__name__, "params": sum(int(p.numel()) for p in model.parameters()),
                              "param_bytes": sum(int(p.numel()) * p.element_size() for p in model.parameters()),
                              "buffers_bytes": _buffer_bytes(model),
                              "counted_from": "the first module with parameters called in the first step"}
        inf.model = model
        if model is not None:
            first = next(iter(model.parameters()), None)
            if first is not None:
                inf.device = first.device.type
                inf.device_index = first.device.index
        if batch_size is not None:
            per_rank = batch_size // inf.world_size if inf.strategy in ("ddp", "fsdp") else batch_size
            inf.per_rank_batch, inf.batch_from = per_rank, "given on the command line (--batch-size, global)"
        return inf

    def _no_tensor(self, module: Any) -> str:
        inputs = "positional or keyword" if self.sees_kwargs else "positional (this torch hides keyword inputs " \
            "from global hooks)"
        return (f"the first call of {type(module).__name__} had no tensor with a batch dimension among its "
                f"{inputs} inputs, one level into lists, tuples and dicts")


def _buffer_bytes(model: Any) -> int:
    return sum(int(b.numel()) * b.element_size() for b in model.buffers()) if model is not None else 0


def _distributed(inf: Inference) -> None:
    """World size and backend from torch.distributed once the script has set it up, else the launcher's
    WORLD_SIZE (ranks that do not talk to each other) or 1, and no backend."""
    world = os.environ.get("WORLD_SIZE", "")
    inf.world_size = int(world) if world.isdigit() and int(world) >= 1 else 1
    dist = sys.modules.get("torch.distributed")
    try:
        if dist is not None and dist.is_available() and dist.is_initialized():
            inf.world_size = int(dist.get_world_size())
            inf.backend = str(dist.get_backend())
    except Exception:  # a group already torn down: keep the defaults
        pass
    local = os.environ.get("LOCAL_WORLD_SIZE", "")
    inf.local_world_size = int(local) if local.isdigit() else 1
