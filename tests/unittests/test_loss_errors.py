"""Every bad input gets a clear error that names the argument, what was expected and what came."""

from __future__ import annotations

import pytest
import torch

from lightning_mmloss import MultiModalLoss
from lightning_mmloss.functional import modality_shapley, multimodal_logits, multimodal_loss


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"num_classes": 1}, ValueError, r"`num_classes` to be an int >= 2, but got 1"),
        ({"num_classes": 2.0}, TypeError, r"`num_classes` to be an int, but got float"),
        ({"num_classes": True}, TypeError, r"`num_classes` to be an int, but got bool"),
        ({"num_modalities": 0}, ValueError, r"`num_modalities` to be an int >= 1, but got 0"),
        ({"num_modalities": "audio"}, TypeError, r"`num_modalities` .* but got the string 'audio'"),
        ({"num_modalities": ["a", "a"]}, ValueError, r"`num_modalities` to hold unique names"),
        ({"num_modalities": []}, ValueError, r"`num_modalities` to name at least one modality"),
        ({"proxies_per_class": 0}, ValueError, r"`proxies_per_class` to be an int >= 1, but got 0"),
        ({"gamma": 0.0}, ValueError, r"`gamma` to be a finite float > 0, but got 0.0"),
        ({"gamma": -1}, ValueError, r"`gamma` to be a finite float > 0, but got -1"),
        ({"gamma": float("inf")}, ValueError, r"`gamma` to be a finite float > 0, but got inf"),
        ({"gamma": "0.1"}, TypeError, r"`gamma` to be a positive float, but got str"),
        ({"pooling": "max"}, ValueError, r"`pooling` to be one of \('reference', 'softtriple'\), but got 'max'"),
        ({"activation": "relu"}, ValueError, r"`activation` to be one of \('softmax', 'identity'\), but got 'relu'"),
        ({"reduction": "avg"}, ValueError, r"`reduction` to be one of \('mean', 'sum', 'none'\), but got 'avg'"),
        ({"label_smoothing": 1.5}, ValueError, r"`label_smoothing` to be a float in \[0, 1\], but got 1.5"),
        ({"class_weight": [1.0, 2.0]}, ValueError, r"`class_weight` to have shape \(3,\) .* but got shape \(2\)"),
        ({"class_weight": [1.0, -2.0, 1.0]}, ValueError, r"`class_weight` to be finite and non-negative"),
        ({"attention": 1}, TypeError, r"`attention` to be a bool, but got int"),
        ({"ignore_index": 1.0}, TypeError, r"`ignore_index` to be an int"),
        ({"backend": "cuda"}, ValueError, r"`backend` to be one of \('fused', 'autograd'\), but got 'cuda'"),
    ],
)
def test_constructor_errors(kwargs: dict, exc: type, match: str) -> None:
    args = {"num_classes": 3, "num_modalities": 2} | kwargs
    with pytest.raises(exc, match=match):
        MultiModalLoss(**args)


@pytest.fixture
def crit() -> MultiModalLoss:
    return MultiModalLoss(num_classes=4, num_modalities=["audio", "video", "text"], proxies_per_class=2)


Y = torch.tensor([0, 1, 2, 3, 0])


@pytest.mark.parametrize(
    ("logits", "exc", "match"),
    [
        (torch.randn(5, 12), ValueError, r"`unimodal_logits` to have shape \(B, M=3, C=4\), but got shape \(5, 12\)"),
        (torch.randn(5, 2, 4), ValueError, r"shape \(B, M=3, C=4\), but got shape \(5, 2, 4\)"),
        (torch.randn(5, 3, 5), ValueError, r"shape \(B, M=3, C=4\), but got shape \(5, 3, 5\)"),
        (torch.ones(5, 3, 4, dtype=torch.long), TypeError, r"`unimodal_logits` to be a floating point tensor"),
        ([torch.randn(5, 4)] * 2, ValueError, r"to hold M=3 tensors \(one per modality\), but got 2"),
        ([torch.randn(5, 4), torch.randn(4, 4), torch.randn(5, 4)], ValueError, r"`unimodal_logits\[1\]` has shape"),
        ([torch.randn(5, 4), torch.randn(5, 4), torch.randn(5)], ValueError, r"`unimodal_logits\[2\]` to have shape"),
        ({"audio": torch.randn(5, 4), "video": torch.randn(5, 4)}, ValueError, r"missing: \['text'\]"),
        (
            {"audio": torch.randn(5, 4), "video": torch.randn(5, 4), "text": torch.randn(5, 4), "x": torch.randn(5, 4)},
            ValueError,
            r"unknown: \['x'\]",
        ),
        ("logits", TypeError, r"`unimodal_logits` to be a \(B, M, C\) tensor.* but got str"),
    ],
)
def test_input_shape_errors(crit: MultiModalLoss, logits, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        crit(logits, Y)


def test_nonfinite_logits_are_reported_per_modality(crit: MultiModalLoss) -> None:
    u = torch.randn(5, 3, 4)
    u[1, 2, 0] = float("nan")
    u[3, 2, 1] = float("inf")
    before = crit.weight.detach().clone()
    with pytest.raises(
        ValueError, match=r"to be finite, but got 1 NaN and 1 infinite values \(per modality: text: 2\)"
    ):
        crit(u, Y)
    with pytest.raises(ValueError, match=r"to be finite"):
        crit.fuse(u)
    assert torch.equal(crit.weight, before)


def test_identity_activation_rejects_negative_scores() -> None:
    crit = MultiModalLoss(3, 2, 2, activation="identity")
    with pytest.raises(ValueError, match=r"non-negative scores with activation='identity', but got 1 negative"):
        crit(torch.tensor([[[0.5, 0.5, -0.1], [0.2, 0.3, 0.5]]]), torch.tensor([0]))


@pytest.mark.parametrize(
    ("target", "exc", "match"),
    [
        (
            torch.tensor([0.0, 1, 2, 3, 0]),
            TypeError,
            r"`target` to hold integer class indices, but got dtype torch.float32",
        ),
        (torch.tensor([0, 1, 2, 3]), ValueError, r"`target` to have shape \(B,\) = \(5,\), but got shape \(4\)"),
        (
            torch.zeros(5, 4, dtype=torch.long),
            ValueError,
            r"`target` to have shape \(B,\) = \(5,\), but got shape \(5, 4\)",
        ),
        (
            torch.tensor([0, 1, 4, 3, 0]),
            ValueError,
            r"class indices in \[0, 3\] \(or ignore_index=-100\), but got 1 .* \[4\]",
        ),
        (torch.tensor([0, -1, 2, 3, 0]), ValueError, r"out-of-range values, e.g. \[-1\]"),
        ([0, 1, 2, 3, 0], TypeError, r"`target` to be a tensor of class indices, but got list"),
    ],
)
def test_target_errors(crit: MultiModalLoss, target, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        crit(torch.randn(5, 3, 4), target)


def test_ignore_index_is_not_out_of_range() -> None:
    crit = MultiModalLoss(4, 3, 2, ignore_index=-1)
    assert torch.isfinite(crit(torch.randn(5, 3, 4), torch.tensor([0, -1, 2, 3, -1])))


@pytest.mark.parametrize(
    ("mask", "exc", "match"),
    [
        (torch.ones(5, 2, dtype=torch.bool), ValueError, r"`modality_mask` to have shape \(B, M\) = \(5, 3\), but got"),
        (torch.ones(5, 3), TypeError, r"`modality_mask` to have dtype torch.bool .* but got torch.float32"),
        ([[True] * 3] * 5, TypeError, r"`modality_mask` to be a bool tensor, but got list"),
    ],
)
def test_mask_errors(crit: MultiModalLoss, mask, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        crit(torch.randn(5, 3, 4), Y, modality_mask=mask)


def test_functional_errors() -> None:
    u = torch.randn(5, 3, 4)
    with pytest.raises(
        ValueError, match=r"`weight` to have shape \(C\*K, M\*C\) = \(4\*K, 12\) .* but got shape \(8, 10\)"
    ):
        multimodal_logits(u, torch.rand(8, 10))
    with pytest.raises(ValueError, match=r"`weight` to have shape .* but got shape \(7, 12\)"):
        multimodal_logits(u, torch.rand(7, 12))
    with pytest.raises(TypeError, match=r"mapping, but no modality names are configured"):
        multimodal_logits({"a": u[:, 0]}, torch.rand(8, 12))
    with pytest.raises(ValueError, match=r"`gamma` to be a finite float > 0"):
        multimodal_loss(u, Y, torch.rand(8, 12), gamma=0)
    with pytest.raises(TypeError, match=r"mapping, but no modality names"):
        MultiModalLoss(4, 3, 2)({"a": u[:, 0]}, Y)


def test_shapley_errors() -> None:
    with pytest.raises(ValueError, match=r"at most 12 modalities for exact Shapley values .* but got M=13"):
        modality_shapley(torch.randn(2, 13, 2), torch.rand(2, 26))
    u, w = torch.randn(3, 2, 4), torch.rand(8, 8)
    with pytest.raises(ValueError, match=r"`target_class` to lie in \[0, 3\]"):
        modality_shapley(u, w, target_class=4)
    with pytest.raises(ValueError, match=r"`target_class` to be an int or have shape \(B,\) = \(3,\)"):
        modality_shapley(u, w, target_class=torch.tensor([0, 1]))
    with pytest.raises(TypeError, match=r"`target_class` to be integer class indices"):
        modality_shapley(u, w, target_class=1.0)


def test_huge_finite_logits_are_not_reported() -> None:
    # the fast check sums the logits; an overflowing sum must not be mistaken for an Inf entry
    u = torch.full((4, 2, 3), 3e38)
    out = MultiModalLoss(3, 2, 2).fuse(u)
    assert torch.isfinite(out.logits).all()


def test_ignore_index_inside_class_range() -> None:
    crit = MultiModalLoss(4, 2, 2, ignore_index=0, reduction="sum")
    u = torch.randn(3, 2, 4)
    full = MultiModalLoss(4, 2, 2, reduction="none")
    full.load_state_dict(crit.state_dict())
    torch.testing.assert_close(crit(u, torch.tensor([0, 2, 3])), full(u, torch.tensor([1, 2, 3]))[1:].sum())
    assert crit(u, torch.tensor([0, 0, 0])).item() == 0.0


def test_int32_targets_work_and_devices_are_checked() -> None:
    crit = MultiModalLoss(3, 2, 2)
    u = torch.randn(4, 2, 3)
    y = torch.tensor([0, 1, 2, 1])
    torch.testing.assert_close(crit(u, y.int()), crit(u, y))
    with pytest.raises(ValueError, match="`target` to hold data on cpu like the logits, but got a tensor on the meta"):
        crit(u, y.to("meta"))
    with pytest.raises(
        ValueError, match="`modality_mask` to hold data on cpu like the logits, but got a tensor on the"
    ):
        crit(u, y, torch.ones(4, 2, dtype=torch.bool, device="meta"))


def test_proxy_problems_are_reported_as_the_proxies_fault() -> None:
    crit = MultiModalLoss(3, 2, 2)
    u, y = torch.randn(4, 2, 3), torch.tensor([0, 1, 2, 1])
    with torch.no_grad():
        crit.weight[1, 2] = float("nan")
    for call in (lambda: crit(u, y), lambda: crit.fuse(u), lambda: crit.fused_logits(u)):
        with pytest.raises(ValueError, match=r"proxy parameter `weight` \(6, 6\) to be finite, but got 1 NaN and 0"):
            call()
    with torch.no_grad():
        crit.weight.fill_(-0.1)
    with pytest.warns(UserWarning, match="Every proxy of the MultiModal loss is <= 0"):
        crit(u, y)


@pytest.mark.parametrize("backend", ["fused", "autograd"])
def test_zero_proxy_rows_get_zero_gradient(backend: str) -> None:
    crit = MultiModalLoss(3, 2, 2, backend=backend)
    with torch.no_grad():
        crit.weight[0] = 0.0  # exactly zero (zero init, or a user's clamp)
        crit.weight[1] = -1.0
    crit(torch.randn(5, 2, 3), torch.randint(0, 3, (5,))).backward()
    assert torch.all(crit.weight.grad[:2] == 0)
    assert crit.weight.grad[2:].abs().max() < 10  # and nothing of the 1e12 of a clamped norm elsewhere


def test_identity_scores_that_overflow_are_refused() -> None:
    crit = MultiModalLoss(3, 2, 2, activation="identity")
    u = torch.full((2, 2, 3), 1e38)
    with pytest.raises(ValueError, match="squares are finite with activation='identity'"):
        crit(u, torch.tensor([0, 1]))


def test_all_zero_class_weight_and_one_class_functional_are_refused() -> None:
    with pytest.raises(ValueError, match="`class_weight` to have at least one positive entry"):
        MultiModalLoss(3, 2, 2, class_weight=[0.0, 0.0, 0.0])
    from lightning_mmloss.functional import multimodal_loss

    with pytest.raises(ValueError, match="C >= 2 classes"):
        multimodal_loss(torch.randn(4, 2, 1), torch.zeros(4, dtype=torch.long), torch.rand(3, 2))


def test_shapley_of_an_empty_batch_is_empty() -> None:
    phi = MultiModalLoss(3, 2, 2).shapley(torch.randn(0, 2, 3))
    assert phi.shape == (0, 2)


@pytest.mark.parametrize("backend", ["fused", "autograd"])
def test_tiny_gamma_float32_gradients_match_float64(backend: str) -> None:
    from lightning_mmloss.functional import multimodal_logits

    g = torch.Generator().manual_seed(0)
    u64 = (2 * torch.randn(16, 3, 5, dtype=torch.float64, generator=g)).requires_grad_()
    w64 = torch.rand(20, 15, dtype=torch.float64, generator=g).requires_grad_()
    y = torch.randint(0, 5, (16,), generator=g)

    def grads(u: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, ...]:
        o = multimodal_logits(u, w, gamma=1e-6, backend=backend)
        return torch.autograd.grad(torch.nn.functional.cross_entropy(o, y), (u, w))

    ref = grads(u64, w64)
    got = grads(u64.detach().float().requires_grad_(), w64.detach().float().requires_grad_())
    for a, r in zip(got, ref, strict=True):
        assert float((a.double() - r).norm() / r.norm()) < 1e-5


@pytest.mark.timeout(600)
# torch's own compiler stack emits DeprecationWarnings about itself (torch 2.13: autograd.Function
# instantiation, torch.jit.script_method); none comes from this package
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("batch", [32, 2048])  # 2048: eagerly, a multi-threaded CPU runs it in batch chunks
def test_default_loss_compiles_with_fullgraph(batch: int) -> None:
    torch.manual_seed(0)
    crit = MultiModalLoss(4, 3, 5)
    u = torch.randn(batch, 3, 4, requires_grad=True)
    y = torch.randint(0, 4, (batch,))
    compiled = torch.compile(crit, fullgraph=True)
    loss = compiled(u, y)
    (grad,) = torch.autograd.grad(loss, u)
    eager = crit(u, y)
    torch.testing.assert_close(loss.detach(), eager.detach())
    torch.testing.assert_close(grad, torch.autograd.grad(eager, u)[0])


def test_token_level_logits_are_refused_with_the_recipe_and_the_recipe_works() -> None:
    crit = MultiModalLoss(4, ["audio", "video"], 2)
    B, T = 3, 5
    logits = {"audio": torch.randn(B, T, 4), "video": torch.randn(B, T, 4)}
    target = torch.randint(0, 4, (B, T))
    target[0, 3:] = -100  # padding
    with pytest.raises(ValueError, match=r"looks token- or frame-level \(B, T, C\).*u.flatten\(0, 1\)"):
        crit(logits, target)
    with pytest.raises(ValueError, match=r"looks token- or frame-level \(B, T, M, C\)"):
        crit(torch.randn(B, T, 2, 4), target)
    flat = crit({k: v.flatten(0, 1) for k, v in logits.items()}, target.flatten())
    kept = target.flatten() != -100
    alone = crit({k: v.flatten(0, 1)[kept] for k, v in logits.items()}, target.flatten()[kept])
    torch.testing.assert_close(flat, alone)  # the padded positions count for nothing
