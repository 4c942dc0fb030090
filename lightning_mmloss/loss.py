"""``MultiModalLoss``: the proxy parameter and the configuration, as an ``nn.Module``."""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_mmloss import _validation as V
from lightning_mmloss.functional.fusion import (
    FusionOptions,
    FusionOutput,
    FusionSpec,
    UnimodalInput,
    _analytics,
    _decision_logits,
    _fuse,
    normalized_proxies,
)
from lightning_mmloss.functional.losses import LossOptions, _check_with_target, _loss
from lightning_mmloss.functional.shapley import _shapley

PROXY_INITS = ("class", "kaiming", "authors")
#: The options that turn :class:`MultiModalLoss` into the paper's loss exactly (its formulation in
#: ``shared/design/loss.md``): no auxiliary unimodal term, ``nn.Linear``-initialised proxies, the
#: fused logit ``o = s + h`` without the heads' log-evidence.
PAPER_OPTIONS: dict[str, Any] = {"aux_weight": 0.0, "proxy_init": "kaiming", "log_evidence": 0.0}


class MultiModalLoss(nn.Module):
    r"""The MultiModal loss of Moon & Lee, "Deep Metric Loss for Multimodal Learning" (2023).

    Each modality's unimodal scores :math:`p_m = \mathrm{softmax}(u_m)` are stacked into
    :math:`z = [p_1, \dots, p_M]`. ``K`` non-negative unit-norm proxies per class (the
    *subgroups*) live in that space. With :math:`S = \hat z P^\top` (cosine similarity),
    :math:`A = \mathrm{softmax}(S/\gamma)` over all proxies and :math:`a = A P`:

    .. math::
        o_c = \underbrace{\sum_k q_{ck} S_{ck}}_{\text{relaxed class similarity}}
              + \underbrace{\sum_m (1 + a_{mc})\, p_{mc}}_{\text{attended unimodal sum}}
              + \underbrace{\lambda \tfrac{1}{M} \sum_m \log (p_{mc} + 10^{-4})}_{\text{log-evidence}},
        \qquad \mathcal{L} = \mathrm{CE}(o, y)

    where :math:`q` is a softmax of :math:`S/\gamma` over classes for each proxy index
    (``pooling="reference"``) or over proxies within a class (``"softtriple"``), and the
    log-evidence (weight :math:`\lambda` = ``log_evidence``, 0 by default as in the paper) is a
    fixed offset: the heads get no gradient through it. Its floor, :math:`10^{-4}`, bounds how far one head
    can push a class down, so that a head gone wrong on unseen input cannot veto the others.

    The decision (:meth:`fuse`, :meth:`fused_logits`, :meth:`shapley`) is calibrated:
    :math:`(o_c + w E_c) / T` with :math:`E_c = \tfrac{1}{M} \sum_m \log(p_{mc} + 10^{-4})`, the
    temperature :math:`T` and the evidence weight :math:`w \ge 0` fitted together on held-out
    data (by :class:`~lightning_mmloss.MultiModalLossMixin` after every validation epoch, or
    :class:`~lightning_mmloss.metrics.DecisionFit`); :math:`T = 1, w = 0` until then. Held-out
    data thus choose how far the decision follows the heads' product (late fusion's rule) rather
    than the paper's :math:`s + h`; the training loss never uses them.

    As input to ``forward``:
        - ``unimodal_logits``: ``(B, M, C)`` tensor, a sequence of ``M`` ``(B, C)`` tensors, or a
          mapping name -> ``(B, C)`` when modality names are configured;
        - ``target``: ``(B,)`` integer class indices (``ignore_index`` allowed);
        - ``modality_mask`` (optional): bool ``(B, M)``, ``True`` where the modality is present.

    As output: the loss in float32 (float64 for float64 inputs or a ``.double()`` module), a
    scalar or ``(B,)`` with ``reduction="none"``. The loss runs outside autocast.

    Args:
        num_classes: number of classes ``C >= 2``.
        num_modalities: number of modalities ``M``, or the list of their names.
        proxies_per_class: ``K >= 1``, proxies (subgroups) per class.
        gamma: temperature ``> 0`` of the attention and pooling softmaxes.
        pooling: ``"reference"`` (default; produced the paper's numbers) or ``"softtriple"``.
        attention: ``False`` for the "no attention" ablation (``h = sum_m p_m``).
        normalize_proxies: ``False`` for the "no normalization" ablation.
        activation: ``"softmax"`` (inputs are logits) or ``"identity"`` (inputs are scores >= 0).
        backend: ``"fused"`` (default: hand-written backward, the fastest) or ``"autograd"``
            (plain torch ops: supports double backward and ``torch.func`` transforms).
        log_evidence: weight ``>= 0`` of the heads' mean floored log-probability
            (``log(p + 1e-4)``) added to the training loss's fused logits as a fixed offset (no
            gradient into the heads; see :class:`~lightning_mmloss.functional.FusionOptions`).
            Default 0: the paper's fused logit in training; the decision's weight is fitted on
            held-out data instead (:attr:`evidence_weight`).
        log_evidence_floor: the floor ``f`` of ``log(p + f)``, in ``(0, 1]`` (default ``1e-4``).
        class_weight: optional per-class weight ``(C,)`` for the cross-entropy (its ``weight``;
            renamed because ``MultiModalLoss.weight`` is the proxy parameter).
        label_smoothing: as in :func:`torch.nn.functional.cross_entropy`.
        ignore_index: target value that is ignored, as in cross-entropy.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        validate_args: check values (finite logits, target range) with one device sync per call.
        aux_weight: weight ``>= 0`` of the auxiliary unimodal cross-entropy (each present head's
            own cross-entropy, averaged per instance) added to the fused cross-entropy. With
            ``proxy_init="class"`` it keeps every head an honest classifier of its own
            (``docs/method.md``); ``0`` is the paper's loss.
        proxy_init: ``"class"`` (default: each class's proxies start on that class's columns),
            ``"kaiming"`` (the formulation's ``nn.Linear`` initialisation) or ``"authors"``.
            See :meth:`reset_parameters`.

    The paper's exact loss is one switch away: ``MultiModalLoss(C, M, **PAPER_OPTIONS)``
    (``aux_weight=0``, ``proxy_init="kaiming"``, ``log_evidence=0``); its decision is ``s + h``
    as long as the evidence weight is not fitted (``calibrate="temperature"`` or ``False`` in the mixin).

    Attributes:
        weight: the ``(C*K, M*C)`` proxy parameter, row ``c*K + k`` is proxy ``k`` of class ``c``.
        temperature: buffer ``()``, the temperature ``T`` of the decision returned by
            :meth:`fuse`, :meth:`fused_logits` and :meth:`shapley` (1 until fitted on held-out
            data, e.g. by the mixin's calibration; the training loss never uses it).
        evidence_weight: buffer ``()``, the decision's weight ``w >= 0`` of the heads' evidence
            ``E`` (0 until fitted with the temperature; the training loss never uses it).

    Example::

        >>> import torch
        >>> from lightning_mmloss import MultiModalLoss
        >>> _ = torch.manual_seed(0)
        >>> criterion = MultiModalLoss(num_classes=4, num_modalities=["audio", "video"], proxies_per_class=3)
        >>> criterion.weight.shape
        torch.Size([12, 8])
        >>> logits = {"audio": torch.randn(6, 4, requires_grad=True), "video": torch.randn(6, 4)}
        >>> loss = criterion(logits, torch.tensor([0, 1, 2, 3, 0, 1]))
        >>> loss.backward()
        >>> out = criterion.fuse(logits)
        >>> out.logits.shape, out.attention.shape, out.modality_weights.shape
        (torch.Size([6, 4]), torch.Size([6, 4, 3]), torch.Size([6, 2]))
    """

    def __init__(
        self,
        num_classes: int,
        num_modalities: int | Sequence[str],
        proxies_per_class: int = 20,
        gamma: float = 0.1,
        *,
        pooling: str = "reference",
        attention: bool = True,
        normalize_proxies: bool = True,
        activation: str = "softmax",
        backend: str = "fused",
        log_evidence: float = 0.0,
        log_evidence_floor: float = 1e-4,
        class_weight: Tensor | Sequence[float] | None = None,
        label_smoothing: float = 0.0,
        ignore_index: int = -100,
        reduction: str = "mean",
        validate_args: bool = True,
        aux_weight: float = 0.5,
        proxy_init: str = "class",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        num_classes = V.check_int("num_classes", num_classes, 2)
        m, names = V.check_modalities(num_modalities)
        # the fusion's options and sizes, checked once here (FusionOptions validates on construction)
        self.spec = FusionSpec(
            num_classes=num_classes,
            num_modalities=m,
            proxies_per_class=V.check_int("proxies_per_class", proxies_per_class, 1),
            gamma=gamma,
            pooling=pooling,
            attention=attention,
            normalize_proxies=normalize_proxies,
            activation=activation,
            backend=backend,
            log_evidence=log_evidence,
            log_evidence_floor=log_evidence_floor,
        )
        self.modality_names = names
        # checked once; the class weight lives in a buffer (it moves with the module)
        opts = LossOptions(None, label_smoothing, ignore_index, reduction, aux_weight)
        self.reduction, self.label_smoothing, self.ignore_index = (
            opts.reduction,
            opts.label_smoothing,
            opts.ignore_index,
        )
        self.aux_weight = opts.aux_weight
        if not isinstance(validate_args, bool):
            raise TypeError(f"Expected argument `validate_args` to be a bool, but got {validate_args!r}.")
        self.validate_args = validate_args
        if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
            raise TypeError(f"Expected argument `dtype` to be a floating dtype (the proxies'), but got {dtype!r}.")
        size = num_classes * self.spec.proxies_per_class * m * num_classes
        if size > V.MAX_PROXY_ELEMENTS:
            raise ValueError(
                f"Expected C*K x M*C proxy entries <= {V.MAX_PROXY_ELEMENTS}, but got {size} "
                f"(num_classes={num_classes}, proxies_per_class={self.spec.proxies_per_class}, num_modalities={m})."
            )
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(num_classes * self.spec.proxies_per_class, m * num_classes, **factory))
        cw = V.check_class_weight(class_weight, num_classes)
        # A buffer so that ``.to(device)`` moves it and checkpoints keep it.
        self.register_buffer("class_weight", None if cw is None else cw.to(**factory))
        # Temperature of the fused probabilities (analytics and predictions only; the training
        # loss uses the raw fused logits). 1 until fitted on held-out data, e.g. by the mixin.
        self.register_buffer("temperature", torch.ones((), device=device, dtype=torch.float32))
        # The fitted decision weight of the heads' evidence, ``w``: the decision's logits are
        # ``(o + w * mean_m log(p_m + floor)) / temperature``. 0 until fitted with the temperature.
        self.register_buffer("evidence_weight", torch.zeros((), device=device, dtype=torch.float32))
        self.proxy_init = V.check_choice("proxy_init", proxy_init, PROXY_INITS)
        self.reset_parameters()

    def __prepare_scriptable__(self) -> MultiModalLoss:
        """TorchScript cannot compile this module: say so, and what to use instead."""
        raise TypeError(
            "MultiModalLoss does not support TorchScript (torch.jit.script/trace): use torch.compile for speed, or "
            "torch.export to deploy."
        )

    # -- configuration shortcuts ----------------------------------------------------------
    @property
    def num_classes(self) -> int:
        """Number of classes ``C``."""
        return self.spec.num_classes

    @property
    def num_modalities(self) -> int:
        """Number of modalities ``M``."""
        return self.spec.num_modalities

    @property
    def proxies_per_class(self) -> int:
        """Proxies (subgroups) per class ``K``."""
        return self.spec.proxies_per_class

    @property
    def gamma(self) -> float:
        """Temperature of the softmaxes."""
        return self.spec.gamma

    def reset_parameters(self) -> None:
        """Initialise ``weight`` as ``proxy_init`` says (and the calibration: temperature 1, evidence weight 0).

        ``"class"``: proxy ``k`` of class ``c`` starts as "every modality's score for class ``c``"
        (ones on the columns ``m*C + c``) plus a tenth of ``nn.Linear``'s initialisation, which
        breaks the symmetry between the ``K`` proxies of a class. ``"kaiming"``: like
        ``nn.Linear`` (Kaiming-uniform with ``a = sqrt(5)``, bound ``1/sqrt(M*C)``), the
        formulation's. ``"authors"``: uniform with bound ``1/sqrt(C*K)``, as the authors' code
        initialises its transposed layer.
        """
        self.temperature.fill_(1.0)
        self.evidence_weight.fill_(0.0)
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.proxy_init == "class":
            # Why: with random proxies, the similarity term is symmetric under renaming a head's
            # labels, and the random start decides which naming the proxies reinforce; a head
            # then often trains with its labels inverted. Starting each class's proxies on its
            # own columns makes the honest naming the one the proxies already reward.
            with torch.no_grad():
                C, K, M = self.num_classes, self.proxies_per_class, self.num_modalities
                eye = torch.eye(C, device=self.weight.device, dtype=self.weight.dtype)
                align = eye.repeat_interleave(K, dim=0).repeat(1, M)
                self.weight.mul_(0.1).add_(align)
        elif self.proxy_init == "authors":
            bound = 1 / math.sqrt(self.num_classes * self.proxies_per_class)
            nn.init.uniform_(self.weight, -bound, bound)

    @property
    def proxies(self) -> Tensor:
        """The proxies used by the fusion, ``row_l2_normalize(clamp(weight, 0))``, ``(C*K, M*C)``."""
        return normalized_proxies(self.weight, self.spec.normalize_proxies)

    @property
    def loss_options(self) -> LossOptions:
        """The cross-entropy options and ``aux_weight`` as a :class:`~lightning_mmloss.functional.LossOptions`."""
        return LossOptions(self.class_weight, self.label_smoothing, self.ignore_index, self.reduction, self.aux_weight)

    def _config(self) -> dict[str, Any]:
        """What a state must agree on to be loaded: everything that gives the parameter its meaning."""
        config = dataclasses.asdict(self.spec)
        del config["backend"]  # how it is computed, not what
        config["modality_names"] = None if self.modality_names is None else list(self.modality_names)
        config["aux_weight"] = self.aux_weight  # what resumed training optimises
        return config

    def get_extra_state(self) -> dict[str, Any]:
        """The configuration, saved with the parameters (``state_dict()["_extra_state"]``)."""
        return {"config": self._config()}

    def set_extra_state(self, state: Any) -> None:
        """Checked in :meth:`_load_from_state_dict` before anything is copied; nothing to set."""

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # a state without the temperature (a partial state, a checkpoint from before it existed)
        # keeps this module's: a fitted temperature is never reset by a load
        V.check_state_scalar(state_dict, prefix + "temperature", self.temperature, positive=True)
        V.check_state_scalar(state_dict, prefix + "evidence_weight", self.evidence_weight, positive=False)
        # ... and before the configuration was saved: nothing to compare
        extra = state_dict.setdefault(prefix + "_extra_state", None)
        saved = extra.get("config") if isinstance(extra, dict) else None
        if saved is not None:
            mine = self._config()
            diff = {k: (saved.get(k), v) for k, v in mine.items() if k in saved and saved[k] != v}
            missing = {k: v for k, v in mine.items() if k not in saved}
            if missing and not diff:
                # a state saved before these options were saved with it: it loads, assuming this loss's
                what = ", ".join(f"{k}={v!r}" for k, v in missing.items())
                warnings.warn(
                    f"This MultiModalLoss state was saved before {sorted(missing)} were saved with it; it is loaded "
                    f"assuming this loss's values ({what}). Build the loss with the values it was trained with if "
                    "they differ (before issue 26 the default was log_evidence=20.0).",
                    UserWarning,
                    stacklevel=3,
                )
            if diff:
                # before any tensor is copied: a refused load leaves the module as it was
                what = ", ".join(f"{k}: saved {a!r}, this loss {b!r}" for k, (a, b) in diff.items())
                raise ValueError(
                    f"Expected a MultiModalLoss state with the same configuration as this loss, but got one saved "
                    f"with a different one ({what}). Build the loss with the saved configuration to load it."
                )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- computation ----------------------------------------------------------------------
    def _prepare(self, unimodal_logits: UnimodalInput, modality_mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        return V.stack_checked(
            unimodal_logits, self.modality_names, self.num_modalities, self.num_classes, modality_mask
        )

    def _prepare_checked(
        self, unimodal_logits: UnimodalInput, modality_mask: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        u, mask = self._prepare(unimodal_logits, modality_mask)
        if self.validate_args:
            V.check_values(u, mask, self.spec.activation, self.modality_names, weight=self.weight)
        return u, mask

    def forward(
        self,
        unimodal_logits: UnimodalInput,
        target: Tensor,
        modality_mask: Tensor | None = None,
        return_terms: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor, Tensor]:
        """Compute the loss. See the class docstring for the inputs.

        With ``return_terms=True`` returns ``(loss, fused, aux)``: the loss and its two reduced
        terms, the fused cross-entropy and the auxiliary unimodal cross-entropy
        (``loss = fused + aux_weight * aux``), e.g. to log them separately.
        """
        if torch.jit.is_tracing():
            self.__prepare_scriptable__()  # raises: tracing would freeze the checks and the Python branches
        loss, fused, aux, _ = self._loss(unimodal_logits, target, modality_mask, terms=return_terms)
        return (loss, fused, aux) if return_terms else loss  # type: ignore[return-value]

    def _loss(
        self,
        unimodal_logits: UnimodalInput,
        target: Tensor,
        modality_mask: Tensor | None,
        analytics: bool = False,
        terms: bool = False,
    ) -> tuple[Tensor, Tensor, Tensor | None, Any]:
        u, mask = self._prepare(unimodal_logits, modality_mask)
        opts = self.loss_options
        target, num_valid = _check_with_target(
            u, target, self.weight, mask, self.spec, opts, self.modality_names, self.validate_args
        )
        return _loss(u, target, self.weight, mask, self.spec, opts, num_valid, analytics, terms)

    def fuse_with_loss(
        self, unimodal_logits: UnimodalInput, target: Tensor, modality_mask: Tensor | None = None
    ) -> tuple[FusionOutput, Tensor]:
        """:meth:`fuse` and the loss from one fusion pass (evaluation steps): ``(fusion, loss)``."""
        loss, _, _, raw = self._loss(unimodal_logits, target, modality_mask, analytics=True)
        return _analytics(raw, self.spec, self.temperature, self.evidence_weight), loss

    def stack_logits(self, unimodal_logits: UnimodalInput) -> Tensor:
        """Checked ``(B, M, C)`` tensor from any accepted input form (mapping, sequence, tensor)."""
        return self._prepare(unimodal_logits, None)[0]

    def fused_logits(self, unimodal_logits: UnimodalInput, modality_mask: Tensor | None = None) -> Tensor:
        """The decision's logits ``(B, C)`` only: the cheap path for prediction.

        ``(o + evidence_weight * E) / temperature``, with the fitted calibration (see :attr:`evidence_weight`).
        """
        u, mask = self._prepare_checked(unimodal_logits, modality_mask)
        logits = _decision_logits(u, self.weight, mask, self.spec, self.evidence_weight)
        return (logits / self.temperature.to(logits.dtype)).contiguous()

    def fuse(self, unimodal_logits: UnimodalInput, modality_mask: Tensor | None = None) -> FusionOutput:
        """Fused logits (calibrated) plus per-instance analytics (subgroup, attention, similarity, weights).

        Returns:
            A :class:`~lightning_mmloss.functional.FusionOutput`; its ``logits`` carry gradient.
        """
        u, mask = self._prepare_checked(unimodal_logits, modality_mask)
        raw = _fuse(u, self.weight, mask, self.spec, analytics=True)
        return _analytics(raw, self.spec, self.temperature, self.evidence_weight)

    def shapley(
        self,
        unimodal_logits: UnimodalInput,
        target_class: int | Tensor | None = None,
        modality_mask: Tensor | None = None,
        max_rows: int = 65536,
    ) -> Tensor:
        """Exact per-instance Shapley values ``(B, M)`` of each modality for a class's fused probability.

        See :func:`~lightning_mmloss.functional.modality_shapley`.
        """
        u, mask = self._prepare_checked(unimodal_logits, modality_mask)
        # checked once, here: straight to the computation
        scale = self.temperature.reciprocal()
        return _shapley(u, self.weight, mask, self.spec, target_class, max_rows, scale, self.evidence_weight)

    def extra_repr(self) -> str:
        """Configuration shown by ``repr``."""
        s = self.spec
        mods = list(self.modality_names) if self.modality_names else s.num_modalities
        parts = [
            f"num_classes={s.num_classes}",
            f"num_modalities={mods}",
            f"proxies_per_class={s.proxies_per_class}",
            f"gamma={s.gamma}",
        ]
        if s.pooling != "reference":
            parts.append(f"pooling={s.pooling!r}")
        if not s.attention:
            parts.append("attention=False")
        if not s.normalize_proxies:
            parts.append("normalize_proxies=False")
        if s.log_evidence != FusionOptions.log_evidence:
            parts.append(f"log_evidence={s.log_evidence}")
        if s.log_evidence_floor != FusionOptions.log_evidence_floor:
            parts.append(f"log_evidence_floor={s.log_evidence_floor}")
        if s.activation != "softmax":
            parts.append(f"activation={s.activation!r}")
        parts.append(f"aux_weight={self.aux_weight}")
        if self.proxy_init != "class":
            parts.append(f"proxy_init={self.proxy_init!r}")
        return ", ".join(parts)
