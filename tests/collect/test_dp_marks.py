"""DP's phase marks in a user's own nn.DataParallel (dpprof run, dpprof.mark_dataparallel).

DP reaches scatter/replicate/parallel_apply/gather only with CUDA devices (``DataParallel.forward``,
torch/nn/parallel/data_parallel.py); on this CPU machine DP's four methods are replaced by fakes built
from CPU operations, as the harness's own DP tests do, so that DP's forward takes its multi-device path:
scatter = chunks along dim 0, replicate = the module itself per device (its gradients then add up over
the chunks, as the real replicas' do through Broadcast's backward), parallel_apply = each replica on its
chunk, gather = concatenation. The GPU test runs real DP."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from dpprof.collect import dp_marks
from dpprof.collect.strategies import MarkedDataParallel
from dpprof.vocabulary import DP_MARKS


def _model() -> nn.Module:
    torch.manual_seed(3)  # no BatchNorm: per-chunk statistics would differ from the whole batch's
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 10))


@pytest.fixture
def cpu_dp_path(monkeypatch):
    """DP's multi-device path on the CPU: fakes for its four phases, and a DP built with two 'devices'."""
    calls: list[str] = []

    def scatter(self, inputs, kwargs, device_ids):
        calls.append("scatter")
        n = len(device_ids)
        return tuple(tuple(t.chunk(n)[i] for t in inputs) for i in range(n)), tuple({} for _ in range(n))

    def replicate(self, module, device_ids):
        calls.append("replicate")
        return [module for _ in device_ids]

    def parallel_apply(self, replicas, inputs, kwargs):
        calls.append("parallel_apply")
        return [r(*i, **k) for r, i, k in zip(replicas, inputs, kwargs, strict=True)]

    def gather(self, outputs, output_device):
        calls.append("gather")
        return torch.cat(outputs)

    for phase, fake in {"scatter": scatter, "replicate": replicate, "parallel_apply": parallel_apply,
                        "gather": gather}.items():
        monkeypatch.setattr(nn.DataParallel, phase, fake)

    def make(model: nn.Module) -> nn.DataParallel:
        dp = nn.DataParallel(model)
        dp.device_ids, dp.output_device, dp.src_device_obj = [0, 1], 0, torch.device("cpu")
        return dp

    return make, calls


def _grads_and_marks(dp: nn.Module, model: nn.Module, x, y) -> tuple[list[torch.Tensor], list[str]]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        nn.functional.cross_entropy(dp(x), y).backward()
    names = [e.name for e in prof.events() if e.name in DP_MARKS.values()]
    return [p.grad.clone() for p in model.parameters()], names


def test_marked_dp_computes_dps_gradients(cpu_dp_path):
    make, calls = cpu_dp_path
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))
    plain_model = _model()
    nn.functional.cross_entropy(plain_model(x), y).backward()
    expected = [p.grad for p in plain_model.parameters()]

    unmarked_model, marked_model, session_model = _model(), _model(), _model()
    dp_grads, dp_names = _grads_and_marks(make(unmarked_model), unmarked_model, x, y)
    marked = dp_marks.mark_dataparallel(make(marked_model))
    assert type(marked) is nn.DataParallel  # marked in place: same class, same object
    marked_grads, marked_names = _grads_and_marks(marked, marked_model, x, y)
    with dp_marks.marking_all():  # what a dpprof run session does for every DP module
        session_grads, session_names = _grads_and_marks(make(session_model), session_model, x, y)

    assert calls == ["scatter", "replicate", "parallel_apply", "gather"] * 3  # DP's full path, three times
    assert dp_names == []  # an unmarked module only calls through
    assert sorted(marked_names) == sorted(session_names) == sorted(DP_MARKS.values())
    for a, b, c, e in zip(dp_grads, marked_grads, session_grads, expected, strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)  # the marks change nothing DP computes
        assert torch.allclose(a, e, atol=1e-6)  # and DP over two chunks is the whole batch's gradient
    pickle.loads(pickle.dumps(marked))  # still an ordinary, picklable module


def test_marks_wrap_whatever_dp_method_is_there_and_never_twice(cpu_dp_path):
    make, calls = cpu_dp_path
    dp_marks.install()
    for phase in DP_MARKS:  # the fakes above were wrapped, not replaced
        assert getattr(nn.DataParallel, phase).__dpprof_original__.__name__ == phase
    model = _model()
    harness = MarkedDataParallel(model)  # marks itself; the class-level wrapper must not mark it again
    harness.device_ids, harness.output_device, harness.src_device_obj = [0, 1], 0, torch.device("cpu")
    with dp_marks.marking_all():
        _, names = _grads_and_marks(harness, model, torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,)))
    assert sorted(names) == sorted(DP_MARKS.values())


def test_mark_dataparallel_refuses_other_modules():
    with pytest.raises(TypeError, match="nn.DataParallel"):
        dp_marks.mark_dataparallel(nn.Linear(2, 2))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_marked_users_dp_gives_plain_dp_gradients_on_gpu():
    x = torch.randn(16, 3, 8, 8, device="cuda")
    y = torch.randint(0, 10, (16,), device="cuda")
    grads, names = [], []
    for mark in (False, True):
        model = _model().cuda()
        dp = nn.DataParallel(model, device_ids=[0, 0])
        if mark:
            dp_marks.mark_dataparallel(dp)
        g, n = _grads_and_marks(dp, model, x, y)
        grads.append(g)
        names.append(n)
    assert names[0] == [] and sorted(names[1]) == sorted(DP_MARKS.values())
    assert all(torch.allclose(a, b) for a, b in zip(*grads, strict=True))
