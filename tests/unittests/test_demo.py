from lightning_mmloss.experiments.demo import main


def test_demo_runs_and_learns() -> None:
    acc = main(["--epochs", "5", "--train-size", "600", "--test-size", "300"])
    assert set(acc) == {"fused", "left", "noise", "right"}
    assert acc["fused"] > 0.4  # 4 classes: chance is 0.25
