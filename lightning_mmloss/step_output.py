"""``MultiModalStepOutput``: what a step of a multimodal model computed, read by every consumer."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from lightning_mmloss.functional.fusion import FusionOutput


@dataclass(frozen=True)
class MultiModalStepOutput:
    """One batch through the heads and the fusion: the contract between a model and its consumers.

    :class:`~lightning_mmloss.MultiModalLossMixin`'s validation and test steps return it, and
    :meth:`~lightning_mmloss.MultiModalLossMixin.multimodal_step` builds it for a model with steps
    of its own. :class:`~lightning_mmloss.SubgroupMonitor`, the calibration and the predictions
    read it and nothing else. All tensors are detached except ``loss``.

    Attributes:
        unimodal_logits: the heads' logits ``(B, M, C)``.
        unimodal_probs: the heads' probabilities ``(B, M, C)`` (zero for absent modalities).
        logits: the fused logits ``(B, C)`` before the calibration temperature.
        probs: the calibrated fused probabilities ``(B, C)`` (``softmax(logits / T)``).
        target: class indices ``(B,)``, or ``None`` (prediction).
        modality_mask: bool ``(B, M)``, ``True`` where present, or ``None`` (all present).
        loss: the step's loss (with gradient in training), or ``None`` without a target.
        fusion: the MultiModal loss's per-instance analytics (subgroups, attention, modality
            weights); ``None`` for the baseline fusions.

    Example::

        >>> import torch
        >>> from lightning_mmloss import MultiModalLoss, MultiModalStepOutput
        >>> loss = MultiModalLoss(num_classes=3, num_modalities=2, proxies_per_class=2)
        >>> u, y = torch.randn(4, 2, 3), torch.tensor([0, 1, 2, 0])
        >>> fusion, value = loss.fuse_with_loss(u, y)
        >>> out = MultiModalStepOutput(u, fusion.unimodal_probs, fusion.logits, fusion.probs, y, None, value, fusion)
        >>> out.preds.shape, out.num_modalities
        (torch.Size([4]), 2)
    """

    unimodal_logits: Tensor
    unimodal_probs: Tensor
    logits: Tensor
    probs: Tensor
    target: Tensor | None
    modality_mask: Tensor | None
    loss: Tensor | None = None
    fusion: FusionOutput | None = None

    @property
    def preds(self) -> Tensor:
        """The fused predicted class ``(B,)``."""
        return self.probs.argmax(dim=-1)

    @property
    def num_modalities(self) -> int:
        """``M``."""
        return self.unimodal_logits.shape[1]
