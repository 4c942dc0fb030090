"""Render the pictures in docs/figures from code: run ``make figures`` (about a minute on CPU).

- ``subgroup_profile.png`` and ``agreement_matrix.png``: what SubgroupMonitor logs to
  TensorBoard, for a three-head model trained on the synthetic ``instance`` scenario;
- ``slice_reliability.png``: SubgroupMonitor's heads x slices heatmap (``slices=...``) on UCI
  Multiple Features with 3 of 6 views noised for half of the instances (clean vs noised
  instances), from ``../shared/data/uci-mfeat`` (skipped with a note when it is missing);
- ``robustness_uci.png``: the robustness report (``robustness_report``) of the MultiModal loss
  against late fusion on clean UCI Multiple Features (each view dropped, and noised at 0-16x
  its standard deviation), from the same data;
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

from lightning_mmloss import SubgroupMonitor
from lightning_mmloss.experiments.classifier import MultiModalClassifier
from lightning_mmloss.experiments.compare import _plot
from lightning_mmloss.experiments.data import SyntheticMultimodalDataModule, UCIMultipleFeaturesDataModule
from lightning_mmloss.functional import modality_agreement, subgroup_statistics
from lightning_mmloss.plotting import agreement_matrix_figure, slice_reliability_figure, subgroup_profile_figure
from lightning_mmloss.robustness import robustness_report

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "figures"
UCI = ROOT.parent / "shared" / "data" / "uci-mfeat"
LEVELS = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0)  # noise std / input std: up to a view that is all noise


def noised_or_clean(batch: dict) -> list[str]:
    """The slice of the UCI figure: does the instance have noised views?"""
    return ["noised" if bad else "clean" for bad in (~batch["informative"]).any(1).tolist()]


def uci_slices() -> None:
    """Train on UCI with half of the instances noised; the monitor's slice heatmap on the test split."""
    dm = UCIMultipleFeaturesDataModule(str(UCI), corrupt_fraction=0.5, seed=0)
    dm.setup()
    model = MultiModalClassifier(dm.modalities, dm.input_dims, 10, hidden=[128, 32], proxies_per_class=10)
    quiet = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
    L.Trainer(max_epochs=40, enable_model_summary=False, **quiet).fit(model, dm)
    monitor = SubgroupMonitor(slices={"instance": noised_or_clean}, print_summary=False, images_every_n_epochs=None)
    tester = L.Trainer(callbacks=[monitor], enable_model_summary=False, **quiet)
    tester.test(model, dm, verbose=False)
    heads, values = [*dm.modalities, "fused"], ["clean", "noised"]
    m = monitor.last_metrics
    acc, ece = (
        torch.tensor([[m[f"test/reliability/{h}/{k}/instance={v}"] for v in values] for h in heads])
        for k in ("acc", "ece")
    )
    slice_reliability_figure(acc, ece, heads, values, "instance").savefig(OUT / "slice_reliability.png", dpi=110)


def uci_robustness() -> None:
    """MultiModal loss vs late fusion on clean UCI, each view dropped and noised on the test split."""
    quiet = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
    reports = {}
    for fusion in ("mm", "late"):
        L.seed_everything(0, verbose=False)
        dm = UCIMultipleFeaturesDataModule(str(UCI), seed=0)
        dm.setup()
        model = MultiModalClassifier(
            dm.modalities, dm.input_dims, 10, fusion=fusion, hidden=[128, 32], proxies_per_class=10
        )
        L.Trainer(max_epochs=40, enable_model_summary=False, **quiet).fit(model, dm)
        reports[fusion] = robustness_report(model, dm.test_dataloader(), levels=LEVELS, seed=0)
    mm, late = reports["mm"], reports["late"]
    fig = mm.figure(late, title="UCI Multiple Features (clean training), test split: MultiModal loss (solid) vs late")
    fig.savefig(OUT / "robustness_uci.png", dpi=110)
    rel, eff = mm.relative_robustness(), mm.effective_robustness(late)
    print("relative robustness (mm):", {m: round(v, 3) for m, v in rel.items()})
    print("effective robustness vs late:", {m: round(v, 3) for m, v in eff.items()})
    print("clean acc mm / late:", round(mm.clean()["acc"], 3), round(late.clean()["acc"], 3))
    for r in mm.rows:
        if r["condition"] == "drop":
            other = next(x for x in late.rows if x["condition"] == "drop" and x["modalities"] == r["modalities"])
            print(f"without {r['modalities']}: mm {r['acc']:.3f} late {other['acc']:.3f}")


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
    if UCI.is_dir():
        uci_slices()
        uci_robustness()
    else:
        print(f"slice_reliability.png: skipped, no UCI data at {UCI}")
    print("wrote", ", ".join(sorted(p.name for p in OUT.glob("*.png"))))


if __name__ == "__main__":
    main()
