"""Cost of the temperature fit's per-batch update, against the cross-entropy of the same logits.

Run: ``python benchmarks/temperature_fit.py [--threads 2]``. The mixin feeds every validation
batch of a fit to :class:`~lightning_mmloss.metrics.TemperatureFit`, which sums the NLL at each
of its grid temperatures: a ``(G, N, C)`` float64 computation, done in chunks of at most
``_MAX_ELEMENTS`` elements. For a few batch shapes this times, interleaved in one process, the
update with the library's chunk (``1 << 18``, 2 MB intermediates) and with ``1 << 22`` (32 MB, the
earlier setting), and one ``F.cross_entropy`` of the same logits as the unit. It prints medians
and ratios; it asserts nothing about time.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

import lightning_mmloss.metrics.temperature as temperature

SHAPES = ((256, 10), (2000, 2), (512, 100), (128, 1000))


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def bench_shape(n: int, c: int, rounds: int = 5, repeats: int = 10) -> dict[str, float]:
    """Median milliseconds of each contender for ``n`` instances of ``c`` classes, interleaved."""
    g = torch.Generator().manual_seed(0)
    logits = 5 * torch.randn(n, c, generator=g)
    target = torch.randint(0, c, (n,), generator=g)
    library_chunk = temperature._MAX_ELEMENTS

    def update(chunk: int) -> Callable[[], object]:
        def run() -> object:
            temperature._MAX_ELEMENTS = chunk
            try:
                return temperature._temperature_update(logits, target, -100)
            finally:
                temperature._MAX_ELEMENTS = library_chunk

        return run

    contenders = {
        "cross-entropy": lambda: F.cross_entropy(logits, target),
        "update": update(library_chunk),
        "update, 1 << 22": update(1 << 22),
    }
    torch.testing.assert_close(update(library_chunk)(), update(1 << 22)())  # same sums, any chunking
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            samples[name].append(_median_ms(fn, repeats))
    return {name: statistics.median(v) for name, v in samples.items()}


def main(argv: list[str] | None = None) -> None:
    """Print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--shapes", default=",".join(f"{n}x{c}" for n, c in SHAPES), help="NxC,NxC,...")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    table = Table(title=f"TemperatureFit update ({temperature._GRID_SIZE} temperatures), {args.threads} threads")
    for col in ("batch x classes", "cross-entropy ms", "update ms", "update / CE", "1 << 22 ms", "1 << 22 / update"):
        table.add_column(col, justify="right")
    for shape in args.shapes.split(","):
        n, c = (int(v) for v in shape.split("x"))
        r = bench_shape(n, c, args.rounds, args.repeats)
        table.add_row(
            f"{n} x {c}",
            f"{r['cross-entropy']:.3f}",
            f"{r['update']:.2f}",
            f"{r['update'] / r['cross-entropy']:.0f}",
            f"{r['update, 1 << 22']:.2f}",
            f"{r['update, 1 << 22'] / r['update']:.2f}",
        )
    Console().print(table)


if __name__ == "__main__":
    main()
