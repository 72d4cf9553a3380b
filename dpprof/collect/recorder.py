"""Step records of a user's script (``steps.rank{R}.jsonl``, docs/run-format.md), from step boundaries.

Step ``i`` runs from the end of step ``i - 1`` to the next boundary (:mod:`dpprof.collect.stepping`);
step 0 from the first module call (the script's setup before it is not a step), or from the session's
start when no module is called. Times come from the harness's :class:`~dpprof.collect.train.StepClock`:
CUDA events on the model's GPU, read once the GPU has passed them (no added synchronisation), or the
host clock on the CPU. The profiler window steps at every boundary, before the step's clock stops, as
in ``dpprof profile``'s loop. A failure inside dpprof's own bookkeeping never reaches the script: the
recorder stops, says so once, and the script runs on.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from array import array
from collections.abc import Callable
from typing import Any

from dpprof.collect.manifest import StepsWriter
from dpprof.collect.script_window import ScriptWindow
from dpprof.collect.train import StepClock

#: Step records kept in memory for the manifest's summary (every one is in the steps file): a training of
#: millions of steps must not hold them all (the summary's medians are then over the first ones).
KEPT_RECORDS = 100_000


class StepRecorder:
    """Boundaries in, records out. ``first_boundary()`` runs once, at the end of step 0, before its
    record is made (the batch size is known by then); ``after_record(rec)`` after each record."""

    def __init__(self, rank: int, writer: StepsWriter, window: ScriptWindow, say: Callable[[str], None],
                 first_boundary: Callable[[], None], after_record: Callable[[dict[str, Any]], None]) -> None:
        self.rank = rank
        self.writer = writer
        self.window = window
        self.say = say
        self.first_boundary = first_boundary
        self.after_record = after_record
        self.records: list[dict[str, Any]] = []  # the first KEPT_RECORDS
        self.recorded = 0
        self.skipped_steps = 0
        self.global_batch: int | None = None
        self.failed: str | None = None
        self.boundaries = 0
        self._clock: StepClock | None = None
        self._skipped: dict[int, Any] = {}
        self._cost_us = array("d")  # dpprof's own time inside each unprofiled step's boundary

    def start(self, device: Any = None) -> None:
        """Step 0 begins (again, until step 0 has ended): timed with CUDA events on ``device`` when it is
        a GPU. The session starts it when the script starts, and again at the first module call."""
        import torch

        if self.boundaries or self.failed:
            return
        dev = device if device is not None and device.type == "cuda" else torch.device("cpu")
        self._clock = StepClock(dev, exact=False)
        self._clock.start(0)

    def boundary(self, grad_scaler_skipped: Any = None) -> None:
        """The current step has ended (``grad_scaler_skipped``: True/False, a callable, or None)."""
        if self.failed:
            return
        try:
            self._boundary(grad_scaler_skipped)
        except Exception as exc:  # dpprof's bookkeeping must never break the script
            self.failed = f"step recording stopped at step {self.boundaries} ({type(exc).__name__}: {exc})"
            self.say(self.failed)

    def _boundary(self, grad_scaler_skipped: Any) -> None:
        t0 = time.perf_counter()
        if self._clock is None:
            self.start()
        assert self._clock is not None
        index = self.boundaries
        if index == 0:
            self.first_boundary()
        self._skipped[index] = grad_scaler_skipped
        self.window.step()
        self._clock.stop()
        self.boundaries += 1
        self._emit(self._clock.ready())
        self._clock.start(self.boundaries)
        if index and not self.window.is_profiler_on(index):  # step 0 infers; profiled steps pay the profiler
            self._cost_us.append((time.perf_counter() - t0) * 1e6)

    def cost_section(self) -> dict[str, Any]:
        """dpprof's own host time per unprofiled step (the boundary: records, clock, window), in µs."""
        costs = sorted(self._cost_us)
        if not costs:
            return {"hook_us_median": None, "hook_us_p90": None}
        return {"hook_us_median": round(statistics.median(costs), 2),
                "hook_us_p90": round(costs[min(len(costs) - 1, int(0.9 * len(costs)))], 2)}

    def _emit(self, done: list[tuple[int, float]]) -> None:
        for step, ms in done:
            skipped = self._skipped.pop(step, None)
            if callable(skipped):
                skipped = bool(skipped())
            batch = self.global_batch
            rec = {"rank": self.rank, "epoch": None, "step": step, "wall_ms": round(ms, 4),
                   "images_per_s": round(batch / (ms / 1e3), 3) if batch and ms > 0 else None,
                   "profiled": self.window.is_active_step(step), "profiler_on": self.window.is_profiler_on(step),
                   "loss": None, "grad_scaler_skipped": skipped}
            self.recorded += 1
            self.skipped_steps += bool(skipped)
            if len(self.records) < KEPT_RECORDS:
                self.records.append(rec)
            self.writer.write(rec)
            self.after_record(rec)

    def close(self) -> None:
        """The script has ended: drop the unfinished step, record the finished ones still pending."""
        if self._clock is None:
            return
        self._clock.cancel()
        if not self.failed:
            with contextlib.suppress(Exception):  # a GPU already in error: the finished records stay
                self._emit(self._clock.ready(wait=True))
        self._clock = None
