"""Which data-parallel wrapper a module is, and FSDP's settings as the manifest's ``fsdp`` section.

The wrapper classes are looked up in ``sys.modules`` only: a script that uses FSDP (or DDP, DP) has
imported their modules already, and a script that does not never pays for importing them.

FSDP comes in two APIs (torch/distributed/fsdp/__init__.py): FSDP2, ``fully_shard(module)``, which
turns the module's class into a subclass of ``FSDPModule`` (``FSDP<Name>``) and its parameters into
DTensors sharded on dim 0 (a DTensor's ``numel()`` is the global, unsharded count); and FSDP1, the
``FullyShardedDataParallel`` wrapper, which flattens each unit's parameters into one ``FlatParameter``
holding this rank's shard (its private ``_numels`` lists the original parameters' sizes).
"""

from __future__ import annotations

import sys
from typing import Any

#: wrapper kind -> (module, class name), outermost first in the order checked.
_CLASSES: dict[str, tuple[str, str]] = {
    "fsdp2": ("torch.distributed.fsdp", "FSDPModule"),
    "fsdp1": ("torch.distributed.fsdp", "FullyShardedDataParallel"),
    "ddp": ("torch.nn.parallel.distributed", "DistributedDataParallel"),
    "dp": ("torch.nn.parallel.data_parallel", "DataParallel"),
}
#: wrapper kind -> the manifest's strategy name.
STRATEGY_OF = {"fsdp2": "fsdp", "fsdp1": "fsdp", "ddp": "ddp", "dp": "dp"}
#: wrapper kind -> the API's name as the manifest states it.
API_NAME = {"fsdp2": "fully_shard", "fsdp1": "FullyShardedDataParallel",
            "ddp": "DistributedDataParallel", "dp": "DataParallel"}


def _class(kind: str) -> type | None:
    module, name = _CLASSES[kind]
    mod = sys.modules.get(module)
    cls = getattr(mod, name, None) if mod is not None else None
    return cls if isinstance(cls, type) else None


def wrapper_kind(module: Any) -> str | None:
    """``"fsdp2"``, ``"fsdp1"``, ``"ddp"``, ``"dp"`` or None for a plain module."""
    for kind in _CLASSES:
        cls = _class(kind)
        if cls is not None and isinstance(module, cls):
            return kind
    return None


def inner_module(wrapper: Any) -> Any:
    """The user's model inside a wrapper (FSDP2 shards the model in place: the model itself)."""
    kind = wrapper_kind(wrapper)
    if kind in ("dp", "ddp", "fsdp1"):
        return getattr(wrapper, "module", wrapper)
    return wrapper


def model_name(wrapper: Any) -> str:
    """The class name of the user's model: FSDP2's ``FSDP<Name>`` subclass gives ``<Name>``."""
    model = inner_module(wrapper)
    cls = type(model)
    fsdp = _class("fsdp2")
    if fsdp is not None and isinstance(model, fsdp):
        cls = next((c for c in cls.__mro__ if not issubclass(c, fsdp)), cls)
    return cls.__name__


def param_count(wrapper: Any) -> tuple[int, int, str]:
    """(parameters, their bytes, how they were counted): the full, unsharded model's."""
    kind = wrapper_kind(wrapper)
    params = list(wrapper.parameters())
    if kind == "fsdp1":
        numels = [getattr(p, "_numels", None) for p in params]
        if params and all(n is not None for n in numels):
            count = sum(int(sum(n)) for n in numels if n is not None)
            size = sum(int(sum(n)) * p.element_size() for n, p in zip(numels, params, strict=True) if n is not None)
            return count, size, "FlatParameter._numels (the original parameters' sizes)"
        world = _world_size()
        return (sum(p.numel() for p in params) * world, sum(p.numel() * p.element_size() for p in params) * world,
                f"this rank's shard x world size {world} (includes FSDP's padding)")
    how = "DTensor global sizes" if kind == "fsdp2" else "parameters"
    return (sum(int(p.numel()) for p in params), sum(int(p.numel()) * p.element_size() for p in params), how)


def _world_size() -> int:
    dist = sys.modules.get("torch.distributed")
    try:
        return int(dist.get_world_size()) if dist is not None and dist.is_initialized() else 1
    except Exception:  # a torch without the distributed package, or a torn-down group
        return 1


def fsdp_section(root: Any) -> dict[str, Any]:
    """The manifest's ``fsdp`` section for an FSDP root module (either API).

    ``units``: modules FSDP manages separately (each all-gathers its own parameters), root included;
    ``sharding_strategy``: FSDP1's (``FULL_SHARD``...), null for FSDP2 (``reshard_after_forward`` per
    unit); ``mesh_shape`` and ``placements``: FSDP2's, from the first parameter's DTensor.
    """
    kind = wrapper_kind(root)
    units = sum(1 for m in root.modules() if wrapper_kind(m) == kind)
    section: dict[str, Any] = {"api": API_NAME.get(kind or "", None), "units": units,
                               "sharding_strategy": None, "mesh_shape": None, "placements": None}
    if kind == "fsdp1":
        strategy = getattr(root, "sharding_strategy", None)
        section["sharding_strategy"] = getattr(strategy, "name", None)
    elif kind == "fsdp2":
        first = next(iter(root.parameters()), None)
        mesh = getattr(first, "device_mesh", None)
        if mesh is not None:
            section["mesh_shape"] = [int(n) for n in mesh.shape]
            section["placements"] = [str(p) for p in getattr(first, "placements", ())]
    return section
