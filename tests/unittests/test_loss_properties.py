"""Invariances of the fusion, Shapley values, input forms, numerics."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_mmloss import MultiModalLoss
from lightning_mmloss.functional import (
    FusionOptions,
    modality_shapley,
    multimodal_fuse,
    multimodal_logits,
    normalized_proxies,
    shapley_coefficients,
)
from tests.helpers.reference import reference_fuse, reference_shapley


def _block_permute(weight: torch.Tensor, perm: list[int], C: int) -> torch.Tensor:
    return torch.cat([weight[:, m * C : (m + 1) * C] for m in perm], dim=1)


@pytest.mark.parametrize("pooling", ["reference", "softtriple"])
def test_permuting_modalities_with_weight_blocks_keeps_logits(pooling: str) -> None:
    B, M, C, K = 8, 4, 5, 3
    u = torch.randn(B, M, C, dtype=torch.float64)
    w = torch.randn(C * K, M * C, dtype=torch.float64)
    perm = [2, 0, 3, 1]
    base = multimodal_logits(u, w, pooling=pooling)
    permuted = multimodal_logits(u[:, perm], _block_permute(w, perm, C), pooling=pooling)
    torch.testing.assert_close(base, permuted)
    # and the check can fail: permuting only the inputs changes the logits
    assert not torch.allclose(base, multimodal_logits(u[:, perm], w, pooling=pooling))


@pytest.mark.parametrize("drop", [0, 1, 2])
def test_masking_a_modality_equals_model_without_it(drop: int) -> None:
    """Without proxy normalisation the masked model *is* the model with the columns removed.

    With normalisation the proxies are normalised over all ``M*C`` columns, so the equal model
    is the one whose (fixed) proxies are the kept columns of the normalised proxies.
    """
    B, M, C, K = 6, 3, 4, 2
    u = torch.randn(B, M, C, dtype=torch.float64)
    w = torch.randn(C * K, M * C, dtype=torch.float64)
    keep = [m for m in range(M) if m != drop]
    mask = torch.ones(B, M, dtype=torch.bool)
    mask[:, drop] = False

    masked = multimodal_fuse(u, w, modality_mask=mask, normalize_proxies=False)
    reduced = multimodal_fuse(u[:, keep], _block_permute(w, keep, C), normalize_proxies=False)
    torch.testing.assert_close(masked.logits, reduced.logits)
    torch.testing.assert_close(masked.modality_weights[:, keep], reduced.modality_weights)
    assert torch.all(masked.modality_weights[:, drop] == 0)

    masked_n = multimodal_fuse(u, w, modality_mask=mask)
    reduced_n = multimodal_fuse(u[:, keep], _block_permute(normalized_proxies(w), keep, C), normalize_proxies=False)
    torch.testing.assert_close(masked_n.logits, reduced_n.logits)
    torch.testing.assert_close(masked_n.similarity, reduced_n.similarity)


@pytest.mark.parametrize("backend", ["fused", "autograd"])
def test_masked_placeholders_may_be_nan(backend: str) -> None:
    u = torch.randn(3, 2, 4)
    mask = torch.tensor([[True, False], [True, True], [False, True]])
    poisoned = u.clone()
    poisoned[~mask] = float("nan")
    crit = MultiModalLoss(4, 2, 2, backend=backend)
    torch.testing.assert_close(crit.fused_logits(poisoned, mask), crit.fused_logits(u, mask))
    poisoned.requires_grad_(True)
    crit(poisoned, torch.tensor([0, 1, 2]), mask).backward()
    assert torch.isfinite(poisoned.grad).all() and torch.isfinite(crit.weight.grad).all()
    assert torch.all(poisoned.grad[~mask] == 0)


def test_all_modalities_absent_gives_uniform_prediction() -> None:
    crit = MultiModalLoss(5, 3, 2)
    out = crit.fuse(torch.randn(2, 3, 5), torch.zeros(2, 3, dtype=torch.bool))
    torch.testing.assert_close(out.logits, torch.zeros(2, 5))
    assert torch.all(out.modality_weights == 0)


@pytest.mark.parametrize("M", [1, 2, 3, 4])
def test_shapley_matches_permutation_definition(M: int) -> None:
    B, C, K = 3, 3, 2
    u = torch.randn(B, M, C, dtype=torch.float64)
    w = torch.rand(C * K, M * C, dtype=torch.float64)
    cls = torch.tensor([0, 2, 1])
    phi = modality_shapley(u, w, target_class=cls)
    for b in range(B):

        def value(coalition: frozenset[int], b: int = b) -> float:
            mask = torch.tensor([[m in coalition for m in range(M)]])
            # the library's default log-evidence, as modality_shapley's default options have it
            logits = reference_fuse(u[b : b + 1], w, K, mask=mask, log_evidence=FusionOptions().log_evidence)["logits"]
            return float(logits.softmax(dim=-1)[0, cls[b]])

        torch.testing.assert_close(phi[b], torch.tensor(reference_shapley(value, M), dtype=torch.float64))


def test_shapley_efficiency_and_absent_modalities() -> None:
    B, M, C, K = 16, 4, 6, 3
    crit = MultiModalLoss(C, M, K).double()
    u = torch.randn(B, M, C, dtype=torch.float64) * 3
    mask = torch.rand(B, M) > 0.3
    phi = crit.shapley(u, modality_mask=mask, max_rows=40)  # small chunks exercise the chunking
    full = crit.fuse(u, mask)
    v_full = full.probs.gather(1, full.preds[:, None]).squeeze(1)
    torch.testing.assert_close(phi.sum(dim=1), v_full - 1.0 / C)
    assert torch.all(phi[~mask] == 0)


def test_shapley_coefficients_rows_sum_to_zero() -> None:
    masks, coef = shapley_coefficients(5)
    assert masks.shape == (32, 5) and coef.shape == (5, 32)
    torch.testing.assert_close(coef.sum(dim=1), torch.zeros(5, dtype=torch.float64))
    # the full coalition minus the empty one splits evenly when every modality is symmetric
    torch.testing.assert_close(coef[:, -1] - coef[:, 0], torch.full((5,), 2 / 5, dtype=torch.float64))


@settings(max_examples=25, deadline=None)
@given(
    B=st.integers(0, 6),
    M=st.integers(1, 4),
    C=st.integers(2, 6),
    K=st.integers(1, 4),
    gamma=st.floats(0.05, 2.0),
    pooling=st.sampled_from(["reference", "softtriple"]),
    seed=st.integers(0, 2**16),
)
# tiny random proxy matrices are sometimes all <= 0: the loss rightly warns, and must still be exact
@pytest.mark.filterwarnings("ignore:Every proxy of the MultiModal loss is <= 0:UserWarning")
def test_random_shapes_match_reference(B: int, M: int, C: int, K: int, gamma: float, pooling: str, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(B, M, C, dtype=torch.float64, generator=g) * 3
    w = torch.randn(C * K, M * C, dtype=torch.float64, generator=g)
    out = multimodal_fuse(u, w, gamma=gamma, pooling=pooling, backend="fused", log_evidence=0.0)
    assert out.logits.shape == (B, C) and out.attention.shape == (B, C, K)
    if B:
        ref = reference_fuse(u, w, K, gamma, pooling)
        torch.testing.assert_close(out.logits, ref["logits"])
        torch.testing.assert_close(out.attention, ref["attention"])
        torch.testing.assert_close(out.modality_logits, ref["parts"])
        torch.testing.assert_close(out.modality_weights, ref["weights"])
        assert torch.all((out.similarity >= -1e-12) & (out.similarity <= 1 + 1e-12))


def test_input_forms_agree() -> None:
    names = ["audio", "video", "text"]
    crit = MultiModalLoss(4, names, 2)
    u = torch.randn(5, 3, 4)
    y = torch.randint(0, 4, (5,))
    as_tensor = crit(u, y)
    as_list = crit([u[:, i] for i in range(3)], y)
    as_dict = crit({"text": u[:, 2], "audio": u[:, 0], "video": u[:, 1]}, y)  # any key order
    torch.testing.assert_close(as_tensor, as_list)
    torch.testing.assert_close(as_tensor, as_dict)


@pytest.mark.parametrize("backend", ["fused", "autograd"])
def test_empty_batch_gives_zero_loss_that_backpropagates(backend: str) -> None:
    crit = MultiModalLoss(3, 2, 2, backend=backend)
    u = torch.randn(0, 2, 3, requires_grad=True)
    loss = crit(u, torch.zeros(0, dtype=torch.long))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert crit.weight.grad is not None and torch.all(crit.weight.grad == 0)


def test_all_ignored_batch_gives_zero_not_nan() -> None:
    crit = MultiModalLoss(3, 2, 2, ignore_index=-1)
    loss = crit(torch.randn(4, 2, 3), torch.full((4,), -1))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(crit.weight.grad == 0)


@pytest.mark.parametrize("backend", ["fused", "autograd"])
def test_bf16_autocast_on_cpu(backend: str) -> None:
    crit = MultiModalLoss(10, 3, 5, backend=backend)
    enc = torch.nn.Linear(8, 30)
    x = torch.randn(16, 8)
    y = torch.randint(0, 10, (16,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        u = enc(x).view(16, 3, 10)
        assert u.dtype == torch.bfloat16
        loss = crit(u, y)
        out = crit.fuse(u)
    assert loss.dtype == torch.float32 and out.logits.dtype == torch.float32
    assert crit.weight.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(crit.weight.grad).all() and torch.isfinite(enc.weight.grad).all()
    assert crit.weight.grad.dtype == torch.float32


@pytest.mark.parametrize("backend", ["fused", "autograd"])
def test_forward_does_not_touch_parameter_data(backend: str) -> None:
    crit = MultiModalLoss(3, 2, 2, backend=backend)
    with torch.no_grad():
        crit.weight.sub_(0.5)  # many negative entries
    before = crit.weight.detach().clone()
    version = crit.weight._version
    crit(torch.randn(4, 2, 3), torch.tensor([0, 1, 2, 0]))
    assert torch.equal(crit.weight, before) and crit.weight._version == version


@pytest.mark.parametrize("backend", ["fused", "autograd"])
def test_zero_proxy_rows_stay_finite(backend: str) -> None:
    crit = MultiModalLoss(3, 2, 2, backend=backend)
    with torch.no_grad():
        crit.weight[:2] = -1.0  # class 0's proxies are clamped to zero vectors
    u = torch.randn(4, 2, 3, requires_grad=True)
    loss = crit(u, torch.tensor([0, 1, 2, 0]))
    loss.backward()
    assert torch.isfinite(u.grad).all() and torch.isfinite(crit.weight.grad).all()
    assert torch.all(crit.weight.grad[:2] == 0)


def test_state_dict_round_trip_and_repr() -> None:
    a = MultiModalLoss(4, ["x", "y"], 3, gamma=0.2, pooling="softtriple", class_weight=[1, 2, 3, 4])
    b = MultiModalLoss(4, ["x", "y"], 3, gamma=0.2, pooling="softtriple", class_weight=[1, 1, 1, 1])
    b.load_state_dict(a.state_dict())
    u = torch.randn(3, 2, 4)
    y = torch.tensor([0, 1, 3])
    torch.testing.assert_close(a(u, y), b(u, y))
    assert "pooling='softtriple'" in repr(a) and "['x', 'y']" in repr(a)
    assert a.proxies.shape == (12, 8) and torch.all(a.proxies >= 0)


def test_double_backward_is_refused_clearly_by_fused_backend() -> None:
    crit = MultiModalLoss(3, 2, 2, backend="fused")
    u = torch.randn(4, 2, 3, requires_grad=True)
    (g,) = torch.autograd.grad(crit(u, torch.tensor([0, 1, 2, 0])), u, create_graph=True)
    with pytest.raises(RuntimeError, match=r"once_differentiable"):
        g.sum().backward()


def test_plain_torch_import_does_not_load_lightning() -> None:
    import subprocess
    import sys

    code = "import sys, lightning_mmloss; assert 'lightning' not in sys.modules, 'lightning imported'; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    from lightning_mmloss import MultiModalLossMixin, SubgroupMonitor  # the lazy names resolve

    assert MultiModalLossMixin.__name__ == "MultiModalLossMixin" and SubgroupMonitor.__name__ == "SubgroupMonitor"


def test_state_dict_refuses_another_configuration_and_leaves_the_module_unchanged() -> None:
    source = MultiModalLoss(4, 3, 6)  # weight (24, 12)
    other = MultiModalLoss(6, 2, 4)  # weight (24, 12) as well: shapes alone would "match"
    before = other.weight.detach().clone()
    with pytest.raises(ValueError, match=r"num_classes: saved 4, this loss 6.*num_modalities: saved 3, this loss 2"):
        other.load_state_dict(source.state_dict())
    assert torch.equal(other.weight, before)
    with pytest.raises(ValueError, match=r"gamma: saved 0.1, this loss 0.2"):
        MultiModalLoss(4, 3, 6, gamma=0.2).load_state_dict(source.state_dict())
    named = MultiModalLoss(4, ["a", "b"], 2)
    with pytest.raises(ValueError, match=r"modality_names: saved \['a', 'b'\], this loss \['b', 'a'\]"):
        MultiModalLoss(4, ["b", "a"], 2).load_state_dict(named.state_dict())
    same = MultiModalLoss(4, 3, 6)
    same.load_state_dict(source.state_dict())
    assert torch.equal(same.weight, source.weight)
    legacy = {k: v for k, v in source.state_dict().items() if k != "_extra_state"}  # older checkpoints
    MultiModalLoss(4, 3, 6).load_state_dict(legacy)
