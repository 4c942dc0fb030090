"""torchmetrics ``Metric``s for multimodal models; functional twins in :mod:`lightning_mmloss.functional`."""

from lightning_mmloss.metrics.agreement import ModalityAgreement
from lightning_mmloss.metrics.calibration import DecisionFit, TemperatureFit, fit_decision, fit_temperature
from lightning_mmloss.metrics.reliability import ModalityReliability
from lightning_mmloss.metrics.subgroups import SubgroupStatistics

__all__ = [
    "DecisionFit",
    "ModalityAgreement",
    "ModalityReliability",
    "SubgroupStatistics",
    "TemperatureFit",
    "fit_decision",
    "fit_temperature",
]
