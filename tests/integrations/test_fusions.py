"""Every fusion of configure_multimodal on a user's own mixin model, with the monitor attached (issue 16)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from lightning_mmloss import SubgroupMonitor
from lightning_mmloss.baselines import BASELINE_FUSIONS, FUSIONS, BaselineFusion
from tests.helpers.models import MODALITIES, ThreeHeadNet, loaders, trainer


@pytest.mark.parametrize("fusion", FUSIONS)
def test_every_fusion_trains_a_user_model_with_the_monitor(tmp_path: Path, fusion: str) -> None:
    L.seed_everything(0)
    extra = {"ogm_gaussian": False} if fusion == "ogm_ge" else {}
    model = ThreeHeadNet(fusion=fusion, **extra)
    train, val = loaders(with_mask=True)
    monitor = SubgroupMonitor(print_summary=False, images_every_n_epochs=None)
    t = trainer(tmp_path, max_epochs=6, callbacks=[monitor])
    t.fit(model, train, val)
    metrics = monitor.last_metrics
    for head in [*MODALITIES, "fused"]:
        assert f"val/reliability/{head}/acc" in metrics, head
    assert ("val/subgroups/active" in metrics) == (fusion == "mm")
    assert metrics["val/reliability/fused/acc"] > 0.6, metrics  # 3 classes: chance 1/3
    assert ("val/temperature" in t.callback_metrics) == (fusion == "mm")  # calibration: mm by default
    out = trainer(tmp_path).predict(model, val)[0]
    expected = {"probs", "preds", "unimodal_probs"} | ({"subgroup", "modality_weights"} if fusion == "mm" else set())
    assert set(out) == expected
    torch.testing.assert_close(out["probs"].sum(1), torch.ones(len(out["preds"])))


@pytest.mark.parametrize("fusion", BASELINE_FUSIONS)
def test_baseline_fused_logits_ignore_absent_modalities(fusion: str) -> None:
    """An absent modality's logits, even NaN, never reach a baseline's fused logits."""
    base = BaselineFusion(fusion, num_classes=3, num_modalities=3)
    u = torch.randn(5, 3, 3)
    mask = torch.tensor([[True, True, False]] * 5)
    nan = u.clone()
    nan[:, 2] = float("nan")
    torch.testing.assert_close(base.fused_logits(nan, mask), base.fused_logits(u, mask))
    if fusion in ("late", "ogm_ge", "independent"):
        torch.testing.assert_close(base.fused_logits(u, mask), u[:, :2].mean(dim=1))
    if fusion == "sum":
        torch.testing.assert_close(base.fused_logits(u, mask), u[:, :2].softmax(-1).sum(dim=1))


def test_baselines_refuse_options_of_the_multimodal_loss() -> None:
    with pytest.raises(ValueError, match="gamma"):
        ThreeHeadNet(fusion="late", gamma=0.2)
    with pytest.raises(ValueError, match="fusion"):
        ThreeHeadNet(fusion="nope")
    with pytest.raises(ValueError, match="at least 2 modalities"):
        BaselineFusion("ogm_ge", num_classes=2, num_modalities=1)


def test_a_modality_named_fused_is_refused() -> None:
    class Net(ThreeHeadNet):
        def __init__(self) -> None:
            L.LightningModule.__init__(self)
            self.configure_multimodal(["audio", "fused"], 3)

    with pytest.raises(ValueError, match="'fused'"):
        Net()


def test_ogm_ge_warns_without_modality_parameters(tmp_path: Path) -> None:
    model = ThreeHeadNet(fusion="ogm_ge")
    train, val = loaders(n_train=64, n_val=32)
    with pytest.warns(UserWarning, match="modality_parameters"):
        trainer(tmp_path, max_epochs=1).fit(model, train, val)
