"""Shared plumbing of the offline multi-view data sets built from scikit-learn's bundled data."""

from __future__ import annotations

import torch

from lightning_mmloss.experiments.data import MultiviewDataset
from lightning_mmloss.experiments.data._dataset import _SplitsDataModule
from lightning_mmloss.experiments.data.uci_mfeat import stratified_split


class StandardisedViews(_SplitsDataModule):
    """Views from :meth:`load`, split 60/20/20 (stratified by ``seed``), standardised on the training split.

    Subclasses set ``num_classes``, ``views`` (name -> number of features) and ``min_std`` (the
    smallest standard deviation a feature is divided by), and implement :meth:`load`.

    Args:
        batch_size: loader batch size (``0`` = whole split).
        seed: split and shuffle seed.
        num_workers: loader workers.
    """

    num_classes: int
    views: dict[str, int]
    min_std: float

    def __init__(self, batch_size: int = 128, seed: int = 0, num_workers: int = 0) -> None:
        super().__init__()
        self.modalities = list(self.views)
        self.input_dims = dict(self.views)
        self._set_loader_args(batch_size, seed, num_workers)
        self.save_hyperparameters()
        self.splits: dict[str, MultiviewDataset] = {}

    def load(self) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """All instances: ``({view: (N, D)}, target (N,))``."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        """Load, split and standardise; deterministic by ``seed``."""
        if self.splits:
            return
        views, target = self.load()
        idx = stratified_split(target, (0.6, 0.2, 0.2), self.seed)
        train = idx[0]
        for split, ids in zip(("train", "val", "test"), idx, strict=True):
            split_views = {}
            for name, v in views.items():
                mean, std = v[train].mean(0), v[train].std(0).clamp_min(self.min_std)
                split_views[name] = (v[ids] - mean) / std
            self.splits[split] = MultiviewDataset(split_views, target[ids])
