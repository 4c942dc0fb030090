"""The mixin in real Lightning fits: steps, logging, predict, checkpoints, precision, errors."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from lightning_mmloss import MultiModalLossMixin
from tests.helpers.models import MODALITIES, ThreeHeadNet, loaders, trainer


def test_fit_learns_and_logs(tmp_path: Path) -> None:
    L.seed_everything(0)
    model = ThreeHeadNet()
    before = model.mm_loss.weight.detach().clone()
    train, val = loaders()
    t = trainer(tmp_path, max_epochs=8)
    t.fit(model, train, val)
    metrics = t.callback_metrics
    assert {"train/loss", "val/loss", "val/acc"} <= set(metrics)
    assert float(metrics["val/acc"]) > 0.7  # 3 classes: chance is 1/3
    assert not torch.equal(before, model.mm_loss.weight)  # the proxies trained
    t.test(model, val)
    assert float(t.callback_metrics["test/acc"]) == pytest.approx(float(metrics["val/acc"]))


def test_predict_returns_documented_dict(tmp_path: Path) -> None:
    model = ThreeHeadNet()
    _, val = loaders(n_val=40, batch_size=16)
    out = trainer(tmp_path).predict(model, val)
    assert len(out) == 3
    first = out[0]
    assert sorted(first) == ["modality_weights", "preds", "probs", "subgroup", "unimodal_probs"]
    assert first["probs"].shape == (16, 3) and first["preds"].shape == (16,)
    assert first["unimodal_probs"].shape == (16, 3, 3) and first["modality_weights"].shape == (16, 3)
    assert first["subgroup"].max() < 3 * 4
    torch.testing.assert_close(first["probs"].sum(1), torch.ones(16))


def test_checkpoint_reloads_to_identical_predictions(tmp_path: Path) -> None:
    L.seed_everything(0)
    model = ThreeHeadNet()
    train, val = loaders()
    t = trainer(tmp_path, max_epochs=2)
    t.fit(model, train, val)
    path = tmp_path / "model.ckpt"
    t.save_checkpoint(path)
    restored = ThreeHeadNet.load_from_checkpoint(path)
    assert "mm_loss.weight" in torch.load(path, weights_only=False)["state_dict"]
    a = trainer(tmp_path).predict(model, val)
    b = trainer(tmp_path).predict(restored, val)
    for x, y in zip(a, b, strict=True):
        for k in x:
            assert torch.equal(x[k], y[k]), k


def test_masks_aux_loss_accumulation_and_bf16(tmp_path: Path) -> None:
    L.seed_everything(0)
    model = ThreeHeadNet(aux_weight=0.5)
    train, val = loaders(with_mask=True)
    t = trainer(tmp_path, max_epochs=2, precision="bf16-mixed", accumulate_grad_batches=2)
    t.fit(model, train, val)
    assert torch.isfinite(t.callback_metrics["train/loss"]) and "train/aux_loss" in t.callback_metrics
    assert model.mm_loss.weight.dtype == torch.float32


def test_separate_proxy_learning_rate() -> None:
    model = ThreeHeadNet()
    groups = model.multimodal_param_groups(lr=1e-3, proxy_lr=1e-1, weight_decay=1e-4, proxy_weight_decay=0.0)
    assert groups[1]["params"] == [model.mm_loss.weight] and groups[1]["lr"] == 1e-1
    n_model = sum(p.numel() for p in groups[0]["params"])
    assert n_model + model.mm_loss.weight.numel() == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("fusion", ["late", "sum", "concat", "ogm_ge", "independent"])
def test_param_groups_serve_every_fusion(fusion: str) -> None:
    """Issue 27: the README's optimiser recipe raised for every baseline (compare --model died at the second)."""
    model = ThreeHeadNet(fusion=fusion)
    groups = model.multimodal_param_groups(lr=1e-3, proxy_lr=1e-2)
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(p.numel() for p in model.parameters())
    assert all(g["params"] for g in groups)
    torch.optim.Adam(groups)  # a valid optimiser
    if fusion == "concat":  # its linear layer is the fusion's own
        assert groups[1]["params"] == list(model.mm_baseline.parameters()) and groups[1]["lr"] == 1e-2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lr": 0.0}, "`lr`"),
        ({"lr": float("nan")}, "`lr`"),
        ({"lr": 1e-3, "proxy_lr": -1.0}, "`proxy_lr`"),
        ({"lr": 1e-3, "weight_decay": -1.0}, "`weight_decay`"),
        ({"lr": "fast"}, "`lr`"),
    ],
)
def test_param_groups_refuse_bad_settings(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        ThreeHeadNet().multimodal_param_groups(**kwargs)


class _Bad(ThreeHeadNet):
    def __init__(self, mode: str, **kw):
        super().__init__(**kw)
        self.mode = mode

    def unimodal_logits(self, batch):
        out = super().unimodal_logits(batch)
        if self.mode == "missing":
            out.pop("text")
        elif self.mode == "extra":
            out["depth"] = out["text"]
        elif self.mode == "shape":
            out["text"] = out["text"][:, :2]
        return out


@pytest.mark.parametrize(
    ("mode", "match"),
    [
        ("missing", r"missing: \['text'\]"),
        ("extra", r"unknown: \['depth'\]"),
        ("shape", r"`unimodal_logits\['text'\]` has shape \(32, 2\)"),
    ],
)
def test_bad_unimodal_logits_fail_at_first_step(tmp_path: Path, mode: str, match: str) -> None:
    train, val = loaders()
    with pytest.raises(ValueError, match=match):
        trainer(tmp_path, max_steps=1).fit(_Bad(mode), train, val)


def test_batch_without_target_and_bad_mask(tmp_path: Path) -> None:
    model = ThreeHeadNet()
    batch = {m: torch.randn(4, 6) for m in MODALITIES}
    with pytest.raises(ValueError, match=r"batch to hold the key 'target', but got keys \['audio', 'video', 'text'\]"):
        model.validation_step(batch, 0)
    with pytest.raises(ValueError, match=r"tuple/list batch \(inputs..., target\) of at least 2 elements"):
        model.get_target((torch.zeros(3),))
    batch["target"] = torch.zeros(4, dtype=torch.long)
    batch["modality_mask"] = torch.ones(4, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"`modality_mask` to have shape \(B, M\) = \(4, 3\), but got shape \(4, 2\)"):
        model.predict_step(batch, 0)


def test_configure_multimodal_never_called(tmp_path: Path) -> None:
    class Forgot(MultiModalLossMixin, L.LightningModule):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(6, 3)

        def unimodal_logits(self, batch):
            return {"audio": self.head(batch["audio"])}

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    train, val = loaders()
    with pytest.raises(RuntimeError, match=r"call `self.configure_multimodal\(modalities=\[...\], num_classes=...\)`"):
        trainer(tmp_path, max_steps=1).fit(Forgot(), train, val)


def test_warns_when_proxies_not_in_optimizer(tmp_path: Path) -> None:
    class HeadsOnly(ThreeHeadNet):
        def configure_optimizers(self):
            return torch.optim.Adam(self.heads.parameters(), lr=1e-3)

    train, val = loaders()
    with pytest.warns(UserWarning, match=r"proxies \(mm_loss.weight\) are in no optimizer"):
        trainer(tmp_path, max_steps=1).fit(HeadsOnly(), train, val)


def test_mixin_needs_a_lightning_module() -> None:
    class Plain(MultiModalLossMixin, nn.Module):
        def __init__(self):
            super().__init__()
            self.configure_multimodal(2, 3)

    with pytest.raises(TypeError, match=r"mixed into a LightningModule .* but got Plain"):
        Plain()


def test_mixin_after_lightning_module_is_refused() -> None:
    class Wrong(L.LightningModule, MultiModalLossMixin):
        def __init__(self):
            super().__init__()
            self.configure_multimodal(2, 3)

    with pytest.raises(TypeError, match="MultiModalLossMixin before LightningModule in the bases of Wrong"):
        Wrong()


def test_two_validation_loaders_get_their_own_accuracy(tmp_path: Path) -> None:
    L.seed_everything(0)
    model = ThreeHeadNet()
    train, val_a = loaders(n_val=64)
    _, val_b = loaders(n_val=32, with_mask=True)
    t = trainer(tmp_path, max_epochs=1)
    t.fit(model, train, val_a)
    both = t.validate(model, [val_a, val_b], verbose=False)
    alone_a = trainer(tmp_path).validate(model, val_a, verbose=False)[0]
    alone_b = trainer(tmp_path).validate(model, val_b, verbose=False)[0]
    assert both[0]["val/acc/dataloader_idx_0"] == pytest.approx(alone_a["val/acc"])
    assert both[1]["val/acc/dataloader_idx_1"] == pytest.approx(alone_b["val/acc"])
    assert alone_a["val/acc"] != pytest.approx(alone_b["val/acc"])  # the case where pooling was visible


def test_train_loss_is_fused_plus_weighted_aux_plus_extra(tmp_path: Path) -> None:
    class WithExtra(ThreeHeadNet):
        def extra_loss(self, batch, unimodal_logits):
            return unimodal_logits.new_tensor(0.25)

    L.seed_everything(0)
    model = WithExtra(aux_weight=0.7)
    train, val = loaders(with_mask=True)
    t = trainer(tmp_path, max_epochs=1)
    t.fit(model, train, val)
    m = {k: float(v) for k, v in t.callback_metrics.items()}
    assert m["train/extra_loss"] == pytest.approx(0.25)
    assert m["train/loss_epoch"] == pytest.approx(m["train/fused_loss"] + 0.7 * m["train/aux_loss"] + 0.25, rel=1e-5)


def test_training_step_uses_the_batch_mask(tmp_path: Path) -> None:
    L.seed_everything(0)
    model = ThreeHeadNet()
    train, _ = loaders(with_mask=True, batch_size=64)
    batch = next(iter(train))
    assert not bool(batch["modality_mask"].all())
    model.log = lambda *args, **kwargs: None  # a step outside a Trainer
    loss = model.training_step(batch, 0)
    u = model.mm_loss.stack_logits(model.unimodal_logits(batch))
    torch.testing.assert_close(loss, model.mm_loss(u, batch["target"], batch["modality_mask"]))
    assert not torch.allclose(loss, model.mm_loss(u, batch["target"]))


@pytest.mark.timeout(600)
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's compiler stack about itself
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf:UserWarning")  # dynamo's own
def test_compiled_loss_inside_the_mixin(tmp_path: Path) -> None:
    L.seed_everything(0)
    model = ThreeHeadNet()
    model.mm_loss = torch.compile(model.mm_loss)
    train, val = loaders(n_train=64, n_val=32)
    t = trainer(tmp_path, max_epochs=1)
    t.fit(model, train, val)
    assert torch.isfinite(t.callback_metrics["train/loss"])
