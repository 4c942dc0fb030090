"""lightning-mmloss: the MultiModal loss (Moon & Lee, 2023) for PyTorch and Lightning."""

from lightning_mmloss.functional.fusion import FusionOutput
from lightning_mmloss.loss import MultiModalLoss

__version__ = "0.1.0"

__all__ = ["FusionOutput", "MultiModalLoss", "__version__"]
