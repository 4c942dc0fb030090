"""Minimal MultiModal-loss model in Lightning: two heads, one mixin, one callback.

Run: python examples/minimal_mixin.py [--epochs N]   (TensorBoard: tensorboard --logdir runs)
"""

import argparse

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_mmloss import MultiModalLossMixin, SubgroupMonitor


class AudioVideoNet(MultiModalLossMixin, L.LightningModule):
    def __init__(self, num_classes: int = 4):
        super().__init__()
        self.audio = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, num_classes))
        self.video = nn.Sequential(nn.Linear(30, 32), nn.ReLU(), nn.Linear(32, num_classes))
        # the defaults keep each head an honest classifier and calibrate the fused probabilities
        self.configure_multimodal(["audio", "video"], num_classes, proxies_per_class=8)

    def unimodal_logits(self, batch):
        audio, video, _ = batch  # tuple batches: the target is the last element
        return {"audio": self.audio(audio), "video": self.video(video)}

    def configure_optimizers(self):  # the proxies (self.mm_loss) are among self.parameters()
        return torch.optim.Adam(self.parameters(), lr=3e-3)


def make_data(n: int, seed: int) -> TensorDataset:
    """Audio carries the class on 70% of the instances, video on the other 30% (plus noise)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    audio, video = torch.randn(n, 20, generator=g), torch.randn(n, 30, generator=g)
    by_audio = torch.rand(n, generator=g) < 0.7
    audio[by_audio, :4] += 2.5 * nn.functional.one_hot(y[by_audio], 4)
    video[~by_audio, :4] += 2.5 * nn.functional.one_hot(y[~by_audio], 4)
    return TensorDataset(audio, video, y)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--size", type=int, default=4000)
    args = parser.parse_args()
    L.seed_everything(0)
    train = DataLoader(make_data(args.size, 0), batch_size=128, shuffle=True)
    val = DataLoader(make_data(args.size // 4, 1), batch_size=256)
    trainer = L.Trainer(
        max_epochs=args.epochs,
        logger=TensorBoardLogger("runs", name="minimal_mixin"),
        callbacks=[SubgroupMonitor(every_n_epochs=5, shapley=True)],
        log_every_n_steps=5,
    )
    trainer.fit(AudioVideoNet(), train, val)
    preds = trainer.predict(AudioVideoNet.load_from_checkpoint(trainer.checkpoint_callback.best_model_path), val)
    print("first predictions:", preds[0]["preds"][:8].tolist(), "modality weights:", preds[0]["modality_weights"][0])
