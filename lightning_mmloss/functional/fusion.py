"""The MultiModal-loss fusion: proxies, fused logits and the per-instance analytics.

The forward maths stands in one place, :func:`_fuse_composite` (plain differentiable torch ops,
``backend="autograd"``), which the tests compare against a naive per-instance loop. The default
``backend="fused"`` computes the same values in one :class:`torch.autograd.Function` with a
hand-written backward in a batch-last layout (``(M*C, B)``, ``(C*K, B)``: elementwise ops and
reductions run along the long contiguous batch axis, the softmaxes are never materialised).
Why it stays (``benchmarks/README.md``, issue 16): on CPU, eager, it takes 0.73-0.76 of the
plain transcription's time at (1024, 3, 10, 20) and (256, 4, 100, 20), where the composite
takes 1.0-1.3 and the composite compiled with ``torch.compile`` 0.73-0.75; on CUDA both are
launch-bound and equal. One layout on every device and thread count: no path depends on the
thread count or the batch size's parity. The composite also serves double backward,
``torch.func``, very small ``gamma`` and the ablation without proxy normalisation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from lightning_mmloss import _validation as V

_EPS = 1e-12  # the eps of ``torch.nn.functional.normalize``
_AUTOCAST_DEVICES = ("cpu", "cuda", "xpu", "hpu", "mps")

UnimodalInput = Tensor | Sequence[Tensor] | Mapping[str, Tensor]


@dataclass(frozen=True)
class FusionOptions:
    """The fusion's options, said once and shared by the module, the functions and Shapley values.

    Validated on construction. Every function of :mod:`lightning_mmloss.functional` takes one
    as ``options=`` (or the same names as keyword arguments).

    Attributes:
        gamma: temperature ``> 0`` of the attention and pooling softmaxes.
        pooling: ``"reference"`` (softmax over classes per proxy index; the paper's numbers) or
            ``"softtriple"`` (over the proxies within a class).
        attention: ``False`` for the "no attention" ablation (``h = sum_m p_m``).
        normalize_proxies: ``False`` for the "no normalization" ablation.
        activation: ``"softmax"`` (inputs are logits) or ``"identity"`` (inputs are scores >= 0).
        backend: ``"fused"`` (hand-written backward, the fastest eager) or ``"autograd"`` (plain
            torch ops: double backward and ``torch.func``).
        log_evidence: weight ``w >= 0`` of the heads' log-evidence in the fused logits,
            ``o = (s + h) + w * mean_m log(p_m + floor)`` over the present modalities (what
            late fusion sums, floored so that no single head can veto a class), as a fixed
            offset: no gradient flows into the heads through it (:func:`log_evidence_logits`).
            Default 0, the paper's fused logit ``o = s + h``: the weight that decides is fitted on
            validation data with the temperature (``MultiModalLoss.evidence_weight``, the
            mixin's calibration), which on 8 scenarios matched or beat a fixed weight of 20
            (design decision Q6 in benchmarks/README.md).
        log_evidence_floor: the ``floor`` of the log-evidence, in ``(0, 1]``: one head can push a
            class down by at most ``log(1 / floor)`` nats (times ``w / M``). Unfloored, a head fed
            input it never saw in training, confidently wrong, vetoes the right class
            (benchmarks/README.md, Q5).

    Example::

        >>> from lightning_mmloss.functional import FusionOptions
        >>> FusionOptions(gamma=0.2).pooling
        'reference'
        >>> FusionOptions(gamma=0)
        Traceback (most recent call last):
        ...
        ValueError: Expected argument `gamma` to be a finite float > 0, but got 0.
    """

    gamma: float = 0.1
    pooling: str = "reference"
    attention: bool = True
    normalize_proxies: bool = True
    activation: str = "softmax"
    backend: str = "fused"
    log_evidence: float = 0.0
    log_evidence_floor: float = 1e-4

    def __post_init__(self) -> None:
        object.__setattr__(self, "gamma", V.check_gamma(self.gamma))
        object.__setattr__(self, "log_evidence", V.check_log_evidence(self.log_evidence))
        object.__setattr__(
            self, "log_evidence_floor", V.check_unit_interval("log_evidence_floor", self.log_evidence_floor)
        )
        V.check_choice("pooling", self.pooling, V.POOLINGS)
        V.check_choice("activation", self.activation, V.ACTIVATIONS)
        V.check_choice("backend", self.backend, V.BACKENDS)
        for name in ("attention", "normalize_proxies"):
            flag = getattr(self, name)
            if not isinstance(flag, bool):
                raise TypeError(f"Expected argument `{name}` to be a bool, but got {type(flag).__name__} {flag!r}.")


def _options(options: FusionOptions | None, overrides: dict[str, Any]) -> FusionOptions:
    """``options`` with keyword overrides (the functions' ``**option_kwargs``), checked once."""
    fields = FusionOptions.__dataclass_fields__
    unknown = sorted(k for k in overrides if k not in fields)
    if unknown:
        raise TypeError(f"Got unexpected keyword arguments {unknown}; the fusion's options are {list(fields)}.")
    if options is None:
        return FusionOptions(**overrides)
    if not isinstance(options, FusionOptions):
        raise TypeError(f"Expected argument `options` to be a FusionOptions, but got {type(options).__name__}.")
    if isinstance(options, FusionSpec):  # a loss's spec: its options, the sizes come from the inputs
        options = FusionOptions(**{k: getattr(options, k) for k in fields})
    return dataclasses.replace(options, **overrides) if overrides else options


@dataclass(frozen=True, kw_only=True)
class FusionSpec(FusionOptions):
    """Static configuration of a fusion: the options plus the sizes (everything but the proxies)."""

    num_classes: int
    num_modalities: int
    proxies_per_class: int


@dataclass(frozen=True)
class FusionOutput:
    """What the fusion exposes per instance.

    Only ``logits`` carries gradient; the other fields are detached analytics. Every logit field
    is on one scale (divided by the calibration temperature where there is one), so that
    ``logits == attention_logits + evidence_logits == modality_logits.sum(1)``.

    Attributes:
        logits: the fused logits ``o = (s + h) + w E``, shape ``(B, C)``: what decides.
        subgroup: flat index ``j = c*K + k`` of the most similar proxy, shape ``(B,)``.
        attention: attention ``A`` over all proxies, shape ``(B, C, K)``.
        similarity: cosine similarity ``S`` to every proxy, shape ``(B, C, K)``.
        unimodal_probs: per-modality scores ``p`` (zero for absent modalities), ``(B, M, C)``.
        modality_weights: each modality's share of the predicted class's margin over the
            runner-up in ``logits`` (from ``modality_logits``; a modality arguing for the runner-up
            gets 0), ``(B, M)``, rows sum to one (all zeros when every modality is absent).
        attention_logits: the paper's part, relaxed class similarity plus attended sum
            ``s + h``, ``(B, C)``.
        evidence_logits: the log-evidence part ``w * mean_m log(p_m + floor)``, ``(B, C)``
            (zeros when ``log_evidence=0``).
        modality_logits: ``logits`` split exactly by modality, ``(B, M, C)``: each modality's
            similarity, attended score and log-evidence (zeros for absent modalities).

    Example::

        >>> import torch
        >>> from lightning_mmloss import MultiModalLoss
        >>> _ = torch.manual_seed(0)
        >>> out = MultiModalLoss(num_classes=3, num_modalities=2, proxies_per_class=4).fuse(torch.randn(5, 2, 3))
        >>> out.probs.shape, out.preds.shape, bool((out.subgroup_class * 4 + out.subgroup_proxy == out.subgroup).all())
        (torch.Size([5, 3]), torch.Size([5]), True)
    """

    logits: Tensor
    subgroup: Tensor
    attention: Tensor
    similarity: Tensor
    unimodal_probs: Tensor
    modality_weights: Tensor
    attention_logits: Tensor
    evidence_logits: Tensor
    modality_logits: Tensor

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
    """Disable autocast for the fusion, which runs in at least float32 (no-op when it is off)."""
    if device_type in _AUTOCAST_DEVICES and torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    """At least float32; float64 when any input is float64 (e.g. a module converted with ``.double()``)."""
    # the inputs are checked floating tensors, so promotion with float32 is float64 or float32
    # (a plain comparison: torch.promote_types is an operator call)
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _as_compute_dtype(x: Tensor) -> Tensor:
    """``x`` in its :func:`_compute_dtype` (no call when it already is)."""
    dtype = _compute_dtype(x)
    return x if x.dtype == dtype else x.to(dtype)


def _inv_norm(x: Tensor, dim: int = 1) -> Tensor:
    """``1 / |x|`` along ``dim`` (kept) where the norm exceeds ``_EPS``, else ``0``; differentiable.

    Why not ``1 / max(|x|, eps)`` as ``F.normalize`` does: a zero vector (a fully clamped proxy,
    an instance whose scores are all zero) would then scale its gradient by ``1e12``; here it
    gets exactly zero gradient, and its normalised value is zero either way.
    """
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True)
    big = norm > _EPS
    return torch.where(big, torch.where(big, norm, 1.0).reciprocal(), 0.0)


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
    return wc * _inv_norm(wc) if normalize else wc


# The fused path computes E = exp(S / gamma) without subtracting a maximum: for unit-norm proxies
# and instances S lies in [0, 1], so E lies in [1, e^{1/gamma}] and the sum of the C*K entries is
# at most e^{1/gamma + log(C*K)}, kept below e^75 (float32 overflows at about e^88).
_LOG_TINY_MARGIN = 75.0


def _pool_from_attention(spec: FusionSpec) -> bool:
    """Whether the pooling softmax can be taken from the attention's ``E = exp(S/gamma)``.

    True for unit-norm proxies and ``1/gamma + log(C*K) <= 75``. Beyond that (very small
    ``gamma``) the composite path with its own softmaxes is also the precise one: at gamma=1e-6 a
    hand-written backward's float32 gradients were 0.5-4% off a float64 reference (the
    composite: 1e-7), because rounding in differences of O(1) terms is scaled by ``1/gamma``.
    """
    n = spec.num_classes * spec.proxies_per_class
    return spec.normalize_proxies and 1.0 / spec.gamma + math.log(n) <= _LOG_TINY_MARGIN


def _uses_fused_path(spec: FusionSpec) -> bool:
    """Whether :class:`_FusionFunction` computes this fusion (else :func:`_fuse_composite`).

    Inside ``torch.func`` transforms (``vmap``, ``grad``) the composite runs: they need plain ops.
    """
    return spec.backend == "fused" and _pool_from_attention(spec) and not V.functorch_active()


class _Raw(NamedTuple):
    """The fusion's outputs, batch first; all but ``logits`` detached (``None`` without analytics).

    Attributes:
        logits: fused logits ``o`` ``(B, C)``.
        scaled_similarity: ``S / gamma`` ``(B, C, K)``.
        attention: ``A`` ``(B, C, K)``.
        attended: attended proxy ``a = A @ P`` ``(B, M*C)``; ``None`` with ``attention=False``.
        scores: the (masked) unimodal scores ``p`` ``(B, M, C)``.
        inputs: the unimodal logits the fusion read, ``(B, M, C)``, differentiable: from the
            fused path a view of its contiguous batch-last copy ``(M, C, B)`` (the auxiliary
            term takes its cross-entropy in that layout without a second copy).
        evidence: the log-evidence part of ``logits`` ``(B, C)`` (detached), ``None`` when its weight is 0.
        proxies: the normalised proxies ``(C*K, M*C)`` (detached), with analytics.
        mask: the modality mask the fusion used, with analytics.
    """

    logits: Tensor
    scaled_similarity: Tensor | None = None
    attention: Tensor | None = None
    attended: Tensor | None = None
    scores: Tensor | None = None
    inputs: Tensor | None = None
    evidence: Tensor | None = None
    proxies: Tensor | None = None
    mask: Tensor | None = None


def _fuse_composite(u: Tensor, weight: Tensor, mask: Tensor | None, spec: FusionSpec, analytics: bool) -> _Raw:
    """The fusion as written in ``shared/design/loss.md``, in differentiable torch ops."""
    B, M, C = u.shape
    K = spec.proxies_per_class
    u_in = u
    present = None if mask is None else mask[:, :, None]
    if present is not None:  # absent entries may be NaN: keep them out of every backward formula
        u = torch.where(present, u, u.new_zeros(()))
    p = u.softmax(dim=-1) if spec.activation == "softmax" else u
    if present is not None:
        p = torch.where(present, p, p.new_zeros(()))
    z = p.reshape(B, M * C)
    P = normalized_proxies(weight, spec.normalize_proxies)
    T = ((z * _inv_norm(z)) @ P.t()).mul(1.0 / spec.gamma).view(B, C, K)  # S / gamma
    A = T.view(B, C * K).softmax(dim=-1).view(B, C, K)
    pool = 1 if spec.pooling == "reference" else 2  # classes per proxy index, or proxies per class
    q = A / A.sum(dim=pool, keepdim=True) if _pool_from_attention(spec) else T.softmax(dim=pool)
    s = (q * T).sum(dim=2)
    a = A.view(B, C * K) @ P if spec.attention else None
    h = p.sum(dim=1) if a is None else (z + a * z).view(B, M, C).sum(dim=1)  # sum_m (1 + a_m) p_m
    o = h + spec.gamma * s
    if not analytics:
        return _Raw(o, inputs=u_in)
    return _Raw(o, T.detach(), A.detach(), None if a is None else a.detach(), p.detach(), u_in)


class _FusionFunction(torch.autograd.Function):
    """:func:`_fuse_composite` for unit-norm proxies, with a hand-written backward, batch last.

    Takes the unimodal logits batch last, a contiguous ``(M, C, B)``, and returns the fused logits as a contiguous
    ``(C, B)`` tensor; with ``analytics=True`` also, non-differentiable and batch last, ``S/gamma``
    ``(C, K, B)``, ``A`` ``(C*K, B)``, ``a`` ``(M*C, B)`` (empty without attention) and ``p``
    ``(M, C, B)``.

    No max-subtraction in the softmaxes: unit-norm proxies and instances bound ``T = S/gamma``
    to ``[0, 1/gamma]`` (``_pool_from_attention`` keeps ``C*K`` terms ``E = exp(T)`` finite). The
    attention is ``A = E / Z`` and the pooling softmax ``q = E / E_pool``; neither is
    materialised: ``1/Z`` ``(1, B)`` and ``1/E_pool`` ``(1, K, B)`` or ``(C, 1, B)`` are folded
    into the products. Normalisation is differentiated as ``x / |x|`` where the norm exceeds
    ``1e-12``; smaller vectors (absent modalities, clamped proxies) get zero gradient.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, uT: Tensor, weight: Tensor, mask: Tensor | None, spec: FusionSpec, analytics: bool
    ) -> Tensor | tuple[Tensor, ...]:
        M, C, B = uT.shape
        K, g = spec.proxies_per_class, spec.gamma
        maskT = None if mask is None else mask.t()[:, None, :]  # (M, 1, B), any input layout
        # identity: a clone, so that the returned scores never alias the input
        p = uT.softmax(dim=1) if spec.activation == "softmax" else uT.clone()
        if maskT is not None:  # ``where`` rather than a product: absent modalities may hold NaN
            p = torch.where(maskT, p, p.new_zeros(()))
        z = p.view(M * C, B)
        # ig = 1 / (gamma |z|), so that T = P @ (z * ig). Softmax scores of present modalities
        # sum to one per block (|z| >= 1/sqrt(C)): no zero guard needed without a mask
        sq = torch.linalg.vecdot(z, z, dim=0).unsqueeze(0)  # (1, B)
        ig = sq.mul(g * g).rsqrt_()
        if maskT is not None or spec.activation != "softmax":
            ig.masked_fill_(sq <= _EPS * _EPS, 0.0)
        zg = z * ig
        P = weight.clamp_min(0)
        norm = torch.linalg.vector_norm(P, dim=1, keepdim=True)
        inv_n = norm.reciprocal().masked_fill_(norm <= _EPS, 0.0)  # (C*K, 1); zero for dead proxies
        P.mul_(inv_n)
        T = P @ zg  # (C*K, B), in [0, 1/gamma]
        E = T.exp()  # unnormalised attention, >= 1
        E3, T3 = E.view(C, K, B), T.view(C, K, B)
        pool = 0 if spec.pooling == "reference" else 1  # axis of the pooling softmax in (C, K, B)
        Es = E3.sum(dim=pool, keepdim=True)  # (1, K, B) or (C, 1, B)
        inv_z = Es.sum(dim=1 - pool).reciprocal_()  # (1, B): 1 / sum of all E
        inv_es = Es.reciprocal_()
        qT = (T3 * E3 if analytics else T3.mul_(E3)).mul_(inv_es)  # q * T (T's buffer when it is not returned)
        s = qT.sum(dim=1)  # (C, B): s / gamma
        if spec.attention:
            a = (P.t() @ E).mul_(inv_z)  # (M*C, B)
            h = torch.addcmul(z, a, z).view(M, C, B).sum(dim=0)
        else:
            a = None
            h = p.sum(dim=0)
        o = torch.add(h, s, alpha=g)  # (C, B)
        ctx.spec = spec
        ctx.save_for_backward(weight, maskT, p, zg, ig, P, inv_n, E, inv_es, inv_z, qT, a, s)
        if not analytics:
            return o
        ctx.set_materialize_grads(False)  # the analytics get no gradient: no zeros allocated for them
        a_out = a if a is not None else T.new_empty((0, B))
        A = E * inv_z
        ctx.mark_non_differentiable(T3, A, a_out, p)
        return o, T3, A, a_out, p

    @staticmethod
    @once_differentiable
    def backward(  # type: ignore[override]
        ctx: Any, grad_o: Tensor | None, *_: Tensor | None
    ) -> tuple[Tensor | None, Tensor | None, None, None, None]:
        if grad_o is None:  # the fused logits did not reach the loss
            return None, None, None, None, None
        spec: FusionSpec = ctx.spec
        weight, maskT, p, zg, ig, P, inv_n, E, inv_es, inv_z, qT, a, s = ctx.saved_tensors
        with _no_autocast(grad_o.device.type):
            M, C, B = p.shape
            K, g = spec.proxies_per_class, spec.gamma
            G = grad_o.to(p.dtype).contiguous()  # (C, B)
            Gb = G.view(C, 1, B)
            # s = gamma sum_k q T, q = E / E_pool: d/dT = gamma q [G (1 + T) - colsum],
            # colsum = sum over the pooling axis of q T G
            if spec.pooling == "reference":
                buf = qT * Gb  # becomes the (C*K, B) buffer of dT below
                colsum = buf.sum(dim=0, keepdim=True)  # (1, K, B)
            else:
                buf = None
                colsum = (G * s).view(C, 1, B)
            # h = sum_m (1 + a_m) p_m, a = A @ P, A = E / Z
            if spec.attention:
                G1 = G.view(1, C, B)
                dz = torch.addcmul(G1, G1, a.view(M, C, B)).view(M * C, B)
                da = (p * (G * inv_z).view(1, C, B)).view(M * C, B)  # dL/da times 1/Z, so that A -> E
                dA = torch.mm(P, da, out=None if buf is None else buf.view(C * K, B))
                # softmax backward A (dA - sum_j A_j dA_j), with sum_j A_j dA_j = da . a
                rowdot = torch.linalg.vecdot(da, a, dim=0).view(1, 1, B)
                dT = dA.view(C, K, B).sub_(torch.addcmul(rowdot, colsum, inv_es, value=g))
            else:
                dz = G.view(1, C, B).expand(M, C, B).reshape(M * C, B)
                da = None
                dT = torch.mul(colsum, inv_es).mul_(-g).expand(C, K, B).contiguous()
            # E [dA/Z - rowdot/Z + gamma (G - colsum) / E_pool] + gamma q T G
            dT.addcmul_(inv_es, Gb, value=g).mul_(E.view(C, K, B)).addcmul_(qT, Gb, value=g)
            dT2 = dT.view(C * K, B)
            grad_u = grad_w = None
            if ctx.needs_input_grad[0]:
                Y = P.t() @ dT2  # dL/dzg, (M*C, B); T = P @ zg, zg = z / (gamma |z|)
                radial = torch.linalg.vecdot(zg, Y, dim=0).unsqueeze(0)  # project out the radial part
                dz.addcmul_(Y.addcmul_(zg, radial, value=-g * g), ig)
                dp = dz.view(M, C, B)
                if maskT is not None:
                    dp = torch.where(maskT, dp, dp.new_zeros(()))
                if spec.activation == "softmax":  # p * (dp - sum_c p dp)
                    pdp = p * dp
                    dp = pdp.addcmul_(p, pdp.sum(dim=1, keepdim=True), value=-1)
                grad_u = dp  # (M, C, B), the layout of the input
            if ctx.needs_input_grad[1]:
                grad_w = _proxy_grad(dT2, E, da, zg, P, inv_n, weight)
        return grad_u, grad_w, None, None, None


def _proxy_grad(
    dT: Tensor, E: Tensor, da: Tensor | None, zg: Tensor, P: Tensor, inv_n: Tensor, weight: Tensor
) -> Tensor:
    """Gradient w.r.t. the proxy parameter from ``dT``, ``E`` ``(C*K, B)`` and ``da``, ``zg`` ``(M*C, B)``.

    ``P = wc / |wc|`` with ``wc = clamp(w, 0)``. The ``1/|wc|`` row scale goes on whichever side
    of the products is smaller. ``dT`` is the backward's scratch buffer and may be scaled in place.
    """
    D, B = zg.shape
    scale_factors = B < D
    if scale_factors:
        dT, E = dT.mul_(inv_n), E * inv_n
    dP = dT @ zg.t()  # (C*K, M*C)
    if da is not None:
        dP.addmm_(E, da.t())
    if not scale_factors:
        dP.mul_(inv_n)
    dP.addcmul_(P, torch.linalg.vecdot(P, dP).unsqueeze(1), value=-1)  # project out the radial part
    return dP.masked_fill_(weight < 0, 0.0)  # clamp_min passes the gradient where w >= 0


def _fuse(u: Tensor, weight: Tensor, mask: Tensor | None, spec: FusionSpec, analytics: bool = False) -> _Raw:
    """Run the fusion in at least float32 with autocast disabled (inputs already checked).

    From the fused path the outputs are batch-first views of its batch-last tensors: ``logits``
    is the ``(B, C)`` transpose of a contiguous ``(C, B)``, which the cross-entropy takes in
    its fast "spatial" form.
    """
    dtype = _compute_dtype(u, weight)
    with _no_autocast(u.device.type):
        u, weight = u.to(dtype), weight.to(dtype)
        if not _uses_fused_path(spec):
            raw = _fuse_composite(u, weight, mask, spec, analytics)
        else:
            uT = u.permute(1, 2, 0).contiguous()  # (M, C, B): the one copy of the input
            out = _FusionFunction.apply(uT, weight, mask, spec, analytics)
            inputs = uT.permute(2, 0, 1)
            if not analytics:
                raw = _Raw(out.t(), inputs=inputs)
            else:
                o, T, A, a, p = out
                B, C, K = o.shape[1], spec.num_classes, spec.proxies_per_class
                a_bf = a.t() if a.numel() else None
                raw = _Raw(o.t(), T.permute(2, 0, 1), A.t().view(B, C, K), a_bf, p.permute(2, 0, 1), inputs)
        evidence = _evidence_logits(u, mask, spec)  # one place for every path: loss, fuse, Shapley values
        if evidence is not None:
            raw = raw._replace(logits=raw.logits + evidence, evidence=evidence)
        if analytics:
            raw = raw._replace(proxies=normalized_proxies(weight.detach(), spec.normalize_proxies), mask=mask)
    return raw


def _evidence_logits(
    u: Tensor, mask: Tensor | None, spec: FusionOptions, weight: Tensor | None = None
) -> Tensor | None:
    """``w * mean_m log(p_m + floor)`` over the present modalities, ``(B, C)``, detached; ``None`` for ``w = 0``.

    ``w`` is ``spec.log_evidence``, or ``weight`` where given (a loss's fitted ``evidence_weight``,
    a tensor: no host sync). Zero where no modality is present. Why no gradient: with it, the
    fused cross-entropy trains the heads as late fusion's does, and on clean UCI the weakest head
    fell 3.8 points below the same head trained alone (benchmarks/README.md, design decision Q5).
    """
    if weight is None and not spec.log_evidence:
        return None
    u = u.detach()
    if mask is not None:  # absent entries may be NaN
        u = torch.where(mask[:, :, None], u, u.new_zeros(()))
    p = u.softmax(dim=-1) if spec.activation == "softmax" else u.clamp_min(0.0)
    evidence = _mean_log_probs(p, mask, spec.log_evidence_floor)
    return evidence.mul_(spec.log_evidence if weight is None else weight.to(evidence.dtype))


def _decision_logits(
    u: Tensor, weight: Tensor, mask: Tensor | None, spec: FusionSpec, evidence_weight: Tensor | None
) -> Tensor:
    """The fused logits that decide: with a loss's fitted ``evidence_weight``, its share of the evidence added."""
    o = _fuse(u, weight, mask, spec).logits
    if evidence_weight is None:
        return o
    extra = _evidence_logits(u.to(o.dtype), mask, spec, evidence_weight)
    assert extra is not None
    return o + extra


def _mean_log_probs(p: Tensor, mask: Tensor | None, floor: float) -> Tensor:
    """``mean_m log(p_m + floor)`` over the present modalities, ``(B, C)`` (0 where none is present)."""
    return _log_prob_shares(p, mask, floor).sum(dim=1)


def _log_prob_shares(p: Tensor, mask: Tensor | None, floor: float) -> Tensor:
    """Each modality's share of ``mean_m log(p_m + floor)``, ``(B, M, C)``: ``log(p_m + floor) / M'``, or 0 if absent.

    The one formula of the log-evidence (unweighted): the fusion's term, the fitted decision
    weight's term and their split by modality all read it.
    """
    logp = (p + floor).log()
    if mask is None:
        return logp.div_(p.shape[1])
    keep = mask.to(logp.dtype)
    return logp.mul_((keep / keep.sum(dim=1, keepdim=True).clamp_min(1.0))[:, :, None])


def _modality_logits(raw: _Raw, spec: FusionSpec, evidence_shares: Tensor | None) -> Tensor:
    """The fused logit split by modality, ``(B, M, C)``, summing to ``raw.logits`` (detached).

    Exact, because every part of ``o`` is a sum over the modalities once the softmaxes are read
    off: ``h = sum_m (1 + a_m) p_m``; the pooled similarity ``sum_k q_ck S_ck`` with
    ``S_ck = sum_m zhat_m . P_ck,m`` (the cosine similarity split by modality block); and the
    log-evidence ``(w / M') sum_m log(p_m + floor)`` over the ``M'`` present modalities, given
    weighted as ``evidence_shares`` (``None``: no log-evidence).
    """
    assert raw.scores is not None and raw.scaled_similarity is not None and raw.proxies is not None
    p = raw.scores
    B, M, C = p.shape
    K = spec.proxies_per_class
    pool = 1 if spec.pooling == "reference" else 2
    q = raw.scaled_similarity.softmax(dim=pool)  # (B, C, K): the pooling softmax of S / gamma
    z = p.reshape(B, M * C)
    zhat = (z * _inv_norm(z)).view(B, M, C)
    per_block = torch.einsum("bmd,ckmd->bmck", zhat, raw.proxies.view(C, K, M, C))  # S split by block
    parts = (per_block * q.unsqueeze(1)).sum(dim=3)
    parts += p if raw.attended is None else (1 + raw.attended.view(B, M, C)) * p
    if evidence_shares is not None:
        parts += evidence_shares
    return parts


def _margin_shares(parts: Tensor, logits: Tensor, mask: Tensor | None) -> Tensor:
    """Each modality's share of the predicted class's margin over the runner-up, ``(B, M)``.

    ``d_m = o_m[c_hat] - o_m[c_2]`` sums to the fused margin ``o[c_hat] - o[c_2] >= 0``; a modality
    that argues for the runner-up (``d_m < 0``) gets weight 0, the others share by ``d_m``. On an
    exact tie the present modalities share equally; all zeros when none is present.
    """
    B, M, _ = parts.shape
    top2 = logits.topk(2, dim=1).indices  # C >= 2
    pick = top2[:, None, :].expand(B, M, 2)
    d = parts.gather(2, pick)
    d = (d[..., 0] - d[..., 1]).clamp_min(0.0)
    total = d.sum(dim=1, keepdim=True)
    present = torch.ones_like(d) if mask is None else mask.to(d.dtype)
    tie = present / present.sum(dim=1, keepdim=True).clamp_min(1.0)
    return torch.where(total > 0, d / total.clamp_min(torch.finfo(d.dtype).tiny), tie)


def _analytics(
    raw: _Raw, spec: FusionSpec, temperature: Tensor | None = None, evidence_weight: Tensor | None = None
) -> FusionOutput:
    """The public per-instance analytics (contiguous, batch first) from :func:`_fuse`'s outputs.

    ``temperature`` and ``evidence_weight`` are the calibration's (``MultiModalLoss``'s buffers):
    the decision's logits are ``(o + evidence_weight * mean_m log(p_m + floor)) / temperature``.
    """
    assert raw.scaled_similarity is not None and raw.attention is not None and raw.scores is not None
    logits, evidence = raw.logits, raw.evidence
    weight: Tensor | float = spec.log_evidence
    shares = None
    if evidence_weight is not None or weight:
        shares = _log_prob_shares(raw.scores, raw.mask, spec.log_evidence_floor)
    if evidence_weight is not None:  # a detached offset: the fitted decision weight's share of the evidence
        assert shares is not None
        ew = evidence_weight.to(logits.dtype)
        extra = shares.sum(dim=1) * ew
        logits, weight = logits + extra, ew + spec.log_evidence
        evidence = extra if evidence is None else evidence + extra
    inv_t = None if temperature is None else temperature.to(logits.dtype).reciprocal()
    if inv_t is not None:
        logits = logits * inv_t
    with torch.no_grad():
        p = raw.scores
        B, _, C = p.shape
        sim = (raw.scaled_similarity * spec.gamma).contiguous()
        subgroup = sim.view(B, C * spec.proxies_per_class).argmax(dim=-1)
        parts = _modality_logits(raw, spec, None if shares is None else shares * weight)
        evidence = evidence if evidence is not None else raw.logits.new_zeros(B, C)
        attention_logits = raw.logits.detach() - (raw.evidence if raw.evidence is not None else 0.0)
        if inv_t is not None:
            parts, evidence, attention_logits = parts * inv_t, evidence * inv_t, attention_logits * inv_t
        weights = _margin_shares(parts, logits.detach(), raw.mask)
    return FusionOutput(
        logits=logits.contiguous(),
        subgroup=subgroup,
        attention=raw.attention.contiguous(),
        similarity=sim,
        unimodal_probs=p.contiguous(),
        modality_weights=weights,
        attention_logits=attention_logits.contiguous(),
        evidence_logits=evidence.contiguous(),
        modality_logits=parts.contiguous(),
    )


def _spec_from(u: Tensor, weight: Tensor, options: FusionOptions) -> FusionSpec:
    """The :class:`FusionSpec` of an input ``(B, M, C)``, a proxy parameter and the options."""
    _, M, C = u.shape
    K = V.check_weight(weight, M, C)
    return FusionSpec(num_classes=C, num_modalities=M, proxies_per_class=K, **dataclasses.asdict(options))


def _stacked(
    unimodal_logits: UnimodalInput, modality_names: Sequence[str] | None
) -> tuple[Tensor, tuple[str, ...] | None]:
    """The input as a checked ``(B, M, C)`` tensor with ``C >= 2``, and the checked names."""
    names = V.check_names("modality_names", modality_names)
    u = V.coerce_unimodal(unimodal_logits, names, None if names is None else len(names))
    V.check_unimodal_tensor(u, None if names is None else len(names), None)
    if u.shape[2] < 2:
        raise ValueError(
            f"Expected argument `unimodal_logits` to have C >= 2 classes (shape (B, M, C)), but got C={u.shape[2]}."
        )
    return u, names


def _prepare(
    unimodal_logits: UnimodalInput,
    weight: Tensor,
    modality_mask: Tensor | None,
    modality_names: Sequence[str] | None,
    validate_args: bool,
    options: FusionOptions,
) -> tuple[Tensor, Tensor | None, FusionSpec, tuple[str, ...] | None]:
    """Stack and check the input, build the spec; with ``validate_args`` also check the values.

    The one place where the functional layer checks its inputs.
    """
    u, names = _stacked(unimodal_logits, modality_names)
    spec = _spec_from(u, weight, options)
    mask = V.check_mask(modality_mask, u.shape[0], u.shape[1], u.device)
    if validate_args:
        V.check_values(u, mask, spec.activation, names, weight=weight)
    return u, mask, spec, names


def multimodal_logits(
    unimodal_logits: UnimodalInput,
    weight: Tensor,
    options: FusionOptions | None = None,
    *,
    modality_mask: Tensor | None = None,
    modality_names: Sequence[str] | None = None,
    validate_args: bool = True,
    **option_kwargs: Any,
) -> Tensor:
    r"""Fused logits of the MultiModal loss (the cheap path: no analytics).

    .. math::
        o_c = \sum_k q_{ck} S_{ck} + \sum_m (1 + a_{mc}) p_{mc} + w \tfrac{1}{M} \sum_m \log(p_{mc} + f)

    with :math:`S = \hat z P^\top`, :math:`A = \mathrm{softmax}(S/\gamma)`, :math:`a = A P`,
    :math:`q` the pooling softmax (see ``docs`` or ``shared/design/loss.md``) and the
    log-evidence of weight :math:`w` (``log_evidence``) and floor :math:`f`
    (:func:`log_evidence_logits`; ``log_evidence=0`` is the paper's fused logit).

    Args:
        unimodal_logits: ``(B, M, C)`` tensor, a sequence of ``M`` ``(B, C)`` tensors, or a mapping
            name -> ``(B, C)`` (needs ``modality_names``).
        weight: proxy parameter of shape ``(C*K, M*C)``.
        options: the fusion's :class:`FusionOptions` (``gamma``, ``pooling``, ``attention``,
            ``normalize_proxies``, ``activation``, ``backend``, ``log_evidence``,
            ``log_evidence_floor``); default ``FusionOptions()``.
        modality_mask: optional bool ``(B, M)``, ``True`` where the modality is present.
        modality_names: order of the keys when ``unimodal_logits`` is a mapping.
        validate_args: check values (finite, non-negative for ``identity``); costs one sync.
        option_kwargs: any :class:`FusionOptions` field by name, e.g. ``gamma=0.2`` (overrides
            ``options``).

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
    opts = _options(options, option_kwargs)
    u, mask, spec, _ = _prepare(unimodal_logits, weight, modality_mask, modality_names, validate_args, opts)
    return _fuse(u, weight, mask, spec).logits.contiguous()


def multimodal_fuse(
    unimodal_logits: UnimodalInput,
    weight: Tensor,
    options: FusionOptions | None = None,
    *,
    modality_mask: Tensor | None = None,
    modality_names: Sequence[str] | None = None,
    validate_args: bool = True,
    **option_kwargs: Any,
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
        >>> out.attention.shape
        torch.Size([4, 3, 5])
        >>> bool(torch.allclose(out.modality_weights.sum(dim=1), torch.ones(4)))
        True
    """
    opts = _options(options, option_kwargs)
    u, mask, spec, _ = _prepare(unimodal_logits, weight, modality_mask, modality_names, validate_args, opts)
    return _analytics(_fuse(u, weight, mask, spec, analytics=True), spec)


def log_evidence_logits(
    unimodal_logits: UnimodalInput,
    options: FusionOptions | None = None,
    *,
    modality_mask: Tensor | None = None,
    modality_names: Sequence[str] | None = None,
    validate_args: bool = True,
    **option_kwargs: Any,
) -> Tensor:
    r"""The log-evidence part of the fused logits, on its own: :math:`w \tfrac{1}{M'} \sum_m \log(p_{mc} + f)`.

    The mean over the ``M'`` present modalities of each head's floored log-probability, times
    the weight ``w = log_evidence``: late fusion's logit up to a per-instance constant, floored
    at ``f = log_evidence_floor`` so that one head can push a class down by at most
    ``w / M' * log(1 / f)``. Detached (the fusion adds it as a fixed offset); zeros where no
    modality is present, and for ``w = 0``.

    Args:
        unimodal_logits: as in :func:`multimodal_logits` (scores ``>= 0`` with ``activation="identity"``).
        options: the fusion's :class:`FusionOptions` (``log_evidence``, ``log_evidence_floor``,
            ``activation`` matter here).
        modality_mask: optional bool ``(B, M)``, ``True`` where the modality is present.
        modality_names: order of the keys when ``unimodal_logits`` is a mapping.
        validate_args: check values (finite, non-negative for ``identity``).
        option_kwargs: any :class:`FusionOptions` field by name.

    Returns:
        ``(B, C)`` in at least float32.

    Example::

        >>> import torch
        >>> from lightning_mmloss.functional import log_evidence_logits
        >>> u = torch.tensor([[[0.0, 0.0], [2.0, 0.0]]])  # one instance, 2 modalities, 2 classes
        >>> log_evidence_logits(u, log_evidence=1.0).round(decimals=4)
        tensor([[-0.4099, -1.4095]])
        >>> log_evidence_logits(u, log_evidence=0.0)
        tensor([[0., 0.]])
    """
    opts = _options(options, option_kwargs)
    u, names = _stacked(unimodal_logits, modality_names)
    mask = V.check_mask(modality_mask, u.shape[0], u.shape[1], u.device)
    if validate_args:
        V.check_values(u, mask, opts.activation, names)
    u = _as_compute_dtype(u)
    evidence = _evidence_logits(u, mask, opts)
    return u.new_zeros(u.shape[0], u.shape[2]) if evidence is None else evidence
