"""LightningCLI on a model of the mixin and a data module: ``lightning-mmloss fit/validate/test/predict``."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lightning_mmloss.callbacks import PredictionWriter, RobustnessCallback
from lightning_mmloss.experiments.classifier import MultiModalClassifier
from lightning_mmloss.experiments.cli import LINKED, import_class, init_parameters
from lightning_mmloss.robustness import DEFAULT_LEVELS, check_levels


class MultiModalCLI(LightningCLI):
    """LightningCLI that takes the model's modalities, input sizes and classes from the data module."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:  # noqa: D102
        for name in sorted(init_parameters(self.model_class) & set(LINKED)):
            parser.link_arguments(f"data.{name}", f"model.{name}", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        """A relative ``data_dir`` in a config file is taken relative to that file (then to the working directory)."""
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        data = config.get("data") if config is not None else None
        init = data.get("init_args") if data is not None and hasattr(data, "get") else None
        value = init.get("data_dir") if init is not None and hasattr(init, "get") else None
        if not isinstance(value, str) or Path(value).is_absolute():
            return
        files = [Path(str(c)) for c in (config.get("config") or [])]
        tried = [f.parent / value for f in files] + [Path.cwd() / value]
        found = next((t for t in tried if t.is_dir()), None)
        if found is None:
            raise SystemExit(
                f"lightning-mmloss: data_dir {value!r} is not a directory; tried "
                f"{', '.join(str(t.resolve()) for t in tried)} (a relative data_dir is taken relative to the config "
                "file, then to the working directory); set it with --data.init_args.data_dir=PATH"
            )
        init["data_dir"] = str(found.resolve())

    def before_predict(self) -> None:
        """``predict`` writes its output to a file, not only to the return value nobody sees."""
        path = Path(self.trainer.default_root_dir) / "predictions.csv"
        self.trainer.callbacks.append(PredictionWriter(path))


class RobustnessCLI(MultiModalCLI):
    """``lightning-mmloss robustness``: LightningCLI's ``test`` with a :class:`RobustnessCallback`."""

    levels: tuple[float, ...] = DEFAULT_LEVELS

    def before_test(self) -> None:
        """The robustness report at the end of the test (robustness.csv/png in the run's log_dir)."""
        self.trainer.callbacks.append(RobustnessCallback(levels=self.levels))


def _take_option(args: list[str], flag: str) -> tuple[str | None, list[str]]:
    """The value of ``flag VALUE`` or ``flag=VALUE`` in ``args``, and ``args`` without it."""
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1], args[:i] + args[i + 2 :]
        if arg.startswith(f"{flag}="):
            return arg.split("=", 1)[1], args[:i] + args[i + 1 :]
    return None, args


def _levels(args: list[str]) -> tuple[tuple[float, ...], list[str]]:
    """``--levels 0,0.5,1`` taken out of ``args`` (robustness only)."""
    text, rest = _take_option(args, "--levels")
    if text is None:
        return DEFAULT_LEVELS, args
    try:
        numbers = [float(x) for x in text.split(",")]
    except ValueError:
        raise SystemExit(f"lightning-mmloss robustness: --levels takes numbers like 0,0.5,1, got {text!r}") from None
    try:
        return tuple(check_levels(numbers)), rest
    except ValueError:
        raise SystemExit(f"lightning-mmloss robustness: --levels must ascend from 0, got {text!r}") from None


def lightning_cli_main(args: list[str], from_console: bool) -> None:
    """Run LightningCLI on ``args`` (``fit ...``); ``from_console``: they are ``sys.argv[1:]``.

    ``robustness ...`` runs ``test ...`` with the robustness report at its end.
    """
    if _asks_for_gpu(args) and not torch.cuda.is_available():
        raise SystemExit("lightning-mmloss: --trainer.accelerator asks for a GPU, but torch sees none")
    cli_class: type[MultiModalCLI] = MultiModalCLI
    if args[0] == "robustness":
        levels, args = _levels(args)
        cli_class = type("RobustnessCLI", (RobustnessCLI,), {"levels": levels})
        args = ["test", *args[1:]]
    model_class, rest = _model_class(args)
    if from_console:  # LightningCLI reads sys.argv itself: the rewritten arguments there too
        sys.argv = [sys.argv[0], *rest]
    cli_class(
        model_class,
        L.LightningDataModule,
        subclass_mode_data=True,
        # from the console LightningCLI reads sys.argv itself (passing `args` then warns on every call)
        args=None if from_console else rest,
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
    path, rest = _take_option(args, "--model")
    if path is None:
        return MultiModalClassifier, args
    cls = import_class(path, "--model")
    if not issubclass(cls, L.LightningModule):
        raise SystemExit(f"lightning-mmloss: --model {path!r} is not a LightningModule")
    return cls, rest
