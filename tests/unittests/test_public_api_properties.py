"""Property-based tests over the public API (issue 17, item 19).

Hypothesis generates sizes, dtypes, masks, ignored targets, input layouts (tensor, list, mapping)
and option combinations; every case checks the invariants: a finite loss, probabilities that sum
to one, masked modalities equal to zeroed blocks, modality weights that sum to one, Shapley
efficiency, module == functional == the naive per-instance reference. Values outside the
documented domain must raise ``ValueError`` or ``TypeError``, never another exception.
``max_examples`` below is how many cases each property generates per run (60, 200 and 100).
``derandomize=True``: the same cases every run, so that CI cannot turn red on a new draw; run
``pytest --hypothesis-seed=N`` with ``derandomize`` removed to search further (16
seeds were searched that way when these were written; they found the three defects fixed with
them: ``aux_weight`` and ``gamma`` out of float32's range, a size error that did not name its
argument).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from lightning_mmloss import MultiModalLoss
from lightning_mmloss.functional import multimodal_loss
from tests.helpers.reference import reference_fuse, reference_total_loss

pytestmark = pytest.mark.filterwarnings("ignore:Every proxy of the MultiModal loss is <= 0:UserWarning")

NAMES = ["a", "b", "c", "d"]


@st.composite
def cases(draw: st.DrawFn) -> dict:
    M, C, K = draw(st.integers(1, 4)), draw(st.integers(2, 5)), draw(st.integers(1, 3))
    B = draw(st.integers(0, 7))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(B, M, C, generator=g, dtype=torch.float64) * draw(st.sampled_from([0.5, 3.0]))
    target = torch.randint(0, C, (B,), generator=g)
    ignore = draw(st.sampled_from([-100, 0]))
    if B and draw(st.booleans()):
        target[torch.rand(B, generator=g) < 0.3] = ignore
    mask = None
    if draw(st.booleans()):
        mask = torch.rand(B, M, generator=g) > 0.3
        if draw(st.booleans()) and B:
            mask[:, 0] = True  # (instances with no modality at all are allowed too)
    options = {
        "gamma": draw(st.sampled_from([0.1, 0.5, 1.0])),
        "pooling": draw(st.sampled_from(["reference", "softtriple"])),
        "attention": draw(st.booleans()),
        "backend": draw(st.sampled_from(["fused", "autograd"])),
    }
    loss_options = {
        "aux_weight": draw(st.sampled_from([0.0, 0.5])),
        "label_smoothing": draw(st.sampled_from([0.0, 0.1])),
        "ignore_index": ignore,
        "reduction": draw(st.sampled_from(["mean", "sum", "none"])),
    }
    if draw(st.booleans()):
        loss_options["class_weight"] = torch.rand(C, generator=g, dtype=torch.float64) + 0.1
    layout = draw(st.sampled_from(["tensor", "list", "mapping"]))
    return dict(B=B, M=M, C=C, K=K, u=u, target=target, mask=mask, options=options, loss=loss_options, layout=layout)


def _inputs(case: dict):
    u, M = case["u"], case["M"]
    if case["layout"] == "list":
        return [u[:, m] for m in range(M)]
    if case["layout"] == "mapping":
        return {NAMES[m]: u[:, m] for m in range(M)}
    return u


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases())
def test_module_functional_and_reference_agree_with_the_invariants(case: dict) -> None:
    B, M, C, K = case["B"], case["M"], case["C"], case["K"]
    crit = MultiModalLoss(C, NAMES[:M], K, **case["options"], **case["loss"]).double()
    u, target, mask = case["u"], case["target"], case["mask"]
    loss = crit(_inputs(case), target, mask)
    assert bool(torch.isfinite(loss).all())
    fn = multimodal_loss(
        u, target, crit.weight, modality_mask=mask, **{k: v for k, v in case["loss"].items()}, **case["options"]
    )
    torch.testing.assert_close(fn, loss)
    out = crit.fuse(_inputs(case), mask)
    if B:
        opts = case["options"]
        ref = reference_fuse(
            u,
            crit.weight.detach(),
            K,
            opts["gamma"],
            opts["pooling"],
            attention=opts["attention"],
            mask=mask,
            log_evidence=crit.spec.log_evidence,
        )
        torch.testing.assert_close(out.modality_logits.sum(1), out.logits)
        torch.testing.assert_close(out.modality_weights, ref["weights"])
        torch.testing.assert_close(out.logits, ref["logits"])
        expected = reference_total_loss(ref["logits"], u, target, crit.aux_weight, mask, crit.class_weight,
                                        crit.label_smoothing, crit.ignore_index, crit.reduction)  # fmt: skip
        if crit.reduction == "mean" and not bool((target != crit.ignore_index).any()):
            expected = torch.zeros((), dtype=torch.float64)  # documented: 0, not the reference's 0/0
        torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(out.probs.sum(-1), torch.ones(B, dtype=torch.float64))
    present = torch.ones(B, M, dtype=torch.bool) if mask is None else mask
    some = present.any(dim=1)
    torch.testing.assert_close(out.modality_weights[some].sum(-1), torch.ones(int(some.sum()), dtype=torch.float64))
    assert bool((out.modality_weights[~present] == 0).all())
    if mask is not None:  # a masked modality is its block of scores set to zero (identity activation)
        assert bool((out.unimodal_probs[~mask] == 0).all())
        # in s and h; the log-evidence averages over the present modalities only (tested with the reference)
        ident = MultiModalLoss(C, M, K, activation="identity", log_evidence=0.0, **case["options"]).double()
        ident.weight.data.copy_(crit.weight.data)
        scores = u.softmax(-1).masked_fill(~mask[:, :, None], 0.0)
        torch.testing.assert_close(ident.fuse(scores).logits, ident.fuse(u.softmax(-1), mask).logits)
    if M <= 4:
        phi = crit.shapley(u, modality_mask=mask)
        v_all = out.probs.gather(1, out.preds[:, None]).squeeze(1)
        v_none = crit.fuse(u, torch.zeros(B, M, dtype=torch.bool)).probs.gather(1, out.preds[:, None]).squeeze(1)
        torch.testing.assert_close(phi.sum(1), v_all - v_none)


BAD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=3),
    st.lists(st.integers(-3, 3), max_size=3),
    st.just(torch.tensor([1.0, float("nan")])),
    st.just(1 + 2j),
)
ARGUMENTS = ["num_classes", "num_modalities", "proxies_per_class", "gamma", "pooling", "attention", "activation",
             "backend", "class_weight", "label_smoothing", "ignore_index", "reduction", "validate_args", "aux_weight",
             "proxy_init"]  # fmt: skip
VALID = {"num_classes": 3, "num_modalities": 2, "proxies_per_class": 2}


@settings(max_examples=200, deadline=None, derandomize=True)
@given(name=st.sampled_from(ARGUMENTS), value=BAD_VALUES)
def test_constructor_values_are_accepted_or_refused_with_value_or_type_error(name: str, value: object) -> None:
    # sizes that are valid but allocate gigabytes are not this test's business (huge ones are refused)
    # (the proxies' size guard refuses beyond 2**32 entries; below it a 24 GiB machine runs out of memory)
    assume(not (name in VALID and isinstance(value, int) and 64 < value < 2**40))
    kwargs = {**VALID, name: value}
    try:
        crit = MultiModalLoss(**kwargs)
    except (ValueError, TypeError) as err:
        assert f"`{name}`" in str(err) or name in str(err), (name, value, str(err))
        return
    # accepted: it must then work on a valid batch
    u, y = torch.randn(4, crit.num_modalities, crit.num_classes), torch.randint(0, crit.num_classes, (4,))
    assert bool(torch.isfinite(crit(u, y)).all())


@settings(max_examples=100, deadline=None, derandomize=True)
@given(
    B=st.integers(0, 4),
    shape=st.sampled_from(["ok", "rank2", "rank4", "wrong_M", "wrong_C"]),
    target=st.sampled_from(["ok", "float", "bool", "too_long", "out_of_range", "negative", "list"]),
    mask=st.sampled_from([None, "ok", "float", "wrong_shape"]),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.int64]),
)
def test_call_arguments_are_accepted_or_refused_with_value_or_type_error(B, shape, target, mask, dtype) -> None:
    crit = MultiModalLoss(3, 2, 2)
    u = {"ok": torch.randn(B, 2, 3), "rank2": torch.randn(B, 6), "rank4": torch.randn(B, 2, 3, 1),
         "wrong_M": torch.randn(B, 3, 3), "wrong_C": torch.randn(B, 2, 4)}[shape]  # fmt: skip
    u = (u * 3).to(dtype)
    y = {"ok": torch.randint(0, 3, (B,)), "float": torch.zeros(B), "bool": torch.zeros(B, dtype=torch.bool),
         "too_long": torch.zeros(B + 1, dtype=torch.long), "out_of_range": torch.full((B,), 3),
         "negative": torch.full((B,), -2), "list": [0] * B}[target]  # fmt: skip
    m = {None: None, "ok": torch.ones(B, 2, dtype=torch.bool), "float": torch.ones(B, 2),
         "wrong_shape": torch.ones(B, 3, dtype=torch.bool)}[mask]  # fmt: skip
    try:
        loss = crit(u, y, m)
    except (ValueError, TypeError):
        return
    valid_range = target == "ok" or (B == 0 and target in ("out_of_range", "negative"))
    assert shape == "ok" and valid_range and mask in (None, "ok") and dtype != torch.int64
    assert math.isfinite(float(loss.detach()))
