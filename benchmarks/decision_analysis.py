"""Issue 26: what decides a MultiModal-loss prediction, and who explains it (used by design_decisions.py).

For one trained ``MultiModalClassifier`` and its test split:

- the fused logit split into its parts, ``o = (s + h) + w * E`` with ``E = mean_m log(p_m + floor)``:
  how many test decisions ``s + h`` changes against the log-evidence alone, and how many of those
  for the better;
- the fused logit split by modality, ``o = sum_m o_m`` (exact: ``h`` and ``E`` are sums over the
  modalities, and so is the pooled similarity ``s = sum_k q_ck S_ck`` with ``S = sum_m zhat_m . P_m``),
  and the modality weights from each modality's share of the margin of the predicted class over the
  runner-up (``attr_margin``), beside the attention weights of today's definition;
- for data without ground truth: the mean weight and top-weighted share per modality;
- with ``fit=True``, a second row: the log-evidence's decision weight and the temperature fitted on
  the validation split by NLL (``softmax(alpha (s + h) + beta E)``, convex in ``alpha, beta``), by
  the library's :func:`~lightning_mmloss.metrics.fit_decision` (the default's calibration since issue 26;
  the rows of ``results/design/issue26_*.csv`` came from an L-BFGS fit of the same objective).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from lightning_mmloss.functional import log_evidence_logits, modality_reliability
from lightning_mmloss.functional.fusion import _margin_shares
from lightning_mmloss.metrics import fit_decision


def _parts(model: Any, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor, Any]:
    """``(s + h, E, per-modality (B, M, C) of s + h + w E, fusion)`` of the raw (uncalibrated) fused logit.

    Read off the library's ``FusionOutput`` (``attention_logits``, ``evidence_logits``,
    ``modality_logits``), times the temperature; ``E`` unweighted.
    """
    loss = model.mm_loss
    spec = loss.spec
    with torch.no_grad():
        u = model.stacked_logits(batch).float()
        out = loss.fuse(u)
        t = loss.temperature
        base = out.attention_logits * t
        E = log_evidence_logits(u, log_evidence=1.0, log_evidence_floor=spec.log_evidence_floor)
        per_mod = out.modality_logits * t
    return base, E, per_mod, out


def _attr(weights: Tensor, correct: Tensor, informative: Tensor) -> float:
    idx = correct.nonzero().squeeze(1)
    if informative.all() or not len(idx):
        return math.nan
    top = weights[idx].argmax(1)
    return float(informative[idx, top].float().mean())


def _weights_summary(prefix: str, weights: Tensor, names: list[str]) -> dict[str, float]:
    row = {}
    top = weights.argmax(1)
    for i, m in enumerate(names):
        row[f"{prefix}_{m}_mean"] = float(weights[:, i].mean())
        row[f"{prefix}_{m}_top"] = float((top == i).float().mean())
    row[f"{prefix}_gap"] = float((weights.amax(1) - weights.amin(1)).mean())
    return row


def _decision_counts(pred: Tensor, E: Tensor, y: Tensor) -> dict[str, float]:
    """How many decisions ``s + h`` changes against the log-evidence ``E`` alone, for the better and the worse."""
    alone = E.argmax(1)
    changed = pred != alone
    return {
        "dec_changed": float(changed.sum()),
        "dec_better": float((changed & (pred == y)).sum()),
        "dec_worse": float((changed & (alone == y)).sum()),
        "dec_agree": float((~changed).float().mean()),
    }


def decision_rows(model: Any, dm: Any, row: dict[str, Any], fit: bool = False) -> list[dict[str, Any]]:
    """``row`` with the issue-26 columns, and with ``fit`` a second row for the fitted decision weight."""
    model.eval()
    names = list(model.modality_names)
    test = dm.splits["test"].as_batch()
    y, informative = test["target"], test["informative"]
    base, E, per_mod, out = _parts(model, test)
    # the trained weight plus the one the calibration fitted (0 unless calibrate=True fitted it)
    w = model.mm_loss.spec.log_evidence + float(model.mm_loss.evidence_weight)
    raw = base + w * E
    pred = raw.argmax(1)
    correct = pred == y
    row = dict(row)
    if w > 0:
        row.update(_decision_counts(pred, E, y))
        row["span_evidence"] = float((w * E).amax(1).sub((w * E).amin(1)).median())
        row["span_sh"] = float(base.amax(1).sub(base.amin(1)).median())
    mw = out.modality_weights  # the library's: each modality's share of the margin
    row["attr_margin"] = _attr(mw, correct, informative)
    row.update(_weights_summary("wmargin", mw, names))
    row.update(_weights_summary("wattn", out.modality_weights, names))
    rows = [row]
    if fit:
        val = dm.splits["val"].as_batch()
        vbase, vE, _, _ = _parts(model, val)
        # the library's fit (the mixin's calibration), on s + h: the candidates fitted train at log_evidence=0
        temperature, wfit = fit_decision(vbase, vE, val["target"])
        alpha, beta = 1 / temperature, wfit / temperature
        logits = alpha * base + beta * E
        fused = logits.softmax(-1)
        rel = modality_reliability(out.unimodal_probs, fused, y, modalities=names)
        frow = dict(row)
        for key in [k for k in frow if k.startswith(("dec_", "span_", "attr_", "wmargin_", "wattn_"))]:
            del frow[key]
        frow.update(candidate=row["candidate"] + "+fit", test_acc=float(rel["fused/acc"]))
        frow.update(test_ece=float(rel["fused/ece"]), fit_log_evidence=wfit, fit_alpha=alpha, fit_beta=beta)
        frow.pop("temperature", None)
        fpred = logits.argmax(1)
        fcorrect = fpred == y
        if wfit > 0:
            frow.update(_decision_counts(fpred, E, y))
        M = per_mod.shape[1]
        logp = (out.unimodal_probs + model.mm_loss.spec.log_evidence_floor).log()
        fper = per_mod - (w / M) * logp + (wfit / M) * logp
        fmw = _margin_shares(fper, base + wfit * E, None)
        frow["attr_margin"] = _attr(fmw, fcorrect, informative)
        frow.update(_weights_summary("wmargin", fmw, names))
        rows.append(frow)
    return rows
