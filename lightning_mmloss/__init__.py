"""lightning-mmloss: the MultiModal loss (Moon & Lee, 2023) for PyTorch and Lightning."""

from lightning_mmloss.callbacks import SubgroupMonitor
from lightning_mmloss.functional.fusion import FusionOutput
from lightning_mmloss.loss import MultiModalLoss
from lightning_mmloss.metrics import ModalityAgreement, ModalityReliability, SubgroupStatistics
from lightning_mmloss.mixin import MultiModalLossMixin

__version__ = "0.1.0"

__all__ = [
    "FusionOutput",
    "ModalityAgreement",
    "ModalityReliability",
    "MultiModalLoss",
    "MultiModalLossMixin",
    "SubgroupMonitor",
    "SubgroupStatistics",
    "__version__",
]
