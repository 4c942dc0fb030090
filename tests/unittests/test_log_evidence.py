"""The log-evidence term on its own (issue 26): values, floor, masks, detachment, bounds; and the decision's parts."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_mmloss import MultiModalLoss
from lightning_mmloss.functional import FusionOptions, log_evidence_logits, multimodal_fuse, multimodal_logits
from lightning_mmloss.functional.fusion import _analytics, _fuse, _spec_from


def _slow(u: torch.Tensor, w: float, floor: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """w times the mean over the present modalities of log(softmax(u_m) + floor), one instance at a time."""
    B, M, C = u.shape
    out = torch.zeros(B, C, dtype=torch.float64)
    for b in range(B):
        present = [m for m in range(M) if mask is None or bool(mask[b, m])]
        for m in present:
            p = [math.exp(float(u[b, m, c])) for c in range(C)]
            out[b] += torch.tensor([w * math.log(x / sum(p) + floor) / len(present) for x in p], dtype=torch.float64)
    return out


@pytest.mark.parametrize("floor", [1e-4, 1e-2, 1.0])
def test_values_floor_and_masks_match_a_slow_transcription(floor: float) -> None:
    g = torch.Generator().manual_seed(0)
    u = torch.randn(6, 3, 4, dtype=torch.float64, generator=g) * 6  # confident heads: the floor matters
    mask = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 0, 1], [0, 0, 0], [1, 1, 0], [0, 1, 0]], dtype=torch.bool)
    for m in (None, mask):
        got = log_evidence_logits(u, log_evidence=2.5, log_evidence_floor=floor, modality_mask=m)
        torch.testing.assert_close(got, _slow(u, 2.5, floor, m))
    # one head can push a class down by at most w / M * log(1 / floor) relative to an unsure head
    assert float(log_evidence_logits(u, log_evidence=3.0, log_evidence_floor=floor).min()) >= 3.0 * math.log(floor)
    assert bool((log_evidence_logits(u, log_evidence=2.5, modality_mask=mask)[3] == 0).all())  # none present


def test_absent_modalities_may_hold_nan_and_the_term_is_detached() -> None:
    u = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 1], [1, 0], [0, 1], [0, 0]], dtype=torch.bool)
    nan_u = u.detach().clone()
    nan_u[~mask] = float("nan")
    torch.testing.assert_close(
        log_evidence_logits(nan_u, modality_mask=mask, log_evidence=1.0),
        log_evidence_logits(u.detach(), modality_mask=mask, log_evidence=1.0),
    )
    assert not log_evidence_logits(u, log_evidence=1.0).requires_grad


def test_the_fused_logit_is_the_papers_plus_the_term() -> None:
    g = torch.Generator().manual_seed(1)
    u = torch.randn(5, 3, 4, dtype=torch.float64, generator=g)
    w = torch.rand(4 * 2, 3 * 4, dtype=torch.float64, generator=g)
    mask = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 0, 1], [1, 1, 0], [0, 1, 0]], dtype=torch.bool)
    with_term = multimodal_logits(u, w, modality_mask=mask, log_evidence=7.0, log_evidence_floor=1e-3)
    paper = multimodal_logits(u, w, modality_mask=mask, log_evidence=0.0)
    term = log_evidence_logits(u, modality_mask=mask, log_evidence=7.0, log_evidence_floor=1e-3)
    torch.testing.assert_close(with_term, paper + term)
    out = multimodal_fuse(u, w, modality_mask=mask, log_evidence=7.0, log_evidence_floor=1e-3)
    torch.testing.assert_close(out.attention_logits, paper)
    torch.testing.assert_close(out.evidence_logits, term)
    torch.testing.assert_close(out.modality_logits.sum(dim=1), out.logits)
    assert bool((out.modality_logits[~mask] == 0).all())


def test_modality_weights_are_shares_of_the_deciding_margin() -> None:
    """A head that is sure of the predicted class carries the margin; one that argues for the runner-up gets 0."""
    u = torch.tensor([[[6.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]], dtype=torch.float64)
    w = torch.rand(3 * 2, 3 * 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    out = multimodal_fuse(u, w)
    assert int(out.preds) == 0
    parts = out.modality_logits[0]
    top2 = out.logits[0].topk(2).indices
    d = (parts[:, top2[0]] - parts[:, top2[1]]).clamp_min(0)
    torch.testing.assert_close(out.modality_weights[0], d / d.sum())
    assert float(out.modality_weights[0, 1]) == 0.0  # modality 1 argues for class 1, the runner-up
    assert int(out.modality_weights[0].argmax()) == 0


def test_a_fitted_decision_weight_enters_logits_parts_and_weights_alike() -> None:
    g = torch.Generator().manual_seed(3)
    u = torch.randn(6, 2, 3, dtype=torch.float64, generator=g)
    weight = torch.rand(3 * 2, 2 * 3, dtype=torch.float64, generator=g)
    spec = _spec_from(u, weight, FusionOptions(log_evidence=1.0))
    raw = _fuse(u, weight, None, spec, analytics=True)
    T, extra = torch.tensor(2.0), torch.tensor(4.0)
    out = _analytics(raw, spec, T, extra)
    same = multimodal_fuse(u, weight, log_evidence=5.0)  # 1 configured + 4 fitted, at temperature 1
    torch.testing.assert_close(out.logits * 2.0, same.logits)
    torch.testing.assert_close(out.modality_logits * 2.0, same.modality_logits)
    torch.testing.assert_close(out.evidence_logits * 2.0, same.evidence_logits)
    torch.testing.assert_close(out.attention_logits * 2.0, same.attention_logits)
    torch.testing.assert_close(out.modality_weights, same.modality_weights)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"log_evidence": 1e39}, ValueError, "at most"),
        ({"log_evidence": -1.0}, ValueError, ">= 0"),
        ({"log_evidence": float("inf")}, ValueError, "log_evidence"),
        ({"log_evidence_floor": 0.0}, ValueError, r"\(0, 1\]"),
        ({"log_evidence_floor": 1.5}, ValueError, r"\(0, 1\]"),
        ({"log_evidence_floor": float("nan")}, ValueError, "log_evidence_floor"),
        ({"log_evidence_floor": "1e-4"}, TypeError, "log_evidence_floor"),
        ({"log_evidence_floor": True}, TypeError, "log_evidence_floor"),
    ],
)
def test_bad_options_are_refused_by_name(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        FusionOptions(**kwargs)
    with pytest.raises(error, match=match):
        MultiModalLoss(3, 2, **kwargs)


def test_a_losss_spec_is_accepted_as_options() -> None:
    loss = MultiModalLoss(3, 2, 2, log_evidence=3.0, log_evidence_floor=1e-2)
    u = torch.randn(4, 2, 3)
    torch.testing.assert_close(multimodal_logits(u, loss.weight, loss.spec), loss.fused_logits(u))
    torch.testing.assert_close(log_evidence_logits(u, loss.spec), loss.fuse(u).evidence_logits)


def test_the_floor_is_saved_with_the_configuration() -> None:
    saved = MultiModalLoss(3, 2, 2, log_evidence_floor=1e-2).state_dict()
    with pytest.raises(ValueError, match="log_evidence_floor"):
        MultiModalLoss(3, 2, 2).load_state_dict(saved)


def test_a_state_from_before_the_options_were_saved_warns_with_what_it_assumes() -> None:
    """Issue 27: a state saved before log_evidence existed loaded silently into today's defaults."""
    state = MultiModalLoss(3, 2, 2).state_dict()
    old = {k: v for k, v in state["_extra_state"]["config"].items() if k not in ("log_evidence", "aux_weight")}
    state["_extra_state"] = {"config": old}
    target = MultiModalLoss(3, 2, 2)
    with pytest.warns(UserWarning, match=r"saved before \['aux_weight', 'log_evidence'\].*log_evidence=0\.0"):
        target.load_state_dict(state)
    torch.testing.assert_close(target.weight, state["weight"])  # loaded all the same
    # a saved option that differs is refused by name (aux_weight is saved since issue 27)
    with pytest.raises(ValueError, match=r"aux_weight: saved 0\.5, this loss 1\.0"):
        MultiModalLoss(3, 2, 2, aux_weight=1.0).load_state_dict(MultiModalLoss(3, 2, 2).state_dict())


@pytest.mark.parametrize("bad", [torch.randn(4, 3), torch.randn(4, 2, 1), "logits"])
def test_log_evidence_logits_checks_its_input(bad: object) -> None:
    with pytest.raises((ValueError, TypeError), match="unimodal_logits"):
        log_evidence_logits(bad)  # type: ignore[arg-type]
