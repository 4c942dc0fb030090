"""torchmetrics ``Metric``s for multimodal models; functional twins in :mod:`lightning_mmloss.functional`."""

from lightning_mmloss.metrics.agreement import ModalityAgreement
from lightning_mmloss.metrics.reliability import ModalityReliability
from lightning_mmloss.metrics.subgroups import SubgroupStatistics
from lightning_mmloss.metrics.temperature import TemperatureFit, fit_temperature

__all__ = ["ModalityAgreement", "ModalityReliability", "SubgroupStatistics", "TemperatureFit", "fit_temperature"]
