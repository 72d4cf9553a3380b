"""The training loop, and how it times every step without changing what it times.

Step time on a GPU comes from CUDA events recorded at the start and end of each step and read only
once the GPU has passed them (polled with ``Event.query()``, never waited on), so the loop adds no
synchronisation; ``exact_timing`` instead synchronises at both ends of each step and uses the host
clock. On the CPU, work is synchronous and the host clock is exact. The loss is read (a sync) only
every ``loss_every`` steps; accuracy and mean loss are accumulated on the device and read per epoch.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


class StepClock:
    """Per-step wall time in ms. ``start``/``stop`` bracket a step; ``ready()`` yields finished figures."""

    def __init__(self, device: torch.device, exact: bool = False) -> None:
        self.events = device.type == "cuda" and not exact
        self.sync = device.type == "cuda" and exact
        self.device = device
        self._open: tuple[int, Any] | None = None
        self._pending: deque[tuple[int, Any, Any]] = deque()
        self._done: list[tuple[int, float]] = []

    def start(self, step: int) -> None:
        if self.events:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record(torch.cuda.current_stream(self.device))
            self._open = (step, ev)
        else:
            if self.sync:
                torch.cuda.synchronize(self.device)
            self._open = (step, time.perf_counter())

    def cancel(self) -> None:
        self._open = None

    def stop(self) -> None:
        assert self._open is not None
        step, begin = self._open
        self._open = None
        if self.events:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record(torch.cuda.current_stream(self.device))
            self._pending.append((step, begin, ev))
        else:
            if self.sync:
                torch.cuda.synchronize(self.device)
            self._done.append((step, (time.perf_counter() - begin) * 1e3))

    def ready(self, wait: bool = False) -> list[tuple[int, float]]:
        """(step, ms) of every step whose end the device has reached; ``wait`` blocks for all of them."""
        while self._pending and (wait or self._pending[0][2].query()):
            step, begin, end = self._pending.popleft()
            end.synchronize()
            self._done.append((step, float(begin.elapsed_time(end))))
        out, self._done = self._done, []
        return out


@dataclass
class StopRequest:
    """Set by a signal handler: the loop ends after the step it is in."""

    signal_name: str | None = None

    @property
    def requested(self) -> bool:
        return self.signal_name is not None


@dataclass
class LoopSetup:
    """What the loop needs besides the model and data (sizes in images, ``lr`` per global batch)."""

    rank: int
    world_size: int
    global_batch: int
    steps: int | None
    epochs: int | None
    lr: float
    momentum: float
    loss_every: int
    exact_timing: bool
    #: steps (0-based) inside the profiler's active part, and those where the profiler runs at all.
    is_profiled: Callable[[int], bool] = lambda i: False
    is_profiler_on: Callable[[int], bool] = lambda i: False


@dataclass
class LoopResult:
    steps: list[dict[str, Any]] = field(default_factory=list)
    epochs: list[dict[str, Any]] = field(default_factory=list)
    stopped_by: str | None = None
    wall_s: float = 0.0


def _all_reduce_sum(values: list[float], device: torch.device, distributed: bool) -> list[float]:
    if not distributed:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def evaluate(model: nn.Module, loader: Any, device: torch.device, distributed: bool) -> float:
    """Held-out accuracy (0..1) of ``model`` (the plain module, not the DP/DDP wrapper) over all ranks."""
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    with torch.no_grad():
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            correct += (model(x).argmax(1) == y).sum()
            seen += len(y)
    model.train(was_training)
    c, n = _all_reduce_sum([float(correct.item()), float(seen)], device, distributed)
    return c / n if n else math.nan


def train_loop(setup: LoopSetup, wrapped: nn.Module, plain: nn.Module, loaders: Any, input_device: torch.device,
               output_device: torch.device, window: Any | None, stop: StopRequest,
               on_step: Callable[[dict[str, Any]], None], on_epoch: Callable[[dict[str, Any]], None],
               distributed: bool = False, result: LoopResult | None = None) -> LoopResult:
    """Train until ``steps`` steps or ``epochs`` epochs, whichever comes first, or until ``stop``.

    ``on_step`` receives each step's record (``rank, epoch, step, wall_ms, images_per_s, profiled,
    loss``) once its time is known; ``on_epoch`` each epoch's (``epoch, steps, partial, train_acc,
    test_acc, loss, time_s, images_per_s``). ``images_per_s`` is global: ``global_batch / wall``.
    ``result`` (optional) is filled as the loop goes, so a caller keeps the finished steps if it raises.
    """
    criterion = nn.CrossEntropyLoss()
    opt = torch.optim.SGD(wrapped.parameters(), lr=setup.lr, momentum=setup.momentum, weight_decay=5e-4)
    clock = StepClock(output_device, exact=setup.exact_timing)
    result = LoopResult() if result is None else result
    meta: dict[int, tuple[int, float | None]] = {}
    t_run = time.perf_counter()
    step = 0

    def emit(pairs: list[tuple[int, float]]) -> None:
        for s, ms in pairs:
            epoch, loss = meta.pop(s)
            rec = {"rank": setup.rank, "epoch": epoch, "step": s, "wall_ms": round(ms, 4),
                   "images_per_s": round(setup.global_batch / (ms / 1e3), 3) if ms > 0 else None,
                   "profiled": setup.is_profiled(s), "profiler_on": setup.is_profiler_on(s), "loss": loss}
            result.steps.append(rec)
            on_step(rec)

    epoch = 0
    wrapped.train()
    while setup.epochs is None or epoch < setup.epochs:
        if stop.requested or (setup.steps is not None and step >= setup.steps):
            break
        loaders.set_epoch(epoch)
        correct = torch.zeros((), dtype=torch.int64, device=output_device)
        loss_sum = torch.zeros((), dtype=torch.float64, device=output_device)
        seen = 0
        epoch_steps = 0
        t_epoch = time.perf_counter()
        batches = iter(loaders.train)
        while not stop.requested and (setup.steps is None or step < setup.steps):
            clock.start(step)
            try:
                x, y = next(batches)
            except StopIteration:
                clock.cancel()
                break
            x = x.to(input_device, non_blocking=True)
            y = y.to(output_device, non_blocking=True)
            out = wrapped(x)
            loss = criterion(out, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                correct += (out.argmax(1) == y).sum()
                loss_sum += loss.detach().double() * len(y)
            seen += len(y)
            read_loss = setup.loss_every > 0 and step % setup.loss_every == 0
            meta[step] = (epoch, float(loss.item()) if read_loss else None)
            if window is not None:
                window.step()
            clock.stop()
            emit(clock.ready())
            step += 1
            epoch_steps += 1
        emit(clock.ready(wait=True))
        if epoch_steps == 0:
            break
        time_s = time.perf_counter() - t_epoch
        c, n, ls = _all_reduce_sum([float(correct.item()), float(seen), float(loss_sum.item())],
                                   output_device, distributed) if not stop.requested else \
            (float(correct.item()), float(seen), float(loss_sum.item()))
        test_acc = evaluate(plain, loaders.test, output_device, distributed) if not stop.requested else None
        rec = {"epoch": epoch, "steps": epoch_steps, "partial": epoch_steps < len(loaders.train),
               "train_acc": c / n if n else None, "test_acc": test_acc, "loss": ls / n if n else None,
               "time_s": round(time_s, 4), "images_per_s": round(epoch_steps * setup.global_batch / time_s, 3)}
        result.epochs.append(rec)
        on_epoch(rec)
        epoch += 1
    with contextlib.suppress(RuntimeError):
        emit(clock.ready(wait=True))
    result.stopped_by = stop.signal_name
    result.wall_s = time.perf_counter() - t_run
    return result
