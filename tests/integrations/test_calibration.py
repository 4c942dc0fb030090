"""Calibration is part of fit: validate/test/predict never refit it; own validation steps are calibrated too."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from lightning_mmloss import MultiModalStepOutput, SubgroupMonitor
from lightning_mmloss.functional import log_evidence_logits
from lightning_mmloss.metrics import DecisionFit, TemperatureFit, fit_decision, fit_temperature
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


def _raw_logits(model: ThreeHeadNet, loader) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The raw fused logits, the heads' evidence at weight 1 and the targets of ``loader``."""
    model.eval()
    with torch.no_grad():
        outs = [(model.multimodal_step(b), model.get_modality_mask(b)) for b in loader]
    evidence = [log_evidence_logits(o.unimodal_logits, modality_mask=m, log_evidence=1.0) for o, m in outs]
    return torch.cat([o.logits for o, _ in outs]), torch.cat(evidence), torch.cat([o.target for o, _ in outs])


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
    logits, evidence, target = _raw_logits(model, val)
    temperature, weight = fit_decision(logits, evidence, target)
    assert float(model.mm_loss.temperature) == pytest.approx(temperature, rel=1e-5)
    assert float(model.mm_loss.evidence_weight) == pytest.approx(weight, rel=1e-5)
    # and the decision is (o + w E) / T: its predictions, not only its probabilities, follow the fit
    out = model.multimodal_step(next(iter(val)))
    expected = (out.logits + weight * evidence[: len(out.logits)]) / temperature
    torch.testing.assert_close(out.probs, expected.softmax(-1), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.fusion.logits, expected, rtol=1e-4, atol=1e-4)


def test_calibrate_temperature_fits_the_temperature_only(tmp_path: Path) -> None:
    L.seed_everything(0)
    model = ThreeHeadNet(calibrate="temperature")
    assert type(model.mm_calibration) is TemperatureFit
    train, val = loaders()
    t = trainer(tmp_path, max_epochs=1, num_sanity_val_steps=0)
    t.fit(model, train, val)
    logits, _, target = _raw_logits(model, val)
    assert float(model.mm_loss.temperature) == pytest.approx(fit_temperature(logits, target), rel=1e-5)
    assert float(model.mm_loss.evidence_weight) == 0.0
    assert "val/temperature" in t.callback_metrics and "val/evidence_weight" not in t.callback_metrics


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
    logits, evidence, target = _raw_logits(model, val)
    temperature, weight = fit_decision(logits, evidence, target)
    assert float(model.mm_loss.temperature) == pytest.approx(temperature, rel=1e-5)
    assert float(model.mm_loss.evidence_weight) == pytest.approx(weight, rel=1e-5, abs=1e-9)
    assert "val/temperature" in t.callback_metrics and "val/evidence_weight" in t.callback_metrics
    assert "val/reliability/audio/acc" in t.callback_metrics  # the monitor read the same step outputs
    # per validation batch: the own step's pass and one more shared by the monitor and the calibration
    n_train, n_val = len(train), len(val)
    assert OwnStepsNet.head_calls - 2 * n_val == n_train + len(val)  # the helper's _raw_logits pass


def test_calibrate_on_demand(tmp_path: Path) -> None:
    L.seed_everything(0)
    model = ThreeHeadNet(calibrate=False)
    assert model.mm_calibration is None
    train, val = loaders()
    trainer(tmp_path, max_epochs=1).fit(model, train, val)
    assert float(model.mm_loss.temperature) == 1.0 and float(model.mm_loss.evidence_weight) == 0.0  # untouched
    model.train()
    fitted = model.calibrate(val)
    assert model.training  # the mode is restored
    logits, evidence, target = _raw_logits(model, val)
    temperature, weight = fit_decision(logits, evidence, target)
    assert fitted == pytest.approx({"temperature": temperature, "evidence_weight": weight}, rel=1e-5)
    assert float(model.mm_loss.temperature) == pytest.approx(temperature, rel=1e-6)
    assert float(model.mm_loss.evidence_weight) == pytest.approx(weight, rel=1e-6)
    # the temperature alone, with the fitted weight kept: the logits it fits are (o + w E)
    t = model.calibrate_temperature(val)
    assert float(model.mm_loss.evidence_weight) == pytest.approx(weight, rel=1e-6)
    assert float(model.mm_loss.temperature) == pytest.approx(t)
    with pytest.raises(ValueError, match="dataloader"):
        model.calibrate_temperature([])


@pytest.mark.parametrize(
    ("loader", "error", "match"),
    [
        (None, TypeError, r"`dataloader`.*NoneType"),
        ({"target": torch.zeros(2)}, TypeError, r"`dataloader`.*dict \(a batch\?\)"),
        (torch.zeros(3), TypeError, r"`dataloader`.*Tensor"),
        ("val", TypeError, r"`dataloader`.*str"),
    ],
)
def test_calibrate_refuses_what_is_not_a_dataloader(loader, error, match) -> None:
    """Issue 27: a batch or None instead of a loader failed inside the user's code."""
    model = ThreeHeadNet()
    for fn in (model.calibrate, model.calibrate_temperature):
        with pytest.raises(error, match=match):
            fn(loader)
    assert float(model.mm_loss.temperature) == 1.0


def test_all_ignored_targets_keep_a_fitted_calibration(tmp_path: Path) -> None:
    """Issue 27: all-ignore_index targets reset a fitted temperature to 1.0, on demand and during fit."""
    L.seed_everything(0)
    model = ThreeHeadNet(ignore_index=-1)
    model.mm_loss.temperature.fill_(2.5)
    model.mm_loss.evidence_weight.fill_(3.0)
    train, val = loaders()
    ignored = [dict(b, target=torch.full_like(b["target"], -1)) for b in val]
    with pytest.raises(ValueError, match=r"every target was ignored"):
        model.calibrate(ignored)
    assert float(model.mm_loss.temperature) == 2.5 and float(model.mm_loss.evidence_weight) == 3.0
    with pytest.warns(UserWarning, match="calibration was not refitted"):
        loader = torch.utils.data.DataLoader(ignored, batch_size=None)  # the batches as they are
        trainer(tmp_path, max_epochs=1, num_sanity_val_steps=0).fit(model, train, loader)
    assert float(model.mm_loss.temperature) == 2.5 and float(model.mm_loss.evidence_weight) == 3.0


def test_a_step_output_without_target_is_refused_by_name(tmp_path: Path) -> None:
    """Issue 27: a step output with target=None failed fit with a bare AssertionError."""

    class NoTarget(ThreeHeadNet):
        def validation_step(self, batch, batch_idx, dataloader_idx=0):
            return self.multimodal_step(batch, with_target=False)

    train, val = loaders()
    with pytest.raises(ValueError, match=r"target=None.*calibrate=False"):
        trainer(tmp_path, max_epochs=1, num_sanity_val_steps=0).fit(NoTarget(), train, val)


@pytest.mark.parametrize("bad", ["yes", 1, "decision"])
def test_configure_refuses_an_unknown_calibration(bad) -> None:
    with pytest.raises(ValueError, match=r"`calibrate` to be True, False, 'temperature' or None"):
        ThreeHeadNet(calibrate=bad)


def test_the_baselines_calibrate_their_temperature(tmp_path: Path) -> None:
    model = ThreeHeadNet(fusion="late", calibrate=True)
    assert type(model.mm_calibration) is TemperatureFit and not isinstance(model.mm_calibration, DecisionFit)
    train, val = loaders()
    trainer(tmp_path, max_epochs=1, num_sanity_val_steps=0).fit(model, train, val)
    assert float(model.mm_baseline.temperature) != 1.0
    assert set(model.calibrate(val)) == {"temperature"}


def test_mixin_steps_return_the_step_output(tmp_path: Path) -> None:
    model = ThreeHeadNet()
    _, val = loaders(n_val=16, batch_size=16)
    batch = next(iter(val))
    out = model.multimodal_step(batch)
    assert isinstance(out, MultiModalStepOutput)
    assert out.unimodal_logits.shape == (16, 3, 3) and out.probs.shape == (16, 3)
    assert out.fusion is not None and out.fusion.subgroup.shape == (16,)
    torch.testing.assert_close(out.probs, (out.logits / model.mm_loss.temperature).softmax(-1))  # T = 1, w = 0
    # with a fitted calibration the step's decision is (o + w E) / T; its raw logits stay o
    model.mm_loss.temperature.fill_(0.5)
    model.mm_loss.evidence_weight.fill_(4.0)
    fitted = model.multimodal_step(batch)
    torch.testing.assert_close(fitted.logits, out.logits)
    evidence = log_evidence_logits(out.unimodal_logits, log_evidence=1.0)
    decision = (out.logits + 4.0 * evidence) / 0.5
    torch.testing.assert_close(fitted.fusion.logits, decision)
    torch.testing.assert_close(fitted.probs, decision.softmax(-1))
    assert torch.equal(fitted.preds, decision.argmax(-1))
    pred = model.predict_step(batch, 0)
    torch.testing.assert_close(pred["probs"], decision.softmax(-1))
    assert model.step_output(out, batch) is out
