"""Synthetic multi-GPU ``DistributedDataParallel`` (NCCL) traces, one file per rank, rank r on GPU r.

Built the way DDP runs (torch/nn/parallel/distributed.py, torch/csrc/distributed/c10d/reducer.cpp) with the
host running ahead of the GPU (tests/synth/streams.py):

* ``DistributedDataParallel.forward`` broadcasts the buffers (``c10d::broadcast_`` > ``record_param_comms`` >
  ``nccl:broadcast``) and runs the forward; backward runs on the autograd thread;
* when a bucket's gradients are ready the reducer scales them (``torch::distributed::reducer::mul_out``, a kernel
  on the compute stream) and issues ``c10d::allreduce_``: ProcessGroupNCCL makes its own stream wait for the
  compute stream's event and launches the kernel there (ProcessGroupNCCL.cpp ``collective()``), so the
  allreduce overlaps the rest of backward;
* ``finalize_backward`` makes the compute stream wait for the allreduces (``Work::wait``), then copies the
  buckets into ``.grad`` (``copy_bucket_to_grad``); the optimizer runs; ``loss.item()`` synchronises.

A ``straggler`` rank runs its backward ``slow_factor`` times slower on its GPU: its host enqueues at the same
times as the others (the host is ahead), but its allreduce kernels start late and everyone else's wait. Each
rank's clock is shifted by ``CLOCK_SHIFT_US[rank]`` (another host's clock).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tests.synth import names as N
from tests.synth.expect import expected_rows
from tests.synth.kineto import TS0_US, RankTrace
from tests.synth.ranks import NCCL_STREAM, Launch, RankStep, comm_ops, item, launching_op, run_steps
from tests.synth.streams import Streams

STEPS = (3, 4, 5)
BUCKET_NUMELS = (2365450, 7082496, 5280320)  # rebuilt buckets of CIFAR VGG16 in the DDP fixtures
BUCKET_AFTER_OP = (2, 5, 7)  # index in names.BWD_OPS after which each bucket is ready
BUFFER_NUMEL = 8448
#: Injected clock error of each rank's host (µs): what the analysis must align away.
CLOCK_SHIFT_US = (0.0, 37.5, -120.25, 80.125)


@dataclass(frozen=True)
class DdpParams:
    """Durations (µs); data loading varies per step (one value per step)."""

    data_loading_us: tuple[float, ...] = (300.0, 400.0, 500.0)
    h2d_us: float = 40.0
    bcast_transfer_us: float = 10.0
    fwd_kernel_us: float = 500.0
    loss_kernel_us: float = 10.0
    bwd_kernel_us: float = 750.0
    mul_out_us: float = 5.0
    allreduce_transfer_us: tuple[float, ...] = (900.0, 1000.0, 600.0)  # per bucket, once every rank has arrived
    copy_us: float = 5.0  # copy_bucket_to_grad, per bucket
    optim_kernel_us: float = 20.0
    op_host_us: float = 8.0
    straggler: int | None = None
    slow_factor: float = 1.4


VARIANTS: dict[str, DdpParams] = {
    "balanced": DdpParams(),
    "straggler": DdpParams(straggler=-1),
    "slow_link": DdpParams(allreduce_transfer_us=(9000.0, 10000.0, 6000.0)),
    # A rank 3 % slower: the others wait for it at every bucket, but backward's remaining kernels hide most of it.
    "mild_straggler": DdpParams(straggler=-1, slow_factor=1.03),
}


def _pid(rank: int) -> int:
    return 5000 + 100 * rank


def params(variant: str, n_ranks: int) -> DdpParams:
    from dataclasses import replace

    p = VARIANTS[variant]
    return replace(p, straggler=n_ranks - 1) if p.straggler == -1 else p


def build_ddp(n_ranks: int, variant: str) -> tuple[list[RankTrace], list[Streams],
                                                   dict[int, list[tuple[int, float, float]]]]:
    """Three DDP steps on ``n_ranks`` ranks: traces, what was placed per rank, and each rank's steps."""
    if n_ranks < 2:
        raise ValueError("a multi-rank DDP trace needs n_ranks >= 2")
    p = params(variant, n_ranks)
    ranks = tuple(range(n_ranks))
    traces = [RankTrace(rank=r, pid=_pid(r), devices=(r,), world_size=n_ranks, backend="nccl", pg_ranks=ranks,
                        nccl_version="2.28.9", first_corr=100000 + 1000000 * r,
                        clock_shift_us=CLOCK_SHIFT_US[r % len(CLOCK_SHIFT_US)]) for r in ranks]
    for tr in traces:
        tr.thread(tr.pid + 40, f"pt_autograd_{tr.rank}")
    streams = [Streams(tr) for tr in traces]
    steps = run_steps(streams, lambda st, number, t0, k: _rank_step(st, p, number, t0, k, n_ranks), STEPS,
                      TS0_US + 1000.0)
    return traces, streams, steps


def _rank_step(st: Streams, p: DdpParams, number: int, t0: float, k: int, n: int) -> RankStep:
    tr = st.tr
    m, a, d = tr.pid, tr.pid + 40, tr.rank
    slow = p.slow_factor if d == p.straggler else 1.0
    c = t0 + 10.0
    tr.annotate(m, N.DATALOADER_NEXT, c, p.data_loading_us[k])
    c += p.data_loading_us[k]
    to = tr.op(m, "aten::to", c, 20.0)
    st.host_copy(m, c + 8.0, to, d, "HtoD", p.h2d_us, 128 // n * 3 * 32 * 32 * 4)
    c = to.end + 2.0

    fwd_start = c
    c += 3.0
    ann, extra = comm_ops(tr, m, "c10d::broadcast_", "broadcast", "nccl:broadcast", c, BUFFER_NUMEL, BUFFER_NUMEL, n)
    st.wait_event(d, NCCL_STREAM, st.drained(d), d)  # the NCCL stream waits for the compute stream
    yield Launch(m, ann.start + 3.0, ann, NCCL_STREAM, N.NCCL_BROADCAST, "broadcast", p.bcast_transfer_us, extra)
    c += 32.0
    for op_name, kname in zip(N.FWD_OPS, N.FWD_KERNELS, strict=True):
        c = launching_op(st, m, op_name, c, p.op_host_us, kname, p.fwd_kernel_us) + 1.0
    tr.annotate(m, N.DDP_FORWARD, fwd_start, c - fwd_start)
    c += 3.0
    loss = tr.op(m, "aten::cross_entropy_loss", c, 2 * p.op_host_us + 3.0)
    t = launching_op(st, m, "aten::log_softmax", c + 1.0, p.op_host_us, N.LOSS_FWD, p.loss_kernel_us)
    launching_op(st, m, "aten::nll_loss_nd", t + 1.0, p.op_host_us, N.LOSS_FWD, p.loss_kernel_us)
    c = loss.end + 2.0
    tr.annotate(m, N.ZERO_GRAD, c, 40.0)
    c = launching_op(st, m, "aten::ones_like", c + 42.0, p.op_host_us, N.FILL, 2.0) + 2.0

    for op_name in ("NllLossBackward0", "LogSoftmaxBackward0"):
        c = launching_op(st, a, op_name, c + 0.5, p.op_host_us, N.NLL_BWD, p.loss_kernel_us, wrapper=True) + 2.0
    bucket = 0
    for j, (op_name, kname) in enumerate(zip(N.BWD_OPS, N.BWD_KERNELS, strict=True)):
        c = launching_op(st, a, op_name, c + 0.5, p.op_host_us, kname, p.bwd_kernel_us * slow, wrapper=True) + 2.0
        if j == BUCKET_AFTER_OP[bucket]:
            c = launching_op(st, a, "torch::distributed::reducer::mul_out", c, p.op_host_us, N.FOREACH_MUL,
                             p.mul_out_us) + 1.0
            numel = BUCKET_NUMELS[bucket]
            ann, extra = comm_ops(tr, a, "c10d::allreduce_", "allreduce", "nccl:all_reduce", c, numel, numel, n)
            st.wait_event(d, NCCL_STREAM, st.drained(d), d)
            yield Launch(a, ann.start + 3.0, ann, NCCL_STREAM, N.NCCL_ALLREDUCE, "all_reduce",
                         p.allreduce_transfer_us[bucket], extra)
            c += 31.0
            bucket += 1
    st.wait_event(d, 7, st.drained(d, NCCL_STREAM), d)  # finalize_backward: Work::wait on the compute stream
    for _ in BUCKET_NUMELS:
        op = tr.op(a, "torch.distributed.ddp.reducer::copy_bucket_to_grad", c, 10.0)
        st.copy(a, c + 1.0, op, d, d, p.copy_us, 4 * 1024)
        c = op.end + 1.0
    opt_start = c + 2.0
    t = opt_start
    for op_name in ("aten::_foreach_mul_", "aten::_foreach_add_", "aten::_foreach_add_"):
        t = launching_op(st, m, op_name, t + 1.0, p.op_host_us, N.FOREACH_MUL, p.optim_kernel_us)
    opt = tr.annotate(m, N.OPTIMIZER_STEP, opt_start, t + 1.0 - opt_start)
    return item(st, m, opt.end + 2.0, number, t0)


def write_ddp_run(tmp_path: Path, n_ranks: int, variant: str = "balanced") -> tuple[Path, dict[str, Any]]:
    """Write a DDP run directory under ``tmp_path``; returns its ``traces/`` folder and the expected figures
    (``rows`` per (rank, device, step), the injected ``clock_shift_us`` and the straggler)."""
    from tests.synth.rundir import write_run

    traces, streams, steps = build_ddp(n_ranks, variant)
    p = params(variant, n_ranks)
    placed = [x for st in streams for x in st.placed]
    expected: dict[str, Any] = {
        "strategy": "ddp", "variant": variant, "n_ranks": n_ranks, "params": asdict(p), "steps": steps,
        "rows": expected_rows(placed, steps), "clock_shift_us": {tr.rank: tr.clock_shift_us for tr in traces},
        "straggler": p.straggler, "collectives_per_step": 1 + len(BUCKET_NUMELS)}
    folder = write_run(tmp_path / f"ddp{n_ranks}_{variant}", traces, strategy="ddp", gpus=n_ranks,
                       backend="nccl")
    return folder, expected
