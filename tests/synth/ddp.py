"""Synthetic multi-GPU ``DistributedDataParallel`` (NCCL) traces: one file per rank, rank r on GPU r.

The op structure is the one of ``tests/data/h200/ddp1_nccl_rank0`` / ``ddp2_gloo_rank*``
(``DistributedDataParallel.forward`` with the buffer broadcast ``c10d::broadcast_`` > ``record_param_comms``
> ``nccl:broadcast``; backward on ``pt_autograd_N``; per bucket ``torch::distributed::reducer::mul_out``
then ``c10d::allreduce_`` > ``record_param_comms`` > ``nccl:all_reduce``; ``copy_bucket_to_grad`` after
the last bucket) with what several NCCL ranks add: ``ncclDevKernel_*`` kernels on NCCL's own stream that
overlap backward compute, with the CIFAR VGG16 bucket sizes of the fixtures.

Collectives are placed the way NCCL runs them: rank r's kernel starts when it is launched (and its stream
is free) and every rank's kernel ends together, ``duration`` after the last rank started. A ``straggler``
rank's first backward kernel runs ``delay_us`` longer, so it starts every gradient allreduce ``delay_us``
late and the others' kernels wait that long.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.synth import names as N
from tests.synth.expect import expected_figures
from tests.synth.kineto import TS0_US, Op, RankTrace

NCCL_STREAM = 21
STEPS = (3, 4, 5)
BUCKET_NUMELS = (2365450, 7082496, 5280320)  # rebuilt buckets of CIFAR VGG16 in the DDP fixtures
BUCKET_AFTER_OP = (2, 5, 7)  # index in names.BWD_OPS after which each bucket is ready
BUFFER_NUMEL = 8448


@dataclass(frozen=True)
class DdpParams:
    """Durations (µs); data loading varies per step (one value per step)."""

    data_loading_us: tuple[float, ...] = (300.0, 400.0, 500.0)
    h2d_us: float = 40.0
    bcast_us: float = 10.0  # buffer broadcast kernel (fits inside its 30 µs c10d::broadcast_ op)
    fwd_kernel_us: float = 500.0
    loss_kernel_us: float = 10.0
    bwd_kernel_us: float = 750.0
    mul_out_us: float = 5.0
    allreduce_us: tuple[float, ...] = (900.0, 1000.0, 600.0)  # per bucket, once every rank has arrived
    copy_us: float = 5.0  # copy_bucket_to_grad, per bucket
    optim_kernel_us: float = 20.0


@dataclass(frozen=True)
class Collective:
    """What a rank's step generator yields at each collective launch; it is sent back (start, end)."""

    name: str  # broadcast | allreduce
    annotation: str  # the CPU annotation, nccl:broadcast | nccl:all_reduce
    launch_at: float
    parent: Op
    numel: int


def _pid(rank: int) -> int:
    return 5000 + 100 * rank


def build_ddp(n_ranks: int, straggler: int | None = None, delay_us: float = 400.0,
              p: DdpParams | None = None) -> tuple[list[RankTrace], dict[int, list[tuple[int, float, float]]],
                                                   list[dict[str, Any]]]:
    """Place three DDP steps on ``n_ranks`` ranks; returns traces, steps per rank and the collectives."""
    if n_ranks < 2:
        raise ValueError("a multi-rank DDP trace needs n_ranks >= 2")
    p = p or DdpParams()
    ranks = tuple(range(n_ranks))
    traces = [RankTrace(rank=r, pid=_pid(r), devices=(r,), world_size=n_ranks, backend="nccl",
                        pg_ranks=ranks, nccl_version="2.28.9", first_corr=100000 + 1000000 * r) for r in ranks]
    for tr in traces:
        tr.thread(tr.pid + 40, f"pt_autograd_{tr.rank}")
    steps: dict[int, list[tuple[int, float, float]]] = {r: [] for r in ranks}
    collectives: list[dict[str, Any]] = []
    stream_free = dict.fromkeys(ranks, 0.0)
    t = TS0_US + 1000.0
    for k, number in enumerate(STEPS):
        gens = [_rank_step(tr, p, number, t, p.data_loading_us[k], n_ranks,
                           delay_us if tr.rank == straggler else 0.0) for tr in traces]
        pending = [next(g) for g in gens]
        ends: dict[int, float] = {}
        while pending:
            colls: list[Collective] = pending  # type: ignore[assignment]
            starts = {r: max(c.launch_at + 4.0, stream_free[r]) for r, c in zip(ranks, colls, strict=True)}
            dur = p.bcast_us if colls[0].name == "broadcast" else p.allreduce_us[_bucket(collectives)]
            end = max(starts.values()) + dur
            first = min(starts.values())
            late = [r for r in ranks if starts[r] == max(starts.values())]
            collectives.append({"index": len(collectives), "name": colls[0].annotation, "starts_us": starts,
                                "skew_us": max(starts.values()) - first,
                                "last_rank": late[0] if len(late) == 1 else None})
            nxt = []
            for r, g in zip(ranks, gens, strict=True):
                stream_free[r] = end
                try:
                    nxt.append(g.send((starts[r], end)))
                except StopIteration as stop:
                    ends[r] = stop.value
            pending = nxt
        assert len(set(ends.values())) == 1, ends  # every rank leaves the last allreduce together
        for r in ranks:
            steps[r].append((number, t, ends[r]))
        t = ends[0]
    return traces, steps, collectives


def _bucket(collectives: list[dict[str, Any]]) -> int:
    """Index of the next gradient bucket: allreduces so far, modulo the bucket count (3 per step)."""
    return sum(1 for c in collectives if c["name"] == "nccl:all_reduce") % len(BUCKET_NUMELS)


def _collective_ops(tr: RankTrace, tid: int, name: str, at: float, numel: int, n_ranks: int) -> Collective:
    """``c10d::<name>_`` > ``record_param_comms`` > ``nccl:<name>`` (30 µs), the launch 8 µs in."""
    c10d = {"broadcast": "c10d::broadcast_", "allreduce": "c10d::allreduce_"}[name]
    tr.op(tid, c10d, at, 30.0)
    tr.op(tid, "record_param_comms", at + 2.0, 26.0, args={
        "Collective name": name, "Process Group Description": "default_pg", "dtype": "Float",
        "Rank": tr.rank, "Out msg nelems": numel, "Process Group Name": "0", "Global rank stride": 1,
        "Out split size": "[]", "In split size": "[]", "Process Group Ranks": str(list(range(n_ranks))),
        "Group size": n_ranks, "Global rank start": 0, "In msg nelems": numel})
    ann = tr.annotate(tid, "nccl:" + ("all_reduce" if name == "allreduce" else name), at + 5.0, 20.0)
    return Collective(name, ann.name, at + 8.0, ann, numel)


def _launch_collective(tr: RankTrace, tid: int, coll: Collective, start: float, end: float,
                       n_ranks: int) -> None:
    kernel = N.NCCL_BROADCAST if coll.name == "broadcast" else N.NCCL_ALLREDUCE
    tr.kernel(tid, coll.launch_at, coll.parent, tr.rank, kernel, start, end - start, NCCL_STREAM, comm=True,
              extra={"Collective name": coll.name, "In msg nelems": coll.numel, "Out msg nelems": coll.numel,
                     "Group size": n_ranks, "dtype": "Float", "In split size": "[]", "Out split size": "[]",
                     "Process Group Name": "0", "Process Group Description": "default_pg",
                     "Process Group Ranks": str(list(range(n_ranks)))})


def _rank_step(tr: RankTrace, p: DdpParams, number: int, t0: float, dl_us: float, n_ranks: int,
               delay_us: float) -> Generator[Collective, tuple[float, float], float]:
    m, a, d = tr.pid, tr.pid + 40, tr.rank
    c = t0 + 10.0  # no op: idle
    tr.annotate(m, N.DATALOADER_NEXT, c, dl_us)
    c += dl_us
    to = tr.op(m, "aten::to", c, 60.0)
    cp = tr.op(m, "aten::copy_", c + 6.0, 50.0)
    tr.copy(m, c + 8.0, cp, d, "HtoD", c + 12.0, p.h2d_us, 128 // n_ranks * 3 * 32 * 32 * 4)
    c = to.end + 2.0

    fwd_start = c
    c += 3.0  # inside DistributedDataParallel.forward only: idle (the annotation only encloses)
    coll = _collective_ops(tr, m, "broadcast", c, BUFFER_NUMEL, n_ranks)
    start, end = yield coll
    _launch_collective(tr, m, coll, start, end, n_ranks)
    c = max(c + 30.0, end) + 2.0
    for op_name, kname in zip(N.FWD_OPS, N.FWD_KERNELS, strict=True):
        c = tr.op_kernel(m, op_name, c, d, kname, p.fwd_kernel_us).end + 1.0
    fwd = tr.annotate(m, N.DDP_FORWARD, fwd_start, c - fwd_start)
    c += 3.0
    loss = tr.op(m, "aten::cross_entropy_loss", c, 2 * (p.loss_kernel_us + 7.0) + 2.0)
    s1 = tr.op_kernel(m, "aten::log_softmax", c + 0.5, d, N.LOSS_FWD, p.loss_kernel_us)
    tr.op_kernel(m, "aten::nll_loss_nd", s1.end + 0.5, d, N.LOSS_FWD, p.loss_kernel_us)
    c = loss.end + 2.0
    tr.annotate(m, N.ZERO_GRAD, c, 40.0)
    c = tr.op_kernel(m, "aten::ones_like", c + 42.0, d, N.FILL, 2.0).end + 2.0

    for op_name in ("NllLossBackward0", "LogSoftmaxBackward0"):
        c = tr.op_kernel(a, op_name, c, d, N.NLL_BWD, p.loss_kernel_us, wrapper=N.EVALUATE.format(op_name)).end + 1.0
    bucket = 0
    end = c
    for j, (op_name, kname) in enumerate(zip(N.BWD_OPS, N.BWD_KERNELS, strict=True)):
        dur = p.bwd_kernel_us + (delay_us if j == 0 else 0.0)
        c = tr.op_kernel(a, op_name, c, d, kname, dur, wrapper=N.EVALUATE.format(op_name)).end + 1.0
        if j == BUCKET_AFTER_OP[bucket]:
            c = tr.op_kernel(a, "torch::distributed::reducer::mul_out", c, d, N.FOREACH_MUL, p.mul_out_us).end + 1.0
            coll = _collective_ops(tr, a, "allreduce", c, BUCKET_NUMELS[bucket], n_ranks)
            start, end = yield coll
            _launch_collective(tr, a, coll, start, end, n_ranks)
            c += 31.0
            bucket += 1
    # finalize_backward waits for the last allreduce (no op recorded), then copies buckets into .grad
    c = max(c, end) + 2.0
    for _ in BUCKET_NUMELS:
        op = tr.op(a, "torch.distributed.ddp.reducer::copy_bucket_to_grad", c, p.copy_us + 8.0)
        tr.copy(a, c + 1.0, op, d, "DtoD", c + 5.0, p.copy_us, 4 * 1024)
        c = op.end + 1.0

    opt_start = c
    for op_name in ("aten::_foreach_mul_", "aten::_foreach_add_", "aten::_foreach_add_"):
        c = tr.op_kernel(m, op_name, c + 1.0, d, N.FOREACH_MUL, p.optim_kernel_us).end
    opt = tr.annotate(m, N.OPTIMIZER_STEP, opt_start, c + 1.0 - opt_start)
    step_end = opt.end + 25.0
    step = tr.annotate(m, N.PROFILER_STEP.format(number), t0, step_end - t0)
    spans = [s for s in tr.gpu if t0 <= s.start < step_end]
    tr.gpu_annotation(d, step.name, min(s.start for s in spans), max(s.end for s in spans), step.ext)
    tr.gpu_annotation(d, fwd.name, fwd_start + 10.0, fwd.end, fwd.ext)
    return step_end


def write_ddp_run(tmp_path: Path, n_ranks: int, straggler: int | None = None,
                  delay_us: float = 400.0) -> tuple[Path, dict[str, Any]]:
    """Write a DDP run directory (one trace per rank) under ``tmp_path``; returns ``traces/`` and the expected
    figures (``tests.synth.expect.expected_figures`` plus ``collectives``, ``straggler``, ``delay_us``)."""
    from tests.synth.rundir import write_run

    traces, steps, collectives = build_ddp(n_ranks, straggler, delay_us)
    expected = expected_figures(traces, steps, "ddp")
    expected.update(n_ranks=n_ranks, straggler=straggler, delay_us=delay_us if straggler is not None else 0.0,
                    collectives=collectives)
    name = f"ddp{n_ranks}" + (f"_straggler{straggler}" if straggler is not None else "")
    folder = write_run(tmp_path / name, traces, strategy="ddp", gpus=n_ranks, backend="nccl")
    return folder, expected
