"""Tests for the four mutants that survived issue 17's mutation run of the suite (item 18)."""

from __future__ import annotations

import csv
import statistics
from pathlib import Path

import torch

from lightning_mmloss import MultiModalLoss
from tests.helpers.models import ThreeHeadNet


def test_a_double_module_on_float32_logits_computes_in_float64() -> None:
    crit = MultiModalLoss(3, 2, 2).double()
    u, y = torch.randn(5, 2, 3), torch.tensor([0, 1, 2, 0, 1])
    assert crit(u, y).dtype == torch.float64
    assert crit.fuse(u).logits.dtype == torch.float64


def test_class_init_puts_each_class_proxies_on_its_own_columns() -> None:
    torch.manual_seed(0)
    C, M, K = 4, 3, 5
    w = MultiModalLoss(C, M, K).weight.detach().view(C, K, M, C)  # proxy (c, k), column (m, c')
    own = w[torch.arange(C), :, :, torch.arange(C)]  # (C, K, M): the class's own columns
    others = w.clone()
    others[torch.arange(C), :, :, torch.arange(C)] = float("nan")
    assert bool((own > 0.5).all())  # 1 + a tenth of nn.Linear's bound
    assert float(others.nan_to_num(0).abs().max()) < 0.1 / (M * C) ** 0.5 + 1e-6


def test_proxy_weight_decay_zero_is_zero_not_the_model_s() -> None:
    groups = ThreeHeadNet().multimodal_param_groups(lr=1e-3, weight_decay=0.1, proxy_weight_decay=0.0)
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0


def test_compare_tables_report_the_mean_of_the_runs(tmp_path: Path) -> None:
    from lightning_mmloss.experiments.cli import main

    out = tmp_path / "o"
    args = ["--preset", "tiny", "--fusions", "late", "--seeds", "2", "--epochs", "2", "--hidden", "8"]
    main(["compare", *args, "--output", str(out)])
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    line = next(r for r in (out / "results.md").read_text().splitlines() if r.startswith("| late"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[2] == ""  # late fusion against itself: no paired difference
    for column, key in ((1, "test_acc"), (3, "test_ece")):
        mean = statistics.mean(float(r[key]) for r in rows)
        assert cells[column].startswith(f"{mean:.3f} ± "), (key, cells[column], mean)
