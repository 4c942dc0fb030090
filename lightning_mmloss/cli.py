"""The ``lightning-mmloss`` command: ``compare`` plus LightningCLI's ``fit/validate/test/predict``."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import lightning as L
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lightning_mmloss.classifier import MultimodalClassifier

USAGE = """usage: lightning-mmloss {compare,fit,validate,test,predict} ...

  compare   train every fusion x seed on the same heads and data, print and write the comparison
            (lightning-mmloss compare --help)
  fit, validate, test, predict
            LightningCLI on MultimodalClassifier and a data module
            (lightning-mmloss fit --config examples/configs/synthetic_ehh.yaml)
"""


class MultimodalCLI(LightningCLI):
    """LightningCLI that takes the model's modalities, input sizes and classes from the data module."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:  # noqa: D102
        parser.link_arguments("data.modalities", "model.modalities", apply_on="instantiate")
        parser.link_arguments("data.input_dims", "model.input_dims", apply_on="instantiate")
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")


def main(argv: Sequence[str] | None = None) -> None:
    """Dispatch ``compare`` to :func:`lightning_mmloss.compare.compare_main`, the rest to LightningCLI."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return
    if args[0] == "compare":
        from lightning_mmloss.compare import compare_main

        compare_main(args[1:])
        return
    MultimodalCLI(
        MultimodalClassifier,
        L.LightningDataModule,
        subclass_mode_data=True,
        args=args,
        save_config_kwargs={"overwrite": True},
    )


if __name__ == "__main__":
    main()
