"""Issue 27: the baselines check their inputs at their boundary, as the MultiModal loss does."""

from __future__ import annotations

import pytest
import torch

from lightning_mmloss.baselines import BASELINE_FUSIONS, BaselineFusion
from tests.helpers.models import ThreeHeadNet

NAN = float("nan")

# (unimodal logits, mask, error, message) for a 2-modality 3-class baseline
BAD = [
    (torch.randn(4, 5, 7), None, ValueError, r"shape \(B, M=2, C=3\).*\(4, 5, 7\)"),
    (torch.randn(4, 2), None, ValueError, r"shape \(B, M=2, C=3\)"),
    (torch.randint(0, 3, (4, 2, 3)), None, TypeError, "floating point"),
    (torch.full((4, 2, 3), NAN), None, ValueError, "finite"),
    (torch.randn(4, 2, 3), torch.ones(4, 2), TypeError, "modality_mask"),
    (torch.randn(4, 2, 3), torch.ones(4, 3, dtype=torch.bool), ValueError, "modality_mask"),
    ("logits", None, TypeError, "unimodal_logits"),
]


@pytest.mark.parametrize("fusion", BASELINE_FUSIONS)
@pytest.mark.parametrize(("u", "mask", "error", "match"), BAD)
def test_fused_logits_and_loss_refuse_bad_input(fusion: str, u, mask, error, match) -> None:
    baseline = BaselineFusion(fusion, num_classes=3, num_modalities=2)
    with pytest.raises(error, match=match):
        baseline.fused_logits(u, mask)
    with pytest.raises(error, match=match):
        baseline.loss(u, torch.zeros(4, dtype=torch.long), mask)


def test_absent_modalities_may_hold_nan_placeholders() -> None:
    u = torch.randn(4, 2, 3)
    mask = torch.tensor([[True, False]] * 4)
    u[:, 1] = NAN  # absent: never read (the FAQ allows NaN placeholders)
    for fusion in BASELINE_FUSIONS:
        logits = BaselineFusion(fusion, 3, 2).fused_logits(u, mask)
        assert bool(torch.isfinite(logits).all()), fusion


@pytest.mark.parametrize(
    ("target", "error", "match"),
    [
        (torch.tensor([0, 1, 3, 0]), ValueError, "target"),
        (torch.zeros(4), TypeError, "integer"),
        (torch.zeros(5, dtype=torch.long), ValueError, "shape"),
    ],
)
def test_loss_refuses_bad_targets(target, error, match) -> None:
    with pytest.raises(error, match=match):
        BaselineFusion("late", 3, 2).loss(torch.randn(4, 2, 3), target)


def test_fuse_unimodal_checks_for_the_baselines_too() -> None:
    model = ThreeHeadNet(fusion="late")  # 3 modalities, 3 classes
    with pytest.raises(ValueError, match=r"shape \(B, M=3, C=3\)"):
        model.fuse_unimodal(torch.randn(4, 5, 7))
    with pytest.raises(TypeError, match="modality_mask"):
        model.fuse_unimodal(torch.randn(4, 3, 3), torch.ones(4, 3))
    probs, weights = model.fuse_unimodal(torch.randn(4, 3, 3))
    assert probs.shape == (4, 3) and weights is None


def _slow_ogm(u: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, alpha: float) -> torch.Tensor:
    """OGM-GE's coefficients, one modality and one instance at a time (mean over present instances)."""
    B, M, _ = u.shape
    score = []
    for m in range(M):
        vals = [float(u[i, m].softmax(-1)[target[i]]) for i in range(B) if mask[i, m]]
        score.append(sum(vals) / max(len(vals), 1))
    out = []
    for m in range(M):
        rho = score[m] / (sum(score[j] for j in range(M) if j != m) / (M - 1))
        out.append(1 - torch.tanh(torch.tensor(alpha * rho)).item() if rho > 1 else 1.0)
    return torch.tensor(out)


def test_ogm_coefficients_read_only_present_modalities() -> None:
    """Issue 27: OGM-GE ignored modality_mask; NaN placeholders of absent modalities switched modulation off."""
    g = torch.Generator().manual_seed(0)
    u = torch.randn(12, 3, 4, generator=g)
    u[:, 0] += 3 * torch.nn.functional.one_hot(torch.arange(12) % 4, 4)  # modality 0 dominates
    target = torch.arange(12) % 4
    mask = torch.rand(12, 3, generator=g) > 0.3
    mask[:, 0] = True
    u_nan = u.clone()
    u_nan[~mask] = NAN
    ogm = BaselineFusion("ogm_ge", 4, 3, ogm_alpha=0.5)
    got = ogm._ogm_coefficients(u_nan, target, None, mask)
    torch.testing.assert_close(got, _slow_ogm(u, target, mask, 0.5))
    assert bool(torch.isfinite(got).all()) and float(got[0]) < 1.0
    full = torch.ones(12, 3, dtype=torch.bool)  # every modality present: the paper's sums' ratios
    torch.testing.assert_close(ogm._ogm_coefficients(u, target, None, None), _slow_ogm(u, target, full, 0.5))
