"""Multi-GPU / multi-node training with Lightning's own DDP (no custom distributed code).

    python examples/ddp_launch.py --devices 2 --accelerator gpu          # one node, 2 GPUs
    torchrun --nnodes 2 --nproc-per-node 4 examples/ddp_launch.py --devices 4 --num-nodes 2
    python examples/ddp_launch.py --devices 2 --strategy ddp_spawn       # CPU smoke test

The proxies live in ``model.mm_loss`` (a registered submodule), so DDP synchronises their
gradients with the rest; the SubgroupMonitor's metrics synchronise through torchmetrics.
"""

import argparse

import lightning as L
import torch

from lightning_mmloss import SubgroupMonitor
from lightning_mmloss.experiments.classifier import MultiModalClassifier
from lightning_mmloss.experiments.data import SyntheticMultimodalDataModule

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--num-nodes", type=int, default=1)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--strategy", default="ddp")
    parser.add_argument("--precision", default="32-true", help="e.g. bf16-mixed on recent GPUs")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--preset", default="default")
    args = parser.parse_args()
    if args.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise SystemExit(f"ddp_launch.py: --accelerator {args.accelerator} asks for a GPU, but torch sees none")
    L.seed_everything(0)
    dm = SyntheticMultimodalDataModule("conflict", preset=args.preset, batch_size=128)
    model = MultiModalClassifier(dm.modalities, dm.input_dims, dm.num_classes, fusion="mm", hidden=[64])
    trainer = L.Trainer(
        accelerator=args.accelerator,
        devices=args.devices,
        num_nodes=args.num_nodes,
        strategy=args.strategy,
        precision=args.precision,
        max_epochs=args.epochs,
        callbacks=[SubgroupMonitor(every_n_epochs=5)],
        logger=False,
        enable_checkpointing=False,
    )
    trainer.fit(model, dm)
    if trainer.global_rank == 0:
        print("val/acc", float(trainer.callback_metrics["val/acc"]))
