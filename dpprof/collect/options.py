"""Command-line options that ``dpprof profile`` and ``dpprof run`` share, declared once.

Both commands drive the same profiler window and NVML sampler (:class:`ProfilerSettings`), launch DDP/FSDP
ranks through the same torchrun launcher (:class:`Topology`) and write the same run directory.
"""

from __future__ import annotations

import argparse
from typing import Any

from dpprof.errors import DpprofError


def add_profiler_options(g: Any) -> None:
    """The profiler window (counted in steps), what it records, and the NVML period."""
    g.add_argument("--profile-wait", type=int, default=2, help="steps before the profiler starts (default 2)")
    g.add_argument("--profile-warmup", type=int, default=1, help="profiler warm-up steps, discarded (default 1)")
    g.add_argument("--profile-active", type=int, default=3, help="profiled steps written to the trace (default 3)")
    g.add_argument("--no-profile", action="store_true", help="no torch.profiler (NVML and step times only)")
    g.add_argument("--no-all-threads", action="store_true",
                   help="do not record all threads (DP's parallel_apply threads then lose their CPU ops)")
    g.add_argument("--record-shapes", action="store_true", help="record operator input shapes")
    g.add_argument("--with-stack", action="store_true", help="record Python stacks (large traces)")
    g.add_argument("--nvml-period-ms", type=int, default=100, help="NVML polling period (default 100 ms)")


def profiler_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of :class:`dpprof.collect.config.ProfilerSettings` from the parsed options."""
    return {"profile": not args.no_profile, "profile_wait": args.profile_wait,
            "profile_warmup": args.profile_warmup, "profile_active": args.profile_active,
            "profile_all_threads": not args.no_all_threads, "record_shapes": args.record_shapes,
            "with_stack": args.with_stack, "nvml_period_ms": args.nvml_period_ms}


def add_launch_options(g: Any, nproc_default: int | None, who: str) -> None:
    """torchrun's topology: processes per node, nodes, and the c10d rendezvous (``who``: ddp, ...)."""
    default = f" (default {nproc_default})" if nproc_default is not None else " (default: one process, no torchrun)"
    g.add_argument("--nproc", type=int, default=nproc_default, help=f"{who}: processes per node, launched through torchrun{default}")
    g.add_argument("--nnodes", type=int, default=1, help=f"{who}: number of nodes (torchrun c10d rendezvous)")
    g.add_argument("--node-rank", type=int, default=0, help=f"{who}: this node's rank (c10d assigns its own)")
    g.add_argument("--rdzv-endpoint", help=f"{who}: HOST:PORT of the rendezvous, the same on every node")
    g.add_argument("--rdzv-id", help=f"{who}: rendezvous id, the same on every node (names the run directory)")


def topology(args: argparse.Namespace, nproc: int) -> Any:
    """The launcher's :class:`~dpprof.collect.launch.Topology`; every node must agree on the run directory."""
    from dpprof.collect.launch import Topology

    if nproc < 1 or args.nnodes < 1:
        raise DpprofError("--nproc and --nnodes must be at least 1")
    if args.nnodes > 1 and not (args.run_name or args.rdzv_id):
        raise DpprofError("with --nnodes > 1 give --run-name or --rdzv-id: every node must agree on the "
                          "run directory")
    return Topology(nproc_per_node=nproc, nnodes=args.nnodes, node_rank=args.node_rank,
                    rdzv_endpoint=args.rdzv_endpoint, rdzv_id=args.rdzv_id)


def add_output_options(g: Any, default_name: str) -> None:
    g.add_argument("--out", default="traces", help="parent folder of the run directory (default traces)")
    g.add_argument("--run-name", help=f"run directory name (default {default_name})")
    g.add_argument("--report", action="store_true", help="write the HTML report when the run ends")
