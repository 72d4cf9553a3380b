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
    for i, event_name in enumerate(rt.names):
        sym_of_name[i] = (_R if event_name in _RECORD else _S if event_name in _SYNC
                          else _L if event_name in _LAUNCH else 0)
    out = np.zeros(len(rt.kind), dtype=bool)
    rows = np.flatnonzero((rt.kind == K_RUNTIME) & (sym_of_name[rt.name_id] > 0))
    if len(rows) < 4 or not np.any(sym_of_name[rt.name_id[rows]] == _S):
        return out
    rows = rows[np.lexsort((rt.ts[rows], rt.tid[rows]))]  # by thread, then time
    sym, tid, name = sym_of_name[rt.name_id[rows]], rt.tid[rows], rt.name_id[rows]
    n = len(rows)
    idx = np.arange(n)
    # A bracket closes at c when sym[c] is a record followed by a sync on the same thread; it opens at the last
    # symbol before c that is not a launch, when that is a record on the same thread.
    close = np.flatnonzero((sym[:-1] == _R) & (sym[1:] == _S) & (tid[:-1] == tid[1:]))
    last_non_launch = np.maximum.accumulate(np.where(sym != _L, idx, -1))
    opening = np.where(close > 0, last_non_launch[np.maximum(close - 1, 0)], -1)
    ok = (opening >= 0) & (close - opening > 1)
    ok[ok] = (sym[opening[ok]] == _R) & (tid[opening[ok]] == tid[close[ok]])
    timed = np.zeros(n + 1, dtype=np.int32)
    np.add.at(timed, opening[ok] + 1, 1)
    np.add.at(timed, close[ok], -1)
    inside = np.cumsum(timed[:n]) > 0
    out[rows[inside & (sym == _L)]] = True
    # The candidate's untimed warm-up run: the same launches, in the same order, just before the bracket.
    sym_l, tid_l, name_l = sym.tolist(), tid.tolist(), name.tolist()
    prev_close = -1
    for o, c in zip(opening[ok].tolist(), close[ok].tolist(), strict=True):
        k = c - o - 1
        w = o - k
        if w > prev_close and all(x == _L for x in sym_l[w:o]) and all(t == tid_l[o] for t in tid_l[w:o]) \
                and name_l[w:o] == name_l[o + 1:c]:
            out[rows[w:o]] = True
        prev_close = c + 1
    return out
