"""``PredictionWriter``: predictions a user can join back to their data (issue 18 part 3)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from lightning_mmloss import PredictionWriter
from tests.helpers.models import MODALITIES, SyntheticViews, ThreeHeadNet, trainer


class _Identified(Dataset):
    """SyntheticViews with an ``id`` per instance (an int, or a str such as a file name)."""

    def __init__(self, n: int, seed: int, offset: int, as_str: bool = False, with_target: bool = True) -> None:
        self.base, self.offset, self.as_str, self.with_target = (
            SyntheticViews(n, seed=seed),
            offset,
            as_str,
            with_target,
        )

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = dict(self.base[i])
        item["id"] = f"img_{self.offset + i:04d}.png" if self.as_str else torch.tensor(self.offset + i)
        if not self.with_target:
            del item["target"]
        return item


def test_two_predict_loaders_read_back_with_pandas(tmp_path: Path) -> None:
    model = ThreeHeadNet()
    first = DataLoader(_Identified(40, seed=1, offset=1000), batch_size=16)
    second = DataLoader(_Identified(24, seed=2, offset=5000), batch_size=16)
    path = tmp_path / "out" / "predictions.csv"
    t = trainer(tmp_path, callbacks=[PredictionWriter(path)])
    expected = t.predict(model, [first, second])

    df = pd.read_csv(path)
    assert len(df) == 64 and df["dataloader_idx"].tolist() == [0] * 40 + [1] * 24
    assert df["id"].tolist() == [*range(1000, 1040), *range(5000, 5024)]
    targets = torch.cat([first.dataset.base.target, second.dataset.base.target])
    assert df["target"].tolist() == targets.tolist()
    probs = torch.cat([b["probs"] for loader in expected for b in loader])
    unimodal = torch.cat([b["unimodal_probs"] for loader in expected for b in loader])
    weights = torch.cat([b["modality_weights"] for loader in expected for b in loader])
    assert df["pred"].tolist() == probs.argmax(1).tolist()
    assert torch.tensor(df[["prob_0", "prob_1", "prob_2"]].to_numpy()).float() == pytest.approx(probs, abs=1e-7)
    assert torch.tensor(df["video_prob_2"].to_numpy()).float() == pytest.approx(unimodal[:, 1, 2], abs=1e-7)
    assert torch.tensor(df[[f"weight_{m}" for m in MODALITIES]].to_numpy()).float() == pytest.approx(weights)
    assert df["subgroup"].between(0, 3 * 4 - 1).all()
    pt = torch.load(path.with_suffix(".pt"))
    assert pt["unimodal_probs"].shape == (64, 3, 3) and torch.equal(pt["probs"], probs)


def test_string_ids_no_target_shapley_and_class_names(tmp_path: Path) -> None:
    model = ThreeHeadNet()
    loader = DataLoader(_Identified(20, seed=3, offset=0, as_str=True, with_target=False), batch_size=8)
    path = tmp_path / "p.csv"
    writer = PredictionWriter(path, shapley=True, class_names=["cat", "dog", "owl"])
    trainer(tmp_path, callbacks=[writer]).predict(model, loader, return_predictions=False)
    df = pd.read_csv(path)
    assert df["id"].tolist() == [f"img_{i:04d}.png" for i in range(20)]
    assert "target" not in df and {"prob_cat", "audio_prob_owl"} <= set(df)
    batch = next(iter(DataLoader(loader.dataset, batch_size=20)))
    with torch.no_grad():
        out = model.multimodal_step(batch, with_target=False)
        phi = model.mm_loss.shapley(out.unimodal_logits)
    got = torch.tensor(df[[f"shapley_{m}" for m in MODALITIES]].to_numpy()).float()
    assert got == pytest.approx(phi, abs=1e-6)


def test_position_ids_without_an_id_key(tmp_path: Path) -> None:
    model = ThreeHeadNet()
    loader = DataLoader(SyntheticViews(30, seed=1), batch_size=8)
    trainer(tmp_path, callbacks=[PredictionWriter(tmp_path / "p.csv")]).predict(model, [loader, loader])
    df = pd.read_csv(tmp_path / "p.csv")
    assert df["id"].tolist() == [*range(30), *range(30)]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"path": "predictions.parquet"}, ValueError, r"\.csv file"),
        ({"id_key": 3}, TypeError, "id_key"),
        ({"shapley": "yes"}, TypeError, "shapley"),
        ({"class_names": "abc"}, TypeError, "class_names"),
    ],
)
def test_bad_arguments(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        PredictionWriter(**kwargs)


def test_the_number_of_class_names_and_the_fusion_are_checked(tmp_path: Path) -> None:
    loader = DataLoader(SyntheticViews(8, seed=1), batch_size=8)
    with pytest.raises(ValueError, match="name the model's 3 classes"):
        trainer(tmp_path, callbacks=[PredictionWriter(tmp_path / "p.csv", class_names=["a"])]).predict(
            ThreeHeadNet(), loader
        )
    with pytest.raises(ValueError, match="shapley=False"):
        trainer(tmp_path, callbacks=[PredictionWriter(tmp_path / "p.csv", shapley=True)]).predict(
            ThreeHeadNet(fusion="late"), loader
        )


def test_help_and_version_import_neither_torch_nor_lightning() -> None:
    """Issue 18 part 4: ``lightning-mmloss --help`` took 4.8-8 s importing everything."""
    code = (
        "import sys; from lightning_mmloss.experiments.cli import main; main(['--help']); main(['--version']); "
        "assert 'torch' not in sys.modules and 'lightning' not in sys.modules, sorted(sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "usage: lightning-mmloss" in proc.stdout and "lightning-mmloss 0." in proc.stdout
