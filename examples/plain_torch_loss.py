"""MultiModalLoss in a plain PyTorch loop (no Lightning): two heads, one loss, one optimizer.

Run: python examples/plain_torch_loss.py [--steps N]
"""

import argparse

import torch
from torch import nn

from lightning_mmloss import MultiModalLoss

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=300)
args = parser.parse_args()
torch.manual_seed(0)

# data: "image" features carry the class for 60% of the instances, "text" for the rest
n, num_classes = 2000, 3
y = torch.randint(0, num_classes, (n,))
image, text = torch.randn(n, 16), torch.randn(n, 12)
by_image = torch.rand(n) < 0.6
image[by_image, :num_classes] += 3 * nn.functional.one_hot(y[by_image], num_classes)
text[~by_image, :num_classes] += 3 * nn.functional.one_hot(y[~by_image], num_classes)

heads = nn.ModuleDict({"image": nn.Linear(16, num_classes), "text": nn.Linear(12, num_classes)})
criterion = MultiModalLoss(num_classes, ["image", "text"], proxies_per_class=8, gamma=0.1)
# the proxies are parameters of the loss: they go into the optimizer with the heads
optimizer = torch.optim.Adam([*heads.parameters(), *criterion.parameters()], lr=1e-2)

for step in range(args.steps):
    idx = torch.randint(0, n, (128,))
    logits = {"image": heads["image"](image[idx]), "text": heads["text"](text[idx])}
    loss = criterion(logits, y[idx])
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if step % 100 == 0:
        print(f"step {step:4d}  loss {loss.item():.4f}")

with torch.no_grad():
    out = criterion.fuse({"image": heads["image"](image), "text": heads["text"](text)})
print(f"fused accuracy {(out.preds == y).float().mean():.3f}")
print(f"mean modality weights where image is informative: {out.modality_weights[by_image].mean(0).tolist()}")
print(f"mean modality weights where text is informative:  {out.modality_weights[~by_image].mean(0).tolist()}")
print(f"subgroups used: {out.subgroup.unique().numel()} of {criterion.weight.shape[0]}")
