"""The baseline fusions the MultiModal loss is compared with, on the same per-modality heads.

``configure_multimodal(..., fusion=...)`` switches a model built with
:class:`~lightning_mmloss.MultiModalLossMixin` between the MultiModal loss (``"mm"``) and these,
so that "does the MultiModal loss beat late fusion on *my* model?" is one argument away.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from lightning_mmloss import _validation as V
from lightning_mmloss.functional.losses import auxiliary_unimodal_loss, cross_entropy_from_fused

BASELINE_FUSIONS = ("late", "sum", "concat", "ogm_ge", "independent")
#: Every fusion ``configure_multimodal`` takes: the MultiModal loss and the baselines.
FUSIONS = ("mm", *BASELINE_FUSIONS)


class BaselineFusion(nn.Module):
    """Fused logits and training loss of a baseline fusion of per-modality logits ``(B, M, C)``.

    - ``"late"``: the mean of the present heads' logits; loss: its cross-entropy plus the mean
      unimodal cross-entropy of the present heads;
    - ``"sum"``: the sum of the present heads' probabilities, used as logits; loss: cross-entropy;
    - ``"concat"``: a linear layer on the concatenated probabilities (absent heads: zeros);
    - ``"ogm_ge"``: late fusion's logits trained on their cross-entropy alone with on-the-fly
      gradient modulation (Peng et al., CVPR 2022): per batch, each modality's score
      ``s_m = sum_i softmax(u_m)[i, y_i]`` (summed over processes by ``reduce``), its ratio
      ``rho_m = s_m`` over the mean of the others', and the gradient reaching a modality with
      ``rho_m > 1`` scaled by ``1 - tanh(alpha * rho_m)`` (at its logits: exactly its head's
      parameter gradients when heads do not share parameters);
    - ``"independent"``: every head trained alone on its own cross-entropy; fused: late's logits.

    Args:
        fusion: one of :data:`BASELINE_FUSIONS`.
        num_classes: ``C``.
        num_modalities: ``M``.
        ignore_index: target value that is ignored.
        ogm_alpha: OGM-GE's ``alpha``.

    Attributes:
        temperature: buffer ``()``, the temperature of the fused probabilities (1 unless fitted).

    Example::

        >>> import torch
        >>> from lightning_mmloss.baselines import BaselineFusion
        >>> late = BaselineFusion("late", num_classes=3, num_modalities=2)
        >>> u = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 0.0, 4.0]]])
        >>> late.fused_logits(u)
        tensor([[1., 0., 2.]])
        >>> late.fused_logits(u, torch.tensor([[True, False]]))  # the second modality absent
        tensor([[2., 0., 0.]])
    """

    def __init__(
        self, fusion: str, num_classes: int, num_modalities: int, ignore_index: int = -100, ogm_alpha: float = 0.1
    ) -> None:
        super().__init__()
        self.fusion = V.check_choice("fusion", fusion, BASELINE_FUSIONS)
        self.num_classes = V.check_int("num_classes", num_classes, 2)
        self.num_modalities = V.check_int("num_modalities", num_modalities, 1)
        if fusion == "ogm_ge" and num_modalities < 2:
            raise ValueError(
                f"Expected at least 2 modalities for fusion='ogm_ge' (it balances modalities against each other), "
                f"but got {num_modalities}; use fusion='late' for one modality."
            )
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise TypeError(f"Expected argument `ignore_index` to be an int, but got {ignore_index!r}.")
        self.ignore_index = ignore_index
        self.ogm_alpha = V.check_nonnegative("ogm_alpha", ogm_alpha)
        M, C = self.num_modalities, self.num_classes
        self.fuser = nn.Linear(M * C, C) if fusion == "concat" else None
        self.register_buffer("temperature", torch.ones(()))

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # as the MultiModal loss's: a temperature of 0, -1, NaN or inf is refused before anything is copied
        V.check_state_scalar(state_dict, prefix + "temperature", self.temperature, positive=True)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _checked(self, u: Any, modality_mask: Any, target: Any = None) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """The inputs checked as the MultiModal loss checks its own: shapes against ``M`` and ``C``, values, mask."""
        u, mask = V.stack_checked(u, None, self.num_modalities, self.num_classes, modality_mask)
        if target is not None:
            target = V.check_target_shape(target, u.shape[0], u.device)
        V.check_values(u, mask, "softmax", None, target, self.num_classes, self.ignore_index)
        return u, mask, target

    def fused_logits(self, u: Tensor, modality_mask: Tensor | None = None, validate_args: bool = True) -> Tensor:
        """Raw fused logits ``(B, C)`` in at least float32 (not divided by the temperature).

        ``validate_args=False`` skips the checks of inputs already checked (one host sync less).
        """
        if validate_args:
            u, modality_mask, _ = self._checked(u, modality_mask)
        u = u.float() if u.dtype != torch.float64 else u
        present = None if modality_mask is None else modality_mask[:, :, None]
        if self.fusion in ("sum", "concat"):
            p = u.softmax(dim=-1)
            if present is not None:
                p = torch.where(present, p, p.new_zeros(()))
            if self.fusion == "sum":
                return p.sum(dim=1)
            assert self.fuser is not None
            return self.fuser(p.flatten(1).to(self.fuser.weight.dtype)).to(u.dtype)
        if present is None:
            return u.mean(dim=1)
        keep = present.to(u.dtype)
        return (torch.where(present, u, u.new_zeros(())) * keep).sum(dim=1) / keep.sum(dim=1).clamp_min(1.0)

    def calibrated_probs(self, logits: Tensor) -> Tensor:
        """Fused probabilities from raw fused logits: ``softmax(logits / temperature)``."""
        return (logits / self.temperature.to(logits.dtype)).softmax(-1)

    def loss(
        self,
        u: Tensor,
        target: Tensor,
        modality_mask: Tensor | None = None,
        reduce: Callable[[Tensor], Tensor] | None = None,
        validate_args: bool = True,
    ) -> tuple[Tensor, Tensor]:
        """The training loss and the raw fused logits of a batch.

        For ``"ogm_ge"`` this also registers the gradient modulation on ``u`` (``u`` must require
        grad) and stores the coefficients in :attr:`ogm_coefficients`; ``reduce`` sums the
        modality scores over processes (``trainer.strategy.reduce``).
        """
        if validate_args:
            _, modality_mask, target = self._checked(u, modality_mask, target)
            assert target is not None
        logits = self.fused_logits(u, modality_mask, validate_args=False)
        fused = cross_entropy_from_fused(logits, target, ignore_index=self.ignore_index)
        unimodal = None
        if self.fusion in ("late", "independent"):
            unimodal = auxiliary_unimodal_loss(u, target, modality_mask=modality_mask, ignore_index=self.ignore_index)
        if self.fusion == "independent":
            assert unimodal is not None
            return unimodal, logits
        if self.fusion == "ogm_ge":
            coeff = self._ogm_coefficients(u.detach(), target, reduce, modality_mask)
            self.ogm_coefficients = coeff
            if u.requires_grad:
                u.register_hook(lambda g: g * coeff.to(g.dtype).view(1, -1, 1))
        return (fused if unimodal is None else fused + unimodal), logits

    def _ogm_coefficients(
        self,
        u: Tensor,
        target: Tensor,
        reduce: Callable[[Tensor], Tensor] | None,
        modality_mask: Tensor | None = None,
    ) -> Tensor:
        """``k_m = 1 - tanh(alpha * rho_m)`` where ``rho_m > 1``, else 1.

        ``s_m`` is the mean over the instances where modality ``m`` is present (and the target not
        ignored) of its probability for the target: with every modality present the ratios are the
        paper's sums' ratios; an absent modality (its logits may be NaN placeholders) counts nowhere.
        """
        valid = target != self.ignore_index
        present = valid[:, None].expand(-1, u.shape[1])
        if modality_mask is not None:
            present = present & modality_mask
        p = torch.where(present[:, :, None], u.float(), u.new_zeros((), dtype=torch.float32)).softmax(-1)
        safe = torch.where(valid, target, torch.zeros_like(target)).long()
        picked = p.gather(2, safe.view(-1, 1, 1).expand(-1, p.shape[1], 1)).squeeze(2)  # (B, M)
        stats = torch.stack([(picked * present).sum(dim=0), present.sum(dim=0).to(picked.dtype)])
        if reduce is not None:
            stats = reduce(stats)
        score = stats[0] / stats[1].clamp_min(1.0)
        M = score.shape[0]
        others = (score.sum() - score) / (M - 1)
        rho = score / others.clamp_min(torch.finfo(score.dtype).tiny)
        return torch.where(rho > 1, 1 - torch.tanh(self.ogm_alpha * rho), torch.ones_like(rho))

    def extra_repr(self) -> str:
        """Configuration shown by ``repr``."""
        return f"fusion={self.fusion!r}, num_classes={self.num_classes}, num_modalities={self.num_modalities}"
