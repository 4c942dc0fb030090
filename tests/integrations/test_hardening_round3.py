"""Items of issue 17 fixed on the way through issue 16 (each failed on the code before)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from lightning_mmloss import MultiModalLoss, MultiModalLossMixin, SubgroupMonitor
from lightning_mmloss.metrics import TemperatureFit
from tests.helpers.models import ThreeHeadNet, loaders, trainer


def test_manual_optimization_is_refused_with_what_to_do(tmp_path: Path) -> None:
    class Manual(ThreeHeadNet):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

    train, val = loaders(n_train=64, n_val=32)
    with pytest.raises(RuntimeError, match="automatic_optimization = False"):
        trainer(tmp_path, max_epochs=1).fit(Manual(), train, val)


def test_flags_and_indices_are_not_coerced() -> None:
    with pytest.raises(TypeError, match="validate_args"):
        MultiModalLoss(3, 2, validate_args="no")
    with pytest.raises(TypeError, match="ignore_index"):
        TemperatureFit(ignore_index=1.9)


def test_shapley_with_too_many_modalities_is_refused_at_setup(tmp_path: Path) -> None:
    class Wide(MultiModalLossMixin, L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(2, 2)
            self.configure_multimodal(13, 2, 2)

    t = trainer(tmp_path)
    with pytest.raises(ValueError, match="at most 12 modalities"):
        SubgroupMonitor(shapley=True).setup(t, Wide(), "fit")
    SubgroupMonitor(shapley=False, images_every_n_epochs=None).setup(t, Wide(), "fit")


def test_all_ignored_batch_through_the_functional_loss_without_checks() -> None:
    from lightning_mmloss.functional import multimodal_loss

    u = torch.randn(4, 2, 3, requires_grad=True)
    loss = multimodal_loss(u, torch.full((4,), -100), torch.rand(6, 6), validate_args=False)
    assert float(loss.detach()) == 0.0


def test_an_empty_validation_batch_is_skipped(tmp_path: Path) -> None:
    """Item 13: an empty batch reached torchmetrics' stat_scores and crashed."""
    from torch.utils.data import DataLoader

    train, val = loaders(n_train=64, n_val=32)
    batches = [*list(val), {k: v[:0] for k, v in next(iter(val)).items()}]
    monitor = SubgroupMonitor(print_summary=False, images_every_n_epochs=None)
    t = trainer(tmp_path, max_epochs=1, callbacks=[monitor])
    t.fit(ThreeHeadNet(), train, DataLoader(batches, batch_size=None))
    assert 0.0 <= float(t.callback_metrics["val/acc"]) <= 1.0
    assert "val/reliability/fused/acc" in monitor.last_metrics


def test_prediction_file_writer_keeps_every_predict_loader(tmp_path: Path) -> None:
    """Item 7: only the first predict dataloader's rows were written (now the core's PredictionWriter)."""
    from lightning_mmloss import PredictionWriter

    model = ThreeHeadNet()
    _, val = loaders(n_val=48, batch_size=16)
    _, other = loaders(n_val=32, batch_size=16)
    writer = PredictionWriter(tmp_path / "predictions.csv")
    trainer(tmp_path, callbacks=[writer]).predict(model, [val, other], return_predictions=False)
    out = torch.load(writer.written[1])
    assert out["probs"].shape == (80, 3) and out["preds"].shape == (80,)
    assert out["dataloader_idx"].tolist() == [0] * 48 + [1] * 32


def test_a_reused_monitor_counts_each_fit_from_zero_and_compute_says_when(tmp_path: Path) -> None:
    """Item 14: a second fit with the same every_n_epochs=2 monitor could skip every epoch; compute() was a KeyError."""
    train, val = loaders(n_train=64, n_val=32)
    monitor = SubgroupMonitor(every_n_epochs=2, print_summary=False, images_every_n_epochs=None)
    trainer(tmp_path / "a", max_epochs=3, callbacks=[monitor]).fit(ThreeHeadNet(), train, val)
    assert monitor.epochs_logged == 2  # runs 0 and 2
    monitor.last_metrics = {}
    trainer(tmp_path / "b", max_epochs=1, callbacks=[monitor]).fit(ThreeHeadNet(), train, val)
    assert monitor.epochs_logged == 1 and "val/reliability/fused/acc" in monitor.last_metrics
    with pytest.raises(RuntimeError, match="last_metrics"):
        SubgroupMonitor().compute()


@pytest.mark.parametrize("every", [1, 2])
def test_early_stopping_on_a_key_the_monitor_skips_is_refused(tmp_path: Path, every: int) -> None:
    """Item 2: with every_n_epochs=2, EarlyStopping(patience=1) stopped a 6-epoch fit after 2 epochs."""
    from lightning.pytorch.callbacks import EarlyStopping

    train, val = loaders(n_train=64, n_val=32)
    monitor = SubgroupMonitor(every_n_epochs=every, print_summary=False, images_every_n_epochs=None)
    stop = EarlyStopping(monitor="val/reliability/fused/acc", mode="max", patience=1)
    t = trainer(tmp_path, max_epochs=2, callbacks=[monitor, stop])
    if every == 1:
        t.fit(ThreeHeadNet(), train, val)  # fresh values every epoch: allowed
    else:
        with pytest.raises(ValueError, match="check_val_every_n_epoch=2"):
            t.fit(ThreeHeadNet(), train, val)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_a_gpu_asked_for_without_one_is_one_line(tmp_path: Path) -> None:
    """Item 16: Lightning's traceback instead of a message."""
    import subprocess
    import sys

    from lightning_mmloss.experiments.cli import main

    with pytest.raises(SystemExit, match="asks for a GPU"):
        main(["compare", "--accelerator", "gpu", "--output", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="asks for a GPU"):
        main(["fit", "--config", "examples/configs/synthetic_ehh.yaml", "--trainer.accelerator=gpu"])
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, str(root / "examples" / "ddp_launch.py"), "--accelerator", "gpu"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0 and "asks for a GPU" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"class_weight": "abc"}, TypeError, "class_weight"),
        ({"class_weight": [1 + 1j, 1.0, 1.0]}, TypeError, "real numbers"),
        ({"dtype": torch.int64}, TypeError, "floating dtype"),
        ({"dtype": torch.bool}, TypeError, "floating dtype"),
        ({"gamma": 2e19}, ValueError, "gamma"),
        ({"proxies_per_class": 2**62}, ValueError, "proxy entries"),
    ],
)
def test_odd_constructor_values_get_clear_errors(kwargs: dict, error: type, match: str) -> None:
    """Item 15 (part), item 10 (complex class weights lost their imaginary part)."""
    with pytest.raises(error, match=match):
        MultiModalLoss(3, 2, **kwargs)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:`torch.jit.trace.* is deprecated:DeprecationWarning")
def test_torchscript_says_what_to_use_and_shapley_target_class_must_be_an_int() -> None:
    crit = MultiModalLoss(3, 2, 2)
    u, y = torch.randn(4, 2, 3), torch.tensor([0, 1, 2, 0])
    with pytest.raises(TypeError, match=r"torch\.compile"):
        torch.jit.script(crit)
    with pytest.raises(TypeError, match=r"torch\.compile"):
        torch.jit.trace(crit, (u, y))
    with pytest.raises(TypeError, match="target_class"):
        crit.shapley(u, target_class="0")


def test_namedtuple_batches_use_their_target_field(tmp_path: Path) -> None:
    from collections import namedtuple

    Batch = namedtuple("Batch", ["target", "audio", "video", "text"])
    net = ThreeHeadNet()
    b = Batch(torch.tensor([0, 1]), torch.randn(2, 6), torch.randn(2, 6), torch.randn(2, 6))
    assert torch.equal(net.get_target(b), b.target)


def test_float_targets_and_a_second_aux_weight_are_refused() -> None:
    from lightning_mmloss.experiments.classifier import MultiModalClassifier
    from lightning_mmloss.experiments.data import MultiviewDataset

    with pytest.raises(TypeError, match="integer class indices"):
        MultiviewDataset({"a": torch.randn(3, 2)}, torch.tensor([0.0, 1.5, 1.0]))
    with pytest.raises(ValueError, match="one `aux_weight`"):
        MultiModalClassifier(["a", "b"], {"a": 2, "b": 2}, 2, aux_weight=0.3, loss_options={"aux_weight": 0.9})


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"hidden": [-1]}, ValueError, r"`hidden` to be an int >= 1, but got -1"),
        ({"hidden": [0]}, ValueError, r"`hidden` to be an int >= 1, but got 0"),  # a head that sees no input
        ({"hidden": [2.5]}, TypeError, r"`hidden` to be an int, but got float"),
        ({"hidden": 8}, TypeError, r"`hidden` to be a list of ints, but got int 8"),
        ({"hidden": "8"}, TypeError, r"`hidden` to be a list of ints, but got str"),
        ({"input_dims": {"a": 0, "b": 2}}, ValueError, r"`input_dims\['a'\]` to be an int >= 1"),
        ({"input_dims": {"a": "5", "b": 2}}, TypeError, r"`input_dims\['a'\]` to be an int"),
        # a list of sizes, in the modalities' order: it crashed in the error message itself (dict([3, 2]))
        ({"input_dims": [3, 2]}, TypeError, r"`input_dims` to be a mapping from modality name to size, but got list"),
    ],
)
def test_classifier_head_sizes_are_checked(kwargs: dict, error: type, match: str) -> None:
    """Item 15: ``hidden=[-1]`` crashed in torch ("negative dimension"), ``hidden=[0]`` trained blind heads."""
    from lightning_mmloss.experiments.classifier import MultiModalClassifier

    kwargs = {"input_dims": {"a": 3, "b": 2}, **kwargs}
    with pytest.raises(error, match=match):
        MultiModalClassifier(["a", "b"], num_classes=2, **kwargs)


@pytest.mark.parametrize(
    "fractions",
    [(float("nan"), 0.5, 0.5), (0.6, 0.2, float("inf")), (0.5, 0.5, "a"), (0.5, 0.5), 0.5, (0.7, 0.2, 0.2)],
)
def test_uci_fractions_must_be_three_finite_shares(fractions: object) -> None:
    """Item 15: NaN passed ``min(fractions) < 0`` and the split silently used the other two shares."""
    from lightning_mmloss.experiments.data import UCIMultipleFeaturesDataModule

    with pytest.raises(ValueError, match="fractions"):
        UCIMultipleFeaturesDataModule("unused", fractions=fractions)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--corruption", "swap"], "--corruption applies to --data uci-mfeat"),
        (["--corrupt-views", "2"], "--corrupt-views applies to --data uci-mfeat"),
        (["--data", "uci-mfeat", "--data-dir", ".", "--corrupt-views", "7"], r"--corrupt-views must be in \[1, 6\]"),
    ],
)
def test_compare_swapped_views_options_are_checked(tmp_path: Path, args: list[str], match: str) -> None:
    """Item 17: docs/faq.md's swapped-views UCI result now has CLI options; they are checked before training."""
    from lightning_mmloss.experiments.cli import main

    with pytest.raises(SystemExit, match=match):
        main(["compare", *args, "--output", str(tmp_path / "out")])


def test_compare_passes_the_corruption_to_the_uci_data(tmp_path: Path) -> None:
    from lightning_mmloss.experiments.compare import _datamodule, build_parser

    argv = "--data uci-mfeat --data-dir d --corrupt-fraction 0.5 --corruption swap --corrupt-views 2"
    args = build_parser().parse_args(argv.split())
    args.data_class = None
    dm = _datamodule(args, seed=3)
    assert (dm.corruption, dm.corrupt_views, dm.corrupt_fraction, dm.seed) == ("swap", 2, 0.5, 3)
