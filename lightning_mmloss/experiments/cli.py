"""The ``lightning-mmloss`` command: ``compare`` plus LightningCLI's ``fit/validate/test/predict``."""

from __future__ import annotations

import importlib
import inspect
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
        """Concatenate the step outputs key by key and save them (one file per process under DDP).

        With several predict dataloaders, every loader's rows are kept, in loader order, and a
        ``dataloader_idx`` ``(N,)`` key says which loader each row came from.
        """
        loaders = list(predictions) if predictions and isinstance(predictions[0], list) else [predictions]
        pairs = [(i, b) for i, batches in enumerate(loaders) for b in batches]
        if not pairs:
            return
        out = {k: torch.cat([b[k].cpu() for _, b in pairs]) for k in pairs[0][1]}
        if len(loaders) > 1:
            out["dataloader_idx"] = torch.cat([torch.full((len(b["preds"]),), i) for i, b in pairs])
        if trainer.world_size > 1:
            self.path = self.path.with_name(f"predictions_rank{trainer.global_rank}.pt")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(out, self.path)
        print(f"wrote {self.path} ({', '.join(f'{k} {tuple(v.shape)}' for k, v in out.items())})")


#: What a data module tells the model (``modalities``, ``input_dims``, ``num_classes``), where the
#: model's ``__init__`` takes an argument of that name (docs/cli.md: the data-module contract).
LINKED = ("modalities", "input_dims", "num_classes")


def import_class(path: str, what: str) -> type:
    """The class at ``package.module.Class`` (LightningCLI's ``class_path``), with an error that says what failed."""
    module_name, _, name = path.rpartition(".")
    if not module_name:
        raise SystemExit(f"lightning-mmloss: {what} {path!r} is not a class path; give package.module.Class")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as err:
        raise SystemExit(f"lightning-mmloss: cannot import {what} {path!r}: {err}") from err
    if not isinstance(cls, type):
        raise SystemExit(f"lightning-mmloss: {what} {path!r} is not a class")
    return cls


def init_parameters(cls: type) -> set[str]:
    """Names of the keyword arguments ``cls(...)`` takes."""
    return set(inspect.signature(cls.__init__).parameters) - {"self", "args", "kwargs"}


class MultiModalCLI(LightningCLI):
    """LightningCLI that takes the model's modalities, input sizes and classes from the data module."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:  # noqa: D102
        for name in sorted(init_parameters(self.model_class) & set(LINKED)):
            parser.link_arguments(f"data.{name}", f"model.{name}", apply_on="instantiate")

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
    if _asks_for_gpu(args) and not torch.cuda.is_available():
        raise SystemExit("lightning-mmloss: --trainer.accelerator asks for a GPU, but torch sees none")
    model_class, rest = _model_class(args)
    if argv is None and rest != args:  # LightningCLI reads sys.argv itself: without --model there too
        sys.argv = [sys.argv[0], *rest]
    MultiModalCLI(
        model_class,
        L.LightningDataModule,
        subclass_mode_data=True,
        # from the console LightningCLI reads sys.argv itself (passing `args` then warns on every call)
        args=None if argv is None else rest,
        save_config_kwargs={"overwrite": True},
    )


def _asks_for_gpu(args: list[str]) -> bool:
    """Whether the command line sets ``--trainer.accelerator`` to ``gpu``/``cuda`` (configs: Lightning checks)."""
    for i, arg in enumerate(args):
        value = arg.split("=", 1)[1] if arg.startswith("--trainer.accelerator=") else None
        if arg == "--trainer.accelerator" and i + 1 < len(args):
            value = args[i + 1]
        if value in ("gpu", "cuda"):
            return True
    return False


def _model_class(args: list[str]) -> tuple[type, list[str]]:
    """``--model package.module.Class`` (a model of your own) taken out of ``args``; default MultiModalClassifier."""
    for i, arg in enumerate(args):
        if arg == "--model" and i + 1 < len(args):
            path, rest = args[i + 1], args[:i] + args[i + 2 :]
        elif arg.startswith("--model="):
            path, rest = arg.split("=", 1)[1], args[:i] + args[i + 1 :]
        else:
            continue
        cls = import_class(path, "--model")
        if not issubclass(cls, L.LightningModule):
            raise SystemExit(f"lightning-mmloss: --model {path!r} is not a LightningModule")
        return cls, rest
    return MultiModalClassifier, args


if __name__ == "__main__":
    main()
