"""lightning-mmloss: the MultiModal loss (Moon & Lee, 2023) for PyTorch and Lightning.

``MultiModalLoss`` and ``FusionOutput`` need only torch; the Lightning pieces (mixin, callbacks,
metrics) need Lightning. Every name is imported on first use, so that
``from lightning_mmloss import MultiModalLoss`` does not pay for importing Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Everything is imported on first use: `import lightning_mmloss` (and the console script's
# --help/--version) costs no torch import; `from lightning_mmloss import MultiModalLoss` imports
# torch but not Lightning.
_LAZY = {
    "FusionOutput": "lightning_mmloss.functional.fusion",
    "MultiModalLoss": "lightning_mmloss.loss",
    "PAPER_OPTIONS": "lightning_mmloss.loss",
    "MultiModalStepOutput": "lightning_mmloss.step_output",
    "MultiModalLossMixin": "lightning_mmloss.mixin",
    "PredictionWriter": "lightning_mmloss.callbacks",
    "RobustnessCallback": "lightning_mmloss.callbacks",
    "RobustnessReport": "lightning_mmloss.robustness",
    "robustness_report": "lightning_mmloss.robustness",
    "SubgroupMonitor": "lightning_mmloss.callbacks",
    "ModalityAgreement": "lightning_mmloss.metrics",
    "ModalityReliability": "lightning_mmloss.metrics",
    "SubgroupStatistics": "lightning_mmloss.metrics",
    "TemperatureFit": "lightning_mmloss.metrics",
    "DecisionFit": "lightning_mmloss.metrics",
}

__all__ = [
    "DecisionFit",
    "FusionOutput",
    "ModalityAgreement",
    "ModalityReliability",
    "MultiModalLoss",
    "MultiModalLossMixin",
    "MultiModalStepOutput",
    "PAPER_OPTIONS",
    "PredictionWriter",
    "RobustnessCallback",
    "RobustnessReport",
    "SubgroupMonitor",
    "SubgroupStatistics",
    "TemperatureFit",
    "__version__",
    "robustness_report",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lightning_mmloss' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
