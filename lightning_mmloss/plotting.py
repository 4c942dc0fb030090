"""Figures of the subgroups and of modality agreement (matplotlib, no pyplot state)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from matplotlib.figure import Figure
from torch import Tensor


def subgroup_profile_figure(
    profile: Tensor,
    occupancy: Tensor,
    modality_names: Sequence[str],
    class_names: Sequence[str] | None = None,
    max_rows: int = 40,
) -> Figure:
    """Heatmap: occupied subgroups (rows, labelled ``class/proxy (n)``) x modalities.

    Each cell is the mean score that modality gives the subgroup's own class over the
    subgroup's members (``SubgroupStatistics`` ``profile``): a bright cell means that modality is
    confident of the class for the instances of that subgroup, a dark one that the subgroup
    does without it. Shows the ``max_rows`` most occupied subgroups, ordered by class.

    Args:
        profile: ``(C, K, M)`` mean own-class score per subgroup and modality (NaN when empty).
        occupancy: ``(C, K)`` instance counts.
        modality_names: the ``M`` column labels.
        class_names: optional ``C`` class labels.
        max_rows: most rows drawn.
    """
    C, K, M = profile.shape
    counts = occupancy.flatten().double().cpu()
    order = counts.argsort(descending=True)[: min(max_rows, int((counts > 0).sum()))]
    order = order.sort().values  # class, then proxy order
    values = profile.reshape(C * K, M)[order].double().cpu().nan_to_num(0.0)
    names = list(class_names) if class_names is not None else [str(c) for c in range(C)]
    labels = [f"{names[int(j) // K]}/{int(j) % K} ({int(counts[j])})" for j in order]
    rows = max(len(labels), 1)
    fig = Figure(figsize=(1.6 + 1.1 * M, 1.2 + 0.32 * rows), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(
        values.numpy() if rows else torch.zeros(1, M).numpy(), vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto"
    )
    ax.set_xticks(range(M), labels=list(modality_names))
    ax.set_yticks(range(len(labels)), labels=labels)
    ax.set_ylabel("subgroup: class/proxy (instances)")
    ax.set_title("Mean own-class score per modality")
    for i in range(len(labels)):
        for m in range(M):
            v = float(values[i, m])
            ax.text(m, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v < 0.6 else "black")
    fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


def agreement_matrix_figure(pairwise: Tensor, modality_names: Sequence[str]) -> Figure:
    """Heatmap of the ``(M, M)`` pairwise agreement matrix (share of equal predictions)."""
    M = pairwise.shape[0]
    values = pairwise.double().cpu()
    fig = Figure(figsize=(1.8 + 0.9 * M, 1.4 + 0.8 * M), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(values.nan_to_num(0.0).numpy(), vmin=0.0, vmax=1.0, cmap="magma")
    ax.set_xticks(range(M), labels=list(modality_names))
    ax.set_yticks(range(M), labels=list(modality_names))
    ax.set_title("Pairwise agreement of the heads")
    for i in range(M):
        for j in range(M):
            v = float(values[i, j])
            txt = "n/a" if math.isnan(v) else f"{v:.2f}"
            ax.text(j, i, txt, ha="center", va="center", fontsize=8, color="white" if v < 0.6 else "black")
    fig.colorbar(im, ax=ax, shrink=0.8)
    return fig
