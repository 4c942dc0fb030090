"""``RobustnessCallback``: the robustness report of the model at the end of every test."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from typing_extensions import override

from lightning_mmloss import _validation as V
from lightning_mmloss.robustness import DEFAULT_LEVELS, Corruption, RobustnessReport, check_levels, robustness_report


class RobustnessCallback(Callback):
    """Drop and degrade each modality on the test data when ``trainer.test`` ends its epoch.

    Runs :func:`~lightning_mmloss.robustness.robustness_report` on the first (or
    ``dataloader_idx``-th) test dataloader, on every process (the metrics are synchronised), and:

    - logs its scalars through ``LightningModule.log``, so they are in what ``trainer.test()``
      returns, in ``trainer.callback_metrics`` and in every logger:
      ``test/robustness/{clean,drop/<modalities>,degrade/<modality>/<level>}/{acc,ece,top_weight_share}``
      and ``test/robustness/relative/<modality>`` (and ``effective/<modality>`` with ``baseline``);
    - on rank zero, writes ``robustness.csv`` and ``robustness.png`` into ``output_dir`` (default:
      the trainer's ``log_dir``), adds the figure to TensorBoard (``test/robustness``) and prints
      a rich table.

    The report is kept in :attr:`report`. Each level of the sweep runs the heads once more over the
    test data per modality (``M x (len(levels) - 1)`` extra passes); drops re-fuse without them.

    Args:
        levels: degradation levels, ascending from 0.
        corruption: ``callable(batch, modality, level) -> batch`` (default Gaussian noise scaled by
            each input's standard deviation, on dict batches keyed by modality).
        drop_pairs: also drop every pair of modalities.
        seed: seed of the default noise.
        baseline: a late-fusion :class:`~lightning_mmloss.robustness.RobustnessReport` of the same
            data (or the path of its ``robustness.csv``), for the effective robustness.
        output_dir: where the CSV and PNG go (``None``: the trainer's ``log_dir``).
        print_summary: print the rich table on rank zero.
        dataloader_idx: the test dataloader to use.

    Example::

        >>> from lightning_mmloss.callbacks import RobustnessCallback
        >>> RobustnessCallback(levels=(0.0, 1.0, 2.0)).levels
        [0.0, 1.0, 2.0]
    """

    def __init__(
        self,
        levels: Sequence[float] = DEFAULT_LEVELS,
        corruption: Corruption | None = None,
        drop_pairs: bool = True,
        seed: int = 0,
        baseline: RobustnessReport | str | Path | None = None,
        output_dir: str | Path | None = None,
        print_summary: bool = True,
        dataloader_idx: int = 0,
    ) -> None:
        super().__init__()
        self.levels = check_levels(levels)  # here, not when the test ends
        if corruption is not None and not callable(corruption):
            raise TypeError(f"Expected argument `corruption` to be callable, but got {corruption!r}.")
        self.corruption = corruption
        self.drop_pairs = V.check_bool("drop_pairs", drop_pairs)
        self.seed = V.check_int("seed", seed, 0)
        if baseline is not None and not isinstance(baseline, RobustnessReport):
            baseline = RobustnessReport.from_csv(baseline)
        self.baseline = baseline
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.print_summary = V.check_bool("print_summary", print_summary)
        self.dataloader_idx = V.check_int("dataloader_idx", dataloader_idx, 0)
        self.report: RobustnessReport | None = None

    @override
    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        loaders = trainer.test_dataloaders
        loaders = list(loaders) if isinstance(loaders, (list, tuple)) else [loaders]
        if self.dataloader_idx >= len(loaders):
            raise ValueError(
                f"Expected argument `dataloader_idx` to name one of the {len(loaders)} test dataloaders, but got "
                f"{self.dataloader_idx}."
            )
        report = robustness_report(
            pl_module,
            loaders[self.dataloader_idx],
            levels=self.levels,
            corruption=self.corruption,
            drop_pairs=self.drop_pairs,
            seed=self.seed,
            to_device=trainer.strategy.batch_to_device,
        )
        self.report = report
        scalars = report.scalars("test/robustness")
        if self.baseline is not None:
            for m, v in report.effective_robustness(self.baseline).items():
                scalars[f"test/robustness/effective/{m}"] = v
        for key, value in scalars.items():  # already synchronised: sync_dist only quiets Lightning's hint
            pl_module.log(key, value, on_step=False, on_epoch=True, sync_dist=True, add_dataloader_idx=False)
        # trainer.log_dir broadcasts from rank zero: every process asks, before the rank-zero part
        self._write(trainer, report, self.output_dir or Path(trainer.log_dir or trainer.default_root_dir))

    @rank_zero_only
    def _write(self, trainer: Trainer, report: RobustnessReport, out: Path) -> None:
        report.to_csv(out / "robustness.csv")
        fig = report.figure(self.baseline)
        fig.savefig(out / "robustness.png")
        tb = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        if tb is not None:
            tb.experiment.add_figure("test/robustness", fig, trainer.global_step)
        if self.print_summary:
            from rich.console import Console

            Console().print(report.table())
