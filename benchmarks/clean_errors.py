"""Where the MultiModal loss loses to late fusion on clean data (issue 19): the instances they disagree on.

Trains the same heads with ``late`` and with ``mm`` (optionally with another ``log_evidence``) on
clean UCI Multiple Features or on the quadrant views of scikit-learn's digits
(``digits_views.py``) for several seeds and, on the test split, counts the instances each fusion
gets right and the other wrong; for those it reports how many heads are right, how confident the
right and the wrong heads are, and whether the sum or the product of the heads' beliefs names the
label (for mm's own heads: if their product is right, the fused decision rule lost the instance;
if not, the heads did). The hypothesis it tests: ``h`` sums the heads' probabilities (a vote of
at most 2 per head), so two mildly wrong heads outvote one sure right head, where late fusion's
sum of logits (a product of the heads' beliefs) does not.

    python benchmarks/clean_errors.py --seeds 5 [--data digits] [--log-evidence 0]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import warnings
from pathlib import Path

import lightning as L
import torch

from lightning_mmloss.experiments.classifier import MultiModalClassifier
from lightning_mmloss.experiments.data import UCIMultipleFeaturesDataModule

ROOT = Path(__file__).resolve().parents[1]


def train(
    fusion: str, seed: int, data: str, data_dir: str, log_evidence: float | None
) -> tuple[MultiModalClassifier, dict]:
    """One fit (60 epochs, the design-decision settings); returns the model and the test batch."""
    L.seed_everything(seed, verbose=False)
    if data == "digits":
        from digits_views import DigitsViewsDataModule  # beside this script; needs scikit-learn

        dm = DigitsViewsDataModule(seed=seed)
    else:
        dm = UCIMultipleFeaturesDataModule(data_dir, seed=seed)
    dm.setup("fit")
    options = {"log_evidence": log_evidence} if fusion == "mm" and log_evidence is not None else None
    model = MultiModalClassifier(
        dm.modalities, dm.input_dims, 10, fusion=fusion, hidden=[128, 32], proxies_per_class=10, loss_options=options
    )
    quiet = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
    L.Trainer(max_epochs=60, deterministic=True, enable_model_summary=False, **quiet).fit(model, dm)
    return model, dm.splits["test"].as_batch()


def main() -> None:
    """Print the disagreement table."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "uci-mfeat"))
    p.add_argument("--data", choices=("uci", "digits"), default="uci")
    p.add_argument("--log-evidence", type=float, default=None, help="mm's log_evidence (default: the library's)")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    print("seed | mm acc | late acc | late right, mm wrong | mm right, late wrong")
    lost: list[dict[str, float]] = []
    for seed in range(args.seeds):
        (mm, batch), (late, _) = (train(f, seed, args.data, args.data_dir, args.log_evidence) for f in ("mm", "late"))
        with torch.no_grad():
            u = mm.stacked_logits(batch)
            mm_pred = mm.mm_loss.fuse(u).preds
            late_pred = late.fused_logits(late.stacked_logits(batch)).argmax(1)
        y = batch["target"]
        only_late = (late_pred == y) & (mm_pred != y)
        only_mm = (mm_pred == y) & (late_pred != y)
        acc = [float((pred == y).float().mean()) for pred in (mm_pred, late_pred)]
        print(f"{seed} | {acc[0]:.3f} | {acc[1]:.3f} | {int(only_late.sum())} | {int(only_mm.sum())}")
        p = u.softmax(-1)
        pl = late.stacked_logits(batch).detach().softmax(-1)
        for i in only_late.nonzero().squeeze(1).tolist():
            heads = p[i].argmax(-1)
            right = heads == y[i]
            conf = p[i].max(-1).values
            lost.append(
                {
                    "heads_right": float(right.sum()),
                    "conf_right": float(conf[right].mean()) if right.any() else float("nan"),
                    "conf_wrong": float(conf[~right].mean()) if (~right).any() else float("nan"),
                    # the product of the heads' beliefs (late fusion's rule) names the label
                    "log_rule_right": float(p[i].log().sum(0).argmax() == y[i]),
                    "sum_rule_right": float(p[i].sum(0).argmax() == y[i]),
                    # the same rules on late fusion's heads
                    "late_heads_right": float((pl[i].argmax(-1) == y[i]).sum()),
                    "late_log_rule_right": float(pl[i].log().sum(0).argmax() == y[i]),
                }
            )
    if lost:
        print(f"\ninstances late fusion gets right and mm wrong, over {args.seeds} seeds: {len(lost)}")
        keys = ("heads_right", "conf_right", "conf_wrong", "log_rule_right", "sum_rule_right")
        for key in (*keys, "late_heads_right", "late_log_rule_right"):
            vals = [r[key] for r in lost if r[key] == r[key]]
            print(f"  mean {key}: {statistics.mean(vals):.3f}" if vals else f"  {key}: n/a")


if __name__ == "__main__":
    main()
