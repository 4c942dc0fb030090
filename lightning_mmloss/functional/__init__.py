"""Functional interface: plain functions that compute the MultiModal-loss fusion.

The modules in :mod:`lightning_mmloss` hold parameters and configuration and call these.
"""

from lightning_mmloss.functional.fusion import (
    FusionOptions,
    FusionOutput,
    FusionSpec,
    log_evidence_logits,
    multimodal_fuse,
    multimodal_logits,
    normalized_proxies,
)
from lightning_mmloss.functional.losses import (
    LossOptions,
    auxiliary_unimodal_loss,
    cross_entropy_from_fused,
    multimodal_loss,
    unimodal_cross_entropy,
)
from lightning_mmloss.functional.metrics import modality_agreement, modality_reliability, subgroup_statistics
from lightning_mmloss.functional.shapley import modality_shapley, shapley_coefficients

__all__ = [
    "FusionOptions",
    "FusionOutput",
    "FusionSpec",
    "LossOptions",
    "auxiliary_unimodal_loss",
    "cross_entropy_from_fused",
    "log_evidence_logits",
    "modality_agreement",
    "modality_reliability",
    "modality_shapley",
    "multimodal_fuse",
    "multimodal_logits",
    "multimodal_loss",
    "normalized_proxies",
    "shapley_coefficients",
    "subgroup_statistics",
    "unimodal_cross_entropy",
]
