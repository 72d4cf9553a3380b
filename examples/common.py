"""What the examples share: a small CNN for 3x32x32 images and a learnable synthetic data stream.

Nothing here knows about dpprof: the examples are plain PyTorch scripts, profiled from outside with
``dpprof run``.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import torch
from torch import nn


def small_cnn() -> nn.Module:
    """About 7k parameters; BatchNorm gives DP and DDP buffers to broadcast."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def synthetic_batches(batch_size: int, seed: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless (images, labels): one fixed pattern per class plus noise, so the loss goes down."""
    g = torch.Generator().manual_seed(seed)
    patterns = torch.randn(10, 3, 32, 32, generator=torch.Generator().manual_seed(1234))
    while True:
        labels = torch.randint(0, 10, (batch_size,), generator=g)
        yield patterns[labels] + torch.randn(batch_size, 3, 32, 32, generator=g), labels


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
               labels: torch.Tensor) -> torch.Tensor:
    """One step: forward, loss, backward (where DDP all-reduces and FSDP reduce-scatters the gradients),
    optimizer step (where dpprof run sees the step end). Returns the loss."""
    loss = nn.functional.cross_entropy(model(images), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss


def arguments(description: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--steps", type=int, default=20, help="training steps (default 20)")
    p.add_argument("--batch-size", type=int, default=32, help="images per step (default 32)")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--log-every", type=int, default=5, help="print the loss every N steps (default 5)")
    p.add_argument("--cpu", action="store_true", help="train on the CPU even when a GPU is visible")
    return p.parse_args()
