from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from dpprof.collect import strategies
from dpprof.collect.models import build_model
from dpprof.collect.strategies import MarkedDataParallel, dp_device_ids, wrap_dp
from dpprof.errors import DpprofError
from dpprof.vocabulary import DP_MARKS


def test_mark_names_are_the_ones_the_analyzer_keys_on():
    assert DP_MARKS == {"scatter": "dpprof::dp_scatter", "replicate": "dpprof::dp_replicate",
                        "parallel_apply": "dpprof::dp_parallel_apply", "gather": "dpprof::dp_gather"}


def test_each_dp_phase_runs_dps_own_code_inside_its_mark(monkeypatch):
    """DP's phases need GPUs; here DP's own methods are replaced by recorders, so the test checks that
    the subclass delegates each call unchanged and that the profiler sees the named range around it."""
    calls = []

    def fake(name):
        def method(self, *args):
            calls.append((name, args))
            return f"{name}-result"
        return method

    for phase in DP_MARKS:
        monkeypatch.setattr(nn.DataParallel, phase, fake(phase))
    dp = MarkedDataParallel(nn.Linear(2, 2))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        assert dp.scatter(("x",), {"k": 1}, [0, 1]) == "scatter-result"
        assert dp.replicate("m", [0, 1]) == "replicate-result"
        assert dp.parallel_apply(["r0", "r1"], ["i0", "i1"], [{}, {}]) == "parallel_apply-result"
        assert dp.gather(["o0", "o1"], 0) == "gather-result"
    assert calls == [("scatter", (("x",), {"k": 1}, [0, 1])), ("replicate", ("m", [0, 1])),
                     ("parallel_apply", (["r0", "r1"], ["i0", "i1"], [{}, {}])), ("gather", (["o0", "o1"], 0))]
    names = [e.name for e in prof.events()]
    for mark in DP_MARKS.values():
        assert names.count(mark) == 1, mark


def test_no_gpu_dp_calls_the_module_directly_and_matches_plain_dp():
    torch.manual_seed(0)
    x = torch.randn(8, 3, 32, 32)
    y = torch.randint(0, 10, (8,))
    grads = []
    for cls in (nn.DataParallel, MarkedDataParallel):
        model = build_model("tiny", seed=5)
        dp = cls(model)
        nn.functional.cross_entropy(dp(x), y).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))
    placement = wrap_dp(build_model("tiny"), use_cuda=False, gpus=0, device_ids=None)
    assert placement.dp_mode == "no_gpu" and placement.device_ids == []
    assert "directly" in placement.note
    assert isinstance(placement.module, MarkedDataParallel)


def test_dp_device_ids():
    assert dp_device_ids(0, None, 4) == [0, 1, 2, 3]
    assert dp_device_ids(2, None, 4) == [0, 1]
    assert dp_device_ids(0, [0, 0], 1) == [0, 0]
    with pytest.raises(DpprofError, match="not visible"):
        dp_device_ids(0, [0, 3], 2)
    with pytest.raises(DpprofError, match="only 1 GPU"):
        dp_device_ids(2, None, 1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_marked_dp_full_path_gives_plain_dp_gradients_on_gpu():
    x = torch.randn(16, 3, 32, 32, device="cuda")
    y = torch.randint(0, 10, (16,), device="cuda")
    grads = []
    for cls in (nn.DataParallel, MarkedDataParallel):
        model = build_model("tiny", seed=5).cuda()
        nn.functional.cross_entropy(cls(model, device_ids=[0, 0])(x), y).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    assert all(torch.allclose(a, b) for a, b in zip(*grads, strict=True))
    assert strategies.wrap_dp(build_model("tiny"), True, 0, [0, 0]).dp_mode == "multi_device"
