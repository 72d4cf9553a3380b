"""A script that runs its own torch.profiler, from step --start for --length steps (its own schedule)."""

import argparse
import sys

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, schedule

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=10)
p.add_argument("--start", type=int, default=0)
p.add_argument("--out", required=True)
args = p.parse_args()

model = nn.Linear(16, 4)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
prof = None
for step in range(args.steps):
    if step == args.start:
        prof = profile(activities=[ProfilerActivity.CPU], schedule=schedule(wait=0, warmup=1, active=2, repeat=1),
                       on_trace_ready=lambda pr: pr.export_chrome_trace(args.out))
        prof.start()
    loss = model(torch.randn(8, 16)).sum()
    opt.zero_grad()
    loss.backward()
    opt.step()
    if prof is not None:
        prof.step()
if prof is not None:
    prof.stop()
print("own trace at", args.out, file=sys.stderr)
