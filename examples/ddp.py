"""DistributedDataParallel, one process per rank (gloo on the CPU, NCCL on GPUs), started by torchrun.

    torchrun --standalone --nproc-per-node 2 examples/ddp.py --steps 20
    dpprof run --nproc 2 examples/ddp.py --steps 20                  # dpprof launches torchrun itself
    torchrun --standalone --nproc-per-node 2 -m dpprof.run examples/ddp.py --steps 20

--batch-size is per rank. Without torchrun it runs as a group of one.
"""

import os

import torch
import torch.distributed as dist
from common import arguments, small_cnn, synthetic_batches, train_step
from torch.nn.parallel import DistributedDataParallel


def main() -> None:
    args = arguments(__doc__.splitlines()[0])
    if "RANK" not in os.environ:  # plain `python examples/ddp.py`: a process group of one
        os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="29517")
    use_gpu = torch.cuda.is_available() and not args.cpu
    dist.init_process_group("nccl" if use_gpu else "gloo")
    rank = dist.get_rank()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if use_gpu else torch.device("cpu")
    if use_gpu:
        torch.cuda.set_device(device)
    torch.manual_seed(0)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    model = DistributedDataParallel(small_cnn().to(device), device_ids=[device.index] if use_gpu else None)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    data = synthetic_batches(args.batch_size, seed=rank)  # each rank its own shard of the data
    for step in range(args.steps):
        loss = train_step(model, optimizer, *(t.to(device) for t in next(data)))  # all-reduce in backward
        if rank == 0 and step % args.log_every == 0:
            print(f"step {step}: loss {loss.item():.3f} (rank 0 of {dist.get_world_size()})")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
