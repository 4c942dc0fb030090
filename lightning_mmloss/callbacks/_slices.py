"""Reliability and agreement per slice of the data (site, device, acquisition, group, ...).

A *slice* names a per-instance value taken from the batch: a batch key, or a callable
``batch -> (B,)`` tensor or list. :class:`SliceMetrics` keeps one
:class:`~lightning_mmloss.metrics.ModalityReliability` and one
:class:`~lightning_mmloss.metrics.ModalityAgreement` per value seen. The values are not known in
advance, so at the end of an epoch the processes first agree on the values (one
``all_gather_object`` of the value counts per epoch), then compute the metrics of each value in the
same order everywhere (torchmetrics synchronises each).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from lightning_mmloss import _validation as V
from lightning_mmloss.metrics import ModalityAgreement, ModalityReliability

#: The value under which the values beyond ``max_slice_values`` are pooled.
OTHER = "(other)"

SliceSource = str | Callable[[Any], Any]


def check_slices(slices: Any) -> dict[str, SliceSource]:
    """``slices`` as ``{name: batch key or callable}``.

    A key alone (``"site"``) or a list of keys names each slice after its key.
    """
    if slices is None:
        return {}
    if isinstance(slices, str):
        slices = [slices]
    if isinstance(slices, Mapping):
        items = list(slices.items())
    elif isinstance(slices, Sequence) and all(isinstance(s, str) for s in slices):
        items = [(s, s) for s in slices]
    else:
        raise TypeError(
            "Expected argument `slices` to be a batch key, a list of keys or a dict {name: key or callable}, "
            f"but got {type(slices).__name__} {slices!r}."
        )
    out: dict[str, SliceSource] = {}
    for name, source in items:
        if not isinstance(name, str) or not name or "/" in name or "=" in name:
            raise ValueError(f"Expected slice names to be non-empty strings without '/' or '=', but got {name!r}.")
        if not (isinstance(source, str) or callable(source)):
            raise TypeError(
                f"Expected argument `slices[{name!r}]` to be a batch key or a callable batch -> (B,) values, "
                f"but got {type(source).__name__} {source!r}."
            )
        out[name] = source
    return out


def _value_name(value: Any) -> str:
    # '/' would split the logged key into more levels
    return str(value).replace("/", "_")


def slice_values(name: str, source: SliceSource, batch: Any, batch_size: int) -> list[str]:
    """The ``batch_size`` values of one slice for a batch, as strings."""
    if callable(source):
        values = source(batch)
        what = f"the callable of slice {name!r}"
    else:
        if isinstance(batch, Mapping):
            if source not in batch:
                raise ValueError(
                    f"SubgroupMonitor slice {name!r}: expected the batch to have the key {source!r}, but its keys "
                    f"are {list(batch)}."
                )
            values = batch[source]
        elif isinstance(batch, tuple) and source in getattr(batch, "_fields", ()):
            values = getattr(batch, source)
        else:
            raise TypeError(
                f"SubgroupMonitor slice {name!r} reads the batch key {source!r}, but the batch is a "
                f"{type(batch).__name__}; pass a callable batch -> (B,) values instead."
            )
        what = f"batch[{source!r}]"
    if isinstance(values, Tensor):
        if values.dim() != 1 or values.is_floating_point() or values.is_complex():
            raise ValueError(
                f"Expected {what} to be a (B,) int or bool tensor (or a list of str), but got "
                f"{values.dtype} of shape {tuple(values.shape)}."
            )
        values = values.tolist()
    elif not isinstance(values, Sequence) or isinstance(values, (str, bytes)):
        raise TypeError(f"Expected {what} to be a (B,) tensor or a list, but got {type(values).__name__}.")
    if len(values) != batch_size:
        raise ValueError(f"Expected {what} to hold one value per instance ({batch_size}), but got {len(values)}.")
    return [_value_name(v) for v in values]


class SliceMetrics:
    """Reliability and agreement per value of each slice, on one device, for one stage and loader.

    Args:
        slices: ``{name: batch key or callable}`` (:func:`check_slices`).
        modalities: the modality names.
        num_classes: ``C``.
        n_bins: calibration bins of the ECE.
        max_slice_values: values kept per slice; the rest (the least frequent) are pooled in
            :data:`OTHER`.
        device: where the metrics live.
    """

    def __init__(
        self,
        slices: dict[str, SliceSource],
        modalities: Sequence[str],
        num_classes: int,
        n_bins: int,
        max_slice_values: int,
        device: torch.device,
    ) -> None:
        self.slices = slices
        self.modalities = list(modalities)
        self.num_classes = num_classes
        self.n_bins = n_bins
        self.max_slice_values = V.check_int("max_slice_values", max_slice_values, 1)
        self.device = device
        self.metrics: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in slices}
        self.counts: dict[str, Counter[str]] = {name: Counter() for name in slices}
        self.pooled: dict[str, int] = {}

    def _new(self) -> dict[str, Any]:
        pair = {
            "reliability": ModalityReliability(self.modalities, self.num_classes, self.n_bins, validate_args=False),
            "agreement": ModalityAgreement(self.modalities, validate_args=False),
        }
        for m in pair.values():
            m.to(self.device)
        return pair

    def _touch(self, pair: dict[str, Any]) -> None:
        """An empty update where none came, so that torchmetrics does not warn on ``compute``.

        A value this process never saw (and the pooled one) is computed all the same, for the
        collective sync.
        """
        M, C = len(self.modalities), self.num_classes
        empty = torch.empty(0, M, C, device=self.device)
        for metric in pair.values():
            if not metric.update_called:
                metric.update(empty, empty[:, 0], torch.empty(0, dtype=torch.long, device=self.device))

    def values_of(self, batch: Any, batch_size: int) -> dict[str, list[str]]:
        """Every slice's values for a batch (read before the monitor drops ignored instances)."""
        return {name: slice_values(name, source, batch, batch_size) for name, source in self.slices.items()}

    def update(
        self,
        values: dict[str, list[str]],
        unimodal: Tensor,
        probs: Tensor,
        target: Tensor,
        mask: Tensor | None,
    ) -> None:
        """Add a batch whose instances have the slice ``values`` (one list per slice, already filtered)."""
        for name, vals in values.items():
            groups: dict[str, list[int]] = {}
            for i, v in enumerate(vals):
                groups.setdefault(v, []).append(i)
            for v, rows in groups.items():
                pair = self.metrics[name].get(v)
                if pair is None:
                    pair = self.metrics[name][v] = self._new()
                idx = torch.tensor(rows, device=target.device)
                sub_mask = None if mask is None else mask[idx]
                for m in pair.values():
                    m.update(unimodal[idx], probs[idx], target[idx], sub_mask)
                self.counts[name][v] += len(rows)

    def _agreed_counts(self) -> dict[str, Counter[str]]:
        """The value counts summed over all processes (the same dict on every rank)."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return self.counts
        gathered: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, {k: dict(v) for k, v in self.counts.items()})
        total: dict[str, Counter[str]] = {name: Counter() for name in self.slices}
        for counts in gathered:
            for name, c in counts.items():
                total[name].update(c)
        return total

    def compute(self) -> dict[str, dict[str, dict[str, Any]]]:
        """``{slice: {value: {"reliability": ..., "agreement": ..., "count": n}}}``, synchronised across processes.

        Values in sorted order; with more than ``max_slice_values`` values, the most frequent are
        kept and the others pooled in :data:`OTHER` (their count is in :attr:`pooled`).
        """
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for name, total in self._agreed_counts().items():
            ranked = sorted(total, key=lambda v: (-total[v], v))
            kept, rest = sorted(ranked[: self.max_slice_values]), ranked[self.max_slice_values :]
            local = self.metrics[name]
            for v in kept:  # a value another process saw: an empty metric here, for the collective sync
                if v not in local:
                    local[v] = self._new()
            chosen = {v: local[v] for v in kept}
            if rest:
                other = chosen[OTHER] = self._new()
                for v in rest:
                    for key, metric in local.get(v, {}).items():
                        other[key].merge_state(metric)  # the states are sums
            for pair in chosen.values():
                self._touch(pair)
            self.pooled[name] = len(rest)
            counts = {v: total[v] for v in kept}
            if rest:
                counts[OTHER] = sum(total[v] for v in rest)
            out[name] = {
                v: {**{k: m.compute() for k, m in pair.items()}, "count": counts[v]} for v, pair in chosen.items()
            }
        return out
