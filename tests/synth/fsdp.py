"""Synthetic FSDP2 (``fully_shard``) traces over NCCL, one file per rank, rank r on GPU r.

Built the way FSDP2 runs a step (torch/distributed/fsdp/_fully_shard/_fsdp_param_group.py and
_fsdp_collectives.py), with the host running ahead of the GPU (tests/synth/streams.py):

* forward, per layer group i: ``FSDP::all_gather (i)`` > ``c10d::_allgather_base_`` > ``record_param_comms``
  (``_allgather_base``: in = the rank's shard, out = the whole group) > ``nccl:_allgather_base``, the kernel on
  FSDP's all-gather stream, which waits for the compute stream's event; ``FSDP::all_gather_copy_out`` (the
  compute stream waits for the all-gather, then copies out); the layer's forward kernels. The next group's
  all-gather is issued before this group's compute (forward prefetch), so it overlaps it;
* backward, in reverse: the group is all-gathered again (parameters were resharded after forward), its
  backward kernels run, and ``FSDP::post_backward_reduce`` issues ``c10d::_reduce_scatter_base_`` >
  ``record_param_comms`` (``_reduce_scatter_base``) > ``nccl:_reduce_scatter_base`` on the reduce-scatter
  stream after an event wait on the compute stream;
* the optimizer waits for the reduce-scatters (the root's post-backward callback) and steps the shards.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.synth import names as N
from tests.synth.expect import expected_rows
from tests.synth.kineto import TS0_US, RankTrace
from tests.synth.ranks import Launch, RankStep, comm_ops, item, launching_op, run_steps
from tests.synth.streams import Streams

STEPS = (3, 4, 5)
AG_STREAM, RS_STREAM = 22, 23
AG_KERNEL = "ncclDevKernel_AllGather_RING_LL(ncclDevKernelArgsStorage<4096ul>)"
RS_KERNEL = "ncclDevKernel_ReduceScatter_Sum_f32_RING_LL(ncclDevKernelArgsStorage<4096ul>)"


@dataclass(frozen=True)
class FsdpParams:
    groups: int = 3
    group_numel: int = 4_000_000  # parameters of one layer group (all ranks together)
    data_loading_us: float = 300.0
    fwd_kernel_us: float = 400.0  # per kernel, 2 per group
    bwd_kernel_us: float = 600.0  # per kernel, 2 per group
    all_gather_us: float = 300.0
    reduce_scatter_us: float = 450.0
    copy_out_us: float = 15.0
    optim_kernel_us: float = 20.0
    op_host_us: float = 8.0


def _pid(rank: int) -> int:
    return 7000 + 100 * rank


def build_fsdp(n_ranks: int, p: FsdpParams | None = None) -> tuple[list[RankTrace], list[Streams],
                                                                   dict[int, list[tuple[int, float, float]]]]:
    p = p or FsdpParams()
    ranks = tuple(range(n_ranks))
    traces = [RankTrace(rank=r, pid=_pid(r), devices=(r,), world_size=n_ranks, backend="nccl", pg_ranks=ranks,
                        nccl_version="2.28.9", first_corr=100000 + 1000000 * r) for r in ranks]
    for tr in traces:
        tr.thread(tr.pid + 40, f"pt_autograd_{tr.rank}")
    streams = [Streams(tr) for tr in traces]
    steps = run_steps(streams, lambda st, number, t0, k: _rank_step(st, p, number, t0, n_ranks), STEPS,
                      TS0_US + 1000.0)
    return traces, streams, steps


def _all_gather(st: Streams, p: FsdpParams, tid: int, i: int, c: float, n: int) -> tuple[Launch, float]:
    tr = st.tr
    tr.annotate(tid, f"FSDP::all_gather ({i})", c, 34.0)
    ann, extra = comm_ops(tr, tid, "c10d::_allgather_base_", "_allgather_base", "nccl:_allgather_base", c + 2.0,
                          p.group_numel // n, p.group_numel, n)
    st.wait_event(tr.rank, AG_STREAM, st.drained(tr.rank), tr.rank)  # the all-gather stream waits for compute
    return Launch(tid, ann.start + 3.0, ann, AG_STREAM, AG_KERNEL, "all_gather", p.all_gather_us, extra), c + 35.0


def _copy_out(st: Streams, p: FsdpParams, tid: int, c: float) -> float:
    d = st.tr.rank
    st.tr.annotate(tid, "FSDP::all_gather_copy_out", c, p.op_host_us + 2.0)
    st.wait_event(d, 7, st.drained(d, AG_STREAM), d)  # the compute stream waits for the all-gather
    return launching_op(st, tid, "aten::split_with_sizes_copy", c + 0.5, p.op_host_us, N.CAT, p.copy_out_us) + 2.0


def _rank_step(st: Streams, p: FsdpParams, number: int, t0: float, n: int) -> RankStep:
    tr = st.tr
    m, a, d = tr.pid, tr.pid + 40, tr.rank
    c = t0 + 10.0
    tr.annotate(m, N.DATALOADER_NEXT, c, p.data_loading_us)
    c += p.data_loading_us
    launch, c = _all_gather(st, p, m, 0, c, n)
    yield launch
    for i in range(p.groups):
        if i + 1 < p.groups:  # forward prefetch: the next group's all-gather before this group's compute
            launch, c = _all_gather(st, p, m, i + 1, c, n)
            yield launch
        c = _copy_out(st, p, m, c)
        for kname in N.FWD_KERNELS[:2]:
            c = launching_op(st, m, "aten::cudnn_convolution", c, p.op_host_us, kname, p.fwd_kernel_us) + 1.0
    c = launching_op(st, m, "aten::nll_loss_nd", c + 2.0, p.op_host_us, N.LOSS_FWD, 10.0) + 2.0
    for i in reversed(range(p.groups)):
        launch, c = _all_gather(st, p, a, i, c, n)
        yield launch
        c = _copy_out(st, p, a, c)
        for kname in N.BWD_KERNELS[:2]:
            c = launching_op(st, a, "ConvolutionBackward0", c + 0.5, p.op_host_us, kname, p.bwd_kernel_us,
                             wrapper=True) + 2.0
        tr.annotate(a, "FSDP::post_backward_reduce", c, 34.0)
        ann, extra = comm_ops(tr, a, "c10d::_reduce_scatter_base_", "_reduce_scatter_base",
                              "nccl:_reduce_scatter_base", c + 2.0, p.group_numel, p.group_numel // n, n)
        st.wait_event(d, RS_STREAM, st.drained(d), d)
        yield Launch(a, ann.start + 3.0, ann, RS_STREAM, RS_KERNEL, "reduce_scatter", p.reduce_scatter_us, extra)
        c += 35.0
    st.wait_event(d, 7, st.drained(d, RS_STREAM), d)  # the optimizer waits for the reduce-scatters
    opt_start = c + 2.0
    t = opt_start
    for op_name in ("aten::_foreach_mul_", "aten::_foreach_add_"):
        t = launching_op(st, m, op_name, t + 1.0, p.op_host_us, N.FOREACH_MUL, p.optim_kernel_us)
    opt = tr.annotate(m, N.OPTIMIZER_STEP, opt_start, t + 1.0 - opt_start)
    return item(st, m, opt.end + 2.0, number, t0)


def write_fsdp_run(tmp_path: Path, n_ranks: int) -> tuple[Path, dict[str, Any]]:
    """Write an FSDP run directory; returns its ``traces/`` folder and the expected figures (``rows``)."""
    from tests.synth.rundir import write_run

    traces, streams, steps = build_fsdp(n_ranks)
    placed = [x for st in streams for x in st.placed]
    expected: dict[str, Any] = {"strategy": "fsdp", "n_ranks": n_ranks, "steps": steps,
                                "rows": expected_rows(placed, steps)}
    return write_run(tmp_path / f"fsdp{n_ranks}", traces, strategy="fsdp", gpus=n_ranks, backend="nccl"), expected
