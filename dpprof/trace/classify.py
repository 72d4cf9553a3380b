"""Classification as data: ordered (class, regex) tables, first match wins, tested rule by rule.

Two tables:

* ``GPU_RULES`` name GPU activities (kernels, copies, memsets) by their event name. When no rule
  matches, the Kineto event category decides: a ``kernel`` is ``compute``, a ``gpu_memcpy`` is
  ``memcpy_other``, a ``gpu_memset`` is ``memset``.
* ``CPU_RULES`` name host events (``cpu_op``, ``user_annotation``, runtime calls): profiler steps,
  data loading, DP phases (torch's ops and dpprof's own ``dpprof::dp_*`` markers), DDP ops,
  collectives, optimizer annotations. No match is ``op`` (ordinary host work).

Rules are matched with ``re.search`` against the full name, so anchor them where it matters.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from dpprof import vocabulary as V

# --- GPU activity classes (codes are small ints so per-event arrays stay compact) ---------------------
GPU_CLASSES: tuple[str, ...] = (
    "compute", "communication", "memcpy_HtoD", "memcpy_DtoH", "memcpy_DtoD", "memcpy_PtoP",
    "memcpy_other", "memset",
)
G_COMPUTE, G_COMM, G_HTOD, G_DTOH, G_DTOD, G_PTOP, G_MEMCPY, G_MEMSET = range(len(GPU_CLASSES))
G_COPIES = (G_HTOD, G_DTOH, G_DTOD, G_PTOP, G_MEMCPY)
#: Copy kind reported in ``memcpy_bytes`` for each copy class.
COPY_KIND: dict[int, str] = {G_HTOD: "HtoD", G_DTOH: "DtoH", G_DTOD: "DtoD", G_PTOP: "PtoP", G_MEMCPY: "other"}

_I = re.IGNORECASE


def _exact(*names: str) -> re.Pattern[str]:
    """A pattern matching exactly one of ``names``."""
    return re.compile("^(?:" + "|".join(map(re.escape, names)) + ")$")

#: Ordered GPU rules: (class, pattern). First match wins.
GPU_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    # NCCL (old ncclKernel_*, new ncclDevKernel_*), RCCL and gloo kernels, with or without "void ".
    ("communication", re.compile(r"^(?:void\s+)?(?:[\w]+::)*(?:nccl|rccl|gloo)", _I)),
    # Copies by direction: CUDA "Memcpy HtoD (Pinned -> Device)", HIP "hipMemcpyHtoDAsync",
    # and the long spellings some exporters use.
    ("memcpy_HtoD", re.compile(r"memcpy.*?(?:HtoD|H2D|HostToDevice)", _I)),
    ("memcpy_DtoH", re.compile(r"memcpy.*?(?:DtoH|D2H|DeviceToHost)", _I)),
    ("memcpy_PtoP", re.compile(r"memcpy.*?(?:PtoP|P2P|PeerToPeer|Peer)", _I)),
    ("memcpy_DtoD", re.compile(r"memcpy.*?(?:DtoD|D2D|DeviceToDevice)", _I)),
    ("memset", re.compile(r"^(?:hip)?memset", _I)),
    ("memcpy_other", re.compile(r"^(?:hip)?memcpy|^dma", _I)),
)

# --- host (CPU) event classes --------------------------------------------------------------------
CPU_CLASSES: tuple[str, ...] = (
    "op", "step", "data_loading", "dp_forward", "dp_scatter", "dp_broadcast", "dp_gather", "dp_reduce",
    "dp_parallel_apply", "ddp_forward", "ddp_reducer", "collective", "param_comms", "optimizer",
    "fsdp", "sync",
)
(C_OP, C_STEP, C_DATA, C_DP_FORWARD, C_DP_SCATTER, C_DP_BROADCAST, C_DP_GATHER, C_DP_REDUCE,
 C_DP_PARALLEL_APPLY, C_DDP_FORWARD, C_DDP_REDUCER, C_COLLECTIVE, C_PARAM_COMMS, C_OPTIMIZER,
 C_FSDP, C_SYNC) = range(len(CPU_CLASSES))
#: Host classes that are DP phases, in the order of ``vocabulary.DP_PHASES`` (a phase's class has its name).
DP_PHASE_CLASSES: tuple[int, ...] = tuple(CPU_CLASSES.index(p) for p in V.DP_PHASES)
#: Annotations that only enclose other work: by themselves they do not make the host busy.
ENCLOSING_CLASSES: frozenset[int] = frozenset({C_STEP, C_DDP_FORWARD, C_OPTIMIZER, C_DP_PARALLEL_APPLY, C_FSDP})
#: Host spans of the collective API (c10d ops, ``record_param_comms``, ``nccl:*``/``gloo:*`` annotations).
COLLECTIVE_CLASSES: frozenset[int] = frozenset({C_COLLECTIVE, C_PARAM_COMMS})

#: Ordered host rules: (class, pattern). First match wins.
CPU_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("step", re.compile(r"^ProfilerStep#\d+$")),
    ("data_loading", re.compile(r"^enumerate\(DataLoader\)#.*__next__")),
    # DP (dpprof.vocabulary): dpprof's own phase markers come first, they are exact when present; then torch's
    # DataParallel.forward and the torch.nn.parallel autograd functions (GatherBackward scatters grad_output).
    *((cls, _exact(mark)) for mark, cls in V.DP_MARK_CLASSES.items()),
    *((cls, _exact(*ops)) for cls, ops in V.DP_TORCH_OPS.items()),
    ("ddp_forward", re.compile(r"^DistributedDataParallel\.forward$")),
    ("ddp_reducer", re.compile(r"^(?:torch::distributed::reducer::|torch\.distributed\.ddp\.reducer::)")),
    ("param_comms", re.compile(r"^record_param_comms$")),
    ("collective", re.compile(r"^(?:nccl|gloo|rccl|mpi|ucc):|^c10d::")),
    ("optimizer", re.compile(r"^Optimizer\.(?:step|zero_grad)#")),
    # FSDP2 (fully_shard: torch/distributed/fsdp/_fully_shard/*, "FSDP::all_gather (i)",
    # "FSDP::post_backward_reduce"...) and FSDP1 (FullyShardedDataParallel.* record_function names).
    ("fsdp", re.compile(r"^FSDP::|^FullyShardedDataParallel\.")),
    # Host calls that block until the GPU has finished: the host is waiting, not working, inside them.
    ("sync", re.compile(r"^(?:cuda|hip|cu)(?:Stream|Device|Event|Ctx)Synchronize(?:_v2)?$|^(?:cuda|hip)Memcpy$")),
)

_GPU_CODE = {name: i for i, name in enumerate(GPU_CLASSES)}
_CPU_CODE = {name: i for i, name in enumerate(CPU_CLASSES)}
_STEP_NUMBER = re.compile(r"#(\d+)$")


def classify_gpu_name(name: str, default: int = G_COMPUTE) -> int:
    """GPU class code of an activity name (``GPU_CLASSES`` index); ``default`` when no rule matches."""
    for cls, pattern in GPU_RULES:
        if pattern.search(name):
            return _GPU_CODE[cls]
    return default


def classify_cpu_name(name: str) -> int:
    """Host class code of an event name (``CPU_CLASSES`` index); ``C_OP`` when no rule matches."""
    for cls, pattern in CPU_RULES:
        if pattern.search(name):
            return _CPU_CODE[cls]
    return C_OP


def classify_names(names: Sequence[str]) -> tuple[list[int], list[int]]:
    """Classify a string table once: (gpu class per name or -1 when no rule matches, cpu class per name).

    Traces repeat a few thousand distinct names hundreds of thousands of times, so the analysis
    classifies the string table and indexes the result with each event's name id.
    """
    return [classify_gpu_name(n, -1) for n in names], [classify_cpu_name(n) for n in names]


def step_number(name: str) -> int | None:
    """N of ``ProfilerStep#N``, or None."""
    m = _STEP_NUMBER.search(name)
    return int(m.group(1)) if m else None


_KIND_ALIASES = {"allreduce": "all_reduce", "allgather": "all_gather", "reducescatter": "reduce_scatter",
                 "alltoall": "all_to_all", "alltoallv": "all_to_all", "sendrecv": "send_recv",
                 "broadcast": "broadcast", "reduce": "reduce", "send": "send", "recv": "recv",
                 "barrier": "barrier", "gather": "gather", "scatter": "scatter"}
_KERNEL_KIND = re.compile(r"(?:nccl|rccl)(?:Dev)?Kernel_([A-Za-z]+)", _I)
_STRIP = re.compile(r"^_+|_+$|_(?:base|coalesced|into_tensor|tensor)$")


def collective_kind(name: str | None) -> str | None:
    """The normalised kind of a collective (``all_reduce``, ``all_gather``, ``reduce_scatter``, ``broadcast``,
    ``reduce``, ``all_to_all``, ``send``/``recv``/``send_recv``, ``barrier``...), or None.

    Reads a ``Collective name`` arg (``allreduce``, ``_allgather_base``, ``reduce_scatter_tensor_coalesced``),
    an NCCL/RCCL kernel name (``ncclDevKernel_AllReduce_Sum_f32_RING_LL``, ``ncclKernel_Broadcast_...``) or a
    backend annotation (``gloo:all_reduce``, ``nccl:all_gather``).
    """
    if not name:
        return None
    m = _KERNEL_KIND.search(name)
    if m:
        word = m.group(1)
    else:
        word = name.split(":", 1)[1] if ":" in name and not name.startswith("c10d::") else name
        word = word.removeprefix("c10d::")
    word = word.strip().lower()
    for _ in range(4):  # _allgather_into_tensor_coalesced -> allgather, c10d::_reduce_scatter_base_
        word = _STRIP.sub("", word)
    return _KIND_ALIASES.get(word.replace("_", ""))
