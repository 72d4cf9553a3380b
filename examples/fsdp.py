"""FSDP, one process per rank (gloo on the CPU, NCCL on GPUs), started by torchrun.

    torchrun --standalone --nproc-per-node 2 examples/fsdp.py --steps 20            # FSDP2: fully_shard
    torchrun --standalone --nproc-per-node 2 examples/fsdp.py --steps 20 --fsdp1    # FullyShardedDataParallel
    dpprof run --nproc 2 examples/fsdp.py --steps 20

FSDP2 shards each layer, then the root, over a 1-D device mesh; FSDP1 wraps the whole model (on the
CPU it needs device_id=cpu). --batch-size is per rank.
"""

import argparse
import os
import sys

import torch
import torch.distributed as dist
from common import small_cnn, synthetic_batches, train_step
from torch import nn


def shard(model: nn.Module, fsdp1: bool, device: torch.device) -> nn.Module:
    if fsdp1:
        from torch.distributed.fsdp import FullyShardedDataParallel

        return FullyShardedDataParallel(model, device_id=device)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for layer in model:
        if any(True for _ in layer.parameters()):
            fully_shard(layer, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def main() -> None:
    sys.argv, fsdp1 = [a for a in sys.argv if a != "--fsdp1"], "--fsdp1" in sys.argv
    from common import arguments

    args: argparse.Namespace = arguments(__doc__.splitlines()[0])
    use_gpu = torch.cuda.is_available() and not args.cpu
    dist.init_process_group("nccl" if use_gpu else "gloo")
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if use_gpu else torch.device("cpu")
    if use_gpu:
        torch.cuda.set_device(device)
    torch.manual_seed(0)
    model = shard(small_cnn().to(device), fsdp1, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    data = synthetic_batches(args.batch_size, seed=dist.get_rank())
    for step in range(args.steps):
        loss = train_step(model, optimizer, *(t.to(device) for t in next(data)))  # reduce-scatter in backward
        if dist.get_rank() == 0 and step % args.log_every == 0:
            print(f"step {step}: loss {loss.item():.3f}")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
