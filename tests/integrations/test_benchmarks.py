"""Smoke tests of the benchmark scripts: they run, their contenders agree, their counters count."""

from __future__ import annotations

import torch

from benchmarks import embedding_step, loss_speed
from benchmarks._opcount import count_ops


def test_count_ops_counts_data_touching_operators_only() -> None:
    x = torch.randn(4, 3)
    n_all, n_data = count_ops(lambda: (x.view(-1) * 2).sum(), "cpu")
    assert (n_all, n_data) == (3, 2)  # view, mul, sum: the view touches no data
    n_all, n_data = count_ops(lambda: x.t().contiguous(), "cpu")
    assert (n_all, n_data) == (2, 1)  # the contiguous() of a transpose copies: it counts
    assert count_ops(lambda: x.contiguous(), "cpu")[1] == 0  # ... of a contiguous tensor it does not


def test_loss_speed_contenders_agree_and_are_timed() -> None:
    # bench_config asserts that the loss, its autograd backend and the transcription agree
    r = loss_speed.bench_config(24, 2, 3, 4, torch.device("cpu"), repeats=2, inner=1)
    for name in ("mmloss", "no-valid", "+aux", "+aux-le0", "autograd", "plain", "ce-sum"):
        assert r["median"][name] > 0 and r["ratio"][name] > 0
    assert r["ratio"]["plain"] == 1.0 and r["le_cost"] > 0
    assert 0 < r["ops"]["ce-sum"] < r["ops"]["mmloss"] < r["ops"]["+aux"]
    assert r["saved"]["mmloss"] > 0


def test_embedding_step_runs(capsys) -> None:
    embedding_step.main(["--steps", "1", "--repeats", "1", "--classes", "3"])
    out = capsys.readouterr().out
    assert "late" in out and "mm-novalid" in out
