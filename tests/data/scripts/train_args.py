"""A tiny training script for dpprof run's tests: it reports what it sees of Python's script semantics
(stdout: one JSON line), trains --steps steps, then exits with --exit or raises at step --raise-at."""

import argparse
import json
import os
import sys

import torch

here = {"argv": sys.argv, "name": __name__, "file": __file__, "path0": sys.path[0], "cwd": os.getcwd(),
        "spec": __spec__ is None, "main_is_me": sys.modules["__main__"].__dict__ is globals()}
print(json.dumps(here), flush=True)
print("a line the script writes to stderr", file=sys.stderr, flush=True)

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=6)
p.add_argument("--exit", type=int, default=0)
p.add_argument("--raise-at", type=int, default=-1)
args = p.parse_args()

model = torch.nn.Linear(8, 2)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for step in range(args.steps):
    if step == args.raise_at:
        raise ValueError(f"bad batch at step {step}")
    loss = model(torch.randn(4, 8)).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
sys.exit(args.exit)
