"""CUDA streams as PyTorch drives them, for synthetic traces: the host enqueues and runs ahead of the GPUs.

Rules (each from PyTorch's source, not from dpprof's analyzer):

* A launch call (``cudaLaunchKernel``, ``cudaMemcpyAsync``) takes ``LAUNCH_US`` of host time and returns; the
  activity starts when its stream reaches it, no sooner than ``LATENCY_US`` after the call returned. The host
  does not wait for it (CUDA's asynchronous launches).
* A cross-device copy runs on the *source* device's current stream; before it, the source stream waits for
  the work queued so far on the destination's current stream, and afterwards the destination stream waits for
  the copy (aten/src/ATen/native/cuda/Copy.cu, ``copy_device_to_device``: ``dst_ready`` / ``src_ready``).
* An NCCL collective launches one kernel per participant on the stream it is given (DP: each device's current
  stream, torch/csrc/cuda/nccl.cpp ``broadcast``/``reduce``; DDP/FSDP: ProcessGroupNCCL's own stream after an
  event wait on the compute stream, ProcessGroupNCCL.cpp ``collective()``). Each kernel starts when its
  stream reaches it and spins until every participant has started; all end together, ``transfer`` after the
  last start.
* A synchronising call (``cudaStreamSynchronize``, ``loss.item()``) blocks the host until the stream drains.

Every activity is recorded with what the construction knows about it (``Placed``): its DP phase or role, the
time its collective kernel waited for the last participant, and the time its stream sat idle waiting for
another device's event. The expectations of the tests are sums over these records.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from tests.synth import names as N
from tests.synth.kineto import COMPUTE_STREAM, GpuSpan, Op, RankTrace

LAUNCH_US = 3.0  # a runtime row (the kineto writer's launch rows last 3 µs)
LATENCY_US = 5.0


@dataclass
class Placed:
    """One GPU activity as constructed."""

    rank: int
    span: GpuSpan
    role: str  # "compute" | "memcpy" | "comm" | a DP phase (dp_scatter...), what dpprof should call its transfer
    kind: str = ""  # collective kind (all_reduce, broadcast...) for collective kernels
    wait_us: float = 0.0  # collective kernel: from its start until the last participant started
    waited_on: str = ""  # that participant ("GPU 2", "rank 1")
    dep_wait_us: float = 0.0  # idle before it: its stream waited for another device's event
    dep_on: int | None = None  # that device

    @property
    def device(self) -> int:
        return self.span.device


class Streams:
    """The streams of one process (one rank): when each drains, and what was placed on them."""

    def __init__(self, tr: RankTrace) -> None:
        self.tr = tr
        self.own: dict[tuple[int, int], float] = defaultdict(float)  # drain time of the stream's own work
        self.free: dict[tuple[int, int], float] = defaultdict(float)  # ... and of the events it waits for
        self.dep_on: dict[tuple[int, int], int | None] = {}
        self.placed: list[Placed] = []

    def _start(self, device: int, stream: int, launch_end: float) -> tuple[float, float, int | None]:
        """(start, idle caused by another device's event, that device) of work launched at ``launch_end``."""
        key = (device, stream)
        unblocked = max(launch_end + LATENCY_US, self.own[key])
        start = max(unblocked, self.free[key])
        on = self.dep_on.get(key)
        # Waiting on another stream of the same device is not waiting on a peer (that stream runs meanwhile).
        dep = start - unblocked if on is not None else 0.0
        return start, dep, on if dep > 0 else None

    def _done(self, device: int, stream: int, end: float) -> None:
        key = (device, stream)
        self.own[key] = self.free[key] = end
        self.dep_on[key] = None

    def wait_event(self, device: int, stream: int, t: float, on_device: int) -> None:
        """``stream`` of ``device`` waits until ``t`` for an event recorded on ``on_device``."""
        key = (device, stream)
        if t > self.free[key]:
            self.free[key] = t
            self.dep_on[key] = on_device if on_device != device else None

    def drained(self, device: int, stream: int = COMPUTE_STREAM) -> float:
        return self.free[(device, stream)]

    def kernel(self, tid: int, at: float, parent: Op | None, device: int, name: str, dur: float, *,
               stream: int = COMPUTE_STREAM, role: str = "compute", extra: dict[str, Any] | None = None) -> Placed:
        start, dep, on = self._start(device, stream, at + LAUNCH_US)
        span = self.tr.kernel(tid, at, parent, device, name, start, dur, stream, comm=role == "comm",
                              extra=extra)
        self._done(device, stream, span.end)
        return self._add(Placed(self.tr.rank, span, role, dep_wait_us=dep, dep_on=on))

    def copy(self, tid: int, at: float, parent: Op | None, src: int, dst: int, dur: float, nbytes: int, *,
             role: str = "memcpy", kind: str | None = None) -> Placed:
        """A device copy: on the source's current stream, with Copy.cu's two-way barrier when devices differ."""
        if src != dst:
            self.wait_event(src, COMPUTE_STREAM, self.free[(dst, COMPUTE_STREAM)], dst)  # dst_ready
        start, dep, on = self._start(src, COMPUTE_STREAM, at + LAUNCH_US)
        span = self.tr.copy(tid, at, parent, src, kind or ("PtoP" if src != dst else "DtoD"), start, dur, nbytes,
                            COMPUTE_STREAM, to_device=dst if src != dst else None)
        self._done(src, COMPUTE_STREAM, span.end)
        if src != dst:
            self.wait_event(dst, COMPUTE_STREAM, span.end, src)  # src_ready
        return self._add(Placed(self.tr.rank, span, role, dep_wait_us=dep, dep_on=on))

    def host_copy(self, tid: int, at: float, parent: Op | None, device: int, kind: str, dur: float,
                  nbytes: int) -> Placed:
        """HtoD/DtoH copy on the device's current stream."""
        start, dep, on = self._start(device, COMPUTE_STREAM, at + LAUNCH_US)
        span = self.tr.copy(tid, at, parent, device, kind, start, dur, nbytes)
        self._done(device, COMPUTE_STREAM, span.end)
        return self._add(Placed(self.tr.rank, span, "memcpy", dep_wait_us=dep, dep_on=on))

    def _add(self, p: Placed) -> Placed:
        self.placed.append(p)
        return p


@dataclass(frozen=True)
class Member:
    """One participant's launch of a collective kernel."""

    streams: Streams
    tid: int
    at: float
    parent: Op | None
    device: int
    stream: int
    label: str  # "GPU d" (DP, in-process) or "rank r"


def collective(members: list[Member], name: str, kind: str, transfer_us: float, role: str,
               extra: dict[str, Any] | None = None) -> list[Placed]:
    """One NCCL collective: each member's kernel starts when its stream reaches it; all end at last start +
    ``transfer_us``. ``role``: what dpprof should call the transfer (``comm``, or DP's ``dp_broadcast`` /
    ``dp_reduce``)."""
    starts = [m.streams._start(m.device, m.stream, m.at + LAUNCH_US) for m in members]
    last = max(range(len(members)), key=lambda i: (starts[i][0], -i))
    end = starts[last][0] + transfer_us
    out = []
    for m, (start, dep, on) in zip(members, starts, strict=True):
        span = m.streams.tr.kernel(m.tid, m.at, m.parent, m.device, name, start, end - start, m.stream, comm=True,
                                   extra=extra)
        m.streams._done(m.device, m.stream, end)
        tie = starts[last][0] - start
        out.append(m.streams._add(Placed(m.streams.tr.rank, span, role, kind, wait_us=tie,
                                         waited_on=members[last].label if tie > 0 else "",
                                         dep_wait_us=dep, dep_on=on)))
    return out


def item(st: Streams, tid: int, c: float, number: int, t0: float, device: int | None = None) -> float:
    """``loss.item()`` at host time ``c``: a 4-byte DtoH copy on ``device`` (default: the rank's GPU), then the host
    waits for it (cudaStreamSynchronize) and the ``ProfilerStep#number`` that began at ``t0`` ends. Returns its end."""
    tr = st.tr
    d = tr.rank if device is None else device
    st.host_copy(tid, c + 3.0, None, d, "DtoH", 2.0, 4)
    sync_at = c + 8.0
    sync_end = max(st.drained(d), sync_at + 2.0) + 3.0
    it = tr.op(tid, "aten::item", c, sync_end + 2.0 - c)
    tr.op(tid, "aten::_local_scalar_dense", c + 1.0, sync_end + 0.5 - c)
    tr.runtime(tid, "cudaStreamSynchronize", sync_at, sync_end - sync_at, None)
    end = it.end + 10.0
    tr.annotate(tid, N.PROFILER_STEP.format(number), t0, end - t0)
    return end


def launching_op(st: Streams, tid: int, name: str, at: float, host_us: float, kernel: str, dur: float, *,
                 device: int | None = None, wrapper: bool = False, role: str = "compute") -> float:
    """An op of ``host_us`` on ``tid`` that launches one kernel on ``device`` (default: the rank's GPU), inside
    an ``autograd::engine::evaluate_function`` wrapper when ``wrapper``; returns when the op ends (the host moves
    on; the kernel runs when its stream reaches it)."""
    if wrapper:
        st.tr.op(tid, N.EVALUATE.format(name), at - 0.5, host_us + 1.0)
    op = st.tr.op(tid, name, at, host_us)
    st.kernel(tid, at + 1.0, op, st.tr.rank if device is None else device, kernel, dur, role=role)
    return op.end
