"""The module against the naive per-instance reference, in float64, values and gradients."""

from __future__ import annotations

import itertools

import pytest
import torch

from lightning_mmloss import PAPER_OPTIONS, MultiModalLoss
from lightning_mmloss.functional import multimodal_logits
from tests.helpers.reference import reference_cross_entropy, reference_fuse, reference_total_loss

GRID = list(
    itertools.product(
        [1, 2, 3],  # M
        [2, 4],  # C
        [1, 3],  # K
        ["reference", "softtriple"],
        [True, False],  # attention
        [True, False],  # normalize
    )
)


def _inputs(B: int, M: int, C: int, activation: str = "softmax") -> torch.Tensor:
    u = torch.randn(B, M, C, dtype=torch.float64) * 2
    if activation == "identity":
        u = u.softmax(dim=-1)
    return u.requires_grad_(True)


def _make(M: int, C: int, K: int, **kw) -> MultiModalLoss:
    kw.setdefault("aux_weight", 0.0)  # the paper's loss: fused cross-entropy only (aux term: own tests)
    kw.setdefault("log_evidence", 0.0)  # the paper's logit and gradients at full strength (the term: own tests)
    crit = MultiModalLoss(C, M, K, **kw).double()
    with torch.no_grad():  # some exact zeros and negative rows: exercise the clamp
        crit.weight.uniform_(-0.3, 1.0)
    return crit


BACKENDS = ["fused", "autograd"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("M", "C", "K", "pooling", "attention", "normalize"), GRID)
def test_matches_reference(
    M: int, C: int, K: int, pooling: str, attention: bool, normalize: bool, backend: str
) -> None:
    crit = _make(M, C, K, pooling=pooling, attention=attention, normalize_proxies=normalize, gamma=0.3, backend=backend)
    u = _inputs(5, M, C)
    y = torch.randint(0, C, (5,))
    out = crit.fuse(u)
    ref = reference_fuse(u, crit.weight, K, 0.3, pooling, attention, normalize)
    torch.testing.assert_close(out.logits, ref["logits"])
    torch.testing.assert_close(out.similarity, ref["similarity"].detach())
    torch.testing.assert_close(out.attention, ref["attention"].detach())
    torch.testing.assert_close(out.unimodal_probs, ref["probs"].detach())
    torch.testing.assert_close(out.modality_weights, ref["weights"].detach())
    torch.testing.assert_close(out.modality_logits, ref["parts"])
    torch.testing.assert_close(out.attention_logits + out.evidence_logits, out.logits.detach())
    assert torch.equal(out.subgroup, ref["subgroup"])

    loss = crit(u, y)
    ref_loss = reference_cross_entropy(ref["logits"], y)
    torch.testing.assert_close(loss, ref_loss)
    g_u, g_w = torch.autograd.grad(loss, (u, crit.weight))
    r_u, r_w = torch.autograd.grad(ref_loss, (u, crit.weight))
    torch.testing.assert_close(g_u, r_u)
    torch.testing.assert_close(g_w, r_w)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pooling", ["reference", "softtriple"])
@pytest.mark.parametrize("activation", ["softmax", "identity"])
def test_matches_reference_with_mask(pooling: str, activation: str, backend: str) -> None:
    M, C, K = 3, 4, 2
    crit = _make(M, C, K, pooling=pooling, activation=activation, backend=backend)
    u = _inputs(6, M, C, activation)
    mask = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 0, 1], [0, 0, 0], [1, 1, 0], [0, 1, 0]], dtype=torch.bool)
    y = torch.randint(0, C, (6,))
    out = crit.fuse(u, modality_mask=mask)
    ref = reference_fuse(u, crit.weight, K, 0.1, pooling, True, True, activation, mask)
    torch.testing.assert_close(out.logits, ref["logits"])
    torch.testing.assert_close(out.modality_weights, ref["weights"].detach())
    assert torch.all(out.modality_weights[~mask] == 0)
    loss = crit(u, y, modality_mask=mask)
    ref_loss = reference_cross_entropy(ref["logits"], y)
    torch.testing.assert_close(loss, ref_loss)
    g = torch.autograd.grad(loss, (u, crit.weight))
    r = torch.autograd.grad(ref_loss, (u, crit.weight))
    torch.testing.assert_close(g, r)
    assert torch.all(g[0][~mask] == 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cross_entropy_options_match_reference(backend: str) -> None:
    M, C, K = 2, 5, 3
    cw = torch.tensor([1.0, 2.0, 0.5, 1.5, 0.0], dtype=torch.float64)
    crit = _make(M, C, K, class_weight=cw, label_smoothing=0.2, ignore_index=-1, backend=backend)
    u = _inputs(7, M, C)
    y = torch.tensor([0, 1, -1, 3, 4, 2, -1])
    ref = reference_fuse(u, crit.weight, K)
    loss = crit(u, y)
    ref_loss = reference_cross_entropy(ref["logits"], y, cw, 0.2, -1)
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(
        torch.autograd.grad(loss, (u, crit.weight)), torch.autograd.grad(ref_loss, (u, crit.weight))
    )


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_reductions(reduction: str) -> None:
    crit = _make(2, 3, 2, reduction=reduction)
    u = _inputs(4, 2, 3)
    y = torch.tensor([0, 1, 2, 1])
    ref_logits = reference_fuse(u, crit.weight, 2)["logits"]
    per = torch.stack([reference_cross_entropy(ref_logits[i : i + 1], y[i : i + 1]) for i in range(4)])
    expected = per.sum() if reduction == "sum" else per
    torch.testing.assert_close(crit(u, y), expected)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("pooling", "attention", "normalize", "masked"),
    [
        ("reference", True, True, False),
        ("reference", True, True, True),
        ("softtriple", True, True, False),
        ("reference", False, True, False),
        ("softtriple", True, False, True),
    ],
)
def test_gradcheck(pooling: str, attention: bool, normalize: bool, masked: bool, backend: str) -> None:
    M, C, K = 3, 3, 2
    crit = _make(M, C, K, pooling=pooling, attention=attention, normalize_proxies=normalize, gamma=0.5)
    with torch.no_grad():  # keep every weight away from the clamp's kink at 0
        crit.weight.copy_(torch.where(crit.weight.abs() < 0.05, 0.3, crit.weight))
    u = _inputs(4, M, C)
    mask = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 0, 0], [0, 1, 0]], dtype=torch.bool) if masked else None
    w = crit.weight.detach().clone().requires_grad_(True)

    def fused(u_: torch.Tensor, w_: torch.Tensor) -> torch.Tensor:
        return multimodal_logits(
            u_,
            w_,
            gamma=0.5,
            pooling=pooling,
            attention=attention,
            normalize_proxies=normalize,
            modality_mask=mask,
            backend=backend,
            log_evidence=0.0,  # a stop-gradient offset: finite differences see it (its own tests below)
        )

    assert torch.autograd.gradcheck(fused, (u, w), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("B", "activation", "pooling"),
    [(12, "softmax", "reference"), (12, "identity", "softtriple"), (5, "identity", "reference")],
)
def test_gradcheck_batch_sizes_and_identity(B: int, activation: str, pooling: str, backend: str) -> None:
    # B > M*C and B < M*C take the two orders of the proxy gradient's row scaling
    M, C, K = 2, 3, 2
    crit = _make(M, C, K, pooling=pooling, activation=activation, gamma=0.5)
    with torch.no_grad():
        crit.weight.copy_(torch.where(crit.weight.abs() < 0.05, 0.3, crit.weight))
    u = _inputs(B, M, C, activation)
    w = crit.weight.detach().clone().requires_grad_(True)
    mask = torch.rand(B, M, generator=torch.Generator().manual_seed(1)) > 0.3

    def fused(u_: torch.Tensor, w_: torch.Tensor) -> torch.Tensor:
        opts = {"gamma": 0.5, "pooling": pooling, "activation": activation, "backend": backend, "log_evidence": 0.0}
        return multimodal_logits(u_, w_, modality_mask=mask, **opts)

    assert torch.autograd.gradcheck(fused, (u, w), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [True, False])  # False: the auxiliary term's one-call path
def test_gradcheck_default_loss_with_every_option(backend: str, reduction: str, weighted: bool) -> None:
    # the whole default loss (fused + auxiliary cross-entropy), through the cross-entropies'
    # batch-last forms, with class weights, label smoothing and an ignored target
    M, C, K, B = 2, 3, 2, 9
    options = {
        "gamma": 0.5,
        "backend": backend,
        "reduction": reduction,
        "class_weight": [1.0, 2.0, 0.5] if weighted else None,
        "label_smoothing": 0.1 if weighted else 0.0,
    }
    crit = MultiModalLoss(C, M, K, **options).double()
    # finite differences see the log-evidence offset, which backward treats as a constant (its own
    # tests below): the unimodal logits' gradient is checked without it, the proxies' with it
    no_offset = MultiModalLoss(C, M, K, log_evidence=0.0, **options).double()
    u = _inputs(B, M, C)
    y = torch.tensor([0, 1, 2, -100, 1, 0, 2, 2, 1])
    w = crit.weight.detach().clone().requires_grad_(True)

    def loss(module: MultiModalLoss, u_: torch.Tensor, w_: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(module, {"weight": w_}, (u_, y))

    assert torch.autograd.gradcheck(lambda u_, w_: loss(no_offset, u_, w_), (u, w), eps=1e-6, atol=1e-5)
    assert torch.autograd.gradcheck(lambda w_: loss(crit, u.detach(), w_), (w,), eps=1e-6, atol=1e-5)
    logits = reference_fuse(u, crit.weight, K, 0.5, log_evidence=crit.spec.log_evidence)["logits"]
    ref = reference_total_loss(
        logits, u, y, 0.5, class_weight=crit.class_weight, label_smoothing=0.1 if weighted else 0.0, reduction=reduction
    )
    torch.testing.assert_close(crit(u, y), ref)


def test_autograd_backend_supports_double_backward() -> None:
    u = _inputs(3, 2, 3)
    w = torch.rand(6, 6, dtype=torch.float64, requires_grad=True)

    def fused(u_: torch.Tensor, w_: torch.Tensor) -> torch.Tensor:
        return multimodal_logits(u_, w_, gamma=0.5, backend="autograd")

    assert torch.autograd.gradgradcheck(fused, (u, w), eps=1e-6, atol=1e-4)


def test_float32_matches_float64() -> None:
    crit = MultiModalLoss(6, 3, 4)
    u = torch.randn(32, 3, 6)
    y = torch.randint(0, 6, (32,))
    l32 = crit(u, y)
    crit64 = MultiModalLoss(6, 3, 4).double()
    crit64.load_state_dict(crit.state_dict())
    assert crit64.weight.dtype == torch.float64
    l64 = crit64(u.double(), y)
    assert l32.dtype == torch.float32 and l64.dtype == torch.float64
    torch.testing.assert_close(l32.double(), l64, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pooling", ["reference", "softtriple"])
def test_small_gamma_uses_stable_pooling(backend: str, pooling: str) -> None:
    # 1/gamma = 100: the pooling softmax can no longer be derived from the attention softmax
    M, C, K = 2, 3, 4
    crit = _make(M, C, K, gamma=0.01, pooling=pooling, backend=backend)
    u = _inputs(4, M, C)
    y = torch.tensor([0, 1, 2, 0])
    ref = reference_fuse(u, crit.weight, K, 0.01, pooling)
    torch.testing.assert_close(crit.fuse(u).logits, ref["logits"])
    loss, ref_loss = crit(u, y), reference_cross_entropy(ref["logits"], y)
    torch.testing.assert_close(
        torch.autograd.grad(loss, (u, crit.weight)), torch.autograd.grad(ref_loss, (u, crit.weight))
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("options", ["plain", "weighted", "weighted_nosmooth", "masked"])
def test_auxiliary_unimodal_term_matches_reference(backend: str, reduction: str, options: str) -> None:
    M, C, K = 3, 4, 2
    kw: dict = {"aux_weight": 0.7, "reduction": reduction, "backend": backend}
    cw, mask = None, None
    if options.startswith("weighted"):  # with smoothing: the general path; without: the 3-op fast path
        cw = torch.tensor([1.0, 2.0, 0.5, 1.5], dtype=torch.float64)
        kw.update(class_weight=cw, label_smoothing=0.1 if options == "weighted" else 0.0, ignore_index=-1)
    crit = _make(M, C, K, **kw)
    u = _inputs(6, M, C)
    y = torch.tensor([0, -1, 2, 3, 1, -1]) if options.startswith("weighted") else torch.tensor([0, 1, 2, 3, 1, 2])
    if options == "masked":
        mask = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 0, 1], [0, 0, 0], [1, 1, 0], [0, 1, 0]], dtype=torch.bool)
        with torch.no_grad():  # absent entries are NaN placeholders: they must not reach value or gradient
            u[~mask] = float("nan")
    smoothing, ignore = kw.get("label_smoothing", 0.0), kw.get("ignore_index", -100)

    def reference(u_ref: torch.Tensor, aux_weight: float) -> torch.Tensor:
        logits = reference_fuse(u_ref, crit.weight, K, mask=mask)["logits"]
        return reference_total_loss(logits, u_ref, y, aux_weight, mask, cw, smoothing, ignore, reduction)

    loss = crit(u, y, modality_mask=mask)
    torch.testing.assert_close(loss, reference(u.nan_to_num(), 0.7))
    g_u, g_w = torch.autograd.grad(loss.sum(), (u, crit.weight))
    assert torch.isfinite(g_u).all()
    u2 = u.detach().nan_to_num().requires_grad_(True)
    r_u, r_w = torch.autograd.grad(reference(u2, 0.7).sum(), (u2, crit.weight))
    torch.testing.assert_close(g_u, r_u)
    torch.testing.assert_close(g_w, r_w)
    total, fused, aux = crit(u, y, modality_mask=mask, return_terms=True)
    torch.testing.assert_close(total, loss)
    torch.testing.assert_close(fused + 0.7 * aux, loss)
    torch.testing.assert_close(fused, reference(u.nan_to_num(), 0.0))


@pytest.mark.parametrize("gamma", [0.1, 0.02, 1 / 65])
def test_fused_float32_as_precise_as_autograd_up_to_the_gamma_limit(gamma: float) -> None:
    # the fused path skips the softmaxes' max-subtraction (exp(S/gamma) <= e^{1/gamma}); up to the
    # largest 1/gamma it accepts, its float32 gradients must be as close to float64 as autograd's
    from lightning_mmloss.functional.fusion import FusionOptions, _spec_from, _uses_fused_path

    torch.manual_seed(0)
    B, M, C, K = 64, 3, 4, 10
    u64, w64 = torch.randn(B, M, C, dtype=torch.float64) * 2, torch.rand(C * K, M * C, dtype=torch.float64)
    assert _uses_fused_path(_spec_from(u64, w64, FusionOptions(gamma=gamma)))
    y = torch.randint(0, C, (B,))

    def grads(u: torch.Tensor, w: torch.Tensor, backend: str) -> tuple[torch.Tensor, ...]:
        u, w = u.clone().requires_grad_(), w.clone().requires_grad_()
        o = multimodal_logits(u, w, gamma=gamma, backend=backend)
        return torch.autograd.grad(torch.nn.functional.cross_entropy(o, y), (u, w))

    ref = grads(u64, w64, "autograd")
    err = {
        b: [
            float((g.double() - r).norm() / r.norm())
            for g, r in zip(grads(u64.float(), w64.float(), b), ref, strict=True)
        ]
        for b in BACKENDS
    }
    for fused, composite in zip(err["fused"], err["autograd"], strict=True):
        assert fused < 2 * composite + 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
def test_public_outputs_are_contiguous_batch_first(backend: str) -> None:
    # the fused path computes batch-last; what users receive is (B, ...) and contiguous (.view works)
    crit = MultiModalLoss(4, 3, 5, backend=backend)
    u = torch.randn(16, 3, 4)
    out = crit.fuse(u)
    for name in ("logits", "subgroup", "attention", "similarity", "unimodal_probs", "modality_weights"):
        assert getattr(out, name).is_contiguous(), name
    assert out.attention.view(16, -1).shape == (16, 20)
    assert crit.fused_logits(u).is_contiguous()
    assert multimodal_logits(u, crit.weight, backend=backend).is_contiguous()
    torch.testing.assert_close(crit.fused_logits(u), out.logits)


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_returned_term_has_its_own_gradient(backend: str) -> None:
    # the fused path computes the auxiliary term from its own log-scores; the gradient of either
    # term alone must be that term's (the other one's gradient arrives as None)
    from lightning_mmloss.functional import auxiliary_unimodal_loss

    crit = _make(3, 4, 2, aux_weight=0.5, backend=backend, class_weight=[1.0, 2.0, 0.5, 1.5])
    u = _inputs(6, 3, 4)
    y = torch.tensor([0, 1, 2, 3, 1, -100])
    total, fused, aux = crit(u, y, return_terms=True)
    g_aux = torch.autograd.grad(aux, u, retain_graph=True)[0]
    g_fused = torch.autograd.grad(fused, u, retain_graph=True)[0]
    g_total = torch.autograd.grad(total, u)[0]
    ref_aux = auxiliary_unimodal_loss(u, y, class_weight=crit.class_weight)  # the general path
    torch.testing.assert_close(aux, ref_aux)
    torch.testing.assert_close(g_aux, torch.autograd.grad(ref_aux, u)[0])
    logits = reference_fuse(u, crit.weight, 2)["logits"]
    ref_fused = reference_total_loss(logits, u, y, 0.0, class_weight=crit.class_weight)
    torch.testing.assert_close(g_fused, torch.autograd.grad(ref_fused, u)[0])
    torch.testing.assert_close(g_total, g_fused + 0.5 * g_aux)


@pytest.mark.parametrize("validate", [True, False])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("weighted", [True, False])
def test_auxiliary_term_without_checks_and_with_every_target_ignored(
    validate: bool, reduction: str, weighted: bool
) -> None:
    # with checks off the fusion's auxiliary term cannot know how many targets count: it must
    # still equal the general path, and a batch of ignored targets must give a connected zero
    from lightning_mmloss.functional import auxiliary_unimodal_loss

    cw = [1.0, 2.0, 0.5, 1.5] if weighted else None
    crit = _make(3, 4, 2, aux_weight=0.5, reduction=reduction, class_weight=cw, validate_args=validate)
    u = _inputs(6, 3, 4)
    for y in (torch.tensor([0, 1, -100, 3, 1, -100]), torch.full((6,), -100)):
        _, _, aux = crit(u, y, return_terms=True)
        ref = auxiliary_unimodal_loss(u, y, class_weight=crit.class_weight, reduction=reduction)
        torch.testing.assert_close(aux, ref)
        (g,) = torch.autograd.grad(aux, u)
        torch.testing.assert_close(g, torch.autograd.grad(ref, u)[0])
        if bool((y == -100).all()):
            assert float(aux.detach()) == 0.0 and aux.requires_grad


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("activation", ["softmax", "identity"])
def test_log_evidence_matches_reference_with_mask(activation: str, backend: str) -> None:
    """Issue 19: ``o = s + h + log_evidence * mean_m log p_m`` on every path (module, functional, Shapley)."""
    M, C, K = 3, 4, 2
    crit = _make(M, C, K, activation=activation, backend=backend, log_evidence=0.7)
    u = _inputs(6, M, C, activation)
    mask = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 0, 1], [0, 0, 0], [1, 1, 0], [0, 1, 0]], dtype=torch.bool)
    y = torch.randint(0, C, (6,))
    out = crit.fuse(u, modality_mask=mask)
    ref = reference_fuse(u, crit.weight, K, 0.1, "reference", True, True, activation, mask, log_evidence=0.7)
    plain = reference_fuse(u, crit.weight, K, 0.1, "reference", True, True, activation, mask)
    assert not torch.allclose(ref["logits"], plain["logits"])  # the term is there
    torch.testing.assert_close(out.logits, ref["logits"])
    torch.testing.assert_close(out.modality_weights, ref["weights"].detach())
    crit.aux_weight = 0.0
    loss = crit(u, y, modality_mask=mask)
    ref_loss = reference_cross_entropy(ref["logits"], y)
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(
        torch.autograd.grad(loss, (u, crit.weight)), torch.autograd.grad(ref_loss, (u, crit.weight))
    )
    fn = multimodal_logits(u, crit.weight, modality_mask=mask, activation=activation, backend=backend, log_evidence=0.7)
    torch.testing.assert_close(fn, ref["logits"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_log_evidence(backend: str) -> None:
    """The proxies' gradient by finite differences; the heads' is the fusion's alone (a fixed offset)."""
    M, C, K = 3, 3, 2
    crit = _make(M, C, K, gamma=0.5)
    with torch.no_grad():  # keep every weight away from the clamp's kink at 0
        crit.weight.copy_(torch.where(crit.weight.abs() < 0.05, 0.3, crit.weight))
    u = _inputs(4, M, C).detach()
    mask = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 0, 0], [0, 1, 0]], dtype=torch.bool)
    w = crit.weight.detach().clone().requires_grad_(True)

    def fused(w_: torch.Tensor) -> torch.Tensor:
        return multimodal_logits(u, w_, gamma=0.5, modality_mask=mask, backend=backend, log_evidence=1.3)

    assert torch.autograd.gradcheck(fused, (w,), eps=1e-6, atol=1e-5)
    # the logits' Jacobian in u is the plain fusion's: the evidence adds no gradient path
    uu = u.clone().requires_grad_(True)
    cot = torch.randn(4, C, dtype=u.dtype)
    g_with = torch.autograd.grad((multimodal_logits(uu, w, gamma=0.5, modality_mask=mask, backend=backend,
                                                    log_evidence=1.3) * cot).sum(), uu)[0]  # fmt: skip
    g_without = torch.autograd.grad((multimodal_logits(uu, w, gamma=0.5, modality_mask=mask, backend=backend)
                                     * cot).sum(), uu)[0]  # fmt: skip
    torch.testing.assert_close(g_with, g_without)


def test_log_evidence_is_checked() -> None:
    with pytest.raises(ValueError, match="log_evidence"):
        MultiModalLoss(3, 2, log_evidence=-1.0)
    with pytest.raises(ValueError, match="log_evidence"):
        MultiModalLoss(3, 2, log_evidence=float("nan"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_paper_options_give_the_papers_fused_logit_and_loss(backend: str) -> None:
    """Issue 19 changed the default fused logit; ``PAPER_OPTIONS`` keeps ``o = s + h`` and its loss."""
    M, C, K = 3, 4, 2
    crit = MultiModalLoss(C, M, K, backend=backend, **PAPER_OPTIONS).double()
    assert crit.aux_weight == 0.0 and crit.spec.log_evidence == 0.0
    u, y = _inputs(6, M, C), torch.tensor([0, 1, 2, 3, 0, 1])
    ref = reference_fuse(u, crit.weight, K, 0.1, log_evidence=0.0)
    torch.testing.assert_close(crit.fuse(u).logits, ref["logits"])
    torch.testing.assert_close(crit(u, y), reference_cross_entropy(ref["logits"], y))
    # the default trains the paper's fused logit (plus the auxiliary term) and decides by the
    # calibrated (o + w E) / T once fitted; unfitted (T = 1, w = 0) its decision is the paper's
    default = MultiModalLoss(C, M, K, backend=backend).double()
    default.weight.data.copy_(crit.weight.data)
    torch.testing.assert_close(default.fuse(u).logits, ref["logits"])
    trained = default(u, y)
    assert not torch.allclose(trained, crit(u, y))  # the auxiliary unimodal term
    default.temperature.fill_(1.5)
    default.evidence_weight.fill_(2.0)
    ref_fitted = reference_fuse(u, crit.weight, K, 0.1, log_evidence=2.0)["logits"] / 1.5
    torch.testing.assert_close(default.fuse(u).logits, ref_fitted)
    torch.testing.assert_close(default.fused_logits(u), ref_fitted)
    torch.testing.assert_close(default.fuse_with_loss(u, y)[0].logits, ref_fitted)
    torch.testing.assert_close(default(u, y), trained)  # the training loss never reads the calibration


def test_the_paper_recipe_uses_the_papers_fused_logit() -> None:
    from lightning_mmloss.experiments.classifier import MultiModalClassifier

    paper = MultiModalClassifier(["a", "b"], {"a": 3, "b": 3}, 2, recipe="paper")
    default = MultiModalClassifier(["a", "b"], {"a": 3, "b": 3}, 2)
    assert paper.mm_loss.spec.log_evidence == 0.0 and paper.mm_loss.aux_weight == 0.0
    from lightning_mmloss.metrics import DecisionFit

    # both train the paper's fused logit; the default's decision weight is fitted, the paper's is not
    assert default.mm_loss.spec.log_evidence == 0.0 and isinstance(default.mm_calibration, DecisionFit)
    assert paper.mm_calibration is None
