"""Hand-built Analysis objects with known per-step figures, for the diagnosis and projection tests."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dpprof.analyze.model import CATEGORIES, Analysis, DeviceSummary, RankInfo, StepBreakdown, Straggler

Key = tuple[int, int]


def rows(per_row: Mapping[Key, Mapping[str, float]], steps: int = 3,
         gpu0_only: float | None = None, overlapped: Mapping[Key, float] | None = None,
         busy: Mapping[Key, float] | None = None, out_dev: int = 0, gpu0_serial: float | None = None,
         peer_wait_on: Mapping[Key, Mapping[str, float]] | None = None,
         extra: Mapping[Key, Mapping[str, Any]] | None = None) -> tuple[StepBreakdown, ...]:
    """``steps`` identical steps per (rank, device) row; categories not given are 0; the step is their sum.

    ``gpu0_only`` / ``gpu0_serial``: on the DP output device's row; ``peer_wait_on``: whom each row's peer_wait
    waited for; ``extra``: other StepBreakdown fields per row (e.g. ``autotune_us``)."""
    out = []
    for (rank, dev), cats in sorted(per_row.items()):
        full = {c: float(cats.get(c, 0.0)) for c in CATEGORIES}
        dur = sum(full.values())
        b = (busy or {}).get((rank, dev), full["compute"] + full["memcpy"] + full["comm"]
                             + sum(full[p] for p in ("dp_scatter", "dp_broadcast", "dp_gather", "dp_reduce")))
        on = dict((peer_wait_on or {}).get((rank, dev), {}))
        for s in range(steps):
            out.append(StepBreakdown(
                rank=rank, device=dev, step=s + 3, duration_us=dur, categories_us=full,
                comm_overlapped_us=(overlapped or {}).get((rank, dev), 0.0),
                gpu0_only_us=gpu0_only if (dev == out_dev and gpu0_only is not None) else None,
                gpu0_serial_us=gpu0_serial if (dev == out_dev and gpu0_serial is not None) else None,
                busy_us=b if dev >= 0 else 0.0, peer_wait_on_us=on, **dict((extra or {}).get((rank, dev), {}))))
    return tuple(out)


def analysis(strategy: str, per_row: Mapping[Key, Mapping[str, float]], *, dp_mode: str | None = None,
             world_size: int | None = None, stragglers: tuple[Straggler, ...] = (),
             straggler_summary: Mapping[str, object] | None = None, **kw: object) -> Analysis:
    steps = rows(per_row, **kw)  # type: ignore[arg-type]
    ranks = sorted({r for r, _ in per_row})
    devs = {r: tuple(sorted(d for rr, d in per_row if rr == r and d >= 0)) for r in ranks}
    return Analysis(
        strategy=strategy,
        ranks=tuple(RankInfo(rank=r, path=f"rank{r}.json", world_size=world_size or len(ranks), devices=devs[r])
                    for r in ranks),
        devices=tuple(DeviceSummary(rank=r, device=d, kernel_time_us=1.0, comm_kernel_time_us=0.0,
                                    busy_time_us=1.0) for (r, d) in sorted(per_row) if d >= 0),
        steps=steps, stragglers=stragglers, dp_mode=dp_mode, straggler_summary=dict(straggler_summary or {}),
        output_device=0 if strategy == "dp" and dp_mode != "no_gpu" else None,
    )


def dp4(gpu0: Mapping[str, float], other: Mapping[str, float], n: int = 4, **kw: object) -> Analysis:
    """A multi-device DP run on ``n`` GPUs: GPU0's categories and every other GPU's."""
    per = {(0, 0): gpu0, **{(0, d): other for d in range(1, n)}}
    return analysis("dp", per, dp_mode="multi_device", **kw)
