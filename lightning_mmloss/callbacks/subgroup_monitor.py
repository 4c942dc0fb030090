"""``SubgroupMonitor``: per-modality reliability, agreement and subgroup statistics each epoch."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from rich.console import Console
from rich.table import Table
from torch import Tensor
from typing_extensions import override

from lightning_mmloss import _validation as V
from lightning_mmloss.callbacks._slices import OTHER, SliceMetrics, check_slices
from lightning_mmloss.functional.fusion import FusionOutput
from lightning_mmloss.functional.metrics import AGREEMENT_RATES, RELIABILITY_METRICS
from lightning_mmloss.functional.shapley import MAX_SHAPLEY_MODALITIES
from lightning_mmloss.loss import MultiModalLoss
from lightning_mmloss.metrics import ModalityAgreement, ModalityReliability, SubgroupStatistics
from lightning_mmloss.metrics._base import _AdditiveStateMetric
from lightning_mmloss.step_output import MultiModalStepOutput

_STAGE_PREFIX = {"validate": "val", "test": "test"}


class _ShapleySummary(_AdditiveStateMetric):
    """Sum of per-instance Shapley values (and of their absolute values) per modality."""

    def __init__(self, num_modalities: int) -> None:
        super().__init__()
        self._add_states(
            {
                "total": torch.zeros(num_modalities, dtype=torch.float64),
                "abs_total": torch.zeros(num_modalities, dtype=torch.float64),
                "count": torch.zeros((), dtype=torch.long),
            }
        )

    def update(self, phi: Tensor) -> None:
        self._accumulate(
            {
                "total": phi.double().sum(0),
                "abs_total": phi.double().abs().sum(0),
                "count": phi.new_tensor(phi.shape[0], dtype=torch.long),
            }
        )

    def compute(self) -> dict[str, Tensor]:
        n = self.count.clamp_min(1).double()
        return {"mean": self.total / n, "mean_abs": self.abs_total / n}


class SubgroupMonitor(Callback):
    """Monitor how each modality's head, the fusion and the learned subgroups behave.

    At the end of every ``every_n_epochs``-th validation run (runs are counted, so
    ``check_val_every_n_epoch`` combines as expected) and of every test, over the whole epoch
    (synchronised across processes), separately for each dataloader (names end in
    ``/dataloader_idx_N`` when a stage has several, as Lightning names them):

    - scalars in ``trainer.callback_metrics`` (so ``ModelCheckpoint`` and ``EarlyStopping`` can
      monitor them), to every attached logger, and in :attr:`last_metrics`:
      ``<stage>/reliability/<head>/{acc,macro_f1,ece,brier,nll,purity_gap}`` for each modality and
      ``fused``; ``<stage>/agreement/{all_agree,reinforce,conflict,all_wrong,rescued,harmed}``;
      ``<stage>/subgroups/{active,usage_entropy}``; with ``shapley=True`` also
      ``<stage>/shapley/<modality>`` (mean exact Shapley value for the predicted class);
    - with a :class:`~lightning.pytorch.loggers.TensorBoardLogger`: a histogram of subgroup
      occupancy and images of the subgroup-profile heatmap and of the pairwise agreement
      matrix, on the first, every ``images_every_n_epochs``-th and the last logged validation
      epoch of a fit, and at every test (rendering the figures costs about 0.1-0.15 s, more than
      the rest of the monitor together);
    - a rich table on rank zero (``print_summary``): by default once at the end of a fit (the
      last logged validation epoch) and after every test; :meth:`print_tables` prints the last
      ones on demand.

    It reads one thing per batch, a :class:`~lightning_mmloss.MultiModalStepOutput`: what the
    validation/test steps of :class:`~lightning_mmloss.MultiModalLossMixin` return, or what the
    mixin's :meth:`~lightning_mmloss.MultiModalLossMixin.step_output` builds for a step of your own
    (one more pass of the heads per batch, unless your step returns ``self.multimodal_step(batch)``).
    Instances whose target is ``ignore_index`` are left out. Every fusion of
    ``configure_multimodal(fusion=...)`` gets per-modality reliability and agreement; subgroups
    and Shapley values need the MultiModal loss (``fusion="mm"``).

    Args:
        every_n_epochs: run on validation epochs ``0, n, 2n, ...``.
        shapley: also compute exact per-instance Shapley values (``2^M`` re-fusions per batch).
        print_summary: when to print the rich tables on rank zero: ``"end"`` (default; also
            ``True``): at the end of a fit and after every test or ``validate()``; ``"epoch"``: every logged
            validation epoch too; ``False``: never.
        images_every_n_epochs: log the histogram and heatmaps on the first and then every n-th
            epoch that the monitor logs, when a TensorBoard logger is attached; ``None``: never.
        n_bins: calibration bins of the ECE.
        class_names: names of the ``C`` classes for the figures (default ``0 .. C-1``).
        slices: compare reliability across known conditions (site, device, noised or clean
            acquisition, group): a batch key (``"site"``), a list of keys, or a dict
            ``{name: key or callable batch -> (B,) values}``. The values (an int/bool tensor or a
            list of str, one per instance) need not be known in advance. Every reliability and
            agreement scalar is logged per value as ``<key>/<slice>=<value>``, e.g.
            ``val/reliability/audio/acc/site=3``, with a rich table and a heads x values heatmap
            of accuracy and ECE (``<stage>/slices/<slice>`` in TensorBoard).
        max_slice_values: values kept per slice (over all processes); the least frequent beyond
            it are pooled under ``(other)``, with a warning that says how many. Each value seen
            costs one small pair of metrics per process until the epoch ends.

    Example::

        >>> from lightning_mmloss.callbacks import SubgroupMonitor
        >>> monitor = SubgroupMonitor(every_n_epochs=2, shapley=True)
        >>> monitor.state_key
        "SubgroupMonitor{'every_n_epochs': 2, 'shapley': True}"
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        *,
        shapley: bool = False,
        print_summary: bool | str = "end",
        images_every_n_epochs: int | None = 10,
        n_bins: int = 15,
        class_names: list[str] | None = None,
        slices: str | Sequence[str] | Mapping[str, str | Callable[[Any], Any]] | None = None,
        max_slice_values: int = 32,
    ) -> None:
        super().__init__()
        self.slices = check_slices(slices)
        self.max_slice_values = V.check_int("max_slice_values", max_slice_values, 1)
        self._slice_metrics: dict[tuple[str, int], SliceMetrics] = {}
        self.every_n_epochs = V.check_int("every_n_epochs", every_n_epochs, 1)
        self.shapley = V.check_bool("shapley", shapley)
        if print_summary is True:
            print_summary = "end"
        if print_summary not in (False, "end", "epoch"):
            raise ValueError(
                f"Expected argument `print_summary` to be 'end', 'epoch' or False, but got {print_summary!r}."
            )
        self.print_summary = print_summary
        self._last_tables: dict[str, tuple[str, list[tuple[str, dict[str, Any]]]]] = {}
        self.images_every_n_epochs = (
            None if images_every_n_epochs is None else V.check_int("images_every_n_epochs", images_every_n_epochs, 1)
        )
        self.n_bins = V.check_int("n_bins", n_bins, 1)
        self.class_names = V.check_class_names(class_names)
        self._metrics: dict[tuple[str, int], dict[str, Any]] = {}
        self._warned_no_tensorboard = False
        self._warned_spawn = False
        self._pending_figures: tuple[str, int, list[tuple[str, dict[str, Any]]]] | None = None
        self._console: Console | None = None
        self.epochs_logged = 0
        self.val_runs = 0
        self._val_active = False
        self._last_metrics: dict[str, float] = {}

    @property
    def state_key(self) -> str:
        """Key in checkpoints; includes the arguments so that two monitors can coexist."""
        return self._generate_state_key(every_n_epochs=self.every_n_epochs, shapley=self.shapley)

    # -- set-up -----------------------------------------------------------------------------
    @staticmethod
    def _loss_of(pl_module: LightningModule) -> MultiModalLoss:
        loss = getattr(pl_module, "mm_loss", None)
        loss = getattr(loss, "_orig_mod", loss)  # torch.compile(self.mm_loss) wraps the module
        if not isinstance(loss, MultiModalLoss):
            raise RuntimeError(
                f"SubgroupMonitor needs a model built with MultiModalLossMixin and configured with "
                f"`self.configure_multimodal(...)`, but {type(pl_module).__name__} has no `mm_loss`."
            )
        return loss

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        from lightning_mmloss.mixin import MultiModalLossMixin

        if not isinstance(pl_module, MultiModalLossMixin) or "mm_fusion" not in pl_module.__dict__:
            raise RuntimeError(
                f"SubgroupMonitor needs a model built with MultiModalLossMixin and configured with "
                f"`self.configure_multimodal(...)`, but {type(pl_module).__name__} is not."
            )
        names, num_classes = pl_module.mm_names, pl_module.mm_num_classes
        loss = self._loss_of(pl_module) if pl_module.mm_fusion == "mm" else None
        if loss is None and self.shapley:
            raise ValueError(
                f"Expected `shapley=False` for fusion={pl_module.mm_fusion!r} (Shapley values re-fuse with the "
                "MultiModal loss), but got True."
            )
        if self.shapley and len(names) > MAX_SHAPLEY_MODALITIES:
            raise ValueError(
                f"Expected at most {MAX_SHAPLEY_MODALITIES} modalities with `shapley=True` (exact Shapley values "
                f"re-fuse 2^M coalitions), but the model has {len(names)}; pass `shapley=False`."
            )
        self._names = names
        self._ignore_index = pl_module.mm_ignore_index
        self._has_subgroups = loss is not None
        self._num_classes = num_classes
        self._proxies_per_class = None if loss is None else loss.proxies_per_class
        V.check_class_names_count(self.class_names, num_classes)
        self._metrics = {}
        if stage == "fit":
            # a new fit counts its own validation runs (a checkpoint's counts are restored after setup)
            self.val_runs, self.epochs_logged, self._pending_figures = 0, 0, None
            self._last_tables.pop("val", None)
            self._refuse_stale_judges(trainer)
        if (
            self.images_every_n_epochs is not None
            and self._tensorboard(trainer) is None
            and not self._image_loggers(trainer)
            and not self._warned_no_tensorboard
        ):
            self._warned_no_tensorboard = True
            rank_zero_warn(
                "SubgroupMonitor logs its scalars to any logger, but the heatmaps need a TensorBoardLogger or a logger "
                "with `log_image` (W&B, Neptune), and the occupancy histogram a TensorBoardLogger: pass "
                "`logger=TensorBoardLogger(...)` to the Trainer, or "
                "`images_every_n_epochs=None` to the callback to silence this."
            )

    def _refuse_stale_judges(self, trainer: Trainer) -> None:
        """EarlyStopping/ModelCheckpoint must not judge this monitor's keys on the epochs it skips.

        With ``every_n_epochs > 1`` its keys keep their last value on the skipped epochs, so
        ``EarlyStopping(patience=1)`` would stop after one skipped epoch that "did not improve".
        """
        if self.every_n_epochs == 1:
            return
        groups = ("reliability", "agreement", "subgroups", "shapley")
        for cb in trainer.callbacks:
            key = getattr(cb, "monitor", None) if isinstance(cb, (EarlyStopping, ModelCheckpoint)) else None
            parts = key.split("/") if isinstance(key, str) else []
            if len(parts) > 2 and parts[0] in ("val", "test") and parts[1] in groups:
                raise ValueError(
                    f"{type(cb).__name__} monitors {key!r}, which SubgroupMonitor(every_n_epochs="
                    f"{self.every_n_epochs}) logs only on every {self.every_n_epochs}th validation run: on the others "
                    f"it would judge a stale value. Use every_n_epochs=1 and validate less often with "
                    f"Trainer(check_val_every_n_epoch={self.every_n_epochs}) instead."
                )

    @staticmethod
    def _tensorboard(trainer: Trainer) -> TensorBoardLogger | None:
        return next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)

    def _new_metrics(self, device: torch.device) -> dict[str, Any]:
        metrics: dict[str, Any] = {
            # the fusion produced the probabilities: no per-batch value checks (host syncs)
            "reliability": ModalityReliability(self._names, self._num_classes, n_bins=self.n_bins, validate_args=False),
            "agreement": ModalityAgreement(self._names, validate_args=False),
        }
        if self._has_subgroups:
            assert self._proxies_per_class is not None
            metrics["subgroups"] = SubgroupStatistics(
                self._names, self._num_classes, self._proxies_per_class, validate_args=False
            )
            metrics["shapley"] = _ShapleySummary(len(self._names))
        for m in metrics.values():
            m.to(device)
        return metrics

    def _new_slice_metrics(self, key: tuple[str, int], device: torch.device) -> None:
        if self.slices:
            self._slice_metrics[key] = SliceMetrics(
                self.slices, self._names, self._num_classes, self.n_bins, self.max_slice_values, device
            )

    @staticmethod
    def _num_loaders(trainer: Trainer, prefix: str) -> int:
        batches = trainer.num_val_batches if prefix == "val" else trainer.num_test_batches
        return max(len(batches), 1)

    def _start(self, prefix: str, trainer: Trainer, pl_module: LightningModule) -> None:
        # one set of metrics per dataloader, created on every rank in the same order (DDP sync)
        self._metrics = {key: value for key, value in self._metrics.items() if key[0] != prefix}
        for idx in range(self._num_loaders(trainer, prefix)):
            self._metrics[(prefix, idx)] = self._new_metrics(pl_module.device)
            self._new_slice_metrics((prefix, idx), pl_module.device)

    # -- accumulation -----------------------------------------------------------------------
    @staticmethod
    def _step_output(pl_module: LightningModule, outputs: Any, batch: Any) -> MultiModalStepOutput:
        """The step's :class:`MultiModalStepOutput`: returned by the step, or built once by the mixin."""
        if isinstance(outputs, MultiModalStepOutput):
            return outputs
        resolve = getattr(pl_module, "step_output", None)
        if not callable(resolve):
            raise RuntimeError(
                "SubgroupMonitor reads a MultiModalStepOutput: return `self.multimodal_step(batch)` from your "
                f"validation/test step, or build {type(pl_module).__name__} with MultiModalLossMixin, but the step "
                f"returned {type(outputs).__name__}."
            )
        return resolve(outputs, batch)

    def _update(
        self, prefix: str, pl_module: LightningModule, outputs: Any, batch: Any = None, dataloader_idx: int = 0
    ) -> None:
        key = (prefix, dataloader_idx)
        if key not in self._metrics:  # a loader the epoch start did not announce
            self._metrics[key] = self._new_metrics(pl_module.device)
            self._new_slice_metrics(key, pl_module.device)
        metrics = self._metrics[key]
        out = self._step_output(pl_module, outputs, batch)
        if out.target is None:
            raise RuntimeError("SubgroupMonitor needs the step output's `target`, but it is None.")
        target, mask, fusion = out.target, out.modality_mask, out.fusion
        unimodal, probs, logits = out.unimodal_probs, out.probs, out.unimodal_logits
        sliced = self._slice_metrics.get(key)
        values = sliced.values_of(batch, target.shape[0]) if sliced is not None else {}
        keep = target != self._ignore_index
        if not bool(keep.all()):
            rows = keep.tolist()
            values = {name: [v for v, k in zip(vals, rows, strict=True) if k] for name, vals in values.items()}
            target, unimodal, probs, logits = target[keep], unimodal[keep], probs[keep], logits[keep]
            mask = None if mask is None else mask[keep]
            if fusion is not None:
                fusion = FusionOutput(*(getattr(fusion, f)[keep] for f in FusionOutput.__dataclass_fields__))
        if target.numel() == 0:
            return  # nothing to score (an empty or all-ignored batch)
        metrics["reliability"].update(unimodal, probs, target, mask)
        metrics["agreement"].update(unimodal, probs, target, mask)
        if sliced is not None:
            sliced.update(values, unimodal, probs, target, mask)
        if fusion is not None and "subgroups" in metrics:
            metrics["subgroups"].update_from_fusion(fusion, target)
            if self.shapley:
                metrics["shapley"].update(self._loss_of(pl_module).shapley(logits, modality_mask=mask))

    @override
    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # every_n_epochs counts validation runs, not trainer epochs: with
        # check_val_every_n_epoch=2 the epochs that validate are 1, 3, 5, ...
        self._val_active = not trainer.sanity_checking and self.val_runs % self.every_n_epochs == 0
        if self._val_active:
            self._start("val", trainer, pl_module)

    @override
    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start("test", trainer, pl_module)

    @override
    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._val_active:
            self._update("val", pl_module, outputs, batch, dataloader_idx)

    @override
    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._update("test", pl_module, outputs, batch, dataloader_idx)

    @override
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if self._val_active:
            self._finish("val", trainer, pl_module)
        self.val_runs += 1

    @override
    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._finish("test", trainer, pl_module)

    # -- reporting --------------------------------------------------------------------------
    def compute(self, prefix: str = "val", dataloader_idx: int = 0) -> dict[str, Any]:
        """The three (four with Shapley) metric groups of one stage ("val" or "test") and loader, synchronised."""
        metrics = self._metrics.get((prefix, dataloader_idx))
        if metrics is None:
            have = sorted(self._metrics) or "none yet"
            raise RuntimeError(
                f"SubgroupMonitor has no {prefix!r} metrics for dataloader {dataloader_idx}: they exist from the start "
                f"of a validation or test epoch until its end (have: {have}); read `last_metrics` afterwards."
            )
        out = {k: metrics[k].compute() for k in ("reliability", "agreement", "subgroups") if k in metrics}
        if self.shapley:
            out["shapley"] = metrics["shapley"].compute()
        sliced = self._slice_metrics.get((prefix, dataloader_idx))
        if sliced is not None:
            out["slices"] = sliced.compute()
            for name, pooled in sliced.pooled.items():
                if pooled:
                    rank_zero_warn(
                        f"SubgroupMonitor slice {name!r}: {pooled} of its values beyond max_slice_values="
                        f"{self.max_slice_values} (the least frequent) are pooled under {OTHER!r}."
                    )
        return out

    def _scalars(self, prefix: str, suffix: str, values: dict[str, Any]) -> dict[str, float]:
        scalars: dict[str, float] = {}
        for key, v in values["reliability"].items():
            scalars[f"{prefix}/reliability/{key}{suffix}"] = float(v)
        for rate in AGREEMENT_RATES:
            scalars[f"{prefix}/agreement/{rate}{suffix}"] = float(values["agreement"][rate])
        if "subgroups" in values:
            scalars[f"{prefix}/subgroups/active{suffix}"] = float(values["subgroups"]["active"])
            scalars[f"{prefix}/subgroups/usage_entropy{suffix}"] = float(values["subgroups"]["usage_entropy"])
        if self.shapley:
            for name, v in zip(self._names, values["shapley"]["mean"].tolist(), strict=True):
                scalars[f"{prefix}/shapley/{name}{suffix}"] = v
        for name, per_value in values.get("slices", {}).items():
            for value, groups in per_value.items():
                where = f"/{name}={value}{suffix}"
                for key, v in groups["reliability"].items():
                    scalars[f"{prefix}/reliability/{key}{where}"] = float(v)
                for rate in AGREEMENT_RATES:
                    scalars[f"{prefix}/agreement/{rate}{where}"] = float(groups["agreement"][rate])
        return scalars

    def _finish(self, prefix: str, trainer: Trainer, pl_module: LightningModule) -> None:
        indices = sorted(idx for (p, idx) in self._metrics if p == prefix)
        many = len(indices) > 1
        scalars: dict[str, float] = {}
        tables: list[tuple[str, dict[str, Any]]] = []
        for idx in indices:
            metrics = self._metrics[(prefix, idx)]
            if int(metrics["reliability"].count.sum()) == 0 and not torch.distributed.is_initialized():
                continue  # nothing seen (e.g. limit_val_batches=0)
            values = self.compute(prefix, idx)
            # Lightning's own naming when a stage has several dataloaders
            suffix = f"/dataloader_idx_{idx}" if many else ""
            scalars.update(self._scalars(prefix, suffix, values))
            tables.append((suffix, values))
            for m in metrics.values():
                m.reset()
            self._new_slice_metrics((prefix, idx), pl_module.device)
        if not tables:
            return
        # Through LightningModule.log, so that they are where Lightning users look: in
        # callback_metrics (ModelCheckpoint, EarlyStopping, the parent process of ddp_spawn), in
        # what trainer.validate()/test() return, and in every logger. The values are already
        # synchronised across processes (the metrics' states were reduced), so sync_dist's mean of
        # equal values changes nothing; it is asked for so that Lightning does not warn, once per
        # key, that epoch-level values should be synchronised (a few tiny all-reduces per epoch).
        for name, value in scalars.items():
            pl_module.log(name, value, on_step=False, on_epoch=True, sync_dist=True, add_dataloader_idx=False)
        self._last_metrics = scalars
        self._warn_spawn_limit(trainer, len(scalars))
        every = self.images_every_n_epochs
        if every is not None and (prefix == "test" or self.epochs_logged % every == 0):
            self._log_figures(prefix, trainer.global_step, trainer, tables)
            self._pending_figures = None
        elif every is not None:
            self._pending_figures = (prefix, trainer.global_step, tables)  # drawn at the end of fit
        self.epochs_logged += 1
        # a test has no epoch of its own (from a checkpoint, current_epoch is not the training's)
        self._last_tables[prefix] = (f"epoch {trainer.current_epoch}" if prefix == "val" else "", tables)
        # a test or a standalone validate() is one epoch: its table is the summary
        alone = prefix == "test" or trainer.state.fn == TrainerFn.VALIDATING
        if self.print_summary == "epoch" or (self.print_summary and alone):
            self.print_tables(prefix)

    def print_tables(self, stage: str = "val") -> None:
        """Print the rich tables of the last logged ``stage`` ("val" or "test") epoch (rank zero).

        Raises:
            RuntimeError: if that stage has logged nothing yet.
        """
        if stage not in self._last_tables:
            raise RuntimeError(
                f"SubgroupMonitor has logged no {stage!r} epoch yet (have: {sorted(self._last_tables)})."
            )
        when, tables = self._last_tables[stage]
        for suffix, values in tables:
            self._print_table(stage + suffix, when, values)

    def _warn_spawn_limit(self, trainer: Trainer, logged: int) -> None:
        """Warn before a ddp_spawn run hangs on the number of its callback metrics.

        ddp_spawn hands ``callback_metrics`` to the parent through a pipe that Lightning reads only
        after joining the processes: above 64 KiB (about 200 scalars) rank zero blocks for ever.
        """
        from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher

        launcher = getattr(trainer.strategy, "launcher", None)
        keys = len(set(trainer.callback_metrics)) + logged
        if isinstance(launcher, _MultiProcessingLauncher) and keys > 150 and not self._warned_spawn:
            self._warned_spawn = True
            rank_zero_warn(
                f"SubgroupMonitor logs {logged} scalars ({keys} callback metrics in all) under a spawning strategy "
                "(ddp_spawn): Lightning returns callback_metrics to the parent through a pipe it reads only after "
                "the processes end, and above about 200 keys the run hangs when it finishes. Use strategy='ddp', "
                "or fewer slices / max_slice_values."
            )

    @property
    def last_metrics(self) -> dict[str, float]:
        """The scalars of the last logged epoch (also in ``trainer.callback_metrics``).

        After ``strategy="ddp_spawn"`` the parent process never ran this callback's hooks: read
        the same values there with :meth:`metrics_of` (``SubgroupMonitor.metrics_of(trainer)``).
        """
        return self._last_metrics

    @last_metrics.setter
    def last_metrics(self, value: dict[str, float]) -> None:
        self._last_metrics = dict(value)

    @staticmethod
    def metrics_of(trainer: Trainer) -> dict[str, float]:
        """The monitor's scalars in ``trainer.callback_metrics`` (any process, ``ddp_spawn``'s parent too)."""
        groups = ("reliability", "agreement", "subgroups", "shapley")
        return {
            k: float(v)
            for k, v in trainer.callback_metrics.items()
            if k.split("/")[0] in ("val", "test") and len(k.split("/")) > 2 and k.split("/")[1] in groups
        }

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.print_summary == "end" and "val" in self._last_tables:
            self.print_tables("val")
        if self._pending_figures is not None:  # the last logged epoch skipped its figures
            prefix, step, tables = self._pending_figures
            self._log_figures(prefix, step, trainer, tables)
            self._pending_figures = None
        if self.epochs_logged == 0 and self.val_runs > 0:
            rank_zero_warn(
                f"SubgroupMonitor logged nothing in this fit: {self.val_runs} validation run(s), every_n_epochs="
                f"{self.every_n_epochs}, and no batch reached it (does the validation step return the mixin's dict?)."
            )

    @rank_zero_only
    def _log_figures(self, prefix: str, step: int, trainer: Trainer, tables: list[tuple[str, dict[str, Any]]]) -> None:
        for suffix, values in tables:
            self._log_figures_of(prefix, suffix, step, trainer, values)

    @staticmethod
    def _image_loggers(trainer: Trainer) -> list[Any]:
        """Loggers other than TensorBoard that take images through ``log_image`` (W&B, Neptune, ...)."""
        return [
            lg
            for lg in trainer.loggers
            if not isinstance(lg, TensorBoardLogger) and callable(getattr(lg, "log_image", None))
        ]

    def _log_figures_of(self, prefix: str, suffix: str, step: int, trainer: Trainer, values: dict[str, Any]) -> None:
        tb = self._tensorboard(trainer)
        others = self._image_loggers(trainer)
        if tb is None and not others:
            return
        from lightning_mmloss.plotting import (
            agreement_matrix_figure,
            figure_to_array,
            slice_reliability_figure,
            subgroup_profile_figure,
        )

        figures = {
            f"{prefix}/agreement/pairwise{suffix}": agreement_matrix_figure(
                values["agreement"]["pairwise"], self._names
            )
        }
        if "subgroups" in values:
            sub = values["subgroups"]
            figures[f"{prefix}/subgroups/profile{suffix}"] = subgroup_profile_figure(
                sub["profile"], sub["occupancy"], self._names, class_names=self.class_names
            )
            if tb is not None:
                occupancy = sub["occupancy"].flatten().double().cpu()
                n = occupancy.numel()
                index = torch.arange(n, dtype=torch.float64)
                tb.experiment.add_histogram_raw(
                    f"{prefix}/subgroups/occupancy{suffix}",
                    min=0.0,
                    max=float(n - 1),
                    num=float(occupancy.sum()),
                    sum=float((index * occupancy).sum()),
                    sum_squares=float((index**2 * occupancy).sum()),
                    bucket_limits=(index + 0.5).tolist(),
                    bucket_counts=occupancy.tolist(),
                    global_step=step,
                )
        for name, per_value in values.get("slices", {}).items():
            heads = [*self._names, "fused"]
            acc, ece = (
                torch.tensor([[float(g["reliability"][f"{h}/{metric}"]) for g in per_value.values()] for h in heads])
                for metric in ("acc", "ece")
            )
            figures[f"{prefix}/slices/{name}{suffix}"] = slice_reliability_figure(
                acc, ece, heads, list(per_value), name
            )
        for tag, fig in figures.items():
            if others:
                array = figure_to_array(fig)  # before TensorBoard's add_figure closes the figure
                for logger in others:
                    logger.log_image(key=tag, images=[array], step=step)
            if tb is not None:
                tb.experiment.add_figure(tag, fig, step)

    @rank_zero_only
    def _print_table(self, prefix: str, when: str, values: dict[str, Any]) -> None:
        rel = values["reliability"]
        table = Table(title=f"{prefix} {when}".strip() + ": per-modality reliability")
        table.add_column("head")
        for metric in RELIABILITY_METRICS:
            table.add_column(metric, justify="right")
        if self.shapley:
            table.add_column("shapley", justify="right")
        for i, head in enumerate([*self._names, "fused"]):
            row = [f"{float(rel[f'{head}/{metric}']):.3f}" for metric in RELIABILITY_METRICS]
            if self.shapley:
                row.append(f"{float(values['shapley']['mean'][i]):+.3f}" if head != "fused" else "")
            table.add_row(f"[bold]{head}" if head == "fused" else head, *row)
        agr = values["agreement"]
        caption = "agreement: " + "  ".join(f"{rate} {float(agr[rate]):.3f}" for rate in AGREEMENT_RATES)
        if "subgroups" in values:
            sub = values["subgroups"]
            caption += (
                f"\nsubgroups: {int(sub['active'])}/{sub['occupancy'].numel()} active, "
                f"usage entropy {float(sub['usage_entropy']):.2f}"
            )
        table.caption = caption
        if self._console is None:
            self._console = Console()
        self._console.print(table)
        for name, per_value in values.get("slices", {}).items():
            self._console.print(self._slice_table(f"{prefix} {when}".strip(), name, per_value))

    def _slice_table(self, title: str, name: str, per_value: dict[str, dict[str, Any]]) -> Table:
        """Heads x values of one slice, each cell ``accuracy / ECE``; transposed when values outnumber heads."""
        heads = [*self._names, "fused"]

        def cell(groups: dict[str, Any], head: str) -> str:
            rel = groups["reliability"]
            return f"{float(rel[f'{head}/acc']):.3f} / {float(rel[f'{head}/ece']):.3f}"

        table = Table(title=f"{title}: accuracy / ECE by {name}")
        values = [f"{value} (n={groups['count']})" for value, groups in per_value.items()]
        if len(values) <= len(heads):  # the fewer columns, the likelier it fits an 80-column terminal
            table.add_column("head")
            for label in values:
                table.add_column(label, justify="right")
            for head in heads:
                table.add_row(
                    f"[bold]{head}" if head == "fused" else head, *(cell(g, head) for g in per_value.values())
                )
        else:
            table.add_column(name)
            for head in heads:
                table.add_column(f"[bold]{head}" if head == "fused" else head, justify="right")
            for label, groups in zip(values, per_value.values(), strict=True):
                table.add_row(label, *(cell(groups, head) for head in heads))
        return table

    # -- checkpointing ----------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"epochs_logged": self.epochs_logged, "val_runs": self.val_runs, "last_metrics": dict(self.last_metrics)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        epochs = state_dict.get("epochs_logged", 0)
        last = state_dict.get("last_metrics", {})
        if not isinstance(epochs, int) or not isinstance(last, dict):
            raise ValueError(f"Expected a SubgroupMonitor state with an int and a dict, but got {state_dict!r}.")
        runs = state_dict.get("val_runs", epochs * self.every_n_epochs)  # older checkpoints: best estimate
        if not isinstance(runs, int):
            raise ValueError(f"Expected a SubgroupMonitor state with an int 'val_runs', but got {runs!r}.")
        self.epochs_logged = epochs
        self.val_runs = runs
        self.last_metrics = {str(k): float(v) for k, v in last.items()}
