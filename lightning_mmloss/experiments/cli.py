"""The ``lightning-mmloss`` command: ``compare`` plus LightningCLI's ``fit/validate/test/predict``."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lightning_mmloss.experiments.classifier import MultiModalClassifier

COMMANDS = ("compare", "fit", "validate", "test", "predict")
USAGE = """usage: lightning-mmloss [--version] {compare,fit,validate,test,predict} ...

  compare   train every fusion x seed on the same heads and data, print and write the comparison
            (lightning-mmloss compare --help)
  fit, validate, test, predict
            LightningCLI on MultiModalClassifier and a data module
            (lightning-mmloss fit --config examples/configs/synthetic_ehh.yaml); predict writes
            predictions.pt (a dict of concatenated tensors) into the trainer's default_root_dir
"""


class PredictionFileWriter(BasePredictionWriter):
    """Writes ``predictions.pt`` at the end of ``predict``: each key of the step's dicts, concatenated.

    Example::

        >>> PredictionFileWriter("runs/predict").path.name
        'predictions.pt'
    """

    def __init__(self, output_dir: str) -> None:
        super().__init__(write_interval="epoch")
        self.path = Path(output_dir) / "predictions.pt"

    def write_on_epoch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, predictions: Sequence[Any], batch_indices: Any
    ) -> None:
        """Concatenate the step outputs key by key and save them (one file per process under DDP)."""
        batches = predictions[0] if predictions and isinstance(predictions[0], list) else predictions
        if not batches:
            return
        out = {k: torch.cat([b[k].cpu() for b in batches]) for k in batches[0]}
        if trainer.world_size > 1:
            self.path = self.path.with_name(f"predictions_rank{trainer.global_rank}.pt")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(out, self.path)
        print(f"wrote {self.path} ({', '.join(f'{k} {tuple(v.shape)}' for k, v in out.items())})")


class MultiModalCLI(LightningCLI):
    """LightningCLI that takes the model's modalities, input sizes and classes from the data module."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:  # noqa: D102
        parser.link_arguments("data.modalities", "model.modalities", apply_on="instantiate")
        parser.link_arguments("data.input_dims", "model.input_dims", apply_on="instantiate")
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")

    def before_predict(self) -> None:
        """``predict`` writes its output to a file, not only to the return value nobody sees."""
        self.trainer.callbacks.append(PredictionFileWriter(self.trainer.default_root_dir))


def main(argv: Sequence[str] | None = None) -> None:
    """Dispatch ``compare`` to :func:`lightning_mmloss.experiments.compare.compare_main`, the rest to LightningCLI."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return
    if args[0] == "--version":
        from lightning_mmloss import __version__

        print(f"lightning-mmloss {__version__}")
        return
    if args[0] not in COMMANDS:
        print(f"lightning-mmloss: unknown command {args[0]!r}; choose from {', '.join(COMMANDS)}\n", file=sys.stderr)
        print(USAGE, file=sys.stderr)
        raise SystemExit(2)
    if args[0] == "compare":
        from lightning_mmloss.experiments.compare import compare_main

        compare_main(args[1:])
        return
    MultiModalCLI(
        MultiModalClassifier,
        L.LightningDataModule,
        subclass_mode_data=True,
        # from the console LightningCLI reads sys.argv itself (passing `args` then warns on every call)
        args=None if argv is None else args,
        save_config_kwargs={"overwrite": True},
    )


if __name__ == "__main__":
    main()
