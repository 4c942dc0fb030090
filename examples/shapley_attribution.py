"""Which modality carried each decision? Exact per-instance Shapley values after training.

Trains the MultiModal loss on the synthetic 'instance' scenario (each instance informative in a
random subset of modalities, known), then compares each instance's top modality by Shapley
value with the ground truth. Run: python examples/shapley_attribution.py [--epochs N]
"""

import argparse

import lightning as L
import torch

from lightning_mmloss.experiments.classifier import MultiModalClassifier
from lightning_mmloss.experiments.data import SyntheticMultimodalDataModule

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=40)
parser.add_argument("--preset", default="default")
args = parser.parse_args()
L.seed_everything(0)
dm = SyntheticMultimodalDataModule("instance", preset=args.preset)
dm.setup()
model = MultiModalClassifier(dm.modalities, dm.input_dims, dm.num_classes, fusion="mm", hidden=[128, 32])
L.Trainer(max_epochs=args.epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False).fit(model, dm)

test = dm.splits["test"].as_batch()
with torch.no_grad():
    u = model.stacked_logits(test)
    fused = model.mm_loss.fuse(u)
    phi = model.mm_loss.shapley(u)  # (N, M): each modality's share of the predicted class's probability
correct = fused.preds == test["target"]
top = phi.argmax(dim=1)
hit = test["informative"][torch.arange(len(top)), top]
print(f"test accuracy {correct.float().mean():.3f}")
print(
    f"top-Shapley modality is informative for {hit[correct].float().mean():.3f} of the correct predictions "
    f"(a random modality: {test['informative'].float().mean():.3f})"
)
for i in range(5):
    gt = [m for m, inf in zip(dm.modalities, test["informative"][i].tolist(), strict=True) if inf]
    print(f"instance {i}: informative {gt}, Shapley {[round(v, 3) for v in phi[i].tolist()]}")
