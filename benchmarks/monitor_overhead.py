"""Cost of SubgroupMonitor per epoch (train + validation) on a synthetic three-head model.

Run: ``python benchmarks/monitor_overhead.py``. Fits the same model and data with no monitor,
with the monitor (scalars, figures to TensorBoard, rich table) and with ``shapley=True``,
interleaved. The monitor's cost is the time spent in its own hooks, measured directly (a
difference of noisy epoch times would hide it), averaged over epochs so that the image epochs
count, and shown as a share of the mean epoch time without the monitor.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from rich.console import Console
from rich.table import Table
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_mmloss import MultiModalLossMixin, SubgroupMonitor

M, C, DIM, HIDDEN = 3, 4, 200, 128
N_TRAIN, N_VAL = 10_000, 2_000


class Net(MultiModalLossMixin, L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Linear(DIM, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, C)) for _ in range(M)
        )
        self.configure_multimodal(M, C, proxies_per_class=10)

    def unimodal_logits(self, batch):
        x, _ = batch
        return torch.stack([h(x[:, m]) for m, h in enumerate(self.heads)], dim=1)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=3e-3)


def data(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, C, (n,), generator=g)
    centers = torch.randn(C, DIM, generator=torch.Generator().manual_seed(5)) * 0.15
    x = torch.randn(n, M, DIM, generator=g)
    x[:, 0] += centers[y]
    x[: n // 2, 1] += centers[y[: n // 2]]
    return TensorDataset(x, y)


class TimedMonitor(SubgroupMonitor):
    """SubgroupMonitor that adds up the time spent in its own validation hooks."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.spent: list[float] = []

    def on_validation_batch_end(self, *args, **kwargs) -> None:
        t0 = time.perf_counter()
        super().on_validation_batch_end(*args, **kwargs)
        self._acc += time.perf_counter() - t0

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        t0 = time.perf_counter()
        super().on_validation_epoch_start(trainer, pl_module)  # creates the epoch's metrics
        self._acc = time.perf_counter() - t0

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        t0 = time.perf_counter()
        super().on_validation_epoch_end(trainer, pl_module)
        self.spent.append(self._acc + time.perf_counter() - t0)

    def on_fit_end(self, trainer, pl_module) -> None:  # the last epoch's figures, if still pending
        t0 = time.perf_counter()
        super().on_fit_end(trainer, pl_module)
        self.spent[-1] += time.perf_counter() - t0


class EpochTimer(Callback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:  # after the epoch's validation
        self.times.append(time.perf_counter() - self.t0)


def run(monitor: TimedMonitor | None, epochs: int, root: str) -> list[float]:
    L.seed_everything(0, verbose=False)
    timer = EpochTimer()
    callbacks = [c for c in (monitor, timer) if c is not None]
    trainer = L.Trainer(
        max_epochs=epochs,
        logger=TensorBoardLogger(root),
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        accelerator="cpu",
    )
    train = DataLoader(data(N_TRAIN, 0), batch_size=128, shuffle=True)
    val = DataLoader(data(N_VAL, 1), batch_size=500)
    trainer.fit(Net(), train, val)
    return timer.times[1:]  # the first epoch warms up (and always logs images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=11, help="the first is not timed")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    warnings.filterwarnings("ignore")
    configs = {
        "no monitor": lambda: None,
        "default (images: first, every 10th, last epoch)": lambda: TimedMonitor(),
        "images every epoch": lambda: TimedMonitor(images_every_n_epochs=1),
        "no images, no table": lambda: TimedMonitor(images_every_n_epochs=None, print_summary=False),
        "default + shapley": lambda: TimedMonitor(shapley=True),
    }
    times: dict[str, list[float]] = {k: [] for k in configs}
    spent: dict[str, list[float]] = {k: [] for k in configs}
    with tempfile.TemporaryDirectory() as root:
        for _ in range(args.repeats):
            for name, make in configs.items():  # interleaved
                monitor = make()
                times[name] += run(monitor, args.epochs, root)
                if monitor is not None:
                    spent[name] += monitor.spent[1:]  # epochs timed below: all but the first
    base = statistics.mean(times["no monitor"])
    title = (
        f"Epoch time ({N_TRAIN} train + {N_VAL} val, M={M} x {DIM} features, C={C}, K=10), torch {torch.__version__}"
    )
    table = Table(title=title)
    for col in ("SubgroupMonitor", "mean epoch s", "monitor s / epoch", "monitor / no-monitor epoch"):
        table.add_column(col, justify="right")
    for name, ts in times.items():
        own = statistics.mean(spent[name]) if spent[name] else 0.0
        table.add_row(name, f"{statistics.mean(ts):.3f}", f"{own:.4f}", f"{own / base:.1%}")
    Console().print(table)


if __name__ == "__main__":
    main()
