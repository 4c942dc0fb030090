"""``MultiModalLossMixin``: turns a LightningModule with per-modality heads into a MultiModal-loss model."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch import LightningModule
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from lightning_mmloss import _validation as V
from lightning_mmloss.baselines import FUSIONS, BaselineFusion
from lightning_mmloss.functional.fusion import UnimodalInput, _analytics, _fuse, _mean_log_probs
from lightning_mmloss.functional.losses import cross_entropy_from_fused
from lightning_mmloss.loss import MultiModalLoss
from lightning_mmloss.metrics.calibration import DecisionFit, TemperatureFit
from lightning_mmloss.step_output import MultiModalStepOutput

_NOT_CONFIGURED = (
    "MultiModalLossMixin is not configured: call `self.configure_multimodal(modalities=[...], num_classes=...)` "
    "in your LightningModule's __init__ (after `super().__init__()`)."
)


def _accuracies(num_classes: int, ignore_index: int | None = None) -> nn.ModuleDict:
    """Accuracy metrics keyed ``"<stage>_<dataloader_idx>"``; the first loader's exist from the start."""
    return nn.ModuleDict(
        {
            key: MulticlassAccuracy(num_classes, average="micro", ignore_index=ignore_index)
            for key in ("val_0", "test_0")
        }
    )


class MultiModalLossMixin:
    """Training, validation, test and predict steps for a model with one head per modality.

    Mix it in before :class:`~lightning.pytorch.LightningModule`, call
    :meth:`configure_multimodal` in ``__init__``, and implement :meth:`unimodal_logits`. The
    loss becomes the submodule ``self.mm_loss``: its proxies are parameters, so they must be
    in your optimizer (``self.parameters()`` includes them; :meth:`multimodal_param_groups`
    gives them their own learning rate), they are saved in checkpoints and synchronised by DDP.

    Batches: the target is ``batch["target"]`` for mapping batches and the last element of a
    tuple/list batch (override :meth:`get_target` otherwise); an optional
    ``batch["modality_mask"]`` ``(B, M)`` bool marks present modalities
    (:meth:`get_modality_mask`).

    Logged: ``train/loss``; ``val/loss``, ``val/acc``; ``test/loss``, ``test/acc`` (epoch means,
    synchronised across processes). With the loss's ``aux_weight > 0`` (the default) also
    ``train/fused_loss`` and ``train/aux_loss``: the fused cross-entropy and the mean unimodal
    cross-entropy of the present heads; ``train/loss = fused_loss + aux_weight * aux_loss``. With
    calibration (the default) also ``val/temperature`` during ``fit``, the temperature the epoch's
    fused probabilities used (fitted on the previous validation epoch; 1 before the first), and
    for the MultiModal loss ``val/evidence_weight``, the decision's weight of the heads' evidence.

    Calibration is part of fitting: at the end of every validation epoch of ``trainer.fit`` the
    decision is refitted on that epoch's first validation dataloader, whatever computed the
    validation step (the mixin's or your own). For the MultiModal loss the fit is the
    temperature ``T`` and the weight ``w`` of the heads' mean floored log-probability ``E``
    together (:class:`~lightning_mmloss.metrics.DecisionFit`): the decision's logits become
    ``(o + w E) / T``, so held-out data choose how far the decision follows the heads' product
    rather than the paper's ``o = s + h`` (``docs/method.md``); the baselines fit the temperature.
    ``trainer.validate``, ``test`` and ``predict`` never change them; :meth:`calibrate` fits them
    on demand from a dataloader you name. Why in the mixin rather than a callback (as
    ``StochasticWeightAveraging`` is): the calibration belongs to the model (it is saved with it
    and used by ``fuse`` and ``predict_step``) and a calibrated decision is the default, so no
    callback must be remembered for it.

    Example::

        >>> import lightning as L
        >>> import torch
        >>> from torch import nn
        >>> from lightning_mmloss import MultiModalLossMixin
        >>> class Net(MultiModalLossMixin, L.LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.heads = nn.ModuleDict({"audio": nn.Linear(8, 3), "video": nn.Linear(5, 3)})
        ...         self.configure_multimodal(modalities=["audio", "video"], num_classes=3, proxies_per_class=4)
        ...     def unimodal_logits(self, batch):
        ...         return {name: head(batch[name]) for name, head in self.heads.items()}
        ...     def configure_optimizers(self):
        ...         return torch.optim.Adam(self.parameters(), lr=1e-2)
        >>> batches = [
        ...     {"audio": torch.randn(6, 8), "video": torch.randn(6, 5), "target": torch.randint(0, 3, (6,))}
        ...     for _ in range(4)
        ... ]
        >>> loader = torch.utils.data.DataLoader(batches, batch_size=None)  # yields the dicts as they are
        >>> trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        ...                     enable_model_summary=False)
        >>> net = Net()
        >>> trainer.fit(net, loader, loader)
        >>> print(*sorted(trainer.callback_metrics))  # doctest: +NORMALIZE_WHITESPACE
        train/aux_loss train/fused_loss train/loss train/loss_epoch train/loss_step val/acc
        val/evidence_weight val/loss val/temperature
        >>> fitted = float(net.mm_loss.temperature)
        >>> fitted != 1.0   # fitted on the validation data after every epoch of fit
        True
        >>> _ = trainer.validate(net, loader, verbose=False)
        >>> float(net.mm_loss.temperature) == fitted   # validate() and test() never refit it
        True
        >>> out = trainer.predict(net, loader)[0]
        >>> out["probs"].shape, out["unimodal_probs"].shape, out["modality_weights"].shape
        (torch.Size([6, 3]), torch.Size([6, 2, 3]), torch.Size([6, 2]))
    """

    mm_loss: MultiModalLoss

    def configure_multimodal(
        self,
        modalities: int | Sequence[str],
        num_classes: int,
        proxies_per_class: int = 20,
        *,
        fusion: str = "mm",
        calibrate: bool | str | None = None,
        ogm_alpha: float = 0.1,
        ogm_gaussian: bool = True,
        **loss_kwargs: Any,
    ) -> nn.Module:
        """Create the fusion (``self.mm_loss`` or ``self.mm_baseline``) and the accuracy metrics.

        Args:
            modalities: modality names (needed when :meth:`unimodal_logits` returns a mapping),
                or their number.
            num_classes: number of classes ``C``.
            proxies_per_class: ``K``, subgroups per class (``fusion="mm"``).
            fusion: ``"mm"`` (the MultiModal loss) or a baseline on the same heads: ``"late"``,
                ``"sum"``, ``"concat"``, ``"ogm_ge"``, ``"independent"``
                (:class:`~lightning_mmloss.baselines.BaselineFusion`).
            calibrate: fit the decision on the first validation dataloader at the end of every
                validation epoch of ``trainer.fit`` (the training data are fitted too well to
                calibrate on). ``True``: for ``"mm"`` the temperature and the evidence weight
                together (the predicted classes may change: that is the point), for the
                baselines the temperature; ``"temperature"``: the temperature only (predicted
                classes never change); ``False``: nothing. What ``fuse``, ``predict_step`` and
                the monitor report follows the fit. Default: ``True`` for ``"mm"``, ``False``
                for the baselines.
            ogm_alpha: OGM-GE's ``alpha`` (``fusion="ogm_ge"``).
            ogm_gaussian: OGM-GE's Gaussian enhancement, applied to the parameters that
                :meth:`modality_parameters` names (``fusion="ogm_ge"``).
            loss_kwargs: any other :class:`~lightning_mmloss.MultiModalLoss` option (``aux_weight``,
                ``gamma``, ``pooling``, ``class_weight``, ``ignore_index``, ``proxy_init``, ...);
                the baselines take ``ignore_index`` only.

        Returns:
            The created :class:`~lightning_mmloss.MultiModalLoss` or
            :class:`~lightning_mmloss.baselines.BaselineFusion`.
        """
        if not isinstance(self, LightningModule):
            raise TypeError(
                "Expected MultiModalLossMixin to be mixed into a LightningModule "
                f"(`class Net(MultiModalLossMixin, L.LightningModule)`), but got {type(self).__name__}."
            )
        mro = type(self).__mro__
        if mro.index(LightningModule) < mro.index(MultiModalLossMixin):
            # Lightning's own (empty) steps would shadow the mixin's and fail with a generic message
            raise TypeError(
                f"Expected MultiModalLossMixin before LightningModule in the bases of {type(self).__name__} "
                "(`class Net(MultiModalLossMixin, L.LightningModule)`), but LightningModule comes first, so its "
                "steps would hide the mixin's."
            )
        self.mm_fusion = V.check_choice("fusion", fusion, FUSIONS)
        M, names = V.check_modalities(modalities, "modalities")
        if names is not None and "fused" in names:
            raise ValueError(
                f"Expected argument `modalities` not to name a modality 'fused' (the monitor's name for the fusion's "
                f"own metrics), but got {list(names)}; rename it."
            )
        self.mm_modality_names, self.mm_num_classes = names, V.check_int("num_classes", num_classes, 2)
        if calibrate is not None and not isinstance(calibrate, bool) and calibrate != "temperature":
            raise ValueError(
                f"Expected argument `calibrate` to be True, False, 'temperature' or None, but got {calibrate!r}."
            )
        if not isinstance(ogm_gaussian, bool):
            raise TypeError(f"Expected argument `ogm_gaussian` to be a bool, but got {ogm_gaussian!r}.")
        self.mm_ogm_gaussian = ogm_gaussian
        module: nn.Module
        if fusion == "mm":
            if loss_kwargs.get("reduction", "mean") != "mean":
                raise ValueError(
                    f"Expected no `reduction` other than 'mean' in the mixin, but got {loss_kwargs['reduction']!r}."
                )
            self.mm_loss = module = MultiModalLoss(num_classes, modalities, proxies_per_class, **loss_kwargs)
            ignore = self.mm_loss.ignore_index
        else:
            unknown = sorted(k for k in loss_kwargs if k != "ignore_index")
            if unknown:
                raise ValueError(
                    f"Expected no MultiModal-loss options with fusion={fusion!r}, but got {unknown}; the baselines "
                    "take `ignore_index` only."
                )
            ignore = loss_kwargs.get("ignore_index", -100)
            self.mm_baseline = module = BaselineFusion(fusion, num_classes, M, ignore, ogm_alpha)
        self.mm_ignore_index = ignore
        calibrate = fusion == "mm" if calibrate is None else calibrate
        self.mm_calibrate = calibrate
        self.mm_calibration = self._new_calibration(ignore) if calibrate else None
        self.mm_accuracy = _accuracies(num_classes, ignore)
        return module

    @property
    def mm_names(self) -> list[str]:
        """The modality names (``"0"``, ``"1"``, ... when only their number was configured)."""
        self._check_configured()
        names = self.mm_modality_names
        return list(names) if names else [str(i) for i in range(self._num_modalities())]

    def _num_modalities(self) -> int:
        if self.mm_fusion == "mm":
            return self._mm_loss().num_modalities
        return self.mm_baseline.num_modalities

    def _check_configured(self) -> None:
        if "mm_fusion" not in self.__dict__:
            raise RuntimeError(_NOT_CONFIGURED)

    def _temperature(self) -> Tensor:
        """The fused probabilities' temperature buffer (the MultiModal loss's or the baseline's)."""
        return self._mm_loss().temperature if self.mm_fusion == "mm" else self.mm_baseline.temperature

    def _fits_evidence(self) -> bool:
        """Whether calibration fits the evidence weight too (the MultiModal loss, ``calibrate=True``)."""
        return self.mm_fusion == "mm" and self.__dict__.get("mm_calibrate", True) is True

    def _new_calibration(self, ignore_index: int) -> TemperatureFit:
        # the fused logits it sees were checked by the fusion: no second sync per batch
        kind = DecisionFit if self._fits_evidence() else TemperatureFit
        return kind(ignore_index=ignore_index, validate_args=False)

    # -- what the user provides (or overrides) ---------------------------------------------
    def unimodal_logits(self, batch: Any) -> UnimodalInput:
        """Per-modality logits for ``batch``: a mapping name -> ``(B, C)``, a sequence or a ``(B, M, C)`` tensor."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement `unimodal_logits(self, batch)` returning "
            "{modality name: (B, C) logits} (or a (B, M, C) tensor)."
        )

    def get_target(self, batch: Any) -> Tensor:
        """The class indices ``(B,)`` of ``batch``."""
        if isinstance(batch, Mapping):
            if "target" not in batch:
                raise ValueError(
                    f"Expected the batch to hold the key 'target', but got keys {list(batch)}; "
                    "return it from your dataset or override `get_target(batch)`."
                )
            return batch["target"]
        if isinstance(batch, tuple) and "target" in getattr(batch, "_fields", ()):
            return batch.target  # a namedtuple: its `target` field, wherever it stands
        if isinstance(batch, (tuple, list)):
            if len(batch) < 2:
                raise ValueError(
                    f"Expected a tuple/list batch (inputs..., target) of at least 2 elements, but got {len(batch)}; "
                    "override `get_target(batch)` for other layouts."
                )
            return batch[-1]
        raise TypeError(
            "Expected the batch to be a mapping with a 'target' key or a tuple/list ending with the target, "
            f"but got {type(batch).__name__}; override `get_target(batch)`."
        )

    def extra_loss(self, batch: Any, unimodal_logits: Tensor) -> Tensor | None:
        """A term of your own added to the training loss (``None``: nothing); logged as ``train/extra_loss``.

        Override this, rather than ``training_step``, to add a regulariser: its value is then part
        of ``train/loss`` (and of what the optimizer sees), and the mixin's step keeps working.

        Args:
            batch: the training batch.
            unimodal_logits: the stacked ``(B, M, C)`` logits of this step (with gradient).

        Example::

            def extra_loss(self, batch, unimodal_logits):
                return 1e-3 * unimodal_logits.pow(2).mean()  # keep the logits small
        """
        return None

    def get_modality_mask(self, batch: Any) -> Tensor | None:
        """Optional bool ``(B, M)`` mask of present modalities: ``batch["modality_mask"]`` if there."""
        return batch.get("modality_mask") if isinstance(batch, Mapping) else None

    def modality_parameters(self) -> Mapping[str, Iterable[nn.Parameter]] | None:
        """The parameters of each modality's head, for OGM-GE's Gaussian enhancement (``None``: not known).

        Override it to return ``{name: head.parameters()}`` when ``fusion="ogm_ge"`` and
        ``ogm_gaussian=True``; without it OGM-GE still modulates the gradients (at the logits).
        """
        return None

    def multimodal_param_groups(
        self,
        lr: float,
        proxy_lr: float | None = None,
        weight_decay: float = 0.0,
        proxy_weight_decay: float | None = None,
    ) -> list[dict[str, Any]]:
        """Optimizer parameter groups: the model, and the fusion's own parameters with their settings.

        The fusion's parameters are the MultiModal loss's proxies (``proxy_lr``,
        ``proxy_weight_decay``), or a baseline's (``concat``'s linear layer; none for the
        others), so that one ``configure_optimizers`` serves every fusion of ``compare --model``.
        Empty groups are left out.

        Example::

            def configure_optimizers(self):
                return torch.optim.Adam(self.multimodal_param_groups(lr=1e-3, proxy_lr=1e-2))
        """
        V.check_positive("lr", lr)
        for name, value in (("proxy_lr", proxy_lr), ("proxy_weight_decay", proxy_weight_decay)):
            if value is not None:
                V.check_nonnegative(name, value)
        V.check_nonnegative("weight_decay", weight_decay)
        self._check_configured()
        loss: nn.Module = self._mm_loss() if self.mm_fusion == "mm" else self.mm_baseline
        proxy_ids = {id(p) for p in loss.parameters()}
        model = [p for p in self.parameters() if id(p) not in proxy_ids]  # type: ignore[attr-defined]
        groups = [
            {"params": model, "lr": lr, "weight_decay": weight_decay},
            {
                "params": list(loss.parameters()),
                "lr": lr if proxy_lr is None else proxy_lr,
                "weight_decay": weight_decay if proxy_weight_decay is None else proxy_weight_decay,
            },
        ]
        return [g for g in groups if g["params"]]

    # -- steps ------------------------------------------------------------------------------
    def _mm_loss(self) -> MultiModalLoss:
        self._check_configured()
        loss = self.__dict__.get("_modules", {}).get("mm_loss")
        # `self.mm_loss = torch.compile(self.mm_loss)` wraps it: calls go through the compiled
        # forward, attributes and the other methods through the wrapper to the module
        if not isinstance(getattr(loss, "_orig_mod", loss), MultiModalLoss):
            raise RuntimeError(
                _NOT_CONFIGURED if self.mm_fusion == "mm" else f"fusion={self.mm_fusion!r} has no MultiModal loss."
            )
        return loss  # type: ignore[return-value]

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        """The fusion's training loss (plus :meth:`extra_loss`), logged as ``train/loss``."""
        self._check_automatic_optimization()
        self._check_configured()
        log = self.log  # type: ignore[attr-defined]
        if self.mm_fusion == "mm":
            loss_fn = self._mm_loss()
            u = loss_fn.stack_logits(self.unimodal_logits(batch))
            n = u.shape[0]
            target, mask = self.get_target(batch), self.get_modality_mask(batch)
            if loss_fn.aux_weight:
                loss, fused, aux = loss_fn(u, target, mask, return_terms=True)
                log("train/fused_loss", fused, on_step=False, on_epoch=True, sync_dist=True, batch_size=n)
                log("train/aux_loss", aux, on_step=False, on_epoch=True, sync_dist=True, batch_size=n)
            else:
                loss = loss_fn(u, target, mask)
        else:
            u, target, mask = self._checked_inputs(batch, with_target=True)
            n = u.shape[0]
            strategy = self.trainer.strategy  # type: ignore[attr-defined]
            loss, _ = self.mm_baseline.loss(
                u, target, mask, reduce=lambda t: strategy.reduce(t, reduce_op="sum"), validate_args=False
            )
            if self.mm_fusion == "ogm_ge":
                for name, k in zip(self.mm_names, self.mm_baseline.ogm_coefficients.tolist(), strict=True):
                    log(f"train/ogm_coeff/{name}", k, on_step=False, on_epoch=True, sync_dist=True, batch_size=n)
        extra = self.extra_loss(batch, u)
        if extra is not None:
            log("train/extra_loss", extra, on_step=False, on_epoch=True, sync_dist=True, batch_size=n)
            loss = loss + extra
        log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=n)
        return loss

    def _checked_inputs(self, batch: Any, with_target: bool) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """``(u, target, mask)`` of a batch for a baseline fusion, checked as the MultiModal loss checks."""
        names, C = self.mm_modality_names, self.mm_num_classes
        u, mask = V.stack_checked(
            self.unimodal_logits(batch), names, self._num_modalities(), C, self.get_modality_mask(batch)
        )
        target = V.check_target_shape(self.get_target(batch), u.shape[0], u.device) if with_target else None
        V.check_values(u, mask, "softmax", names, target, C, self.mm_ignore_index)
        return u, target, mask

    def _check_automatic_optimization(self) -> None:
        if not self.automatic_optimization:  # type: ignore[attr-defined]
            raise RuntimeError(
                "MultiModalLossMixin's training_step returns the loss for Lightning's automatic optimization, but "
                f"{type(self).__name__} sets `automatic_optimization = False`, so nothing would train. Keep automatic "
                "optimization, or write your own training_step that calls `self.manual_backward(loss)` and the "
                "optimizer, with `loss = self.mm_loss(self.unimodal_logits(batch), self.get_target(batch))`."
            )

    def multimodal_step(self, batch: Any, with_target: bool = True) -> MultiModalStepOutput:
        """Run the heads and the fusion on ``batch``: the :class:`~lightning_mmloss.MultiModalStepOutput` of it.

        The mixin's validation, test and predict steps call this; so can a validation or test step
        of your own, returning its result so that the monitor and the calibration read it without
        running the heads again (when your step returns something else, they call this themselves).

        Args:
            batch: a batch as the dataloader yields it.
            with_target: read the target (:meth:`get_target`) and compute the loss; ``False`` for
                prediction.

        Example::

            def validation_step(self, batch, batch_idx):
                out = self.multimodal_step(batch)
                self.log("val/my_loss", out.loss)
                return out
        """
        self._check_configured()
        if self.mm_fusion != "mm":
            return self._baseline_step(batch, with_target)
        loss_fn = self._mm_loss()
        u = loss_fn.stack_logits(self.unimodal_logits(batch))
        mask = self.get_modality_mask(batch)
        target, loss = None, None
        if with_target:
            target = self.get_target(batch)
            loss, _, _, raw = loss_fn._loss(u, target, mask, analytics=True)
            target = target.long()
        else:
            u, mask = loss_fn._prepare_checked(u, mask)
            raw = _fuse(u, loss_fn.weight, mask, loss_fn.spec, analytics=True)
        fusion = _analytics(raw, loss_fn.spec, loss_fn.temperature, loss_fn.evidence_weight)
        return MultiModalStepOutput(
            unimodal_logits=u.detach(),
            unimodal_probs=fusion.unimodal_probs,
            logits=raw.logits.detach(),
            probs=fusion.probs.detach(),
            target=target,
            modality_mask=mask,
            loss=loss,
            fusion=fusion,
        )

    def fuse_unimodal(
        self, unimodal_logits: Tensor, modality_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Re-fuse ``(B, M, C)`` unimodal logits under another mask, without running the heads again.

        What dropping a modality at test time means for every fusion: the MultiModal loss fuses
        the present modalities only; the baselines average (``late``, ``ogm_ge``,
        ``independent``) or sum (``sum``) the present ones, and ``concat`` sees zeros for the
        absent ones, as in training with missing modalities.

        Returns:
            The calibrated fused probabilities ``(B, C)`` and, for ``fusion="mm"``, the modality
            weights ``(B, M)`` (``None`` for the baselines).
        """
        self._check_configured()
        if self.mm_fusion == "mm":
            out = self._mm_loss().fuse(unimodal_logits, modality_mask)
            return out.probs, out.modality_weights
        baseline = self.mm_baseline
        return baseline.calibrated_probs(baseline.fused_logits(unimodal_logits, modality_mask)), None

    def _baseline_step(self, batch: Any, with_target: bool) -> MultiModalStepOutput:
        u, target, mask = self._checked_inputs(batch, with_target)
        baseline = self.mm_baseline
        logits = baseline.fused_logits(u, mask, validate_args=False)  # checked by _checked_inputs
        # the evaluation loss of every baseline: the cross-entropy of its fused logits
        loss = None if target is None else cross_entropy_from_fused(logits, target, ignore_index=baseline.ignore_index)
        p = u.detach().float().softmax(-1)
        if mask is not None:
            p = torch.where(mask[:, :, None], p, p.new_zeros(()))
        logits = logits.detach()
        return MultiModalStepOutput(
            unimodal_logits=u.detach(),
            unimodal_probs=p,
            logits=logits,
            probs=baseline.calibrated_probs(logits),
            target=target,
            modality_mask=mask,
            loss=loss,
        )

    def step_output(self, outputs: Any, batch: Any) -> MultiModalStepOutput:
        """``outputs`` when a step returned a :class:`~lightning_mmloss.MultiModalStepOutput`, else this batch's.

        For a step of your own that returns something else, the heads run once more on ``batch``
        (without gradient), once per batch however many consumers ask.
        """
        if isinstance(outputs, MultiModalStepOutput):
            return outputs
        cached = self.__dict__.get("_mm_step_cache")
        if cached is not None and cached[0] is batch:
            return cached[1]
        with torch.no_grad():
            out = self.multimodal_step(batch)
        self.__dict__["_mm_step_cache"] = (batch, out)
        return out

    def _evaluate(self, batch: Any, stage: str, dataloader_idx: int = 0) -> MultiModalStepOutput:
        out = self.multimodal_step(batch)
        assert out.target is not None and out.loss is not None
        if out.target.numel() == 0:  # an empty batch: nothing to score (torchmetrics cannot take it)
            return out
        acc = self._accuracy(stage, dataloader_idx)
        acc(out.preds, out.target)
        log = self.log  # type: ignore[attr-defined]
        n = out.target.shape[0]
        log(f"{stage}/loss", out.loss, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=n)
        log(f"{stage}/acc", acc, on_epoch=True, prog_bar=True, metric_attribute=f"mm_accuracy.{stage}_{dataloader_idx}")
        return out

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> MultiModalStepOutput:
        """Loss and accuracy (``val/loss``, ``val/acc``); returns the :class:`MultiModalStepOutput`."""
        return self._evaluate(batch, "val", dataloader_idx)

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> MultiModalStepOutput:
        """Loss and accuracy (``test/loss``, ``test/acc``); returns the :class:`MultiModalStepOutput`."""
        return self._evaluate(batch, "test", dataloader_idx)

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        """Fused prediction with per-modality scores and analytics (no target needed).

        Returns:
            ``probs`` ``(B, C)``, ``preds`` ``(B,)``, ``unimodal_probs`` ``(B, M, C)`` and, for
            ``fusion="mm"``, ``subgroup`` ``(B,)`` and ``modality_weights`` ``(B, M)``.
        """
        with torch.no_grad():
            out = self.multimodal_step(batch, with_target=False)
        pred = {"probs": out.probs, "preds": out.preds, "unimodal_probs": out.unimodal_probs}
        if out.fusion is not None:
            pred.update(subgroup=out.fusion.subgroup, modality_weights=out.fusion.modality_weights)
        return pred

    def _accuracy(self, stage: str, dataloader_idx: int) -> MulticlassAccuracy:
        """The accuracy metric of one stage and dataloader (one per loader: never pooled across loaders)."""
        accs: nn.ModuleDict = self.mm_accuracy
        key = f"{stage}_{dataloader_idx}"
        if key not in accs:  # a further dataloader: a metric like the first one's, on the same device
            first = accs["val_0"]
            accs[key] = MulticlassAccuracy(first.num_classes, average="micro", ignore_index=first.ignore_index).to(
                first.device
            )
        return accs[key]  # type: ignore[return-value]

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """OGM-GE's Gaussian enhancement: noise of each modulated head's own gradient scale, the same on every rank."""
        super().on_before_optimizer_step(optimizer)  # type: ignore[misc]
        if self.__dict__.get("mm_fusion") != "ogm_ge" or not self.mm_ogm_gaussian:
            return
        coeff = getattr(self.mm_baseline, "ogm_coefficients", None)
        groups = self.modality_parameters()
        if coeff is None or groups is None:
            return
        step = self.global_step  # type: ignore[attr-defined]
        for m, (name, k) in enumerate(zip(self.mm_names, coeff.tolist(), strict=True)):
            if k >= 1:  # only the modalities whose gradients were damped
                continue
            for j, param in enumerate(groups[name]):
                if param.grad is None or param.grad.numel() < 2:
                    continue
                # seeded by step, modality and parameter: every process draws the same noise
                g = torch.Generator(device=param.grad.device)
                g.manual_seed(1_000_003 * step + 1009 * m + j)
                noise = torch.randn(param.grad.shape, generator=g, device=param.grad.device, dtype=param.grad.dtype)
                param.grad.add_(noise * param.grad.std())

    # -- calibration ------------------------------------------------------------------------
    def _calibrating(self, dataloader_idx: int = 0) -> bool:
        """Whether this validation batch calibrates: calibration on, in ``fit``, no sanity check, loader 0."""
        trainer = self.trainer  # type: ignore[attr-defined]
        return (
            getattr(self, "mm_calibration", None) is not None
            and trainer.state.fn == TrainerFn.FITTING
            and not trainer.sanity_checking
            and dataloader_idx == 0
        )

    def _calibration_update(self, fit: TemperatureFit, out: MultiModalStepOutput) -> None:
        if out.target is None:
            raise ValueError(
                "Expected the validation step's MultiModalStepOutput to carry the target (the calibration fits on "
                "it), but got target=None: build it with `self.multimodal_step(batch)` (with_target=True), or pass "
                "`calibrate=False` to `configure_multimodal`."
            )
        if isinstance(fit, DecisionFit):
            # the evidence at weight 1: the term the decision weight multiplies (FusionOutput.evidence_logits)
            floor = self._mm_loss().spec.log_evidence_floor
            fit.update(out.logits, out.target, _mean_log_probs(out.unimodal_probs, out.modality_mask, floor))
        else:
            fit.update(out.logits, out.target)

    def _set_calibration(self, fitted: Tensor | dict[str, Tensor]) -> dict[str, float]:
        """Write a fit's result into the buffers; returns what the decision now uses."""
        temperature = fitted["temperature"] if isinstance(fitted, dict) else fitted
        self._temperature().fill_(float(temperature))
        result = {"temperature": float(temperature)}
        if self.mm_fusion == "mm":
            weight = self._mm_loss().evidence_weight
            if isinstance(fitted, dict):
                weight.fill_(float(fitted["evidence_weight"]))
            result["evidence_weight"] = float(weight)
        return result

    def on_validation_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Calibration: collect the raw fused logits of ``fit``'s validation data (any validation step)."""
        super().on_validation_batch_end(outputs, batch, batch_idx, dataloader_idx)  # type: ignore[misc]
        if self._calibrating(dataloader_idx):
            self._calibration_update(self.mm_calibration, self.step_output(outputs, batch))

    def on_validation_epoch_end(self) -> None:
        """Calibration: log what this epoch's decision used, then refit it on this epoch's data (``fit`` only)."""
        super().on_validation_epoch_end()  # type: ignore[misc]
        self.__dict__.pop("_mm_step_cache", None)  # do not keep the epoch's last batch alive
        fit = getattr(self, "mm_calibration", None)
        if fit is None or not self._calibrating() or not fit.update_called:
            return
        log = self.log  # type: ignore[attr-defined]
        # the same on every rank (fitted from synchronised data); sync_dist keeps Lightning quiet
        current = self._temperature()
        log("val/temperature", current.detach().clone(), on_epoch=True, sync_dist=True)
        if isinstance(fit, DecisionFit):
            log("val/evidence_weight", self._mm_loss().evidence_weight.detach().clone(), on_epoch=True, sync_dist=True)
        strategy = self.trainer.strategy  # type: ignore[attr-defined]
        kept = strategy.reduce(torch.tensor(float(fit.num_samples), device=current.device), reduce_op="sum")
        if float(kept) == 0:  # every target ignored: nothing to fit on, keep what was fitted
            rank_zero_warn(
                "Every validation target of this epoch is `ignore_index`, so the calibration was not refitted: the "
                "decision keeps its temperature (and evidence weight)."
            )
        else:
            self._set_calibration(fit.compute())  # synchronised over processes: every rank sets the same values
        fit.reset()

    def calibrate(self, dataloader: Iterable[Any]) -> dict[str, float]:
        """Fit the decision's calibration on ``dataloader`` now, set it, and return it.

        The fit of ``trainer.fit``'s calibration, on data of your choosing (e.g. a held-out
        calibration split after training): for the MultiModal loss the temperature and the
        evidence weight together (the temperature only with ``calibrate="temperature"``), for the
        baselines the temperature. Runs in eval mode without gradient on the model's device; the
        model's training mode is restored after.

        Returns:
            ``{"temperature": T}``, and for the MultiModal loss ``"evidence_weight": w``.

        Example::

            fitted = net.calibrate(calibration_loader)   # {"temperature": ..., "evidence_weight": ...}
        """
        self._check_configured()
        mode = self.__dict__.get("mm_calibrate") or True
        kind = DecisionFit if self.mm_fusion == "mm" and mode is True else TemperatureFit
        return self._set_calibration(self._fit_on(dataloader, kind))

    def calibrate_temperature(self, dataloader: Iterable[Any]) -> float:
        """Fit only the fused probabilities' temperature on ``dataloader`` now, set it, and return it.

        The evidence weight stays as it is, so predicted classes do not change. See :meth:`calibrate`.

        Example::

            temperature = net.calibrate_temperature(calibration_loader)
        """
        self._check_configured()
        return self._set_calibration(self._fit_on(dataloader, TemperatureFit))["temperature"]

    def _fit_on(self, dataloader: Iterable[Any], kind: type[TemperatureFit]) -> Tensor | dict[str, Tensor]:
        if isinstance(dataloader, (Mapping, Tensor, str, bytes)) or not isinstance(dataloader, Iterable):
            raise TypeError(
                "Expected argument `dataloader` to be an iterable of batches (a DataLoader, or a list of batches), "
                f"but got {type(dataloader).__name__}" + (" (a batch?)." if isinstance(dataloader, Mapping) else ".")
            )
        current = self._temperature()
        fit = kind(ignore_index=self.mm_ignore_index, validate_args=False).to(current.device)
        was_training = self.training  # type: ignore[attr-defined]
        self.eval()  # type: ignore[attr-defined]
        try:
            with torch.no_grad():
                for batch in dataloader:
                    self._calibration_update(fit, self.multimodal_step(move_data_to_device(batch, current.device)))
        finally:
            self.train(was_training)  # type: ignore[attr-defined]
        if not fit.update_called:
            raise ValueError("Expected argument `dataloader` to yield at least one batch, but it yielded none.")
        if not fit.num_samples:
            raise ValueError(
                f"Expected argument `dataloader` to yield at least one target other than ignore_index="
                f"{self.mm_ignore_index}, but every target was ignored; the calibration was left as it was."
            )
        return fit.compute()

    def on_train_start(self) -> None:
        """Warn once when the proxies are trainable but in no optimizer (they would never move)."""
        super().on_train_start()  # type: ignore[misc]
        self._check_configured()
        if self.mm_fusion == "ogm_ge" and self.mm_ogm_gaussian and self.modality_parameters() is None:
            rank_zero_warn(
                "OGM-GE's Gaussian enhancement needs each head's parameters: override `modality_parameters()` to "
                "return {name: head.parameters()} (the gradient modulation itself applies without it), or pass "
                "`ogm_gaussian=False` to `configure_multimodal`."
            )
        if self.mm_fusion != "mm":
            return
        loss = self._mm_loss()
        trainer = self.trainer  # type: ignore[attr-defined]
        in_optim = {id(p) for opt in trainer.optimizers for g in opt.param_groups for p in g["params"]}
        missing = [n for n, p in loss.named_parameters() if p.requires_grad and id(p) not in in_optim]
        if missing:
            rank_zero_warn(
                f"The MultiModal loss's proxies ({', '.join('mm_loss.' + n for n in missing)}) are in no optimizer, so "
                "they will not train: pass `self.parameters()` or `self.multimodal_param_groups(...)` to it."
            )
