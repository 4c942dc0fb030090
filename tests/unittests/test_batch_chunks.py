"""The fused path in batch chunks (CPU, see ``_batch_chunks``) equals the path in one chunk."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from lightning_mmloss import PAPER_OPTIONS, MultiModalLoss
from lightning_mmloss.functional import fusion, multimodal_logits

B = 12  # divisible by every chunk count below

CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},  # auxiliary term from the fusion's log-scores
    "paper": dict(PAPER_OPTIONS),
    "softtriple_no_attention": {"pooling": "softtriple", "attention": False},
    "identity": {"activation": "identity"},
    "weighted_smoothed": {"class_weight": [1.0, 2.0, 0.5], "label_smoothing": 0.1, "ignore_index": -1},
    "sum": {"reduction": "sum"},
    "none": {"reduction": "none", "aux_weight": 0.0},
}


def _force_chunks(monkeypatch: pytest.MonkeyPatch, chunks: int) -> None:
    monkeypatch.setattr(fusion, "_batch_chunks", lambda batch, spec, device: chunks)


def _inputs(activation: str = "softmax", seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(B, 2, 3, dtype=torch.float64, generator=g) * 2
    if activation == "identity":
        u = u.softmax(dim=-1)
    y = torch.randint(0, 3, (B,), generator=g)
    return u, y


def _everything(crit: MultiModalLoss, u: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None) -> list:
    """Loss, its gradients, the analytics and the (fusion, loss) pair of the evaluation steps."""
    u = u.clone().requires_grad_(True)
    crit.zero_grad()
    loss = crit(u, y, modality_mask=mask)
    loss.sum().backward()
    out = crit.fuse(u, modality_mask=mask)
    fused, eval_loss = crit._fuse_with_loss(u, y, modality_mask=mask)
    terms = crit(u, y, modality_mask=mask, return_terms=True)
    return [
        loss.detach(),
        u.grad,
        crit.weight.grad.clone(),
        *(t.detach() for t in terms),
        out.logits.detach(),
        out.similarity,
        out.attention,
        out.unimodal_probs,
        out.modality_weights,
        out.subgroup,
        crit.fused_logits(u, modality_mask=mask).detach(),
        fused.logits.detach(),
        eval_loss.detach(),
    ]


@pytest.mark.parametrize("chunks", [2, 3, 4])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_chunked_equals_one_chunk(monkeypatch: pytest.MonkeyPatch, config: str, masked: bool, chunks: int) -> None:
    kw = dict(CONFIGS[config])
    crit = MultiModalLoss(3, 2, 4, gamma=0.3, **kw).double()
    with torch.no_grad():  # some exact zeros and negative rows: exercise the clamp
        crit.weight.uniform_(-0.3, 1.0)
    u, y = _inputs(kw.get("activation", "softmax"))
    if kw.get("ignore_index") == -1:
        y[[2, 7]] = -1
    mask = torch.rand(B, 2, generator=torch.Generator().manual_seed(1)) > 0.3 if masked else None
    _force_chunks(monkeypatch, 1)
    one = _everything(crit, u, y, mask)
    _force_chunks(monkeypatch, chunks)
    split = _everything(crit, u, y, mask)
    for a, b in zip(split, one, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert split[-3].is_contiguous() and split[-3].shape == (B, 3)  # fused_logits: contiguous (B, C)


@pytest.mark.parametrize(
    ("pooling", "attention", "activation", "masked"),
    [
        ("reference", True, "softmax", False),
        ("reference", True, "softmax", True),
        ("softtriple", False, "softmax", False),
        ("reference", True, "identity", True),
    ],
)
def test_gradcheck_chunked(
    monkeypatch: pytest.MonkeyPatch, pooling: str, attention: bool, activation: str, masked: bool
) -> None:
    _force_chunks(monkeypatch, 2)
    u, _ = _inputs(activation)
    u.requires_grad_(True)
    w = torch.empty(3 * 2, 2 * 3, dtype=torch.float64).uniform_(0.05, 1.0).requires_grad_(True)
    mask = torch.rand(B, 2, generator=torch.Generator().manual_seed(2)) > 0.3 if masked else None

    def fused(u_: torch.Tensor, w_: torch.Tensor) -> torch.Tensor:
        opts = {"gamma": 0.5, "pooling": pooling, "attention": attention, "activation": activation}
        return multimodal_logits(u_, w_, modality_mask=mask, **opts)

    assert torch.autograd.gradcheck(fused, (u, w), eps=1e-6, atol=1e-5)


def test_gradcheck_chunked_default_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    # fused cross-entropy on the (S, C, b) chunks plus the auxiliary term from the log-scores
    _force_chunks(monkeypatch, 3)
    crit = MultiModalLoss(3, 2, 2, gamma=0.5).double()
    u, y = _inputs()
    u.requires_grad_(True)
    w = crit.weight.detach().clone().requires_grad_(True)

    def loss(u_: torch.Tensor, w_: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(crit, {"weight": w_}, (u_, y))

    assert torch.autograd.gradcheck(loss, (u, w), eps=1e-6, atol=1e-5)


def test_chunk_count_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")

    def spec(C: int, K: int) -> fusion.FusionSpec:
        return MultiModalLoss(C, 3, K).spec

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert fusion._batch_chunks(1024, spec(10, 20), cpu) == 2  # MKL leaves (200, 1024) products on one thread
    assert fusion._batch_chunks(1023, spec(10, 20), cpu) == 1  # odd batch
    assert fusion._batch_chunks(1024, spec(100, 20), cpu) == 1  # MKL threads C*K = 2000 itself
    assert fusion._batch_chunks(64, spec(10, 20), cpu) == 1  # too small to gain
    assert fusion._batch_chunks(1024, spec(10, 20), torch.device("cuda")) == 1
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert fusion._batch_chunks(1024, spec(10, 20), cpu) == 1

    def untraceable() -> int:
        raise AssertionError("the thread count is read while compiling")

    # compiling: two chunks without reading the thread count (it would break the graph)
    monkeypatch.setattr(torch, "get_num_threads", untraceable)
    monkeypatch.setattr(fusion.V, "_compiling", lambda: True)
    assert fusion._batch_chunks(1024, spec(10, 20), cpu) == 2
    assert fusion._batch_chunks(1024, spec(100, 20), cpu) == 1


def test_float32_chunked_close_to_float64(monkeypatch: pytest.MonkeyPatch) -> None:
    # the real choice at a benchmark size, in float32, against the float64 computation in one chunk
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    torch.manual_seed(0)
    crit = MultiModalLoss(10, 3, 20)
    assert fusion._batch_chunks(1024, crit.spec, torch.device("cpu")) == 2
    u = torch.randn(1024, 3, 10, requires_grad=True)
    y = torch.randint(0, 10, (1024,))
    loss = crit(u, y)
    (g32,) = torch.autograd.grad(loss, u)
    crit64 = crit.double()
    _force_chunks(monkeypatch, 1)
    u64 = u.detach().double().requires_grad_(True)
    loss64 = crit64(u64, y)
    (g64,) = torch.autograd.grad(loss64, u64)
    torch.testing.assert_close(loss.double(), loss64, rtol=1e-5, atol=1e-6)
    assert float((g32.double() - g64).norm() / g64.norm()) < 1e-5
