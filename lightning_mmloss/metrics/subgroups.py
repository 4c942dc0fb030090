"""``SubgroupStatistics``: occupancy, accuracy and modality profile of the learned subgroups."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from lightning_mmloss import _validation as V
from lightning_mmloss.functional.fusion import FusionOutput
from lightning_mmloss.functional.metrics import _STATE_DTYPE, _subgroup_compute, _subgroup_update
from lightning_mmloss.metrics._base import _AdditiveStateMetric


class SubgroupStatistics(_AdditiveStateMetric):
    """Which subgroups (proxies) instances fall into, how accurate they are, what they trust.

    See :func:`lightning_mmloss.functional.subgroup_statistics` for the outputs.

    As input to ``update``: ``subgroup`` ``(B,)`` flat proxy indices ``c*K + k``,
    ``fused_preds`` ``(B,)``, ``target`` ``(B,)``, ``unimodal_probs`` ``(B, M, C)`` and
    ``modality_weights`` ``(B, M)`` (all from :class:`~lightning_mmloss.FusionOutput`;
    :meth:`update_from_fusion` takes one directly).

    Args:
        modalities: modality names, or their number ``M``.
        num_classes: ``C``.
        proxies_per_class: ``K``.
        validate_args: check that the subgroup indices lie in ``[0, C*K)`` and the classes in ``[0, C)``
            (one host sync per batch).
        ignore_index: instances with this target are left out.
        kwargs: passed to :class:`torchmetrics.Metric`.

    Example::

        >>> import torch
        >>> from lightning_mmloss import MultiModalLoss
        >>> from lightning_mmloss.metrics import SubgroupStatistics
        >>> _ = torch.manual_seed(0)
        >>> loss = MultiModalLoss(num_classes=3, num_modalities=2, proxies_per_class=4)
        >>> metric = SubgroupStatistics(modalities=2, num_classes=3, proxies_per_class=4)
        >>> metric.update_from_fusion(loss.fuse(torch.randn(50, 2, 3)), torch.randint(0, 3, (50,)))
        >>> stats = metric.compute()
        >>> stats["occupancy"].shape, int(stats["occupancy"].sum())
        (torch.Size([3, 4]), 50)
    """

    def __init__(
        self,
        modalities: int | Sequence[str],
        num_classes: int,
        proxies_per_class: int,
        validate_args: bool = True,
        ignore_index: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.validate_args = V.check_bool("validate_args", validate_args)
        self.ignore_index = V.check_ignore_index(ignore_index)
        self.num_classes = V.check_int("num_classes", num_classes, 2)
        self.proxies_per_class = V.check_int("proxies_per_class", proxies_per_class, 1)
        M, names = V.check_modalities(modalities)
        self.modality_names = list(names) if names else [str(i) for i in range(M)]
        C, K = self.num_classes, self.proxies_per_class
        self._add_states(
            {
                "count": torch.zeros(C * K, dtype=torch.long),
                "correct": torch.zeros(C * K, dtype=_STATE_DTYPE),
                "profile": torch.zeros(C * K, M, dtype=_STATE_DTYPE),
                "weight_sum": torch.zeros(C, M, dtype=_STATE_DTYPE),
                "class_count": torch.zeros(C, dtype=torch.long),
            }
        )

    def update(
        self,
        subgroup: Tensor,
        fused_preds: Tensor,
        target: Tensor,
        unimodal_probs: Tensor,
        modality_weights: Tensor,
    ) -> None:
        """Add a batch."""
        M = len(self.modality_names)
        if unimodal_probs.dim() == 3 and unimodal_probs.shape[1] != M:
            raise ValueError(
                f"Expected argument `unimodal_probs` to have shape (B, {M}, {self.num_classes}), "
                f"but got {tuple(unimodal_probs.shape)}."
            )
        self._accumulate(
            _subgroup_update(
                subgroup,
                fused_preds,
                target,
                unimodal_probs,
                modality_weights,
                self.num_classes,
                self.proxies_per_class,
                self.validate_args,
                self.ignore_index,
            )
        )

    def update_from_fusion(self, fusion: FusionOutput, target: Tensor) -> None:
        """Add a batch from :meth:`MultiModalLoss.fuse`'s output."""
        self.update(fusion.subgroup, fusion.preds, target, fusion.unimodal_probs, fusion.modality_weights)

    def compute(self) -> dict[str, Tensor]:
        """Statistics over everything seen since the last reset (synchronised across processes)."""
        return _subgroup_compute(self._state(), self.num_classes, self.proxies_per_class)
