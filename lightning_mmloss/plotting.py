"""Figures of the subgroups and of modality agreement (matplotlib, no pyplot state)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from matplotlib.figure import Figure
from torch import Tensor

_DPI = 80  # TensorBoard shows images at their pixel size; small figures render faster


def subgroup_profile_figure(
    profile: Tensor,
    occupancy: Tensor,
    modality_names: Sequence[str],
    class_names: Sequence[str] | None = None,
    max_rows: int = 24,
    annotate: bool = False,
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
        annotate: write each cell's value in it (slower to render).

    Example::

        >>> import torch
        >>> from lightning_mmloss.plotting import subgroup_profile_figure
        >>> fig = subgroup_profile_figure(torch.rand(2, 3, 2), torch.tensor([[4.0, 0, 1], [2, 2, 0]]), ["a", "b"])
        >>> [t.get_text() for t in fig.axes[0].get_yticklabels()]
        ['0/0 (4)', '0/2 (1)', '1/0 (2)', '1/1 (2)']
    """
    C, K, M = profile.shape
    counts = occupancy.flatten().double().cpu()
    order = counts.argsort(descending=True)[: min(max_rows, int((counts > 0).sum()))]
    order = order.sort().values  # class, then proxy order
    values = profile.reshape(C * K, M)[order].double().cpu().nan_to_num(0.0)
    names = list(class_names) if class_names is not None else [str(c) for c in range(C)]
    labels = [f"{names[int(j) // K]}/{int(j) % K} ({int(counts[j])})" for j in order]
    rows = max(len(labels), 1)
    # fixed margins instead of a layout engine: constrained layout doubled the rendering time
    width, height = 2.6 + 0.9 * M, 1.0 + 0.28 * rows
    fig = Figure(figsize=(width, height), dpi=_DPI)
    ax = fig.add_axes((2.0 / width, 0.35 / height, (0.9 * M) / width, (height - 0.75) / height))
    ax.imshow(values.numpy() if rows else torch.zeros(1, M).numpy(), vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    ax.set_xticks(range(M), labels=list(modality_names))
    ax.set_yticks(range(len(labels)), labels=labels)
    ax.set_title("subgroup class/proxy (n): own-class score", fontsize=8)
    if annotate:  # numbers in the cells: readable, but text is most of the rendering time
        for i in range(len(labels)):
            for m in range(M):
                v = float(values[i, m])
                ax.text(m, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v < 0.6 else "black")
    ax.tick_params(labelsize=7)
    return fig


def agreement_matrix_figure(pairwise: Tensor, modality_names: Sequence[str]) -> Figure:
    """Heatmap of the ``(M, M)`` pairwise agreement matrix (share of equal predictions).

    Example::

        >>> import torch
        >>> from lightning_mmloss.plotting import agreement_matrix_figure
        >>> fig = agreement_matrix_figure(torch.tensor([[1.0, 0.4], [0.4, 1.0]]), ["audio", "video"])
        >>> fig.savefig("/dev/null", format="png")
    """
    M = pairwise.shape[0]
    values = pairwise.double().cpu()
    side = 0.7 * M
    width, height = side + 1.2, side + 0.9
    fig = Figure(figsize=(width, height), dpi=_DPI)
    ax = fig.add_axes((1.0 / width, 0.4 / height, side / width, side / height))
    ax.imshow(values.nan_to_num(0.0).numpy(), vmin=0.0, vmax=1.0, cmap="magma")
    ax.set_xticks(range(M), labels=list(modality_names))
    ax.set_yticks(range(M), labels=list(modality_names))
    ax.set_title("pairwise agreement", fontsize=8)
    ax.tick_params(labelsize=7)
    for i in range(M):
        for j in range(M):
            v = float(values[i, j])
            txt = "n/a" if math.isnan(v) else f"{v:.2f}"
            ax.text(j, i, txt, ha="center", va="center", fontsize=8, color="white" if v < 0.6 else "black")
    return fig
