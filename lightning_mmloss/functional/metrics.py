"""Per-modality reliability, agreement and subgroup statistics as plain functions.

Each metric is split torchmetrics-style into ``_x_update`` (batch -> additive state tensors,
so that summing states over batches or processes is exact) and ``_x_compute`` (state ->
values); the public ``x()`` runs both on one batch. The ``Metric`` classes in
:mod:`lightning_mmloss.metrics` hold the states and call these.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_mmloss import _validation as V

AGREEMENT_RATES = ("all_agree", "reinforce", "conflict", "all_wrong", "rescued", "harmed")
RELIABILITY_METRICS = ("acc", "macro_f1", "ece", "brier", "nll", "purity_gap")
_NLL_FLOOR = 1e-12  # probabilities below this count as this, so one confident miss is finite
_STATE_DTYPE = torch.float64  # sums over many batches and processes: keep them exact enough


def _count(index: Tensor, size: int, weights: Tensor | None = None) -> Tensor:
    """``bincount`` that also runs under ``torch.use_deterministic_algorithms(True)`` on CUDA.

    (``Trainer(deterministic=True)`` turns that on; CUDA's ``bincount`` then raises, while
    ``index_add_`` has a deterministic implementation.)
    """
    if weights is None:
        out = torch.zeros(size, dtype=torch.long, device=index.device)
        return out.index_add_(0, index, torch.ones_like(index))
    out = torch.zeros(size, dtype=_STATE_DTYPE, device=index.device)
    return out.index_add_(0, index, weights.to(_STATE_DTYPE))


def _scored(
    target: Tensor, num_classes: int, ignore_index: int | None, validate_args: bool, **tensors: Tensor | None
) -> tuple[Tensor, dict[str, Tensor | None]]:
    """The instances that count: ``target != ignore_index``; with ``validate_args`` targets in ``[0, C)``.

    Targets come back as int64 (int32 and uint8 class indices are accepted). The range check
    costs one host sync; without it an out-of-range target is the caller's promise not to pass.
    """
    if ignore_index is not None:
        keep = target != ignore_index
        if not bool(keep.all()):
            target = target[keep]
            tensors = {k: None if v is None else v[keep] for k, v in tensors.items()}
    target = target.long()
    if validate_args and target.numel():
        lo, hi = torch.stack(torch.aminmax(target)).tolist()  # one host sync
        if lo < 0 or hi >= num_classes:
            also = "" if ignore_index is None else f" (or ignore_index={ignore_index})"
            raise ValueError(
                f"Expected argument `target` to hold class indices in [0, {num_classes - 1}]{also}, but got values "
                f"from {lo} to {hi}."
            )
    return target, tensors


def _scored_probs(
    unimodal_probs: Tensor,
    fused_probs: Tensor,
    target: Tensor,
    modality_mask: Tensor | None,
    ignore_index: int | None,
    validate_args: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Shapes checked, then :func:`_scored` on the inputs of the reliability and agreement metrics."""
    C = V.check_metric_inputs(unimodal_probs, fused_probs, target, modality_mask)[2]
    target, t = _scored(target, C, ignore_index, validate_args, u=unimodal_probs, f=fused_probs, m=modality_mask)
    return t["u"], t["f"], target, t["m"]  # type: ignore[return-value]


def head_names(modalities: int | Sequence[str]) -> list[str]:
    """Names of the heads a metric reports on: the modalities, then ``"fused"``."""
    names = [str(i) for i in range(modalities)] if isinstance(modalities, int) else list(modalities)
    if "fused" in names:
        raise ValueError(
            f"Expected no modality named 'fused' (the name of the fused output's metrics), but got {names}; rename it."
        )
    return [*names, "fused"]


# --- reliability -----------------------------------------------------------------------------
def _reliability_update(
    unimodal_probs: Tensor,
    fused_probs: Tensor,
    target: Tensor,
    modality_mask: Tensor | None,
    n_bins: int,
    ignore_index: int | None = None,
    validate_args: bool = True,
) -> dict[str, Tensor]:
    unimodal_probs, fused_probs, target, modality_mask = _scored_probs(
        unimodal_probs, fused_probs, target, modality_mask, ignore_index, validate_args
    )
    B, M, C = unimodal_probs.shape
    H = M + 1  # every modality, then the fused output
    probs = torch.cat([unimodal_probs, fused_probs[:, None, :]], dim=1).to(_STATE_DTYPE)
    present = torch.ones(B, H, dtype=torch.bool, device=probs.device)
    if modality_mask is not None:
        present[:, :M] = modality_mask
    conf, pred = probs.max(dim=-1)  # (B, H)
    correct = pred == target[:, None]
    heads = torch.arange(H, device=probs.device)[None, :].expand(B, H)
    sel_heads, sel_target, sel_pred = heads[present], target[:, None].expand(B, H)[present], pred[present]
    confusion = _count(sel_heads * C * C + sel_target * C + sel_pred, H * C * C).view(H, C, C)
    # ECE bins (b/n, (b+1)/n]; a confidence of exactly 0 cannot occur for probabilities.
    bins = (conf * n_bins).ceil().long().clamp_(1, n_bins) - 1
    bin_idx = (heads * n_bins + bins)[present]
    onehot = F.one_hot(target, C).to(_STATE_DTYPE)
    brier = ((probs - onehot[:, None, :]) ** 2).sum(dim=-1)
    nll = -probs.gather(2, target.view(B, 1, 1).expand(B, H, 1)).squeeze(2).clamp_min(_NLL_FLOOR).log()
    w = present.to(_STATE_DTYPE)
    return {
        "count": present.sum(dim=0),
        "correct": (correct & present).sum(dim=0),
        "confusion": confusion,
        "bin_count": _count(bin_idx, H * n_bins).view(H, n_bins),
        "bin_conf": _count(bin_idx, H * n_bins, conf[present]).view(H, n_bins),
        "bin_correct": _count(bin_idx, H * n_bins, correct[present]).view(H, n_bins),
        "brier": (brier * w).sum(dim=0),
        "nll": (nll * w).sum(dim=0),
    }


def _macro_f1(confusion: Tensor) -> Tensor:
    """Macro-F1 per head from ``(H, C, C)`` confusion counts (rows: target, columns: prediction).

    Classes that neither occur nor are predicted (``2tp + fp + fn = 0``) are left out of the mean.
    """
    conf = confusion.to(_STATE_DTYPE)
    tp = conf.diagonal(dim1=1, dim2=2)
    denom = conf.sum(dim=1) + conf.sum(dim=2)  # (tp + fp) + (tp + fn)
    f1 = torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.zeros_like(tp))
    seen = (denom > 0).sum(dim=1)
    return torch.where(seen > 0, f1.sum(dim=1) / seen.clamp_min(1), torch.full_like(seen, math.nan, dtype=_STATE_DTYPE))


def _reliability_compute(state: dict[str, Tensor], names: Sequence[str]) -> dict[str, Tensor]:
    count = state["count"].to(_STATE_DTYPE)
    n = count.where(count > 0, torch.full_like(count, math.nan))  # an always-absent head reports NaN
    values = {
        "acc": state["correct"] / n,
        "macro_f1": _macro_f1(state["confusion"]),
        "ece": (state["bin_correct"] - state["bin_conf"]).abs().sum(dim=1) / n,
        "brier": state["brier"] / n,
        "nll": state["nll"] / n,
        # accuracy the head would gain if each predicted label were renamed to its most frequent
        # true class: ~0 for an honest head, large for one whose labels have inverted (flipped)
        "purity_gap": (
            state["confusion"].amax(dim=1).sum(dim=1) - state["confusion"].diagonal(dim1=1, dim2=2).sum(dim=1)
        )
        / n,
    }
    return {f"{name}/{metric}": values[metric][h] for h, name in enumerate(names) for metric in RELIABILITY_METRICS}


def modality_reliability(
    unimodal_probs: Tensor,
    fused_probs: Tensor,
    target: Tensor,
    modality_mask: Tensor | None = None,
    modalities: int | Sequence[str] | None = None,
    n_bins: int = 15,
    ignore_index: int | None = None,
    validate_args: bool = True,
) -> dict[str, Tensor]:
    r"""Accuracy, macro-F1, expected calibration error, Brier score and NLL of every head.

    For each modality's scores ``p_m`` (only over instances where the modality is present) and
    for the fused probabilities:

    .. math::
        \mathrm{ECE} = \sum_b \frac{n_b}{N}\,|\mathrm{acc}_b - \mathrm{conf}_b|,\quad
        \mathrm{Brier} = \frac1N \sum_i \sum_c (p_{ic} - [y_i = c])^2,\quad
        \mathrm{NLL} = -\frac1N \sum_i \log p_{i y_i}

    with ``n_bins`` equal-width confidence bins ``(b/n, (b+1)/n]``.

    Args:
        unimodal_probs: ``(B, M, C)`` per-modality scores (e.g. ``FusionOutput.unimodal_probs``).
        fused_probs: ``(B, C)`` fused probabilities.
        target: ``(B,)`` class indices.
        modality_mask: optional bool ``(B, M)``, ``True`` where the modality is present.
        modalities: modality names (or their number) for the keys; default ``"0"``, ``"1"``, ...
        n_bins: number of calibration bins.
        ignore_index: instances with this target are left out.
        validate_args: refuse targets outside ``[0, C)`` (one host sync).

    Returns:
        ``{"<head>/<metric>": value}`` for heads ``<modality>...`` and ``fused`` and metrics
        ``acc``, ``macro_f1``, ``ece``, ``brier``, ``nll``, ``purity_gap`` (float64 scalars).

    Example::

        >>> import torch
        >>> from lightning_mmloss.functional import modality_reliability
        >>> p = torch.tensor([[[0.9, 0.1], [0.4, 0.6]], [[0.2, 0.8], [0.3, 0.7]]])  # B=2, M=2, C=2
        >>> fused = torch.tensor([[0.8, 0.2], [0.1, 0.9]])
        >>> out = modality_reliability(p, fused, torch.tensor([0, 1]), modalities=["audio", "video"])
        >>> float(out["audio/acc"]), float(out["video/acc"]), float(out["fused/acc"])
        (1.0, 0.5, 1.0)
    """
    names = head_names(modalities if modalities is not None else unimodal_probs.shape[1])
    state = _reliability_update(unimodal_probs, fused_probs, target, modality_mask, n_bins, ignore_index, validate_args)
    return _reliability_compute(state, names)


# --- agreement -------------------------------------------------------------------------------
def _agreement_update(
    unimodal_probs: Tensor,
    fused_probs: Tensor,
    target: Tensor,
    modality_mask: Tensor | None,
    ignore_index: int | None = None,
    validate_args: bool = True,
) -> dict[str, Tensor]:
    unimodal_probs, fused_probs, target, modality_mask = _scored_probs(
        unimodal_probs, fused_probs, target, modality_mask, ignore_index, validate_args
    )
    B, M, C = unimodal_probs.shape
    present = modality_mask if modality_mask is not None else torch.ones(B, M, dtype=torch.bool, device=target.device)
    pred = unimodal_probs.argmax(dim=-1)  # (B, M)
    right = (pred == target[:, None]) & present
    n_present = present.sum(dim=1)
    n_right = right.sum(dim=1)
    n_wrong = n_present - n_right
    valid = n_present > 0  # instances with no modality at all are not counted
    agree = pred.masked_fill(~present, -1).amax(dim=1) == pred.masked_fill(~present, C).amin(dim=1)
    fused_right = fused_probs.argmax(dim=-1) == target
    rates = torch.stack(
        [
            agree,
            n_right == n_present,
            ~agree & (n_right > 0),
            n_right == 0,
            fused_right & (2 * n_wrong > n_present),
            ~fused_right & (2 * n_right > n_present),
        ]
    )
    both = present[:, :, None] & present[:, None, :]
    same = (pred[:, :, None] == pred[:, None, :]) & both
    return {
        "counts": (rates & valid).sum(dim=1),
        "total": valid.sum(),
        "pair_same": same.sum(dim=0),
        "pair_total": both.sum(dim=0),
    }


def _agreement_compute(state: dict[str, Tensor]) -> dict[str, Tensor]:
    total = state["total"].to(_STATE_DTYPE)
    rates = state["counts"].to(_STATE_DTYPE) / total
    pair_total = state["pair_total"].to(_STATE_DTYPE)
    pairwise = state["pair_same"].to(_STATE_DTYPE) / pair_total.where(
        pair_total > 0, torch.full_like(pair_total, math.nan)
    )
    return {**{name: rates[i] for i, name in enumerate(AGREEMENT_RATES)}, "pairwise": pairwise}


def modality_agreement(
    unimodal_probs: Tensor,
    fused_probs: Tensor,
    target: Tensor,
    modality_mask: Tensor | None = None,
    ignore_index: int | None = None,
    validate_args: bool = True,
) -> dict[str, Tensor]:
    """How the unimodal heads agree with each other and with the truth, per instance, as rates.

    Over the instances with at least one present modality, with ``n`` present heads of which
    ``r`` predict the target:

    - ``all_agree``: every present head predicts the same class;
    - ``reinforce``: every present head is right (``r = n``);
    - ``conflict``: the heads disagree and at least one is right;
    - ``all_wrong``: no head is right (``r = 0``);
    - ``rescued``: the fused prediction is right while most heads are wrong (``n - r > n/2``);
    - ``harmed``: the fused prediction is wrong while most heads are right (``r > n/2``);
    - ``pairwise``: ``(M, M)`` share of instances (both present) where heads ``i`` and ``j``
      predict the same class.

    Example::

        >>> import torch
        >>> from lightning_mmloss.functional import modality_agreement
        >>> p = torch.tensor([[[0.9, 0.1], [0.8, 0.2]], [[0.9, 0.1], [0.3, 0.7]]])
        >>> out = modality_agreement(p, torch.tensor([[0.9, 0.1], [0.2, 0.8]]), torch.tensor([0, 1]))
        >>> float(out["all_agree"]), float(out["conflict"]), float(out["rescued"])
        (0.5, 0.5, 0.0)
        >>> out["pairwise"]
        tensor([[1.0000, 0.5000],
                [0.5000, 1.0000]], dtype=torch.float64)
    """
    return _agreement_compute(
        _agreement_update(unimodal_probs, fused_probs, target, modality_mask, ignore_index, validate_args)
    )


# --- subgroups -------------------------------------------------------------------------------
def _subgroup_update(
    subgroup: Tensor,
    fused_preds: Tensor,
    target: Tensor,
    unimodal_probs: Tensor,
    modality_weights: Tensor,
    num_classes: int,
    proxies_per_class: int,
    validate_args: bool = True,
    ignore_index: int | None = None,
) -> dict[str, Tensor]:
    C, K = num_classes, proxies_per_class
    if unimodal_probs.dim() != 3 or unimodal_probs.shape[2] != C:
        raise ValueError(
            f"Expected argument `unimodal_probs` to have shape (B, M, {C}), but got {V._shape(unimodal_probs)}."
        )
    B, M, _ = unimodal_probs.shape
    for name, t in (("subgroup", subgroup), ("fused_preds", fused_preds), ("target", target)):
        if t.shape != (B,):
            raise ValueError(f"Expected argument `{name}` to have shape ({B},), but got {V._shape(t)}.")
        if t.is_floating_point() or t.dtype == torch.bool:
            raise TypeError(f"Expected argument `{name}` to hold integer indices, but got dtype {t.dtype}.")
    if modality_weights.shape != (B, M):
        raise ValueError(
            f"Expected argument `modality_weights` to have shape ({B}, {M}), but got {V._shape(modality_weights)}."
        )
    target, t = _scored(
        target, C, ignore_index, validate_args, s=subgroup, f=fused_preds, u=unimodal_probs, w=modality_weights
    )
    subgroup, fused_preds, unimodal_probs, modality_weights = t["s"], t["f"], t["u"], t["w"]  # type: ignore[assignment]
    subgroup, fused_preds, B = subgroup.long(), fused_preds.long(), target.shape[0]
    if validate_args and B:  # one host sync
        lims = torch.stack([*torch.aminmax(subgroup), *torch.aminmax(fused_preds)]).tolist()
        if lims[0] < 0 or lims[1] >= C * K:
            raise ValueError(
                f"Expected argument `subgroup` to lie in [0, {C * K - 1}] (C*K - 1), but got values from {lims[0]} "
                f"to {lims[1]}."
            )
        if lims[2] < 0 or lims[3] >= C:
            raise ValueError(
                f"Expected argument `fused_preds` to hold class indices in [0, {C - 1}], but got values from "
                f"{lims[2]} to {lims[3]}."
            )
    correct = (fused_preds == target).to(_STATE_DTYPE)
    cls = torch.div(subgroup, K, rounding_mode="floor")
    own = unimodal_probs.gather(2, cls.view(B, 1, 1).expand(B, M, 1)).squeeze(2).to(_STATE_DTYPE)
    dev = unimodal_probs.device
    return {
        "count": _count(subgroup, C * K),
        "correct": _count(subgroup, C * K, correct),
        "profile": torch.zeros(C * K, M, dtype=_STATE_DTYPE, device=dev).index_add_(0, subgroup, own),
        "weight_sum": torch.zeros(C, M, dtype=_STATE_DTYPE, device=dev).index_add_(
            0, fused_preds, modality_weights.to(_STATE_DTYPE)
        ),
        "class_count": _count(fused_preds, C),
    }


def _entropy(counts: Tensor) -> Tensor:
    """Normalised entropy (in ``[0, 1]``) of usage counts along the last axis; NaN when unused."""
    total = counts.sum(dim=-1, keepdim=True)
    p = counts / total.clamp_min(1)
    h = -(p * p.clamp_min(1e-300).log()).sum(dim=-1)
    n = counts.shape[-1]
    norm = h / math.log(n) if n > 1 else torch.zeros_like(h)
    return norm.where(total.squeeze(-1) > 0, torch.full_like(h, math.nan))


def _subgroup_compute(state: dict[str, Tensor], num_classes: int, proxies_per_class: int) -> dict[str, Tensor]:
    C, K = num_classes, proxies_per_class
    count = state["count"].to(_STATE_DTYPE)
    n = count.where(count > 0, torch.full_like(count, math.nan))
    class_count = state["class_count"].to(_STATE_DTYPE)
    occupancy = count.view(C, K)
    return {
        "occupancy": occupancy,
        "accuracy": (state["correct"] / n).view(C, K),
        "active": (count > 0).sum(),
        "active_per_class": (occupancy > 0).sum(dim=1),
        "usage_entropy": _entropy(count),
        "usage_entropy_per_class": _entropy(occupancy),
        "profile": (state["profile"] / n[:, None]).view(C, K, -1),
        "class_modality_weights": state["weight_sum"]
        / class_count.where(class_count > 0, torch.full_like(class_count, math.nan))[:, None],
    }


def subgroup_statistics(
    subgroup: Tensor,
    fused_preds: Tensor,
    target: Tensor,
    unimodal_probs: Tensor,
    modality_weights: Tensor,
    num_classes: int,
    proxies_per_class: int,
    ignore_index: int | None = None,
    validate_args: bool = True,
) -> dict[str, Tensor]:
    """Occupancy and behaviour of the learned subgroups (proxies).

    Instances whose target is ``ignore_index`` are left out; ``validate_args`` refuses subgroup
    and class indices out of range (one host sync).

    Returns:
        A dict with ``occupancy`` ``(C, K)`` (instances whose most similar proxy is ``(c, k)``);
        ``accuracy`` ``(C, K)`` (fused accuracy of those instances, NaN when empty); ``active``
        (subgroups with at least one instance) and ``active_per_class`` ``(C,)``;
        ``usage_entropy`` (entropy of the occupancy over all ``C*K`` subgroups divided by
        ``log(C*K)``, 1 = uniform use) and ``usage_entropy_per_class`` ``(C,)`` (likewise over
        ``K``); ``profile`` ``(C, K, M)`` (mean score each modality gives the subgroup's class
        over its members: which modalities a subgroup trusts); ``class_modality_weights``
        ``(C, M)`` (mean modality weights of the instances predicted as each class).

    Example::

        >>> import torch
        >>> from lightning_mmloss.functional import subgroup_statistics
        >>> stats = subgroup_statistics(
        ...     subgroup=torch.tensor([0, 0, 3]), fused_preds=torch.tensor([0, 1, 1]), target=torch.tensor([0, 0, 1]),
        ...     unimodal_probs=torch.tensor([[[0.9, 0.1]], [[0.6, 0.4]], [[0.3, 0.7]]]),
        ...     modality_weights=torch.ones(3, 1), num_classes=2, proxies_per_class=2)
        >>> stats["occupancy"]
        tensor([[2., 0.],
                [0., 1.]], dtype=torch.float64)
        >>> stats["profile"][:, :, 0]
        tensor([[0.7500,    nan],
                [   nan, 0.7000]], dtype=torch.float64)
    """
    state = _subgroup_update(
        subgroup,
        fused_preds,
        target,
        unimodal_probs,
        modality_weights,
        num_classes,
        proxies_per_class,
        validate_args,
        ignore_index,
    )
    return _subgroup_compute(state, num_classes, proxies_per_class)
