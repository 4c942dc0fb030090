"""``ModalityReliability``: accuracy, macro-F1, ECE, Brier, NLL and purity gap of each head and the fusion."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from lightning_mmloss import _validation as V
from lightning_mmloss.functional.metrics import _STATE_DTYPE, _reliability_compute, _reliability_update, head_names
from lightning_mmloss.metrics._base import _AdditiveStateMetric


class ModalityReliability(_AdditiveStateMetric):
    r"""How reliable each unimodal head's scores are, and the fused output's, over an epoch.

    See :func:`lightning_mmloss.functional.modality_reliability` for the definitions. A
    modality's metrics only count the instances where it is present.

    As input to ``update``:
        - ``unimodal_probs`` ``(B, M, C)``, ``fused_probs`` ``(B, C)``, ``target`` ``(B,)``;
        - ``modality_mask`` (optional) bool ``(B, M)``, ``True`` where present.

    As output of ``compute``: ``{"<head>/<metric>": value}`` with heads the modality names and
    ``"fused"``, metrics ``acc``, ``macro_f1``, ``ece``, ``brier``, ``nll``, ``purity_gap``.

    Args:
        modalities: modality names, or their number.
        num_classes: number of classes ``C``.
        n_bins: calibration bins of the ECE.
        ignore_index: instances with this target are left out.
        validate_args: check that the probabilities are finite and in ``[0, 1]`` and the targets in
            ``[0, C)`` (one host sync per batch); shapes are always checked.
        kwargs: passed to :class:`torchmetrics.Metric`.

    Example::

        >>> import torch
        >>> from lightning_mmloss.metrics import ModalityReliability
        >>> metric = ModalityReliability(["audio", "video"], num_classes=2)
        >>> p = torch.tensor([[[0.9, 0.1], [0.4, 0.6]], [[0.2, 0.8], [0.3, 0.7]]])
        >>> metric.update(p, torch.tensor([[0.8, 0.2], [0.1, 0.9]]), torch.tensor([0, 1]))
        >>> values = metric.compute()
        >>> float(values["video/acc"]), round(float(values["fused/brier"]), 3)
        (0.5, 0.05)
    """

    def __init__(
        self,
        modalities: int | Sequence[str],
        num_classes: int,
        n_bins: int = 15,
        validate_args: bool = True,
        ignore_index: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.ignore_index = V.check_ignore_index(ignore_index)
        M, names = V.check_modalities(modalities)
        self.num_classes = V.check_int("num_classes", num_classes, 2)
        self.n_bins = V.check_int("n_bins", n_bins, 1)
        self.validate_args = V.check_bool("validate_args", validate_args)
        self.modality_names = list(names) if names else [str(i) for i in range(M)]
        self.head_names = head_names(self.modality_names)
        H, C = M + 1, self.num_classes
        self._add_states(
            {
                "count": torch.zeros(H, dtype=torch.long),
                "correct": torch.zeros(H, dtype=torch.long),
                "confusion": torch.zeros(H, C, C, dtype=torch.long),
                "bin_count": torch.zeros(H, self.n_bins, dtype=torch.long),
                "bin_conf": torch.zeros(H, self.n_bins, dtype=_STATE_DTYPE),
                "bin_correct": torch.zeros(H, self.n_bins, dtype=_STATE_DTYPE),
                "brier": torch.zeros(H, dtype=_STATE_DTYPE),
                "nll": torch.zeros(H, dtype=_STATE_DTYPE),
            }
        )

    def update(
        self, unimodal_probs: Tensor, fused_probs: Tensor, target: Tensor, modality_mask: Tensor | None = None
    ) -> None:
        """Add a batch."""
        M = len(self.modality_names)
        if unimodal_probs.dim() == 3 and unimodal_probs.shape[1:] != (M, self.num_classes):
            raise ValueError(
                f"Expected argument `unimodal_probs` to have shape (B, {M}, {self.num_classes}), "
                f"but got {tuple(unimodal_probs.shape)}."
            )
        if self.validate_args:
            V.check_probabilities(unimodal_probs=unimodal_probs, fused_probs=fused_probs)
        self._accumulate(
            _reliability_update(
                unimodal_probs, fused_probs, target, modality_mask, self.n_bins, self.ignore_index, self.validate_args
            )
        )

    def compute(self) -> dict[str, Tensor]:
        """The metrics over everything seen since the last reset (synchronised across processes)."""
        return _reliability_compute(self._state(), self.head_names)
