"""The ``lightning-mmloss`` command: ``compare`` plus LightningCLI's ``fit/validate/test/predict``."""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Sequence

# No torch or Lightning at import time: `lightning-mmloss --help` and `--version` answer at once
# (importing Lightning takes seconds); the commands import what they need.

COMMANDS = ("compare", "fit", "validate", "test", "predict", "robustness")
USAGE = """usage: lightning-mmloss [--version] {compare,fit,validate,test,predict,robustness} ...

  compare   train every fusion x seed on the same heads and data, print and write the comparison
            (lightning-mmloss compare --help)
  fit, validate, test, predict
            LightningCLI on MultiModalClassifier and a data module
            (lightning-mmloss fit --config examples/configs/synthetic_ehh.yaml); predict writes
            predictions.csv and predictions.pt into the trainer's default_root_dir
  robustness
            test with each modality dropped and degraded (--levels 0,0.5,1,2,4; noise std / input
            std): lightning-mmloss robustness --config ... --ckpt_path ...; writes robustness.csv
            and robustness.png into the run's log_dir
"""


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


def main(argv: Sequence[str] | None = None) -> None:
    """Dispatch ``compare`` to :func:`lightning_mmloss.experiments.compare.compare_main`, the rest to LightningCLI."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return
    if args[0] == "--version":
        from lightning_mmloss import __version__  # the package's __init__ imports nothing heavy

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
    from lightning_mmloss.experiments.lightning_cli import lightning_cli_main

    lightning_cli_main(args, from_console=argv is None)


if __name__ == "__main__":
    main()
