"""Two optimizers (a generator's, created first, and a critic's) and a GradScaler that skips the
generator's update at step --inf-at (its loss is made infinite there). The critic steps first in each
iteration, so 'the first optimizer to step' and 'the first created' differ."""

import argparse

import torch
from torch import nn

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=8)
p.add_argument("--inf-at", type=int, default=3)
args = p.parse_args()

generator = nn.Linear(8, 8)
critic = nn.Linear(8, 1)
gen_opt = torch.optim.SGD(generator.parameters(), lr=0.01)
critic_opt = torch.optim.Adam(critic.parameters(), lr=0.01)
scaler = torch.amp.GradScaler("cpu")
for step in range(args.steps):
    critic_loss = critic(generator(torch.randn(4, 8)).detach()).mean()
    critic_opt.zero_grad()
    critic_loss.backward()
    critic_opt.step()
    gen_loss = -critic(generator(torch.randn(4, 8))).mean()
    if step == args.inf_at:
        gen_loss = gen_loss * float("inf")
    gen_opt.zero_grad()
    scaler.scale(gen_loss).backward()
    scaler.step(gen_opt)
    scaler.update()
print("scale", scaler.get_scale())
