"""The mixin and monitor on a GPU with mixed precision. Skipped without CUDA."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from lightning_mmloss import SubgroupMonitor
from tests.helpers.models import ThreeHeadNet, loaders, trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed", "32-true"])
def test_gpu_fit_with_mixed_precision(tmp_path: Path, precision: str) -> None:
    L.seed_everything(0)
    model = ThreeHeadNet(aux_weight=0.1)
    train, val = loaders(with_mask=True)
    monitor = SubgroupMonitor(shapley=True, print_summary=False, images_every_n_epochs=1)
    t = trainer(
        tmp_path,
        accelerator="gpu",
        devices=1,
        precision=precision,
        max_epochs=6,
        logger=TensorBoardLogger(str(tmp_path)),
        callbacks=[monitor],
    )
    t.fit(model, train, val)
    assert torch.isfinite(t.callback_metrics["train/loss"])
    assert model.mm_loss.weight.dtype == torch.float32
    assert float(t.callback_metrics["val/acc"]) > 0.6
    assert monitor.last_metrics["val/reliability/fused/acc"] == pytest.approx(float(t.callback_metrics["val/acc"]))
    out = t.predict(model, val)[0]
    assert out["probs"].dtype == torch.float32 and torch.isfinite(out["probs"]).all()
