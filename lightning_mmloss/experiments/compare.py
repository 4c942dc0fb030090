"""``lightning-mmloss compare``: every fusion x seed on the same heads and data, side by side."""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import shutil
import statistics
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch.loggers import TensorBoardLogger
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from torch import Tensor

from lightning_mmloss.callbacks import SubgroupMonitor
from lightning_mmloss.experiments.classifier import FUSIONS, MultiModalClassifier
from lightning_mmloss.experiments.cli import LINKED, import_class, init_parameters
from lightning_mmloss.experiments.data import (
    MultiviewDataset,
    SyntheticMultimodalDataModule,
    UCIMultipleFeaturesDataModule,
)
from lightning_mmloss.experiments.data.synthetic import PRESETS, SCENARIOS
from lightning_mmloss.experiments.data.uci_mfeat import CORRUPTIONS, VIEWS
from lightning_mmloss.functional import modality_reliability
from lightning_mmloss.mixin import MultiModalLossMixin
from lightning_mmloss.robustness import robustness_report

DEFAULT_EPOCHS = {"synthetic": 60, "uci-mfeat": 60}


FLIP_GAP = 0.1  # a head whose purity gap exceeds this is reported as flipped (a noise head: ~0.02 +- 0.02)


@torch.no_grad()
def evaluate(
    model: MultiModalClassifier, dataset: MultiviewDataset, chunk: int = 4096, extra_attribution: bool = False
) -> dict[str, float]:
    """Fused and per-modality accuracy and ECE on ``dataset``; head honesty; attribution for ``"mm"``.

    Honesty: each head's purity gap (the reliability metric ``purity_gap``), their maximum
    (``max_purity_gap``) and the number of heads above ``FLIP_GAP`` (``flipped_heads``).
    Attribution (only where the data say which modalities are informative, and only for the
    MultiModal loss): among correctly classified
    instances, the share whose top modality by exact Shapley value (``attr_shapley``) and by
    modality weight (``attr_weight``) is informative. ``extra_attribution`` adds the candidate
    definitions compared in ``benchmarks/design_decisions.py``.

    Example::

        >>> from lightning_mmloss.experiments.classifier import MultiModalClassifier
        >>> from lightning_mmloss.experiments.data import SyntheticMultimodalDataModule
        >>> dm = SyntheticMultimodalDataModule("instance", preset="tiny")
        >>> dm.setup()
        >>> model = MultiModalClassifier(dm.modalities, dm.input_dims, 2, fusion="mm", proxies_per_class=3)
        >>> sorted(evaluate(model, dm.splits["test"]))[:4]
        ['attr_shapley', 'attr_weight', 'flipped_heads', 'm1_acc']
    """
    model.eval()
    names = model.modality_names
    whole = dataset.as_batch()
    us, logits, ys, infos = [], [], [], []
    scores: dict[str, list[Tensor]] = {}
    for start in range(0, len(dataset), chunk):
        batch = {k: v[start : start + chunk].to(model.device) for k, v in whole.items()}
        u = model.stacked_logits(batch).float()
        if model.fusion == "mm":  # one fusion gives the logits and the modality weights
            out = model.mm_loss.fuse(u)
            logits.append(out.logits)
            scores.setdefault("attr_weight", []).append(out.modality_weights)
            scores.setdefault("attr_shapley", []).append(model.mm_loss.shapley(u))
            if extra_attribution:
                for key, value in _candidate_attributions(model, u, out).items():
                    scores.setdefault(key, []).append(value)
        else:
            logits.append(model.fused_logits(u))
        us.append(u)
        ys.append(batch["target"])
        infos.append(batch["informative"])
    u, y, informative = torch.cat(us), torch.cat(ys), torch.cat(infos)
    fused = torch.cat(logits).float().softmax(-1)
    trust = {}
    if model.fusion == "mm":
        trust = _trust(torch.cat(scores["attr_weight"]), torch.cat(scores["attr_shapley"]), names)
    rel = modality_reliability(u.softmax(-1), fused, y, modalities=names)
    row: dict[str, float] = {"test_acc": float(rel["fused/acc"]), "test_ece": float(rel["fused/ece"])}
    gaps = []
    for m in names:
        row[f"{m}_acc"] = float(rel[f"{m}/acc"])
        row[f"{m}_ece"] = float(rel[f"{m}/ece"])
        gaps.append(float(rel[f"{m}/purity_gap"]))
        row[f"{m}_purity_gap"] = gaps[-1]
    row["max_purity_gap"] = max(gaps)
    row["flipped_heads"] = float(sum(g > FLIP_GAP for g in gaps))
    row.update(trust)
    if scores and not bool(informative.all()):
        correct = fused.argmax(-1) == y
        idx = correct.nonzero().squeeze(1)
        for key, chunks in scores.items():
            top = torch.cat(chunks)[idx].argmax(dim=1)
            row[key] = float(informative[idx, top].float().mean()) if len(idx) else math.nan
    return row


def _trust(weights: Tensor, shapley: Tensor, names: Sequence[str]) -> dict[str, float]:
    """Which view to trust, no ground truth needed: per modality the mean weight and Shapley value, top share."""
    top = weights.argmax(dim=1)
    row = {}
    for i, m in enumerate(names):
        row[f"{m}_weight"] = float(weights[:, i].mean())
        row[f"{m}_shapley"] = float(shapley[:, i].mean())
        row[f"{m}_top"] = float((top == i).float().mean())
    return row


def _candidate_attributions(model: MultiModalClassifier, u: Tensor, out: Any) -> dict[str, Tensor]:
    """Per-instance modality scores ``(B, M)`` under the definitions compared for issue 8."""
    loss = model.mm_loss
    B, M, C = u.shape
    c_hat = out.logits.argmax(-1)
    P = loss.proxies.detach()
    a = (out.attention.reshape(B, -1) @ P).view(B, M, C)
    a_c = a.gather(2, c_hat.view(B, 1, 1).expand(B, M, 1)).squeeze(2)
    p = out.unimodal_probs
    p_c = p.gather(2, c_hat.view(B, 1, 1).expand(B, M, 1)).squeeze(2)
    runner_up = p.scatter(2, c_hat.view(B, 1, 1).expand(B, M, 1), -1.0).amax(dim=2)
    full = out.probs.gather(1, c_hat[:, None]).squeeze(1)
    loo = []
    for m in range(M):
        keep = torch.ones(B, M, dtype=torch.bool)
        keep[:, m] = False
        drop = loss.fuse(u, keep).probs.gather(1, c_hat[:, None]).squeeze(1)
        loo.append(full - drop)
    top = out.subgroup
    Ptop = P[top].view(B, M, C).gather(2, c_hat.view(B, 1, 1).expand(B, M, 1)).squeeze(2)
    return {
        "attr_trust": a_c,
        "attr_ap": a_c * p_c,
        "attr_amargin": a_c * (p_c - runner_up),
        "attr_subgroup": Ptop * p_c,
        "attr_margin": (1 + a_c) * (p_c - runner_up),
        "attr_loo": torch.stack(loo, dim=1),
    }


def _datamodule(args: argparse.Namespace, seed: int) -> L.LightningDataModule:
    if args.data_class is not None:  # a data module of the user's: LightningCLI-style init args
        kwargs = dict(args.data_args)
        if "seed" in init_parameters(args.data_class) and "seed" not in kwargs:
            kwargs["seed"] = seed
        return args.data_class(**kwargs)
    if args.data == "synthetic":
        return SyntheticMultimodalDataModule(
            args.scenario, preset=args.preset, batch_size=args.batch_size, seed=seed, num_classes=args.classes
        )
    return UCIMultipleFeaturesDataModule(
        args.data_dir,
        corrupt_fraction=args.corrupt_fraction,
        corrupt_views=args.corrupt_views,
        corruption=args.corruption,
        batch_size=args.batch_size,
        seed=seed,
    )


class _EpochProgress(L.Callback):
    """Advances a rich progress bar by one at the end of every training epoch (compare's inner bar)."""

    def __init__(self, progress: Progress, task: Any) -> None:
        self.progress, self.task = progress, task

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.progress.update(self.task, completed=trainer.current_epoch + 1)


def run_one(
    args: argparse.Namespace, fusion: str, seed: int, output: Path, callbacks: Sequence[L.Callback] = ()
) -> dict[str, Any]:
    """Train one fusion with one seed (``callbacks`` join the trainer's); returns its results row."""
    L.seed_everything(seed, verbose=False)
    dm = _datamodule(args, seed)
    dm.setup("fit")
    user = args.model_class is not None or args.data_class is not None
    model = _model(args, dm, fusion) if args.model_class is not None else _classifier(args, dm, fusion)
    trainer = L.Trainer(
        max_epochs=args.epochs,
        accelerator=args.accelerator,
        devices=1,
        logger=TensorBoardLogger(str(output / "tensorboard"), name=fusion, version=f"seed{seed}"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=5,
        deterministic=True,
        # the per-modality metrics and figures in each run's TensorBoard log, every 10th validation
        callbacks=[SubgroupMonitor(every_n_epochs=10, print_summary=False, images_every_n_epochs=2), *callbacks],
    )
    start = time.perf_counter()
    trainer.fit(model, dm)
    seconds = time.perf_counter() - start
    row: dict[str, Any] = {"fusion": fusion, "seed": seed}
    row.update(evaluate_on_test(trainer, model, dm) if user else evaluate(model, dm.splits["test"]))
    row["train_seconds"] = seconds
    if args.robustness:
        row.update(robustness_row(model, dm, output / "robustness" / f"{fusion}_seed{seed}.csv", seed))
    return row


#: The degradation levels of compare's robustness table (noise std / input std).
ROBUSTNESS_LEVELS = (0.0, 0.5, 1.0, 2.0)
TRUST_NOTE = (
    "mean weight: each modality's share of the predicted class's margin (modality_weights); mean Shapley: "
    "its exact Shapley value for the predicted class's probability; top-weighted: the share of instances it "
    "weighs most"
)
ROBUSTNESS_NOTE = (
    "drop one: mean fused accuracy with one modality masked out; rel. robustness: mean area under accuracy "
    "vs Gaussian noise (0-2 x input std) on one modality; effective: minus late fusion's (same seed)"
)


def robustness_row(model: L.LightningModule, dm: L.LightningDataModule, path: Path, seed: int) -> dict[str, float]:
    """Robustness summaries of one run on the test split; the full report goes to ``path``.

    ``robust_drop1``: mean fused accuracy with one modality dropped; ``robust_worst_drop``: the
    lowest of those; ``robust_rel``: mean relative robustness (area under accuracy vs noise level)
    over the modalities.
    """
    dm.setup("test")
    loader = dm.test_dataloader()
    first = next(iter(loader))
    names = model.mm_names  # type: ignore[attr-defined]
    # the built-in noise needs dict batches keyed by modality; other layouts get the drops only
    noisable = isinstance(first, Mapping) and all(isinstance(first.get(m), Tensor) for m in names)
    levels = ROBUSTNESS_LEVELS if noisable else ()
    report = robustness_report(model, loader, levels=levels, drop_pairs=False, seed=seed)
    report.to_csv(path)
    drops = [r["acc"] for r in report.rows if r["condition"] == "drop"]
    rel = list(report.relative_robustness().values())
    row = {"robust_drop1": statistics.mean(drops), "robust_worst_drop": min(drops)}
    if levels:
        row["robust_rel"] = statistics.mean(rel)
    return row


def summarise_robustness(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the robustness table (``None``-free rows only); effective robustness vs ``late``."""
    header = ["fusion", "drop one", "worst drop", "rel. robustness", "effective vs late"]
    late = {r["seed"]: r["robust_rel"] for r in rows if r["fusion"] == "late" and "robust_rel" in r}
    out = []
    for fusion in dict.fromkeys(r["fusion"] for r in rows):
        rs = [r for r in rows if r["fusion"] == fusion and "robust_drop1" in r]
        if not rs:
            continue
        keys = ("robust_drop1", "robust_worst_drop", "robust_rel")
        line = [fusion, *(_mean_std([r.get(k, math.nan) for r in rs]) for k in keys)]
        effective = [r["robust_rel"] - late[r["seed"]] for r in rs if r["seed"] in late and "robust_rel" in r]
        line.append(_mean_std(effective) if late and fusion != "late" else "")
        out.append(line)
    return header, out


def _require(dm: L.LightningDataModule, names: Sequence[str]) -> dict[str, Any]:
    """The data module's contract attributes ``names`` (after ``setup``), with an error naming what is missing."""
    missing = [n for n in names if getattr(dm, n, None) is None]
    if missing:
        raise SystemExit(
            f"lightning-mmloss compare: the data module {type(dm).__name__} has no {missing} after setup(); "
            "compare needs `modalities` (list of names), `num_classes` (int) and, for the built-in model, "
            "`input_dims` ({name: features}) (docs/cli.md)"
        )
    return {n: getattr(dm, n) for n in names}


def _model(args: argparse.Namespace, dm: L.LightningDataModule, fusion: str) -> L.LightningModule:
    """The user's model: its init args, ``fusion``, and what the data module tells it (:data:`LINKED`)."""
    params = init_parameters(args.model_class)
    kwargs = dict(args.model_args)
    kwargs["fusion"] = fusion
    linked = [n for n in LINKED if n in params and n not in kwargs]
    kwargs.update(_require(dm, linked))
    model = args.model_class(**kwargs)
    if getattr(model, "mm_fusion", None) != fusion:
        raise SystemExit(
            f"lightning-mmloss compare: --model {args.model} must pass its `fusion` argument on to "
            f"`self.configure_multimodal(..., fusion=fusion)`; asked for {fusion!r}, it configured "
            f"{getattr(model, 'mm_fusion', None)!r}"
        )
    return model


def _classifier(args: argparse.Namespace, dm: L.LightningDataModule, fusion: str) -> MultiModalClassifier:
    attrs = _require(dm, ("modalities", "input_dims", "num_classes"))
    return MultiModalClassifier(
        attrs["modalities"],
        attrs["input_dims"],
        attrs["num_classes"],
        fusion=fusion,
        hidden=args.hidden,
        lr=args.lr,
        weight_decay=args.weight_decay,
        proxies_per_class=args.proxies,
        gamma=args.gamma,
        recipe=args.recipe,
        aux_weight=args.aux_weight,
    )


def evaluate_on_test(trainer: L.Trainer, model: L.LightningModule, dm: L.LightningDataModule) -> dict[str, float]:
    """The results row from ``trainer.test`` with a :class:`SubgroupMonitor` (any model on the mixin, any data)."""
    monitor = SubgroupMonitor(print_summary=False, images_every_n_epochs=None)
    tester = L.Trainer(
        accelerator=trainer.accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[monitor],
    )
    tester.test(model, datamodule=dm, verbose=False)
    m = monitor.last_metrics
    row = {"test_acc": m["test/reliability/fused/acc"], "test_ece": m["test/reliability/fused/ece"]}
    gaps = []
    for name in model.mm_names:  # type: ignore[attr-defined]
        row[f"{name}_acc"] = m[f"test/reliability/{name}/acc"]
        row[f"{name}_ece"] = m[f"test/reliability/{name}/ece"]
        gaps.append(m[f"test/reliability/{name}/purity_gap"])
        row[f"{name}_purity_gap"] = gaps[-1]
    row["max_purity_gap"] = max(gaps)
    row["flipped_heads"] = float(sum(g > FLIP_GAP for g in gaps))
    if getattr(model, "mm_fusion", None) == "mm":
        row.update(_trust_of(model, dm))
    return row


def _trust_of(model: L.LightningModule, dm: L.LightningDataModule) -> dict[str, float]:
    """:func:`_trust` of a model on the mixin over its data module's test loader (the decision's weights)."""
    was_training = model.training
    model.eval()
    weights, shapley = [], []
    loss = model.mm_loss  # type: ignore[attr-defined]
    try:
        with torch.no_grad():
            for batch in dm.test_dataloader():
                out = model.multimodal_step(move_data_to_device(batch, model.device), with_target=False)  # type: ignore[attr-defined]
                assert out.fusion is not None
                weights.append(out.fusion.modality_weights)
                shapley.append(loss.shapley(out.unimodal_logits, modality_mask=out.modality_mask))
    finally:
        model.train(was_training)
    return _trust(torch.cat(weights), torch.cat(shapley), model.mm_names)  # type: ignore[attr-defined]


def _paired_to_late(rows: list[dict[str, Any]], fusion: str) -> str:
    """``fusion``'s per-seed test accuracy minus late fusion's, in points: mean ± standard error."""
    late = {r["seed"]: r["test_acc"] for r in rows if r["fusion"] == "late"}
    diffs = [100 * (r["test_acc"] - late[r["seed"]]) for r in rows if r["fusion"] == fusion and r["seed"] in late]
    if fusion == "late" or not diffs:
        return ""
    if len(diffs) == 1:
        return f"{diffs[0]:+.2f}"
    return f"{statistics.mean(diffs):+.2f} ± {statistics.stdev(diffs) / math.sqrt(len(diffs)):.2f}"


def summarise_trust(rows: list[dict[str, Any]], modalities: list[str]) -> tuple[list[str], list[list[str]]]:
    """Which view to trust under the MultiModal loss: one row per modality (mean ± std over seeds)."""
    rs = [r for r in rows if r["fusion"] == "mm" and f"{modalities[0]}_weight" in r] if modalities else []
    header = ["modality", "mean weight", "mean Shapley", "top-weighted"]
    out = [[m, *(_mean_std([r[f"{m}_{k}"] for r in rs]) for k in ("weight", "shapley", "top"))] for m in modalities]
    return header, out if rs else []


def _mean_std(values: Sequence[float]) -> str:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return "n/a"
    if len(vals) == 1:
        return f"{vals[0]:.3f}"
    return f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals):.3f}"


def summarise(rows: list[dict[str, Any]], modalities: list[str]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the mean ± std table, one row per fusion (in run order)."""
    header = ["fusion", "test acc", "vs late", "test ECE"]
    header += [*[f"{m} acc" for m in modalities], *[f"{m} ECE" for m in modalities]]
    header.append("flipped heads")
    if any("attr_shapley" in r for r in rows):
        header += ["attr. Shapley", "attr. weight"]
    header.append("train s")
    out = []
    for fusion in dict.fromkeys(r["fusion"] for r in rows):
        rs = [r for r in rows if r["fusion"] == fusion]
        line = [fusion, _mean_std([r["test_acc"] for r in rs]), _paired_to_late(rows, fusion)]
        line.append(_mean_std([r["test_ece"] for r in rs]))
        line += [_mean_std([r[f"{m}_acc"] for r in rs]) for m in modalities]
        line += [_mean_std([r[f"{m}_ece"] for r in rs]) for m in modalities]
        # heads whose own labels have inverted (purity gap > FLIP_GAP), summed over seeds
        line.append(f"{sum(int(r.get('flipped_heads', 0)) for r in rs)} in {len(rs)} runs")
        if "attr. Shapley" in header:
            line += [_mean_std([r.get(k, math.nan) for r in rs]) for k in ("attr_shapley", "attr_weight")]
        line.append(f"{statistics.mean(r['train_seconds'] for r in rs):.1f}")
        out.append(line)
    return header, out


def _table(title: str, header: list[str], rows: list[list[str]], caption: str | None = None) -> Table:
    """A console table that fits the terminal: the fusion column whole, the numbers wrapped in their cells.

    (A cell such as ``0.876 ± 0.010`` wraps after the ``±`` rather than being cut to ``0.876 …``.)
    """
    table = Table(title=title, caption=caption)
    width = max(len(r[0]) for r in rows) if rows else 6
    table.add_column(header[0], no_wrap=True, min_width=max(width, len(header[0])))
    for h in header[1:]:
        table.add_column(h, justify="right", overflow="fold")
    for r in rows:
        table.add_row(*r, style="bold" if r[0] == "mm" else None)
    return table


def write_rows(rows: list[dict[str, Any]], output: Path) -> None:
    """``results.csv``, one row per finished run, replaced atomically (a reader never sees half a file)."""
    fields = list(dict.fromkeys(k for r in rows for k in r))
    tmp = output / ".results.csv.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, output / "results.csv")


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``results.csv`` (numbers as floats, ``seed`` as int)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for r in rows:
        row: dict[str, Any] = {"fusion": r["fusion"], "seed": int(r["seed"])}
        row.update({k: float(v) for k, v in r.items() if k not in ("fusion", "seed") and v not in ("", None)})
        out.append(row)
    return out


def write_outputs(rows: list[dict[str, Any]], modalities: list[str], output: Path, title: str) -> None:
    """``results.csv`` (one row per fusion and seed), ``results.md`` and ``results.png``."""
    write_rows(rows, output)
    header, table = summarise(rows, modalities)
    lines = [f"# {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in table]
    lines += ["", "mean ± standard deviation over seeds; accuracy and ECE on the test split; vs late: the paired"]
    lines[-1] += " per-seed difference to late fusion in points, mean ± standard error."
    t_header, t_table = summarise_trust(rows, modalities)
    if t_table:
        lines += ["", "## Which view to trust (mm, test split)", "", "| " + " | ".join(t_header) + " |"]
        lines += ["|" + "---|" * len(t_header), *("| " + " | ".join(r) + " |" for r in t_table), "", TRUST_NOTE]
    r_header, r_table = summarise_robustness(rows)
    if r_table:
        lines += [
            "",
            "## Robustness (test split)",
            "",
            "| " + " | ".join(r_header) + " |",
            "|" + "---|" * len(r_header),
        ]
        lines += ["| " + " | ".join(r) + " |" for r in r_table]
        lines += ["", ROBUSTNESS_NOTE]
    (output / "results.md").write_text("\n".join(lines) + "\n")
    _plot(rows, modalities, output / "results.png", title)


def _plot(rows: list[dict[str, Any]], modalities: list[str], path: Path, title: str) -> Any:
    """``results.png``: test accuracy and test ECE per fusion (bars: means, dots: seeds), both axes from 0."""
    from matplotlib.figure import Figure

    fusions = list(dict.fromkeys(r["fusion"] for r in rows))
    fig = Figure(figsize=(1.6 + 1.5 * len(fusions), 3.6), dpi=110, layout="constrained")
    acc_ax, ece_ax = fig.subplots(1, 2)
    for ax, key, label in ((acc_ax, "test_acc", "test accuracy"), (ece_ax, "test_ece", "test ECE (lower is better)")):
        for i, fusion in enumerate(fusions):
            values = [r[key] for r in rows if r["fusion"] == fusion]
            mean = statistics.mean(values)
            ax.bar(i, mean, color="#4C72B0" if fusion == "mm" else "#A0A0A0", width=0.6)
            ax.scatter([i] * len(values), values, color="black", s=10, zorder=3)
            # the mean inside the bar's foot: clear of the seeds' dots and of the legend
            ax.annotate(f"{mean:.3f}", (i, 0), ha="center", va="bottom", fontsize=7, color="white",
                        xytext=(0, 3), textcoords="offset points")  # fmt: skip
        ax.set_xticks(range(len(fusions)), labels=fusions, fontsize=8)
        ax.set_ylabel(label)
    # the best head: the highest mean accuracy of any modality's head under any fusion
    best_head = max(
        statistics.mean(r[f"{m}_acc"] for r in rows if r["fusion"] == fusion) for fusion in fusions for m in modalities
    )
    acc_ax.axhline(
        best_head, color="#C44E52", linestyle="--", linewidth=1, label=f"best unimodal head ({best_head:.3f})"
    )
    acc_ax.set_ylim(0.0, 1.12)  # from 0: bar heights are the accuracies; the top leaves room for the legend
    ece_ax.set_ylim(0.0, max(0.05, 1.25 * max(r["test_ece"] for r in rows)))
    # above the bars, never on them
    acc_ax.legend(fontsize=7, loc="upper center", ncol=1, frameon=False)
    fig.suptitle(title, fontsize=9)
    fig.savefig(path)
    return fig


def _hidden(text: str) -> list[int]:
    """``--hidden``: comma-separated positive layer sizes."""
    try:
        sizes = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated sizes such as 128,32, got {text!r}") from None
    if any(h < 1 for h in sizes):
        raise argparse.ArgumentTypeError(f"expected sizes >= 1 (a layer of 0 units sees no input), got {text!r}")
    return sizes


def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``lightning-mmloss compare``."""
    p = argparse.ArgumentParser(
        prog="lightning-mmloss compare",
        description="Train every fusion x seed on the same heads and data; print and write the comparison.",
    )
    p.add_argument(
        "--data",
        default="synthetic",
        help="synthetic, uci-mfeat, or a data module of your own as package.module.Class (init args: "
        "--data.NAME VALUE, as in LightningCLI)",
    )
    p.add_argument(
        "--model",
        default=None,
        help="a model of your own on MultiModalLossMixin as package.module.Class, whose `fusion` argument goes to "
        "configure_multimodal (init args: --model.NAME VALUE); default: the built-in MLP heads",
    )
    p.add_argument("--scenario", choices=SCENARIOS, default="ehh", help="synthetic scenario")
    p.add_argument("--preset", choices=tuple(PRESETS), default="default", help="synthetic size preset")
    p.add_argument("--classes", type=int, default=2, help="synthetic classes")
    p.add_argument("--data-dir", default=None, help="UCI Multiple Features CSV folder (needed with --data uci-mfeat)")
    p.add_argument("--corrupt-fraction", type=float, default=0.0, help="uci-mfeat: share of corrupted instances")
    p.add_argument("--corrupt-views", type=int, default=3, help="uci-mfeat: views replaced per corrupted instance")
    p.add_argument(
        "--corruption",
        choices=CORRUPTIONS,
        default="noise",
        help="uci-mfeat: replace the views by Gaussian noise ('noise') or by another class's views ('swap')",
    )
    p.add_argument("--fusions", default=",".join(FUSIONS), help=f"comma-separated, from {','.join(FUSIONS)}")
    p.add_argument(
        "--no-robustness",
        dest="robustness",
        action="store_false",
        help="skip the robustness table (each modality dropped, and degraded by noise, on the test split)",
    )
    p.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1 (data and initialisation)")
    p.add_argument("--epochs", type=int, default=None, help="default: 60")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--hidden", type=_hidden, default=[128, 32], help="hidden layer sizes of every head, e.g. 128,32")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--proxies", type=int, default=20, help="MultiModal loss: proxies per class K")
    p.add_argument("--gamma", type=float, default=0.1, help="MultiModal loss: temperature")
    p.add_argument(
        "--recipe",
        choices=("default", "paper"),
        default=None,
        help="MultiModal loss: 'default' (honest heads, calibrated) or 'paper' (the paper's exact loss); "
        "default: 'paper' with --preset paper, else 'default'",
    )
    p.add_argument(
        "--aux-weight", type=float, default=None, help="MultiModal loss: auxiliary unimodal loss weight (recipe's)"
    )
    p.add_argument("--accelerator", default="cpu")
    p.add_argument(
        "--threads", type=int, default=None, help="torch threads for the (small) models; default 1 (see docs/cli.md)"
    )
    p.add_argument("--output", default="runs/compare", help="folder for results.csv/.md/.png and TensorBoard logs")
    again = p.add_mutually_exclusive_group()
    again.add_argument(
        "--resume", action="store_true", help="keep the finished runs in --output's results.csv, run the others"
    )
    again.add_argument("--overwrite", action="store_true", help="delete --output's results and logs, start over")
    return p


def _init_args(extra: list[str], parser: argparse.ArgumentParser) -> dict[str, dict[str, Any]]:
    """``--model.NAME VALUE`` / ``--data.NAME=VALUE`` pairs (LightningCLI's form); JSON values where they parse."""
    out: dict[str, dict[str, Any]] = {"model": {}, "data": {}}
    i = 0
    while i < len(extra):
        arg = extra[i]
        group, _, name = arg[2:].partition(".") if arg.startswith("--") else ("", "", "")
        if group not in out or not name:
            parser.error(f"unrecognized arguments: {' '.join(extra[i:])}")
        if "=" in name:
            name, value = name.split("=", 1)
            i += 1
        elif i + 1 < len(extra):
            value = extra[i + 1]
            i += 2
        else:
            parser.error(f"argument {arg}: expected a value")
        try:
            out[group][name] = json.loads(value)
        except json.JSONDecodeError:
            out[group][name] = value  # a plain string
    return out


def compare_main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Entry point of ``lightning-mmloss compare``; returns the result rows."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    init = _init_args(extra, parser)
    args.model_args, args.data_args = init["model"], init["data"]
    builtin = ("synthetic", "uci-mfeat")
    if args.data not in builtin and "." not in args.data:
        parser.error(f"argument --data: expected {', '.join(builtin)} or package.module.Class, got {args.data!r}")
    args.data_class = None if args.data in builtin else import_class(args.data, "--data")
    args.model_class = None if args.model is None else import_class(args.model, "--model")
    if args.data_args and args.data_class is None:
        parser.error("--data.NAME options configure a data module of your own (--data package.module.Class)")
    if args.model_args and args.model_class is None:
        parser.error("--model.NAME options configure a model of your own (--model package.module.Class)")
    if args.data_class is not None and not issubclass(args.data_class, L.LightningDataModule):
        parser.error(f"argument --data: {args.data!r} is not a LightningDataModule")
    if args.model_class is not None and not issubclass(args.model_class, MultiModalLossMixin):
        parser.error(f"argument --model: {args.model!r} is not a model built with MultiModalLossMixin")
    fusions = [f.strip() for f in args.fusions.split(",") if f.strip()]
    unknown = [f for f in fusions if f not in FUSIONS]
    if unknown or not fusions:
        raise SystemExit(f"lightning-mmloss compare: --fusions takes names from {','.join(FUSIONS)}, got {unknown}")
    repeated = sorted({f for f in fusions if fusions.count(f) > 1})
    if repeated:
        raise SystemExit(f"lightning-mmloss compare: --fusions names each fusion once, got {repeated} repeated")
    if args.seeds < 1:
        raise SystemExit("lightning-mmloss compare: --seeds must be at least 1")
    if args.epochs is not None and args.epochs < 1:
        raise SystemExit(f"lightning-mmloss compare: --epochs must be at least 1, got {args.epochs}")
    if args.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise SystemExit(
            f"lightning-mmloss compare: --accelerator {args.accelerator} asks for a GPU, but torch sees none"
        )
    if args.threads is not None and args.threads < 1:
        raise SystemExit(f"lightning-mmloss compare: --threads must be at least 1, got {args.threads}")
    corrupting = [
        flag
        for flag, value, default in (
            ("--corrupt-fraction", args.corrupt_fraction, 0.0),
            ("--corrupt-views", args.corrupt_views, 3),
            ("--corruption", args.corruption, "noise"),
        )
        if value != default
    ]
    if args.data != "uci-mfeat" and corrupting:
        raise SystemExit(
            f"lightning-mmloss compare: {', '.join(corrupting)} applies to --data uci-mfeat; the synthetic scenarios "
            "choose their informative modalities themselves (--scenario)"
        )
    if not 1 <= args.corrupt_views <= len(VIEWS):
        raise SystemExit(
            f"lightning-mmloss compare: --corrupt-views must be in [1, {len(VIEWS)}], got {args.corrupt_views}"
        )
    if not 0.0 <= args.corrupt_fraction <= 1.0:
        raise SystemExit(f"lightning-mmloss compare: --corrupt-fraction must be in [0, 1], got {args.corrupt_fraction}")
    if args.data == "uci-mfeat":
        if args.data_dir is None:
            raise SystemExit(
                "lightning-mmloss compare: --data uci-mfeat needs --data-dir, the folder with the six mfeat-*.csv "
                "files (https://archive.ics.uci.edu/dataset/72/multiple+features)"
            )
        data_dir = Path(args.data_dir)
        if data_dir.exists() and not data_dir.is_dir():
            raise SystemExit(
                f"lightning-mmloss compare: --data-dir {str(data_dir)!r} is a file; give the folder that holds the "
                "six mfeat-*.csv files"
            )
    if args.epochs is None:
        args.epochs = DEFAULT_EPOCHS.get(args.data, 60)
    if args.recipe is None:  # the paper preset reproduces the paper's table with the paper's loss
        args.recipe = "paper" if args.data == "synthetic" and args.preset == "paper" else "default"
    output = Path(args.output)
    try:  # fail now, not after all the training, if the results cannot be written
        output.mkdir(parents=True, exist_ok=True)
        probe = output / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise SystemExit(f"lightning-mmloss compare: cannot write to --output {str(output)!r}: {err}") from err
    _check_options(args, fusions)  # every option, before the first run
    done = _previous_rows(args, output)
    lock = output / ".compare.lock"
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        raise SystemExit(
            f"lightning-mmloss compare: another compare is writing to {str(output)!r} (or one was killed and left "
            f"{str(lock)!r}: remove it); give another --output"
        ) from None
    os.close(fd)
    try:
        return _run_all(args, fusions, output, done)
    finally:
        lock.unlink(missing_ok=True)


def _check_options(args: argparse.Namespace, fusions: Sequence[str]) -> None:
    """Build every fusion's model once on seed 0's data: a bad option fails now, not in the 7th run."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dm = _datamodule(args, 0)
        dm.setup("fit")
        for fusion in fusions:
            try:
                _model(args, dm, fusion) if args.model_class is not None else _classifier(args, dm, fusion)
            except (ValueError, TypeError) as err:
                raise SystemExit(f"lightning-mmloss compare: fusion {fusion!r} cannot be built: {err}") from err


def _config(args: argparse.Namespace) -> dict[str, Any]:
    """What the rows of one ``--output`` must share to be one table (not the seeds or fusions to run)."""
    skip = {"output", "resume", "overwrite", "seeds", "fusions", "threads", "model_class", "data_class"}
    return {k: v for k, v in sorted(vars(args).items()) if k not in skip}


def _previous_rows(args: argparse.Namespace, output: Path) -> list[dict[str, Any]]:
    """Finished rows to keep (``--resume``), after checking that they belong to this comparison."""
    results, config_path = output / "results.csv", output / "config.json"
    config = json.dumps(_config(args), sort_keys=True, default=str)
    if args.overwrite:
        for path in (results, config_path, output / "results.md", output / "results.png"):
            path.unlink(missing_ok=True)
        shutil.rmtree(output / "tensorboard", ignore_errors=True)
        shutil.rmtree(output / "robustness", ignore_errors=True)
    elif results.exists() and not args.resume:
        raise SystemExit(
            f"lightning-mmloss compare: {str(results)!r} exists; pass --resume to keep its finished runs and run the "
            "others, --overwrite to start over, or another --output"
        )
    rows: list[dict[str, Any]] = []
    if args.resume and results.exists():
        saved = config_path.read_text() if config_path.exists() else None
        if saved is not None and saved != config:
            raise SystemExit(
                f"lightning-mmloss compare: --resume into {str(output)!r}, whose runs were made with other options "
                f"({config_path}); give the same options, or another --output"
            )
        rows = read_rows(results)
    config_path.write_text(config)
    return rows


def _run_all(
    args: argparse.Namespace, fusions: Sequence[str], output: Path, done: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Train what is not in ``done``, writing ``results.csv`` after every run; then the tables and files."""
    # Small heads on 2 cores: one thread per run is faster than two that contend (measured: a
    # 10-epoch run took 1.0 s with one thread and 14 s with two on a loaded machine).
    torch.set_num_threads(args.threads or 1)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning.fabric").setLevel(logging.ERROR)
    console = Console()
    if args.data_class is not None:
        what = args.data_class.__name__
    else:
        what = f"synthetic '{args.scenario}' ({args.preset})" if args.data == "synthetic" else "UCI mfeat"
    if args.model_class is not None:
        what = f"{args.model_class.__name__} on {what}"
    if args.data == "uci-mfeat" and args.corrupt_fraction:
        how = "replaced by noise" if args.corruption == "noise" else "swapped with another class's"
        what += f", {args.corrupt_views} views of {args.corrupt_fraction:.0%} of instances {how}"
    title = f"{what}: {len(fusions)} fusions x {args.seeds} seeds, {args.epochs} epochs"
    if "mm" in fusions and args.recipe != "default":
        title += f", mm recipe '{args.recipe}'"
    console.print(f"[bold]lightning-mmloss compare[/bold]: {title}")
    finished = {(r["fusion"], r["seed"]): r for r in done}
    rows: list[dict[str, Any]] = []
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as progress, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's hints about workers and logging intervals
        task = progress.add_task("runs", total=len(fusions) * args.seeds)
        epochs = progress.add_task("epochs", total=args.epochs)  # inside the current run
        for seed in range(args.seeds):
            for fusion in fusions:
                if (fusion, seed) in finished:  # --resume: finished before
                    rows.append(finished[(fusion, seed)])
                    progress.advance(task)
                    continue
                progress.update(task, description=f"{fusion:>7} seed {seed}")
                progress.reset(epochs, total=args.epochs, description="   epoch")
                # an interrupted run of this fusion and seed left its logs: one event file per folder
                shutil.rmtree(output / "tensorboard" / fusion / f"seed{seed}", ignore_errors=True)
                row = run_one(args, fusion, seed, output, callbacks=[_EpochProgress(progress, epochs)])
                rows.append(row)
                write_rows(rows, output)  # every finished run is on disk at once
                progress.advance(task)
                progress.console.print(f"  {fusion:>7} seed {seed}: test acc {row['test_acc']:.3f}")
    modalities = [k[: -len("_acc")] for k in rows[0] if k.endswith("_acc") and k != "test_acc"]
    header, table_rows = summarise(rows, modalities)
    # two console tables (fusion-level, then per modality) so that both fit a terminal
    per_mod = {f"{m} acc" for m in modalities} | {f"{m} ECE" for m in modalities}
    main_cols = [i for i, h in enumerate(header) if h not in per_mod]
    mod_cols = [0] + [i for i, h in enumerate(header) if h in per_mod]
    console.print(_table(title, [header[i] for i in main_cols], [[r[i] for i in main_cols] for r in table_rows]))
    heads_header = [header[i] for i in mod_cols]
    heads_rows = [[r[i] for i in mod_cols] for r in table_rows]
    if len(mod_cols) - 1 > len(table_rows):  # more head columns than fusions: heads as rows (fits 80 columns)
        heads_rows = [[h, *(r[j] for r in heads_rows)] for j, h in enumerate(heads_header) if j > 0]
        heads_header = ["head", *(r[0] for r in table_rows)]
    console.print(_table("per-modality heads (test split)", heads_header, heads_rows))
    t_header, t_table = summarise_trust(rows, modalities)
    if t_table:
        console.print(_table("which view to trust (mm, test split)", t_header, t_table, TRUST_NOTE))
    r_header, r_table = summarise_robustness(rows)
    if r_table:
        console.print(_table("robustness (test split)", r_header, r_table, ROBUSTNESS_NOTE))
    write_outputs(rows, modalities, output, title)
    console.print(f"wrote {output / 'results.csv'}, {output / 'results.md'}, {output / 'results.png'}")
    return rows
