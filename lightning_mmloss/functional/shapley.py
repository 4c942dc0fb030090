"""Exact per-instance Shapley values of each modality for the fused prediction.

The fusion only sees the unimodal scores, so the value of a coalition of modalities is the
fused probability after re-fusing with the other modalities masked: no encoder runs again.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from lightning_mmloss import _validation as V
from lightning_mmloss.functional.fusion import (
    FusionOptions,
    FusionSpec,
    UnimodalInput,
    _compute_dtype,
    _decision_logits,
    _options,
    _prepare,
)

MAX_SHAPLEY_MODALITIES = 12


def shapley_coefficients(num_modalities: int, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """Coalition masks and the matrix that turns coalition values into Shapley values.

    Returns:
        ``masks`` bool ``(2^M, M)`` (row ``s`` is the bit pattern of ``s``) and ``coef``
        ``(M, 2^M)`` such that ``phi = coef @ values`` for values ``(2^M, ...)``:
        ``phi_m = sum_{S not containing m} |S|! (M-|S|-1)! / M! * (v(S + m) - v(S))``.

    Example::

        >>> import torch
        >>> from lightning_mmloss.functional import shapley_coefficients
        >>> masks, coef = shapley_coefficients(2)
        >>> masks.tolist()
        [[False, False], [True, False], [False, True], [True, True]]
        >>> coef @ torch.tensor([0.0, 1.0, 2.0, 4.0], dtype=torch.float64)  # v(empty), v(0), v(1), v(both)
        tensor([1.5000, 2.5000], dtype=torch.float64)
    """
    M = num_modalities
    n = 1 << M
    idx = torch.arange(n)
    masks = ((idx[:, None] >> torch.arange(M)[None, :]) & 1).bool()
    size = masks.sum(dim=1)
    w = torch.tensor([math.factorial(s) * math.factorial(M - s - 1) / math.factorial(M) for s in range(M)], dtype=dtype)
    coef = torch.zeros(M, n, dtype=dtype)
    for m in range(M):
        has = masks[:, m]
        coef[m, has] = w[size[has] - 1]  # S + m, with |S| = size - 1
        coef[m, ~has] = -w[size[~has].clamp_max(M - 1)]
    return masks, coef


def _coalition_probs(
    u: Tensor,
    weight: Tensor,
    mask: Tensor | None,
    spec: FusionSpec,
    cls: Tensor,
    max_rows: int,
    logit_scale: Tensor | float | None = None,
    evidence_weight: Tensor | None = None,
) -> Tensor:
    """Fused probability of class ``cls`` under every coalition, ``(2^M, B)``."""
    B, M, _ = u.shape
    masks, _ = shapley_coefficients(M)
    masks = masks.to(u.device)
    per_chunk = max(1, max_rows // max(B, 1))
    values = []
    for start in range(0, masks.shape[0], per_chunk):
        sub = masks[start : start + per_chunk]  # (S, M)
        S = sub.shape[0]
        cm = sub[:, None, :].expand(S, B, M)
        if mask is not None:
            cm = cm & mask[None]
        uu = u[None].expand(S, B, *u.shape[1:]).reshape(S * B, *u.shape[1:])
        o = _decision_logits(uu, weight, cm.reshape(S * B, M), spec, evidence_weight).reshape(S, B, -1)
        if logit_scale is not None:
            o = o * logit_scale
        values.append(o.softmax(dim=-1).gather(2, cls.view(1, B, 1).expand(S, B, 1)).squeeze(2))
    return torch.cat(values, dim=0)


def modality_shapley(
    unimodal_logits: UnimodalInput,
    weight: Tensor,
    *,
    options: FusionOptions | None = None,
    target_class: int | Tensor | None = None,
    modality_mask: Tensor | None = None,
    modality_names: Sequence[str] | None = None,
    max_rows: int = 65536,
    validate_args: bool = True,
    logit_scale: Tensor | float | None = None,
    **option_kwargs: Any,
) -> Tensor:
    r"""Exact Shapley value of each modality for one class's fused probability, per instance.

    .. math::
        \phi_m = \sum_{S \subseteq N \setminus \{m\}} \frac{|S|!\,(M-|S|-1)!}{M!}
                 \bigl(v(S \cup \{m\}) - v(S)\bigr),\quad v(S) = \mathrm{softmax}(o(S))_{c}

    where :math:`o(S)` re-fuses with only the modalities in :math:`S` present. The values
    satisfy efficiency: :math:`\sum_m \phi_m = v(N) - v(\emptyset)`. Modalities that
    ``modality_mask`` marks absent get :math:`\phi_m = 0`.

    Args:
        unimodal_logits: as in :func:`~lightning_mmloss.functional.multimodal_logits`.
        weight: proxy parameter ``(C*K, M*C)``.
        target_class: class whose probability is explained: ``None`` (the fused prediction
            with all available modalities), an ``int``, or a ``(B,)`` tensor of indices.
        options: the fusion's :class:`~lightning_mmloss.functional.FusionOptions` (or its fields
            as keyword arguments, ``option_kwargs``); no gradient is computed here.
        modality_mask: optional bool ``(B, M)``, ``True`` where the modality is present.
        modality_names: order of the keys when ``unimodal_logits`` is a mapping.
        max_rows: largest number of (coalition x instance) rows fused at once; bounds memory.
        validate_args: check that the logits are finite (one device sync).
        logit_scale: factor applied to the fused logits before the softmax (``1/`` a loss's fitted
            temperature, ``MultiModalLoss.temperature``); ``None`` for 1.
        option_kwargs: :class:`~lightning_mmloss.functional.FusionOptions` fields by name (override
            ``options``).

    Returns:
        Tensor ``(B, M)`` of Shapley values (no gradient), in the fusion's dtype.

    Raises:
        ValueError: for ``M > 12`` (``2^M`` re-fusions per instance).

    Example::

        >>> import torch
        >>> from lightning_mmloss.functional import modality_shapley, multimodal_fuse
        >>> _ = torch.manual_seed(0)
        >>> u, weight = torch.randn(5, 3, 4), torch.rand(4 * 2, 3 * 4)
        >>> phi = modality_shapley(u, weight)
        >>> phi.shape
        torch.Size([5, 3])
        >>> full = multimodal_fuse(u, weight).probs.max(dim=1).values
        >>> bool(torch.allclose(phi.sum(dim=1), full - 1 / 4, atol=1e-6))   # v(empty) = 1/C
        True
    """
    u, mask, spec, _ = _prepare(
        unimodal_logits, weight, modality_mask, modality_names, validate_args, _options(options, option_kwargs)
    )
    return _shapley(u, weight, mask, spec, target_class, max_rows, logit_scale)


def _shapley(
    u: Tensor,
    weight: Tensor,
    mask: Tensor | None,
    spec: FusionSpec,
    target_class: int | Tensor | None,
    max_rows: int,
    logit_scale: Tensor | float | None,
    evidence_weight: Tensor | None = None,
) -> Tensor:
    """:func:`modality_shapley` on inputs already checked (the module calls this directly)."""
    B, M, C = u.shape
    if M > MAX_SHAPLEY_MODALITIES:
        raise ValueError(
            f"Expected at most {MAX_SHAPLEY_MODALITIES} modalities for exact Shapley values (2^M re-fusions per "
            f"instance), but got M={M}; group modalities or use a sampling estimate."
        )
    V.check_int("max_rows", max_rows, 1)
    if B == 0:  # nothing to explain (e.g. a batch whose targets were all ignored)
        return u.new_zeros(0, M, dtype=_compute_dtype(u, weight))
    with torch.no_grad():
        if target_class is None:
            cls = _decision_logits(u, weight, mask, spec, evidence_weight).argmax(dim=-1)
        else:
            if isinstance(target_class, bool) or not isinstance(target_class, (int, float, Tensor)):
                raise TypeError(
                    f"Expected argument `target_class` to be an int or a tensor of class indices, but got "
                    f"{type(target_class).__name__} {target_class!r}."
                )
            cls = torch.as_tensor(target_class, device=u.device)
            if cls.is_floating_point() or cls.dtype == torch.bool:
                raise TypeError(f"Expected argument `target_class` to be integer class indices, but got {cls.dtype}.")
            if cls.dim() == 0:
                cls = cls.expand(B)
            if cls.shape != (B,):
                raise ValueError(
                    f"Expected argument `target_class` to be an int or have shape (B,) = ({B},), "
                    f"but got shape {tuple(cls.shape)}."
                )
            if B and (int(cls.min()) < 0 or int(cls.max()) >= C):
                raise ValueError(f"Expected argument `target_class` to lie in [0, {C - 1}], but got {cls.tolist()}.")
        cls = cls.long()
        values = _coalition_probs(u, weight, mask, spec, cls, max_rows, logit_scale, evidence_weight)  # (2^M, B)
        _, coef = shapley_coefficients(M, dtype=values.dtype)
        phi = (coef.to(values.device) @ values).t()
        if mask is not None:  # exactly zero, not a rounding residue of v(S + m) - v(S)
            phi = phi.masked_fill(~mask, 0.0)
        return phi
