"""Lightning callbacks."""

from lightning_mmloss.callbacks.subgroup_monitor import SubgroupMonitor

__all__ = ["SubgroupMonitor"]
