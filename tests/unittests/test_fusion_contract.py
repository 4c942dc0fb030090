"""One fusion for every layout and thread count; the functional loss equals the module's (issue 16)."""

from __future__ import annotations

import pytest
import torch

from lightning_mmloss import MultiModalLoss
from lightning_mmloss.functional import multimodal_fuse, multimodal_loss


def _case(B: int = 1024, M: int = 3, C: int = 10, K: int = 20, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(B, M, C, generator=g) * 2
    y = torch.randint(0, C, (B,), generator=g)
    mask = torch.rand(B, M, generator=g) > 0.2
    mask[:, 0] = True
    return u, y, mask


def _loss_and_grads(crit: MultiModalLoss, u: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None):
    u = u.clone().requires_grad_(True)
    crit.weight.grad = None
    loss = crit(u, y, mask)
    loss.backward()
    return loss.detach(), u.grad, crit.weight.grad.clone()


@pytest.mark.parametrize("backend", ["fused", "autograd"])
def test_results_do_not_depend_on_the_thread_count(backend: str) -> None:
    crit = MultiModalLoss(10, 3, 20, backend=backend)
    u, y, mask = _case()
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _loss_and_grads(crit, u, y, mask)
        torch.set_num_threads(2)
        two = _loss_and_grads(crit, u, y, mask)
    finally:
        torch.set_num_threads(before)
    for a, b in zip(one, two, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("B", [1023, 1024])
def test_results_do_not_depend_on_the_batch_parity(B: int) -> None:
    """A batch of B rows equals the first B rows of a larger batch (no parity-dependent path)."""
    crit = MultiModalLoss(10, 3, 20, reduction="none")
    u, y, mask = _case(B=1025)
    full = crit(u, y, mask)
    torch.testing.assert_close(crit(u[:B], y[:B], mask[:B]), full[:B], rtol=1e-6, atol=1e-7)


def test_a_transposed_mask_at_a_large_even_batch() -> None:
    """The mask's memory layout does not matter (a transposed mask crashed the chunked path)."""
    crit = MultiModalLoss(10, 3, 20)
    u, y, mask = _case()
    transposed = mask.t().contiguous().t()
    assert not transposed.is_contiguous()
    for a, b in zip(_loss_and_grads(crit, u, y, transposed), _loss_and_grads(crit, u, y, mask), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)  # sums may run in another order
    torch.testing.assert_close(crit.fuse(u, transposed).logits, crit.fuse(u, mask).logits, rtol=0, atol=0)


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("options", [{}, {"aux_weight": 0.0}, {"class_weight": [1.0, 2.0, 0.5], "ignore_index": 1}])
def test_functional_loss_equals_the_module_with_the_same_defaults(masked: bool, options: dict) -> None:
    crit = MultiModalLoss(3, 2, 4, **options)
    u, y, mask = _case(B=16, M=2, C=3, K=4)
    mask = mask if masked else None
    fn_options = {k: v for k, v in options.items()}
    if "class_weight" in fn_options:
        fn_options["class_weight"] = torch.tensor(fn_options["class_weight"])
    got = multimodal_loss(u, y, crit.weight, modality_mask=mask, **fn_options)
    torch.testing.assert_close(got, crit(u, y, mask), rtol=0, atol=0)


def test_an_all_ignored_batch_is_zero_with_checks_on_and_off() -> None:
    u, _, _ = _case(B=8, M=2, C=3)
    y = torch.full((8,), -100)
    for validate_args in (True, False):
        crit = MultiModalLoss(3, 2, 4, validate_args=validate_args)
        loss = crit(u.clone().requires_grad_(True), y)
        assert float(loss.detach()) == 0.0, validate_args
        loss.backward()  # still connected to the graph


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_target_range_is_checked_exactly_for_half_precision_logits(dtype: torch.dtype) -> None:
    C = 2049 if dtype == torch.float16 else 301  # the first class count whose index the dtype rounds
    crit = MultiModalLoss(C, 2, 1)
    u = torch.randn(2, 2, C).to(dtype)
    with pytest.raises(ValueError, match="target"):
        crit(u, torch.tensor([0, C]))


def test_functional_refuses_duplicate_modality_names() -> None:
    u = {"a": torch.randn(4, 3)}
    with pytest.raises(ValueError, match="modality_names"):
        multimodal_fuse(u, torch.rand(6, 6), modality_names=["a", "a"])


def test_torch_func_grad_and_vmap_run_with_the_defaults() -> None:
    """Issue 17 item 12: the default backend failed inside torch.func ('setup_context', 'data pointer')."""
    crit = MultiModalLoss(3, 2, 2)
    u, y, _ = _case(B=6, M=2, C=3, K=2)
    grad = torch.func.grad(lambda x: crit(x, y))(u)
    leaf = u.clone().requires_grad_(True)
    crit(leaf, y).backward()
    torch.testing.assert_close(grad, leaf.grad, rtol=1e-5, atol=1e-7)
    batched = torch.func.vmap(lambda x: crit(x, y))(torch.stack([u, 2 * u]))
    torch.testing.assert_close(batched, torch.stack([crit(u, y), crit(2 * u, y)]).detach(), rtol=1e-5, atol=1e-7)
