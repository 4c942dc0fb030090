"""The plugin core never imports the experiment harness (nor its dependency jsonargparse)."""

from __future__ import annotations

import subprocess
import sys


def test_core_imports_no_experiment_module() -> None:
    code = (
        "import sys\n"
        "import lightning_mmloss\n"
        "from lightning_mmloss import MultiModalLoss, MultiModalLossMixin, SubgroupMonitor, TemperatureFit\n"
        "import lightning_mmloss.functional, lightning_mmloss.metrics, lightning_mmloss.callbacks\n"
        "bad = sorted(m for m in sys.modules if m.startswith('lightning_mmloss.experiments') or m == 'jsonargparse')\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "", out.stdout
