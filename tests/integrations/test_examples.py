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
