"""LightningDataModules: synthetic multimodal scenarios and UCI Multiple Features."""

from lightning_mmloss.experiments.data._dataset import MultiviewDataset
from lightning_mmloss.experiments.data.synthetic import SyntheticMultimodalDataModule
from lightning_mmloss.experiments.data.uci_mfeat import UCIMultipleFeaturesDataModule

__all__ = ["MultiviewDataset", "SyntheticMultimodalDataModule", "UCIMultipleFeaturesDataModule"]
