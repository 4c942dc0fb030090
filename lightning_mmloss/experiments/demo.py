"""A short demo: three linear heads on synthetic data, trained with :class:`MultiModalLoss`.

Run ``python -m lightning_mmloss.experiments.demo``. Modality ``noise`` never carries the class signal; for a
third of the instances only ``left`` carries it, for a third only ``right``, for the rest both. The demo
prints the fused and per-modality test accuracy and the learned subgroups (which proxies the
test instances fall into, and which modalities they trust).
"""

from __future__ import annotations

import argparse
import time

import torch
from rich.console import Console
from rich.table import Table
from torch import Tensor, nn

from lightning_mmloss import MultiModalLoss

MODALITIES = ("left", "noise", "right")


def make_data(n: int, num_classes: int, dim: int, signal: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Three views ``(n, 3, dim)`` and labels ``(n,)``; see the module docstring."""
    y = torch.randint(0, num_classes, (n,), generator=generator)
    centers = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(1234)) * signal
    x = torch.randn(n, 3, dim, generator=generator)
    # which of modalities 0 and 2 carry the signal: 0 only, 2 only, or both (a third each)
    pattern = torch.randint(0, 3, (n,), generator=generator)
    for m, informative in ((0, pattern != 1), (2, pattern != 0)):
        x[informative, m] += centers[y[informative]]
    return x, y


class ThreeHeads(nn.Module):
    """One small MLP head per modality; returns ``(B, M, C)`` unimodal logits."""

    def __init__(self, dim: int, num_classes: int, hidden: int = 32) -> None:
        super().__init__()
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)) for _ in MODALITIES
        )

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return torch.stack([head(x[:, m]) for m, head in enumerate(self.heads)], dim=1)


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train, evaluate and print the summary; returns the accuracies (used by the tests)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--train-size", type=int, default=4000)
    parser.add_argument("--test-size", type=int, default=2000)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--proxies", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--aux-weight", type=float, default=None, help="the loss's auxiliary unimodal cross-entropy (default: 0.5)"
    )
    args = parser.parse_args(argv)

    console = Console()
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    x_train, y_train = make_data(args.train_size, args.classes, args.dim, 0.35, gen)
    x_test, y_test = make_data(args.test_size, args.classes, args.dim, 0.35, gen)

    model = ThreeHeads(args.dim, args.classes)
    options = {} if args.aux_weight is None else {"aux_weight": args.aux_weight}
    criterion = MultiModalLoss(args.classes, list(MODALITIES), proxies_per_class=args.proxies, gamma=0.1, **options)
    # The proxies are parameters: they must be in the optimizer.
    optimizer = torch.optim.Adam([*model.parameters(), *criterion.parameters()], lr=3e-3, weight_decay=1e-4)

    start = time.perf_counter()
    for epoch in range(args.epochs):
        perm = torch.randperm(args.train_size, generator=gen)
        for idx in perm.split(256):
            u = model(x_train[idx])
            loss = criterion(u, y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if epoch % 10 == 0 or epoch == args.epochs - 1:
            console.log(f"epoch {epoch:3d}  train loss {loss.item():.4f}")
    elapsed = time.perf_counter() - start

    with torch.no_grad():
        out = criterion.fuse(model(x_test))
    fused_acc = (out.preds == y_test).float().mean().item()
    uni_acc = (out.unimodal_probs.argmax(dim=-1) == y_test[:, None]).float().mean(dim=0)

    table = Table(title=f"Test accuracy ({args.test_size} instances, trained in {elapsed:.1f} s)")
    table.add_column("prediction")
    table.add_column("accuracy", justify="right")
    table.add_row("[bold]fused (MultiModal loss)", f"[bold]{fused_acc:.3f}")
    for name, acc in zip(MODALITIES, uni_acc.tolist(), strict=True):
        table.add_row(f"{name} head", f"{acc:.3f}")
    console.print(table)

    counts = torch.bincount(out.subgroup, minlength=args.classes * args.proxies)
    sub = Table(title="Most occupied subgroups (class, proxy) on the test set")
    for col in ("class", "proxy", "instances", "fused acc", *(f"weight {m}" for m in MODALITIES)):
        sub.add_column(col, justify="right")
    for j in counts.argsort(descending=True)[:8].tolist():
        members = out.subgroup == j
        if not members.any():
            break
        acc = (out.preds[members] == y_test[members]).float().mean().item()
        w = out.modality_weights[members].mean(dim=0).tolist()
        sub.add_row(
            str(j // args.proxies), str(j % args.proxies), str(int(counts[j])), f"{acc:.3f}", *(f"{v:.2f}" for v in w)
        )
    console.print(sub)
    active = int((counts > 0).sum())
    console.print(f"{active} of {counts.numel()} subgroups hold at least one test instance.")
    return {"fused": fused_acc, **{m: a for m, a in zip(MODALITIES, uni_acc.tolist(), strict=True)}}


if __name__ == "__main__":
    main()
