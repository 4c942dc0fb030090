"""Your own model and data module against the baseline fusions: ``lightning-mmloss compare --model --data``.

Run: ``python examples/own_model.py`` (the same as
``PYTHONPATH=examples lightning-mmloss compare --model own_model.TwoViewNet --data own_model.TwoViews``).

The data-module contract of ``compare`` (and of ``lightning-mmloss fit --model``): after ``setup``
the data module has ``modalities`` (the names, as the batches' keys) and ``num_classes``, plus
``input_dims`` when the model takes it; its batches hold ``target``; it has train, val and test
dataloaders; a ``seed`` argument, if it takes one, is set to each run's seed. The model is built
with :class:`~lightning_mmloss.MultiModalLossMixin` and hands its ``fusion`` argument to
``configure_multimodal``; arguments named ``modalities``, ``num_classes`` or ``input_dims`` are
filled from the data module.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lightning_mmloss import MultiModalLossMixin


class _Views(Dataset):
    def __init__(self, x: dict[str, torch.Tensor], y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {**{k: v[i] for k, v in self.x.items()}, "target": self.y[i]}


class TwoViews(L.LightningDataModule):
    """Two views of 3 classes: ``shape`` informative everywhere, ``color`` on half of the instances."""

    def __init__(self, n: int = 1200, batch_size: int = 100, seed: int = 0) -> None:
        super().__init__()
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.modalities, self.num_classes, self.input_dims = ["shape", "color"], 3, {"shape": 8, "color": 4}

    def setup(self, stage: str | None = None) -> None:
        g = torch.Generator().manual_seed(self.seed)
        y = torch.randint(0, 3, (self.n,), generator=g)
        centers = {m: torch.randn(3, d, generator=g) * 1.5 for m, d in self.input_dims.items()}
        x = {m: torch.randn(self.n, d, generator=g) + centers[m][y] for m, d in self.input_dims.items()}
        swap = torch.rand(self.n, generator=g) < 0.5  # color is another class's on half of the instances
        x["color"][swap] = torch.randn(int(swap.sum()), 4, generator=g) + centers["color"][(y[swap] + 1) % 3]
        cut = [int(self.n * 0.6), int(self.n * 0.8)]
        parts = [slice(0, cut[0]), slice(cut[0], cut[1]), slice(cut[1], None)]
        self.sets = [_Views({m: v[p] for m, v in x.items()}, y[p]) for p in parts]

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.sets[0], batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.sets[1], batch_size=self.batch_size)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.sets[2], batch_size=self.batch_size)


class TwoViewNet(MultiModalLossMixin, L.LightningModule):
    """One MLP head per view; ``fusion`` picks the MultiModal loss or a baseline."""

    def __init__(
        self, modalities: list[str], input_dims: dict[str, int], num_classes: int, fusion: str = "mm", width: int = 32
    ) -> None:
        super().__init__()
        self.heads = nn.ModuleDict(
            {
                m: nn.Sequential(nn.Linear(input_dims[m], width), nn.ReLU(), nn.Linear(width, num_classes))
                for m in modalities
            }
        )
        self.configure_multimodal(modalities, num_classes, proxies_per_class=5, fusion=fusion)

    def unimodal_logits(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {m: head(batch[m]) for m, head in self.heads.items()}

    def modality_parameters(self) -> dict[str, list[nn.Parameter]]:  # OGM-GE's Gaussian enhancement
        return {m: list(head.parameters()) for m, head in self.heads.items()}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-2)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", default="2")
    parser.add_argument("--epochs", default="15")
    parser.add_argument("--output", default="runs/own_model")
    opts = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # so that compare can import own_model.*
    from lightning_mmloss.experiments.compare import compare_main

    classes = ["--model", "own_model.TwoViewNet", "--data", "own_model.TwoViews"]
    compare_main([*classes, "--fusions", "mm,late,sum,ogm_ge", "--seeds", opts.seeds, "--epochs", opts.epochs,
                  "--output", opts.output])  # fmt: skip
