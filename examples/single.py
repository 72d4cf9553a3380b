"""Single-device training, as plainly as it gets.

    python examples/single.py --steps 20
    dpprof run examples/single.py --steps 20          # the same run, profiled
"""

import torch
from common import arguments, small_cnn, synthetic_batches
from torch import nn

args = arguments(__doc__.splitlines()[0])
device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
model = small_cnn().to(device)
optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
data = synthetic_batches(args.batch_size)

for step in range(args.steps):
    images, labels = next(data)
    images, labels = images.to(device), labels.to(device)
    loss = nn.functional.cross_entropy(model(images), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()  # dpprof run: one step ends here
    if step % args.log_every == 0:
        print(f"step {step}: loss {loss.item():.3f}")
