"""``PredictionWriter``: every prediction of ``trainer.predict`` in one file that joins back to the data."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor
from typing_extensions import override

from lightning_mmloss import _validation as V

# the per-instance outputs of MultiModalLossMixin.predict_step, in the order of the columns
_OUTPUTS = ("preds", "probs", "unimodal_probs", "modality_weights", "subgroup")


class PredictionWriter(Callback):
    """Write all predictions of all predict dataloaders, concatenated, to a CSV and a ``.pt`` file.

    One row per instance, in loader order then batch order: ``dataloader_idx``, ``id`` (the
    batch's ``id_key`` when present, else the instance's position in its loader), ``target``
    (when the batch has one), ``pred``, ``prob_<class>`` (calibrated fused probabilities),
    ``<modality>_prob_<class>`` (each head's), and for ``fusion="mm"`` ``weight_<modality>``
    (the instance's modality weights) and ``subgroup`` (``class * K + proxy``); with
    ``shapley=True`` also ``shapley_<modality>`` (exact Shapley value for the predicted class;
    ``2^M`` re-fusions per batch). pandas (``pd.read_csv``) and polars read the CSV directly; the
    ``.pt`` beside it holds the same columns as tensors (``probs`` ``(N, C)``, ``unimodal_probs``
    ``(N, M, C)``, ...), and ``id`` as a tensor or a list of str.

    Under DDP every process writes its own rows, to ``<name>_rank<r>.csv`` / ``.pt`` (the
    distributed sampler may repeat a few instances to even the batches: the ids tell them apart).

    Args:
        path: the CSV file (``.csv``); the ``.pt`` goes beside it.
        id_key: the batch key (or namedtuple field) with one id per instance (a tensor or a list);
            ``None``: always the position.
        shapley: add per-instance Shapley values (needs ``fusion="mm"``).
        class_names: names of the ``C`` classes for the column names (default ``0 .. C-1``).

    Example::

        >>> from lightning_mmloss.callbacks import PredictionWriter
        >>> PredictionWriter("runs/predictions.csv").path.name
        'predictions.csv'
    """

    def __init__(
        self,
        path: str | Path = "predictions.csv",
        id_key: str | None = "id",
        shapley: bool = False,
        class_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.path = Path(path)
        if self.path.suffix != ".csv":
            raise ValueError(f"Expected argument `path` to name a .csv file, but got {str(path)!r}.")
        if id_key is not None and not isinstance(id_key, str):
            raise TypeError(f"Expected argument `id_key` to be a str or None, but got {type(id_key).__name__}.")
        self.id_key = id_key
        self.shapley = V.check_bool("shapley", shapley)
        self.class_names = V.check_class_names(class_names)
        self.written: list[Path] = []
        self._rows: list[dict[str, Any]] = []
        self._seen: dict[int, int] = {}

    # -- collection -------------------------------------------------------------------------
    def _ids(self, batch: Any, n: int, dataloader_idx: int) -> Tensor | list[Any]:
        ids: Any = None
        if self.id_key is not None:
            if isinstance(batch, Mapping):
                ids = batch.get(self.id_key)
            elif isinstance(batch, tuple) and self.id_key in getattr(batch, "_fields", ()):
                ids = getattr(batch, self.id_key)
        start = self._seen.get(dataloader_idx, 0)
        self._seen[dataloader_idx] = start + n
        if ids is None:
            return torch.arange(start, start + n)
        if isinstance(ids, Tensor):
            ids = ids.detach().cpu()
            if ids.dim() != 1 or len(ids) != n:
                raise ValueError(
                    f"Expected batch[{self.id_key!r}] to hold one id per instance ({n},), but got shape "
                    f"{tuple(ids.shape)}."
                )
            return ids
        if not isinstance(ids, Sequence) or isinstance(ids, (str, bytes)) or len(ids) != n:
            raise ValueError(f"Expected batch[{self.id_key!r}] to be a tensor or a list of {n} ids, but got {ids!r}.")
        return list(ids)

    @staticmethod
    def _target(pl_module: LightningModule, batch: Any, n: int) -> Tensor | None:
        """The batch's target, when it has one: a predict batch often has none."""
        if isinstance(batch, Mapping) and "target" not in batch:
            return None
        try:
            target = pl_module.get_target(batch)  # type: ignore[operator]
        except (ValueError, TypeError):
            return None
        # a tuple batch of inputs only would hand back its last input: keep class indices only
        if isinstance(target, Tensor) and target.dim() == 1 and len(target) == n and not target.is_floating_point():
            return target.detach().cpu()
        return None

    @override
    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not callable(getattr(pl_module, "multimodal_step", None)):
            raise RuntimeError(
                f"PredictionWriter needs a model built with MultiModalLossMixin, but {type(pl_module).__name__} is not."
            )
        if self.shapley and pl_module.mm_fusion != "mm":  # type: ignore[attr-defined]
            raise ValueError(
                f"Expected `shapley=False` for fusion={pl_module.mm_fusion!r} (Shapley values re-fuse with the "  # type: ignore[attr-defined]
                "MultiModal loss), but got True."
            )
        num_classes = pl_module.mm_num_classes  # type: ignore[attr-defined]
        V.check_class_names_count(self.class_names, num_classes)
        self._rows, self._seen = [], {}

    @override
    def on_predict_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not isinstance(outputs, Mapping) or "probs" not in outputs:
            raise RuntimeError(
                "PredictionWriter reads the dict of MultiModalLossMixin.predict_step (probs, preds, ...), but the "
                f"predict step returned {type(outputs).__name__}."
            )
        n = len(outputs["probs"])
        row: dict[str, Any] = {k: outputs[k].detach().cpu() for k in _OUTPUTS if k in outputs}
        row["dataloader_idx"] = torch.full((n,), dataloader_idx)
        row["id"] = self._ids(batch, n, dataloader_idx)
        target = self._target(pl_module, batch, n)
        if target is not None:
            row["target"] = target
        if self.shapley:
            with torch.no_grad():
                out = pl_module.multimodal_step(batch, with_target=False)  # type: ignore[operator]
                loss = getattr(pl_module.mm_loss, "_orig_mod", pl_module.mm_loss)  # type: ignore[attr-defined]
                row["shapley"] = loss.shapley(out.unimodal_logits, modality_mask=out.modality_mask).cpu()
        self._rows.append(row)

    # -- writing ----------------------------------------------------------------------------
    def _concatenated(self) -> dict[str, Any]:
        keys = [k for k in self._rows[0] if all(k in r for r in self._rows)]
        out: dict[str, Any] = {}
        for k in keys:
            parts = [r[k] for r in self._rows]
            if all(isinstance(p, Tensor) for p in parts):
                out[k] = torch.cat(parts)
            else:  # ids given as lists (e.g. file names)
                out[k] = [x for p in parts for x in (p.tolist() if isinstance(p, Tensor) else p)]
        return out

    @override
    def on_predict_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._rows:
            return
        out = self._concatenated()
        path = self.path
        if trainer.world_size > 1:
            path = path.with_name(f"{path.stem}_rank{trainer.global_rank}{path.suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)
        names = pl_module.mm_names  # type: ignore[attr-defined]
        classes = self.class_names or [str(c) for c in range(out["probs"].shape[1])]
        self._write_csv(path, out, names, classes)
        torch.save(out, path.with_suffix(".pt"))
        self.written = [path, path.with_suffix(".pt")]
        self._rows = []

    @staticmethod
    def _write_csv(path: Path, out: dict[str, Any], names: Sequence[str], classes: Sequence[str]) -> None:
        columns: list[tuple[str, Any]] = [("dataloader_idx", out["dataloader_idx"]), ("id", out["id"])]
        if "target" in out:
            columns.append(("target", out["target"]))
        columns.append(("pred", out["preds"]))
        columns += [(f"prob_{c}", out["probs"][:, j]) for j, c in enumerate(classes)]
        for m, name in enumerate(names):
            columns += [(f"{name}_prob_{c}", out["unimodal_probs"][:, m, j]) for j, c in enumerate(classes)]
        if "modality_weights" in out:
            columns += [(f"weight_{name}", out["modality_weights"][:, m]) for m, name in enumerate(names)]
        if "subgroup" in out:
            columns.append(("subgroup", out["subgroup"]))
        if "shapley" in out:
            columns += [(f"shapley_{name}", out["shapley"][:, m]) for m, name in enumerate(names)]
        values = [c.tolist() if isinstance(c, Tensor) else c for _, c in columns]
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow([name for name, _ in columns])
            writer.writerows(zip(*values, strict=True))
        tmp.replace(path)  # a reader never sees half a file
