"""``compare --model ... --data ...`` and ``fit --model ...`` on classes defined outside the package (issue 16)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lightning_mmloss.experiments.cli import main

ROOT = Path(__file__).resolve().parents[2]

USER_MODULE = '''
import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_mmloss import MultiModalLossMixin


class TwoViewData(L.LightningDataModule):
    """The data-module contract: `modalities`, `num_classes` (and here `input_dims`) after setup."""

    def __init__(self, n: int = 240, seed: int = 0):
        super().__init__()
        self.n, self.seed = n, seed
        self.modalities, self.num_classes, self.input_dims = ["left", "right"], 3, {"left": 5, "right": 4}

    def setup(self, stage=None):
        g = torch.Generator().manual_seed(self.seed)
        y = torch.randint(0, 3, (self.n,), generator=g)
        left = torch.randn(self.n, 5, generator=g) + 2.0 * nn.functional.one_hot(y, 5)[:, :5].float()
        right = torch.randn(self.n, 4, generator=g)  # noise
        self.sets = [TensorDataset(left[i::3], right[i::3], y[i::3]) for i in range(3)]

    def _loader(self, i):
        return DataLoader(self.sets[i], batch_size=40, collate_fn=lambda b: {
            "left": torch.stack([x[0] for x in b]), "right": torch.stack([x[1] for x in b]),
            "target": torch.stack([x[2] for x in b])})

    def train_dataloader(self):
        return self._loader(0)

    def val_dataloader(self):
        return self._loader(1)

    def test_dataloader(self):
        return self._loader(2)


class MyNet(MultiModalLossMixin, L.LightningModule):
    def __init__(self, modalities, num_classes, input_dims, fusion="mm", width=8):
        super().__init__()
        self.heads = nn.ModuleDict({m: nn.Sequential(nn.Linear(input_dims[m], width), nn.ReLU(),
                                                     nn.Linear(width, num_classes)) for m in modalities})
        self.configure_multimodal(modalities, num_classes, 3, fusion=fusion,
                                  **({"ogm_gaussian": False} if fusion == "ogm_ge" else {}))

    def unimodal_logits(self, batch):
        return {m: h(batch[m]) for m, h in self.heads.items()}

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


class IgnoresFusion(MyNet):
    def __init__(self, modalities, num_classes, input_dims, fusion="mm"):
        super().__init__(modalities, num_classes, input_dims, fusion="mm")
'''


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "my_user_pkg.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_user_pkg"


def test_compare_on_a_user_model_and_data_module(tmp_path: Path, user_module: str) -> None:
    out = tmp_path / "cmp"
    args = ["compare", "--model", f"{user_module}.MyNet", "--data", f"{user_module}.TwoViewData"]
    args += ["--model.width", "6", "--data.n=180", "--fusions", "mm,late,ogm_ge", "--seeds", "2"]
    main([*args, "--epochs", "3", "--output", str(out)])
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["fusion"], r["seed"]) for r in rows] == [(f, s) for s in "01" for f in ("mm", "late", "ogm_ge")]
    for r in rows:
        for key in ("test_acc", "test_ece", "left_acc", "right_acc", "left_purity_gap", "flipped_heads"):
            assert 0.0 <= float(r[key]) <= 2.0, (key, r)
    text = (out / "results.md").read_text()
    assert "MyNet on TwoViewData" in text
    assert (out / "results.png").stat().st_size > 0
    # issue 26: which view to trust without ground truth, and the paired difference to late fusion
    for r in (r for r in rows if r["fusion"] == "mm"):
        weights = [float(r[f"{m}_weight"]) for m in ("left", "right")]
        assert sum(weights) == pytest.approx(1.0, abs=1e-5)  # weights of an instance sum to one
        assert sum(float(r[f"{m}_top"]) for m in ("left", "right")) == pytest.approx(1.0)
        assert all(-1.0 <= float(r[f"{m}_shapley"]) <= 1.0 for m in ("left", "right"))
    assert "## Which view to trust (mm, test split)" in text and "| left |" in text
    late = {r["seed"]: float(r["test_acc"]) for r in rows if r["fusion"] == "late"}
    diffs = [100 * (float(r["test_acc"]) - late[r["seed"]]) for r in rows if r["fusion"] == "mm"]
    mean, se = sum(diffs) / 2, abs(diffs[0] - diffs[1]) / 2  # two seeds: stdev / sqrt(2) = |a - b| / 2
    assert "| mm | " in text and f"{mean:+.2f} ± {se:.2f}" in text


def test_user_data_with_the_built_in_model(tmp_path: Path, user_module: str) -> None:
    out = tmp_path / "cmp"
    args = ["compare", "--data", f"{user_module}.TwoViewData", "--fusions", "mm,sum", "--seeds", "1"]
    main([*args, "--epochs", "2", "--hidden", "8", "--output", str(out)])
    with open(out / "results.csv") as f:
        assert [r["fusion"] for r in csv.DictReader(f)] == ["mm", "sum"]


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--model", "my_user_pkg.Nope"], "cannot import --model"),
        (["--model", "my_user_pkg.TwoViewData"], "not a model built with MultiModalLossMixin"),
        (["--model.width", "3"], "configure a model of your own"),
        (["--data", "nonsense"], None),
        (
            ["--model", "my_user_pkg.IgnoresFusion", "--data", "my_user_pkg.TwoViewData", "--fusions", "late"],
            "must pass its `fusion`",
        ),
    ],
)
def test_compare_user_classes_bad_input(
    tmp_path: Path, user_module: str, extra: list[str], match: str | None, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as err:
        main(["compare", *extra, "--seeds", "1", "--epochs", "1", "--output", str(tmp_path / "o")])
    said = str(err.value) + capsys.readouterr().err  # our message, or argparse's usage error on stderr
    assert err.value.code != 0
    if match is not None:
        assert match in said, said


def test_fit_takes_a_user_model_class(tmp_path: Path, user_module: str) -> None:
    """From the console (a subprocess), as users run it."""
    args = ["fit", "--model", f"{user_module}.MyNet", "--model.fusion", "late", "--data", f"{user_module}.TwoViewData"]
    args += ["--trainer.max_epochs", "1", "--trainer.logger", "false", "--trainer.enable_checkpointing", "false"]
    args += ["--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_mmloss.experiments.cli", *args],
        capture_output=True,
        text=True,
        timeout=170,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "max_epochs=1` reached" in proc.stderr + proc.stdout
    assert "not recommended to provide both args" not in proc.stderr
