"""CUDA: the same numbers as on CPU, and mixed precision. Skipped without a GPU."""

from __future__ import annotations

import pytest
import torch

from lightning_mmloss import MultiModalLoss

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_metrics_deterministic_on_cuda() -> None:
    # Trainer(deterministic=True) turns this on; CUDA's bincount raises under it
    from lightning_mmloss.functional import modality_agreement, modality_reliability, subgroup_statistics

    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 4, (64,), generator=g).cuda()
    uni = torch.rand(64, 3, 4, generator=g).softmax(-1).cuda()
    mask = (torch.rand(64, 3, generator=g) > 0.2).cuda()
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        rel = modality_reliability(uni, uni.mean(1), target, mask)
        agr = modality_agreement(uni, uni.mean(1), target, mask)
        fu = MultiModalLoss(4, 3, 2).cuda().fuse(uni.log(), mask)
        sub = subgroup_statistics(fu.subgroup, fu.preds, target, fu.unimodal_probs, fu.modality_weights, 4, 2)
    finally:
        torch.use_deterministic_algorithms(before)
    cpu = modality_reliability(uni.cpu(), uni.mean(1).cpu(), target.cpu(), mask.cpu())
    for k, v in cpu.items():
        torch.testing.assert_close(rel[k].cpu(), v, equal_nan=True)
    assert torch.isfinite(agr["conflict"]) and int(sub["occupancy"].sum()) == 64


@pytest.mark.parametrize("backend", ["fused", "autograd"])
@pytest.mark.parametrize("pooling", ["reference", "softtriple"])
def test_cuda_matches_cpu_float64(backend: str, pooling: str) -> None:
    crit = MultiModalLoss(7, 3, 4, pooling=pooling, backend=backend).double()
    u = torch.randn(33, 3, 7, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 7, (33,))
    mask = torch.rand(33, 3) > 0.2
    loss = crit(u, y, modality_mask=mask)
    g_u, g_w = torch.autograd.grad(loss, (u, crit.weight))
    crit_gpu = crit.to("cuda")
    u_gpu = u.detach().cuda().requires_grad_(True)
    loss_gpu = crit_gpu(u_gpu, y.cuda(), modality_mask=mask.cuda())
    gg_u, gg_w = torch.autograd.grad(loss_gpu, (u_gpu, crit_gpu.weight))
    torch.testing.assert_close(loss_gpu.cpu(), loss)
    torch.testing.assert_close(gg_u.cpu(), g_u)
    torch.testing.assert_close(gg_w.cpu(), g_w)
    out_cpu = crit.cpu().fuse(u.detach(), mask)
    out_gpu = crit.cuda().fuse(u.detach().cuda(), mask.cuda())
    torch.testing.assert_close(out_gpu.modality_weights.cpu(), out_cpu.modality_weights)
    torch.testing.assert_close(crit.shapley(u.detach().cuda()).cpu(), crit.cpu().shapley(u.detach()))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", ["fused", "autograd"])
def test_cuda_autocast(dtype: torch.dtype, backend: str) -> None:
    torch.manual_seed(0)
    enc = torch.nn.Linear(64, 3 * 10).cuda()
    crit = MultiModalLoss(10, 3, 20, backend=backend).cuda()
    x = torch.randn(256, 64, device="cuda")
    y = torch.randint(0, 10, (256,), device="cuda")
    with torch.autocast("cuda", dtype=dtype):
        u = enc(x).view(256, 3, 10)
        assert u.dtype == dtype
        loss = crit(u, y)
    assert loss.dtype == torch.float32 and crit.weight.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(crit.weight.grad).all() and torch.isfinite(enc.weight.grad).all()
    assert crit.weight.grad.dtype == torch.float32
    ref = crit(enc(x).view(256, 3, 10).float(), y)  # same model in float32
    torch.testing.assert_close(loss, ref, rtol=2e-2, atol=2e-2)


def test_cuda_nonfinite_is_reported() -> None:
    crit = MultiModalLoss(4, 2, 2).cuda()
    u = torch.randn(5, 2, 4, device="cuda")
    u[0, 1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"1 NaN and 0 infinite values \(per modality: 1: 1\)"):
        crit(u, torch.zeros(5, dtype=torch.long, device="cuda"))


@pytest.mark.timeout(600)
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's compiler stack about itself
def test_default_loss_in_a_cuda_graph() -> None:
    # mode="reduce-overhead" captures CUDA graphs: the value checks (a host sync) must stay out
    crit = MultiModalLoss(10, 3, 20).cuda()
    step = torch.compile(crit, mode="reduce-overhead", fullgraph=True)
    y = torch.randint(0, 10, (256,), device="cuda")
    for _ in range(3):  # warm-up, record, replay
        u = torch.randn(256, 3, 10, device="cuda", requires_grad=True)
        loss = step(u, y)
        loss.backward()
    torch.testing.assert_close(loss.detach(), crit(u, y).detach(), rtol=1e-5, atol=1e-6)
