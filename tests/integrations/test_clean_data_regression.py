"""Issue 19: on clean real views the default MultiModal loss no longer trails late fusion.

A fixed-seed case from the design runs (benchmarks/README.md, Q5): scikit-learn's digits cut into
four quadrant views (``benchmarks/digits_views.py``), the design-decision settings, seed 2. The
fused logit of the old default (``log_evidence=0``: ``o = s + h``, a sum of the heads'
probabilities) lets mildly wrong heads outvote a sure right one and trails late fusion by about
three test instances; with the heads' log-evidence in the fused logit (the default since issue
19) it does not trail, and its heads stay close to the same heads trained alone.
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


@pytest.mark.filterwarnings("ignore::UserWarning")  # Lightning's small-data and worker hints
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_default_no_longer_trails_late_fusion_on_clean_views(tmp_path: Path) -> None:
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the design runs' setting: the fixed-seed numbers below are its own
    try:
        late, _ = _fit(tmp_path, "late", 2)
        _, alone = _fit(tmp_path, "independent", 2)
        old, _ = _fit(tmp_path, "mm", 2, loss_options={"log_evidence": 0.0})
        new, heads = _fit(tmp_path, "mm", 2)
    finally:
        torch.set_num_threads(threads)
    n = 360  # test instances: one is 0.0028
    assert old <= late - 2 / n, (old, late)  # the old default trails (issue 19's complaint)
    assert new >= late, (new, late)  # the default does not
    # and every head stays an honest classifier, close to the same head trained alone: this seed
    # 0 to 3.1 points below (1.5 on average); over 5 seeds 1.3 to 2.2, the old default's 3.1 to 3.9
    deficits = [a - h for h, a in zip(heads, alone, strict=True)]
    assert max(deficits) <= 0.04 and sum(deficits) / len(deficits) <= 0.02, (heads, alone)
