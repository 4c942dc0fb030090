"""Metrics against plain loop references, batch-wise accumulation, and errors."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_mmloss import MultiModalLoss
from lightning_mmloss.functional import modality_agreement, modality_reliability, subgroup_statistics
from lightning_mmloss.metrics import ModalityAgreement, ModalityReliability, SubgroupStatistics
from tests.helpers.metric_reference import ref_agreement, ref_reliability

NAMES = ["audio", "video", "text"]


def _batch(B: int = 60, M: int = 3, C: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, C, (B,), generator=g)
    logits = torch.randn(B, M, C, generator=g) * 2
    logits[:, 0] += 3 * torch.nn.functional.one_hot(target, C)  # one informative head
    uni = logits.softmax(-1)
    fused = (logits.sum(1) / 2).softmax(-1)
    mask = torch.rand(B, M, generator=g) > 0.25
    mask[:3] = False  # instances with no modality at all
    return uni, fused, target, mask


def test_reliability_matches_reference_per_head() -> None:
    uni, fused, target, mask = _batch()
    out = modality_reliability(uni, fused, target, mask, modalities=NAMES)
    for m, name in enumerate(NAMES):
        keep = mask[:, m]
        ref = ref_reliability(uni[keep, m], target[keep])
        for metric, value in ref.items():
            assert math.isclose(float(out[f"{name}/{metric}"]), value, rel_tol=1e-9, abs_tol=1e-12), (name, metric)
    ref = ref_reliability(fused, target)
    for metric, value in ref.items():
        assert math.isclose(float(out[f"fused/{metric}"]), value, rel_tol=1e-9, abs_tol=1e-12), metric


def test_agreement_matches_reference() -> None:
    uni, fused, target, mask = _batch()
    out = modality_agreement(uni, fused, target, mask)
    ref = ref_agreement(uni, fused, target, mask)
    for k in ("all_agree", "reinforce", "conflict", "all_wrong", "rescued", "harmed"):
        assert math.isclose(float(out[k]), ref[k], abs_tol=1e-12), k
    torch.testing.assert_close(out["pairwise"], torch.tensor(ref["pairwise"], dtype=torch.float64))


def test_subgroup_statistics_match_reference() -> None:
    C, K, M, B = 3, 4, 2, 80
    loss = MultiModalLoss(C, M, K)
    fused = loss.fuse(torch.randn(B, M, C) * 3)
    target = torch.randint(0, C, (B,))
    out = subgroup_statistics(fused.subgroup, fused.preds, target, fused.unimodal_probs, fused.modality_weights, C, K)
    for c in range(C):
        for k in range(K):
            members = [i for i in range(B) if int(fused.subgroup[i]) == c * K + k]
            assert out["occupancy"][c, k] == len(members)
            if members:
                acc = sum(int(fused.preds[i]) == int(target[i]) for i in members) / len(members)
                assert math.isclose(float(out["accuracy"][c, k]), acc)
                for m in range(M):
                    prof = sum(float(fused.unimodal_probs[i, m, c]) for i in members) / len(members)
                    assert math.isclose(float(out["profile"][c, k, m]), prof, rel_tol=1e-6)
            else:
                assert math.isnan(float(out["accuracy"][c, k]))
    for c in range(C):
        members = [i for i in range(B) if int(fused.preds[i]) == c]
        if members:
            w = fused.modality_weights[members].double().mean(0)
            torch.testing.assert_close(out["class_modality_weights"][c], w)
    occ = out["occupancy"].flatten()
    p = occ[occ > 0] / occ.sum()
    assert math.isclose(float(out["usage_entropy"]), float(-(p * p.log()).sum() / math.log(C * K)), rel_tol=1e-9)
    assert int(out["active"]) == int((occ > 0).sum())


def test_metric_classes_accumulate_like_one_batch() -> None:
    uni, fused, target, mask = _batch(B=90)
    rel, agr = ModalityReliability(NAMES, 4), ModalityAgreement(NAMES)
    for sl in (slice(0, 20), slice(20, 55), slice(55, 90)):
        rel.update(uni[sl], fused[sl], target[sl], mask[sl])
        agr.update(uni[sl], fused[sl], target[sl], mask[sl])
    whole_rel = modality_reliability(uni, fused, target, mask, modalities=NAMES)
    whole_agr = modality_agreement(uni, fused, target, mask)
    for k, v in rel.compute().items():
        torch.testing.assert_close(v, whole_rel[k], rtol=1e-12, atol=1e-12)
    for k, v in agr.compute().items():
        torch.testing.assert_close(v, whole_agr[k], equal_nan=True)
    rel.reset()
    assert int(rel.count.sum()) == 0


def test_perfect_and_confident_heads() -> None:
    target = torch.tensor([0, 1, 2, 1])
    onehot = torch.nn.functional.one_hot(target, 3).double()
    out = modality_reliability(onehot[:, None, :], onehot, target)
    for k, v in (("acc", 1.0), ("macro_f1", 1.0), ("ece", 0.0), ("brier", 0.0), ("nll", 0.0)):
        assert math.isclose(float(out[f"0/{k}"]), v, abs_tol=1e-12)
    wrong = onehot.roll(1, dims=1)
    out = modality_reliability(wrong[:, None, :], wrong, target)
    assert float(out["fused/acc"]) == 0.0 and math.isclose(float(out["fused/ece"]), 1.0)
    assert math.isclose(float(out["fused/nll"]), -math.log(1e-12))  # floored, not inf


def test_metric_errors() -> None:
    uni, fused, target, mask = _batch()
    with pytest.raises(ValueError, match=r"`fused_probs` to have shape \(B, C\) = \(60, 4\), but got \(60, 3\)"):
        modality_reliability(uni, fused[:, :3], target)
    # the same checks, and the same exception types, as the loss's: a wrong kind of tensor is a TypeError
    with pytest.raises(TypeError, match=r"`target` to hold integer class indices, but got dtype torch.float32"):
        modality_agreement(uni, fused, target.float())
    with pytest.raises(ValueError, match=r"`target` to have shape \(B,\) = \(60,\)"):
        modality_agreement(uni, fused, target[:5])
    with pytest.raises(TypeError, match=r"`modality_mask` to have dtype torch.bool"):
        modality_reliability(uni, fused, target, mask.float())
    with pytest.raises(ValueError, match=r"`unimodal_probs` to hold probabilities in \[0, 1\]"):
        ModalityReliability(3, 4).update(uni.log(), fused, target)
    with pytest.raises(ValueError, match=r"`fused_probs` to hold probabilities in \[0, 1\]"):
        ModalityAgreement(3).update(uni, fused * 2, target)
    ModalityReliability(3, 4, validate_args=False).update(uni.log(), fused, target)  # checks skipped: no error
    with pytest.raises(ValueError, match=r"`unimodal_probs` to have shape \(B, 2, 4\), but got \(60, 3, 4\)"):
        ModalityReliability(2, 4).update(uni, fused, target)
    with pytest.raises(ValueError, match=r"`subgroup` to lie in \[0, 11\]"):
        SubgroupStatistics(3, 3, 4).update(
            torch.full((60,), 12), target % 3, target % 3, uni[:, :, :3], torch.ones(60, 3)
        )
    with pytest.raises(ValueError, match=r"`num_classes` to be an int >= 2"):
        ModalityReliability(2, 1)


def test_metrics_run_with_deterministic_algorithms() -> None:
    # Trainer(deterministic=True) sets this; CUDA's bincount would raise under it
    uni, fused, target, mask = _batch()
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        out = modality_reliability(uni, fused, target, mask, modalities=NAMES)
        agr = modality_agreement(uni, fused, target, mask)
        loss = MultiModalLoss(4, 3, 2)
        fu = loss.fuse(uni.log(), mask)
        sub = subgroup_statistics(fu.subgroup, fu.preds, target, fu.unimodal_probs, fu.modality_weights, 4, 2)
    finally:
        torch.use_deterministic_algorithms(before)
    assert torch.isfinite(out["fused/ece"]) and torch.isfinite(agr["conflict"]) and int(sub["occupancy"].sum()) == 60


def test_ece_bins_are_closed_on_the_right() -> None:
    # 8 bins (b/8, (b+1)/8]: confidence 0.625 (right) and 0.6875 (wrong) fall in different bins,
    # 0.625 in (0.5, 0.625] and 0.6875 in (0.625, 0.75]: ECE = (|1 - 0.625| + |0 - 0.6875|) / 2.
    # Bins [b/8, (b+1)/8) would put both in one bin: |0.5 - 0.65625| = 0.15625.
    fused = torch.tensor([[0.625, 0.375], [0.3125, 0.6875]], dtype=torch.float64)
    target = torch.tensor([0, 0])
    out = modality_reliability(fused[:, None, :], fused, target, n_bins=8)
    assert float(out["fused/ece"]) == 0.53125
    assert float(out["0/ece"]) == 0.53125


def test_purity_gap_flags_a_flipped_head() -> None:
    target = torch.tensor([0, 0, 1, 1, 2, 2])
    honest = torch.nn.functional.one_hot(target, 3).double() * 0.8 + 0.2 / 3
    flipped = honest[:, [1, 0, 2]]  # labels 0 and 1 renamed: wrong on 4 of 6, but informative
    out = modality_reliability(torch.stack([honest, flipped], dim=1), honest, target, modalities=["a", "b"])
    assert float(out["a/purity_gap"]) == 0.0
    assert float(out["b/acc"]) == pytest.approx(2 / 6)
    assert float(out["b/purity_gap"]) == pytest.approx(4 / 6)  # renaming would make it perfect
