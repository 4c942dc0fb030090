"""Items of issue 17 fixed on the way through issue 16 (each failed on the code before)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from lightning_mmloss import MultiModalLoss, MultiModalLossMixin, SubgroupMonitor
from lightning_mmloss.metrics import TemperatureFit
from tests.helpers.models import ThreeHeadNet, loaders, trainer


def test_manual_optimization_is_refused_with_what_to_do(tmp_path: Path) -> None:
    class Manual(ThreeHeadNet):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

    train, val = loaders(n_train=64, n_val=32)
    with pytest.raises(RuntimeError, match="automatic_optimization = False"):
        trainer(tmp_path, max_epochs=1).fit(Manual(), train, val)


def test_flags_and_indices_are_not_coerced() -> None:
    with pytest.raises(TypeError, match="validate_args"):
        MultiModalLoss(3, 2, validate_args="no")
    with pytest.raises(TypeError, match="ignore_index"):
        TemperatureFit(ignore_index=1.9)


def test_shapley_with_too_many_modalities_is_refused_at_setup(tmp_path: Path) -> None:
    class Wide(MultiModalLossMixin, L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(2, 2)
            self.configure_multimodal(13, 2, 2)

    t = trainer(tmp_path)
    with pytest.raises(ValueError, match="at most 12 modalities"):
        SubgroupMonitor(shapley=True).setup(t, Wide(), "fit")
    SubgroupMonitor(shapley=False, images_every_n_epochs=None).setup(t, Wide(), "fit")


def test_all_ignored_batch_through_the_functional_loss_without_checks() -> None:
    from lightning_mmloss.functional import multimodal_loss

    u = torch.randn(4, 2, 3, requires_grad=True)
    loss = multimodal_loss(u, torch.full((4,), -100), torch.rand(6, 6), validate_args=False)
    assert float(loss.detach()) == 0.0


def test_an_empty_validation_batch_is_skipped(tmp_path: Path) -> None:
    """Item 13: an empty batch reached torchmetrics' stat_scores and crashed."""
    from torch.utils.data import DataLoader

    train, val = loaders(n_train=64, n_val=32)
    batches = [*list(val), {k: v[:0] for k, v in next(iter(val)).items()}]
    monitor = SubgroupMonitor(print_summary=False, images_every_n_epochs=None)
    t = trainer(tmp_path, max_epochs=1, callbacks=[monitor])
    t.fit(ThreeHeadNet(), train, DataLoader(batches, batch_size=None))
    assert 0.0 <= float(t.callback_metrics["val/acc"]) <= 1.0
    assert "val/reliability/fused/acc" in monitor.last_metrics
