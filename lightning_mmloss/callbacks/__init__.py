"""Lightning callbacks."""

from lightning_mmloss.callbacks.prediction_writer import PredictionWriter
from lightning_mmloss.callbacks.robustness import RobustnessCallback
from lightning_mmloss.callbacks.subgroup_monitor import SubgroupMonitor

__all__ = ["PredictionWriter", "RobustnessCallback", "SubgroupMonitor"]
