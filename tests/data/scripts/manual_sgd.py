"""Training without an optimizer object: the update is written by hand, inside train_step(). dpprof run
finds no optimizer.step(); --step-on backward or --step-on function:Trainer.train_step marks its steps.
--accumulate N: N backward passes per update (gradient accumulation)."""

import argparse

import torch
from torch import nn

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=8)
p.add_argument("--accumulate", type=int, default=1)
args = p.parse_args()


class Trainer:
    def __init__(self) -> None:
        self.model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        for chunk_x, chunk_y in zip(x.chunk(args.accumulate), y.chunk(args.accumulate), strict=True):
            loss = nn.functional.cross_entropy(self.model(chunk_x), chunk_y) / args.accumulate
            loss.backward()
        with torch.no_grad():
            for param in self.model.parameters():
                param -= 0.1 * param.grad
                param.grad = None
        return loss.item()


trainer = Trainer()
for _ in range(args.steps):
    trainer.train_step(torch.randn(12, 16), torch.randint(0, 4, (12,)))
print("done", args.steps)
