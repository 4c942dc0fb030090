"""Issues 19 and 26: on clean real views the default's decision follows the heads' evidence, fitted.

scikit-learn's digits cut into four quadrant views (``benchmarks/digits_views.py``), the
design-decision settings (benchmarks/README.md, Q5 and Q6), pinned on a mean over seeds. The
paper's decision ``o = s + h`` (a sum of the heads' probabilities) lets mildly wrong heads outvote
a sure right one; the default fits the weight of the heads' log-evidence in the decision, with the
temperature, on the validation split (issue 26), which recovers what the fixed weight of issue 19
did, and its heads stay honest classifiers close to the same heads trained alone.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from benchmarks.digits_views import DigitsViewsDataModule
from lightning_mmloss.experiments.classifier import MultiModalClassifier
from tests.helpers.models import trainer as make_trainer


def _fit(tmp_path: Path, fusion: str, seed: int, **kwargs: Any) -> tuple[float, list[float]]:
    """Fused and per-head test accuracy after the design-decision recipe (60 epochs)."""
    L.seed_everything(seed, verbose=False)
    dm = DigitsViewsDataModule(seed=seed)
    dm.setup("fit")
    model = MultiModalClassifier(
        dm.modalities, dm.input_dims, dm.num_classes, fusion=fusion, hidden=[128, 32], proxies_per_class=10, **kwargs
    )
    trainer = make_trainer(tmp_path, max_epochs=60)
    trainer.fit(model, dm)
    batch = dm.splits["test"].as_batch()
    with torch.no_grad():
        u = model.stacked_logits(batch)
        fused = model.fuse_unimodal(u)[0].argmax(-1)
    y = batch["target"]
    heads = [float((u[:, m].argmax(-1) == y).float().mean()) for m in range(u.shape[1])]
    return float((fused == y).float().mean()), heads


SEEDS = (0, 1, 2)


@pytest.mark.filterwarnings("ignore::UserWarning")  # Lightning's small-data and worker hints
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_the_fitted_decision_recovers_late_fusions_accuracy_on_clean_views(tmp_path: Path) -> None:
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the design runs' setting
    runs: dict[str, list[float]] = {"late": [], "paper_decision": [], "default": [], "best_head": [], "deficit": []}
    try:
        for seed in SEEDS:
            runs["late"].append(_fit(tmp_path, "late", seed)[0])
            _, alone = _fit(tmp_path, "independent", seed)
            # the same training, the decision s + h (temperature only): what the fit adds
            runs["paper_decision"].append(_fit(tmp_path, "mm", seed, calibrate="temperature")[0])
            fused, heads = _fit(tmp_path, "mm", seed)
            runs["default"].append(fused)
            runs["best_head"].append(max(heads))
            runs["deficit"].append(max(a - h for h, a in zip(heads, alone, strict=True)))
    finally:
        torch.set_num_threads(threads)
    mean = {k: sum(v) / len(v) for k, v in runs.items()}
    # measured (these 3 seeds): late 97.69, s + h 95.83, the default 97.22 (5 seeds in Q6: the fit
    # adds 1.48 +- 0.46 points to s + h, and trails late fusion by 0.39 +- 0.19)
    assert mean["default"] - mean["paper_decision"] >= 0.005, runs  # the fit recovers the heads' evidence
    assert mean["default"] >= mean["late"] - 0.01, runs
    assert mean["default"] > mean["best_head"], runs  # never below its own best head on average
    # every head an honest classifier close to the same head trained alone; the largest deficit of a
    # run was 4.4, 4.4 and 6.4 points (Q6, 5 seeds: the worst head 3.8 points below on average)
    assert mean["deficit"] <= 0.06 and max(runs["deficit"]) <= 0.08, runs
