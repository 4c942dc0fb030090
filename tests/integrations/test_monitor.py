"""SubgroupMonitor in real fits: scalars, TensorBoard content, console table, state, errors."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_mmloss import SubgroupMonitor
from lightning_mmloss.functional import modality_agreement, modality_reliability, subgroup_statistics
from tests.helpers.models import MODALITIES, ThreeHeadNet, loaders, trainer


def _events(log_dir: str) -> EventAccumulator:
    acc = EventAccumulator(log_dir, size_guidance={"images": 0, "histograms": 0, "scalars": 0})
    acc.Reload()
    return acc


def test_tensorboard_gets_scalars_histogram_and_images(tmp_path: Path) -> None:
    L.seed_everything(0)
    model = ThreeHeadNet()
    train, val = loaders()
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    monitor = SubgroupMonitor(shapley=True, print_summary=False, images_every_n_epochs=2)
    t = trainer(tmp_path, max_epochs=3, logger=logger, callbacks=[monitor])
    t.fit(model, train, val)
    ev = _events(logger.log_dir)
    tags = ev.Tags()
    for m in [*MODALITIES, "fused"]:
        for metric in ("acc", "macro_f1", "ece", "brier", "nll"):
            assert f"val/reliability/{m}/{metric}" in tags["scalars"]
    for name in ("val/agreement/conflict", "val/agreement/rescued", "val/subgroups/active", "val/shapley/audio"):
        assert name in tags["scalars"]
    assert len(ev.Scalars("val/reliability/fused/acc")) == 3  # one per epoch, none from the sanity check
    assert "val/subgroups/occupancy" in tags["histograms"]
    assert {"val/subgroups/profile", "val/agreement/pairwise"} <= set(tags["images"])
    assert len(ev.Images("val/agreement/pairwise")) == 2  # epochs 0 and 2 of 0, 1, 2
    assert len(ev.Histograms("val/subgroups/occupancy")) == 2

    image = ev.Images("val/subgroups/profile")[-1]
    assert image.width > 100 and image.height > 100
    # the noise modality carries the least of the decisions
    shap = {m: monitor.last_metrics[f"val/shapley/{m}"] for m in MODALITIES}
    last = ev.Scalars("val/shapley/text")[-1]
    # logged through Lightning: float32, at Lightning's step for validation epochs (as val/loss)
    assert last.value == pytest.approx(shap["text"], rel=1e-6)
    assert last.step == ev.Scalars("val/loss")[-1].step
    assert min(shap, key=shap.get) == "text", shap


def test_last_epoch_figures_are_drawn_at_fit_end(tmp_path: Path) -> None:
    model = ThreeHeadNet()
    train, val = loaders()
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    monitor = SubgroupMonitor(print_summary=False, images_every_n_epochs=3)
    t = trainer(tmp_path, max_epochs=5, logger=logger, callbacks=[monitor])
    t.fit(model, train, val)
    steps = [e.step for e in _events(logger.log_dir).Images("val/subgroups/profile")]
    per_epoch = t.global_step // 5
    assert steps == [per_epoch, 4 * per_epoch, 5 * per_epoch]  # epochs 0, 3 and the last one, 4


def test_logged_values_equal_direct_computation(tmp_path: Path) -> None:
    L.seed_everything(0)
    model = ThreeHeadNet()
    train, val = loaders(with_mask=True)
    monitor = SubgroupMonitor(print_summary=False, images_every_n_epochs=None, shapley=True)
    t = trainer(tmp_path, max_epochs=2, callbacks=[monitor])
    t.fit(model, train, val)
    data = val.dataset
    batch = {m: data.x[:, i] for i, m in enumerate(MODALITIES)}
    fitted = float(model.mm_loss.temperature)
    used = float(t.callback_metrics["val/temperature"])  # the last epoch ran with the previous fit
    assert used != fitted and used != 1.0
    model.mm_loss.temperature.fill_(used)
    model.mm_loss.evidence_weight.fill_(float(t.callback_metrics["val/evidence_weight"]))  # and its weight
    with torch.no_grad():
        out = model.mm_loss.fuse(model.unimodal_logits(batch), data.mask)
    rel = modality_reliability(out.unimodal_probs, out.probs, data.target, data.mask, MODALITIES)
    agr = modality_agreement(out.unimodal_probs, out.probs, data.target, data.mask)
    sub = subgroup_statistics(out.subgroup, out.preds, data.target, out.unimodal_probs, out.modality_weights, 3, 4)
    got = monitor.last_metrics
    for k, v in rel.items():
        assert float(got[f"val/reliability/{k}"]) == pytest.approx(float(v), rel=1e-5, abs=1e-6), k
    for k in ("conflict", "reinforce", "all_wrong", "rescued", "harmed", "all_agree"):
        assert float(got[f"val/agreement/{k}"]) == pytest.approx(float(agr[k]), abs=1e-6), k
    assert float(got["val/subgroups/active"]) == float(sub["active"])
    assert float(got["val/subgroups/usage_entropy"]) == pytest.approx(float(sub["usage_entropy"]), rel=1e-5)
    assert monitor.last_metrics["val/reliability/fused/acc"] == pytest.approx(float(rel["fused/acc"]))
    # the Shapley summary is the mean over instances of each modality's value (not the sum)
    with torch.no_grad():
        phi = model.mm_loss.shapley(model.unimodal_logits(batch), modality_mask=data.mask)
    for i, m in enumerate(MODALITIES):
        assert float(got[f"val/shapley/{m}"]) == pytest.approx(float(phi[:, i].mean()), rel=1e-5, abs=1e-7), m


def test_console_table_and_every_n_epochs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = ThreeHeadNet()
    train, val = loaders()
    monitor = SubgroupMonitor(every_n_epochs=2, images_every_n_epochs=None, print_summary="epoch")
    trainer(tmp_path, max_epochs=5, callbacks=[monitor]).fit(model, train, val)
    assert monitor.epochs_logged == 3  # epochs 0, 2, 4
    printed = capsys.readouterr().out
    assert printed.count("per-modality reliability") == 3
    for word in ("audio", "video", "text", "fused", "macro_f1", "subgroups:", "active"):
        assert word in printed


def test_by_default_one_table_at_the_end_of_fit_and_after_each_test(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 18 part 4: 46 tables in a 46-epoch fit."""
    model = ThreeHeadNet()
    train, val = loaders()
    monitor = SubgroupMonitor(images_every_n_epochs=None)
    with pytest.raises(RuntimeError, match="no 'val' epoch yet"):
        monitor.print_tables()
    t = trainer(tmp_path, max_epochs=4, callbacks=[monitor])
    t.fit(model, train, val)
    printed = capsys.readouterr().out
    assert printed.count("per-modality reliability") == 1 and "val epoch 3:" in printed
    t.test(model, val, verbose=False)
    assert capsys.readouterr().out.count("test: per-modality reliability") == 1
    monitor.print_tables("val")  # on demand: the last validation epoch again
    assert "val epoch 3:" in capsys.readouterr().out
    with pytest.raises(ValueError, match="print_summary"):
        SubgroupMonitor(print_summary="always")


def test_without_tensorboard_warns_once_and_still_logs(tmp_path: Path) -> None:
    model = ThreeHeadNet()
    train, val = loaders()
    monitor = SubgroupMonitor(print_summary=False)
    t = trainer(tmp_path, max_epochs=1, callbacks=[monitor], logger=CSVLogger(str(tmp_path)))
    with pytest.warns(UserWarning, match=r"heatmaps need a TensorBoardLogger"):
        t.fit(model, train, val)
    t.test(model, val)  # no second warning (pytest's filterwarnings=error would raise)
    assert "test/reliability/fused/acc" in monitor.last_metrics
    header = (Path(t.logger.log_dir) / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"val/reliability/audio/ece", "val/agreement/harmed", "test/reliability/fused/acc"} <= set(header)


def test_state_dict_round_trip_and_key() -> None:
    a = SubgroupMonitor(every_n_epochs=3)
    a.epochs_logged, a.last_metrics = 4, {"val/agreement/conflict": 0.25}
    b = SubgroupMonitor(every_n_epochs=3)
    b.load_state_dict(a.state_dict())
    assert b.epochs_logged == 4 and b.last_metrics == {"val/agreement/conflict": 0.25}
    b.load_state_dict({})  # an old checkpoint without the keys
    assert b.epochs_logged == 0
    assert a.state_key != SubgroupMonitor(every_n_epochs=1).state_key
    with pytest.raises(ValueError, match=r"SubgroupMonitor state"):
        b.load_state_dict({"epochs_logged": "x"})


def test_monitor_argument_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"`every_n_epochs` to be an int >= 1, but got 0"):
        SubgroupMonitor(every_n_epochs=0)
    with pytest.raises(TypeError, match=r"`shapley` to be a bool"):
        SubgroupMonitor(shapley="yes")

    class NotMM(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 2)

    with pytest.raises(RuntimeError, match=r"needs a model built with MultiModalLossMixin"):
        SubgroupMonitor().setup(trainer(tmp_path), NotMM(), "fit")


def test_baseline_fusion_gets_reliability_and_agreement_only(tmp_path: Path) -> None:
    from lightning_mmloss.experiments.classifier import MultiModalClassifier
    from lightning_mmloss.experiments.data import SyntheticMultimodalDataModule

    dm = SyntheticMultimodalDataModule("ehh", preset="tiny", batch_size=50)
    model = MultiModalClassifier(["m1", "m2", "m3"], dict.fromkeys(["m1", "m2", "m3"], 8), 2, fusion="sum", hidden=[8])
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    monitor = SubgroupMonitor(images_every_n_epochs=1)
    t = trainer(tmp_path, max_epochs=2, logger=logger, callbacks=[monitor])
    t.fit(model, dm)
    assert "val/reliability/m1/ece" in monitor.last_metrics and "val/agreement/conflict" in monitor.last_metrics
    assert not any("subgroups" in k for k in monitor.last_metrics)
    assert monitor.last_metrics["val/reliability/fused/acc"] == pytest.approx(float(t.callback_metrics["val/acc"]))
    assert set(_events(logger.log_dir).Tags()["images"]) == {"val/agreement/pairwise"}
    with pytest.raises(ValueError, match=r"`shapley=False` for fusion='sum'"):
        SubgroupMonitor(shapley=True).setup(t, model, "fit")


def test_metrics_reach_callback_metrics_for_checkpoint_and_early_stopping(tmp_path: Path) -> None:
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    L.seed_everything(0)
    model = ThreeHeadNet()
    train, val = loaders()
    monitor = SubgroupMonitor(print_summary=False, images_every_n_epochs=None)
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), monitor="val/reliability/fused/ece", mode="min")
    stop = EarlyStopping(monitor="val/agreement/conflict", mode="min", patience=10)
    t = trainer(tmp_path, max_epochs=3, callbacks=[monitor, ckpt, stop], enable_checkpointing=True)
    t.fit(model, train, val)
    assert ckpt.best_model_path and ckpt.best_model_score is not None  # the key was found and monitored
    assert float(t.callback_metrics["val/reliability/fused/ece"]) == pytest.approx(
        monitor.last_metrics["val/reliability/fused/ece"]
    )
    assert SubgroupMonitor.metrics_of(t) == pytest.approx(monitor.last_metrics)
    results = t.validate(model, val, verbose=False)[0]  # what validate() returns holds them too
    assert results["val/reliability/fused/ece"] == pytest.approx(monitor.last_metrics["val/reliability/fused/ece"])


def test_two_loaders_give_per_loader_values_equal_to_separate_runs(tmp_path: Path) -> None:
    L.seed_everything(0)
    model = ThreeHeadNet()
    train, val_a = loaders(n_val=64)
    _, val_b = loaders(n_val=32, with_mask=True)
    trainer(tmp_path, max_epochs=1).fit(model, train, val_a)

    def run(loaders_: list) -> dict[str, float]:
        monitor = SubgroupMonitor(print_summary=False, images_every_n_epochs=None)
        trainer(tmp_path, callbacks=[monitor]).validate(model, loaders_, verbose=False)
        return monitor.last_metrics

    both, alone_a, alone_b = run([val_a, val_b]), run([val_a]), run([val_b])
    assert len(both) == len(alone_a) + len(alone_b)
    for k, v in alone_a.items():
        assert both[f"{k}/dataloader_idx_0"] == pytest.approx(v), k
    for k, v in alone_b.items():
        assert both[f"{k}/dataloader_idx_1"] == pytest.approx(v), k
    assert alone_a["val/subgroups/active"] != alone_b["val/subgroups/active"] or (
        alone_a["val/reliability/fused/acc"] != alone_b["val/reliability/fused/acc"]
    )


def test_every_n_epochs_counts_validation_runs(tmp_path: Path) -> None:
    model = ThreeHeadNet()
    train, val = loaders()
    monitor = SubgroupMonitor(every_n_epochs=2, print_summary=False, images_every_n_epochs=None)
    trainer(tmp_path, max_epochs=6, check_val_every_n_epoch=2, callbacks=[monitor]).fit(model, train, val)
    assert monitor.val_runs == 3 and monitor.epochs_logged == 2  # runs 0 and 2 (epochs 1 and 5)


def test_warns_when_a_fit_logs_nothing(tmp_path: Path) -> None:
    model = ThreeHeadNet()
    train, val = loaders()
    monitor = SubgroupMonitor(every_n_epochs=5, print_summary=False, images_every_n_epochs=None)

    class AsIfResumed(L.Callback):  # after the first validation run (as a checkpoint restores it, after setup)
        def on_fit_start(self, trainer, pl_module) -> None:
            monitor.val_runs = 1  # the next 4 are skipped

    with pytest.warns(UserWarning, match="SubgroupMonitor logged nothing in this fit"):
        trainer(tmp_path, max_epochs=2, callbacks=[AsIfResumed(), monitor]).fit(model, train, val)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's compiler stack about itself, on import
def test_model_with_its_own_validation_step_and_a_compiled_loss(tmp_path: Path) -> None:
    class OwnSteps(ThreeHeadNet):
        def validation_step(self, batch, batch_idx):  # returns nothing: the monitor fuses itself
            self.log("val/custom", 1.0)

    L.seed_everything(0)
    own = OwnSteps()
    train, val = loaders()
    monitor = SubgroupMonitor(print_summary=False, images_every_n_epochs=None, shapley=True)
    t = trainer(tmp_path, max_epochs=1, callbacks=[monitor])
    t.fit(own, train, val)
    assert float(own.mm_loss.temperature) != 1.0  # a model with its own steps is calibrated too
    twin = _same(own)
    twin.mm_loss.temperature.fill_(float(t.callback_metrics["val/temperature"]))  # the one that epoch used
    twin.mm_loss.evidence_weight.fill_(float(t.callback_metrics["val/evidence_weight"]))
    reference = SubgroupMonitor(print_summary=False, images_every_n_epochs=None, shapley=True)
    trainer(tmp_path, callbacks=[reference]).validate(twin, val, verbose=False)
    assert monitor.last_metrics.keys() == reference.last_metrics.keys()
    for k, v in reference.last_metrics.items():
        assert monitor.last_metrics[k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
    own.mm_loss = torch.compile(own.mm_loss)  # wrapped (compiled on first call): still recognised
    assert SubgroupMonitor._loss_of(own) is own.mm_loss._orig_mod


def _same(model: ThreeHeadNet) -> ThreeHeadNet:
    """A plain ThreeHeadNet (the mixin's steps) with the same weights and temperature."""
    twin = ThreeHeadNet()
    twin.load_state_dict(model.state_dict())
    return twin


class _ImageLogger(L.pytorch.loggers.Logger):
    """A logger with the `log_image(key, images, step)` API of W&B's and Neptune's loggers."""

    def __init__(self) -> None:
        super().__init__()
        self.images: dict[str, list] = {}

    @property
    def name(self) -> str:
        return "images"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics, step=None) -> None:
        pass

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_image(self, key: str, images: list, step: int | None = None) -> None:
        self.images.setdefault(key, []).append((images[0].shape, step))


def test_figures_reach_any_logger_with_log_image(tmp_path: Path) -> None:
    L.seed_everything(0)
    logger = _ImageLogger()
    monitor = SubgroupMonitor(print_summary=False, class_names=["cat", "dog", "owl"])
    train, val = loaders()
    trainer(tmp_path, max_epochs=1, logger=logger, callbacks=[monitor]).fit(ThreeHeadNet(), train, val)
    assert set(logger.images) == {"val/subgroups/profile", "val/agreement/pairwise"}
    shape, step = logger.images["val/subgroups/profile"][0]
    assert shape[2] == 3 and shape[0] > 100 and step is not None
    with pytest.raises(ValueError, match="`class_names` to name the model's 3 classes, but got 2"):
        trainer(tmp_path, max_epochs=1, callbacks=[SubgroupMonitor(class_names=["a", "b"])]).fit(
            ThreeHeadNet(), train, val
        )


def test_profile_figure_labels_classes_and_says_how_many_rows_are_shown() -> None:
    from lightning_mmloss.plotting import subgroup_profile_figure

    occupancy = torch.tensor([[5.0, 0.0, 2.0], [1.0, 3.0, 0.0]])
    fig = subgroup_profile_figure(torch.rand(2, 3, 2), occupancy, ["a", "b"], class_names=["cat", "dog"], max_rows=3)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == [
        "class cat, proxy 0: 5 instances",
        "class cat, proxy 2: 2 instances",
        "class dog, proxy 1: 3 instances",
    ]
    assert "3 of 4 occupied subgroups" in ax.get_title()
    assert len(fig.axes) == 2  # the heatmap and its colour bar
    assert len(ax.texts) == 3 * 2  # the values, where they fit (issue 18 part 4)
    many = subgroup_profile_figure(torch.rand(10, 5, 5), torch.ones(10, 5), list("abcde"))
    assert len(many.axes[0].texts) == 0  # 24 rows x 5 cells: too many to write in
