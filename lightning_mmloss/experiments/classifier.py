"""``MultiModalClassifier``: per-modality MLP heads with a switchable fusion (MultiModal loss or baselines)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from lightning_mmloss import _validation as V
from lightning_mmloss.loss import PAPER_OPTIONS
from lightning_mmloss.mixin import MultiModalLossMixin

# the names of lightning_mmloss.baselines.FUSIONS, in the order compare runs them
FUSIONS = ("mm", "sum", "concat", "late", "ogm_ge", "independent")
RECIPES = ("default", "paper")


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int) -> nn.Sequential:
    """``in -> hidden... -> out`` with ReLU between the linear layers.

    Raises:
        TypeError: if ``hidden`` is not a sequence of ints.
        ValueError: if a size is below 1 (a layer of 0 units sees no input).
    """
    if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
        raise TypeError(f"Expected argument `hidden` to be a list of ints, but got {type(hidden).__name__} {hidden!r}.")
    for h in hidden:
        V.check_int("hidden", h, 1)
    V.check_int("in_dim", in_dim, 1)
    V.check_int("out_dim", out_dim, 1)
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(in_dim, h), nn.ReLU()]
        in_dim = h
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class MultiModalClassifier(MultiModalLossMixin, L.LightningModule):
    """One MLP head per modality and one of six fusions, trained with Lightning.

    A thin user of :class:`~lightning_mmloss.MultiModalLossMixin`: the heads, and
    ``configure_multimodal(..., fusion=...)``, whose fusions are (the heads are the same in all;
    only how they are combined and trained differs; :mod:`lightning_mmloss.baselines`):

    - ``"mm"``: the MultiModal loss (:class:`~lightning_mmloss.MultiModalLoss`);
    - ``"sum"``: cross-entropy on the sum of the unimodal probabilities (used as logits);
    - ``"concat"``: a linear layer on the concatenated unimodal probabilities;
    - ``"late"``: the mean of the unimodal logits, plus the unimodal cross-entropies;
    - ``"independent"``: every head trained alone on its own cross-entropy (the reference for
      how good each head can be); the fused prediction is the mean of the unimodal logits;
    - ``"ogm_ge"``: the mean of the unimodal logits, trained with on-the-fly gradient
      modulation and Gaussian enhancement (Peng et al., CVPR 2022): per batch, each modality's
      score ``s_m = sum_i softmax(u_m)[i, y_i]`` (summed over all processes), its ratio
      ``rho_m = s_m / mean of the others' s``; a modality with ``rho_m > 1`` gets its gradient
      multiplied by ``1 - tanh(ogm_alpha * rho_m)`` (at its logits, i.e. its head's parameter
      gradients), and with ``ogm_gaussian`` Gaussian noise of the head gradient's own standard
      deviation added in ``on_before_optimizer_step`` (after AMP unscaling; the same noise on
      every process).

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
        calibrate: ``"mm"``: the mixin's fit-time calibration on the validation data (``True``:
            temperature and evidence weight, ``"temperature"``, ``False``; ``None``: the recipe's).
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
        calibrate: bool | str | None = None,
        ogm_alpha: float = 0.1,
        ogm_gaussian: bool = True,
        loss_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.fusion = V.check_choice("fusion", fusion, FUSIONS)
        _, names = V.check_modalities(list(modalities))
        assert names is not None
        if not isinstance(input_dims, Mapping):
            raise TypeError(
                "Expected argument `input_dims` to be a mapping from modality name to size, "
                f"but got {type(input_dims).__name__} {input_dims!r}."
            )
        missing = [m for m in names if m not in input_dims]
        if missing:
            raise ValueError(
                f"Expected argument `input_dims` to give a size for {missing}, but got {dict(input_dims)}."
            )
        self.save_hyperparameters()
        self.modality_names = list(names)
        self.num_classes = V.check_int("num_classes", num_classes, 2)
        hidden = [64] if hidden is None else hidden
        for m in names:
            V.check_int(f"input_dims[{m!r}]", input_dims[m], 1)
        self.heads = nn.ModuleDict({m: mlp(input_dims[m], hidden, num_classes) for m in names})
        options: dict[str, Any] = {}
        if self.fusion == "mm":
            paper = V.check_choice("recipe", recipe, RECIPES) == "paper"
            options = {**(PAPER_OPTIONS if paper else {}), "gamma": gamma}
            if aux_weight is not None:
                options["aux_weight"] = aux_weight
            given = (loss_options or {}).get("aux_weight", aux_weight)
            if aux_weight is not None and given != aux_weight:  # it silently won before
                raise ValueError(
                    f"Expected one `aux_weight`, but got aux_weight={aux_weight} and loss_options={loss_options}; "
                    "pass it once."
                )
            options.update(loss_options or {})
            calibrate = (not paper) if calibrate is None else calibrate
        self.configure_multimodal(
            list(names),
            num_classes,
            proxies_per_class,
            fusion=self.fusion,
            calibrate=calibrate,
            ogm_alpha=ogm_alpha,
            ogm_gaussian=ogm_gaussian,
            **options,
        )

    # -- forward pieces ---------------------------------------------------------------------
    def unimodal_logits(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Each head on its modality's features."""
        return {m: head(batch[m]) for m, head in self.heads.items()}

    def stacked_logits(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Unimodal logits as ``(B, M, C)`` in modality order."""
        return torch.stack([self.heads[m](batch[m]) for m in self.modality_names], dim=1)

    def fused_logits(self, u: Tensor) -> Tensor:
        """Calibrated fused logits ``(B, C)`` from unimodal logits ``(B, M, C)`` for the configured fusion."""
        if self.fusion == "mm":
            return self.mm_loss.fused_logits(u)
        return self.mm_baseline.fused_logits(u) / self.mm_baseline.temperature

    def modality_parameters(self) -> dict[str, Any]:
        """Each head's parameters (OGM-GE's Gaussian enhancement)."""
        return {m: list(head.parameters()) for m, head in self.heads.items()}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam on every parameter (the proxies included)."""
        return torch.optim.Adam(self.parameters(), lr=self.hparams["lr"], weight_decay=self.hparams["weight_decay"])
