"""The MultiModal-loss fusion: proxies, fused logits, analytics and the loss.

The forward and backward passes are written by hand in one :class:`torch.autograd.Function`.
Why: the formulation is a chain of about twenty small operations on ``(B, C*K)`` tensors;
autograd records, saves and replays each one. Writing the backward out lets it

* lay the proxies out so that the pooling softmax runs over the contiguous last axis;
* compute the attention softmax and the pooling softmax from one similarity matrix;
* fold ``1/gamma`` into the matrix products (``addmm(alpha=...)``);
* reuse forward products (``q * T``) in the backward pass.

The result is checked against a naive per-instance loop and with ``gradcheck`` in the tests.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from lightning_mmloss import _validation as V

_EPS = 1e-12  # the eps of ``torch.nn.functional.normalize``
_AUTOCAST_DEVICES = ("cpu", "cuda", "xpu", "hpu", "mps")

UnimodalInput = Tensor | Sequence[Tensor] | Mapping[str, Tensor]


@dataclass(frozen=True)
class FusionSpec:
    """Static configuration of a fusion (everything but the proxy parameter)."""

    num_classes: int
    num_modalities: int
    proxies_per_class: int
    gamma: float = 0.1
    pooling: str = "reference"
    attention: bool = True
    normalize_proxies: bool = True
    activation: str = "softmax"

    @property
    def class_major(self) -> bool:
        """``True`` when the internal layout is ``(B, C, K)`` (pooling over proxies, the last axis)."""
        return self.pooling == "softtriple"


@dataclass(frozen=True)
class FusionOutput:
    """What the fusion exposes per instance.

    Only ``logits`` carries gradient; the other fields are detached analytics.

    Attributes:
        logits: fused logits ``o = s + h``, shape ``(B, C)``.
        subgroup: flat index ``j = c*K + k`` of the most similar proxy, shape ``(B,)``.
        attention: attention ``A`` over all proxies, shape ``(B, C, K)``.
        similarity: cosine similarity ``S`` to every proxy, shape ``(B, C, K)``.
        unimodal_probs: per-modality scores ``p`` (zero for absent modalities), ``(B, M, C)``.
        modality_weights: share of each modality in the attended sum for the predicted class,
            ``(B, M)``, rows sum to one (all zeros when every modality is absent).
    """

    logits: Tensor
    subgroup: Tensor
    attention: Tensor
    similarity: Tensor
    unimodal_probs: Tensor
    modality_weights: Tensor

    @property
    def num_proxies(self) -> int:
        """Proxies per class ``K``."""
        return self.similarity.shape[-1]

    @property
    def subgroup_class(self) -> Tensor:
        """Class of the most similar proxy, ``(B,)``."""
        return torch.div(self.subgroup, self.num_proxies, rounding_mode="floor")

    @property
    def subgroup_proxy(self) -> Tensor:
        """Index ``k`` of the most similar proxy within its class, ``(B,)``."""
        return self.subgroup % self.num_proxies

    @property
    def probs(self) -> Tensor:
        """Fused class probabilities ``softmax(logits)``, ``(B, C)``."""
        return self.logits.softmax(dim=-1)

    @property
    def preds(self) -> Tensor:
        """Fused predicted class, ``(B,)``."""
        return self.logits.argmax(dim=-1)


def _no_autocast(device_type: str) -> contextlib.AbstractContextManager[Any]:
    if device_type in _AUTOCAST_DEVICES:
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    """At least float32; float64 when any input is float64 (e.g. a module converted with ``.double()``)."""
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _grouped_proxies(weight: Tensor, spec: FusionSpec) -> tuple[Tensor, Tensor | None]:
    """Non-negative (unit-norm) proxies in the internal layout, and the raw row norms.

    Internal layout: rows ordered so that the pooling axis is the last one of the similarity
    matrix, i.e. ``k*C + c`` for reference pooling and ``c*K + k`` (the parameter's own order)
    for softtriple pooling. The permutation is written by the normalising division itself, so
    it costs no extra pass over the proxies.
    """
    C, K = spec.num_classes, spec.proxies_per_class
    D = weight.shape[1]
    wc = weight.clamp_min(0)
    norms = torch.linalg.vector_norm(wc, dim=1, keepdim=True) if spec.normalize_proxies else None
    if spec.class_major:
        proxies = wc / norms.clamp_min(_EPS) if norms is not None else wc
        return proxies, norms
    out = torch.empty((K, C, D), dtype=weight.dtype, device=weight.device)
    src = wc.view(C, K, D).transpose(0, 1)
    if norms is not None:
        torch.div(src, norms.clamp_min(_EPS).view(C, K, 1).transpose(0, 1), out=out)
    else:
        out.copy_(src)
    return out.view(K * C, D), norms


def normalized_proxies(weight: Tensor, normalize: bool = True) -> Tensor:
    """The proxies used by the fusion: ``row_l2_normalize(clamp(weight, min=0))``.

    Args:
        weight: the ``(C*K, M*C)`` proxy parameter.
        normalize: ``False`` reproduces the "no normalization" ablation (clamp only).

    Returns:
        Tensor of shape ``(C*K, M*C)``, row ``c*K + k`` is proxy ``k`` of class ``c``.

    Example::

        >>> import torch
        >>> from lightning_mmloss.functional import normalized_proxies
        >>> P = normalized_proxies(torch.tensor([[3.0, -1.0, 4.0]]))
        >>> P
        tensor([[0.6000, 0.0000, 0.8000]])
    """
    wc = weight.clamp_min(0)
    return F.normalize(wc, dim=1, eps=_EPS) if normalize else wc


class _FusionFunction(torch.autograd.Function):
    """Fused logits with a hand-written backward pass.

    Outputs ``(o, T, A, a, p)``: fused logits (differentiable) and, detached, the scaled
    similarity ``T = S / gamma`` and attention ``A`` in the internal layout, the attended proxy
    ``a`` ``(B, M*C)`` and the masked unimodal scores ``p`` ``(B, M, C)``. ``A`` and ``a`` are
    ``None``-like empty tensors when attention is disabled.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, u: Tensor, weight: Tensor, mask: Tensor | None, spec: FusionSpec
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        B, M, C = u.shape
        g = spec.gamma
        # identity: clone so that the returned (detached) scores never alias the input
        p = u.softmax(dim=-1) if spec.activation == "softmax" else u.clone()
        if mask is not None:
            # ``where`` rather than a product: absent modalities may hold NaN placeholders.
            p = torch.where(mask[:, :, None], p, p.new_zeros(()))
        z = p.reshape(B, M * C)
        r = torch.linalg.vector_norm(z, dim=1, keepdim=True)
        zn = z / r.clamp_min(_EPS)
        P, norms = _grouped_proxies(weight, spec)
        G1, G2 = (C, spec.proxies_per_class) if spec.class_major else (spec.proxies_per_class, C)
        # T = S / gamma, with the 1/gamma folded into the matrix product.
        T = torch.addmm(zn.new_zeros(()), zn, P.t(), beta=0, alpha=1.0 / g).view(B, G1, G2)
        q = T.softmax(dim=-1)
        qT = q * T
        s = qT.sum(dim=2 if spec.class_major else 1)  # sum over the proxy index k
        if spec.attention:
            A = T.view(B, G1 * G2).softmax(dim=-1)
            a = A @ P
            h = torch.addcmul(z, a, z).view(B, M, C).sum(dim=1)  # sum_m (1 + a_m) * p_m
        else:
            A, a = T.new_empty(0), T.new_empty(0)
            h = p.sum(dim=1)
        o = torch.add(h, s, alpha=g)  # s = gamma * sum q*T
        ctx.spec = spec
        ctx.save_for_backward(weight, mask, p, zn, r, P, norms, q, qT, A, a, s)
        ctx.mark_non_differentiable(T, A, a, p)
        return o, T, A, a, p

    @staticmethod
    @once_differentiable
    def backward(  # type: ignore[override]
        ctx: Any, grad_o: Tensor, *_: Any
    ) -> tuple[Tensor | None, Tensor | None, None, None]:
        spec: FusionSpec = ctx.spec
        weight, mask, p, zn, r, P, norms, q, qT, A, a, s = ctx.saved_tensors
        need_u, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        with _no_autocast(grad_o.device.type):
            G = grad_o.to(p.dtype)
            B, M, C = p.shape
            g = spec.gamma
            G1, G2 = q.shape[1], q.shape[2]
            G3 = G[:, None, :]  # broadcast over modalities
            # --- h = sum_m (1 + a_m) p_m -------------------------------------------------
            if spec.attention:
                dz = torch.addcmul(G3, G3, a.view(B, M, C)).view(B, M * C)
                da = (G3 * p).view(B, M * C)
                dA = da @ P.t()  # (B, CK)
                rowdot = torch.bmm(A.view(B, 1, G1 * G2), dA.view(B, G1 * G2, 1)).view(B, 1)
                dT = dA.sub_(rowdot).mul_(A).view(B, G1, G2)  # softmax backward over all proxies
            else:
                dz = G3.expand(B, M, C).reshape(B, M * C)
                dT = torch.zeros_like(q)
            # --- s = gamma * sum_pool q * T, q = softmax_last(T) -------------------------
            # d s / d T = gamma * q * [Gb * (1 + T) - sum_last(q * T * Gb)]
            if spec.class_major:
                Gb = G[:, :, None]
                colsum = (G * s)[:, :, None]  # the saved s is sum_k q*T
            else:
                Gb = G[:, None, :]
                colsum = torch.bmm(qT, G[:, :, None])  # (B, K, 1)
            tmp = (q + qT).mul_(Gb).addcmul_(q, colsum, value=-1)
            dT.add_(tmp, alpha=g)
            dT2 = dT.view(B, G1 * G2)
            # --- T = zn @ P^T / gamma ----------------------------------------------------
            grad_u = grad_w = None
            if need_u:
                dzn = torch.addmm(zn.new_zeros(()), dT2, P, beta=0, alpha=1.0 / g)
                # zn = z / max(|z|, eps): project out the radial part where |z| > eps
                radial = (zn * dzn).sum(dim=1, keepdim=True) * (r > _EPS)
                dz += (dzn - zn * radial) / r.clamp_min(_EPS)
                dp = dz.view(B, M, C)
                if mask is not None:
                    dp = torch.where(mask[:, :, None], dp, dp.new_zeros(()))
                softmax_in = spec.activation == "softmax"
                grad_u = p * (dp - (p * dp).sum(dim=-1, keepdim=True)) if softmax_in else dp
            if need_w:
                dP = torch.mm(dT2.t(), zn).div_(g)
                if spec.attention:
                    dP.addmm_(A.t(), da)
                if norms is not None:
                    # P = wc / max(|wc|, eps)
                    radial = (P * dP).sum(dim=1, keepdim=True)
                    nrm = norms if spec.class_major else norms.view(C, -1, 1).transpose(0, 1).reshape(-1, 1)
                    radial = radial * (nrm > _EPS)
                    dP = dP.addcmul_(P, radial, value=-1).div_(nrm.clamp_min(_EPS))
                if not spec.class_major:
                    K = G1
                    dP = dP.view(K, C, -1).transpose(0, 1).reshape(C * K, -1)
                grad_w = torch.where(weight >= 0, dP, dP.new_zeros(()))
        return grad_u, grad_w, None, None


def _spec_from(u: Tensor, weight: Tensor, **options: Any) -> FusionSpec:
    """Build a :class:`FusionSpec` from input shapes and functional keyword options."""
    _, M, C = u.shape
    K = V.check_weight(weight, M, C)
    return FusionSpec(
        num_classes=C,
        num_modalities=M,
        proxies_per_class=K,
        gamma=V.check_gamma(options["gamma"]),
        pooling=V.check_choice("pooling", options["pooling"], V.POOLINGS),
        attention=bool(options["attention"]),
        normalize_proxies=bool(options["normalize_proxies"]),
        activation=V.check_choice("activation", options["activation"], V.ACTIVATIONS),
    )


def _fuse_raw(
    u: Tensor, weight: Tensor, mask: Tensor | None, spec: FusionSpec
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Run the fusion in at least float32 with autocast disabled (inputs already validated)."""
    dtype = _compute_dtype(u, weight)
    with _no_autocast(u.device.type):
        return _FusionFunction.apply(u.to(dtype), weight.to(dtype), mask, spec)


def _analytics(o: Tensor, T: Tensor, A: Tensor, a: Tensor, p: Tensor, spec: FusionSpec) -> FusionOutput:
    """Assemble the detached per-instance analytics from the fusion's raw outputs."""
    with torch.no_grad():
        B, M, C = p.shape
        K = spec.proxies_per_class
        S = T * spec.gamma
        if not spec.attention:
            A = T.view(B, -1).softmax(dim=-1).view_as(T)
        if spec.class_major:
            sim, att = S, A.view_as(S)
        else:  # internal (B, K, C) -> public (B, C, K)
            sim, att = S.transpose(1, 2), A.view_as(S).transpose(1, 2)
        subgroup = sim.reshape(B, C * K).argmax(dim=-1)
        c_hat = o.detach().argmax(dim=-1)
        pick = c_hat.view(B, 1, 1).expand(B, M, 1)
        contrib = p.gather(2, pick).squeeze(2)
        if spec.attention:
            contrib = contrib * (1 + a.view(B, M, C).gather(2, pick).squeeze(2))
        total = contrib.sum(dim=1, keepdim=True)
        weights = torch.where(total > 0, contrib / total.clamp_min(torch.finfo(total.dtype).tiny), 0.0)
    return FusionOutput(
        logits=o,
        subgroup=subgroup,
        attention=att,
        similarity=sim,
        unimodal_probs=p,
        modality_weights=weights,
    )


def _prepare(
    unimodal_logits: UnimodalInput,
    weight: Tensor,
    modality_mask: Tensor | None,
    modality_names: Sequence[str] | None,
    options: dict[str, Any],
) -> tuple[Tensor, Tensor | None, FusionSpec]:
    names = tuple(modality_names) if modality_names is not None else None
    u = V.coerce_unimodal(unimodal_logits, names, None if names is None else len(names))
    V.check_unimodal_tensor(u, None if names is None else len(names), None)
    spec = _spec_from(u, weight, **options)
    mask = V.check_mask(modality_mask, u.shape[0], u.shape[1], u.device)
    return u, mask, spec


def multimodal_logits(
    unimodal_logits: UnimodalInput,
    weight: Tensor,
    *,
    gamma: float = 0.1,
    pooling: str = "reference",
    attention: bool = True,
    normalize_proxies: bool = True,
    activation: str = "softmax",
    modality_mask: Tensor | None = None,
    modality_names: Sequence[str] | None = None,
    validate_args: bool = True,
) -> Tensor:
    r"""Fused logits of the MultiModal loss (the cheap path: no analytics).

    .. math::
        o_c = \sum_k q_{ck} S_{ck} + \sum_m (1 + a_{mc}) p_{mc}

    with :math:`S = \hat z P^\top`, :math:`A = \mathrm{softmax}(S/\gamma)`, :math:`a = A P` and
    :math:`q` the pooling softmax (see ``docs`` or ``shared/design/loss.md``).

    Args:
        unimodal_logits: ``(B, M, C)`` tensor, a sequence of ``M`` ``(B, C)`` tensors, or a mapping
            name -> ``(B, C)`` (needs ``modality_names``).
        weight: proxy parameter of shape ``(C*K, M*C)``.
        gamma: temperature of both softmaxes, ``> 0``.
        pooling: ``"reference"`` (softmax over classes per proxy index) or ``"softtriple"``.
        attention: ``False`` is the "no attention" ablation (``h = sum_m p_m``).
        normalize_proxies: ``False`` is the "no normalization" ablation.
        activation: ``"softmax"`` for raw logits, ``"identity"`` for inputs that already are
            non-negative scores.
        modality_mask: optional bool ``(B, M)``, ``True`` where the modality is present.
        modality_names: order of the keys when ``unimodal_logits`` is a mapping.
        validate_args: check values (finite, non-negative for ``identity``); costs one sync.

    Returns:
        Fused logits ``(B, C)`` in at least float32 (float64 for float64 inputs or weight).

    Example::

        >>> import torch
        >>> from lightning_mmloss.functional import multimodal_logits
        >>> _ = torch.manual_seed(0)
        >>> u = torch.randn(4, 2, 3)              # B=4 instances, M=2 modalities, C=3 classes
        >>> weight = torch.rand(3 * 5, 2 * 3)     # K=5 proxies per class
        >>> multimodal_logits(u, weight).shape
        torch.Size([4, 3])
    """
    opts = dict(
        gamma=gamma, pooling=pooling, attention=attention, normalize_proxies=normalize_proxies, activation=activation
    )
    u, mask, spec = _prepare(unimodal_logits, weight, modality_mask, modality_names, opts)
    if validate_args:
        V.check_values(u, mask, spec.activation, modality_names and tuple(modality_names))
    return _fuse_raw(u, weight, mask, spec)[0]


def multimodal_fuse(
    unimodal_logits: UnimodalInput,
    weight: Tensor,
    *,
    gamma: float = 0.1,
    pooling: str = "reference",
    attention: bool = True,
    normalize_proxies: bool = True,
    activation: str = "softmax",
    modality_mask: Tensor | None = None,
    modality_names: Sequence[str] | None = None,
    validate_args: bool = True,
) -> FusionOutput:
    """Fused logits plus the per-instance analytics (subgroup, attention, modality weights).

    Arguments as in :func:`multimodal_logits`.

    Returns:
        A :class:`FusionOutput`; only its ``logits`` carry gradient.

    Example::

        >>> import torch
        >>> from lightning_mmloss.functional import multimodal_fuse
        >>> _ = torch.manual_seed(0)
        >>> out = multimodal_fuse(torch.randn(4, 2, 3), torch.rand(15, 6))
        >>> out.attention.shape, out.modality_weights.sum(dim=1)
        (torch.Size([4, 3, 5]), tensor([1., 1., 1., 1.]))
    """
    opts = dict(
        gamma=gamma, pooling=pooling, attention=attention, normalize_proxies=normalize_proxies, activation=activation
    )
    u, mask, spec = _prepare(unimodal_logits, weight, modality_mask, modality_names, opts)
    if validate_args:
        V.check_values(u, mask, spec.activation, modality_names and tuple(modality_names))
    return _analytics(*_fuse_raw(u, weight, mask, spec), spec)


def cross_entropy_from_fused(
    logits: Tensor,
    target: Tensor,
    *,
    class_weight: Tensor | None = None,
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
    reduction: str = "mean",
    num_valid: int | None = None,
) -> Tensor:
    """Cross-entropy of fused logits, in at least float32 and outside autocast.

    An empty batch, or a ``"mean"`` over a batch whose targets are all ``ignore_index``
    (``num_valid == 0``), gives a zero that is still connected to the graph, instead of NaN.
    """
    with _no_autocast(logits.device.type):
        logits = logits.to(_compute_dtype(logits))
        if logits.shape[0] == 0 or (num_valid == 0 and reduction == "mean"):
            zero = logits.sum() * 0.0
            return zero.expand(logits.shape[0]) if reduction == "none" else zero
        w = None if class_weight is None else class_weight.to(device=logits.device, dtype=logits.dtype)
        return F.cross_entropy(
            logits, target, weight=w, ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing
        )


def multimodal_loss(
    unimodal_logits: UnimodalInput,
    target: Tensor,
    weight: Tensor,
    *,
    gamma: float = 0.1,
    pooling: str = "reference",
    attention: bool = True,
    normalize_proxies: bool = True,
    activation: str = "softmax",
    class_weight: Tensor | None = None,
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
    reduction: str = "mean",
    modality_mask: Tensor | None = None,
    modality_names: Sequence[str] | None = None,
    validate_args: bool = True,
) -> Tensor:
    """The MultiModal loss: cross-entropy of the fused logits against ``target``.

    Arguments as in :func:`multimodal_logits`, plus those of
    :func:`torch.nn.functional.cross_entropy` (``class_weight`` is its ``weight``).

    Returns:
        A float32 (or float64) scalar, or ``(B,)`` with ``reduction="none"``.

    Example::

        >>> import torch
        >>> from lightning_mmloss.functional import multimodal_loss
        >>> _ = torch.manual_seed(0)
        >>> u = torch.randn(8, 3, 4, requires_grad=True)
        >>> weight = torch.rand(4 * 2, 3 * 4, requires_grad=True)
        >>> loss = multimodal_loss(u, torch.randint(0, 4, (8,)), weight)
        >>> loss.backward()
        >>> weight.grad.shape
        torch.Size([8, 12])
    """
    opts = dict(
        gamma=gamma, pooling=pooling, attention=attention, normalize_proxies=normalize_proxies, activation=activation
    )
    u, mask, spec = _prepare(unimodal_logits, weight, modality_mask, modality_names, opts)
    V.check_choice("reduction", reduction, V.REDUCTIONS)
    target = V.check_target_shape(target, u.shape[0])
    cw = V.check_class_weight(class_weight, spec.num_classes)
    num_valid = None
    if validate_args:
        num_valid = V.check_values(
            u, mask, spec.activation, modality_names and tuple(modality_names), target, spec.num_classes, ignore_index
        )
    o = _fuse_raw(u, weight, mask, spec)[0]
    return cross_entropy_from_fused(
        o,
        target,
        class_weight=cw,
        label_smoothing=V.check_label_smoothing(label_smoothing),
        ignore_index=ignore_index,
        reduction=reduction,
        num_valid=num_valid,
    )
