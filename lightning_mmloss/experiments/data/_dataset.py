"""A dataset of named views with a target and the per-instance ground truth of informative views."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lightning_mmloss import _validation as V

#: Seeds are in Lightning's ``seed_everything`` range; the data modules derive their generators'
#: seeds from them (``seed * 7919 + 101``), which stays inside torch.Generator's 63 bits.
MAX_SEED = 2**32 - 1


class MultiviewDataset(Dataset):
    """Instances as dicts: one tensor per view, ``target`` and ``informative`` (bool per view).

    Args:
        views: view name -> ``(N, d_view)`` features.
        target: ``(N,)`` class indices.
        informative: optional ``(N, M)`` bool ground truth: ``True`` where the view carries the
            class signal (views in the order of ``views``).

    Example::

        >>> import torch
        >>> from lightning_mmloss.experiments.data import MultiviewDataset
        >>> ds = MultiviewDataset({"a": torch.zeros(3, 2), "b": torch.ones(3, 4)}, torch.tensor([0, 1, 0]))
        >>> item = ds[1]
        >>> sorted(item), item["b"].shape, item["informative"].tolist()
        (['a', 'b', 'informative', 'target'], torch.Size([4]), [True, True])
    """

    def __init__(self, views: Mapping[str, Tensor], target: Tensor, informative: Tensor | None = None) -> None:
        self.names = list(views)
        self.views = {k: v.float() for k, v in views.items()}
        if (
            not isinstance(target, Tensor)
            or target.is_floating_point()
            or target.is_complex()
            or target.dtype == torch.bool
        ):
            got = target.dtype if isinstance(target, Tensor) else type(target).__name__
            raise TypeError(f"Expected argument `target` to hold integer class indices, but got {got}.")
        self.target = target.long()
        n = len(self.target)
        for name, v in self.views.items():
            if v.dim() != 2 or v.shape[0] != n:
                raise ValueError(f"Expected view {name!r} to have shape ({n}, d), but got {tuple(v.shape)}.")
        if informative is not None and informative.shape != (n, len(self.names)):
            raise ValueError(
                f"Expected `informative` to have shape ({n}, {len(self.names)}), but got {tuple(informative.shape)}."
            )
        self.informative = informative if informative is not None else torch.ones(n, len(self.names), dtype=torch.bool)

    def __len__(self) -> int:
        return len(self.target)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        item = {name: v[i] for name, v in self.views.items()}
        item["target"] = self.target[i]
        item["informative"] = self.informative[i]
        return item

    def as_batch(self) -> dict[str, Tensor]:
        """The whole dataset as one batch dict (for evaluation and attribution)."""
        return {**self.views, "target": self.target, "informative": self.informative}


class _SplitsDataModule(L.LightningDataModule):
    """Loaders over ``self.splits`` (train, val, test), shared by the data modules.

    Subclasses fill ``self.splits`` in ``setup`` and set ``batch_size`` (``0`` = a whole split
    per batch), ``num_workers`` and ``seed`` (which also fixes the training shuffle).
    """

    splits: dict[str, MultiviewDataset]
    batch_size: int
    num_workers: int
    seed: int

    def _set_loader_args(self, batch_size: Any, seed: Any, num_workers: Any) -> None:
        """Check and set ``batch_size`` (``0``: a whole split), ``seed`` and ``num_workers``."""
        self.batch_size = V.check_int("batch_size", batch_size, 0)
        self.seed = V.check_int("seed", seed, 0)
        if self.seed > MAX_SEED:
            raise ValueError(
                f"Expected argument `seed` to be at most 2**32 - 1 (seed_everything's range), but got {seed}."
            )
        self.num_workers = V.check_int("num_workers", num_workers, 0)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        ds = self.splits[split]
        gen = torch.Generator().manual_seed(self.seed) if shuffle else None
        # keywords only: Lightning re-creates loaders (predict) from their captured keyword arguments
        bs = self.batch_size or len(ds)
        return DataLoader(ds, batch_size=bs, shuffle=shuffle, num_workers=self.num_workers, generator=gen)

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches."""
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches."""
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        """Test batches."""
        return self._loader("test", False)

    def predict_dataloader(self) -> DataLoader:
        """The test split, for ``predict``."""
        return self._loader("test", False)
