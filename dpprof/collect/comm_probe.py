"""A short allreduce probe at the start of a DDP run: the α (latency) and β (time per byte) that the
projection's ring model ``t = α + β·bytes`` needs, measured on this run's own process group.

Every rank calls :func:`probe_for_run` once, after the process group is up and before training; rank 0
writes the section it returns into ``manifest.json["comm_probe"]`` (docs/run-format.md). Per message size
``WARMUP`` untimed all_reduces, then ``REPEATS`` rounds of one timed all_reduce per size (float32 zeros, SUM,
the default group); each repeat's time is the slowest rank's (one MAX all_reduce of all ranks' timings at
the end), and a size's time is the median over its repeats. NCCL is timed with CUDA events around each all_reduce on the current
stream (the collective runs on NCCL's stream, which the current stream waits for); gloo with the host
clock (gloo's all_reduce returns when the data is reduced; CUDA tensors are synchronised around it).

Before anything is timed, the ranks agree (one MIN all_reduce of a flag) that every one of them could
allocate its buffers, so a rank that cannot does not leave the others waiting in a collective. A failure
becomes ``{"measured": false, "reason": ...}``; the run goes on.

torch is imported only inside the functions that run the probe; :func:`fit_alpha_beta` is plain numpy.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

KIB, MIB = 1024, 1024 * 1024
#: Message sizes (bytes). On GPUs: from latency-bound to bandwidth-bound over NVLink/PCIe. On the CPU
#: (gloo over loopback TCP) smaller, so the probe stays well under a second with 2 processes.
GPU_SIZES_BYTES: tuple[int, ...] = (4 * KIB, 64 * KIB, 1 * MIB, 4 * MIB, 16 * MIB)
CPU_SIZES_BYTES: tuple[int, ...] = (4 * KIB, 32 * KIB, 256 * KIB, 1 * MIB)
WARMUP = 3
REPEATS = 7
DTYPE_BYTES = 4  # float32


def not_measured(reason: str, backend: str | None = None, world_size: int | None = None) -> dict[str, Any]:
    """The section when the probe did not run, and why."""
    return {"measured": False, "reason": reason, "backend": backend, "world_size": world_size}


class AlphaBeta(NamedTuple):
    """``t = alpha_us + beta_us_per_byte * bytes``. ``bandwidth_GBps`` = 1/beta in 1e9 bytes/s (message
    bytes per second once the latency is amortised; None when beta <= 0); residuals of the median times
    against the line: RMS in µs, and RMS of (t - fit) / t in percent."""

    alpha_us: float
    beta_us_per_byte: float
    bandwidth_GBps: float | None
    residual_rms_us: float
    residual_rms_pct: float


def fit_alpha_beta(sizes_bytes: Sequence[float], times_us: Sequence[float]) -> AlphaBeta:
    """Least-squares fit of ``t = alpha + beta * bytes`` to the median times, in relative terms.

    Each point's residual is divided by its time (weights 1/t): the sizes span ~4000x, and an ordinary
    fit would let the largest message's noise decide alpha. Needs two or more distinct sizes, each with
    a positive time (ValueError otherwise).
    """
    x = np.asarray(sizes_bytes, dtype=np.float64)
    t = np.asarray(times_us, dtype=np.float64)
    if x.shape != t.shape or x.size < 2 or np.unique(x).size < 2 or not (t > 0).all():
        raise ValueError("the fit needs two or more distinct sizes, each with a positive time")
    w = 1.0 / t
    design = np.column_stack([np.ones_like(x), x]) * w[:, None]
    (alpha, beta), *_ = np.linalg.lstsq(design, t * w, rcond=None)
    resid = t - (alpha + beta * x)
    return AlphaBeta(float(alpha), float(beta), 1e-3 / float(beta) if beta > 0 else None,
                     float(np.sqrt(np.mean(resid ** 2))), float(100 * np.sqrt(np.mean((resid / t) ** 2))))


def summarise(backend: str, world_size: int, device: str, sizes_bytes: Sequence[int],
              times_us: Sequence[Sequence[float]], duration_ms: float) -> dict[str, Any]:
    """The manifest section from the timed repeats (``times_us[size][repeat]``, slowest rank's, µs)."""
    medians = [statistics.median(r) for r in times_us]
    section: dict[str, Any] = {
        "measured": True, "backend": backend, "world_size": world_size, "device": device, "dtype": "float32",
        "op": "sum", "warmup": WARMUP, "repeats": len(times_us[0]) if times_us else 0,
        "sizes_bytes": list(sizes_bytes), "time_us_median": [round(m, 2) for m in medians],
        "duration_ms": round(duration_ms, 1)}
    fit = fit_alpha_beta(sizes_bytes, medians)
    bw = fit.bandwidth_GBps
    section.update({
        "alpha_us": round(fit.alpha_us, 3), "beta_us_per_byte": float(f"{fit.beta_us_per_byte:.6g}"),
        "bandwidth_GBps": None if bw is None else round(bw, 4),
        # per-link bytes of a ring allreduce are 2(N-1)/N x the message (nccl-tests' "bus bandwidth")
        "bus_bandwidth_GBps": None if bw is None else round(bw * 2 * (world_size - 1) / world_size, 4),
        "fit_residual_rms_us": round(fit.residual_rms_us, 3),
        "fit_residual_rms_pct": round(fit.residual_rms_pct, 2),
        "fit": "t = alpha + beta * bytes, least squares on relative error (weights 1/t)"})
    if bw is None:
        section["note"] = "beta <= 0: the times did not grow with the message size; no bandwidth implied"
    return section


def probe_for_run(strategy: str, distributed: bool, world_size: int, device: Any,
                  enabled: bool = True) -> dict[str, Any]:
    """Run the probe on this rank if the run is DDP with a peer (all ranks must call it); else say why not.

    ``device``: this rank's torch.device (the probe's tensors live where DDP's gradients do)."""
    if strategy != "ddp" or not distributed:
        return not_measured(f"strategy {strategy}: no process group")
    import torch.distributed as dist

    backend = str(dist.get_backend())
    if not enabled:
        return not_measured("turned off (--no-comm-probe)", backend, world_size)
    if world_size < 2:
        return not_measured("world size 1: no peer to reduce with", backend, world_size)
    try:
        return run_probe(backend, world_size, device)
    except Exception as exc:  # the probe must never cost the run
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return not_measured(f"failed: {type(exc).__name__}: {text}"[:300], backend, world_size)


def run_probe(backend: str, world_size: int, device: Any) -> dict[str, Any]:
    """Time all_reduce on the default process group (which must be up) at each size; see the module doc."""
    import torch
    import torch.distributed as dist

    device = torch.device(device)
    sizes = GPU_SIZES_BYTES if device.type == "cuda" else CPU_SIZES_BYTES
    t0 = time.perf_counter()
    buffers: list[Any] = []
    ok = torch.ones(1, device=device)
    try:
        buffers = [torch.zeros(n // DTYPE_BYTES, dtype=torch.float32, device=device) for n in sizes]
    except RuntimeError:  # out of memory on this rank: tell the others instead of leaving them waiting
        ok.zero_()
    dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    if ok.item() < 1:
        return not_measured("a rank could not allocate the probe's buffers", backend, world_size)
    for buf in buffers:
        for _ in range(WARMUP):
            dist.all_reduce(buf)
    # Sizes interleaved within each round, so a burst of load on a shared machine (another process
    # scheduled on our cores) lands on one round of every size rather than on all repeats of one size.
    timer = _events_timer if device.type == "cuda" and backend == "nccl" else _host_timer
    rounds = [timer(buffers, device) for _ in range(REPEATS)]
    times = torch.tensor(rounds, dtype=torch.float64).T.contiguous()  # [size][repeat]
    # the slowest rank's time of each repeat
    slowest = times.to(device)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    rows = slowest.cpu().tolist()
    if not all(math.isfinite(v) and v > 0 for r in rows for v in r):
        return not_measured("a timing was not positive", backend, world_size)
    return summarise(backend, world_size, device.type, sizes, rows, (time.perf_counter() - t0) * 1000)


def _events_timer(buffers: Sequence[Any], device: Any) -> list[float]:
    """One all_reduce of each buffer, timed with CUDA events on the current stream; µs each."""
    import torch
    import torch.distributed as dist

    marks = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in buffers]
    for buf, (start, end) in zip(buffers, marks, strict=True):
        start.record()
        dist.all_reduce(buf)
        end.record()
    torch.cuda.synchronize(device)
    return [start.elapsed_time(end) * 1000 for start, end in marks]


def _host_timer(buffers: Sequence[Any], device: Any) -> list[float]:
    """One all_reduce of each buffer, timed with the host clock (CUDA tensors synchronised); µs each."""
    import torch
    import torch.distributed as dist

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda _device: None)
    out = []
    for buf in buffers:
        sync(device)
        t = time.perf_counter_ns()
        dist.all_reduce(buf)
        sync(device)
        out.append((time.perf_counter_ns() - t) / 1000)
    return out
