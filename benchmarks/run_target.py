"""The script dpprof run's overhead benchmark runs, plainly and under ``dpprof run``: a small CNN on
synthetic CIFAR-shaped batches, each step timed by the script itself from one ``optimizer.step()`` return
to the next (the same boundary dpprof run uses): wall time, and this process's CPU time (all its
threads). Writes both, ms per step, as JSON to --times. It knows nothing of dpprof."""

import argparse
import json
import os
import time

import torch
from torch import nn

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=60)
p.add_argument("--batch-size", type=int, default=128)
p.add_argument("--threads", type=int, default=1)
p.add_argument("--times", required=True)
p.add_argument("--go", help="before the first step, say READY on stdout and wait until this file exists")
args = p.parse_args()

torch.set_num_threads(args.threads)
torch.manual_seed(0)
model = nn.Sequential(
    nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
    nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
    nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
batches = [(torch.randn(args.batch_size, 3, 32, 32), torch.randint(0, 10, (args.batch_size,))) for _ in range(8)]
if args.go:  # start together with another run: both see the same load from the rest of the machine
    print("READY", flush=True)
    while not os.path.exists(args.go):
        time.sleep(0.001)
wall, cpu = [], []
last, last_cpu = time.perf_counter(), time.process_time()
for step in range(args.steps):
    x, y = batches[step % len(batches)]
    loss = nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    now, now_cpu = time.perf_counter(), time.process_time()
    wall.append((now - last) * 1e3)
    cpu.append((now_cpu - last_cpu) * 1e3)
    last, last_cpu = now, now_cpu
with open(args.times, "w") as fh:
    json.dump({"wall_ms": wall, "cpu_ms": cpu}, fh)
