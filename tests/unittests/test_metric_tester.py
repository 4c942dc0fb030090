"""Every metric as class and function, forward vs update, pickle/clone, against independent references (issue 16).

In the spirit of torchmetrics' ``MetricTester``: the references are torchmetrics' own
``multiclass_accuracy``, ``multiclass_f1_score`` and ``multiclass_calibration_error`` where they
define the same quantity, ``torch.nn.functional.nll_loss``, and per-instance Python loops for the
rest (agreement rates, subgroup statistics), written from the definitions in the docstrings.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_calibration_error,
    multiclass_f1_score,
)

from lightning_mmloss.functional import modality_agreement, modality_reliability, subgroup_statistics
from lightning_mmloss.metrics import ModalityAgreement, ModalityReliability, SubgroupStatistics

M, C, K = 3, 4, 2
NAMES = ["a", "b", "c"]


def _batches(n_batches: int = 3, B: int = 40, seed: int = 0, masked: bool = True, ignore: int | None = None):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        u = torch.randn(B, M, C, generator=g) * 2
        target = torch.randint(0, C, (B,), generator=g)
        u[:, 0] += 3 * torch.nn.functional.one_hot(target, C)  # head a informative
        p = u.softmax(-1)
        fused = (u.mean(1) + torch.randn(B, C, generator=g)).softmax(-1)
        mask = torch.rand(B, M, generator=g) > 0.25 if masked else None
        if ignore is not None:
            target[torch.rand(B, generator=g) < 0.2] = ignore
        out.append((p, fused, target, mask))
    return out


def _cat(batches):
    p, f, t, m = zip(*batches, strict=True)
    return torch.cat(p), torch.cat(f), torch.cat(t), None if m[0] is None else torch.cat(m)


def _reference_reliability(p, fused, target, mask, ignore):
    """Per head, over the instances where it is present and the target is not ignored, torchmetrics' values."""
    keep = torch.ones_like(target, dtype=torch.bool) if ignore is None else target != ignore
    out = {}
    heads = [(n, p[:, i], None if mask is None else mask[:, i]) for i, n in enumerate(NAMES)] + [("fused", fused, None)]
    for name, probs, present in heads:
        sel = keep if present is None else keep & present
        x, y = probs[sel].double(), target[sel]
        out[f"{name}/acc"] = multiclass_accuracy(x, y, C, average="micro")
        out[f"{name}/macro_f1"] = multiclass_f1_score(x, y, C, average="macro")
        out[f"{name}/ece"] = multiclass_calibration_error(x, y, C, n_bins=15, norm="l1")
        out[f"{name}/nll"] = torch.nn.functional.nll_loss(x.clamp_min(1e-12).log(), y)
        out[f"{name}/brier"] = ((x - torch.nn.functional.one_hot(y, C)) ** 2).sum(1).mean()
        # purity gap by its definition: rename every predicted label to its most frequent true class
        pred = x.argmax(1)
        best = sum(int(torch.bincount(y[pred == c], minlength=C).max()) for c in pred.unique().tolist())
        out[f"{name}/purity_gap"] = torch.tensor((best - int((pred == y).sum())) / len(y))
    return out


def _reference_agreement(p, fused, target, mask, ignore):
    keep = torch.ones_like(target, dtype=torch.bool) if ignore is None else target != ignore
    counts = dict.fromkeys(("all_agree", "reinforce", "conflict", "all_wrong", "rescued", "harmed"), 0)
    total = 0
    for i in range(len(target)):
        present = [m for m in range(M) if mask is None or bool(mask[i, m])]
        if not keep[i] or not present:
            continue
        total += 1
        preds = [int(p[i, m].argmax()) for m in present]
        y, n = int(target[i]), len(present)
        r = sum(q == y for q in preds)
        agree = len(set(preds)) == 1
        fused_right = int(fused[i].argmax()) == y
        counts["all_agree"] += agree
        counts["reinforce"] += r == n
        counts["conflict"] += (not agree) and r > 0
        counts["all_wrong"] += r == 0
        counts["rescued"] += fused_right and (n - r) > n / 2
        counts["harmed"] += (not fused_right) and r > n / 2
    return {k: torch.tensor(v / total, dtype=torch.float64) for k, v in counts.items()}


@pytest.mark.parametrize("ignore", [None, -100, 2])
@pytest.mark.parametrize("masked", [False, True])
def test_reliability_class_and_function_against_torchmetrics(masked: bool, ignore: int | None) -> None:
    batches = _batches(masked=masked, ignore=ignore)
    expected = _reference_reliability(*_cat(batches), ignore)
    metric = ModalityReliability(NAMES, C, ignore_index=ignore)
    for b in batches:
        metric.update(*b)
    got_class = metric.compute()
    got_fn = modality_reliability(*_cat(batches), modalities=NAMES, ignore_index=ignore)
    for key, ref in expected.items():
        # torchmetrics computes in float32 internally (ECE agrees to ~1e-7)
        torch.testing.assert_close(got_class[key].double(), ref.double(), atol=1e-6, rtol=1e-6, msg=key)
        torch.testing.assert_close(got_fn[key].double(), ref.double(), atol=1e-6, rtol=1e-6, msg=key)


@pytest.mark.parametrize("ignore", [None, 1])
def test_agreement_class_and_function_against_a_loop(ignore: int | None) -> None:
    batches = _batches(ignore=ignore)
    expected = _reference_agreement(*_cat(batches), ignore)
    metric = ModalityAgreement(NAMES, ignore_index=ignore)
    for b in batches:
        metric.update(*b)
    got_fn = modality_agreement(*_cat(batches), ignore_index=ignore)
    for key, ref in expected.items():
        torch.testing.assert_close(metric.compute()[key], ref, msg=key)
        torch.testing.assert_close(got_fn[key], ref, msg=key)


def test_subgroup_statistics_against_a_loop() -> None:
    g = torch.Generator().manual_seed(3)
    B = 60
    subgroup = torch.randint(0, C * K, (B,), generator=g)
    preds, target = torch.randint(0, C, (B,), generator=g), torch.randint(0, C, (B,), generator=g)
    target[:7] = -1
    p = torch.rand(B, M, C, generator=g).softmax(-1)
    w = torch.rand(B, M, generator=g)
    w = w / w.sum(1, keepdim=True)
    metric = SubgroupStatistics(NAMES, C, K, ignore_index=-1)
    metric.update(subgroup[:30], preds[:30], target[:30], p[:30], w[:30])
    metric.update(subgroup[30:], preds[30:], target[30:], p[30:], w[30:])
    got = metric.compute()
    keep = target != -1
    occupancy = torch.zeros(C * K)
    for j in subgroup[keep].tolist():
        occupancy[j] += 1
    torch.testing.assert_close(got["occupancy"].double().flatten(), occupancy.double())
    fn = subgroup_statistics(subgroup, preds, target, p, w, C, K, ignore_index=-1)
    torch.testing.assert_close(fn["occupancy"], got["occupancy"])


@pytest.mark.parametrize("make", [lambda: ModalityReliability(NAMES, C), lambda: ModalityAgreement(NAMES)])
def test_forward_equals_update_and_pickle_and_clone_keep_the_state(make) -> None:
    batches = _batches()
    metric = make()
    for b in batches[:2]:
        metric.update(*b)
    one = make()
    batch_value = one(*batches[2])  # forward: this batch's value, and accumulates it
    alone = make()
    alone.update(*batches[2])
    for k, v in alone.compute().items():
        torch.testing.assert_close(batch_value[k], v, equal_nan=True, msg=k)
    metric.update(*batches[2])
    expected = metric.compute()
    for other in (pickle.loads(pickle.dumps(metric)), copy.deepcopy(metric), metric.clone()):
        for k, v in other.compute().items():
            torch.testing.assert_close(v, expected[k], equal_nan=True, msg=k)


@pytest.mark.parametrize("make", [lambda: ModalityReliability(NAMES, C), lambda: ModalityAgreement(NAMES)])
def test_targets_int32_accepted_out_of_range_refused_empty_batches_counted_as_nothing(make) -> None:
    p, fused, target, mask = _batches(n_batches=1)[0]
    a, b = make(), make()
    a.update(p, fused, target, mask)
    b.update(p, fused, target.int(), mask)
    b.update(p[:0], fused[:0], target[:0], mask[:0])  # an empty batch adds nothing
    for k, v in a.compute().items():
        torch.testing.assert_close(b.compute()[k], v, msg=k)
    bad = target.clone()
    bad[0] = C  # one past the last class: silently shifted the rates before
    with pytest.raises(ValueError, match=r"`target` to hold class indices in \[0, 3\]"):
        make().update(p, fused, bad, mask)
    bad[0] = -3
    with pytest.raises(ValueError, match="target"):
        make().update(p, fused, bad, mask)


def test_a_modality_named_fused_is_refused_and_ignore_index_must_be_an_int() -> None:
    with pytest.raises(ValueError, match="'fused'"):
        ModalityReliability(["a", "fused"], C)
    with pytest.raises(TypeError, match="ignore_index"):
        ModalityReliability(NAMES, C, ignore_index=1.9)
    with pytest.raises(TypeError, match="validate_args"):
        ModalityAgreement(NAMES, validate_args="no")
