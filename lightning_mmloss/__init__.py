"""lightning-mmloss: the MultiModal loss (Moon & Lee, 2023) for PyTorch and Lightning.

``MultiModalLoss`` and ``FusionOutput`` need only torch; the Lightning pieces (mixin, callback,
metrics) are imported on first use, so that ``from lightning_mmloss import MultiModalLoss``
does not pay for importing Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

from lightning_mmloss.functional.fusion import FusionOutput
from lightning_mmloss.loss import PAPER_OPTIONS, MultiModalLoss
from lightning_mmloss.step_output import MultiModalStepOutput

__version__ = "0.1.0"

_LAZY = {
    "MultiModalLossMixin": "lightning_mmloss.mixin",
    "SubgroupMonitor": "lightning_mmloss.callbacks",
    "ModalityAgreement": "lightning_mmloss.metrics",
    "ModalityReliability": "lightning_mmloss.metrics",
    "SubgroupStatistics": "lightning_mmloss.metrics",
    "TemperatureFit": "lightning_mmloss.metrics",
}

__all__ = [
    "FusionOutput",
    "ModalityAgreement",
    "ModalityReliability",
    "MultiModalLoss",
    "MultiModalLossMixin",
    "MultiModalStepOutput",
    "PAPER_OPTIONS",
    "SubgroupMonitor",
    "SubgroupStatistics",
    "TemperatureFit",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lightning_mmloss' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
