"""Synthetic multi-GPU ``nn.DataParallel`` traces with known phase durations.

The op structure is the one of ``tests/data/h200/dp_dup00`` (one training step under
``DataParallel.forward``: ``Scatter``, ``Broadcast``, replica threads with only runtime rows, ``Gather``,
loss, ``GatherBackward`` with its nested ``Scatter``, per-device ``pt_autograd_N`` threads,
``BroadcastBackward`` > ``ReduceAddCoalesced``, ``Optimizer.step#SGD.step`` on GPU0) with what a run on N
distinct GPUs adds: ``Memcpy PtoP`` scatter copies onto GPU i, NCCL broadcast and reduce kernels on every
GPU, gather copies into GPU0, and replica kernels on each GPU. One rank, one file.

Variants:
- ``balanced``: tiny DP phases, compute dominates and is equal on all GPUs.
- ``gpu0_serial``: GPU0 does large serialised work (flattening for the broadcast, gather copies, the
  reduce's root, loss and optimizer) while the other GPUs idle.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.synth import names as N
from tests.synth.expect import expected_figures
from tests.synth.kineto import TS0_US, RankTrace

MAIN_TID = 4100
SIDE_STREAM = 13  # comm.scatter's per-device copy streams
NCCL_STREAM = 21
STEPS = (3, 4, 5)
#: dpprof's own DP phase markers (dpprof/collect/strategies.py DP_MARKS), copied to keep torch out.
MARKS = {"scatter": "dpprof::dp_scatter", "replicate": "dpprof::dp_replicate",
         "parallel_apply": "dpprof::dp_parallel_apply", "gather": "dpprof::dp_gather"}
INPUT_BYTES = 128 * 3 * 32 * 32 * 4


@dataclass(frozen=True)
class DpParams:
    """Durations (µs) of the GPU work placed in each step; data loading varies per step (one per step)."""

    data_loading_us: tuple[float, ...]
    h2d_us: float
    scatter_copy_us: float  # per destination GPU i >= 1
    bcast_flatten_us: float  # aten::cat on GPU0 before the broadcast
    bcast_nccl_us: float  # broadcast kernel on every GPU
    fwd_kernel_us: float  # each of len(names.FWD_KERNELS) replica kernels per GPU
    gather_copy_us: float  # per source GPU, into GPU0
    loss_kernel_us: float  # each of 2 loss kernels, GPU0
    bwd_kernel_us: float  # each of len(names.BWD_KERNELS) replica kernels per GPU
    reduce_flatten_us: float  # aten::cat per GPU before the reduce
    reduce_nccl_us: float  # reduce kernel on GPUs i >= 1
    reduce_root_extra_us: float  # GPU0, the reduce's root, runs its reduce kernel this much longer
    optim_kernel_us: float  # each of 3 optimizer kernels, GPU0
    memset_us: float = 2.0  # one memset per GPU in backward


VARIANTS: dict[str, DpParams] = {
    "balanced": DpParams(data_loading_us=(300.0, 400.0, 500.0), h2d_us=40.0, scatter_copy_us=10.0,
                         bcast_flatten_us=8.0, bcast_nccl_us=20.0, fwd_kernel_us=500.0, gather_copy_us=4.0,
                         loss_kernel_us=10.0, bwd_kernel_us=750.0, reduce_flatten_us=8.0,
                         reduce_nccl_us=25.0, reduce_root_extra_us=0.0, optim_kernel_us=20.0),
    "gpu0_serial": DpParams(data_loading_us=(300.0, 400.0, 500.0), h2d_us=40.0, scatter_copy_us=150.0,
                            bcast_flatten_us=1200.0, bcast_nccl_us=800.0, fwd_kernel_us=100.0,
                            gather_copy_us=300.0, loss_kernel_us=200.0, bwd_kernel_us=150.0,
                            reduce_flatten_us=100.0, reduce_nccl_us=600.0, reduce_root_extra_us=900.0,
                            optim_kernel_us=700.0),
}


def _replica_tid(device: int) -> int:
    return 139_700_000 + 64 * device  # parallel_apply's threads: large ids, no thread_name row


def _autograd_tid(device: int) -> int:
    return MAIN_TID + 40 + device


def build_dp(n_gpus: int, variant: str, marks: bool = False
             ) -> tuple[RankTrace, dict[int, list[tuple[int, float, float]]]]:
    """Place three DP steps on ``n_gpus`` GPUs; returns the trace and ``{rank: [(step, start, end)]}``.

    ``marks``: also write dpprof's own phase markers (``dpprof::dp_*``, dpprof/collect/strategies.py) and,
    inside ``dpprof::dp_replicate``, the rest of replicate that has no torch op of its own: the buffer
    broadcast (flatten + NCCL broadcast) and 30 µs of replica set-up with no op.
    """
    if n_gpus < 2:
        raise ValueError("a multi-GPU DP trace needs n_gpus >= 2")
    p = VARIANTS[variant]
    devices = tuple(range(n_gpus))
    tr = RankTrace(rank=0, pid=MAIN_TID, devices=devices, world_size=None, backend=None)
    for d in devices:
        tr.thread(_autograd_tid(d), f"pt_autograd_{d}")
        tr.thread(_replica_tid(d), None)
    steps = []
    t = TS0_US + 1000.0
    for k, number in enumerate(STEPS):
        end = _step(tr, p, devices, number, t, p.data_loading_us[k], marks)
        steps.append((number, t, end))
        t = end
    return tr, {0: steps}


def _step(tr: RankTrace, p: DpParams, devices: tuple[int, ...], number: int, t0: float, dl_us: float,
          marks: bool) -> float:
    m = MAIN_TID
    c = t0 + 10.0  # 10 µs with no op at all: idle
    tr.annotate(m, N.DATALOADER_NEXT, c, dl_us)
    c += dl_us
    to = tr.op(m, "aten::to", c, 60.0)
    tr.op(m, "aten::_to_copy", c + 2.0, 56.0)
    cp = tr.op(m, "aten::copy_", c + 6.0, 50.0)
    tr.copy(m, c + 8.0, cp, 0, "HtoD", c + 12.0, p.h2d_us, INPUT_BYTES)
    c = to.end + 2.0  # 2 µs gap outside any op: idle

    fwd_start = c
    c += 5.0  # inside DataParallel.forward, no op: host
    # Scatter: chunk 0 stays a view on GPU0, chunk i is a peer copy onto GPU i on its side stream.
    sc = tr.op(m, "Scatter", c, 20.0 + p.scatter_copy_us + 3.5 * len(devices))
    tr.op(m, "aten::chunk", c + 1.0, 6.0)
    for i in devices[1:]:
        at = c + 8.0 + 3.5 * (i - 1)
        tr.copy(m, at, sc, i, "PtoP", at + 4.0, p.scatter_copy_us, INPUT_BYTES // len(devices), SIDE_STREAM)
    if marks:
        tr.annotate(m, MARKS["scatter"], sc.start - 1.0, sc.end - sc.start + 2.0)
    c = sc.end + 5.0
    # Broadcast: flatten on GPU0 (aten::cat), then one NCCL broadcast kernel per GPU, launched in a group.
    cat_end = c + 8.0 + p.bcast_flatten_us
    nccl_start = max(cat_end, c + 12.0 + 3.5 * len(devices)) + 1.0
    bc = tr.op(m, "Broadcast", c, nccl_start + p.bcast_nccl_us + 3.0 - c)
    fl = tr.op(m, "aten::flatten_dense_tensors", c + 1.0, 6.5)
    tr.kernel(m, c + 4.0, tr.op(m, "aten::cat", c + 3.5, 4.0), 0, N.CAT, c + 8.0, p.bcast_flatten_us)
    assert fl.end <= c + 8.0
    for i in devices:
        tr.kernel(m, c + 9.0 + 3.5 * i, bc, i, N.NCCL_BROADCAST, nccl_start, p.bcast_nccl_us, NCCL_STREAM,
                  comm=True, extra={"Collective name": "broadcast", "dtype": "Float"})
    tr.op(m, "aten::unflatten_dense_tensors", nccl_start, 2.0)
    c = bc.end  # unmarked: replica threads start right away (no "rest of replicate" to guess)
    if marks:
        c = _rest_of_replicate(tr, devices, bc.end + 1.0)
        tr.annotate(m, MARKS["replicate"], bc.start - 1.0, c - bc.start + 1.0)
        c += 1.0
        tr.annotate(m, MARKS["parallel_apply"], c, 4.0 * len(N.FWD_KERNELS) + 1.0)
    # parallel_apply: each replica thread only leaves runtime rows; kernels run back to back with 1 µs gaps.
    k_end = c
    for d in devices:
        for j, name in enumerate(N.FWD_KERNELS):
            start = c + 5.0 + j * (p.fwd_kernel_us + 1.0)
            tr.kernel(_replica_tid(d), c + 4.0 * j, None, d, name, start, p.fwd_kernel_us)
            k_end = max(k_end, start + p.fwd_kernel_us)
    # Gather starts on the CPU 20 µs before the replica kernels end (they still run: compute, not dp_gather).
    g0 = k_end - 20.0
    copy_start = k_end + 2.0
    ga = tr.op(m, "Gather", g0, copy_start + p.gather_copy_us * len(devices) + 3.0 - g0)
    if marks:
        tr.annotate(m, MARKS["gather"], g0 - 1.0, ga.end - g0 + 2.0)
    tr.op(m, "aten::empty", g0 + 0.5, 1.0)
    for i in devices:
        tr.copy(m, g0 + 2.0 + 3.5 * i, ga, 0, "DtoD" if i == 0 else "PtoP",
                copy_start + i * p.gather_copy_us, p.gather_copy_us, 128 * 10 * 4 // len(devices))
    fwd_end = ga.end + 2.0
    fwd = tr.annotate(m, N.DP_FORWARD, fwd_start, fwd_end - fwd_start)
    c = fwd_end + 3.0  # outside DataParallel.forward, no op: idle

    loss = tr.op(m, "aten::cross_entropy_loss", c, 2 * (p.loss_kernel_us + 7.0) + 2.0)
    s1 = tr.op_kernel(m, "aten::log_softmax", c + 0.5, 0, N.LOSS_FWD, p.loss_kernel_us)
    tr.op_kernel(m, "aten::nll_loss_nd", s1.end + 0.5, 0, N.LOSS_FWD, p.loss_kernel_us)
    c = loss.end + 2.0
    tr.annotate(m, N.ZERO_GRAD, c, 40.0)  # encloses nothing: idle
    c += 42.0
    c = tr.op_kernel(m, "aten::ones_like", c, 0, N.FILL, 2.0).end + 2.0

    a0 = _autograd_tid(0)
    c = tr.op_kernel(a0, "NllLossBackward0", c, 0, N.NLL_BWD, p.loss_kernel_us,
                     wrapper=N.EVALUATE.format("NllLossBackward0")).end + 1.0
    c = tr.op_kernel(a0, "LogSoftmaxBackward0", c, 0, N.NLL_BWD, p.loss_kernel_us,
                     wrapper=N.EVALUATE.format("LogSoftmaxBackward0")).end + 1.0
    gb_len = 14.0 + 3.5 * len(devices) + p.scatter_copy_us
    gbw = tr.op(a0, N.EVALUATE.format("GatherBackward"), c, gb_len)
    tr.op(a0, "GatherBackward", c + 0.5, gb_len - 1.0)
    ns = tr.op(a0, "Scatter", c + 1.0, gb_len - 2.0)
    for i in devices[1:]:
        at = c + 2.0 + 3.5 * (i - 1)
        tr.copy(a0, at, ns, i, "PtoP", at + 4.0, p.scatter_copy_us, 128 * 10 * 4 // len(devices), SIDE_STREAM)
    c = gbw.end + 1.0
    ends = []
    for d in devices:
        b = c
        for j, (op_name, kname) in enumerate(zip(N.BWD_OPS, N.BWD_KERNELS, strict=True)):
            b = tr.op_kernel(_autograd_tid(d), op_name, b, d, kname, p.bwd_kernel_us,
                             wrapper=N.EVALUATE.format(op_name), memset_us=p.memset_us if j == 0 else 0.0).end + 1.0
        ends.append(b)
    c = max(ends)
    # BroadcastBackward > ReduceAddCoalesced on pt_autograd_0: flatten per GPU, NCCL reduce into GPU0.
    bb_start = c
    rc = c + 1.0
    flat_end = rc
    for i in devices:
        at = rc + 1.0 + 8.0 * i
        op = tr.op(a0, "aten::flatten_dense_tensors", at, 7.0)
        cat = tr.op(a0, "aten::cat", at + 1.0, 5.0)
        assert cat.end <= op.end
        tr.kernel(a0, at + 1.5, cat, i, N.CAT, at + 6.0, p.reduce_flatten_us)
        flat_end = max(flat_end, at + 6.0 + p.reduce_flatten_us)
    launch0 = rc + 2.0 + 8.0 * len(devices)
    red_start = max(flat_end, launch0 + 3.5 * len(devices)) + 1.0
    red_end = red_start + p.reduce_nccl_us + p.reduce_root_extra_us
    rac = tr.op(a0, "ReduceAddCoalesced", rc, red_end + 3.0 - rc)
    for i in devices:
        tr.kernel(a0, launch0 + 3.5 * i, rac, i, N.NCCL_REDUCE, red_start,
                  p.reduce_nccl_us + (p.reduce_root_extra_us if i == 0 else 0.0), NCCL_STREAM, comm=True,
                  extra={"Collective name": "reduce", "dtype": "Float"})
    tr.op(a0, "aten::unflatten_dense_tensors", red_end, 2.0)
    tr.op(a0, "BroadcastBackward", bb_start + 0.5, rac.end + 0.5 - bb_start)
    tr.op(a0, N.EVALUATE.format("BroadcastBackward"), bb_start, rac.end + 1.0 - bb_start)
    c = rac.end + 1.0
    for _ in range(3):  # AccumulateGrad steals the reduced gradient: host time, no GPU work
        tr.op(a0, N.EVALUATE.format("torch::autograd::AccumulateGrad"), c, 10.0)
        tr.op(a0, "torch::autograd::AccumulateGrad", c + 2.0, 5.0)
        c += 11.0
    c += 2.0

    opt_start = c
    for op_name in ("aten::_foreach_mul_", "aten::_foreach_add_", "aten::_foreach_add_"):
        c = tr.op_kernel(m, op_name, c + 1.0, 0, N.FOREACH_MUL, p.optim_kernel_us).end  # 1 µs gaps: idle
    opt = tr.annotate(m, N.OPTIMIZER_STEP, opt_start, c + 1.0 - opt_start)
    step_end = opt.end + 25.0  # 25 µs with no op at the end of the step: idle
    step = tr.annotate(m, N.PROFILER_STEP.format(number), t0, step_end - t0)
    for d in devices:
        spans = [s for s in tr.gpu if s.device == d and t0 <= s.start < step_end]
        tr.gpu_annotation(d, step.name, min(s.start for s in spans), max(s.end for s in spans), step.ext)
    tr.gpu_annotation(0, fwd.name, sc.start + 12.0, copy_start + p.gather_copy_us * len(devices), fwd.ext)
    tr.gpu_annotation(0, opt.name, opt_start + 5.0, c - 2.0, opt.ext)
    return step_end


def _rest_of_replicate(tr: RankTrace, devices: tuple[int, ...], c: float) -> float:
    """Buffer broadcast (no torch op: flatten, then one NCCL broadcast per GPU launched outside any op) and
    30 µs of replica set-up with no op; returns its end."""
    tr.op(MAIN_TID, "aten::flatten_dense_tensors", c, 6.5)
    tr.kernel(MAIN_TID, c + 3.0, tr.op(MAIN_TID, "aten::cat", c + 2.5, 4.0), 0, N.CAT, c + 7.0, 3.0)
    start = c + 12.0 + 3.5 * len(devices)
    for i in devices:
        tr.kernel(MAIN_TID, c + 8.0 + 3.5 * i, None, i, N.NCCL_BROADCAST, start, 5.0, NCCL_STREAM, comm=True,
                  extra={"Collective name": "broadcast", "dtype": "Float"})
    return start + 5.0 + 30.0


def write_dp_run(tmp_path: Path, n_gpus: int, variant: str, marks: bool = False) -> tuple[Path, dict[str, Any]]:
    """Write a DP run directory under ``tmp_path``; returns its ``traces/`` folder and the expected figures.

    Expected: see ``tests.synth.expect.expected_figures`` plus ``variant``, ``n_gpus``, ``marks``,
    ``dp_mode`` and ``params`` (the DpParams as a dict). ``marks``: see ``build_dp``.
    """
    from tests.synth.rundir import write_run

    tr, steps = build_dp(n_gpus, variant, marks)
    expected = expected_figures([tr], steps, "dp", output_device=0)
    expected.update(variant=variant, n_gpus=n_gpus, marks=marks, dp_mode="multi_device",
                    params=vars(VARIANTS[variant]))
    name = f"dp{n_gpus}_{variant}" + ("_marked" if marks else "")
    traces = write_run(tmp_path / name, [tr], strategy="dp", gpus=n_gpus)
    return traces, expected
