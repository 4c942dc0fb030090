"""Shared plumbing: a Metric whose state is a dict of additive tensors."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor
from torchmetrics import Metric


class _AdditiveStateMetric(Metric):
    """A metric whose states all add up across batches and processes (``dist_reduce_fx="sum"``)."""

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    def _add_states(self, defaults: dict[str, Tensor]) -> None:
        self._state_names: Sequence[str] = tuple(defaults)
        for name, default in defaults.items():
            self.add_state(name, default=default, dist_reduce_fx="sum")

    def _accumulate(self, update: dict[str, Tensor]) -> None:
        for name, value in update.items():
            setattr(self, name, getattr(self, name) + value)

    def _state(self) -> dict[str, Tensor]:
        return {name: getattr(self, name) for name in self._state_names}
