"""Plain per-instance references for the metrics (loops, no vectorisation)."""

from __future__ import annotations

import math

from torch import Tensor


def ref_reliability(probs: Tensor, target: Tensor, n_bins: int = 15) -> dict[str, float]:
    """Metrics of one head over instances ``probs`` ``(N, C)``."""
    N, C = probs.shape
    preds = [int(p.argmax()) for p in probs]
    ys = [int(t) for t in target]
    acc = sum(p == y for p, y in zip(preds, ys, strict=True)) / N
    f1s = []
    for c in range(C):
        tp = sum(p == c and y == c for p, y in zip(preds, ys, strict=True))
        fp = sum(p == c and y != c for p, y in zip(preds, ys, strict=True))
        fn = sum(p != c and y == c for p, y in zip(preds, ys, strict=True))
        if tp + fp + fn:
            f1s.append(2 * tp / (2 * tp + fp + fn))
    ece = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        members = [i for i in range(N) if lo < float(probs[i].max()) <= hi]
        if members:
            conf = sum(float(probs[i].max()) for i in members) / len(members)
            accb = sum(preds[i] == ys[i] for i in members) / len(members)
            ece += len(members) / N * abs(accb - conf)
    brier = sum(sum((float(probs[i, c]) - (c == ys[i])) ** 2 for c in range(C)) for i in range(N)) / N
    nll = -sum(math.log(max(float(probs[i, ys[i]]), 1e-12)) for i in range(N)) / N
    # per predicted class, the count of its most frequent true class; minus the correct ones
    purity = sum(
        max(sum(p == k and y == c for p, y in zip(preds, ys, strict=True)) for c in range(C)) for k in range(C)
    )
    gap = (purity - acc * N) / N
    return {"acc": acc, "macro_f1": sum(f1s) / len(f1s), "ece": ece, "brier": brier, "nll": nll, "purity_gap": gap}


def ref_agreement(unimodal: Tensor, fused: Tensor, target: Tensor, mask: Tensor) -> dict[str, object]:
    B, M, _ = unimodal.shape
    counts = dict.fromkeys(("all_agree", "reinforce", "conflict", "all_wrong", "rescued", "harmed"), 0)
    total = 0
    same = [[0] * M for _ in range(M)]
    both = [[0] * M for _ in range(M)]
    for b in range(B):
        y = int(target[b])
        heads = [m for m in range(M) if bool(mask[b, m])]
        preds = {m: int(unimodal[b, m].argmax()) for m in heads}
        for i in heads:
            for j in heads:
                both[i][j] += 1
                same[i][j] += preds[i] == preds[j]
        if not heads:
            continue
        total += 1
        right = sum(preds[m] == y for m in heads)
        agree = len(set(preds.values())) == 1
        fused_right = int(fused[b].argmax()) == y
        counts["all_agree"] += agree
        counts["reinforce"] += right == len(heads)
        counts["conflict"] += (not agree) and right > 0
        counts["all_wrong"] += right == 0
        counts["rescued"] += fused_right and (len(heads) - right) > len(heads) / 2
        counts["harmed"] += (not fused_right) and right > len(heads) / 2
    out: dict[str, object] = {k: v / total for k, v in counts.items()}
    out["pairwise"] = [[same[i][j] / both[i][j] if both[i][j] else math.nan for j in range(M)] for i in range(M)]
    return out
