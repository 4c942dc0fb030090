"""``TemperatureFit``: the temperature that calibrates fused logits, fitted on held-out data."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torchmetrics.utilities import rank_zero_warn

from lightning_mmloss import _validation as V
from lightning_mmloss.metrics._base import _AdditiveStateMetric

# Candidate temperatures: log-spaced from 1/1000 to 1000, ratio about 1.075 between neighbours;
# the minimum is then refined by a parabola through its neighbours in log T (within 0.2% of the
# exact minimiser in tests/unittests/test_temperature.py). Why so wide: the default fused logit
# (log-evidence weight 20, floor 1e-4) spans up to about 184 nats, and once a model fits its
# training split the validation NLL wants temperatures beyond 20, where the grid used to stop
# (ehh at 120 epochs: T stuck at 20, ECE 0.10 after calibration).
_GRID_SIZE = 193
_LOG_T_MAX = math.log(1000.0)
# Grid temperatures per chunk: (G, N, C) float64 intermediates of at most 2 MB stay in cache; at
# 32 MB (1 << 22) the update ran up to 2x slower (benchmarks/temperature_fit.py).
_MAX_ELEMENTS = 1 << 18


def temperature_grid(dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> Tensor:
    """The log-spaced candidate temperatures of :class:`TemperatureFit`, ``(193,)`` from 0.001 to 1000."""
    return torch.linspace(-_LOG_T_MAX, _LOG_T_MAX, _GRID_SIZE, dtype=dtype, device=device).exp()


def _check_temperature_inputs(logits: Tensor, target: Tensor, ignore_index: int, validate_args: bool) -> None:
    """Shapes and kinds always; with ``validate_args`` finite logits and targets in ``[0, C)`` (one sync)."""
    if not isinstance(logits, Tensor) or logits.dim() != 2 or not logits.is_floating_point():
        got = f"{logits.dtype} {V._shape(logits)}" if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"Expected argument `logits` to be a floating (N, C) tensor, but got {got}.")
    V.check_target_shape(target, logits.shape[0])
    if not validate_args or not len(target):
        return
    keep = target != ignore_index
    stats = torch.stack([logits.double().sum(), *torch.aminmax(torch.where(keep, target, 0).double())]).tolist()
    if not math.isfinite(stats[0]):
        raise ValueError(
            f"Expected argument `logits` to be finite, but got {int((~torch.isfinite(logits)).sum())} NaN or infinite "
            "values; a temperature fitted on them would mean nothing."
        )
    C = logits.shape[1]
    if stats[1] < 0 or stats[2] >= C:
        raise ValueError(
            f"Expected argument `target` to hold class indices in [0, {C - 1}] (or ignore_index={ignore_index}), "
            f"but got values from {int(stats[1])} to {int(stats[2])}."
        )


def _temperature_update(logits: Tensor, target: Tensor, ignore_index: int) -> tuple[Tensor, Tensor]:
    """Summed NLL of ``logits / T`` for every grid temperature ``(G,)``, and the number of instances."""
    keep = target != ignore_index
    x = logits.detach()[keep].to(torch.float64)
    y = target[keep].long()
    inv_t = temperature_grid(device=x.device).reciprocal()
    picked = x.gather(1, y.view(-1, 1)).squeeze(1)  # (N,) logit of the target class
    per_chunk = max(1, _MAX_ELEMENTS // max(x.numel(), 1))  # bound the (G, N, C) intermediate
    sums = []
    for start in range(0, len(inv_t), per_chunk):
        t = inv_t[start : start + per_chunk, None]
        sums.append((torch.logsumexp(x[None] * t[:, :, None], dim=2) - picked[None] * t).sum(dim=1))
    return torch.cat(sums), torch.tensor(float(y.numel()), dtype=torch.float64, device=x.device)


def _temperature_compute(nll: Tensor, count: Tensor) -> float:
    """The NLL-minimising temperature, refined by a parabola in log T around the best grid point."""
    if float(count) == 0:
        return 1.0
    log_t = temperature_grid(device=nll.device).log()
    i = int(nll.argmin())
    # At the top edge (T = 1000: a model no better than chance on these data, as in the first
    # epochs) the probabilities are as good as uniform, which is the right answer; at the bottom
    # edge they stay under-confident: logits 1000 times too small are a bug worth naming.
    if i == 0:
        rank_zero_warn(
            f"The fitted temperature is at the bottom of its grid ({math.exp(float(log_t[0])):.4g}): the"
            " logits are so small that the calibrated probabilities stay under-confident. Pass logits"
            " (not probabilities or scores scaled down)."
        )
    if 0 < i < len(nll) - 1:
        a, b, c = (float(v) for v in nll[i - 1 : i + 2])
        curvature = a - 2 * b + c
        if curvature > 0:  # vertex of the parabola through the three points, within one step
            step = float(log_t[1] - log_t[0])
            return math.exp(float(log_t[i]) + 0.5 * step * (a - c) / curvature)
    return math.exp(float(log_t[i]))


def fit_temperature(logits: Tensor, target: Tensor, ignore_index: int = -100) -> float:
    """The temperature ``T`` that minimises the negative log-likelihood of ``softmax(logits / T)``.

    Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", 2017): one scalar
    fitted on held-out data; it changes the probabilities, never the predicted class.

    Example::

        >>> import torch
        >>> from lightning_mmloss.metrics import fit_temperature
        >>> _ = torch.manual_seed(0)
        >>> target = torch.randint(0, 3, (4000,))
        >>> x = torch.randn(4000, 3) + 2.0 * torch.nn.functional.one_hot(target, 3)
        >>> logits = 2.0 * x   # the exact log-posterior (up to a constant) of this Gaussian model: calibrated
        >>> t1 = fit_temperature(logits, target)
        >>> round(t1, 1)
        1.0
        >>> round(fit_temperature(5.0 * logits, target) / t1, 2)   # over-confident by a factor of 5
        5.0
    """
    _check_temperature_inputs(logits, target, V.check_ignore_index(ignore_index, optional=False), True)
    return _temperature_compute(*_temperature_update(logits, target, ignore_index))


class TemperatureFit(_AdditiveStateMetric):
    """Accumulates what :func:`fit_temperature` needs over batches and processes; ``compute`` gives ``T``.

    The state is the summed NLL at 193 fixed temperatures from 0.001 to 1000 (and a count): a
    fixed-size sum, so an epoch costs no memory and DDP reduces it like any torchmetrics state.

    Args:
        ignore_index: targets with this value are skipped.
        validate_args: check that the logits are finite and the targets in ``[0, C)`` (one host sync
            per batch); shapes and dtypes are always checked.
        kwargs: passed to :class:`torchmetrics.Metric`.

    Example::

        >>> import torch
        >>> from lightning_mmloss.metrics import TemperatureFit
        >>> fit = TemperatureFit()
        >>> _ = torch.manual_seed(0)
        >>> for _ in range(4):
        ...     target = torch.randint(0, 3, (1000,))
        ...     x = torch.randn(1000, 3) + 2.0 * torch.nn.functional.one_hot(target, 3)
        ...     fit.update(0.5 * 2.0 * x, target)   # half the calibrated log-posterior: under-confident
        >>> round(float(fit.compute()), 1)
        0.5
    """

    def __init__(self, ignore_index: int = -100, validate_args: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.validate_args = V.check_bool("validate_args", validate_args)
        self.ignore_index = V.check_ignore_index(ignore_index, optional=False)
        self._add_states(
            {
                "nll": torch.zeros(_GRID_SIZE, dtype=torch.float64),
                "count": torch.zeros((), dtype=torch.float64),
            }
        )

    def update(self, logits: Tensor, target: Tensor) -> None:
        """Add a batch of fused logits ``(B, C)`` and targets ``(B,)``."""
        _check_temperature_inputs(logits, target, self.ignore_index, self.validate_args)
        nll, count = _temperature_update(logits, target, self.ignore_index)
        self._accumulate({"nll": nll, "count": count})

    def compute(self) -> Tensor:
        """The fitted temperature (``1`` when nothing was seen)."""
        return torch.tensor(_temperature_compute(self.nll, self.count), dtype=torch.float64)
