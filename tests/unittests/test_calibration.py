"""The decision's calibration: fitted temperature and evidence weight against brute-force minimisations of the NLL."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_mmloss import MultiModalLoss
from lightning_mmloss.functional import log_evidence_logits
from lightning_mmloss.metrics import DecisionFit, TemperatureFit, fit_decision, fit_temperature


def _brute_force(logits: torch.Tensor, target: torch.Tensor) -> float:
    temps = torch.linspace(math.log(1e-3), math.log(1e5), 40001, dtype=torch.float64).exp()
    x = logits.double()
    nll = torch.stack([F.cross_entropy(x / t, target) for t in temps[::10]])
    i = int(nll.argmin()) * 10
    fine = temps[max(i - 10, 0) : i + 11]
    return float(fine[torch.stack([F.cross_entropy(x / t, target) for t in fine]).argmin()])


# 100 and 400: a fused logit with a large log-evidence weight spans hundreds of nats; 1e4: the
# grid this replaced stopped at 1000 without a word, where the minimiser is about 6,600 (issue 27)
@pytest.mark.parametrize("scale", [0.01, 0.3, 1.0, 4.0, 100.0, 400.0, 1e4])
def test_fit_matches_brute_force(scale: float) -> None:
    g = torch.Generator().manual_seed(1)
    target = torch.randint(0, 5, (3000,), generator=g)
    logits = scale * (torch.randn(3000, 5, generator=g) + 1.5 * F.one_hot(target, 5))
    assert fit_temperature(logits, target) == pytest.approx(_brute_force(logits, target), rel=2e-3)


def test_the_bounds_and_what_they_mean() -> None:
    g = torch.Generator().manual_seed(3)
    target = torch.randint(0, 3, (500,), generator=g)
    noise = torch.randn(500, 3, generator=g)
    # a model sure and always wrong: the NLL falls all the way to the upper bound, where the
    # probabilities are uniform (the right answer, as for a model in its first epochs: no warning)
    wrong = 30.0 * F.one_hot((target + 1) % 3, 3).double()
    t = fit_temperature(wrong, target)
    assert t == pytest.approx(1e6)
    assert (F.softmax(wrong / t, dim=1) - 1 / 3).abs().max() < 1e-4
    # logits far too small (here 1e-9 times): the lower bound, named
    with pytest.warns(UserWarning, match=r"lower bound \(1e-06\).*under-confident"):
        assert fit_temperature(1e-9 * (noise + 3 * F.one_hot(target, 3)), target) == pytest.approx(1e-6)
    # separable held-out data: no temperature is best, and the warning says that (issue 27: it
    # used to call them under-confident, the opposite of the truth)
    separable = noise.abs().clamp_max(0.5) + 2 * F.one_hot(target, 3)
    with pytest.warns(UserWarning, match="separated by the logits") as record:
        t = fit_temperature(separable, target)
    assert not any("under-confident" in str(w.message) for w in record)
    assert F.cross_entropy(separable / t, target) < 1e-6  # sharpened until the likelihood stops changing


def _nll(logits: torch.Tensor, evidence: torch.Tensor, target: torch.Tensor, t: float, w: float) -> float:
    return float(F.cross_entropy((logits.double() + w * evidence.double()) / t, target))


def _brute_force_decision(logits: torch.Tensor, evidence: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """A grid over ``(a, b) = (1 / T, w / T)``, refined twice around its best point."""
    x, e = logits.double(), evidence.double()
    a_lo, a_hi, b_lo, b_hi = 1e-3, 10.0, 0.0, 10.0
    for _ in range(3):
        a = torch.linspace(a_lo, a_hi, 81, dtype=torch.float64)
        b = torch.linspace(b_lo, b_hi, 81, dtype=torch.float64)
        z = a[:, None, None, None] * x + b[None, :, None, None] * e  # (A, B, N, C)
        nll = (torch.logsumexp(z, -1) - z.gather(-1, target.expand(81, 81, -1)[..., None]).squeeze(-1)).mean(-1)
        i, j = divmod(int(nll.argmin()), 81)
        da, db = (a_hi - a_lo) / 80, (b_hi - b_lo) / 80
        a_best, b_best = float(a[i]), float(b[j])
        a_lo, a_hi = max(a_best - 2 * da, 1e-6), a_best + 2 * da
        b_lo, b_hi = max(b_best - 2 * db, 0.0), b_best + 2 * db
    return 1 / a_best, b_best / a_best


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_decision_matches_brute_force(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, 4, (600,), generator=g)
    signal = F.one_hot(target, 4).double()
    logits = signal + 2 * torch.randn(600, 4, generator=g, dtype=torch.float64)
    evidence = (2 * signal + torch.randn(600, 4, generator=g, dtype=torch.float64)).log_softmax(dim=1)
    t, w = fit_decision(logits, evidence, target)
    t_ref, w_ref = _brute_force_decision(logits, evidence, target)
    assert w > 0 and t == pytest.approx(t_ref, rel=0.02) and w == pytest.approx(w_ref, rel=0.02)
    assert _nll(logits, evidence, target, t, w) <= _nll(logits, evidence, target, t_ref, w_ref) + 1e-9


def test_fit_decision_without_useful_evidence_is_the_temperature_fit() -> None:
    g = torch.Generator().manual_seed(5)
    target = torch.randint(0, 3, (800,), generator=g)
    logits = 3 * torch.randn(800, 3, generator=g) + 2 * F.one_hot(target, 3)
    # evidence that points away from the target: its best weight is the bound 0
    against = -2.0 * F.one_hot(target, 3).double()
    t, w = fit_decision(logits, against, target)
    assert w == 0.0 and t == pytest.approx(fit_temperature(logits, target), rel=1e-9)
    # a per-instance constant changes no softmax: nor the fit
    shifted = fit_decision(logits + torch.randn(800, 1, generator=g), against + 7.0, target)
    assert shifted == pytest.approx((t, w), rel=1e-9, abs=1e-12)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(0.05, 50.0), strength=st.floats(0.0, 3.0))
def test_fit_decision_is_a_minimum(seed: int, scale: float, strength: float) -> None:
    """No nearby feasible point has a lower NLL than the fitted one (the problem is convex)."""
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, 3, (200,), generator=g)
    signal = F.one_hot(target, 3).double()
    logits = scale * (signal + torch.randn(200, 3, generator=g, dtype=torch.float64))
    evidence = (strength * signal + torch.randn(200, 3, generator=g, dtype=torch.float64)).log_softmax(dim=1)
    if bool(((logits + evidence).argmax(1) == target).all()):
        return  # separable: no minimiser to test
    t, w = fit_decision(logits, evidence, target)
    best = _nll(logits, evidence, target, t, w)
    a, b = 1 / t, w / t
    for da, db in ((1.01, 0), (0.99, 0), (1, 1.01), (1, 0.99), (1, 0), (1.01, 1.01)):
        nb = b * db if b > 0 else (0.01 * a if db > 1 else 0.0)
        assert best <= _nll(logits, evidence, target, 1 / (a * da), nb / (a * da)) + 1e-12


def test_metric_over_batches_equals_function_and_skips_ignored() -> None:
    g = torch.Generator().manual_seed(2)
    target = torch.randint(0, 3, (900,), generator=g)
    logits = 3 * torch.randn(900, 3, generator=g) + 2 * F.one_hot(target, 3)
    noisy = target.clone()
    noisy[::7] = -1
    fit = TemperatureFit(ignore_index=-1)
    for i in range(0, 900, 128):
        fit.update(logits[i : i + 128], noisy[i : i + 128])
    keep = noisy != -1
    assert float(fit.compute()) == pytest.approx(fit_temperature(logits[keep], target[keep]), rel=1e-9)
    empty = TemperatureFit()
    empty.update(logits[:3], torch.full((3,), -100))  # only ignored targets: leave the probabilities alone
    assert float(empty.compute()) == 1.0


def test_metric_with_evidence_equals_function_and_syncs_nothing_it_should_not() -> None:
    g = torch.Generator().manual_seed(6)
    target = torch.randint(0, 3, (700,), generator=g)
    signal = F.one_hot(target, 3).float()
    logits, evidence = signal + 2 * torch.randn(700, 3, generator=g), (2 * signal + torch.randn(700, 3, generator=g))
    noisy = target.clone()
    noisy[::5] = -100
    fit = DecisionFit()
    for i in range(0, 700, 64):
        fit.update(logits[i : i + 64], noisy[i : i + 64], evidence[i : i + 64])
    keep = noisy != -100
    got = fit.compute()
    t, w = fit_decision(logits[keep], evidence[keep], target[keep])
    assert float(got["temperature"]) == pytest.approx(t, rel=1e-9) and float(got["evidence_weight"]) == pytest.approx(w)
    assert fit.num_samples == int(keep.sum())


def test_loss_calibration_reaches_every_decision_but_not_the_training_loss() -> None:
    torch.manual_seed(0)
    crit = MultiModalLoss(4, 2, 3)
    u = torch.randn(8, 2, 4)
    y = torch.randint(0, 4, (8,))
    before_loss, before = crit(u, y), crit.fuse(u)
    crit.temperature.fill_(2.0)
    after = crit.fuse(u)
    torch.testing.assert_close(after.logits, before.logits / 2)
    torch.testing.assert_close(crit.fused_logits(u), before.logits / 2)
    assert torch.equal(after.preds, before.preds)
    torch.testing.assert_close(crit(u, y), before_loss)  # training loss: raw fused logits
    fusion, loss = crit.fuse_with_loss(u, y)
    torch.testing.assert_close(fusion.logits, before.logits / 2)
    torch.testing.assert_close(loss, before_loss)
    # Shapley values explain the calibrated probabilities: efficiency with v(all) at temperature 2
    phi = crit.shapley(u)
    torch.testing.assert_close(phi.sum(dim=1), after.probs.max(dim=1).values - 1 / 4, atol=1e-6, rtol=0)
    # the evidence weight: (o + w E) / T everywhere a decision is made, the same as a loss built with it
    crit.evidence_weight.fill_(3.0)
    evidence = log_evidence_logits(u, log_evidence=1.0)
    decided = (before.logits + 3.0 * evidence) / 2
    same = MultiModalLoss(4, 2, 3, log_evidence=3.0)
    same.load_state_dict({"weight": crit.weight.detach()}, strict=False)
    for got in (crit.fuse(u).logits, crit.fused_logits(u), crit.fuse_with_loss(u, y)[0].logits):
        torch.testing.assert_close(got, decided)
    torch.testing.assert_close(same.fuse(u).logits / 2, decided)
    fused = crit.fuse(u)
    torch.testing.assert_close(fused.modality_logits.sum(dim=1), fused.logits)
    torch.testing.assert_close(fused.attention_logits + fused.evidence_logits, fused.logits)
    phi = crit.shapley(u)  # v(all) and the explained class are the decision's
    torch.testing.assert_close(phi.sum(dim=1), fused.probs.max(dim=1).values - 1 / 4, atol=1e-6, rtol=0)
    torch.testing.assert_close(crit(u, y), before_loss)


def test_state_dict_keeps_temperature_and_loads_old_checkpoints() -> None:
    crit = MultiModalLoss(3, 2, 2)
    crit.temperature.fill_(1.7)
    crit.evidence_weight.fill_(4.0)
    other = MultiModalLoss(3, 2, 2)
    other.load_state_dict(crit.state_dict())
    assert float(other.temperature) == pytest.approx(1.7) and float(other.evidence_weight) == 4.0
    old = {k: v for k, v in crit.state_dict().items() if k not in ("temperature", "evidence_weight")}
    fresh = MultiModalLoss(3, 2, 2)
    fresh.load_state_dict(old)  # a checkpoint from before calibration existed: uncalibrated
    assert float(fresh.temperature) == 1.0 and float(fresh.evidence_weight) == 0.0
    # a state without them never resets fitted ones (issue 16)
    other.load_state_dict(old)
    assert float(other.temperature) == pytest.approx(1.7) and float(other.evidence_weight) == 4.0
    other.load_state_dict({"weight": crit.weight.detach() * 2}, strict=False)
    assert float(other.temperature) == pytest.approx(1.7) and float(other.evidence_weight) == 4.0
    other.reset_parameters()
    assert float(other.temperature) == 1.0 and float(other.evidence_weight) == 0.0


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_load_refuses_an_evidence_weight_that_is_negative_or_not_finite(bad: float) -> None:
    crit = MultiModalLoss(3, 2, 2)
    crit.evidence_weight.fill_(2.0)
    state = crit.state_dict()
    state["evidence_weight"] = torch.tensor(bad)
    with pytest.raises(ValueError, match="evidence_weight"):
        crit.load_state_dict(state)
    assert float(crit.evidence_weight) == 2.0


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_load_refuses_a_temperature_that_is_not_positive_and_finite(bad: float) -> None:
    crit = MultiModalLoss(3, 2, 2)
    crit.temperature.fill_(1.7)
    state = crit.state_dict()
    state["temperature"] = torch.tensor(bad)
    with pytest.raises(ValueError, match="temperature"):
        crit.load_state_dict(state)
    assert float(crit.temperature) == pytest.approx(1.7)  # refused before anything was copied


@pytest.mark.parametrize(
    ("logits", "target", "error", "match"),
    [
        (torch.tensor([[float("inf"), 0.0], [0.0, 1.0]]), torch.tensor([0, 1]), ValueError, "finite"),
        (torch.tensor([[float("nan"), 0.0], [0.0, 1.0]]), torch.tensor([0, 1]), ValueError, "finite"),
        (torch.zeros(2, 2), torch.tensor([0.0, 1.0]), TypeError, "integer"),
        (torch.zeros(2, 2), torch.tensor([0, 2]), ValueError, r"\[0, 1\]"),
        (torch.zeros(2, 2), torch.tensor([0, 1, 1]), ValueError, "shape"),
        (torch.zeros(2), torch.tensor([0, 1]), ValueError, r"\(N, C\)"),
    ],
)
def test_fit_temperature_refuses_bad_input(logits, target, error, match) -> None:
    """Issue 17 item 9: inf logits gave T=0.05, float targets were truncated, the rest were index errors."""
    with pytest.raises(error, match=match):
        fit_temperature(logits, target)
    with pytest.raises(error, match=match):
        TemperatureFit().update(logits, target)
    with pytest.raises(error, match=match):
        fit_decision(logits, torch.zeros_like(logits) if logits.dim() == 2 else torch.zeros(2, 2), target)


@pytest.mark.parametrize(
    ("evidence", "match"),
    [
        (None, "evidence"),
        (torch.zeros(2, 3), r"`evidence`.*\(2, 2\)"),
        (torch.zeros(2, 2, dtype=torch.long), r"`evidence` to be a floating"),
        (torch.tensor([[float("nan"), 0.0], [0.0, 0.0]]), r"`evidence` to be finite"),
        ([[0.0, 0.0], [0.0, 0.0]], r"`evidence`.*list"),
    ],
)
def test_fit_decision_refuses_bad_evidence(evidence, match) -> None:
    logits, target = torch.zeros(2, 2), torch.tensor([0, 1])
    with pytest.raises((ValueError, TypeError), match=match):
        fit_decision(logits, evidence, target)
    with pytest.raises((ValueError, TypeError), match=match):
        DecisionFit().update(logits, target, evidence)


def test_one_class_logits_are_refused() -> None:
    with pytest.raises(ValueError, match="C >= 2"):
        fit_temperature(torch.zeros(3, 1), torch.zeros(3, dtype=torch.long))


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_a_baselines_state_with_a_bad_temperature_is_refused(bad: float) -> None:
    """Issue 27: the baselines accepted a temperature of 0, -1, NaN or inf (the mm loss refused them)."""
    from lightning_mmloss.baselines import BaselineFusion

    fusion = BaselineFusion("late", 3, 2)
    fusion.temperature.fill_(1.7)
    state = fusion.state_dict()
    state["temperature"] = torch.tensor(bad)
    with pytest.raises(ValueError, match="temperature"):
        fusion.load_state_dict(state)
    assert float(fusion.temperature) == pytest.approx(1.7)
    fusion.load_state_dict({}, strict=False)  # a state without it keeps the fitted one
    assert float(fusion.temperature) == pytest.approx(1.7)
