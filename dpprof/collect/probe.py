"""Link bandwidth probe: host<->device and peer-to-peer copy bandwidth, measured at the start of a GPU run.

Figures are GB/s with GB = 1e9 bytes: a 64 MiB buffer copied ``REPEATS`` times after one warm-up copy,
each copy timed with CUDA events on the stream that runs it, the median kept. Host buffers are pinned
(pageable memory would measure the staging copy, not the link). On one H200 this gave 55 GB/s
host-to-device. With 2+ GPUs each ordered pair is measured; ``peer_access`` says whether CUDA can copy
directly (otherwise torch stages the copy through host memory, which is what DP would then do too).
Cost: about 20 copies of 64 MiB per GPU pair, well under a second on any PCIe 3+ machine.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

NBYTES = 64 * 2**20
REPEATS = 5
NO_CUDA_NOTE = "no CUDA device: link bandwidth not measured"


def not_measured(note: str) -> dict[str, Any]:
    """The probe's result when nothing was measured: same keys, null figures, and why."""
    return {"measured": False, "note": note, "h2d_GBps": None, "d2h_GBps": None, "p2p_GBps": {},
            "peer_access": {}, "bytes": NBYTES, "repeats": 0, "per_device": {}}


def probe_bandwidth(cuda_indices: Sequence[int]) -> dict[str, Any]:
    """Measure copy bandwidth for the GPUs a run uses (CUDA indices; the first is DP's output device).

    Returns ``h2d_GBps`` / ``d2h_GBps`` for ``cuda_indices[0]``, ``per_device`` {"i": {"h2d_GBps",
    "d2h_GBps"}}, ``p2p_GBps`` {"i->j": GB/s} for every ordered pair, ``peer_access`` {"i->j": bool},
    ``measured`` and a ``note``. Without CUDA or GPUs: ``measured`` False and ``note`` says why.
    A failure while measuring (out of memory, a CUDA error) also returns ``measured`` False with the
    reason: the probe must never stop the run it describes.
    """
    try:
        import torch
    except ImportError:
        return not_measured("torch is not installed: link bandwidth not measured")
    indices = list(dict.fromkeys(int(i) for i in cuda_indices))
    if not indices or not torch.cuda.is_available():
        return not_measured(NO_CUDA_NOTE)
    try:
        return _measure(torch, indices)
    except Exception as exc:  # RuntimeError (CUDA/OOM) and friends: record and carry on
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return not_measured(f"bandwidth probe failed: {first}")
    finally:
        # hand the probe's buffers back so the run's memory figures start from nothing
        torch.cuda.empty_cache()


def _timed_copies(torch: Any, device: int, copy: Any) -> float:
    """Median seconds of ``copy()`` on ``device``'s current stream (after one warm-up copy)."""
    with torch.cuda.device(device):
        copy()
        torch.cuda.synchronize(device)
        times = []
        for _ in range(REPEATS):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            copy()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)  # elapsed_time is ms
    return statistics.median(times)


def _gbps(seconds: float) -> float | None:
    return round(NBYTES / seconds / 1e9, 2) if seconds > 0 else None


def _measure(torch: Any, indices: list[int]) -> dict[str, Any]:
    n = NBYTES // 4
    host = torch.empty(n, dtype=torch.float32, pin_memory=True)
    host_out = torch.empty(n, dtype=torch.float32, pin_memory=True)
    bufs = {i: torch.empty(n, dtype=torch.float32, device=f"cuda:{i}") for i in indices}
    per_device: dict[str, dict[str, float | None]] = {}
    for i in indices:
        dev = bufs[i]
        h2d = _timed_copies(torch, i, lambda d=dev: d.copy_(host, non_blocking=True))
        d2h = _timed_copies(torch, i, lambda d=dev: host_out.copy_(d, non_blocking=True))
        per_device[str(i)] = {"h2d_GBps": _gbps(h2d), "d2h_GBps": _gbps(d2h)}
    p2p: dict[str, float | None] = {}
    peer: dict[str, bool] = {}
    for src in indices:
        for dst in indices:
            if src == dst:
                continue
            key = f"{src}->{dst}"
            peer[key] = bool(torch.cuda.can_device_access_peer(src, dst))
            dst_buf = torch.empty(n, dtype=torch.float32, device=f"cuda:{dst}")
            # torch runs a device-to-device copy on the source device's current stream and syncs both
            # streams around it, so events on the source stream time the copy itself.
            p2p[key] = _gbps(_timed_copies(torch, src, lambda s=bufs[src], d=dst_buf: d.copy_(s, non_blocking=True)))
            del dst_buf
    first = per_device[str(indices[0])]
    note = f"{NBYTES // 2**20} MiB copies, median of {REPEATS}, pinned host memory, GB = 1e9 bytes"
    if len(indices) == 1:
        note += "; one GPU: no peer-to-peer link to measure"
    return {"measured": True, "note": note, "h2d_GBps": first["h2d_GBps"], "d2h_GBps": first["d2h_GBps"],
            "p2p_GBps": p2p, "peer_access": peer, "bytes": NBYTES, "repeats": REPEATS, "per_device": per_device}
