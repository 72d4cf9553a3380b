"""Training data: a learnable synthetic CIFAR-shaped set (default) or the real CIFAR-10.

The synthetic set is what makes runs reproducible without a download: every image is a class pattern
(a colour and an oriented stripe texture, fixed per class by the seed) plus Gaussian noise, so a model
learns it and the accuracy curves mean something, yet the exact pixels depend only on the seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from dpprof.errors import DpprofError

NUM_CLASSES = 10
SYNTHETIC_TRAIN = 2048
SYNTHETIC_TEST = 512
#: torchvision's usual CIFAR-10 channel statistics.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
NOISE_STD = 1.0


@dataclass
class Loaders:
    """Train and held-out loaders plus what the manifest says about the data."""

    train: Any
    test: Any
    train_sampler: Any | None
    info: dict[str, Any]

    def set_epoch(self, epoch: int) -> None:
        if self.train_sampler is not None:
            self.train_sampler.set_epoch(epoch)


def class_patterns(seed: int) -> Any:
    """Tensor [10, 3, 32, 32]: one pattern per class (colour x oriented stripes), values about -1..1."""
    import torch

    g = torch.Generator().manual_seed(seed * 1_000_003 + 17)
    colours = torch.rand(NUM_CLASSES, 3, 1, 1, generator=g) * 2 - 1
    angles = torch.rand(NUM_CLASSES, generator=g) * math.pi
    freqs = 1.0 + torch.rand(NUM_CLASSES, generator=g) * 3.0
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    waves = torch.stack([
        torch.sin(2 * math.pi * f * (xs * torch.cos(a) + ys * torch.sin(a)) / 32.0)
        for a, f in zip(angles, freqs, strict=True)])
    return colours * (0.6 + 0.4 * waves[:, None, :, :])


def synthetic_tensors(n: int, seed: int, split: str) -> tuple[Any, Any]:
    """``n`` images [n,3,32,32] float32 and labels [n] int64, deterministic in (seed, split)."""
    import torch

    patterns = class_patterns(seed)
    g = torch.Generator().manual_seed(seed * 1_000_003 + (1 if split == "train" else 2))
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    noise = torch.randn(n, 3, 32, 32, generator=g) * NOISE_STD
    return (patterns[labels] + noise).contiguous(), labels


def _synthetic(train_size: int, test_size: int, seed: int) -> tuple[Any, Any, dict[str, Any]]:
    from torch.utils.data import TensorDataset

    train = TensorDataset(*synthetic_tensors(train_size, seed, "train"))
    test = TensorDataset(*synthetic_tensors(test_size, seed, "test"))
    return train, test, {"kind": "synthetic", "train_size": train_size, "test_size": test_size, "root": None}


def _cifar10(root: str, download: bool, train_size: int | None, test_size: int | None,
             seed: int) -> tuple[Any, Any, dict[str, Any]]:
    import torch
    from torch.utils.data import Subset
    from torchvision import datasets, transforms

    norm = transforms.Normalize(CIFAR_MEAN, CIFAR_STD)
    train_tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor(), norm])
    test_tf = transforms.Compose([transforms.ToTensor(), norm])
    try:
        train = datasets.CIFAR10(root, train=True, transform=train_tf, download=download)
        test = datasets.CIFAR10(root, train=False, transform=test_tf, download=download)
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted..."
        hint = "" if download else " (pass --download to fetch it)"
        raise DpprofError(f"CIFAR-10 not usable in {root}: {exc}{hint}") from None
    except OSError as exc:
        raise DpprofError(f"CIFAR-10 could not be read or downloaded into {root}: {exc}") from None
    # A fixed random subset (same on every rank) keeps --train-size/--test-size meaningful on real data.
    g = torch.Generator().manual_seed(seed)
    if train_size is not None and train_size < len(train):
        train = Subset(train, torch.randperm(len(train), generator=g)[:train_size].tolist())
    if test_size is not None and test_size < len(test):
        test = Subset(test, torch.randperm(len(test), generator=g)[:test_size].tolist())
    return train, test, {"kind": "cifar10", "train_size": len(train), "test_size": len(test), "root": str(root)}


def build_datasets(kind: str, root: str | None = None, download: bool = False, train_size: int | None = None,
                   test_size: int | None = None, seed: int = 0) -> tuple[Any, Any, dict[str, Any]]:
    """(train, test, data_info). Synthetic sizes default to 2048/512; CIFAR-10 to its full 50000/10000."""
    if kind == "synthetic":
        return _synthetic(train_size or SYNTHETIC_TRAIN, test_size or SYNTHETIC_TEST, seed)
    if kind == "cifar10":
        if not root:
            raise DpprofError("--data cifar10 needs --data-root DIR")
        return _cifar10(root, download, train_size, test_size, seed)
    raise DpprofError(f"unknown data {kind!r} (choose from synthetic, cifar10)")


def build_loaders(kind: str, *, root: str | None, download: bool, train_size: int | None,
                  test_size: int | None, seed: int, batch_size: int, workers: int, pin_memory: bool,
                  rank: int = 0, world_size: int = 1) -> Loaders:
    """Loaders yielding ``batch_size`` images per step on this rank (the per-rank batch).

    With ``world_size > 1`` each rank reads its own shard (DistributedSampler, shuffled per epoch with
    ``seed``). The train loader drops the last incomplete batch so every step has the same size.
    """
    import torch
    from torch.utils.data import DataLoader, DistributedSampler

    train, test, info = build_datasets(kind, root, download, train_size, test_size, seed)
    if len(train) < batch_size * world_size:
        raise DpprofError(f"training set of {len(train)} images is smaller than one global batch "
                          f"({batch_size * world_size})")
    common: dict[str, Any] = {"num_workers": workers, "pin_memory": pin_memory,
                              "persistent_workers": workers > 0}
    sampler: Any = None
    test_sampler: Any = None
    generator = torch.Generator().manual_seed(seed)
    if world_size > 1:
        sampler = DistributedSampler(train, num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                                     drop_last=True)
        test_sampler = DistributedSampler(test, num_replicas=world_size, rank=rank, shuffle=False)
    train_loader = DataLoader(train, batch_size=batch_size, shuffle=sampler is None, sampler=sampler,
                              drop_last=True, generator=generator if sampler is None else None, **common)
    test_loader = DataLoader(test, batch_size=batch_size, shuffle=False, sampler=test_sampler, **common)
    return Loaders(train=train_loader, test=test_loader, train_sampler=sampler, info=info)
