"""dpprof's words, each defined once: the strategies, and nn.DataParallel's modes, phases and trace names.

Everything else reads them from here: ``collect`` (what ``profile`` can run, DP's phase markers), ``trace.classify``
(the rules that name DP's host events), ``analyze`` (categories, strategy labels, the output device) and ``report``
(the sentences). No imports: any stage may use it.

nn.DataParallel, from torch's source (torch/nn/parallel/data_parallel.py, ``DataParallel.forward``):

* its mode follows ``device_ids``: none (no GPU) -> the module is called directly; one -> the inputs are
  scattered onto it and the module is called directly; several -> ``scatter`` (torch/nn/parallel/scatter_gather.py,
  the ``Scatter`` autograd function of torch/nn/parallel/_functions.py), ``replicate`` (torch/nn/parallel/
  replicate.py: ``Broadcast`` of the parameters from ``device_ids[0]``), ``parallel_apply`` (one thread per
  replica), ``gather`` (``Gather`` onto ``output_device``);
* backward runs the same functions in reverse: ``GatherBackward`` scatters the output gradient back to the
  replicas, ``BroadcastBackward`` -> ``ReduceAddCoalesced`` sums the replicas' gradients onto ``device_ids[0]``.

dpprof's four analysis phases (``DP_PHASES``) are those transfers; the host classes of ``trace.classify`` carry the
same names, so phases and classes agree by name, not by position. Which device is the "GPU0" every phase goes
through is found from the trace (``analyze.dp_output``): the ``toDevice`` of the Gather copies.
"""

from __future__ import annotations

from dataclasses import dataclass

# --- strategies ----------------------------------------------------------------------------------
#: What ``dpprof profile`` (and ``sweep``) can run.
PROFILE_STRATEGIES: tuple[str, ...] = ("single", "dp", "ddp", "fsdp")
#: Strategies that run one process per rank (launched through torchrun; each process loads its own data).
PROCESS_PER_RANK: tuple[str, ...] = ("ddp", "fsdp")
#: What the analysis can label a trace (``analyze.strategy.detect``); ``distributed``: collectives that are
#: neither DDP nor FSDP (tensor/pipeline parallelism, distributed inference); ``unknown``: no step to read.
ANALYSIS_STRATEGIES: tuple[str, ...] = ("dp", "ddp", "fsdp", "distributed", "single", "unknown")
#: Strategies whose ranks meet in collectives (stragglers, exposed communication, buckets).
COLLECTIVE_STRATEGIES: tuple[str, ...] = ("ddp", "fsdp", "distributed")


@dataclass(frozen=True)
class StrategyName:
    short: str  # a tile or a table cell
    long: str  # what it is


STRATEGY_NAMES: dict[str, StrategyName] = {
    "dp": StrategyName("DP", "nn.DataParallel"),
    "ddp": StrategyName("DDP", "DistributedDataParallel"),
    "fsdp": StrategyName("FSDP", "FullyShardedDataParallel / fully_shard"),
    "distributed": StrategyName("distributed", "collectives without DP, DDP or FSDP"),
    "single": StrategyName("single", "one device, no data parallelism"),
    "unknown": StrategyName("unknown", ""),
}


def strategy_title(strategy: str) -> str:
    """"DP (nn.DataParallel)"; the bare name for a strategy dpprof does not know."""
    name = STRATEGY_NAMES.get(strategy)
    if name is None:
        return strategy
    if strategy == "single":
        return "single device (no data parallelism)"
    return f"{name.short} ({name.long})" if name.long else name.short


# --- nn.DataParallel -----------------------------------------------------------------------------
#: The analysis categories of DP's transfers (GPU transfer time; ``analyze.model.CATEGORIES`` holds them).
DP_PHASES: tuple[str, ...] = ("dp_scatter", "dp_broadcast", "dp_gather", "dp_reduce")

#: dpprof's own ``record_function`` markers around DP's forward steps: the DataParallel method ``collect`` wraps
#: (the four ``DataParallel.forward`` calls) -> the name written into the trace.
DP_MARKS: dict[str, str] = {
    "scatter": "dpprof::dp_scatter",
    "replicate": "dpprof::dp_replicate",
    "parallel_apply": "dpprof::dp_parallel_apply",
    "gather": "dpprof::dp_gather",
}
#: The host class each marker opens in ``trace.classify`` (exact when present, so matched first).
DP_MARK_CLASSES: dict[str, str] = {
    DP_MARKS["scatter"]: "dp_scatter",
    DP_MARKS["replicate"]: "dp_broadcast",
    DP_MARKS["parallel_apply"]: "dp_parallel_apply",
    DP_MARKS["gather"]: "dp_gather",
}

#: torch's own names in a trace -> host class: the module's forward, the autograd functions of
#: torch/nn/parallel/_functions.py and the backward nodes autograd names after them.
DP_TORCH_OPS: dict[str, tuple[str, ...]] = {
    "dp_forward": ("DataParallel.forward",),
    "dp_scatter": ("Scatter", "GatherBackward"),
    "dp_broadcast": ("Broadcast",),
    "dp_gather": ("Gather",),
    "dp_reduce": ("BroadcastBackward", "ReduceAddCoalesced"),
}


@dataclass(frozen=True)
class DpMode:
    short: str  # the console header
    sentence: str  # the report's headline
    note: str  # what ``profile`` says when it chooses this mode ("" when there is nothing to warn about)


DP_MODES: dict[str, DpMode] = {
    "multi_device": DpMode(
        "DP over several devices (scatter, replicate, parallel_apply, gather, reduce)",
        "DP split each batch over several devices: scatter, replicate, parallel_apply, gather, then reduce of the "
        "gradients into the output device.", ""),
    "one_device": DpMode(
        "DP on one device: a Scatter, then the module called directly (no replicas, gather, reduce)",
        "DP ran on one GPU: inputs were scattered onto it and the module was called directly (no replicas, gather "
        "or reduce).", "one GPU: DataParallel scatters onto it, then calls the module directly"),
    "no_gpu": DpMode(
        "DP with no GPU: the module was called directly",
        "DP had no GPU to split the batch over: the module ran directly (no scatter, replicas, gather or reduce).",
        "no GPU: DataParallel calls the module directly (no scatter/replicate/gather)"),
}


def dp_mode_of(n_device_ids: int) -> str:
    """Which of DP's paths ``len(device_ids)`` leads to (``DataParallel.forward``)."""
    return "no_gpu" if n_device_ids == 0 else ("one_device" if n_device_ids == 1 else "multi_device")
