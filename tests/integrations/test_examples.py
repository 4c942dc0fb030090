"""Every example runs end to end with tiny sizes (smoke test, in a subprocess)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(180)
def test_minimal_mixin_example(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "minimal_mixin.py"), "--epochs", "2", "--size", "400"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "first predictions:" in proc.stdout
    assert "per-modality reliability" in proc.stdout
    assert any((tmp_path / "runs" / "minimal_mixin").rglob("events.out.tfevents.*"))


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    ("script", "args", "expect"),
    [
        ("plain_torch_loss.py", ["--steps", "30"], "fused accuracy"),
        ("own_model.py", ["--seeds", "1", "--epochs", "2"], "TwoViewNet on TwoViews"),
        ("masked_modality.py", ["--epochs", "1", "--size", "300"], "val/acc"),
        ("shapley_attribution.py", ["--epochs", "2", "--preset", "tiny"], "top-Shapley modality is informative"),
        (
            "ddp_launch.py",
            ["--devices", "2", "--strategy", "ddp_spawn", "--epochs", "1", "--preset", "tiny"],
            "val/acc",
        ),
    ],
)
def test_example_runs(tmp_path: Path, script: str, args: list[str], expect: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert expect in proc.stdout
