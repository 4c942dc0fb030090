"""Issue 26's tables from design_decisions.py rows: the candidates against late fusion, and what ``s + h`` decides.

    python benchmarks/decision_tables.py benchmarks/results/design/issue26_*.csv

Per scenario and candidate (5 seeds): fused accuracy, its paired per-seed difference to late fusion
in points with the standard error, fused ECE, the worst head against the same head trained alone
(``independent``), flipped heads, and attribution (``attr_weight``: the share of correctly
classified instances whose top-weighted modality is informative, where that is known). Then, for the
candidates with a log-evidence term: how many test decisions ``s + h`` changes against the term
alone, and how many of those for the better and for the worse.
"""

from __future__ import annotations

import csv
import math
import statistics
import sys
from collections import defaultdict


def _load(paths: list[str]) -> list[dict]:
    rows = []
    for path in paths:
        with open(path) as f:
            for r in csv.DictReader(f):
                rows.append({k: (v if k in ("candidate", "scenario") else float(v)) for k, v in r.items() if v != ""})
    return rows


def _ms(values: list[float], digits: int = 3) -> str:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return "n/a"
    return f"{statistics.mean(vals):.{digits}f}"


def _diff(values: list[float]) -> str:
    if len(values) < 2:
        return "n/a"
    se = statistics.stdev(values) / math.sqrt(len(values))
    return f"{statistics.mean(values):+.2f} ± {se:.2f}"


def tables(rows: list[dict]) -> str:
    by: dict[tuple[str, str], dict[int, dict]] = defaultdict(dict)
    for r in rows:
        by[(r["scenario"], r["candidate"])][int(r["seed"])] = r
    out = []
    for scenario in dict.fromkeys(r["scenario"] for r in rows):
        late, alone = by.get((scenario, "late"), {}), by.get((scenario, "independent"), {})
        heads = [k[:-4] for k in next(iter(late.values())) if k.endswith("_acc") and k != "test_acc"] if late else []
        head = "| candidate | acc | vs late (points) | ECE | worst head vs alone | flipped heads | attribution |"
        lines = [f"#### {scenario}", "", head, "|---|---|---|---|---|---|---|"]
        names = dict.fromkeys(r["candidate"] for r in rows if r["scenario"] == scenario)
        for cand in sorted(names, key=lambda c: (c not in ("late", "independent"), c)):
            runs = by[(scenario, cand)]
            d = [100 * (r["test_acc"] - late[s]["test_acc"]) for s, r in runs.items() if s in late]
            gap = "n/a"
            if alone and cand not in ("late", "independent"):
                means = {h: statistics.mean(r[f"{h}_acc"] for r in runs.values()) for h in heads}
                alone_means = {h: statistics.mean(r[f"{h}_acc"] for r in alone.values()) for h in heads}
                worst = min(heads, key=lambda h: means[h] - alone_means[h])
                gap = f"{worst} {100 * (means[worst] - alone_means[worst]):+.1f}"
            flips = sum(r.get("flipped_heads", 0.0) for r in runs.values())
            attr = _ms([r.get("attr_margin", math.nan) for r in runs.values()])  # the margin-share weights
            ece = _ms([r["test_ece"] for r in runs.values()])
            acc = _ms([r["test_acc"] for r in runs.values()])
            lines.append(f"| {cand} | {acc} | {_diff(d)} | {ece} | {gap} | {flips:.0f} | {attr} |")
        out.append("\n".join(lines))
    lines = [
        "#### What `s + h` decides against the log-evidence alone (test instances, summed over seeds)",
        "",
        "| scenario | candidate | agrees with the term alone | changed by s + h | for the better | for the worse |",
        "|---|---|---|---|---|---|",
    ]
    for (scenario, cand), runs in by.items():
        rs = [r for r in runs.values() if "dec_changed" in r]
        if not rs or cand.endswith("+fit"):
            continue
        agree = f"{100 * statistics.mean(r['dec_agree'] for r in rs):.2f}%"
        lines.append(
            f"| {scenario} | {cand} | {agree} | {sum(r['dec_changed'] for r in rs):.0f} | "
            f"{sum(r['dec_better'] for r in rs):.0f} | {sum(r['dec_worse'] for r in rs):.0f} |"
        )
    out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


if __name__ == "__main__":
    sys.stdout.write(tables(_load(sys.argv[1:])))
