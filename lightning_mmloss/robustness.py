"""How a trained model degrades when a modality fails: dropped, or degraded at increasing levels.

The field judges multimodal models this way (MultiBench's relative and effective robustness;
accuracy as the noise on one modality grows). :func:`robustness_report` measures it for any
model on :class:`~lightning_mmloss.MultiModalLossMixin` over a dataloader:

- **dropped**: each modality, and each pair, masked out at test time. The heads run once per
  batch and the fusion is re-applied under the mask
  (:meth:`~lightning_mmloss.MultiModalLossMixin.fuse_unimodal`), for every fusion;
- **degraded**: a corruption ``callable(batch, modality, level) -> batch`` per modality and level
  (default :func:`gaussian_noise`), the heads run on the corrupted batch.

Per condition: fused accuracy, ECE, and (``fusion="mm"``) the share of instances whose
top-weighted modality is the dropped or degraded one. Per modality: the area under its
accuracy-vs-level curve, normalised by the level range (*relative robustness*), and, against a
late-fusion report of the same data, the difference (*effective robustness*).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations, pairwise
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchmetrics import MeanMetric, Metric, SumMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassCalibrationError

from lightning_mmloss import _validation as V

#: Noise levels of the default sweep, in units of each input's own standard deviation.
DEFAULT_LEVELS = (0.0, 0.5, 1.0, 2.0, 4.0)

Corruption = Callable[[Any, str, float], Any]
_CSV_KEYS = ("condition", "modalities", "level", "acc", "ece", "top_weight_share", "n")


def check_levels(levels: Sequence[float]) -> list[float]:
    """Degradation levels as floats: finite, ``>= 0``, ascending and starting at 0 (the clean input)."""
    out = [V.check_nonnegative("levels", lv) for lv in levels]
    if out and (out[0] != 0 or any(b <= a for a, b in pairwise(out))):
        raise ValueError(f"Expected argument `levels` to be ascending and start at 0 (the clean input), but got {out}.")
    return out


def gaussian_noise(batch: Any, modality: str, level: float, generator: torch.Generator | None = None) -> Any:
    """The default corruption: ``x + level * std(x) * N(0, 1)`` on ``batch[modality]``.

    ``std(x)`` is the standard deviation of that modality's input over the batch, so ``level`` is a
    noise-to-signal ratio whatever the input's scale; level 0 returns the batch unchanged. Needs a
    dict batch whose key is the modality name (pass your own ``corruption`` otherwise).

    Example::

        >>> import torch
        >>> batch = {"audio": torch.ones(4, 3) + torch.arange(4.0)[:, None], "target": torch.zeros(4)}
        >>> noisy = gaussian_noise(batch, "audio", 0.5, torch.Generator().manual_seed(0))
        >>> noisy["audio"].shape, torch.equal(gaussian_noise(batch, "audio", 0.0)["audio"], batch["audio"])
        (torch.Size([4, 3]), True)
    """
    if not isinstance(batch, Mapping) or not isinstance(batch.get(modality), Tensor):
        raise TypeError(
            f"The default corruption adds noise to batch[{modality!r}], a tensor, but the batch is a "
            f"{type(batch).__name__}{'' if not isinstance(batch, Mapping) else ' without that tensor'}; pass "
            "`corruption=callable(batch, modality, level) -> batch`."
        )
    if level == 0:
        return batch
    x = batch[modality]
    if not x.is_floating_point():
        raise TypeError(f"The default corruption adds noise to floating inputs, but batch[{modality!r}] is {x.dtype}.")
    noise = torch.randn(x.shape, generator=generator, device="cpu", dtype=torch.float32).to(x.device, x.dtype)
    return {**batch, modality: x + level * x.std() * noise}


@dataclass
class RobustnessReport:
    """The rows of a robustness sweep, with their summaries.

    Attributes:
        rows: one dict per condition: ``condition`` (``"clean"``, ``"drop"`` or ``"degrade"``),
            ``modalities`` (``"audio"`` or ``"audio+video"``; ``""`` when clean), ``level``
            (degrade only), ``acc``, ``ece``, ``top_weight_share`` (NaN without modality weights)
            and ``n`` (instances scored).
        modality_names: the model's modalities.
        fusion: the model's fusion.
    """

    rows: list[dict[str, Any]]
    modality_names: list[str]
    fusion: str
    levels: list[float] = field(default_factory=list)

    def curve(self, modality: str) -> tuple[list[float], list[float]]:
        """Levels and fused accuracy of one modality's degradation sweep."""
        pts = sorted(
            (r["level"], r["acc"]) for r in self.rows if r["condition"] == "degrade" and r["modalities"] == modality
        )
        return [p[0] for p in pts], [p[1] for p in pts]

    def relative_robustness(self) -> dict[str, float]:
        """Per modality, the area under accuracy vs level, divided by the level range (1 = no loss at any level)."""
        out = {}
        for m in self.modality_names:
            x, y = self.curve(m)
            if len(x) < 2:
                out[m] = math.nan
                continue
            area = sum((x[i + 1] - x[i]) * (y[i] + y[i + 1]) / 2 for i in range(len(x) - 1))
            out[m] = area / (x[-1] - x[0])
        return out

    def effective_robustness(self, baseline: RobustnessReport) -> dict[str, float]:
        """Per modality, this model's relative robustness minus ``baseline``'s (e.g. late fusion's)."""
        if baseline.modality_names != self.modality_names or baseline.levels != self.levels:
            raise ValueError(
                "Expected a baseline report over the same modalities and levels, but got "
                f"{baseline.modality_names} at {baseline.levels} vs {self.modality_names} at {self.levels}."
            )
        mine, theirs = self.relative_robustness(), baseline.relative_robustness()
        return {m: mine[m] - theirs[m] for m in self.modality_names}

    def clean(self) -> dict[str, Any]:
        """The clean row."""
        return next(r for r in self.rows if r["condition"] == "clean")

    def scalars(self, prefix: str = "test/robustness") -> dict[str, float]:
        """Flat ``{key: value}`` for loggers: ``<prefix>/<condition>/<modalities>[/<level>]/<metric>``."""
        out: dict[str, float] = {}
        for r in self.rows:
            where = r["condition"] if r["condition"] == "clean" else f"{r['condition']}/{r['modalities']}"
            if r["condition"] == "degrade":
                where += f"/{r['level']:g}"
            for metric in ("acc", "ece", "top_weight_share"):
                if not math.isnan(r[metric]):
                    out[f"{prefix}/{where}/{metric}"] = float(r[metric])
        for m, v in self.relative_robustness().items():
            if not math.isnan(v):  # one level only: no area
                out[f"{prefix}/relative/{m}"] = v
        return out

    def to_csv(self, path: str | Path) -> Path:
        """Write the rows (one per condition, with the model's ``fusion``) to ``path``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["fusion", *_CSV_KEYS])
            writer.writeheader()
            writer.writerows({"fusion": self.fusion, **{k: r[k] for k in _CSV_KEYS}} for r in self.rows)
        return path

    @classmethod
    def from_csv(cls, path: str | Path) -> RobustnessReport:
        """Read a report written by :meth:`to_csv` (e.g. a late-fusion baseline's)."""
        with open(path, newline="") as f:
            raw = list(csv.DictReader(f))
        if not raw or set(raw[0]) != {"fusion", *_CSV_KEYS}:
            raise ValueError(f"Expected a robustness CSV with the columns fusion, {', '.join(_CSV_KEYS)}: {path}.")
        rows = [
            {
                "condition": r["condition"],
                "modalities": r["modalities"],
                **{k: float(r[k]) for k in ("level", "acc", "ece", "top_weight_share")},
                "n": int(r["n"]),
            }
            for r in raw
        ]
        names = [r["modalities"] for r in rows if r["condition"] == "drop" and "+" not in r["modalities"]]
        levels = sorted({r["level"] for r in rows if r["condition"] == "degrade"})
        return cls(rows, names, raw[0]["fusion"], levels)

    def figure(self, baseline: RobustnessReport | None = None, title: str | None = None) -> Any:
        """Accuracy vs degradation level, one line per modality (``baseline``'s dashed), and the drops.

        Example::

            >>> report = RobustnessReport(
            ...     [{"condition": "clean", "modalities": "", "level": math.nan, "acc": 0.9, "ece": 0.02,
            ...       "top_weight_share": math.nan, "n": 10}], ["a"], "mm")
            >>> report.figure().axes[0].get_title()
            'accuracy as one modality is degraded'
        """
        from matplotlib.figure import Figure

        fig = Figure(figsize=(9.5, 3.6), dpi=100)
        ax, bx = fig.add_axes((0.07, 0.15, 0.5, 0.72)), fig.add_axes((0.67, 0.15, 0.31, 0.72))
        colors = [f"C{i}" for i in range(len(self.modality_names))]
        for m, color in zip(self.modality_names, colors, strict=True):
            ax.plot(*self.curve(m), "-o", color=color, ms=3, label=f"{m} ({self.fusion})")
            if baseline is not None:
                ax.plot(*baseline.curve(m), "--", color=color, alpha=0.6, label=f"{m} ({baseline.fusion})")
        ax.set_xlabel("level (noise std / input std)")
        ax.set_ylabel("fused accuracy")
        ax.set_ylim(0, 1.02)
        ax.set_title("accuracy as one modality is degraded", fontsize=9)
        ax.legend(fontsize=6, ncol=2 if baseline is not None else 1, loc="lower left")
        drops = [r for r in self.rows if r["condition"] == "drop" and "+" not in r["modalities"]]
        names = [r["modalities"] for r in drops]
        bx.barh(range(len(drops)), [r["acc"] for r in drops], color=colors[: len(drops)], height=0.35)
        if baseline is not None:
            theirs = {r["modalities"]: r["acc"] for r in baseline.rows if r["condition"] == "drop"}
            bx.barh([i + 0.38 for i in range(len(drops))], [theirs.get(n, math.nan) for n in names], height=0.35,
                    color=colors[: len(drops)], alpha=0.45, label=baseline.fusion)  # fmt: skip
        bx.axvline(self.clean()["acc"], color="k", lw=0.8, ls=":", label="clean")
        bx.set_yticks(range(len(drops)), labels=[f"without {n}" for n in names])
        bx.set_xlim(0, 1.0)
        bx.set_xlabel("fused accuracy")
        bx.set_title("one modality dropped", fontsize=9)
        bx.legend(fontsize=6, loc="lower left")
        for a in (ax, bx):
            a.tick_params(labelsize=7)
        if title:
            fig.suptitle(title, fontsize=9)
        return fig

    def table(self, title: str = "robustness") -> Any:
        """A rich table: drops, then each modality's sweep (accuracy by level) and relative robustness."""
        from rich.table import Table

        clean = self.clean()
        table = Table(title=f"{title} ({self.fusion}): clean acc {clean['acc']:.3f}, ECE {clean['ece']:.3f}")
        table.add_column("modality")
        table.add_column("dropped", justify="right")
        for level in self.levels:
            table.add_column(f"x{level:g}", justify="right")
        table.add_column("rel. rob.", justify="right")
        drops = {r["modalities"]: r for r in self.rows if r["condition"] == "drop"}
        relative = self.relative_robustness()
        for m in self.modality_names:
            _, acc = self.curve(m)
            row = [f"{drops[m]['acc']:.3f}" if m in drops else ""]
            table.add_row(m, *row, *(f"{a:.3f}" for a in acc), f"{relative[m]:.3f}")
        pairs = [r for r in drops.values() if "+" in r["modalities"]]
        if pairs:
            worst = min(pairs, key=lambda r: r["acc"])
            table.caption = f"pairs dropped: worst without {worst['modalities']} ({worst['acc']:.3f})"
        table.caption = (table.caption + "\n" if table.caption else "") + "levels: noise std / input std"
        return table


class _Condition:
    """The torchmetrics of one condition: they synchronise across processes on ``compute``.

    ``share``: whether this condition scores the top-weighted modality (``fusion="mm"`` and one
    modality dropped or degraded); the same on every process, so that the syncs pair up.
    """

    def __init__(
        self, num_classes: int, ignore_index: int | None, n_bins: int, share: bool, device: torch.device
    ) -> None:
        self.ignore_index = ignore_index
        self.metrics: dict[str, Metric] = {
            "acc": MulticlassAccuracy(num_classes, average="micro", ignore_index=ignore_index),
            "ece": MulticlassCalibrationError(num_classes, n_bins=n_bins, ignore_index=ignore_index),
            "n": SumMetric(),
        }
        if share:
            self.metrics["top_weight_share"] = MeanMetric()
        for m in self.metrics.values():
            m.to(device)

    def update(self, probs: Tensor, target: Tensor, weights: Tensor | None, position: int | None) -> None:
        keep = (
            target != self.ignore_index if self.ignore_index is not None else torch.ones_like(target, dtype=torch.bool)
        )
        self.metrics["n"].update(keep.sum())
        if not bool(keep.any()):
            return
        self.metrics["acc"].update(probs, target)
        self.metrics["ece"].update(probs, target)
        if "top_weight_share" in self.metrics and weights is not None and position is not None:
            self.metrics["top_weight_share"].update((weights.argmax(1) == position)[keep].float())

    def compute(self) -> dict[str, Any]:
        out = {k: float(m.compute()) for k, m in self.metrics.items()}
        out["n"] = int(out["n"])
        out.setdefault("top_weight_share", math.nan)
        return out


def _check_model(model: Any) -> None:
    if not callable(getattr(model, "fuse_unimodal", None)) or "mm_fusion" not in getattr(model, "__dict__", {}):
        raise TypeError(
            f"Expected a model built with MultiModalLossMixin and configured with `configure_multimodal(...)`, "
            f"but got {type(model).__name__}."
        )


def robustness_report(
    model: Any,
    dataloader: Iterable[Any],
    levels: Sequence[float] = DEFAULT_LEVELS,
    corruption: Corruption | None = None,
    drop_pairs: bool = True,
    seed: int = 0,
    n_bins: int = 15,
    to_device: Callable[[Any], Any] | None = None,
) -> RobustnessReport:
    """Drop and degrade each modality of ``model`` on ``dataloader``: a :class:`RobustnessReport`.

    Args:
        model: a model on :class:`~lightning_mmloss.MultiModalLossMixin` (any fusion), trained.
        dataloader: batches with targets, as the model's test step takes them.
        levels: degradation levels, ascending, starting at 0 (the clean input); ``()``: no sweep.
        corruption: ``callable(batch, modality, level) -> batch``; default :func:`gaussian_noise`
            (seeded by ``seed``, the same noise for every model).
        drop_pairs: also drop every pair of modalities (with at least one left).
        seed: seed of the default noise.
        n_bins: calibration bins of the ECE.
        to_device: moves a batch to the model's device (default: tensors of dict/list batches).

    Under DDP (called on every process, e.g. from :class:`RobustnessCallback`), each process runs
    its own batches and the metrics are synchronised.

    Example::

        >>> import torch
        >>> from lightning_mmloss.experiments.classifier import MultiModalClassifier
        >>> model = MultiModalClassifier(["a", "b"], {"a": 4, "b": 4}, num_classes=2, proxies_per_class=2)
        >>> batch = {"a": torch.randn(8, 4), "b": torch.randn(8, 4), "target": torch.randint(0, 2, (8,))}
        >>> report = robustness_report(model, [batch], levels=(0.0, 1.0))
        >>> [(r["condition"], r["modalities"]) for r in report.rows][:3]
        [('clean', ''), ('drop', 'a'), ('drop', 'b')]
    """
    _check_model(model)
    levels = check_levels(levels)
    if corruption is not None and not callable(corruption):
        raise TypeError(
            f"Expected argument `corruption` to be callable(batch, modality, level), but got {corruption!r}."
        )
    names = list(model.mm_names)
    M, C = len(names), model.mm_num_classes
    device = next(model.parameters()).device
    move = to_device or (lambda b: _to_device(b, device))
    drops = [(m,) for m in range(M)] + (list(combinations(range(M), 2)) if drop_pairs and M > 2 else [])
    conditions: dict[tuple[str, str, float], _Condition] = {}

    def cond(key: tuple[str, str, float]) -> _Condition:
        if key not in conditions:
            share = model.mm_fusion == "mm" and key[0] != "clean" and "+" not in key[1]
            conditions[key] = _Condition(C, model.mm_ignore_index, n_bins, share, device)
        return conditions[key]

    # created in a fixed order on every process (their collective syncs pair up)
    cond(("clean", "", math.nan))
    for d in drops:
        cond(("drop", "+".join(names[i] for i in d), math.nan))
    for m in names:
        for level in levels:
            cond(("degrade", m, level))
    generator = torch.Generator().manual_seed(seed)
    noise = corruption or (lambda b, m, lv: gaussian_noise(b, m, lv, generator))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in dataloader:
                batch = move(batch)
                out = model.multimodal_step(batch)
                target, u, mask = out.target, out.unimodal_logits, out.modality_mask
                weights = None if out.fusion is None else out.fusion.modality_weights
                cond(("clean", "", math.nan)).update(out.probs, target, weights, None)
                present = torch.ones(u.shape[:2], dtype=torch.bool, device=u.device) if mask is None else mask
                for d in drops:
                    keep_mask = present.clone()
                    keep_mask[:, list(d)] = False
                    rows = keep_mask.any(1)  # an instance left without any modality is not scored
                    probs, w = model.fuse_unimodal(u[rows], keep_mask[rows])
                    key = ("drop", "+".join(names[i] for i in d), math.nan)
                    cond(key).update(probs, target[rows], w, d[0] if len(d) == 1 else None)
                for m_idx, m in enumerate(names):
                    for level in levels:
                        if level == 0:  # the clean run itself: the level-0 row equals it exactly
                            cond(("degrade", m, 0.0)).update(out.probs, target, weights, m_idx)
                            continue
                        noisy = model.multimodal_step(noise(batch, m, level))
                        w = None if noisy.fusion is None else noisy.fusion.modality_weights
                        cond(("degrade", m, level)).update(noisy.probs, noisy.target, w, m_idx)
    finally:
        model.train(was_training)
    rows = []
    for (condition, mods, level), c in conditions.items():
        rows.append({"condition": condition, "modalities": mods, "level": level, **c.compute()})
    return RobustnessReport(rows, names, model.mm_fusion, list(levels))


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(_to_device(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch
