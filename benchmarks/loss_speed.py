"""Forward+backward speed of MultiModalLoss against a plain transcription and plain cross-entropy.

Run: ``python benchmarks/loss_speed.py`` (``--device cuda`` on a GPU machine).

Contenders per configuration (B, M, C, K), timed interleaved in one process, in a shuffled
order each round (a contender that frees much memory makes the next one pay page faults):

* ``mmloss``: :class:`lightning_mmloss.MultiModalLoss` as users get it (``validate_args=True``,
  one device sync per call for the input checks), and ``no-valid`` without the checks, both
  with ``PAPER_OPTIONS`` (the formulation the transcription computes); ``+aux`` is the default
  configuration, with its auxiliary unimodal cross-entropy and the heads' log-evidence in the
  fused logit, and ``+aux-le0`` the same without the log-evidence (what that term costs);
  ``autograd`` the composite backend;
* ``plain``: the formulation of ``shared/design/loss.md`` (the authors' formulation) transcribed
  line by line with vectorised torch ops and autograd (below, ``plain_multimodal_loss``);
* ``softtriple``: pytorch-metric-learning's ``SoftTripleLoss`` (K centers per class) on the same
  embedding, the concatenated unimodal probabilities (only when the package is installed:
  ``pip install -e ".[bench]"``);
* ``ce-sum``: cross-entropy on the sum of the unimodal probabilities (the cheapest fusion);
* with ``--compile``: ``torch.compile(mmloss, fullgraph=True)``, ``mode="reduce-overhead"`` (CUDA
  graphs) on CUDA, and ``autograd-compiled``, the composite backend compiled the same way (what
  the hand-written backward has to beat to be worth keeping).

Each timed call is forward + backward w.r.t. the unimodal logits and the proxies. The table
prints the median over repeats and the ratios to ``plain`` (median of the per-round ratios).
``ops`` counts one forward + backward: aten operators that touch data on CPU, kernels on
CUDA (``benchmarks/_opcount.py``). Memory is the size of the tensors that autograd saves for
backward (measured with ``saved_tensors_hooks``; on CUDA also the peak allocated memory).
Timings are not asserted anywhere: CPU timings on shared machines vary by about 20% between
runs, which is why the ratios are measured side by side.
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

from lightning_mmloss import PAPER_OPTIONS, MultiModalLoss

try:  # a peer, optional: pip install -e ".[bench]"
    from pytorch_metric_learning.losses import SoftTripleLoss
except ImportError:  # pragma: no cover - depends on the environment
    SoftTripleLoss = None

try:
    from _opcount import count_ops
except ImportError:  # run as a module from the repository root
    from benchmarks._opcount import count_ops

CONFIGS = [(1024, 3, 10, 20), (256, 2, 2, 20), (256, 4, 100, 20), (64, 3, 1000, 10)]


def plain_multimodal_loss(u: torch.Tensor, weight: torch.Tensor, y: torch.Tensor, K: int, gamma: float) -> torch.Tensor:
    """The formulation, one line per step, with autograd (reference pooling, attention, normalisation)."""
    B, M, C = u.shape
    p = u.softmax(dim=-1)  # unimodal scores
    z = p.reshape(B, M * C)  # embedding, modality-major
    P = F.normalize(weight.clamp(min=0), dim=1)  # proxies (C*K, M*C)
    S = F.normalize(z, dim=1) @ P.t()  # 1. cosine similarity (B, C*K)
    A = (S / gamma).softmax(dim=1)  # 2. attention over all proxies
    a = (A @ P).view(B, M, C)  # 3. attended proxy, per-modality blocks
    h = ((1 + a) * p).sum(dim=1)  # 4. attended unimodal sum
    S3 = S.view(B, C, K)
    q = (S3 / gamma).softmax(dim=1)  # 5. softmax over classes per proxy index
    s = (q * S3).sum(dim=2)
    o = s + h  # 6. fused logits
    return F.cross_entropy(o, y)


def sum_ce_loss(u: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on the sum of unimodal probabilities."""
    return F.cross_entropy(u.softmax(dim=-1).sum(dim=1), y)


def saved_bytes(fn: Callable[[], torch.Tensor]) -> int:
    """Bytes of the tensors autograd saves for backward during ``fn()`` (distinct storages)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn().backward()
    return sum(seen.values())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_config(
    B: int, M: int, C: int, K: int, device: torch.device, repeats: int, inner: int, compile_: bool = False
) -> dict:
    g = torch.Generator().manual_seed(0)
    u = (torch.randn(B, M, C, generator=g) * 2).to(device).requires_grad_(True)
    y = torch.randint(0, C, (B,), generator=g).to(device)
    # the paper's loss, which the transcription computes; `mmloss+aux` is the default with its
    # auxiliary unimodal term (what users get without options)
    crit = MultiModalLoss(C, M, K, gamma=0.1, **PAPER_OPTIONS).to(device)
    crit_nv = MultiModalLoss(C, M, K, gamma=0.1, validate_args=False, **PAPER_OPTIONS).to(device)
    crit_nv.load_state_dict(crit.state_dict())
    crit_aux = MultiModalLoss(C, M, K, gamma=0.1).to(device)
    crit_aux.weight.data.copy_(crit.weight.data)
    crit_le0 = MultiModalLoss(C, M, K, gamma=0.1, log_evidence=0.0).to(device)
    crit_le0.weight.data.copy_(crit.weight.data)
    crit_ag = MultiModalLoss(C, M, K, gamma=0.1, backend="autograd", **PAPER_OPTIONS).to(device)
    crit_ag.weight.data.copy_(crit.weight.data)
    w = crit.weight
    peers = [crit, crit_nv, crit_aux, crit_le0, crit_ag]

    # the implementations agree before anything is timed
    ref = plain_multimodal_loss(u, w, y, K, 0.1)
    for c in (crit, crit_ag):
        torch.testing.assert_close(c(u, y), ref, rtol=1e-4, atol=1e-5)

    def step(fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            loss = fn()
            loss.backward()
            u.grad = None
            for m in peers:
                for prm in m.parameters():
                    prm.grad = None

        return run

    contenders = {
        "mmloss": step(lambda: crit(u, y)),
        "no-valid": step(lambda: crit_nv(u, y)),
        "+aux": step(lambda: crit_aux(u, y)),
        "+aux-le0": step(lambda: crit_le0(u, y)),
        "autograd": step(lambda: crit_ag(u, y)),
        "plain": step(lambda: plain_multimodal_loss(u, w, y, K, 0.1)),
        "ce-sum": step(lambda: sum_ce_loss(u, y)),
    }
    if compile_:
        # the whole default-validated loss in one graph; on CUDA also captured in a CUDA graph
        mode = "reduce-overhead" if device.type == "cuda" else "default"
        compiled = torch.compile(crit, mode=mode, fullgraph=True)
        contenders["compiled"] = step(lambda: compiled(u, y))
        # what the hand-written backward must beat to stay (issue 16): the composite, compiled
        compiled_ag = torch.compile(crit_ag, mode=mode, fullgraph=True)
        contenders["autograd-compiled"] = step(lambda: compiled_ag(u, y))
    if SoftTripleLoss is not None:
        st = SoftTripleLoss(C, M * C, centers_per_class=K, la=20, gamma=0.1, margin=0.01).to(device)
        peers.append(st)
        contenders["softtriple"] = step(lambda: st(u.softmax(dim=-1).reshape(B, M * C), y))
    for fn in contenders.values():  # warm-up
        for _ in range(3):
            fn()
    order = list(contenders)
    rng = random.Random(0)
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(repeats):
        rng.shuffle(order)  # no contender always follows the same one
        for name in order:
            fn = contenders[name]
            sync(device)
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            sync(device)
            times[name].append((time.perf_counter() - t0) / inner)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = {k: statistics.median(a / b for a, b in zip(v, times["plain"], strict=True)) for k, v in times.items()}
    ops = {k: count_ops(contenders[k], device.type)[1] for k in ("mmloss", "+aux", "plain", "ce-sum")}
    mem = {
        "mmloss": saved_bytes(lambda: crit(u, y)),
        "plain": saved_bytes(lambda: plain_multimodal_loss(u, w, y, K, 0.1)),
    }
    peak = {}
    if device.type == "cuda":
        for name, fn in (("mmloss", contenders["mmloss"]), ("plain", contenders["plain"])):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            fn()
            torch.cuda.synchronize()
            peak[name] = torch.cuda.max_memory_allocated() - base
    # the log-evidence term's cost, side by side: the default over the default without it
    le_cost = statistics.median(a / b for a, b in zip(times["+aux"], times["+aux-le0"], strict=True))
    return {"median": med, "ratio": ratio, "saved": mem, "peak": peak, "ops": ops, "le_cost": le_cost}


def crossover(device: torch.device, repeats: int, console: Console) -> None:
    """Time the two backends of MultiModalLoss against each other over a range of sizes."""
    table = Table(title="MultiModalLoss backend='fused' vs backend='autograd', forward+backward")
    for col in ("B, M, C, K", "B*C*K", "fused ms", "autograd ms", "fused / autograd"):
        table.add_column(col, justify="right")
    for M, C, K in ((3, 10, 20), (2, 2, 20), (4, 100, 20)):
        for B in (16, 64, 128, 256, 512, 1024):
            u = torch.randn(B, M, C, device=device, requires_grad=True)
            y = torch.randint(0, C, (B,), device=device)
            crits = {b: MultiModalLoss(C, M, K, backend=b, **PAPER_OPTIONS).to(device) for b in ("fused", "autograd")}
            crits["autograd"].load_state_dict(crits["fused"].state_dict())
            times: dict[str, list[float]] = {b: [] for b in crits}
            for rep in range(repeats + 3):
                for b, crit in crits.items():
                    sync(device)
                    t0 = time.perf_counter()
                    for _ in range(10):
                        crit(u, y).backward()
                    sync(device)
                    if rep >= 3:
                        times[b].append((time.perf_counter() - t0) / 10)
            f, a = statistics.median(times["fused"]), statistics.median(times["autograd"])
            table.add_row(f"{B}, {M}, {C}, {K}", str(B * C * K), f"{f * 1e3:.3f}", f"{a * 1e3:.3f}", f"{f / a:.2f}")
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads on CPU")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--min-time", type=float, default=0.02, help="seconds per timed block (sets inner loops)")
    parser.add_argument("--crossover", action="store_true", help="time the fused and autograd backends instead")
    parser.add_argument(
        "--compile", action="store_true", help="also time torch.compile(loss) (reduce-overhead on CUDA)"
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    console = Console(width=250)
    if args.crossover:
        crossover(device, args.repeats, console)
        return
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or 'cpu'}"
    title = (
        f"MultiModalLoss forward+backward, {device.type} ({where}), "
        f"{torch.get_num_threads() if device.type == 'cpu' else ''} threads, torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d')}"
    )
    table = Table(title=title)
    peer = SoftTripleLoss is not None
    cols = ["B, M, C, K", "mmloss ms", "plain ms", "ce-sum ms", "mmloss / plain", "no-valid / plain"]
    cols += ["+aux / plain", "+aux / +aux-le0", "autograd / plain"] + (["softtriple / plain"] if peer else [])
    cols += ["compiled / plain", "autograd-compiled / plain"] if args.compile else []
    cols += ["mmloss / ce-sum", "ops mm / +aux / plain / ce", "saved MB mm / plain"]
    for col in cols:
        table.add_column(col, justify="right")
    for B, M, C, K in CONFIGS:
        # calibrate inner loops so one timed block lasts about --min-time
        crit = MultiModalLoss(C, M, K, **PAPER_OPTIONS).to(device)
        u = torch.randn(B, M, C, device=device, requires_grad=True)
        y = torch.randint(0, C, (B,), device=device)
        sync(device)
        t0 = time.perf_counter()
        crit(u, y).backward()
        sync(device)
        inner = max(1, int(args.min_time / max(time.perf_counter() - t0, 1e-6)))
        r = bench_config(B, M, C, K, device, args.repeats, inner, args.compile)
        med, ratio, mem, ops = r["median"], r["ratio"], r["saved"], r["ops"]
        mem_txt = f"{mem['mmloss'] / 2**20:.2f} / {mem['plain'] / 2**20:.2f}"
        if r["peak"]:
            mem_txt += f" (peak {r['peak']['mmloss'] / 2**20:.1f} / {r['peak']['plain'] / 2**20:.1f})"
        row = [f"{B}, {M}, {C}, {K}", f"{med['mmloss'] * 1e3:.3f}", f"{med['plain'] * 1e3:.3f}"]
        row += [f"{med['ce-sum'] * 1e3:.3f}"]
        row += [f"{ratio[k]:.2f}" for k in ("mmloss", "no-valid", "+aux")]
        row += [f"{r['le_cost']:.2f}", f"{ratio['autograd']:.2f}"]
        row += [f"{ratio['softtriple']:.2f}"] if peer else []
        row += [f"{ratio['compiled']:.2f}", f"{ratio['autograd-compiled']:.2f}"] if args.compile else []
        row += [
            f"{med['mmloss'] / med['ce-sum']:.1f}",
            " / ".join(str(ops[k]) for k in ("mmloss", "+aux", "plain", "ce-sum")),
        ]
        row += [mem_txt]
        table.add_row(*row)
    console.print(table)


if __name__ == "__main__":
    main()
