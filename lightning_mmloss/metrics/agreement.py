"""``ModalityAgreement``: how the unimodal heads agree, conflict, and what the fusion makes of it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from lightning_mmloss import _validation as V
from lightning_mmloss.functional.metrics import AGREEMENT_RATES, _agreement_compute, _agreement_update
from lightning_mmloss.metrics._base import _AdditiveStateMetric


class ModalityAgreement(_AdditiveStateMetric):
    """Agreement rates of the unimodal heads and the ``(M, M)`` pairwise agreement matrix.

    See :func:`lightning_mmloss.functional.modality_agreement` for the definitions of
    ``all_agree``, ``reinforce``, ``conflict``, ``all_wrong``, ``rescued`` and ``harmed``.

    As input to ``update``: ``unimodal_probs`` ``(B, M, C)``, ``fused_probs`` ``(B, C)``,
    ``target`` ``(B,)`` and optionally ``modality_mask`` bool ``(B, M)``.

    As output of ``compute``: a dict with the six rates (scalars) and ``pairwise`` ``(M, M)``.

    Args:
        modalities: modality names, or their number.
        ignore_index: instances with this target are left out.
        validate_args: check that the probabilities are finite and in ``[0, 1]`` and the targets
            in ``[0, C)`` (one host sync per
            batch); shapes are always checked.
        kwargs: passed to :class:`torchmetrics.Metric`.

    Example::

        >>> import torch
        >>> from lightning_mmloss.metrics import ModalityAgreement
        >>> metric = ModalityAgreement(2)
        >>> p = torch.tensor([[[0.9, 0.1], [0.8, 0.2]], [[0.9, 0.1], [0.3, 0.7]]])
        >>> metric.update(p, torch.tensor([[0.9, 0.1], [0.2, 0.8]]), torch.tensor([0, 1]))
        >>> float(metric.compute()["reinforce"])
        0.5
    """

    rates = AGREEMENT_RATES

    def __init__(
        self,
        modalities: int | Sequence[str],
        validate_args: bool = True,
        ignore_index: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.validate_args = V.check_bool("validate_args", validate_args)
        self.ignore_index = V.check_ignore_index(ignore_index)
        M, names = V.check_modalities(modalities)
        self.modality_names = list(names) if names else [str(i) for i in range(M)]
        self._add_states(
            {
                "counts": torch.zeros(len(AGREEMENT_RATES), dtype=torch.long),
                "total": torch.zeros((), dtype=torch.long),
                "pair_same": torch.zeros(M, M, dtype=torch.long),
                "pair_total": torch.zeros(M, M, dtype=torch.long),
            }
        )

    def update(
        self, unimodal_probs: Tensor, fused_probs: Tensor, target: Tensor, modality_mask: Tensor | None = None
    ) -> None:
        """Add a batch."""
        M = len(self.modality_names)
        if unimodal_probs.dim() == 3 and unimodal_probs.shape[1] != M:
            raise ValueError(
                f"Expected argument `unimodal_probs` to have shape (B, {M}, C), but got {tuple(unimodal_probs.shape)}."
            )
        if self.validate_args:
            V.check_probabilities(unimodal_probs=unimodal_probs, fused_probs=fused_probs)
        self._accumulate(
            _agreement_update(unimodal_probs, fused_probs, target, modality_mask, self.ignore_index, self.validate_args)
        )

    def compute(self) -> dict[str, Tensor]:
        """Rates and pairwise matrix over everything seen since the last reset."""
        return _agreement_compute(self._state())
