from __future__ import annotations

import pytest
import torch

from dpprof.collect.models import MODEL_NAMES, build_model, model_info
from dpprof.errors import DpprofError


def test_cifar_vgg16_has_the_papers_parameter_count():
    m = build_model("vgg16")
    info = model_info("vgg16", m)
    assert info["params"] == 14_728_266
    assert info["param_bytes"] == 14_728_266 * 4
    convs = [x for x in m.modules() if isinstance(x, torch.nn.Conv2d)]
    bns = [x for x in m.modules() if isinstance(x, torch.nn.BatchNorm2d)]
    linears = [x for x in m.modules() if isinstance(x, torch.nn.Linear)]
    assert len(convs) == 13 and len(bns) == 13
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(512, 10)]


def test_torchvision_vgg16_takes_cifar_inputs():
    m = build_model("vgg16-tv")
    assert model_info("vgg16-tv", m)["params"] == 134_301_514
    with torch.no_grad():
        assert m.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize("name", ["tiny", "resnet18", "vgg16"])
def test_models_map_cifar_images_to_ten_logits(name):
    with torch.no_grad():
        assert build_model(name).eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_tiny_is_tiny_and_seeded():
    a, b, c = build_model("tiny", seed=1), build_model("tiny", seed=1), build_model("tiny", seed=2)
    assert model_info("tiny", a)["params"] < 5000
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert not torch.equal(a[0].weight, c[0].weight)


def test_resnet18_cifar_size():
    assert model_info("resnet18", build_model("resnet18"))["params"] == 11_173_962


def test_unknown_model_is_a_user_error():
    with pytest.raises(DpprofError, match="unknown model"):
        build_model("alexnet")
    assert set(MODEL_NAMES) == {"vgg16", "vgg16-tv", "resnet18", "tiny"}
