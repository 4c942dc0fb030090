"""Every fusion learns in a tiny fit; the CLI's compare and LightningCLI subcommands run."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from lightning_mmloss.experiments.classifier import FUSIONS, MultiModalClassifier
from lightning_mmloss.experiments.cli import main
from lightning_mmloss.experiments.compare import evaluate
from lightning_mmloss.experiments.data import SyntheticMultimodalDataModule
from tests.helpers.models import retry_spawn_abort, trainer

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("fusion", FUSIONS)
def test_each_fusion_learns(tmp_path: Path, fusion: str) -> None:
    L.seed_everything(0)
    dm = SyntheticMultimodalDataModule("ehh", preset="tiny", batch_size=50)
    dm.setup()
    model = MultiModalClassifier(dm.modalities, dm.input_dims, dm.num_classes, fusion=fusion, hidden=[16], lr=1e-2)
    trainer(tmp_path, max_epochs=15).fit(model, dm)
    row = evaluate(model, dm.splits["test"])
    assert row["test_acc"] > 0.8, row  # tiny preset: signal 2.0, chance 0.5
    out = trainer(tmp_path).predict(model, dm.test_dataloader())[0]
    assert out["probs"].shape == (50, 2) and out["unimodal_probs"].shape == (50, 3, 2)


def test_ogm_ge_scales_the_dominant_modality(tmp_path: Path) -> None:
    L.seed_everything(0)
    dm = SyntheticMultimodalDataModule("ehh", preset="tiny", batch_size=200)
    dm.setup()
    model = MultiModalClassifier(dm.modalities, dm.input_dims, 2, fusion="ogm_ge", hidden=[16], lr=1e-2, ogm_alpha=0.5)
    t = trainer(tmp_path, max_epochs=10)
    t.fit(model, dm)
    k = {m: float(t.callback_metrics[f"train/ogm_coeff/{m}"]) for m in dm.modalities}
    assert k["m1"] < 0.9 and k["m2"] == 1.0 and k["m3"] == 1.0, k  # only the informative head is slowed
    # the modulation itself: the gradient reaching each modality's logits (so its head's
    # parameters) is its plain cross-entropy gradient times its coefficient
    batch = next(iter(dm.train_dataloader()))
    fusion = model.mm_baseline
    u = model.stacked_logits(batch).detach().requires_grad_(True)
    loss, _ = fusion.loss(u, batch["target"])
    loss.backward()
    k = fusion.ogm_coefficients
    assert float(k[0]) < 1.0 and torch.all(k[1:] == 1.0), k
    plain = u.detach().clone().requires_grad_(True)
    torch.nn.functional.cross_entropy(fusion.fused_logits(plain), batch["target"]).backward()
    torch.testing.assert_close(u.grad, plain.grad * k.view(1, -1, 1))


def test_compare_smoke(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    main(
        [
            "compare",
            "--scenario",
            "instance",
            "--preset",
            "tiny",
            "--seeds",
            "2",
            "--epochs",
            "2",
            "--fusions",
            "mm,sum,ogm_ge",
            "--hidden",
            "8",
            "--output",
            str(out),
        ]
    )
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["fusion"], r["seed"]) for r in rows] == [
        ("mm", "0"),
        ("sum", "0"),
        ("ogm_ge", "0"),
        ("mm", "1"),
        ("sum", "1"),
        ("ogm_ge", "1"),
    ]
    assert {"test_acc", "m1_acc", "m1_ece", "attr_shapley", "attr_weight", "train_seconds"} <= set(rows[0])
    assert rows[0]["attr_shapley"] != "" and rows[1]["attr_shapley"] == ""
    md = (out / "results.md").read_text()
    assert "| mm |" in md and "± " in md
    assert (out / "results.png").stat().st_size > 5000
    assert any((out / "tensorboard" / "mm" / "seed1").glob("events.out.tfevents.*"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard" / "mm" / "seed1"), size_guidance={"images": 0})
    events.Reload()
    assert "val/reliability/m1/acc" in events.Tags()["scalars"]  # the monitor ran in every compare run
    assert "val/subgroups/profile" in events.Tags()["images"]


def test_compare_rejects_unknown_fusion(tmp_path: Path) -> None:
    with pytest.raises(
        SystemExit, match=r"--fusions takes names from mm,sum,concat,late,ogm_ge,independent, got \['avg'\]"
    ):
        main(["compare", "--fusions", "mm,avg", "--output", str(tmp_path)])


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_mmloss.experiments.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


QUICK = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1"]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("config", sorted((ROOT / "examples" / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_lightning_cli_fit_with_each_config(tmp_path: Path, config: Path) -> None:
    _cli("fit", "--config", str(config), *QUICK, f"--trainer.default_root_dir={tmp_path}", cwd=ROOT)
    assert any(tmp_path.rglob("events.out.tfevents.*")) and any(tmp_path.rglob("*.ckpt"))
    # the path docs/cli.md gives for `test --ckpt_path` (relative to the run's root dir)
    assert (tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.timeout(180)
def test_lightning_cli_test_and_predict_from_checkpoint(tmp_path: Path) -> None:
    config = str(ROOT / "examples" / "configs" / "synthetic_ehh.yaml")
    fit = ["--config", config, *QUICK, f"--trainer.default_root_dir={tmp_path}", "--model.fusion=late"]
    _cli("fit", *fit, "--trainer.callbacks=[]", cwd=ROOT)  # (the configs' monitor asks for Shapley values)
    ckpt = str(next(tmp_path.rglob("*.ckpt")))
    common = [
        "--config",
        config,
        f"--trainer.default_root_dir={tmp_path}",
        "--model.fusion=late",
        f"--ckpt_path={ckpt}",
    ]
    out = _cli("test", *common, "--trainer.callbacks=[]", cwd=ROOT)
    assert "test/acc" in out.stdout
    out = _cli("predict", *common, "--trainer.callbacks=[]", cwd=ROOT)
    assert "UserWarning" not in out.stderr  # LightningCLI's `args` warning, once printed on every call
    preds = torch.load(tmp_path / "predictions.pt")
    assert set(preds) >= {"probs", "preds", "unimodal_probs"} and preds["probs"].shape[1] == 2
    # issue 18: the robustness report from the command line, on the same checkpoint
    out = _cli("robustness", *common, "--levels", "0,1", "--trainer.callbacks=[]", cwd=ROOT)
    assert "rel. rob." in out.stdout
    csv_path = next(tmp_path.rglob("robustness.csv"))
    from lightning_mmloss import RobustnessReport

    report = RobustnessReport.from_csv(csv_path)
    assert report.fusion == "late" and report.levels == [0.0, 1.0] and len(report.modality_names) == 3
    assert (csv_path.parent / "robustness.png").is_file()


def test_cli_usage_version_and_typos(capsys: pytest.CaptureFixture[str]) -> None:
    main([])
    assert "compare" in capsys.readouterr().out
    main(["--version"])
    assert capsys.readouterr().out.startswith("lightning-mmloss 0.")
    with pytest.raises(SystemExit):
        main(["comapre"])
    err = capsys.readouterr().err
    assert "unknown command 'comapre'" in err and "compare" in err


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--epochs", "-1"], "--epochs must be at least 1, got -1"),
        (["--epochs", "0"], "--epochs must be at least 1, got 0"),
        (["--fusions", "mm,mm"], r"names each fusion once, got \['mm'\] repeated"),
        (["--corrupt-fraction", "0.5"], "--corrupt-fraction applies to --data uci-mfeat"),
        (["--data", "uci-mfeat"], "needs --data-dir"),
        (["--data", "uci-mfeat", "--data-dir", "{file}"], "is a file; give the folder"),
        (["--output", "{file}/sub"], "cannot write to --output"),
        (["--threads", "0"], "--threads must be at least 1"),
    ],
)
def test_compare_refuses_bad_arguments_before_training(tmp_path: Path, args: list[str], match: str) -> None:
    f = tmp_path / "a_file"
    f.write_text("x")
    args = [a.replace("{file}", str(f)) for a in args]
    if "--output" not in args:
        args += ["--output", str(tmp_path / "out")]
    with pytest.raises(SystemExit, match=match):
        main(["compare", *args])


@pytest.mark.parametrize("fusion", FUSIONS)
def test_each_fusion_under_bf16_autocast(tmp_path: Path, fusion: str) -> None:
    L.seed_everything(0)
    dm = SyntheticMultimodalDataModule("instance", preset="tiny", batch_size=50)
    model = MultiModalClassifier(["m1", "m2", "m3"], dict.fromkeys(["m1", "m2", "m3"], 8), 2, fusion=fusion, hidden=[8])
    t = trainer(tmp_path, max_epochs=2, precision="bf16-mixed")
    t.fit(model, dm)
    assert torch.isfinite(t.callback_metrics["train/loss"]) and torch.isfinite(t.callback_metrics["val/loss"])


class _SaveRankHeads(L.Callback):
    def __init__(self, out: str) -> None:
        self.out = out

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state = {k: v.detach().cpu() for k, v in pl_module.state_dict().items()}
        torch.save(state, f"{self.out}/rank{trainer.global_rank}.pt")


@pytest.mark.timeout(240)
@pytest.mark.parametrize("fusion", ["ogm_ge", "concat"])
def test_baselines_under_ddp_keep_replicas_identical(tmp_path: Path, fusion: str) -> None:
    # OGM-GE's coefficients and Gaussian noise must be the same on every rank, or replicas drift
    L.seed_everything(0)
    dm = SyntheticMultimodalDataModule("ehh", preset="tiny", batch_size=50)

    def run() -> None:
        L.seed_everything(0)
        names = ["m1", "m2", "m3"]
        model = MultiModalClassifier(names, dict.fromkeys(names, 8), 2, fusion=fusion, hidden=[8])
        t = trainer(tmp_path, strategy="ddp_spawn", devices=2, max_epochs=3, callbacks=[_SaveRankHeads(str(tmp_path))])
        t.fit(model, dm)

    retry_spawn_abort(run)
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k


@pytest.mark.parametrize(
    ("levels", "match"), [("0,x", "takes numbers"), ("0.5,1", "ascend from 0"), ("0,2,1", "ascend")]
)
def test_robustness_levels_are_checked_before_lightning_starts(levels: str, match: str) -> None:
    with pytest.raises(SystemExit, match=match):
        main(["robustness", "--config", "examples/configs/synthetic_ehh.yaml", "--levels", levels])


def test_compare_adds_a_robustness_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 18 part 2: each fusion dropped and degraded on the test split; effective vs late.

    Part 4: the tables fit an 80-column terminal, nothing cut ("0.600 …", "fusi…").
    """
    from lightning_mmloss import RobustnessReport

    monkeypatch.setenv("COLUMNS", "80")
    out = tmp_path / "cmp"
    argv = "compare --scenario ehh --preset tiny --seeds 2 --epochs 2 --fusions mm,late --hidden 8"
    main([*argv.split(), "--output", str(out)])
    printed = capsys.readouterr().out
    assert "robustness (test split)" in printed and "…" not in printed
    assert max(len(line) for line in printed.splitlines()) <= 80
    assert "m1 acc" in printed and "independent" not in printed  # heads as rows: 6 head columns > 2 fusions
    all_rows = list(csv.DictReader((out / "results.csv").read_text().splitlines()))
    rows = {r["fusion"]: r for r in all_rows if r["seed"] == "1"}
    for fusion in ("mm", "late"):
        report = RobustnessReport.from_csv(out / "robustness" / f"{fusion}_seed1.csv")
        rel = report.relative_robustness()
        assert float(rows[fusion]["robust_rel"]) == pytest.approx(sum(rel.values()) / len(rel))
        drops = [r["acc"] for r in report.rows if r["condition"] == "drop"]
        assert float(rows[fusion]["robust_worst_drop"]) == pytest.approx(min(drops))
    md = (out / "results.md").read_text()
    by = {(r["fusion"], r["seed"]): float(r["robust_rel"]) for r in all_rows}
    effective = [by[("mm", s)] - by[("late", s)] for s in ("0", "1")]
    mm_line = next(line for line in md.split("## Robustness")[1].splitlines() if line.startswith("| mm |"))
    mean, std = sum(effective) / 2, abs(effective[0] - effective[1]) / 2**0.5
    assert mm_line.rstrip(" |").endswith(f"{mean:.3f} ± {std:.3f}")
    main([*argv.split(), "--output", str(tmp_path / "none"), "--no-robustness"])
    assert "robust_rel" not in (tmp_path / "none" / "results.csv").read_text()


def test_compare_shows_the_epochs_inside_a_run(tmp_path: Path) -> None:
    """Issue 18 part 4: progress was only runs done, nothing inside a 60-epoch run."""
    from rich.progress import Progress

    from lightning_mmloss.experiments.compare import _EpochProgress

    L.seed_everything(0)
    dm = SyntheticMultimodalDataModule("ehh", preset="tiny", batch_size=100)
    model = MultiModalClassifier(["m1", "m2", "m3"], dict.fromkeys(["m1", "m2", "m3"], 8), 2, hidden=[8])
    with Progress(disable=True) as progress:
        task = progress.add_task("epoch", total=3)
        seen: list[float] = []

        class Spy(L.Callback):
            def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
                seen.append(progress.tasks[0].completed)

        trainer(tmp_path, max_epochs=3, callbacks=[_EpochProgress(progress, task), Spy()]).fit(model, dm)
    assert seen == [1, 2, 3]


def test_a_config_data_dir_is_relative_to_the_config_file(tmp_path: Path) -> None:
    """Issue 18 part 4: the shipped UCI configs worked only from the repository root."""
    from conftest import UCI_DIR

    if not UCI_DIR.is_dir():
        pytest.skip("no UCI data")
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "views").symlink_to(UCI_DIR.resolve())
    text = (ROOT / "examples" / "configs" / "uci_mfeat.yaml").read_text()
    text = text.replace("../../../shared/data/uci-mfeat", "views")
    (folder / "mine.yaml").write_text(text)
    elsewhere = tmp_path / "run"
    elsewhere.mkdir()
    _cli("fit", "--config", str(folder / "mine.yaml"), *QUICK, "--trainer.callbacks=[]", cwd=elsewhere)
    assert any((elsewhere / "lightning_logs").rglob("*.ckpt"))
    (folder / "bad.yaml").write_text(text.replace("data_dir: views", "data_dir: nowhere"))
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_mmloss.experiments.cli", "fit", "--config", str(folder / "bad.yaml"), *QUICK],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert f"data_dir 'nowhere' is not a directory; tried {folder / 'nowhere'}, {elsewhere / 'nowhere'}" in proc.stderr


def test_results_png_shows_accuracy_and_ece_from_zero_with_the_legend_clear_of_the_bars(tmp_path: Path) -> None:
    """Issue 18 part 4: the y-axis started at 0.6 unannounced, the legend sat on the bars, no ECE."""
    import math
    import statistics

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from lightning_mmloss.experiments.compare import _plot

    with open(ROOT / "benchmarks" / "results" / "ehh.csv") as f:
        rows = [
            {k: v if k == "fusion" else (float(v) if v else math.nan) for k, v in r.items()} for r in csv.DictReader(f)
        ]
    fig = _plot(rows, ["m1", "m2", "m3"], tmp_path / "results.png", "ehh")
    acc_ax, ece_ax = fig.axes[:2]
    assert acc_ax.get_ylim()[0] == 0 and ece_ax.get_ylim()[0] == 0 and "ECE" in ece_ax.get_ylabel()
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    legend = acc_ax.get_legend().get_window_extent(renderer)
    assert not any(legend.overlaps(bar.get_window_extent(renderer)) for bar in acc_ax.patches)
    means = {t.get_text() for t in acc_ax.texts}
    mm = [r["test_acc"] for r in rows if r["fusion"] == "mm"]
    # statistics.mean, as the plot: sum / len rounds 0.8735 the other way
    assert f"{statistics.mean(mm):.3f}" in means
