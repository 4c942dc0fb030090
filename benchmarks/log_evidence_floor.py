"""Why the log-evidence is floored (issue 19): one UCI view noised far beyond anything seen in training.

Trains the default MultiModal loss on clean UCI Multiple Features (the settings of ``make figures``'
robustness picture: 40 epochs, seed 0) once per floor of the log-evidence term,
``log(p + floor)``, and once without the term (``log_evidence=0``, the old default); then, on the
test split, adds Gaussian noise of 16x its standard deviation to one view at a time and prints the
fused accuracy. ``--floors 0`` means (almost) no floor, the first form of the term: the option
``log_evidence_floor`` at 1.2e-38, so that ``log p`` runs down to about -87 nats.

    python benchmarks/log_evidence_floor.py --floors 0,1e-4,1e-2
"""

from __future__ import annotations

import argparse
import logging
import warnings
from pathlib import Path

import lightning as L
import torch

from lightning_mmloss.experiments.classifier import MultiModalClassifier
from lightning_mmloss.experiments.data import UCIMultipleFeaturesDataModule

ROOT = Path(__file__).resolve().parents[1]
#: "no floor": the smallest normal float32, so that log(p + floor) is log p down to about -87 nats
NO_FLOOR = 1.2e-38


def run(floor: float | None, data_dir: str, level: float) -> tuple[float, list[float]]:
    """Clean and per-view noised test accuracy for one floor (``None``: without the term)."""
    L.seed_everything(0, verbose=False)
    dm = UCIMultipleFeaturesDataModule(data_dir, seed=0)
    dm.setup("fit")
    options = {"log_evidence": 0.0} if floor is None else {"log_evidence_floor": floor or NO_FLOOR}
    model = MultiModalClassifier(
        dm.modalities, dm.input_dims, 10, hidden=[128, 32], proxies_per_class=10, loss_options=options
    )
    quiet = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
    L.Trainer(max_epochs=40, enable_model_summary=False, deterministic=True, **quiet).fit(model, dm)
    batch, g = dm.splits["test"].as_batch(), torch.Generator().manual_seed(0)
    y = batch["target"]

    def acc(b: dict) -> float:
        with torch.no_grad():
            return float((model.mm_loss.fuse(model.stacked_logits(b)).preds == y).float().mean())

    noised = []
    for name in dm.modalities:
        x = batch[name]
        noised.append(acc({**batch, name: x + level * x.std() * torch.randn(x.shape, generator=g)}))
    return acc(batch), noised


def main() -> None:
    """Print one line per floor."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--floors", default="0,1e-4,1e-2", help="comma-separated; 0 = no floor")
    p.add_argument("--level", type=float, default=16.0, help="noise std in units of the view's std")
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "uci-mfeat"))
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    print(f"UCI clean training, seed 0; test accuracy clean and with one view at {args.level}x noise")
    for floor in [None, *(float(f) for f in args.floors.split(","))]:
        clean, noised = run(floor, args.data_dir, args.level)
        what = "log_evidence=0" if floor is None else ("no floor" if floor == 0 else f"floor {floor:g}")
        print(f"{what:>15}: clean {clean:.4f}  noised " + " ".join(f"{a:.3f}" for a in noised))


if __name__ == "__main__":
    main()
