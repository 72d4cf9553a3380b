"""Record the FSDP2-over-gloo CPU traces of this folder (torch 2.14.1, 2 processes on one 2-core machine).

``OUT=tests/data/cpu torchrun --nproc-per-node 2 tests/data/cpu/make_fsdp2_gloo.py`` then gzip the two files.
A 3-layer MLP, ``fully_shard`` per Linear then the root, SGD; steps 2-3 profiled (CPU activities only).
"""

import os

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.profiler import ProfilerActivity, profile, schedule

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
mesh = init_device_mesh("cpu", (world,))
for layer in model:
    if isinstance(layer, nn.Linear):
        fully_shard(layer, mesh=mesh)
fully_shard(model, mesh=mesh)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
out = os.environ.get("OUT", ".")


def handler(p: profile) -> None:
    p.export_chrome_trace(f"{out}/fsdp2_gloo_rank{rank}.pt.trace.json")


with profile(activities=[ProfilerActivity.CPU], schedule=schedule(wait=1, warmup=1, active=2),
             on_trace_ready=handler, record_shapes=True) as prof:
    for _ in range(4):
        x, y = torch.randn(64, 256), torch.randint(0, 10, (64,))
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        prof.step()
dist.barrier()
dist.destroy_process_group()
