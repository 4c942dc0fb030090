"""Lightning's own DDP (ddp_spawn on CPU) against one process; checkpoint resume against one run."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger

from lightning_mmloss import SubgroupMonitor
from tests.helpers.models import ThreeHeadNet, loaders, retry_spawn_abort, trainer


class _SaveRankProxies(Callback):
    def __init__(self, out: str) -> None:
        self.out = out

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        torch.save(pl_module.mm_loss.weight.detach().cpu(), f"{self.out}/rank{trainer.global_rank}.pt")
        torch.save(pl_module.mm_loss.temperature.cpu(), f"{self.out}/temperature{trainer.global_rank}.pt")


def _monitored(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if k.startswith("val/")}


def _csv_last_row(log_dir: str) -> dict[str, float]:
    """The last logged value of every column of a CSVLogger's metrics.csv."""
    with open(Path(log_dir) / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    out: dict[str, float] = {}
    for row in rows:
        out.update({k: float(v) for k, v in row.items() if v not in ("", None)})
    return out


@pytest.mark.timeout(240)
def test_ddp_spawn_validation_metrics_equal_single_process(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    L.seed_everything(0)
    model = ThreeHeadNet()
    state = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in model.state_dict().items()}
    _, val = loaders(n_val=128, batch_size=32, with_mask=True)
    single = trainer(
        tmp_path,
        logger=CSVLogger(str(tmp_path), name="single", version=0),
        callbacks=[SubgroupMonitor(print_summary=False, images_every_n_epochs=None)],
    )
    single.validate(model, val, verbose=False)
    expected = _monitored(_csv_last_row(single.logger.log_dir))

    def run_ddp() -> L.Trainer:
        model2 = ThreeHeadNet()
        model2.load_state_dict(state)
        ddp = trainer(
            tmp_path,
            strategy="ddp_spawn",
            devices=2,
            logger=CSVLogger(str(tmp_path), name="ddp", version=0),
            callbacks=[SubgroupMonitor(print_summary=False, images_every_n_epochs=None)],
        )
        ddp.validate(model2, val, verbose=False)
        return ddp

    ddp = retry_spawn_abort(run_ddp)
    # the library's own logging raises none of Lightning's "use sync_dist=True" hints (issue 17)
    assert "sync_dist=True" not in capfd.readouterr().err
    got = _monitored(_csv_last_row(ddp.logger.log_dir))
    # loss, acc, 24 reliability, 6 rates, 2 subgroup; no temperature: validate() never calibrates
    assert len(expected) == 34 and got.keys() == expected.keys() and "val/temperature" not in expected
    for k, v in expected.items():
        assert got[k] == pytest.approx(v, rel=1e-6, abs=1e-6), k
    # the parent process never ran the callback's hooks, but Lightning hands callback_metrics back
    parent = SubgroupMonitor.metrics_of(ddp)
    assert len(parent) == 32
    for k, v in parent.items():
        assert v == pytest.approx(expected[k], rel=1e-6, abs=1e-6), k


@pytest.mark.timeout(240)
def test_ddp_spawn_fit_keeps_proxies_identical_on_both_ranks(tmp_path: Path) -> None:
    train, val = loaders(n_train=128, n_val=64)

    def run() -> ThreeHeadNet:
        L.seed_everything(0)
        model = ThreeHeadNet()
        t = trainer(
            tmp_path, strategy="ddp_spawn", devices=2, max_epochs=2, callbacks=[_SaveRankProxies(str(tmp_path))]
        )
        t.fit(model, train, val)
        return model

    model = retry_spawn_abort(run)
    w0, w1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert torch.equal(w0, w1)
    assert torch.equal(model.mm_loss.weight.detach(), w0)  # ddp_spawn hands rank 0's weights back
    # the calibration temperature is fitted from synchronised statistics: the same on both ranks
    t0, t1 = torch.load(tmp_path / "temperature0.pt"), torch.load(tmp_path / "temperature1.pt")
    assert torch.equal(t0, t1) and float(t0) != 1.0


def test_resume_equals_uninterrupted_run(tmp_path: Path) -> None:
    def fresh() -> ThreeHeadNet:
        L.seed_everything(0)
        return ThreeHeadNet()

    train, val = loaders(shuffle=False)
    full = fresh()
    full_monitor = SubgroupMonitor(print_summary=False, images_every_n_epochs=None)
    t_full = trainer(tmp_path / "full", max_epochs=4, callbacks=[full_monitor])
    t_full.fit(full, train, val)

    part = fresh()
    t_part = trainer(
        tmp_path / "part", max_epochs=2, callbacks=[SubgroupMonitor(print_summary=False, images_every_n_epochs=None)]
    )
    t_part.fit(part, train, val)
    ckpt = tmp_path / "interrupted.ckpt"
    t_part.save_checkpoint(ckpt)

    resumed = fresh()  # a new process would start from scratch too
    monitor = SubgroupMonitor(print_summary=False, images_every_n_epochs=None)
    t_res = trainer(tmp_path / "res", max_epochs=4, callbacks=[monitor])
    t_res.fit(resumed, train, val, ckpt_path=str(ckpt))

    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        if isinstance(a, torch.Tensor):
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
        else:  # the loss's configuration (extra state)
            assert a == b, name
    assert monitor.epochs_logged == 4  # two restored from the checkpoint, two new
    expected = full_monitor.last_metrics | _monitored(t_full.callback_metrics)
    got = monitor.last_metrics | _monitored(t_res.callback_metrics)
    # the restored calibration was used: temperature and evidence weight (issue 26)
    assert len(expected) == 36 and expected["val/temperature"] != 1.0 and "val/evidence_weight" in expected
    for k, v in expected.items():
        assert got[k] == pytest.approx(v, rel=1e-6), k
