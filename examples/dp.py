"""nn.DataParallel over every visible GPU (on a machine without GPU, DP calls the model directly).

    python examples/dp.py --steps 20
    dpprof run examples/dp.py --steps 20              # DP's scatter/replicate/parallel_apply/gather marked
"""

import torch
from common import arguments, small_cnn, synthetic_batches, train_step
from torch import nn


def main() -> None:
    args = arguments(__doc__.splitlines()[0])
    use_gpu = torch.cuda.is_available() and not args.cpu
    device = torch.device("cuda:0" if use_gpu else "cpu")
    model = nn.DataParallel(small_cnn().to(device))  # the batch is split over the GPUs, dim 0
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    data = synthetic_batches(args.batch_size)
    for step in range(args.steps):
        loss = train_step(model, optimizer, *(t.to(device) for t in next(data)))
        if step % args.log_every == 0:
            print(f"step {step}: loss {loss.item():.3f} on {max(1, len(model.device_ids))} device(s)")


if __name__ == "__main__":
    main()
