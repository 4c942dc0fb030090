"""A custom multimodal model where a modality is sometimes missing (modality_mask).

Image + tabular heads; 30% of the instances have no image. The data module's batches carry
``modality_mask`` (True = present); the mixin passes it to the loss, so a missing image adds
nothing to the fusion and gets no gradient. Run: python examples/masked_modality.py [--epochs N]
"""

import argparse

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lightning_mmloss import MultiModalLossMixin, SubgroupMonitor


class ImageTabular(Dataset):
    def __init__(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.y = torch.randint(0, 3, (n,), generator=g)
        self.image = torch.randn(n, 1, 8, 8, generator=g)
        self.image[:, 0, 2:5, 2:5] += 2.0 * (self.y.float() - 1).view(-1, 1, 1)  # a bright/dark patch
        self.tab = torch.randn(n, 5, generator=g)
        self.tab[:, 0] += 1.5 * (self.y.float() - 1)
        self.has_image = torch.rand(n, generator=g) > 0.3

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        image = self.image[i] if self.has_image[i] else torch.full_like(self.image[i], float("nan"))
        mask = torch.stack([self.has_image[i], torch.tensor(True)])  # (image, tabular)
        return {"image": image, "tabular": self.tab[i], "modality_mask": mask, "target": self.y[i]}


class Net(MultiModalLossMixin, L.LightningModule):
    def __init__(self):
        super().__init__()
        self.cnn = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 3)
        )
        self.mlp = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 3))
        self.configure_multimodal(["image", "tabular"], num_classes=3, proxies_per_class=6)

    def unimodal_logits(self, batch):
        image = torch.nan_to_num(batch["image"])  # missing images: any placeholder, masked out in the loss
        return {"image": self.cnn(image), "tabular": self.mlp(batch["tabular"])}

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=3e-3)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--size", type=int, default=3000)
    args = parser.parse_args()
    L.seed_everything(0)
    train = DataLoader(ImageTabular(args.size, 0), batch_size=64, shuffle=True)
    val = DataLoader(ImageTabular(args.size // 3, 1), batch_size=256)
    trainer = L.Trainer(
        max_epochs=args.epochs, callbacks=[SubgroupMonitor(every_n_epochs=5)], logger=False, enable_checkpointing=False
    )
    trainer.fit(Net(), train, val)
    print("val/acc", float(trainer.callback_metrics["val/acc"]))
