"""Calibration is part of fit: validate/test/predict never refit it; own validation steps are calibrated too."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from lightning_mmloss import MultiModalStepOutput, SubgroupMonitor
from lightning_mmloss.metrics import fit_temperature
from tests.helpers.models import ThreeHeadNet, loaders, trainer


class OwnStepsNet(ThreeHeadNet):
    """A model with validation and test steps of its own that return a plain dict."""

    head_calls = 0

    def unimodal_logits(self, batch):
        type(self).head_calls += 1
        return super().unimodal_logits(batch)

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        loss = self.mm_loss(self.unimodal_logits(batch), batch["target"])
        self.log("val/own_loss", loss)
        return {"loss": loss}

    def test_step(self, batch, batch_idx, dataloader_idx=0):
        return self.validation_step(batch, batch_idx, dataloader_idx)


def _raw_logits(model: ThreeHeadNet, loader) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    with torch.no_grad():
        outs = [model.multimodal_step(b) for b in loader]
    return torch.cat([o.logits for o in outs]), torch.cat([o.target for o in outs])


def test_validate_and_test_never_change_the_temperature(tmp_path: Path) -> None:
    L.seed_everything(0)
    model = ThreeHeadNet()
    train, val = loaders()
    t = trainer(tmp_path, max_epochs=2)
    t.fit(model, train, val)
    fitted = float(model.mm_loss.temperature)
    assert fitted != 1.0
    # other data: the training set, with some labels shuffled (a fit there would move T a lot)
    _, other = loaders(n_val=96, batch_size=32)
    other.dataset.target = other.dataset.target[torch.randperm(96)]
    for _ in range(2):
        t.validate(model, other, verbose=False)
        assert float(model.mm_loss.temperature) == fitted
    t.test(model, other, verbose=False)
    t.predict(model, other)
    assert float(model.mm_loss.temperature) == fitted
    assert "val/temperature" not in trainer(tmp_path).validate(model, other, verbose=False)[0]


def test_fit_calibrates_on_the_last_validation_epoch(tmp_path: Path) -> None:
    L.seed_everything(0)
    model = ThreeHeadNet()
    train, val = loaders()
    # one validation run, after the only training epoch: T is fitted on the final model's logits
    trainer(tmp_path, max_epochs=1, num_sanity_val_steps=0).fit(model, train, val)
    logits, target = _raw_logits(model, val)
    assert float(model.mm_loss.temperature) == pytest.approx(fit_temperature(logits, target), rel=1e-6)


def test_model_with_its_own_validation_step_ends_fit_calibrated(tmp_path: Path) -> None:
    L.seed_everything(0)
    model = OwnStepsNet()
    train, val = loaders()
    t = trainer(
        tmp_path,
        max_epochs=1,
        num_sanity_val_steps=0,
        callbacks=[SubgroupMonitor(print_summary=False, images_every_n_epochs=None)],
    )
    OwnStepsNet.head_calls = 0
    t.fit(model, train, val)
    logits, target = _raw_logits(model, val)
    assert float(model.mm_loss.temperature) == pytest.approx(fit_temperature(logits, target), rel=1e-6)
    assert "val/temperature" in t.callback_metrics
    assert "val/reliability/audio/acc" in t.callback_metrics  # the monitor read the same step outputs
    # per validation batch: the own step's pass and one more shared by the monitor and the calibration
    n_train, n_val = len(train), len(val)
    assert OwnStepsNet.head_calls - 2 * n_val == n_train + len(val)  # the helper's _raw_logits pass


def test_calibrate_temperature_on_demand(tmp_path: Path) -> None:
    L.seed_everything(0)
    model = ThreeHeadNet(calibrate=False)
    train, val = loaders()
    trainer(tmp_path, max_epochs=1).fit(model, train, val)
    assert float(model.mm_loss.temperature) == 1.0  # calibrate=False: untouched by fit
    model.train()
    t = model.calibrate_temperature(val)
    assert model.training  # the mode is restored
    logits, target = _raw_logits(model, val)
    assert t == pytest.approx(fit_temperature(logits, target), rel=1e-6)
    assert float(model.mm_loss.temperature) == pytest.approx(t)
    with pytest.raises(ValueError, match="dataloader"):
        model.calibrate_temperature([])


def test_mixin_steps_return_the_step_output(tmp_path: Path) -> None:
    model = ThreeHeadNet()
    _, val = loaders(n_val=16, batch_size=16)
    batch = next(iter(val))
    out = model.validation_step(batch, 0) if False else model.multimodal_step(batch)
    assert isinstance(out, MultiModalStepOutput)
    assert out.unimodal_logits.shape == (16, 3, 3) and out.probs.shape == (16, 3)
    assert out.fusion is not None and out.fusion.subgroup.shape == (16,)
    torch.testing.assert_close(out.probs, (out.logits / model.mm_loss.temperature).softmax(-1))
    assert model.step_output(out, batch) is out
