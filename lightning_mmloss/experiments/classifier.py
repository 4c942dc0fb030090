"""``MultiModalClassifier``: per-modality MLP heads with a switchable fusion (MultiModal loss or baselines)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_mmloss import _validation as V
from lightning_mmloss.loss import PAPER_OPTIONS
from lightning_mmloss.mixin import MultiModalLossMixin, _accuracies
from lightning_mmloss.step_output import MultiModalStepOutput

FUSIONS = ("mm", "sum", "concat", "late", "ogm_ge", "independent")
RECIPES = ("default", "paper")


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int) -> nn.Sequential:
    """``in -> hidden... -> out`` with ReLU between the linear layers."""
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(in_dim, h), nn.ReLU()]
        in_dim = h
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class MultiModalClassifier(MultiModalLossMixin, L.LightningModule):
    """One MLP head per modality and one of five fusions, trained with Lightning.

    Fusions (the heads are the same in all; only how they are combined and trained differs):

    - ``"mm"``: the MultiModal loss (:class:`~lightning_mmloss.MultiModalLoss`);
    - ``"sum"``: cross-entropy on the sum of the unimodal probabilities (used as logits);
    - ``"concat"``: a linear layer on the concatenated unimodal probabilities;
    - ``"late"``: the mean of the unimodal logits, plus the unimodal cross-entropies;
    - ``"independent"``: every head trained alone on its own cross-entropy (the reference for
      how good each head can be); the fused prediction is the mean of the unimodal logits;
    - ``"ogm_ge"``: the mean of the unimodal logits, trained with on-the-fly gradient
      modulation and Gaussian enhancement (Peng et al., CVPR 2022): per batch, each modality's
      score ``s_m = sum_i softmax(u_m)[i, y_i]`` (summed over all processes), its ratio
      ``rho_m = s_m / mean of the others' s``; a modality with ``rho_m > 1`` gets its heads'
      gradients multiplied by ``1 - tanh(ogm_alpha * rho_m)`` in ``on_before_optimizer_step``
      (after AMP unscaling), and with ``ogm_gaussian`` Gaussian noise of the gradient's own
      standard deviation added (the same noise on every process).

    Batches are dicts with one tensor per modality and ``target``.

    Args:
        modalities: modality names (keys of the batch).
        input_dims: features per modality.
        num_classes: ``C``.
        fusion: one of ``"mm"``, ``"sum"``, ``"concat"``, ``"late"``, ``"ogm_ge"``.
        hidden: hidden layer sizes of every head.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        proxies_per_class: ``K`` (``"mm"`` only).
        gamma: temperature (``"mm"`` only).
        recipe: ``"mm"``: ``"default"`` (the library's defaults: honest heads, calibrated) or
            ``"paper"`` (the paper's exact loss, :data:`~lightning_mmloss.PAPER_OPTIONS`, and no
            calibration).
        aux_weight: ``"mm"``: weight of the auxiliary unimodal cross-entropy (``None``: the
            recipe's, 0.5 by default and 0 for the paper).
        calibrate: ``"mm"``: fit the fused temperature on the validation data (``None``: the
            recipe's).
        ogm_alpha: OGM-GE's ``alpha``.
        ogm_gaussian: add OGM-GE's Gaussian enhancement.
        loss_options: further :class:`~lightning_mmloss.MultiModalLoss` options (``"mm"``).

    Example::

        >>> from lightning_mmloss.experiments.classifier import MultiModalClassifier
        >>> model = MultiModalClassifier(["a", "b"], {"a": 5, "b": 3}, num_classes=2, fusion="concat")
        >>> batch = {"a": torch.randn(4, 5), "b": torch.randn(4, 3)}
        >>> model.fused_logits(model.stacked_logits(batch)).shape
        torch.Size([4, 2])
    """

    def __init__(
        self,
        modalities: list[str],
        input_dims: dict[str, int],
        num_classes: int,
        fusion: str = "mm",
        hidden: list[int] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        proxies_per_class: int = 20,
        gamma: float = 0.1,
        recipe: str = "default",
        aux_weight: float | None = None,
        calibrate: bool | None = None,
        ogm_alpha: float = 0.1,
        ogm_gaussian: bool = True,
        loss_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.fusion = V.check_choice("fusion", fusion, FUSIONS)
        M, names = V.check_modalities(list(modalities))
        assert names is not None
        missing = [m for m in names if m not in input_dims]
        if missing:
            raise ValueError(
                f"Expected argument `input_dims` to give a size for {missing}, but got {dict(input_dims)}."
            )
        self.save_hyperparameters()
        self.modality_names = list(names)
        self.num_classes = V.check_int("num_classes", num_classes, 2)
        hidden = [64] if hidden is None else list(hidden)
        self.heads = nn.ModuleDict({m: mlp(int(input_dims[m]), hidden, num_classes) for m in names})
        if self.fusion == "mm":
            paper = V.check_choice("recipe", recipe, RECIPES) == "paper"
            options: dict[str, Any] = dict(PAPER_OPTIONS) if paper else {}
            if aux_weight is not None:
                options["aux_weight"] = aux_weight
            options.update(loss_options or {})
            self.configure_multimodal(
                list(names),
                num_classes,
                proxies_per_class,
                gamma=gamma,
                calibrate=(not paper) if calibrate is None else calibrate,
                **options,
            )
        else:
            self.mm_accuracy = _accuracies(num_classes)
        if self.fusion == "concat":
            self.fuser = nn.Linear(M * num_classes, num_classes)
        self._ogm_coeff: Tensor | None = None

    # -- forward pieces ---------------------------------------------------------------------
    def unimodal_logits(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Each head on its modality's features."""
        return {m: head(batch[m]) for m, head in self.heads.items()}

    def stacked_logits(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Unimodal logits as ``(B, M, C)`` in modality order."""
        return torch.stack([self.heads[m](batch[m]) for m in self.modality_names], dim=1)

    def fused_logits(self, u: Tensor) -> Tensor:
        """Fused logits ``(B, C)`` from unimodal logits ``(B, M, C)`` for the configured fusion."""
        if self.fusion == "mm":
            return self.mm_loss.fused_logits(u)
        if self.fusion == "sum":
            return u.float().softmax(-1).sum(dim=1)
        if self.fusion == "concat":
            return self.fuser(u.softmax(-1).flatten(1))
        return u.float().mean(dim=1)  # late, ogm_ge, independent

    # -- training ---------------------------------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        """The fusion's loss; for ``"mm"`` the mixin's step."""
        if self.fusion == "mm":
            return super().training_step(batch, batch_idx)
        u = self.stacked_logits(batch)
        y = self.get_target(batch)
        loss = u.new_zeros(()) if self.fusion == "independent" else F.cross_entropy(self.fused_logits(u).float(), y)
        if self.fusion in ("late", "independent"):  # independent: each head alone on its own cross-entropy
            loss = loss + F.cross_entropy(u.float().flatten(0, 1), y.repeat_interleave(u.shape[1]))
        if self.fusion == "ogm_ge":
            self._ogm_coeff = self._ogm_coefficients(u.detach(), y)
            for m, k in zip(self.modality_names, self._ogm_coeff.tolist(), strict=True):
                self.log(f"train/ogm_coeff/{m}", k, on_step=False, on_epoch=True, batch_size=len(y))
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=len(y))
        return loss

    def _ogm_coefficients(self, u: Tensor, y: Tensor) -> Tensor:
        """``k_m = 1 - tanh(alpha * rho_m)`` where ``rho_m > 1``, else 1 (scores summed over processes)."""
        p = u.float().softmax(-1)
        score = p.gather(2, y.view(-1, 1, 1).expand(-1, p.shape[1], 1)).squeeze(2).sum(dim=0)  # (M,)
        score = self.trainer.strategy.reduce(score, reduce_op="sum")
        M = score.shape[0]
        others = (score.sum() - score) / max(M - 1, 1)
        rho = score / others.clamp_min(1e-12)
        alpha = float(self.hparams["ogm_alpha"])
        return torch.where(rho > 1, 1 - torch.tanh(alpha * rho), torch.ones_like(rho))

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """OGM-GE: scale (and perturb) the dominant modalities' head gradients, identically on all ranks."""
        if self.fusion != "ogm_ge" or self._ogm_coeff is None:
            return
        for m, (name, k) in enumerate(zip(self.modality_names, self._ogm_coeff.tolist(), strict=True)):
            if k >= 1:
                continue
            for j, param in enumerate(self.heads[name].parameters()):
                if param.grad is None:
                    continue
                param.grad.mul_(k)
                if self.hparams["ogm_gaussian"] and param.grad.numel() > 1:
                    # seeded by step, modality and parameter: every process draws the same noise
                    g = torch.Generator(device=param.grad.device)
                    g.manual_seed(1_000_003 * self.global_step + 1009 * m + j)
                    noise = torch.randn(param.grad.shape, generator=g, device=param.grad.device)
                    param.grad.add_(noise * param.grad.std())

    def on_train_start(self) -> None:
        """The mixin's check that the proxies are optimised applies to ``"mm"`` only."""
        if self.fusion == "mm":
            super().on_train_start()

    # -- evaluation -------------------------------------------------------------------------
    def _evaluate(self, batch: Any, stage: str, dataloader_idx: int = 0) -> MultiModalStepOutput:
        if self.fusion == "mm":
            return super()._evaluate(batch, stage, dataloader_idx)
        u = self.stacked_logits(batch)
        y = self.get_target(batch)
        logits = self.fused_logits(u).float()
        loss = F.cross_entropy(logits, y)
        probs = logits.detach().softmax(-1)
        acc = self._accuracy(stage, dataloader_idx)
        acc(logits.argmax(-1), y)
        self.log(f"{stage}/loss", loss, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=len(y))
        self.log(
            f"{stage}/acc", acc, on_epoch=True, prog_bar=True, metric_attribute=f"mm_accuracy.{stage}_{dataloader_idx}"
        )
        # what SubgroupMonitor reads: a step output without subgroups
        return MultiModalStepOutput(
            unimodal_logits=u.detach(),
            unimodal_probs=u.detach().float().softmax(-1),
            logits=logits.detach(),
            probs=probs,
            target=y,
            modality_mask=None,
            loss=loss,
        )

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        """``probs``, ``preds``, ``unimodal_probs`` (and for ``"mm"`` ``subgroup``, ``modality_weights``)."""
        if self.fusion == "mm":
            return super().predict_step(batch, batch_idx, dataloader_idx)
        with torch.no_grad():
            u = self.stacked_logits(batch)
            probs = self.fused_logits(u).float().softmax(-1)
        return {"probs": probs, "preds": probs.argmax(-1), "unimodal_probs": u.float().softmax(-1)}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam on every parameter (the proxies included)."""
        return torch.optim.Adam(self.parameters(), lr=self.hparams["lr"], weight_decay=self.hparams["weight_decay"])
