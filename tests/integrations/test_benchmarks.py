"""Smoke tests of the benchmark scripts: they run, their contenders agree, their counters count."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks import embedding_step, loss_speed
from benchmarks._opcount import count_ops

ROOT = Path(__file__).resolve().parents[2]


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


def _grads(model: torch.nn.Module, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad()
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_design_fused_gradient_experiment_scales_only_the_heads_share_of_the_fused_term(monkeypatch) -> None:
    # issue 19's mm_fg* candidates: the fused term's gradient into the heads times b, the loss unchanged
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from benchmarks import design_decisions
    from lightning_mmloss.experiments.classifier import MultiModalClassifier

    torch.manual_seed(0)
    batch = {"a": torch.randn(16, 5), "b": torch.randn(16, 3), "target": torch.arange(16) % 3}

    def model_and_terms() -> tuple[MultiModalClassifier, torch.Tensor, torch.Tensor]:
        torch.manual_seed(1)
        model = MultiModalClassifier(["a", "b"], {"a": 5, "b": 3}, 3, hidden=[4])
        loss, _, aux = model.mm_loss(model.stacked_logits(batch), batch["target"], return_terms=True)
        return model, loss, aux

    model, loss, _ = model_and_terms()
    whole = _grads(model, loss)
    model, _, aux = model_and_terms()
    heads_only = _grads(model, model.mm_loss.aux_weight * aux)
    for b in (0.0, 0.25):
        model, _, _ = model_and_terms()
        design_decisions._scale_fused_gradient(model, b)
        patched_loss = model.mm_loss(model.stacked_logits(batch), batch["target"])
        torch.testing.assert_close(patched_loss, loss)
        got = _grads(model, patched_loss)
        for name, g in got.items():
            if name.startswith("mm_loss."):  # the proxies: the whole fused gradient
                torch.testing.assert_close(g, whole[name])
            else:  # the heads: the auxiliary part plus b times the fused part
                torch.testing.assert_close(g, heads_only[name] + b * (whole[name] - heads_only[name]))


def test_design_run_records_its_epochs(monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from benchmarks import design_decisions

    (row,) = design_decisions.run(("mm_fgdecay", "digits", 0, 1, ""))
    assert row["epochs"] == 1 and row["candidate"] == "mm_fgdecay" and 0.0 < row["test_acc"] <= 1.0
    # issue 26: what s + h changes against the log-evidence alone, counted on the test split
    assert 0 <= row["dec_better"] + row["dec_worse"] <= row["dec_changed"] <= 360 * (1 - row["dec_agree"]) + 1e-6


def test_design_run_with_a_fitted_decision_weight_and_its_tables(monkeypatch, tmp_path) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from benchmarks import decision_tables, design_decisions

    rows = design_decisions.run(("mm_le0", "cancer", 0, 2, ""))
    assert [r["candidate"] for r in rows] == ["mm_le0", "mm_le0+fit"]
    plain, fitted = rows
    assert "dec_changed" not in plain  # no log-evidence term: nothing to compare
    assert fitted["fit_alpha"] > 0 and fitted["fit_beta"] >= 0
    assert fitted["fit_log_evidence"] == pytest.approx(fitted["fit_beta"] / fitted["fit_alpha"])
    shares = [plain[f"wmargin_{m}_mean"] for m in ("mean", "se", "worst")]
    assert sum(shares) == pytest.approx(1.0, abs=1e-6)
    late = design_decisions.run(("late", "cancer", 0, 2, ""))
    path = tmp_path / "rows.csv"
    fields = list(dict.fromkeys(k for r in [*late, *rows] for k in r))
    import csv

    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows([*late, *rows])
    text = decision_tables.tables(decision_tables._load([str(path)]))
    assert "| mm_le0+fit |" in text and "| late | " in text


def test_temperature_fit_benchmark_runs(capsys) -> None:
    from benchmarks import temperature_fit

    r = temperature_fit.bench_shape(16, 3, rounds=1, repeats=1, batches=2)
    timed = {"cross-entropy", "grid update", "DecisionFit update", "TemperatureFit update", "epoch fit"}
    assert set(r) == timed | {"T rel. diff"} and min(r[k] for k in timed) > 0
    assert r["T rel. diff"] < 5e-3  # issue 28: the stored-logits fit within 0.5% of the grid's
    temperature_fit.main(["--shapes", "8x2", "--rounds", "1", "--repeats", "1", "--threads", "1"])
    assert "8 x 2" in capsys.readouterr().out
