"""The models a run can train, all for 3x32x32 inputs and 10 classes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dpprof.errors import DpprofError

#: CIFAR VGG16: numbers are conv output channels (3x3, padding 1, then BN + ReLU), "M" a 2x2 max-pool.
VGG16_LAYERS: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                                      512, 512, 512, "M", 512, 512, 512, "M")
MODEL_NAMES: tuple[str, ...] = ("vgg16", "vgg16-tv", "resnet18", "tiny")


def _vgg16_cifar() -> Any:
    from torch import nn

    layers: list[nn.Module] = []
    channels = 3
    for item in VGG16_LAYERS:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            assert isinstance(item, int)
            layers += [nn.Conv2d(channels, item, kernel_size=3, padding=1), nn.BatchNorm2d(item), nn.ReLU(inplace=True)]
            channels = item
    # Five pools take 32x32 to 1x1, so the classifier sees 512 features (no 4096-wide fc layers).
    return nn.Sequential(nn.Sequential(*layers), nn.Flatten(), nn.Linear(512, 10))


def _vgg16_torchvision() -> Any:
    from torchvision.models import vgg16

    # torchvision's AdaptiveAvgPool2d((7, 7)) upsamples the 1x1 map, so 32x32 inputs work unchanged.
    return vgg16(weights=None, num_classes=10)


def _resnet18_cifar() -> Any:
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
            self.short = nn.Sequential()
            if stride != 1 or cin != cout:
                self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            self.relu = nn.ReLU(inplace=True)

        def forward(self, x: Any) -> Any:
            return self.relu(self.body(x) + self.short(x))

    # CIFAR stem (3x3 conv, no max-pool) as in the usual CIFAR-10 ResNet-18.
    blocks: list[nn.Module] = []
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        blocks += [Block(cin, cout, stride), Block(cout, cout, 1)]
        cin = cout
    return nn.Sequential(
        nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
        *blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 10))


def _tiny() -> Any:
    from torch import nn

    # A few thousand parameters, with BatchNorm so DP/DDP also have buffers to broadcast.
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


_BUILDERS: dict[str, Callable[[], Any]] = {
    "vgg16": _vgg16_cifar,
    "vgg16-tv": _vgg16_torchvision,
    "resnet18": _resnet18_cifar,
    "tiny": _tiny,
}


def build_model(name: str, seed: int = 0) -> Any:
    """A freshly initialised model; the same ``seed`` gives the same weights on every rank."""
    import torch

    if name not in _BUILDERS:
        raise DpprofError(f"unknown model {name!r} (choose from {', '.join(MODEL_NAMES)})")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _BUILDERS[name]()


def model_info(name: str, model: Any) -> dict[str, Any]:
    """The manifest's ``model_info``: parameter count and fp32 bytes of parameters and buffers."""
    params = sum(p.numel() for p in model.parameters())
    return {
        "name": name,
        "params": int(params),
        "param_bytes": int(sum(p.numel() * p.element_size() for p in model.parameters())),
        "buffers_bytes": int(sum(b.numel() * b.element_size() for b in model.buffers())),
    }
