"""The robustness report (issue 18 part 2): dropped and degraded modalities, as a function and a callback."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader

from lightning_mmloss import RobustnessCallback, RobustnessReport, robustness_report
from lightning_mmloss.robustness import gaussian_noise
from tests.helpers.models import MODALITIES, SyntheticViews, ThreeHeadNet, retry_spawn_abort, trainer


def _fit(tmp_path: Path, **mm: Any) -> ThreeHeadNet:
    L.seed_everything(0)
    model = ThreeHeadNet(**mm)
    data = [DataLoader(SyntheticViews(n, seed=s, with_mask=True), batch_size=32) for n, s in ((256, 0), (64, 2))]
    trainer(tmp_path, max_epochs=3).fit(model, *data)
    return model


@pytest.fixture(scope="module")
def mm_model(tmp_path_factory: pytest.TempPathFactory) -> ThreeHeadNet:
    return _fit(tmp_path_factory.mktemp("mm"))


@pytest.fixture(scope="module")
def late_model(tmp_path_factory: pytest.TempPathFactory) -> ThreeHeadNet:
    return _fit(tmp_path_factory.mktemp("late"), fusion="late")


def _loader() -> DataLoader:
    return DataLoader(SyntheticViews(96, seed=1, with_mask=True), batch_size=32)


def _whole() -> dict[str, torch.Tensor]:
    return next(iter(DataLoader(SyntheticViews(96, seed=1, with_mask=True), batch_size=96)))


def _ece(probs: torch.Tensor, target: torch.Tensor, n_bins: int = 15) -> float:
    """Expected calibration error, written out: |accuracy - confidence| per bin, weighted by its share."""
    conf, pred = probs.max(1)
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            gap = (pred[inside] == target[inside]).float().mean() - conf[inside].mean()
            total += float(inside.float().mean()) * abs(float(gap))
    return total


def _row(report: RobustnessReport, condition: str, modalities: str, level: float = math.nan) -> dict[str, Any]:
    for r in report.rows:
        same_level = (math.isnan(level) and math.isnan(r["level"])) or r["level"] == level
        if r["condition"] == condition and r["modalities"] == modalities and same_level:
            return r
    raise KeyError((condition, modalities, level))


@pytest.mark.parametrize("which", ["mm", "late"])
def test_dropped_modalities_equal_fuse_with_the_masks(which: str, mm_model: ThreeHeadNet, late_model) -> None:
    model = mm_model if which == "mm" else late_model
    report = robustness_report(model, _loader(), levels=())
    batch = _whole()
    with torch.no_grad():
        u = torch.stack([model.unimodal_logits(batch)[m] for m in MODALITIES], dim=1)
        for drop in (["audio"], ["video"], ["text"], ["audio", "video"], ["audio", "text"], ["video", "text"]):
            mask = batch["modality_mask"].clone()
            mask[:, [MODALITIES.index(m) for m in drop]] = False
            rows = mask.any(1)
            if which == "mm":  # the loss's own fuse: the fusion of the present modalities
                probs = model.mm_loss.fuse(u[rows], modality_mask=mask[rows]).probs
            else:  # late fusion of the present heads: the mean of their logits, calibrated
                keep = mask[rows].float()[:, :, None]
                probs = ((u[rows] * keep).sum(1) / keep.sum(1) / model.mm_baseline.temperature).softmax(-1)
            target = batch["target"][rows]
            row = _row(report, "drop", "+".join(drop))
            assert row["n"] == int(rows.sum())
            assert row["acc"] == pytest.approx(float((probs.argmax(1) == target).float().mean()), abs=1e-6)
            assert row["ece"] == pytest.approx(_ece(probs, target), abs=1e-5)
    clean = report.clean()
    assert clean["n"] == 96 and clean["acc"] == pytest.approx(
        float((model.multimodal_step(batch).preds == batch["target"]).float().mean())
    )
    shares = [_row(report, "drop", m)["top_weight_share"] for m in MODALITIES]
    assert all(0 <= s <= 1 for s in shares) if which == "mm" else all(math.isnan(s) for s in shares)


def test_the_sweep_starts_at_the_clean_run_and_follows_the_corruption(mm_model: ThreeHeadNet) -> None:
    calls: list[tuple[str, float]] = []

    def zero_out(batch: dict, modality: str, level: float) -> dict:
        calls.append((modality, level))
        return {**batch, modality: batch[modality] * (1 - min(level, 1.0))}

    report = robustness_report(mm_model, _loader(), levels=(0.0, 0.5, 1.0), corruption=zero_out, drop_pairs=False)
    clean = report.clean()
    for m in MODALITIES:
        level0 = _row(report, "degrade", m, 0.0)
        assert {k: level0[k] for k in ("acc", "ece", "n")} == {k: clean[k] for k in ("acc", "ece", "n")}
    assert sorted(set(calls)) == sorted((m, lv) for m in MODALITIES for lv in (0.5, 1.0))
    batch = _whole()
    with torch.no_grad():
        out = mm_model.multimodal_step({**batch, "audio": batch["audio"] * 0.5})
    assert _row(report, "degrade", "audio", 0.5)["acc"] == pytest.approx(
        float((out.preds == batch["target"]).float().mean())
    )
    share = float((out.fusion.modality_weights.argmax(1) == 0).float().mean())
    assert _row(report, "degrade", "audio", 0.5)["top_weight_share"] == pytest.approx(share)
    assert not any(r["condition"] == "drop" and "+" in r["modalities"] for r in report.rows)


def test_noise_hurts_the_informative_modality_most_and_summaries(
    mm_model: ThreeHeadNet, late_model, tmp_path: Path
) -> None:
    report = robustness_report(mm_model, _loader())
    late = robustness_report(late_model, _loader())
    rel = report.relative_robustness()
    # audio carries the signal everywhere, text none: noise or a drop costs more on audio
    assert rel["audio"] < rel["text"] < report.clean()["acc"] + 1e-9
    assert _row(report, "drop", "audio")["acc"] < _row(report, "drop", "text")["acc"]
    x, y = report.curve("audio")
    assert x == [0.0, 0.5, 1.0, 2.0, 4.0] and y[-1] < y[0]
    area = sum((x[i + 1] - x[i]) * (y[i] + y[i + 1]) / 2 for i in range(4)) / 4.0
    assert rel["audio"] == pytest.approx(area)
    eff = report.effective_robustness(late)
    assert eff["audio"] == pytest.approx(rel["audio"] - late.relative_robustness()["audio"])
    back = RobustnessReport.from_csv(report.to_csv(tmp_path / "r.csv"))
    assert back.fusion == "mm" and back.modality_names == MODALITIES and back.levels == report.levels
    assert back.relative_robustness() == pytest.approx(rel)
    report.figure(late).savefig(tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 10_000


def test_the_callback_logs_writes_and_draws_at_test_end(mm_model: ThreeHeadNet, tmp_path: Path, capsys) -> None:
    logger = TensorBoardLogger(str(tmp_path), name="tb", version=0)
    cb = RobustnessCallback(levels=(0.0, 1.0, 2.0))
    t = trainer(tmp_path, logger=logger, callbacks=[cb])
    results = t.test(mm_model, _loader(), verbose=False)[0]
    alone = robustness_report(mm_model, _loader(), levels=(0.0, 1.0, 2.0))
    for key, value in alone.scalars().items():
        assert results[key] == pytest.approx(value, abs=1e-6), key
    assert "test/robustness/drop/audio+video/acc" in t.callback_metrics
    assert (Path(logger.log_dir) / "robustness.csv").is_file() and (Path(logger.log_dir) / "robustness.png").is_file()
    ev = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    ev.Reload()
    assert "test/robustness" in ev.Tags()["images"]
    assert "rel. rob." in capsys.readouterr().out


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"levels": (0.5, 1.0)}, ValueError, "start at 0"),
        ({"levels": (0.0, 2.0, 1.0)}, ValueError, "ascending"),
        ({"levels": (0.0, -1.0)}, ValueError, "levels"),
        ({"corruption": "noise"}, TypeError, "corruption"),
    ],
)
def test_bad_arguments(mm_model: ThreeHeadNet, kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        robustness_report(mm_model, _loader(), **kwargs)


def test_a_model_without_the_mixin_and_a_batch_without_named_inputs() -> None:
    with pytest.raises(TypeError, match="MultiModalLossMixin"):
        robustness_report(torch.nn.Linear(2, 2), [])
    with pytest.raises(TypeError, match="pass `corruption="):
        gaussian_noise((torch.zeros(2, 3), torch.zeros(2)), "audio", 1.0)


@pytest.mark.timeout(240)
def test_the_callback_under_ddp_equals_one_process(mm_model: ThreeHeadNet, tmp_path: Path) -> None:
    state = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in mm_model.state_dict().items()}
    # the noise differs per process (each draws for its own batches): compare the drops and level 0
    expected = robustness_report(mm_model, _loader(), levels=(0.0,)).scalars()

    def run() -> L.Trainer:
        model = ThreeHeadNet()
        model.load_state_dict(state)
        t = trainer(tmp_path, strategy="ddp_spawn", devices=2, callbacks=[RobustnessCallback(levels=(0.0,))])
        t.test(model, _loader(), verbose=False)
        return t

    got = {k: float(v) for k, v in retry_spawn_abort(run).callback_metrics.items() if k.startswith("test/robustness")}
    assert got.keys() == expected.keys()
    for k, v in expected.items():
        assert got[k] == pytest.approx(v, abs=1e-6), k
