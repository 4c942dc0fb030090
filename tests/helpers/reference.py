"""A slow, obviously-correct transcription of ``shared/design/loss.md``, one instance at a time.

No batching tricks, no layout changes: loops over instances, proxies, classes and proxy
indices, written to be read next to the formulation. Gradients come from autograd.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

EPS = 1e-12


def _l2_normalize(v: Tensor) -> Tensor:
    return v / torch.clamp(torch.sqrt((v * v).sum()), min=EPS)


def _softmax(v: Tensor) -> Tensor:
    e = torch.exp(v - v.max())
    return e / e.sum()


def reference_fuse(
    u: Tensor,
    weight: Tensor,
    K: int,
    gamma: float = 0.1,
    pooling: str = "reference",
    attention: bool = True,
    normalize: bool = True,
    activation: str = "softmax",
    mask: Tensor | None = None,
    log_evidence: float = 0.0,
    floor: float = 1e-4,
) -> dict[str, Tensor]:
    """Fuse a batch ``u`` ``(B, M, C)`` instance by instance; returns logits and analytics.

    ``log_evidence`` (0, the default here: the paper's fused logit): plus that weight times the
    mean over the present modalities of ``log(p_m + floor)`` (a constant: detached).

    The modality weights: each modality's part of the fused logit (its block's share of every
    similarity, its attended score, its share of the log-evidence), and its share of the margin
    of the predicted class over the runner-up, negatives counted as 0.
    """
    B, M, C = u.shape
    proxies = []
    for j in range(C * K):
        w = torch.clamp(weight[j], min=0)
        proxies.append(_l2_normalize(w) if normalize else w)
    P = torch.stack(proxies)  # (C*K, M*C), row c*K + k
    out: dict[str, list[Tensor]] = {
        k: [] for k in ("logits", "similarity", "attention", "weights", "probs", "subgroup", "parts")
    }
    for b in range(B):
        blocks = []
        for m in range(M):
            pm = _softmax(u[b, m]) if activation == "softmax" else u[b, m]
            if mask is not None and not bool(mask[b, m]):
                pm = torch.zeros_like(pm)
            blocks.append(pm)
        z = torch.cat(blocks)
        zn = _l2_normalize(z)
        S = torch.stack([(zn * P[j]).sum() for j in range(C * K)])
        A = _softmax(S / gamma)
        a = sum(A[j] * P[j] for j in range(C * K))
        h = []
        for c in range(C):
            total = 0.0
            for m in range(M):
                boost = (1 + a[m * C + c]) if attention else 1.0
                total = total + boost * blocks[m][c]
            h.append(total)
        Sck = S.view(C, K)
        q = torch.zeros(C, K, dtype=u.dtype)
        if pooling == "reference":
            q = torch.stack([_softmax(Sck[:, k] / gamma) for k in range(K)], dim=1)
        else:
            q = torch.stack([_softmax(Sck[c, :] / gamma) for c in range(C)], dim=0)
        s = [sum(q[c, k] * Sck[c, k] for k in range(K)) for c in range(C)]
        o = torch.stack([s[c] + h[c] for c in range(C)])
        present = [m for m in range(M) if mask is None or bool(mask[b, m])]
        logs = {}
        if log_evidence:
            # a fixed offset: no gradient through it
            for m in present:
                logs[m] = torch.log((_softmax(u[b, m]) if activation == "softmax" else u[b, m]) + floor).detach()
            o = o + log_evidence * (sum(logs.values()) / len(logs) if logs else torch.zeros_like(o))
        # the fused logit by modality: o[c] == sum over m of part[m][c]
        part = torch.zeros(M, C, dtype=u.dtype)
        for m in range(M):
            for c in range(C):
                sim_m = sum(q[c, k] * sum(zn[m * C + d] * P[c * K + k][m * C + d] for d in range(C)) for k in range(K))
                boost = (1 + a[m * C + c]) if attention else 1.0
                part[m, c] = sim_m + boost * blocks[m][c]
                if m in logs:
                    part[m, c] = part[m, c] + log_evidence * logs[m][c] / len(logs)
        order = torch.argsort(o.detach(), descending=True, stable=True)
        c_hat, c_2 = int(order[0]), int(order[1])
        d = torch.stack([torch.clamp(part[m, c_hat] - part[m, c_2], min=0.0) for m in range(M)]).detach()
        if float(d.sum()) > 0:
            weights = d / d.sum()
        else:  # a tie: the present modalities share it
            weights = torch.tensor([1.0 / len(present) if m in present else 0.0 for m in range(M)], dtype=u.dtype)
        out["parts"].append(part.detach())
        out["logits"].append(o)
        out["similarity"].append(Sck)
        out["attention"].append(A.view(C, K))
        out["weights"].append(weights)
        out["probs"].append(torch.stack(blocks))
        out["subgroup"].append(S.argmax())
    return {k: torch.stack(v) for k, v in out.items()}


def reference_cross_entropy(
    logits: Tensor,
    target: Tensor,
    class_weight: Tensor | None = None,
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
) -> Tensor:
    """Mean cross-entropy, written out per instance (matches ``F.cross_entropy`` semantics)."""
    B, C = logits.shape
    w = class_weight if class_weight is not None else torch.ones(C, dtype=logits.dtype)
    num = logits.new_zeros(())
    den = logits.new_zeros(())
    smooth = logits.new_zeros(())
    for b in range(B):
        y = int(target[b])
        if y == ignore_index:
            continue
        logp = logits[b] - torch.logsumexp(logits[b], dim=0)
        num = num - w[y] * logp[y]
        den = den + w[y]
        smooth = smooth - (w * logp).sum() / C
    return ((1 - label_smoothing) * num + label_smoothing * smooth) / den


def reference_shapley(value, M: int) -> list[float]:
    """Shapley values by the permutation definition: average marginal contribution over all orders."""
    phi = [0.0] * M
    orders = list(itertools.permutations(range(M)))
    for order in orders:
        present: set[int] = set()
        for m in order:
            before = value(frozenset(present))
            present.add(m)
            phi[m] += value(frozenset(present)) - before
    return [x / math.factorial(M) for x in phi]


def reference_total_loss(
    logits: Tensor,
    u: Tensor,
    target: Tensor,
    aux_weight: float,
    mask: Tensor | None = None,
    class_weight: Tensor | None = None,
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> Tensor:
    """Fused cross-entropy plus ``aux_weight`` times each instance's mean unimodal cross-entropy.

    Written per instance: term_b = w_y * (CE_smooth(o_b, y) + aux_weight * mean over present m of
    CE_smooth(u_bm, y)); "mean" divides the sum of terms by the sum of w_y over valid instances.
    """
    B, M, C = u.shape
    w = class_weight if class_weight is not None else torch.ones(C, dtype=logits.dtype)

    def ce(row: Tensor, y: int) -> Tensor:
        logp = row - torch.logsumexp(row, dim=0)
        # label smoothing as torch defines it: (1 - eps) * nll + eps * mean over classes of -logp
        # (class weights weigh each class's -logp in the smoothing term; applied outside here)
        return -(1 - label_smoothing) * logp[y], -logp

    terms, den = [], logits.new_zeros(())
    for b in range(B):
        y = int(target[b])
        if y == ignore_index:
            terms.append(logits.new_zeros(()))
            continue
        nll, neg = ce(logits[b], y)
        fused = w[y] * nll + label_smoothing * (w * neg).sum() / C
        aux_terms = []
        for m in range(M):
            if mask is not None and not bool(mask[b, m]):
                continue
            nll_m, neg_m = ce(u[b, m], y)
            aux_terms.append(nll_m + label_smoothing * neg_m.sum() / C)
        aux = sum(aux_terms) / len(aux_terms) if aux_terms else logits.new_zeros(())
        terms.append(fused + aux_weight * w[y] * aux)
        den = den + w[y]
    per = torch.stack(terms)
    if reduction == "none":
        return per
    if reduction == "sum":
        return per.sum()
    return per.sum() / den
