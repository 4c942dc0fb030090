"""Render the pictures in docs/figures from code: run ``make figures`` (about a minute on CPU).

- ``subgroup_profile.png`` and ``agreement_matrix.png``: what SubgroupMonitor logs to
  TensorBoard, for a three-head model trained on the synthetic ``instance`` scenario;
- ``compare_ehh.png``: the comparison plot of ``lightning-mmloss compare`` for the ``ehh``
  table in benchmarks/README.md, re-drawn from ``benchmarks/results/ehh.csv``.
"""

from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path

import lightning as L
import torch

from lightning_mmloss.experiments.classifier import MultiModalClassifier
from lightning_mmloss.experiments.compare import _plot
from lightning_mmloss.experiments.data import SyntheticMultimodalDataModule
from lightning_mmloss.functional import modality_agreement, subgroup_statistics
from lightning_mmloss.plotting import agreement_matrix_figure, subgroup_profile_figure

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "figures"


def main() -> None:
    """Train the small model and write the three PNGs."""
    warnings.filterwarnings("ignore")
    OUT.mkdir(parents=True, exist_ok=True)
    L.seed_everything(0, verbose=False)
    dm = SyntheticMultimodalDataModule("instance", num_classes=3)
    dm.setup()
    model = MultiModalClassifier(dm.modalities, dm.input_dims, 3, fusion="mm", hidden=[128, 32], proxies_per_class=6)
    L.Trainer(max_epochs=30, logger=False, enable_checkpointing=False, enable_progress_bar=False).fit(model, dm)
    test = dm.splits["test"].as_batch()
    with torch.no_grad():
        out = model.mm_loss.fuse(model.stacked_logits(test))
    stats = subgroup_statistics(out.subgroup, out.preds, test["target"], out.unimodal_probs, out.modality_weights, 3, 6)
    subgroup_profile_figure(stats["profile"], stats["occupancy"], dm.modalities, annotate=True).savefig(
        OUT / "subgroup_profile.png", dpi=110
    )
    agreement = modality_agreement(out.unimodal_probs, out.probs, test["target"])
    agreement_matrix_figure(agreement["pairwise"], dm.modalities).savefig(OUT / "agreement_matrix.png", dpi=110)

    with open(ROOT / "benchmarks" / "results" / "ehh.csv") as f:
        rows = [
            {k: v if k == "fusion" else (float(v) if v else math.nan) for k, v in r.items()} for r in csv.DictReader(f)
        ]
    modalities = [k[: -len("_acc")] for k in rows[0] if k.endswith("_acc") and k != "test_acc"]
    fusions, seeds = len({r["fusion"] for r in rows}), len({r["seed"] for r in rows})
    title = f"synthetic 'ehh' (default): {fusions} fusions x {seeds} seeds, 60 epochs"
    _plot(rows, modalities, OUT / "compare_ehh.png", title)
    print("wrote", ", ".join(sorted(p.name for p in OUT.glob("*.png"))))


if __name__ == "__main__":
    main()
