from __future__ import annotations

import torch

from dpprof.collect.data import build_loaders
from dpprof.collect.models import build_model
from dpprof.collect.train import LoopSetup, StepClock, StopRequest, train_loop

CPU = torch.device("cpu")


def _loaders(train_size=64, batch=16):
    return build_loaders("synthetic", root=None, download=False, train_size=train_size, test_size=16, seed=0,
                         batch_size=batch, workers=0, pin_memory=False)


def _run(setup, stop=None, on_step=None):
    model = build_model("tiny")
    recs, epochs = [], []

    def step_cb(rec):
        recs.append(rec)
        if on_step:
            on_step(rec)

    res = train_loop(setup, model, model, _loaders(), CPU, CPU, None, stop or StopRequest(), step_cb, epochs.append)
    return res, recs, epochs


def test_cpu_clock_times_each_step():
    clock = StepClock(CPU)
    clock.start(0)
    clock.stop()
    clock.start(1)
    clock.cancel()
    done = clock.ready()
    assert [s for s, _ in done] == [0] and done[0][1] >= 0
    assert clock.ready() == []


def test_steps_limit_spans_epochs_and_every_step_is_recorded():
    setup = LoopSetup(rank=0, world_size=1, global_batch=16, steps=6, epochs=None, lr=0.01, momentum=0.9,
                      loss_every=4, exact_timing=False, is_profiled=lambda i: i in (2, 3))
    res, recs, epochs = _run(setup)
    assert [r["step"] for r in recs] == list(range(6))
    assert [r["epoch"] for r in recs] == [0, 0, 0, 0, 1, 1]  # 64 images / 16 = 4 steps per epoch
    assert [r["loss"] is not None for r in recs] == [True, False, False, False, True, False]
    assert [r["profiled"] for r in recs] == [False, False, True, True, False, False]
    assert all(r["wall_ms"] > 0 and abs(r["images_per_s"] - 16 / (r["wall_ms"] / 1e3)) < 1 for r in recs)
    assert [(e["steps"], e["partial"]) for e in epochs] == [(4, False), (2, True)]
    assert all(0 <= e["train_acc"] <= 1 and 0 <= e["test_acc"] <= 1 for e in epochs)
    assert res.stopped_by is None and res.steps == recs


def test_epochs_limit():
    setup = LoopSetup(rank=0, world_size=1, global_batch=16, steps=None, epochs=2, lr=0.01, momentum=0.9,
                      loss_every=0, exact_timing=False)
    _, recs, epochs = _run(setup)
    assert len(recs) == 8 and len(epochs) == 2 and all(r["loss"] is None for r in recs)


def test_stop_request_ends_the_loop_after_the_current_step():
    stop = StopRequest()

    def on_step(rec):
        if rec["step"] == 2:
            stop.signal_name = "SIGTERM"

    setup = LoopSetup(rank=0, world_size=1, global_batch=16, steps=50, epochs=None, lr=0.01, momentum=0.9,
                      loss_every=0, exact_timing=False)
    res, recs, epochs = _run(setup, stop, on_step)
    assert len(recs) == 3 and res.stopped_by == "SIGTERM"
    assert epochs[-1]["test_acc"] is None  # no evaluation after a stop
