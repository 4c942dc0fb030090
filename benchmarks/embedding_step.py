"""A training step where users feel the loss: small heads on precomputed embeddings.

Run: ``python benchmarks/embedding_step.py`` (``--device cuda`` on a GPU machine).

Three modalities of 512 precomputed features each (frozen image/audio/text encoders), one
two-layer MLP head per modality (512-256-C), batch 1024, K=20 proxies per class; C=10 and C=100.
One timed step is forward, backward and an Adam step over heads (and proxies). Contenders,
interleaved in one process, median of ``--repeats`` rounds (shuffled order) of ``--steps`` steps:

* ``late``: the unimodal cross-entropies plus the cross-entropy of the mean logits (the
  ``late`` fusion of ``lightning-mmloss compare``);
* ``mm``: :class:`lightning_mmloss.MultiModalLoss` with its defaults (auxiliary unimodal term,
  argument checks with one host sync);
* ``mm-novalid``: the same with ``validate_args=False``;
* with ``--compile``: ``late`` and ``mm`` under ``torch.compile`` (the default loss compiles
  with ``fullgraph=True``; the step's forward and backward are compiled, the optimizer not).

Also printed: the number of operator calls (CPU) or kernels (CUDA) of the loss's forward and
backward alone, counted with ``torch.profiler`` (one call, after warm-up). Timings are not
asserted anywhere; ratios are measured side by side because CPU timings on shared machines vary
by about 20% between runs. Threads: ``--threads`` (default 2, the machine's cores).
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from torch import nn

from lightning_mmloss import MultiModalLoss

try:
    from _opcount import count_ops
except ImportError:  # run as a module from the repository root
    from benchmarks._opcount import count_ops

M, D, B, K = 3, 512, 1024, 20


def heads(num_classes: int, device: str) -> nn.ModuleList:
    return nn.ModuleList(nn.Sequential(nn.Linear(D, 256), nn.ReLU(), nn.Linear(256, num_classes)) for _ in range(M)).to(
        device
    )


def make_step(kind: str, num_classes: int, device: str, compile_: bool) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """A closure that runs one training step on ``(x, y)`` for the contender ``kind``."""
    torch.manual_seed(0)
    net = heads(num_classes, device)
    params = list(net.parameters())
    crit = None
    if kind.startswith("mm"):
        crit = MultiModalLoss(num_classes, M, K, validate_args=kind != "mm-novalid").to(device)
        params += list(crit.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)

    def loss_fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        u = torch.stack([h(x[:, m]) for m, h in enumerate(net)], dim=1)  # (B, M, C)
        if crit is not None:
            return crit(u, y)
        unimodal = F.cross_entropy(u.flatten(0, 1), y.repeat_interleave(M))
        return F.cross_entropy(u.mean(dim=1), y) + unimodal

    fn = torch.compile(loss_fn) if compile_ else loss_fn

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        fn(x, y).backward()
        opt.step()

    return step


def count_loss_ops(num_classes: int, device: str) -> tuple[int, int]:
    """Data-touching operators (CPU) or kernels (CUDA) of the loss's forward + backward: (mm, late)."""
    u = torch.randn(B, M, num_classes, device=device, requires_grad=True)
    y = torch.randint(0, num_classes, (B,), device=device)
    crit = MultiModalLoss(num_classes, M, K).to(device)

    def mm() -> None:
        crit(u, y).backward()
        u.grad = crit.weight.grad = None  # no gradient accumulation in the count

    def late() -> None:
        (F.cross_entropy(u.mean(dim=1), y) + F.cross_entropy(u.flatten(0, 1), y.repeat_interleave(M))).backward()
        u.grad = None

    return count_ops(mm, device)[1], count_ops(late, device)[1]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--classes", default="10,100")
    p.add_argument("--compile", action="store_true", help="also time the steps under torch.compile")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = args.device
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    console = Console(width=140)
    table = Table(
        title=f"Training step, {M} x {D}-feature embeddings, heads {D}-256-C, B={B}, K={K}, torch "
        f"{torch.__version__}, {device} ({platform.processor() or platform.machine()}, {args.threads} threads)"
    )
    for col in ("C", "contender", "median ms", "/ late", "ops fwd+bwd (loss)"):
        table.add_column(col, justify="right")
    kinds = ["late", "mm", "mm-novalid"] + (["late-compiled", "mm-compiled"] if args.compile else [])
    for C in (int(c) for c in args.classes.split(",")):
        x = torch.randn(B, M, D, device=device)
        y = torch.randint(0, C, (B,), device=device)
        steps = {k: make_step(k.removesuffix("-compiled"), C, device, k.endswith("-compiled")) for k in kinds}
        for step in steps.values():  # warm-up (and compilation)
            for _ in range(3):
                step(x, y)
        sync()
        times: dict[str, list[float]] = {k: [] for k in kinds}
        order, rng = list(kinds), random.Random(0)
        for _ in range(args.repeats):
            rng.shuffle(order)  # interleaved, shuffled: drift and page-fault debts hit every contender alike
            for k in order:
                step = steps[k]
                sync()
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    step(x, y)
                sync()
                times[k].append((time.perf_counter() - t0) / args.steps * 1e3)
        mm_ops, late_ops = count_loss_ops(C, device)
        base = statistics.median(times["late"])
        for k in kinds:
            med = statistics.median(times[k])
            ops = str(mm_ops) if k == "mm" else str(late_ops) if k == "late" else ""
            table.add_row(str(C), k, f"{med:.2f}", f"{med / base:.2f}", ops)
    console.print(table)


if __name__ == "__main__":
    main()
