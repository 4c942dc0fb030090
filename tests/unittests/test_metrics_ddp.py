"""Metrics synchronised over two processes (gloo, spawn) equal one process on all the data."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lightning_mmloss import MultiModalLoss
from lightning_mmloss.functional.fusion import _mean_log_probs
from lightning_mmloss.metrics import (
    DecisionFit,
    ModalityAgreement,
    ModalityReliability,
    SubgroupStatistics,
    TemperatureFit,
)

NAMES = ["audio", "video", "text"]
C, K = 4, 3


def _data():
    g = torch.Generator().manual_seed(7)
    loss = MultiModalLoss(C, NAMES, K)
    with torch.no_grad():
        loss.weight.copy_(torch.rand(loss.weight.shape, generator=g))
    batches = []
    for _ in range(6):
        u = torch.randn(25, 3, C, generator=g) * 2
        mask = torch.rand(25, 3, generator=g) > 0.2
        # targets the heads tell something about: a calibration fitted on noise ends at its bound
        target = (u.sum(dim=1) + 3 * torch.randn(25, C, generator=g)).argmax(dim=1)
        batches.append((loss.fuse(u, mask), target, mask))
    return batches


def _metrics():
    metrics = ModalityReliability(NAMES, C), ModalityAgreement(NAMES), SubgroupStatistics(NAMES, C, K)
    return (*metrics, TemperatureFit(), DecisionFit())


def _update(metrics, batch) -> None:
    out, target, mask = batch
    rel, agr, sub, temp, decision = metrics
    temp.update(out.logits, target)
    decision.update(out.logits, target, _mean_log_probs(out.unimodal_probs, mask, 1e-4))
    rel.update(out.unimodal_probs, out.probs, target, mask)
    agr.update(out.unimodal_probs, out.probs, target, mask)
    sub.update_from_fusion(out, target)


def _flatten(metrics) -> dict[str, torch.Tensor]:
    flat = {}
    flat["temperature"] = metrics[3].compute().double()
    for k, v in metrics[4].compute().items():
        flat[f"decision/{k}"] = v.double()
    for prefix, metric in zip(("rel", "agr", "sub"), metrics[:3], strict=True):
        for k, v in metric.compute().items():
            flat[f"{prefix}/{k}"] = v.detach().cpu().double()
    return flat


def _worker(rank: int, world: int, store: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    metrics = _metrics()
    for i, batch in enumerate(_data()):
        if i % world == rank:  # every other batch
            _update(metrics, batch)
    torch.save(_flatten(metrics), os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_two_processes_equal_one(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    single = _metrics()
    for batch in _data():
        _update(single, batch)
    expected = _flatten(single)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got.keys() == expected.keys()
        for k in expected:
            torch.testing.assert_close(got[k], expected[k], rtol=1e-6, atol=1e-6, equal_nan=True, msg=k)
