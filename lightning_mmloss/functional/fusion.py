"""The MultiModal-loss fusion: proxies, fused logits, analytics and the loss.

The forward and backward passes are written by hand in one :class:`torch.autograd.Function`.
Why: the formulation is a chain of about twenty small operations on ``(B, C*K)`` tensors;
autograd records, saves and replays each one. Writing the backward out lets it

* work batch-last (``(M, C, B)``, ``(C, K, B)``): every elementwise op, reduction and broadcast
  then runs along the long contiguous batch axis instead of short class/proxy axes;
* skip the softmaxes' max-subtraction (unit-norm proxies bound the similarities) and never
  materialise the attention or the pooling softmax: both are ``exp(S/gamma)`` times small
  ``(1, B)``/``(1, K, B)`` factors folded into the products;
* fold ``1/gamma`` into the instance norms and ``1/|w|`` into the small factors of the proxy
  gradient, and reuse one ``(C*K, B)`` buffer across the backward pass;
* take the fused cross-entropy in its "spatial" form along the batch axis, and the default
  loss's auxiliary unimodal cross-entropy as the NLL of the fusion's own log-softmax (one pass:
  the fused backward adds its gradient).

Choices were measured with ``benchmarks/loss_speed.py`` (see ``benchmarks/README.md``). Why a
second, composite implementation (``backend="autograd"``) stays: the hand-written backward took
0.5-0.75 of its time in every CPU configuration measured, but only the composite supports double
backward and ``torch.func``, and it is the exact path for very small ``gamma`` and for the
ablation without proxy normalisation (where the similarities are unbounded).

The result is checked against a naive per-instance loop and with ``gradcheck`` in the tests.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
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
        backend: ``"fused"`` (hand-written backward, the fastest) or ``"autograd"`` (plain torch
            ops: double backward and ``torch.func``).

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

    def __post_init__(self) -> None:
        object.__setattr__(self, "gamma", V.check_gamma(self.gamma))
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

    Only ``logits`` carries gradient; the other fields are detached analytics.

    Attributes:
        logits: fused logits ``o = s + h``, shape ``(B, C)``.
        subgroup: flat index ``j = c*K + k`` of the most similar proxy, shape ``(B,)``.
        attention: attention ``A`` over all proxies, shape ``(B, C, K)``.
        similarity: cosine similarity ``S`` to every proxy, shape ``(B, C, K)``.
        unimodal_probs: per-modality scores ``p`` (zero for absent modalities), ``(B, M, C)``.
        modality_weights: share of each modality in the attended sum for the predicted class,
            ``(B, M)``, rows sum to one (all zeros when every modality is absent).

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


def _autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 has no device argument
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()


def _no_autocast(device_type: str) -> contextlib.AbstractContextManager[Any]:
    """Disable autocast for the fusion, which runs in at least float32 (no-op when it is off)."""
    if device_type in _AUTOCAST_DEVICES and _autocast_enabled(device_type):
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


def _inv_norm(x: Tensor) -> Tensor:
    """``1 / |row|`` where the row norm exceeds ``_EPS``, else ``0`` (rows ``(N, D)`` -> ``(N, 1)``).

    Why not ``1 / max(|row|, eps)`` as ``F.normalize`` does: a zero row (a fully clamped proxy,
    an instance whose scores are all zero) would then scale its gradient by ``1e12``; here it
    gets exactly zero gradient, and its normalised value is zero either way.
    """
    norm = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    big = norm > _EPS
    return torch.where(big, torch.where(big, norm, 1.0).reciprocal(), 0.0)


def _inv_norm_nograd(x: Tensor) -> Tensor:
    """:func:`_inv_norm` for the hand-written path (no autograd through it): two ops fewer."""
    norm = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    return norm.reciprocal().masked_fill_(norm <= _EPS, 0.0)


def _proxies(weight: Tensor, normalize: bool) -> tuple[Tensor, Tensor | None]:
    """Non-negative (unit-norm) proxies ``(C*K, M*C)`` and the inverse row norms ``(C*K, 1)``.

    Three passes over the parameter (clamp, norm, in-place scaling) and no extra buffer:
    this matters when ``C*K x M*C`` is large (e.g. C=1000).
    """
    proxies = weight.clamp_min(0)
    if not normalize:
        return proxies, None
    inv = _inv_norm_nograd(proxies)
    return proxies.mul_(inv), inv


def _softmax_last(x: Tensor) -> Tensor:
    """Softmax over the last axis (the C unimodal classes).

    On CPU, ``Tensor.softmax`` handles a short contiguous last axis one row at a time: for
    ``(1024, 3, 10)`` it was measured 3x slower than the five vectorised ops below, which in
    turn lose for long rows or few of them (one kernel beats five launches).
    """
    if x.shape[-1] > 16 or x.numel() < 2048 or x.device.type != "cpu":
        return x.softmax(dim=-1)
    if torch.is_grad_enabled() and x.requires_grad:  # autograd needs exp's output intact
        e = (x - x.detach().amax(dim=-1, keepdim=True)).exp()
        return e / e.sum(dim=-1, keepdim=True)
    e = (x - x.amax(dim=-1, keepdim=True)).exp_()
    return e.div_(e.sum(dim=-1, keepdim=True))


# The fused path computes E = exp(S / gamma) without subtracting a maximum: for unit-norm proxies
# and instances S lies in [0, 1], so E lies in [1, e^{1/gamma}] and the sum of the C*K entries is
# at most e^{1/gamma + log(C*K)}, kept below e^75 (float32 overflows at about e^88).
_LOG_TINY_MARGIN = 75.0


def _pool_from_attention(spec: FusionSpec) -> bool:
    """Whether the attention and pooling softmaxes can both be taken from ``E = exp(S/gamma)``.

    True for unit-norm proxies and ``1/gamma + log(C*K) <= 75``. Beyond that (very small
    ``gamma``) the composite path is also the precise one: at gamma=1e-6 a hand-written backward's
    float32 gradients were 0.5-4% off a float64 reference (the autograd composition: 1e-7),
    because rounding in differences of O(1) terms is scaled by ``1/gamma``.
    """
    n = spec.num_classes * spec.proxies_per_class
    return spec.normalize_proxies and 1.0 / spec.gamma + math.log(n) <= _LOG_TINY_MARGIN


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


def _inv_col_norm(x: Tensor) -> Tensor:
    """``1 / |column|`` of ``(S, D, b)`` where the norm exceeds ``_EPS``, else ``0``, as ``(S, b)`` (no autograd).

    A sum of squares over the feature axis: vectorised along the batch, unlike
    ``linalg.vector_norm`` over a non-last axis (measured 17x slower on CPU for ``(30, 1024)``).
    Rows (the proxies, :func:`_inv_norm_nograd`) keep ``vector_norm``: ``vecdot(dim=1)`` was 14x
    slower at ``(10000, 3000)``.
    """
    sq = torch.linalg.vecdot(x, x, dim=1)
    return sq.rsqrt().masked_fill_(sq <= _EPS * _EPS, 0.0)


# Batch chunks on CPU. MKL runs a product with a (C*K, B) row-major output on one thread when
# C*K is small: at 2 threads (200, 30) x (30, 1024) took 145 us, 140 us on one thread (with
# C*K = 800 two threads were 1.9x faster). torch.bmm over S contiguous (C*K, B/S) chunks gives
# each thread a chunk: 73 us. So the fused path runs in S = 2 chunks there. Below
# B*C*K = 32768 (torch's own grain for parallel elementwise ops) it measured no gain: 1.0x at
# (256, 2, 2, 20), against 0.8x at (256, 3, 10, 20).
_CHUNK_MAX_CK = 512
_CHUNK_MIN_WORK = 32768


def _batch_chunks(batch: int, spec: FusionSpec, device: torch.device) -> int:
    """How many contiguous chunks ``S`` the fused path splits the batch into (1: no split).

    Two on a multi-threaded CPU (any CPU under ``torch.compile``) for an even batch with
    ``C*K < 512`` (where MKL does not thread the ``(C*K, B)`` products) and ``B*C*K >= 32768``;
    one elsewhere: GPUs, large ``C*K`` (MKL threads those itself), small problems (nothing to
    gain), odd batches.
    """
    ck = spec.num_classes * spec.proxies_per_class
    if device.type != "cpu" or batch % 2 or ck >= _CHUNK_MAX_CK or batch * ck < _CHUNK_MIN_WORK:
        return 1
    # Under torch.compile the thread count cannot be read (a graph break), and need not be: the
    # compiled loss calls the same MKL products, and two chunks cost nothing on one thread
    # (compiled, (1024, 3, 10, 20): 2 threads 1.35 vs 1.68 ms in one chunk; 1 thread 2.12 vs 2.11)
    if not V._compiling() and torch.get_num_threads() < 2:
        return 1
    return 2


def _batch_first(x: Tensor) -> Tensor:
    """``(S, *dims, b)`` batch-last chunks as ``(S*b, *dims)``: a view for one chunk, else a copy."""
    S, b = x.shape[0], x.shape[-1]
    return x.movedim(-1, 1).reshape(S * b, *x.shape[1:-1])


class _FusionFunction(torch.autograd.Function):
    """Fused logits with a hand-written backward pass, in a batch-last layout.

    Takes the unimodal logits ``(B, M, C)`` and a chunk count ``S`` dividing ``B`` (1 except on
    CPU, see :func:`_batch_chunks`), computes in ``(S, ..., b)`` tensors with ``b = B / S``, and
    returns the fused logits as a contiguous ``(S, C, b)`` tensor (``_batch_first`` makes it
    ``(B, C)``). With ``analytics=True`` it also returns, marked non-differentiable and
    batch-last, the scaled similarity ``T`` (cosine similarity / gamma; ``S`` counts chunks
    here) ``(S, C, K, b)``, the attention ``A`` ``(S, C*K, b)``, the attended proxy ``a``
    ``(S, M*C, b)`` (empty when attention is off) and the masked scores ``p`` ``(S, M, C, b)``.

    Why batch last: every elementwise op, reduction and broadcast of the formulation then runs
    along the long, contiguous batch axis. In the natural ``(B, C, K)`` layout the innermost
    axes are short (``C`` or ``K``, often 10-20) and broadcasts over them (the upstream gradient
    ``(B, C, 1)``) defeat vectorisation: on CPU the same ops were 2-8x slower there.

    Why no max-subtraction in the softmaxes: this path is taken only for unit-norm proxies
    (and instances), so ``T`` lies in ``[0, 1/gamma]`` and ``E = exp(T)`` in ``[1, e^{1/gamma}]``;
    ``_pool_from_attention`` guarantees that ``C*K`` of them cannot overflow. The attention is
    ``A = E / Z`` and the pooling softmax ``q = E / E_pool`` (``E_pool`` its sum over the pooling
    axis), so neither is materialised: the ``1/Z`` and ``1/E_pool`` factors are ``(S, 1, b)`` and
    ``(S, 1, K, b)`` (or ``(S, C, 1, b)``) tensors folded into the products and the backward.

    Normalisation (of ``z`` and of the proxies) is differentiated as ``x / |x|`` wherever the
    norm exceeds ``1e-12``; vectors with smaller norms (absent modalities, fully clamped
    proxies) normalise to zero and get exactly zero gradient.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        u: Tensor,
        weight: Tensor,
        mask: Tensor | None,
        spec: FusionSpec,
        analytics: bool,
        log_scores: bool,
        chunks: int,
    ) -> Tensor | tuple[Tensor, ...]:
        B, M, C = u.shape
        S, b = chunks, B // chunks
        uT = u.view(S, b, M, C).permute(0, 2, 3, 1).contiguous()  # (S, M, C, b): the one copy of the input
        maskT = None if mask is None else mask.view(S, b, M).transpose(1, 2)  # (S, M, b)
        K, g = spec.proxies_per_class, spec.gamma
        # scores: softmax over the class axis, computed along the contiguous batch (4x faster on
        # CPU than over short rows); identity: a clone, so the returned scores never alias the input
        logp = None
        if log_scores:  # also the log-scores, for the auxiliary cross-entropy (softmax, no mask)
            logp = uT.log_softmax(dim=2)
            p = logp.exp()
        else:
            p = uT.softmax(dim=2) if spec.activation == "softmax" else uT.clone()
        if maskT is not None:
            # ``where`` rather than a product: absent modalities may hold NaN placeholders.
            p = torch.where(maskT[:, :, None, :], p, p.new_zeros(()))
        z = p.view(S, M * C, b)
        # zg = z / (gamma |z|): T = P @ zg directly, 1/gamma folded into a (S, 1, b) factor. Softmax
        # scores of all-present modalities sum to 1 per block (|z| >= 1/sqrt(C)): no zero guard
        if maskT is None and spec.activation == "softmax":
            ig = torch.linalg.vecdot(z, z, dim=1).mul_(g * g).rsqrt_()
        else:
            ig = _inv_col_norm(z).mul_(1.0 / g)
        ig = ig.unsqueeze(1)
        zg = z * ig
        P, inv_n = _proxies(weight, True)
        # batched products over the chunks share the proxies (as fast as mm for one chunk)
        Ps = P.expand(S, -1, -1)
        T = torch.bmm(Ps, zg)  # (S, C*K, b), in [0, 1/gamma]
        E = T.exp()  # unnormalised attention, >= 1
        E4, T4 = E.view(S, C, K, b), T.view(S, C, K, b)
        pool = 1 if spec.pooling == "reference" else 2  # axis of the pooling softmax in (S, C, K, b)
        Es = E4.sum(dim=pool, keepdim=True)  # (S, 1, K, b) or (S, C, 1, b)
        inv_z = Es.sum(dim=3 - pool, keepdim=True).reciprocal_().view(S, 1, b)  # 1 / sum of all E
        inv_es = Es.reciprocal_()
        # q * T with q = E * inv_es; without analytics T is not needed afterwards: overwrite it
        qT = (T4 * E4 if analytics else T4.mul_(E4)).mul_(inv_es)
        s = qT.sum(dim=2)  # (S, C, b): sum_k q T, i.e. s / gamma
        if spec.attention:
            a = torch.bmm(Ps.mT, E).mul_(inv_z)  # (S, M*C, b), attended proxy A @ P
            h = torch.addcmul(z, a, z).view(S, M, C, b).sum(dim=1)  # sum_m (1 + a_m) * p_m
        else:
            a = None
            h = p.sum(dim=1)
        o = torch.add(h, s, alpha=g)  # (S, C, b)
        ctx.spec, ctx.log_scores = spec, log_scores
        ctx.save_for_backward(weight, maskT, p, zg, ig, P, inv_n, E, inv_es, inv_z, qT, a, s)
        if not (analytics or log_scores):
            return o
        # outputs that get no gradient: do not let autograd allocate zeros for them
        ctx.set_materialize_grads(False)
        out: tuple[Tensor, ...] = (o,)
        if analytics:
            A = E * inv_z
            a_out = a if a is not None else T.new_empty((S, 0, b))
            ctx.mark_non_differentiable(T4, A, a_out, p)
            out += (T4, A, a_out, p)
        return (*out, logp) if logp is not None else out

    @staticmethod
    @once_differentiable
    def backward(  # type: ignore[override]
        ctx: Any, grad_o: Tensor | None, *rest: Tensor | None
    ) -> tuple[Tensor | None, Tensor | None, None, None, None, None, None]:
        # the log-scores' gradient comes last, after the analytics outputs' (always None)
        grad_logp = rest[-1] if ctx.log_scores else None
        if grad_o is None:  # the fused logits did not reach the loss
            if grad_logp is None:
                return None, None, None, None, None, None, None
            (p,) = ctx.saved_tensors[2:3]
            # log-softmax backward alone: g - p * sum_c g
            grad_uT = grad_logp.addcmul(p, grad_logp.sum(dim=2, keepdim=True), value=-1)
            return _batch_first(grad_uT), None, None, None, None, None, None
        spec: FusionSpec = ctx.spec
        weight, maskT, p, zg, ig, P, inv_n, E, inv_es, inv_z, qT, a, s = ctx.saved_tensors
        with _no_autocast(grad_o.device.type):
            S, M, C, b = p.shape
            K, g = spec.proxies_per_class, spec.gamma
            # (S, C, b); already contiguous when the loss took the cross-entropy of this layout
            G = (grad_o if grad_o.dtype == p.dtype else grad_o.to(p.dtype)).contiguous()
            Gb = G.view(S, C, 1, b)
            Ps = P.expand(S, -1, -1)
            # --- s = gamma * sum_k q * T, q = E / E_pool ---------------------------------------
            # d(gamma s)/dT = gamma * q * [G (1 + T) - colsum], colsum = sum_pool(q * T * G)
            if spec.pooling == "reference":
                buf = torch.mul(qT, Gb)  # becomes the (S, C*K, b) buffer of dT below
                colsum = buf.sum(dim=1, keepdim=True)  # (S, 1, K, b)
            else:
                buf = None
                colsum = (G * s).view(S, C, 1, b)  # the saved s is sum_k q T
            # --- h = sum_m (1 + a_m) p_m, a = A @ P, A = E / Z ------------------------------------
            if spec.attention:
                G1 = G.view(S, 1, C, b)
                dz = torch.addcmul(G1, G1, a.view(S, M, C, b)).view(S, M * C, b)
                da = (p * (G * inv_z).view(S, 1, C, b)).view(S, M * C, b)  # dL/da, times 1/Z (so that A = E below)
                dA = torch.bmm(Ps, da, out=None if buf is None else buf.view(S, C * K, b))
                # softmax backward: A * (dA - sum_j A_j dA_j), and sum_j A_j dA_j = da . a
                rowdot = torch.linalg.vecdot(da, a, dim=1).view(S, 1, 1, b)
                dT = dA.view(S, C, K, b).sub_(torch.addcmul(rowdot, colsum, inv_es, value=g))
            else:
                dz = G.view(S, 1, C, b).expand(S, M, C, b).reshape(S, M * C, b)
                da = None
                dT = torch.mul(colsum, inv_es).mul_(-g).expand(S, C, K, b).contiguous()
            # E * [dA/Z - rowdot/Z + gamma (G - colsum) / E_pool] + gamma q T G
            dT.addcmul_(inv_es, Gb, value=g).mul_(E.view(S, C, K, b)).addcmul_(qT, Gb, value=g)
            dT2 = dT.view(S, C * K, b)
            grad_u = grad_w = None
            if ctx.needs_input_grad[0]:
                # --- T = P @ zg, zg = z / (gamma |z|) ------------------------------------------
                Y = torch.bmm(Ps.mT, dT2)  # dL/dzg, (S, M*C, b)
                radial = torch.linalg.vecdot(zg, Y, dim=1).unsqueeze(1)  # project out the radial part
                dz.addcmul_(Y.addcmul_(zg, radial, value=-g * g), ig)
                dp = dz.view(S, M, C, b)
                if maskT is not None:
                    dp = torch.where(maskT[:, :, None, :], dp, dp.new_zeros(()))
                if spec.activation == "softmax":
                    pdp = p * dp
                    if grad_logp is not None:  # log-softmax backward g - p * sum_c g, in the same sums
                        pdp.add_(grad_logp)
                    # p * (dp - sum p dp) [+ g - p * sum g]
                    grad_u = pdp.addcmul_(p, pdp.sum(dim=2, keepdim=True), value=-1)
                else:
                    grad_u = dp
                grad_u = _batch_first(grad_u)  # the input's (B, M, C) (a view for one chunk)
            if ctx.needs_input_grad[1]:
                grad_w = _proxy_grad(dT2, E, da, zg, P, inv_n, weight)
        return grad_u, grad_w, None, None, None, None, None


def _proxy_grad(
    dT: Tensor, E: Tensor, da: Tensor | None, zg: Tensor, P: Tensor, inv_n: Tensor, weight: Tensor
) -> Tensor:
    """Gradient w.r.t. the proxy parameter from ``dT`` and ``E`` ``(S, C*K, b)``, ``da`` and ``zg`` ``(S, M*C, b)``.

    ``P = wc / |wc|`` with ``wc = clamp(w, 0)``. The ``1/|wc|`` row scale goes on whichever
    side of the products is smaller: the ``(C*K, B)`` factors or the ``(C*K, M*C)`` result.
    ``dT`` is the caller's scratch buffer and may be scaled in place.
    """
    S, D, b = zg.shape
    scale_factors = S * b < D
    if scale_factors:
        dT, E = dT.mul_(inv_n), E * inv_n
    dP = torch.bmm(dT, zg.mT)  # (S, C*K, M*C): per chunk, summed below
    if da is not None:
        dP.baddbmm_(E, da.mT)
    dP = dP.sum(dim=0) if S > 1 else dP[0]
    if not scale_factors:
        dP.mul_(inv_n)
    dP.addcmul_(P, torch.linalg.vecdot(P, dP).unsqueeze(1), value=-1)  # project out the radial part
    # clamp_min passes the gradient where w >= 0. Large on CPU: times sign(w) + 1 capped at 1,
    # four vectorised ops (masked_fill_ with a bool mask took 12x longer at (2000, 400)); else
    # the two-op masked_fill_ (fewer launches)
    if dP.device.type == "cpu" and dP.numel() > 65536:
        return dP.mul_(weight.sign().add_(1).clamp_max_(1))
    return dP.masked_fill_(weight < 0, 0.0)


def _fuse_composite(
    u: Tensor, weight: Tensor, mask: Tensor | None, spec: FusionSpec
) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor]:
    """The same fusion from differentiable torch ops (autograd builds the backward).

    ``backend="autograd"``: slower than the hand-written backward at every size measured
    (``benchmarks/loss_speed.py --crossover``), but it supports double backward and
    ``torch.func`` transforms. Same outputs as :class:`_FusionFunction` with
    ``analytics=True``; ``T``, ``A``, ``a`` and ``p`` are detached.
    """
    B, M, C = u.shape
    K = spec.proxies_per_class
    present = None if mask is None else mask[:, :, None]
    if present is not None:  # absent entries may be NaN: keep them out of every backward formula
        u = torch.where(present, u, u.new_zeros(()))
    p = _softmax_last(u) if spec.activation == "softmax" else u
    if present is not None:
        p = torch.where(present, p, p.new_zeros(()))
    z = p.reshape(B, M * C)
    zn = z * _inv_norm(z)
    wc = weight.clamp_min(0)
    P = wc * _inv_norm(wc) if spec.normalize_proxies else wc
    T = (zn @ P.t()).mul(1.0 / spec.gamma).view(B, C, K)
    A = T.view(B, C * K).softmax(dim=-1).view(B, C, K)
    pool = 1 if spec.pooling == "reference" else 2
    q = A / A.sum(dim=pool, keepdim=True) if _pool_from_attention(spec) else T.softmax(dim=pool)
    s = (q * T).sum(dim=2)
    if spec.attention:
        a = A.view(B, C * K) @ P
        h = (z + a * z).view(B, M, C).sum(dim=1)
    else:
        a = None
        h = p.sum(dim=1)
    o = h + spec.gamma * s
    return o, T.detach(), A.detach(), None if a is None else a.detach(), p.detach()


def _spec_from(u: Tensor, weight: Tensor, options: FusionOptions) -> FusionSpec:
    """The :class:`FusionSpec` of an input ``(B, M, C)``, a proxy parameter and the options."""
    _, M, C = u.shape
    if C < 2:
        raise ValueError(
            f"Expected argument `unimodal_logits` to have C >= 2 classes (shape (B, M, C)), but got C={C}."
        )
    K = V.check_weight(weight, M, C)
    return FusionSpec(num_classes=C, num_modalities=M, proxies_per_class=K, **dataclasses.asdict(options))


def _uses_fused_path(spec: FusionSpec) -> bool:
    """Whether the hand-written :class:`_FusionFunction` computes this fusion (else the composite).

    It needs unit-norm proxies and a ``gamma`` for which ``exp(1/gamma)`` summed over ``C*K``
    proxies stays finite (see its docstring); the ablation without normalisation and very small
    ``gamma`` take the composite path, as does ``backend="autograd"``.
    """
    return spec.backend == "fused" and _pool_from_attention(spec)


def _fuse_raw(
    u: Tensor,
    weight: Tensor,
    mask: Tensor | None,
    spec: FusionSpec,
    analytics: bool = False,
    log_scores: bool = False,
    batch_last: bool = False,
) -> tuple[Any, ...]:
    """Run the fusion in at least float32 with autocast disabled (inputs already validated).

    Returns ``(o, T, A, a, p)`` shaped ``(B, C)``, ``(B, C, K)``, ``(B, C, K)``, ``(B, M*C)``,
    ``(B, M, C)``; from the fused path they are views of its batch-last tensors when it ran in
    one chunk (see :func:`_batch_chunks`), copies otherwise. With ``batch_last=True`` (the loss
    paths) ``o`` from the fused path stays in its ``(S, C, b)`` layout, which
    :func:`_fused_cross_entropy` takes as is. With ``analytics=False`` (the loss and prediction
    paths) only ``o`` is computed, the rest is ``None``. With ``log_scores=True`` (fused path,
    softmax, no mask: see :func:`_log_scores_path`) a sixth element: the differentiable
    log-softmax of the logits, batch-last ``(S, M, C, b)``.
    """
    dtype = _compute_dtype(u, weight)
    with _no_autocast(u.device.type):
        # (``.to`` to the same dtype still costs a call's overhead: a few µs at small sizes)
        u = u if u.dtype == dtype else u.to(dtype)
        weight = weight if weight.dtype == dtype else weight.to(dtype)
        if not _uses_fused_path(spec):
            out = _fuse_composite(u, weight, mask, spec)
            return out if analytics else (out[0], None, None, None, None)
        chunks = _batch_chunks(u.shape[0], spec, u.device)
        out = _FusionFunction.apply(u, weight, mask, spec, analytics, log_scores, chunks)
    if not (analytics or log_scores):
        out = (out,)
    o = out[0] if batch_last else _batch_first(out[0])
    if not analytics:
        return (o, None, None, None, None, *out[1:])  # and the log-scores, if asked for
    T, A, a, p = (_batch_first(t) for t in out[1:5])
    raw = (o, T, A.view(*T.shape), a, p)
    return (*raw, out[5]) if log_scores else raw


def _log_scores_path(spec: FusionSpec, mask: Tensor | None, label_smoothing: float, reduction: str) -> bool:
    """Whether the auxiliary cross-entropy can be the NLL of the fused path's log-scores.

    Then the fusion's softmax and the auxiliary term's log-softmax are one computation, and
    the fused backward adds the auxiliary gradient in the same pass: no second copy of the input,
    no separate log-softmax. Needs every modality present (a mask averages over the present
    heads per instance), softmax scores, no label smoothing and a mean or sum.
    """
    return (
        _uses_fused_path(spec)
        and spec.activation == "softmax"
        and mask is None
        and label_smoothing == 0
        and reduction in ("mean", "sum")
    )


def _aux_from_log_scores(
    log_scores: Tensor,
    target: Tensor,
    class_weight: Tensor | None,
    ignore_index: int,
    reduction: str,
    num_valid: int | None = None,
) -> Tensor:
    """:func:`auxiliary_unimodal_loss` from batch-last log-scores ``(S, M, C, b)`` (see :func:`_log_scores_path`).

    The mean over (instance, head) pairs is the mean over instances of each instance's mean over
    heads; class weights weigh each pair by its instance's target, as the module's term does.
    Without a known positive ``num_valid`` (checks off, or every target ignored) the mean is a sum
    over the weights' sum floored at the smallest float, as the general path computes it: a
    batch of ignored targets gives a connected zero, and no value is read back.
    """
    S, M, C, b = log_scores.shape
    w = None if class_weight is None else class_weight.to(device=log_scores.device, dtype=log_scores.dtype)
    # every head's log-scores against its instance's target: (S*M, C, b) and (S*M, b)
    x, expanded = log_scores.view(S * M, C, b), target.view(S, 1, b).expand(S, M, b).reshape(S * M, b)
    if reduction == "mean" and num_valid is not None and num_valid > 0:
        return F.nll_loss(x, expanded, weight=w, ignore_index=ignore_index)
    total = F.nll_loss(x, expanded, weight=w, ignore_index=ignore_index, reduction="sum") / M
    if reduction == "sum":
        return total
    den = _target_weights(target, class_weight, ignore_index, total.dtype).sum()
    return total / den.clamp_min(torch.finfo(total.dtype).tiny)


def _analytics(o: Tensor, T: Tensor, A: Tensor, a: Tensor, p: Tensor, spec: FusionSpec) -> FusionOutput:
    """Assemble the detached per-instance analytics from the fusion's raw outputs."""
    with torch.no_grad():
        B, M, C = p.shape
        K = spec.proxies_per_class
        # contiguous (B, ...) tensors for the user, whatever layout the fusion computed them in
        sim, att = (T * spec.gamma).contiguous(), A.contiguous()
        subgroup = sim.view(B, C * K).argmax(dim=-1)
        c_hat = o.detach().argmax(dim=-1)
        pick = c_hat.view(B, 1, 1).expand(B, M, 1)
        contrib = p.gather(2, pick).squeeze(2)
        if spec.attention:
            contrib = contrib * (1 + a.view(B, M, C).gather(2, pick).squeeze(2))
        total = contrib.sum(dim=1, keepdim=True)
        weights = torch.where(total > 0, contrib / total.clamp_min(torch.finfo(total.dtype).tiny), 0.0)
    return FusionOutput(
        logits=o.contiguous(),
        subgroup=subgroup,
        attention=att,
        similarity=sim,
        unimodal_probs=p.contiguous(),
        modality_weights=weights,
    )


def _prepare(
    unimodal_logits: UnimodalInput,
    weight: Tensor,
    modality_mask: Tensor | None,
    modality_names: Sequence[str] | None,
    validate_args: bool,
    options: FusionOptions,
) -> tuple[Tensor, Tensor | None, FusionSpec]:
    """Stack and check the input, build the spec; with ``validate_args`` also check the values.

    The one place where the functional layer checks its inputs.
    """
    names = tuple(modality_names) if modality_names is not None else None
    u = V.coerce_unimodal(unimodal_logits, names, None if names is None else len(names))
    V.check_unimodal_tensor(u, None if names is None else len(names), None)
    spec = _spec_from(u, weight, options)
    mask = V.check_mask(modality_mask, u.shape[0], u.shape[1], u.device)
    if validate_args:
        V.check_values(u, mask, spec.activation, names, weight=weight)
    return u, mask, spec


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
        o_c = \sum_k q_{ck} S_{ck} + \sum_m (1 + a_{mc}) p_{mc}

    with :math:`S = \hat z P^\top`, :math:`A = \mathrm{softmax}(S/\gamma)`, :math:`a = A P` and
    :math:`q` the pooling softmax (see ``docs`` or ``shared/design/loss.md``).

    Args:
        unimodal_logits: ``(B, M, C)`` tensor, a sequence of ``M`` ``(B, C)`` tensors, or a mapping
            name -> ``(B, C)`` (needs ``modality_names``).
        weight: proxy parameter of shape ``(C*K, M*C)``.
        options: the fusion's :class:`FusionOptions` (``gamma``, ``pooling``, ``attention``,
            ``normalize_proxies``, ``activation``, ``backend``); default ``FusionOptions()``.
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
    u, mask, spec = _prepare(
        unimodal_logits,
        weight,
        modality_mask,
        modality_names,
        validate_args,
        _options(options, option_kwargs),
    )
    return _fuse_raw(u, weight, mask, spec)[0].contiguous()


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
    u, mask, spec = _prepare(
        unimodal_logits,
        weight,
        modality_mask,
        modality_names,
        validate_args,
        _options(options, option_kwargs),
    )
    return _analytics(*_fuse_raw(u, weight, mask, spec, analytics=True), spec)


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

    Example::

        >>> import torch
        >>> from lightning_mmloss.functional import cross_entropy_from_fused
        >>> logits = torch.zeros(4, 2, requires_grad=True)
        >>> cross_entropy_from_fused(logits, torch.tensor([0, 1, 0, 1]))
        tensor(0.6931, grad_fn=<NllLossBackward0>)
        >>> cross_entropy_from_fused(logits, torch.full((4,), -100), num_valid=0)
        tensor(0., grad_fn=<MulBackward0>)
    """
    return _fused_cross_entropy(logits, target, class_weight, label_smoothing, ignore_index, reduction, num_valid)


def _fused_cross_entropy(
    logits: Tensor,
    target: Tensor,
    class_weight: Tensor | None,
    label_smoothing: float,
    ignore_index: int,
    reduction: str,
    num_valid: int | None,
) -> Tensor:
    """:func:`cross_entropy_from_fused` of ``(B, C)`` logits or of the fused path's ``(S, C, b)`` chunks."""
    # no autocast guard needed: the fused logits are float32/64 and autocast runs
    # cross-entropy in float32 anyway
    logits = _as_compute_dtype(logits)
    B = target.shape[0]
    if B == 0 or (num_valid == 0 and reduction == "mean"):
        zero = logits.sum() * 0.0
        return zero.expand(B) if reduction == "none" else zero
    w = None if class_weight is None else class_weight.to(device=logits.device, dtype=logits.dtype)
    # batch last, the "spatial" form of cross-entropy ((N, C, b) input): it reduces along the
    # contiguous batch axis, the same value; on CPU 7x faster than over short rows of C classes
    # (measured at B=1024, C=10). The fused path's (S, C, b) chunks are in that form; so is a
    # (B, C) view of a contiguous (C, B)
    if logits.dim() == 3:
        x, t = logits, target.view(logits.shape[0], -1)
    elif B > 1 and logits.t().is_contiguous():
        x, t = logits.t().unsqueeze(0), target.unsqueeze(0)
    else:
        x, t = logits, target
    ce = F.cross_entropy(
        x, t, weight=w, ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing
    )
    return ce.reshape(B) if reduction == "none" else ce


def unimodal_cross_entropy(
    unimodal_logits: Tensor,
    target: Tensor,
    *,
    modality_mask: Tensor | None = None,
    activation: str = "softmax",
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
) -> Tensor:
    """Per-instance mean cross-entropy of the present unimodal heads, ``(B,)`` (inputs already checked).

    This is the auxiliary term that keeps every head a classifier in its own right: each head's
    own argmax must name the label, which the fusion alone does not ask for (a head whose labels
    invert serves the proxies just as well). Absent modalities are replaced before the
    cross-entropy, so NaN placeholders stay out of the value and the gradient. Instances whose
    target is ``ignore_index``, or that have no present modality, get ``0``.

    Example::

        >>> import torch
        >>> from lightning_mmloss.functional import unimodal_cross_entropy
        >>> u = torch.tensor([[[2.0, 0.0], [float("nan"), 0.0]]])  # B=1, M=2 (the second absent), C=2
        >>> unimodal_cross_entropy(u, torch.tensor([0]), modality_mask=torch.tensor([[True, False]]))
        tensor([0.1269])
    """
    B, M, C = unimodal_logits.shape
    with _no_autocast(unimodal_logits.device.type):
        u = unimodal_logits.to(_compute_dtype(unimodal_logits))
        present = None if modality_mask is None else modality_mask[:, :, None]
        if present is not None:
            u = torch.where(present, u, u.new_zeros(()) if activation == "softmax" else u.new_ones(()))
        if activation == "identity":  # scores: log of the normalised scores plays the logits' role
            u = u.clamp_min(torch.finfo(u.dtype).tiny).log()
        valid = target != ignore_index
        safe = torch.where(valid, target, torch.zeros_like(target)).long()
        ce = F.cross_entropy(
            u.reshape(B * M, C), safe.repeat_interleave(M), reduction="none", label_smoothing=label_smoothing
        ).view(B, M)
        if modality_mask is None:
            per_instance = ce.mean(dim=1)
        else:
            keep = modality_mask.to(ce.dtype)
            per_instance = (ce * keep).sum(dim=1) / keep.sum(dim=1).clamp_min(1.0)
        return torch.where(valid, per_instance, per_instance.new_zeros(()))


def _target_weights(target: Tensor, class_weight: Tensor | None, ignore_index: int, dtype: torch.dtype) -> Tensor:
    """Each instance's weight in a cross-entropy mean: its class's weight (1 without), 0 if ignored."""
    valid = target != ignore_index
    if class_weight is None:
        return valid.to(dtype)
    safe = torch.where(valid, target, torch.zeros_like(target)).long()
    return class_weight.to(device=target.device, dtype=dtype)[safe] * valid


def _reduce_like_cross_entropy(
    values: Tensor, target: Tensor, class_weight: Tensor | None, ignore_index: int, reduction: str
) -> Tensor:
    """Reduce per-instance values as ``F.cross_entropy`` reduces its terms (class weights, ignored targets)."""
    w = _target_weights(target, class_weight, ignore_index, values.dtype)
    if reduction == "none":
        return values * w
    total = (values * w).sum()
    if reduction == "sum":
        return total
    # every term is zero where the weights sum to zero, so the floor only avoids 0/0
    return total / w.sum().clamp_min(torch.finfo(values.dtype).tiny)


def auxiliary_unimodal_loss(
    unimodal_logits: Tensor,
    target: Tensor,
    *,
    modality_mask: Tensor | None = None,
    activation: str = "softmax",
    class_weight: Tensor | None = None,
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
    reduction: str = "mean",
    num_valid: int | None = None,
) -> Tensor:
    """:func:`unimodal_cross_entropy` reduced as the fused cross-entropy is (inputs already checked).

    This is the term ``MultiModalLoss`` adds with weight ``aux_weight``. ``num_valid`` (the
    number of targets that are not ``ignore_index``, when known) allows a three-op path when
    every modality is present: the mean over (instance, head) pairs is then the mean over
    instances of each instance's mean over heads, and torch's class-weighted mean agrees when
    there is no label smoothing.

    Example::

        >>> import torch
        >>> from lightning_mmloss.functional import auxiliary_unimodal_loss
        >>> u, y = torch.randn(4, 2, 3), torch.tensor([0, 1, 2, 0])
        >>> fast = auxiliary_unimodal_loss(u, y, num_valid=4)
        >>> bool(torch.allclose(fast, auxiliary_unimodal_loss(u, y)))
        True
    """
    fast = (
        modality_mask is None
        and activation == "softmax"
        and reduction in ("mean", "sum")
        and (class_weight is None or label_smoothing == 0)
        and num_valid is not None
        and num_valid > 0
    )
    if fast:
        B, M, _ = unimodal_logits.shape
        with _no_autocast(unimodal_logits.device.type):
            # the spatial form over (M, C, B): contiguous, without a copy, when the input comes
            # from the fused path's batch-last layout; the same mean over (instance, head) pairs
            ce = F.cross_entropy(
                _as_compute_dtype(unimodal_logits).permute(1, 2, 0),
                target.unsqueeze(0).expand(M, B),
                weight=class_weight,
                ignore_index=ignore_index,
                label_smoothing=label_smoothing,
                reduction=reduction,
            )
        return ce if reduction == "mean" else ce / M
    per_instance = unimodal_cross_entropy(
        unimodal_logits,
        target,
        modality_mask=modality_mask,
        activation=activation,
        label_smoothing=label_smoothing,
        ignore_index=ignore_index,
    )
    return _reduce_like_cross_entropy(per_instance, target, class_weight, ignore_index, reduction)


def multimodal_loss(
    unimodal_logits: UnimodalInput,
    target: Tensor,
    weight: Tensor,
    options: FusionOptions | None = None,
    *,
    class_weight: Tensor | None = None,
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
    reduction: str = "mean",
    modality_mask: Tensor | None = None,
    modality_names: Sequence[str] | None = None,
    validate_args: bool = True,
    **option_kwargs: Any,
) -> Tensor:
    """The MultiModal loss: cross-entropy of the fused logits against ``target``.

    Arguments as in :func:`multimodal_logits`, plus those of
    :func:`torch.nn.functional.cross_entropy` (``class_weight`` is its ``weight``). This is the
    paper's loss: the auxiliary unimodal term of :class:`~lightning_mmloss.MultiModalLoss` is
    :func:`unimodal_cross_entropy`.

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
    u, mask, spec = _prepare(
        unimodal_logits,
        weight,
        modality_mask,
        modality_names,
        False,  # checked below together with the target, in one synchronisation
        _options(options, option_kwargs),
    )
    V.check_choice("reduction", reduction, V.REDUCTIONS)
    target = V.check_target_shape(target, u.shape[0], u.device)
    cw = V.check_class_weight(class_weight, spec.num_classes)
    num_valid = None
    if validate_args:
        num_valid = V.check_values(
            u,
            mask,
            spec.activation,
            modality_names and tuple(modality_names),
            target,
            spec.num_classes,
            ignore_index,
            weight=weight,
        )
    o = _fuse_raw(u, weight, mask, spec, batch_last=True)[0]
    return _fused_cross_entropy(
        o, target, cw, V.check_label_smoothing(label_smoothing), ignore_index, reduction, num_valid
    )
