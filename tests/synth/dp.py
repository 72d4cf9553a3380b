"""Synthetic multi-GPU ``nn.DataParallel`` traces built the way PyTorch runs a DP step (one process, one trace).

The host runs ahead of the GPUs (tests/synth/streams.py) through torch/nn/parallel/data_parallel.py
``DataParallel.forward``, step by step:

1. ``scatter`` (torch/nn/parallel/_functions.py ``Scatter.forward`` -> torch/csrc/cuda/comm.cpp ``scatter``):
   the input is on GPU0, so chunk 0 stays a view and chunk i is a copy GPU0 -> GPU i, which Copy.cu runs on
   GPU0's current stream (no side streams: those are only for CPU inputs).
2. ``replicate`` (torch/nn/parallel/replicate.py): ``Broadcast.apply`` -> comm.broadcast_coalesced: per chunk,
   a flatten (``aten::cat``) on GPU0, then NCCL broadcast kernels on every device's current stream
   (torch/csrc/cuda/nccl.cpp ``broadcast``); the buffers the same way without a ``Broadcast`` op; then
   Python copies the modules for every replica (host time, no op).
3. ``parallel_apply`` (torch/nn/parallel/parallel_apply.py): one new thread per replica, each launching its
   replica's kernels on its device's current stream.
4. ``gather`` (``Gather.forward`` -> comm.gather): the output lands on GPU0; GPU i's chunk is copied on GPU i's
   stream (Copy.cu, source stream) and GPU0's stream waits for it; GPU0's own chunk is a DtoD copy.
5. Loss on GPU0; backward on the autograd engine's device threads: ``GatherBackward`` scatters grad_output
   from GPU0 (copies on GPU0's stream), every replica's backward on its device, then ``BroadcastBackward`` ->
   ``ReduceAddCoalesced`` (torch/nn/parallel/_functions.py) once every replica's backward has been *launched*:
   a flatten per device and NCCL reduce kernels into GPU0 (nccl.cpp ``reduce``) on the current streams.
6. ``optimizer.step()`` on GPU0, then ``loss.item()`` synchronises the host with GPU0 (the step ends there).

Variants (``VARIANTS``): ``balanced``; ``gpu0_bound`` (GPU0's data path and serial work dominate);
``slow_gpu`` (the last GPU runs its replica 3x slower); ``slow_gpu0`` (GPU0, the output device, does); ``slow_link`` (broadcast/reduce transfers and peer
copies 20x longer); ``host_bound`` (the replica threads spend 900 µs of host time per op, as cuDNN autotuning in
fresh threads does in the real ``dp_dup00`` trace). Expected figures come from ``Streams.placed``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from dpprof.vocabulary import DP_MARKS
from tests.synth import names as N
from tests.synth.expect import expected_rows
from tests.synth.kineto import TS0_US, RankTrace
from tests.synth.streams import Member, Streams, collective, item, launching_op

MAIN_TID = 4100
STEPS = (3, 4, 5)
#: dpprof's own DP phase markers, as the collector writes them (dpprof.vocabulary.DP_MARKS).
MARKS = DP_MARKS
INPUT_BYTES = 128 * 3 * 32 * 32 * 4
OUTPUT_BYTES = 128 * 10 * 4


@dataclass(frozen=True)
class DpParams:
    """Durations (µs) of what a DP step does; data loading varies per step (one value per step)."""

    data_loading_us: tuple[float, ...] = (300.0, 400.0, 500.0)
    h2d_us: float = 40.0
    scatter_copy_us: float = 10.0  # per destination GPU, on GPU0's stream
    flatten_us: float = 8.0  # aten::cat before each broadcast chunk (GPU0) and before the reduce (each GPU)
    bcast_transfer_us: float = 20.0  # per chunk, after the last device joined
    bcast_chunks: int = 2
    replicate_host_us: float = 60.0  # replicate's Python module copies, per replica
    fwd_kernel_us: float = 500.0  # each of len(names.FWD_KERNELS)
    gather_copy_us: float = 4.0  # per source GPU
    loss_kernel_us: float = 10.0
    bwd_kernel_us: float = 750.0  # each of len(names.BWD_KERNELS)
    reduce_transfer_us: float = 25.0
    optim_kernel_us: float = 20.0
    op_host_us: float = 8.0  # host time of an op that launches one kernel
    replica_op_host_us: float = 8.0  # the same on the replica threads
    slow_device: int | None = None
    slow_factor: float = 1.0


VARIANTS: dict[str, DpParams] = {
    "balanced": DpParams(),
    "gpu0_bound": DpParams(scatter_copy_us=150.0, flatten_us=600.0, bcast_transfer_us=500.0, fwd_kernel_us=100.0,
                           gather_copy_us=300.0, loss_kernel_us=200.0, bwd_kernel_us=150.0, reduce_transfer_us=900.0,
                           optim_kernel_us=700.0),
    "slow_gpu": DpParams(slow_device=-1, slow_factor=3.0),
    "slow_gpu0": DpParams(slow_device=0, slow_factor=3.0),  # the output device itself is the slow one
    "slow_link": DpParams(scatter_copy_us=200.0, bcast_transfer_us=400.0, gather_copy_us=80.0,
                          reduce_transfer_us=500.0),
    "host_bound": DpParams(fwd_kernel_us=100.0, bwd_kernel_us=150.0, replica_op_host_us=900.0),
}


def _replica_tid(device: int) -> int:
    return 139_700_000 + 64 * device  # parallel_apply's threads: large ids, no thread_name row


def _autograd_tid(device: int) -> int:
    return MAIN_TID + 40 + device


def params(variant: str, n_gpus: int) -> DpParams:
    p = VARIANTS[variant]
    return replace(p, slow_device=n_gpus - 1) if p.slow_device == -1 else p


def build_dp(n_gpus: int, variant: str, marks: bool = False, output_device: int = 0
             ) -> tuple[RankTrace, Streams, list[tuple[int, float, float]]]:
    """Three DP steps on ``n_gpus`` GPUs: the trace, what was placed, and the steps (number, start, end).

    ``output_device``: DP's ``output_device`` (where outputs are gathered and the loss runs); the parameters,
    the reduce's root and the optimizer stay on ``device_ids[0]`` = GPU0 (``Broadcast.backward`` reduces into
    the broadcast's input device, torch/nn/parallel/_functions.py)."""
    if n_gpus < 2:
        raise ValueError("a multi-GPU DP trace needs n_gpus >= 2")
    p = params(variant, n_gpus)
    devices = tuple(range(n_gpus))
    tr = RankTrace(rank=0, pid=MAIN_TID, devices=devices, world_size=None, backend=None)
    for d in devices:
        tr.thread(_autograd_tid(d), f"pt_autograd_{d}")
        tr.thread(_replica_tid(d), None)
    st = Streams(tr)
    steps = []
    t = TS0_US + 1000.0
    for k, number in enumerate(STEPS):
        end = _step(st, p, devices, number, t, p.data_loading_us[k], marks, output_device)
        steps.append((number, t, end))
        t = end + 20.0
    return tr, st, steps


def _step(st: Streams, p: DpParams, devices: tuple[int, ...], number: int, t0: float, dl_us: float,
          marks: bool, o: int) -> float:
    tr, m, n = st.tr, MAIN_TID, len(devices)

    def slow(d: int) -> float:
        return p.slow_factor if d == p.slow_device else 1.0

    c = t0 + 10.0
    tr.annotate(m, N.DATALOADER_NEXT, c, dl_us)
    c += dl_us
    to = tr.op(m, "aten::to", c, 20.0)
    st.host_copy(m, c + 8.0, to, 0, "HtoD", p.h2d_us, INPUT_BYTES)
    c = to.end + 2.0

    fwd_start = c
    c += 5.0
    sc = tr.op(m, "Scatter", c, 6.0 + 8.0 * (n - 1))
    for i in devices[1:]:
        st.copy(m, c + 4.0 + 8.0 * (i - 1), sc, 0, i, p.scatter_copy_us, INPUT_BYTES // n, role="dp_scatter")
    if marks:
        tr.annotate(m, MARKS["scatter"], sc.start - 1.0, sc.end - sc.start + 2.0)
    c = sc.end + 3.0
    rep_start = c
    bc = tr.op(m, "Broadcast", c, p.bcast_chunks * (12.0 + 4.0 * n) + 2.0)
    c += 1.0
    for _ in range(p.bcast_chunks):
        c = _broadcast_chunk(st, p, devices, c, bc)
    c = bc.end + 1.0
    if marks:  # the buffers' broadcast (no Broadcast op of its own) is inside dpprof's replicate marker
        c = _broadcast_chunk(st, p, devices, c, None) + 1.0
    c += p.replicate_host_us * n  # replicate's per-module Python copies: host time, no op
    if marks:
        tr.annotate(m, MARKS["replicate"], rep_start - 1.0, c - rep_start + 1.0)
    pa_start = c
    ends = []
    for d in devices:  # parallel_apply: a fresh thread per replica
        t = pa_start + 15.0 * d
        for op_name, kname in zip(N.FWD_OPS, N.FWD_KERNELS, strict=True):
            t = launching_op(st, _replica_tid(d), op_name, t, p.replica_op_host_us, kname, p.fwd_kernel_us * slow(d),
                             device=d) + 1.0
        ends.append(t)
    c = max(ends) + 5.0  # the main thread joins the replica threads
    if marks:
        tr.annotate(m, MARKS["parallel_apply"], pa_start, c - pa_start - 1.0)
    ga = tr.op(m, "Gather", c, 6.0 + 8.0 * n)
    for d in devices:
        st.copy(m, c + 3.0 + 8.0 * d, ga, d, o, p.gather_copy_us, OUTPUT_BYTES // n, role="dp_gather")
    if marks:
        tr.annotate(m, MARKS["gather"], ga.start - 1.0, ga.end - ga.start + 2.0)
    fwd = tr.annotate(m, N.DP_FORWARD, fwd_start, ga.end + 2.0 - fwd_start)
    c = fwd.end + 3.0

    loss = tr.op(m, "aten::cross_entropy_loss", c, 2 * p.op_host_us + 3.0)
    t = launching_op(st, m, "aten::log_softmax", c + 1.0, p.op_host_us, N.LOSS_FWD, p.loss_kernel_us, device=o)
    launching_op(st, m, "aten::nll_loss_nd", t + 1.0, p.op_host_us, N.LOSS_FWD, p.loss_kernel_us, device=o)
    c = loss.end + 2.0
    tr.annotate(m, N.ZERO_GRAD, c, 40.0)
    c = launching_op(st, m, "aten::ones_like", c + 42.0, p.op_host_us, N.FILL, 2.0, device=o) + 2.0

    a0, ao = _autograd_tid(0), _autograd_tid(o)
    for op_name in ("NllLossBackward0", "LogSoftmaxBackward0"):
        w = tr.op(ao, N.EVALUATE.format(op_name), c, p.op_host_us + 2.0)
        c = launching_op(st, ao, op_name, c + 0.5, p.op_host_us, N.NLL_BWD, p.loss_kernel_us, device=o) + 2.0
        assert c >= w.end
    gb = tr.op(ao, N.EVALUATE.format("GatherBackward"), c, 8.0 + 8.0 * n)
    tr.op(ao, "GatherBackward", c + 0.5, 7.0 + 8.0 * n)
    ns = tr.op(ao, "Scatter", c + 1.0, 6.0 + 8.0 * n)
    for j, i in enumerate(d for d in devices if d != o):  # grad_output scattered from the output device
        st.copy(ao, c + 2.0 + 8.0 * j, ns, o, i, p.scatter_copy_us / 10.0, OUTPUT_BYTES // n, role="dp_scatter")
    c = gb.end + 1.0
    ends = []
    for d in devices:  # every replica's backward on its device's autograd thread
        t = c
        for op_name, kname in zip(N.BWD_OPS, N.BWD_KERNELS, strict=True):
            tr.op(_autograd_tid(d), N.EVALUATE.format(op_name), t, p.op_host_us + 2.0)
            t = launching_op(st, _autograd_tid(d), op_name, t + 0.5, p.op_host_us, kname, p.bwd_kernel_us * slow(d),
                             device=d) + 2.0
        ends.append(t)
    c = max(ends) + 1.0  # BroadcastBackward runs once every replica's gradient has been produced (host side)
    bb = tr.op(a0, N.EVALUATE.format("BroadcastBackward"), c, 12.0 + 12.0 * n)
    tr.op(a0, "BroadcastBackward", c + 0.5, 11.0 + 12.0 * n)
    rac = tr.op(a0, "ReduceAddCoalesced", c + 1.0, 10.0 + 12.0 * n)
    for d in devices:
        cat = tr.op(a0, "aten::cat", c + 2.0 + 8.0 * d, 6.0)
        st.kernel(a0, cat.start + 1.0, cat, d, N.CAT, p.flatten_us, role="dp_reduce")
    base = c + 2.0 + 8.0 * n
    collective([Member(st, a0, base + 4.0 * d, rac, d, 7, f"GPU {d}") for d in devices], N.NCCL_REDUCE, "reduce",
               p.reduce_transfer_us, "dp_reduce")
    c = bb.end + 1.0
    for _ in range(3):  # AccumulateGrad: host time, no GPU work
        tr.op(a0, N.EVALUATE.format("torch::autograd::AccumulateGrad"), c, 10.0)
        c += 11.0

    opt_start = c + 2.0
    t = opt_start
    for op_name in ("aten::_foreach_mul_", "aten::_foreach_add_", "aten::_foreach_add_"):
        t = launching_op(st, m, op_name, t + 1.0, p.op_host_us, N.FOREACH_MUL, p.optim_kernel_us, device=0)
    opt = tr.annotate(m, N.OPTIMIZER_STEP, opt_start, t + 1.0 - opt_start)
    st.wait_event(o, 7, st.drained(0), 0)  # loss.item() on the output device comes after GPU0's optimizer
    return item(st, m, opt.end + 2.0, number, t0, o)


def _broadcast_chunk(st: Streams, p: DpParams, devices: tuple[int, ...], c: float, bc: Any) -> float:
    """Flatten on GPU0 (``aten::cat``), then one NCCL broadcast kernel per device; returns the host time after."""
    m = MAIN_TID
    cat = st.tr.op(m, "aten::cat", c, 6.0)
    st.kernel(m, c + 1.0, cat, 0, N.CAT, p.flatten_us, role="dp_broadcast")
    at = c + 7.0
    collective([Member(st, m, at + 4.0 * d, bc, d, 7, f"GPU {d}") for d in devices], N.NCCL_BROADCAST, "broadcast",
               p.bcast_transfer_us, "dp_broadcast")
    return at + 4.0 * len(devices) + 1.0


def write_dp_run(tmp_path: Path, n_gpus: int, variant: str, marks: bool = False, output_device: int = 0
                 ) -> tuple[Path, dict[str, Any]]:
    """Write a DP run directory under ``tmp_path``; returns its ``traces/`` folder and the expected figures
    (``tests.synth.expect.expected_rows`` per (rank, device, step), plus the variant's parameters)."""
    from tests.synth.rundir import write_run

    tr, st, steps = build_dp(n_gpus, variant, marks, output_device)
    p = params(variant, n_gpus)
    expected: dict[str, Any] = {"strategy": "dp", "dp_mode": "multi_device", "output_device": output_device,
                                "variant": variant, "n_gpus": n_gpus, "marks": marks, "params": asdict(p),
                                "rows": expected_rows(st.placed, {0: steps}), "steps": steps}
    name = f"dp{n_gpus}_{variant}" + ("_marked" if marks else "") + (f"_out{output_device}" if output_device else "")
    traces = write_run(tmp_path / name, [tr], strategy="dp", gpus=n_gpus)
    return traces, expected
