"""Kernels launched by an autotuner's timing loop (cuDNN's benchmark mode), told from ordinary work.

With ``torch.backends.cudnn.benchmark=True`` PyTorch asks cuDNN to time candidate plans the first time a
convolution shape is seen on a thread (aten/src/ATen/native/cudnn/Conv_v8.cpp, ``get_plans_from_find`` ->
cudnn-frontend's ``time_sorted_plan``): each candidate is launched between two ``cudaEventRecord`` calls and the
host waits on the second (``cudaEventSynchronize``). cuDNN's benchmark cache is thread-local, so DP's fresh
replica threads redo this every step (FIELD_NOTES; 1,965 kernels per step in ``dp_dup00`` against 287 on one GPU).

A launch is *autotuning* when, on its thread (runtime calls other than event records/syncs and launches skipped),
it lies inside a timing bracket -- ``cudaEventRecord``, launches, ``cudaEventRecord``, ``cudaEventSynchronize``
-- or in the warm-up run just before the bracket that launches the same kernels in the same order (the timing
loop runs each candidate once untimed first). Those kernels are real GPU time but not the model's work: the
hardware comparison leaves them out and a finding counts them.
"""

from __future__ import annotations

import numpy as np

from dpprof.trace.load import K_RUNTIME, RankTrace

_RECORD = ("cudaEventRecord", "hipEventRecord")
_SYNC = ("cudaEventSynchronize", "hipEventSynchronize")
_LAUNCH = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx", "hipLaunchKernel",
           "hipExtLaunchKernel", "hipModuleLaunchKernel")
_R, _S, _L = 1, 2, 3


def timed_launches(rt: RankTrace) -> np.ndarray:
    """Bool per row: a kernel launch call of an autotuning loop (see the module docstring)."""
    sym_of_name = np.zeros(len(rt.names) + 1, dtype=np.int8)
    for i, n in enumerate(rt.names):
        sym_of_name[i] = _R if n in _RECORD else _S if n in _SYNC else _L if n in _LAUNCH else 0
    out = np.zeros(len(rt.kind), dtype=bool)
    rows = np.flatnonzero((rt.kind == K_RUNTIME) & (sym_of_name[rt.name_id] > 0))
    if len(rows) < 4 or not np.any(sym_of_name[rt.name_id[rows]] == _S):
        return out
    rows = rows[np.lexsort((rt.ts[rows], rt.tid[rows]))]  # by thread, then time
    sym, tid, name = sym_of_name[rt.name_id[rows]].tolist(), rt.tid[rows].tolist(), rt.name_id[rows].tolist()
    start = 0
    for end in range(1, len(rows) + 1):  # one thread at a time
        if end < len(rows) and tid[end] == tid[start]:
            continue
        _mark(rows[start:end], sym[start:end], name[start:end], out)
        start = end
    return out


def _mark(rows: np.ndarray, sym: list[int], name: list[int], out: np.ndarray) -> None:
    last_close = -1  # index of the last bracket's closing sync
    for j in range(1, len(sym)):
        if not (sym[j] == _S and sym[j - 1] == _R):
            continue
        opening = j - 2
        while opening > last_close and sym[opening] == _L:
            opening -= 1
        if opening <= last_close or sym[opening] != _R:
            last_close = j
            continue
        inside = list(range(opening + 1, j - 1))
        if inside:
            out[rows[inside]] = True
            k = len(inside)
            before = [i for i in range(max(last_close + 1, opening - k), opening) if sym[i] == _L]
            if len(before) == k and [name[i] for i in before] == [name[i] for i in inside]:
                out[rows[before]] = True  # the candidate's untimed warm-up run
        last_close = j
