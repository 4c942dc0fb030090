"""Cost of the calibration's per-batch update and of its epoch-end fit, against a cross-entropy of the same logits.

Run: ``python benchmarks/temperature_fit.py [--threads 2]``. The mixin feeds every validation
batch of a fit to :class:`~lightning_mmloss.metrics.DecisionFit` (the temperature and the
evidence weight), which stores the batch's logits and evidence; at the epoch's end it fits both
by Newton's method on what it stored. Until issue 28 the update summed the NLL at 193 grid
temperatures, a ``(193, N, C)`` float64 computation per batch; that update (``_grid_update`` below,
a transcription kept for the comparison) is timed beside the stored-logits one, each against
one ``F.cross_entropy`` of the same logits as the unit, interleaved in one process, with the
epoch-end fit of a validation epoch of ``--batches`` such batches, and the fitted temperatures
compared (the grid refined its minimum by a parabola). Prints medians and ratios; asserts nothing
about time.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from lightning_mmloss.metrics import DecisionFit, TemperatureFit, fit_temperature

SHAPES = ((256, 10), (2000, 2), (512, 100), (128, 1000))
_GRID = torch.linspace(-math.log(1000.0), math.log(1000.0), 193, dtype=torch.float64).exp()


def _grid_update(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The update this replaced: the summed NLL of ``logits / T`` at every grid temperature, in chunks."""
    x = logits.detach().double()
    inv_t = _GRID.reciprocal()
    picked = x.gather(1, target.view(-1, 1)).squeeze(1)
    per_chunk = max(1, (1 << 18) // max(x.numel(), 1))
    sums = []
    for start in range(0, len(inv_t), per_chunk):
        t = inv_t[start : start + per_chunk, None]
        sums.append((torch.logsumexp(x[None] * t[:, :, None], dim=2) - picked[None] * t).sum(dim=1))
    return torch.cat(sums)


def _grid_temperature(nll: torch.Tensor) -> float:
    """The grid's minimum refined by a parabola in log T, as the replaced ``TemperatureFit`` did."""
    log_t = _GRID.log()
    i = int(nll.argmin())
    if 0 < i < len(nll) - 1:
        a, b, c = (float(v) for v in nll[i - 1 : i + 2])
        if a - 2 * b + c > 0:
            return math.exp(float(log_t[i]) + 0.5 * float(log_t[1] - log_t[0]) * (a - c) / (a - 2 * b + c))
    return math.exp(float(log_t[i]))


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def bench_shape(n: int, c: int, rounds: int = 5, repeats: int = 10, batches: int = 20) -> dict[str, float]:
    """Median milliseconds of each contender for batches of ``n`` instances of ``c`` classes, interleaved.

    Also the relative difference of the two fitted temperatures, ``"T rel. diff"``.
    """
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, c, (n,), generator=g)
    logits = 5 * (torch.randn(n, c, generator=g) + F.one_hot(target, c))  # not separable: a finite T
    evidence = torch.randn(n, c, generator=g).log_softmax(dim=1)
    decision, temperature = DecisionFit(validate_args=False), TemperatureFit(validate_args=False)

    def update_decision() -> None:
        decision.update(logits, target, evidence)

    def update_temperature() -> None:
        temperature.update(logits, target)

    epoch = DecisionFit(validate_args=False)
    for _ in range(batches):
        epoch.update(logits, target, evidence)
    contenders = {
        "cross-entropy": lambda: F.cross_entropy(logits, target),
        "grid update": lambda: _grid_update(logits, target),
        "DecisionFit update": update_decision,
        "TemperatureFit update": update_temperature,
        "epoch fit": lambda: epoch._fitted(),
    }
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            samples[name].append(_median_ms(fn, repeats))
        decision.reset()
        temperature.reset()
    result = {name: statistics.median(v) for name, v in samples.items()}
    grid = _grid_temperature(_grid_update(logits, target))
    result["T rel. diff"] = abs(fit_temperature(logits, target) / grid - 1)
    return result


def main(argv: list[str] | None = None) -> None:
    """Print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--batches", type=int, default=20, help="validation batches of the epoch-end fit")
    p.add_argument("--shapes", default=",".join(f"{n}x{c}" for n, c in SHAPES), help="NxC,NxC,...")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    table = Table(
        title=f"Calibration per validation batch and per epoch ({args.batches} batches), {args.threads} threads"
    )
    cols = ("N x C", "CE ms", "grid / CE", "Decision / CE", "Temp. / CE", "epoch fit ms")
    for col in (*cols, "T vs grid"):
        table.add_column(col, justify="right")
    for shape in args.shapes.split(","):
        n, c = (int(v) for v in shape.split("x"))
        r = bench_shape(n, c, args.rounds, args.repeats, args.batches)
        ce = r["cross-entropy"]
        table.add_row(
            f"{n} x {c}",
            f"{ce:.3f}",
            f"{r['grid update'] / ce:.0f}",
            f"{r['DecisionFit update'] / ce:.1f}",
            f"{r['TemperatureFit update'] / ce:.1f}",
            f"{r['epoch fit']:.1f}",
            f"{100 * r['T rel. diff']:.3f}%",
        )
    Console().print(table)


if __name__ == "__main__":
    main()
