"""Figures of the subgroups and of modality agreement (matplotlib, no pyplot state)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

_DPI = 100  # TensorBoard shows images at their pixel size: legible at 9-10 pt
_FONT = 9


def subgroup_profile_figure(
    profile: Tensor,
    occupancy: Tensor,
    modality_names: Sequence[str],
    class_names: Sequence[str] | None = None,
    max_rows: int = 24,
    annotate: bool | None = None,
) -> Figure:
    """Heatmap: occupied subgroups (rows, labelled ``class 3, proxy 2: 41 instances``) x modalities.

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
        annotate: write each cell's value in it; ``None`` (default): where they fit, up to 96
            cells (text is most of the rendering time).

    Example::

        >>> import torch
        >>> from lightning_mmloss.plotting import subgroup_profile_figure
        >>> fig = subgroup_profile_figure(torch.rand(2, 3, 2), torch.tensor([[4.0, 0, 1], [2, 2, 0]]), ["a", "b"])
        >>> [t.get_text() for t in fig.axes[0].get_yticklabels()][:2]
        ['class 0, proxy 0: 4 instances', 'class 0, proxy 2: 1 instance']
    """
    C, K, M = profile.shape
    counts = occupancy.flatten().double().cpu()
    occupied = int((counts > 0).sum())
    order = counts.argsort(descending=True)[: min(max_rows, occupied)]
    order = order.sort().values  # class, then proxy order
    values = profile.reshape(C * K, M)[order].double().cpu().nan_to_num(0.0)
    names = list(class_names) if class_names is not None else [str(c) for c in range(C)]
    if len(names) != C:
        raise ValueError(f"Expected argument `class_names` to hold C={C} names, but got {len(names)}.")
    labels = []
    for j in order.tolist():
        n = int(counts[j])
        labels.append(f"class {names[j // K]}, proxy {j % K}: {n} instance{'' if n == 1 else 's'}")
    if annotate is None:
        annotate = len(labels) * M <= 96
    rows = max(len(labels), 1)
    # fixed margins instead of a layout engine: constrained layout doubled the rendering time
    label_w = 0.3 + 0.068 * max((len(t) for t in labels), default=4)
    width, height = label_w + 1.0 * M + 1.1, 1.2 + 0.3 * rows
    fig = Figure(figsize=(width, height), dpi=_DPI)
    ax = fig.add_axes((label_w / width, 0.45 / height, (1.0 * M) / width, (height - 0.95) / height))
    image = ax.imshow(
        values.numpy() if len(labels) else torch.zeros(1, M).numpy(), vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto"
    )
    ax.set_xticks(range(M), labels=list(modality_names))
    ax.set_yticks(range(len(labels)), labels=labels)
    shown = f"{len(labels)} of {occupied} occupied subgroups" if len(labels) < occupied else f"{occupied} subgroups"
    ax.set_title(f"own-class score per subgroup\n{shown}", fontsize=_FONT)
    if annotate:  # numbers in the cells: readable, but text is most of the rendering time
        for i in range(len(labels)):
            for m in range(M):
                v = float(values[i, m])
                ax.text(
                    m,
                    i,
                    f"{v:.2f}",
                    ha="center",
                    va="center",
                    fontsize=_FONT - 1,
                    color="white" if v < 0.6 else "black",
                )
    ax.tick_params(labelsize=_FONT)
    cax = fig.add_axes(((label_w + 1.0 * M + 0.15) / width, 0.45 / height, 0.18 / width, (height - 0.95) / height))
    bar = fig.colorbar(image, cax=cax)
    bar.set_label("mean score for the subgroup's class", fontsize=_FONT - 1)
    bar.ax.tick_params(labelsize=_FONT - 1)
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
    side = 0.8 * M
    width, height = side + 2.3, side + 1.1
    fig = Figure(figsize=(width, height), dpi=_DPI)
    ax = fig.add_axes((1.0 / width, 0.5 / height, side / width, side / height))
    image = ax.imshow(values.nan_to_num(0.0).numpy(), vmin=0.0, vmax=1.0, cmap="magma")
    ax.set_xticks(range(M), labels=list(modality_names))
    ax.set_yticks(range(M), labels=list(modality_names))
    ax.set_title("pairwise agreement of the heads", fontsize=_FONT)
    ax.tick_params(labelsize=_FONT)
    for i in range(M):
        for j in range(M):
            v = float(values[i, j])
            txt = "n/a" if math.isnan(v) else f"{v:.2f}"
            ax.text(j, i, txt, ha="center", va="center", fontsize=_FONT, color="white" if v < 0.6 else "black")
    cax = fig.add_axes(((1.0 + side + 0.15) / width, 0.5 / height, 0.18 / width, side / height))
    bar = fig.colorbar(image, cax=cax)
    bar.set_label("share of equal predictions", fontsize=_FONT - 1)
    bar.ax.tick_params(labelsize=_FONT - 1)
    return fig


def figure_to_array(fig: Figure) -> np.ndarray:
    """The figure rendered to an ``(H, W, 3)`` uint8 RGB array (what image loggers take).

    Example::

        >>> import torch
        >>> from lightning_mmloss.plotting import agreement_matrix_figure, figure_to_array
        >>> figure_to_array(agreement_matrix_figure(torch.eye(2), ["a", "b"])).shape[2]
        3
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def slice_reliability_figure(
    acc: Tensor, ece: Tensor, head_names: Sequence[str], value_names: Sequence[str], slice_name: str
) -> Figure:
    """Two heatmaps side by side, heads (rows) x slice values (columns): accuracy and ECE.

    Args:
        acc: ``(H, S)`` accuracy of each head (modalities and ``fused``) on each slice value.
        ece: ``(H, S)`` expected calibration error, same layout.
        head_names: the ``H`` row labels.
        value_names: the ``S`` column labels.
        slice_name: the slice, for the title.

    Example::

        >>> import torch
        >>> from lightning_mmloss.plotting import slice_reliability_figure
        >>> heads, values = ["a", "b", "fused"], ["x", "y"]
        >>> fig = slice_reliability_figure(torch.rand(3, 2), torch.rand(3, 2) / 5, heads, values, "site")
        >>> [ax.get_title() for ax in fig.axes[:2]]
        ['accuracy by site', 'ECE by site']
    """
    H, S = acc.shape
    label_w = 0.4 + 0.075 * max(len(h) for h in head_names)
    cell_w = max(0.55, 0.075 * max(len(v) for v in value_names) + 0.15)
    panel = cell_w * S
    width, height = label_w + 2 * panel + 0.9, 1.3 + 0.35 * H
    fig = Figure(figsize=(width, height), dpi=_DPI)
    bottom = (0.25 + 0.06 * max(len(v) for v in value_names)) / height
    for k, (values, title, cmap, vmax) in enumerate(
        ((acc, "accuracy", "viridis", 1.0), (ece, "ECE", "magma_r", max(0.2, float(ece.nan_to_num(0).max()))))
    ):
        left = (label_w + k * (panel + 0.5)) / width
        ax = fig.add_axes((left, bottom, panel / width, 1 - bottom - 0.55 / height))
        v = values.double().cpu()
        ax.imshow(v.nan_to_num(0.0).numpy(), vmin=0.0, vmax=vmax, cmap=cmap, aspect="auto")
        ax.set_xticks(range(S), labels=list(value_names), rotation=45 if cell_w > 0.6 else 0, ha="right")
        ax.set_yticks(range(H), labels=list(head_names) if k == 0 else [])
        ax.set_title(f"{title} by {slice_name}", fontsize=_FONT)
        ax.tick_params(labelsize=_FONT - 1)
        for i in range(H):
            for j in range(S):
                x = float(v[i, j])
                dark = (x / vmax < 0.6) if cmap == "viridis" else (x / vmax > 0.4)
                ax.text(j, i, "n/a" if math.isnan(x) else f"{x:.2f}", ha="center", va="center",
                        fontsize=_FONT - 2, color="white" if dark else "black")  # fmt: skip
    return fig
