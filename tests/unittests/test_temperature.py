"""Temperature scaling: the fitted temperature against a brute-force minimisation of the NLL."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_mmloss import MultiModalLoss
from lightning_mmloss.metrics import TemperatureFit, fit_temperature


def _brute_force(logits: torch.Tensor, target: torch.Tensor) -> float:
    temps = torch.linspace(math.log(1e-3), math.log(1e3), 40001, dtype=torch.float64).exp()
    x = logits.double()
    nll = torch.stack([F.cross_entropy(x / t, target) for t in temps[::10]])
    i = int(nll.argmin()) * 10
    fine = temps[max(i - 10, 0) : i + 11]
    return float(fine[torch.stack([F.cross_entropy(x / t, target) for t in fine]).argmin()])


# 100: the default fused logit's scale (log-evidence weight 20, floor 1e-4: gaps up to 184 nats)
# needs temperatures beyond 20 once the model fits its training split; the grid stopped at 20 and
# the fit returned 20 there, leaving the probabilities over-confident (ehh at 120 epochs: ECE 0.10)
@pytest.mark.parametrize("scale", [0.01, 0.3, 1.0, 4.0, 100.0, 400.0])
def test_fit_matches_brute_force(scale: float) -> None:
    g = torch.Generator().manual_seed(1)
    target = torch.randint(0, 5, (3000,), generator=g)
    logits = scale * (torch.randn(3000, 5, generator=g) + 1.5 * F.one_hot(target, 5))
    assert fit_temperature(logits, target) == pytest.approx(_brute_force(logits, target), rel=2e-3)


def test_the_grids_edges() -> None:
    g = torch.Generator().manual_seed(3)
    target = torch.randint(0, 3, (500,), generator=g)
    noise = torch.randn(500, 3, generator=g)
    # a model sure and always wrong: the NLL falls all the way to the top edge, where the
    # probabilities are as good as uniform (the right answer), without a warning
    wrong = 30.0 * F.one_hot((target + 1) % 3, 3).double()
    t = fit_temperature(wrong, target)
    assert t == pytest.approx(1e3)
    assert (F.softmax(wrong / t, dim=1) - 1 / 3).abs().max() < 0.02
    # logits far too small (here a million times): the bottom edge, named
    with pytest.warns(UserWarning, match=r"bottom of its grid \(0\.001\).*under-confident"):
        assert fit_temperature(1e-6 * (noise + 3 * F.one_hot(target, 3)), target) == pytest.approx(1e-3)


def test_the_update_does_not_depend_on_its_chunking(monkeypatch: pytest.MonkeyPatch) -> None:
    import lightning_mmloss.metrics.temperature as temperature

    g = torch.Generator().manual_seed(4)
    target = torch.randint(0, 7, (300,), generator=g)
    logits = 4 * torch.randn(300, 7, generator=g)
    whole = temperature._temperature_update(logits, target, -100)
    monkeypatch.setattr(temperature, "_MAX_ELEMENTS", 1)  # one grid temperature per chunk
    one_by_one = temperature._temperature_update(logits, target, -100)
    torch.testing.assert_close(one_by_one, whole, rtol=1e-12, atol=0)


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


def test_loss_temperature_scales_analytics_not_training_loss() -> None:
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


def test_state_dict_keeps_temperature_and_loads_old_checkpoints() -> None:
    crit = MultiModalLoss(3, 2, 2)
    crit.temperature.fill_(1.7)
    other = MultiModalLoss(3, 2, 2)
    other.load_state_dict(crit.state_dict())
    assert float(other.temperature) == pytest.approx(1.7)
    old = {k: v for k, v in crit.state_dict().items() if k != "temperature"}
    fresh = MultiModalLoss(3, 2, 2)
    fresh.load_state_dict(old)  # a checkpoint from before calibration existed: uncalibrated
    assert float(fresh.temperature) == 1.0
    # a state without the temperature never resets a fitted one (issue 16)
    other.load_state_dict(old)
    assert float(other.temperature) == pytest.approx(1.7)
    other.load_state_dict({"weight": crit.weight.detach() * 2}, strict=False)
    assert float(other.temperature) == pytest.approx(1.7)


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
