"""DP's output device ("GPU0"), found from what ``nn.DataParallel`` does with it, never by a tie-break.

``DataParallel.forward`` gathers the replicas' outputs onto ``output_device`` (torch/nn/parallel/
data_parallel.py, ``gather`` -> torch/nn/parallel/comm.py ``gather``): the chunk of every other GPU is a
peer copy whose destination (``toDevice``) is the output device, and which runs on the *source* GPU's stream
(aten/src/ATen/native/cuda/Copy.cu, ``copy_device_to_device``), so the device a copy runs on says nothing
about where it lands; the output device's own chunk is a same-device (DtoD) copy on it. The loss then runs
where the gathered outputs live, and the optimizer where the parameters live (``device_ids[0]``, usually the same
GPU): the last resort when a trace shows no Gather copy.
"""

from __future__ import annotations

from collections import Counter

from dpprof.analyze.attribution import RankTimeline
from dpprof.trace import classify as C
from dpprof.vocabulary import DP_PHASES

_GATHER = DP_PHASES.index("dp_gather")


def _mode(values: list[int]) -> tuple[int, int, int]:
    """(most common value, its count, how many values)."""
    (value, n), = Counter(values).most_common(1)
    return value, n, len(values)


def output_device(tl: RankTimeline) -> tuple[int | None, str]:
    """(output device or None, how it was found) of a multi-device DP rank."""
    rt = tl.rt
    gather = tl.phase == _GATHER
    to_of_row = dict(zip(rt.extras.peer_row.tolist(), rt.extras.peer_to.tolist(), strict=True))
    dest = [to_of_row.get(int(r), -1) for r in tl.gpu_rows[gather & (tl.gclass == C.G_PTOP)].tolist()]
    dest = [d for d in dest if d >= 0]
    if dest:
        d, n, total = _mode(dest)
        return d, f"toDevice of {n} of {total} peer copies launched in Gather"
    same = tl.device[gather & (tl.gclass == C.G_DTOD)].tolist()
    if same:
        d, n, total = _mode(same)
        return d, f"device of {n} of {total} same-device copies launched in Gather"
    kernels = tl.device[tl.optimizer & (tl.gclass == C.G_COMPUTE)].tolist()
    if kernels:
        d, n, total = _mode(kernels)
        return d, f"device of {n} of {total} kernels launched in Optimizer.step"
    return None, "unknown: no copies in Gather and no optimizer kernels in the trace"

