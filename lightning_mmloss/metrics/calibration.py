"""The calibration of the fused decision, fitted on held-out data: a temperature, and the weight of the heads' evidence.

Both fits minimise the negative log-likelihood of held-out targets, exactly (Newton's method in
float64 on the stored logits), once per epoch rather than once per batch:

- :func:`fit_temperature` / :class:`TemperatureFit`: ``softmax(logits / T)``, temperature
  scaling (Guo et al., "On Calibration of Modern Neural Networks", 2017); it never changes the
  predicted class.
- :func:`fit_decision` / :class:`DecisionFit`: ``softmax((logits + w * evidence) / T)``, the
  temperature and the weight ``w >= 0`` of an evidence term fitted together. The MultiModal
  loss's ``evidence`` is the heads' mean floored log-probability (late fusion's logit up to a
  constant), so the fit chooses, on held-out data, how far the decision follows the heads'
  product rather than the paper's ``s + h``. The NLL is convex in ``(1 / T, w / T)``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat, rank_zero_warn

from lightning_mmloss import _validation as V

#: Bounds of the fitted temperature. Wide, because the minimiser is found exactly, not on a grid:
#: a fused logit with a large log-evidence weight spans hundreds of nats (temperatures far above
#: 20), and logits scaled by ``1e4`` want ``T`` of about 6,000.
T_MIN, T_MAX = 1e-6, 1e6
#: Bound of the fitted evidence weight on the calibrated scale (``w / T``).
_SCALED_WEIGHT_MAX = 1e6
_MAX_ITER = 100


def _check_inputs(
    logits: Tensor, target: Tensor, evidence: Tensor | None, ignore_index: int, validate_args: bool
) -> None:
    """Shapes and kinds always; with ``validate_args`` finite values and targets in ``[0, C)`` (one sync)."""
    if not isinstance(logits, Tensor) or logits.dim() != 2 or not logits.is_floating_point():
        got = f"{logits.dtype} {V._shape(logits)}" if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"Expected argument `logits` to be a floating (N, C) tensor, but got {got}.")
    if logits.shape[1] < 2:
        raise ValueError(f"Expected argument `logits` to have C >= 2 columns, but got shape {V._shape(logits)}.")
    if evidence is not None and (
        not isinstance(evidence, Tensor) or not evidence.is_floating_point() or evidence.shape != logits.shape
    ):
        got = f"{evidence.dtype} {V._shape(evidence)}" if isinstance(evidence, Tensor) else type(evidence).__name__
        raise ValueError(
            f"Expected argument `evidence` to be a floating tensor of the logits' shape {V._shape(logits)}, "
            f"but got {got}."
        )
    V.check_target_shape(target, logits.shape[0])
    if not validate_args or not len(target):
        return
    keep = target != ignore_index
    values = [logits.double().sum()] + ([] if evidence is None else [evidence.double().sum()])
    stats = torch.stack([*values, *torch.aminmax(torch.where(keep, target, 0).double())]).tolist()
    for name, total in zip(("logits", "evidence"), stats[:-2], strict=False):
        if not math.isfinite(total):
            bad = logits if name == "logits" else evidence
            assert bad is not None
            raise ValueError(
                f"Expected argument `{name}` to be finite, but got {int((~torch.isfinite(bad)).sum())} NaN or "
                "infinite values; a calibration fitted on them would mean nothing."
            )
    C = logits.shape[1]
    if stats[-2] < 0 or stats[-1] >= C:
        raise ValueError(
            f"Expected argument `target` to hold class indices in [0, {C - 1}] (or ignore_index={ignore_index}), "
            f"but got values from {int(stats[-2])} to {int(stats[-1])}."
        )


def _nll_parts(
    theta: tuple[float, float], x: Tensor, e: Tensor | None, xy: Tensor, ey: Tensor | None, order: int
) -> tuple[float, Tensor | None, Tensor | None]:
    """The mean NLL at ``(log a, b)`` (logits ``a x + b e``), with its gradient and Hessian in ``(log a, b)``."""
    a, b = math.exp(theta[0]), theta[1]
    z = x * a if e is None else torch.add(x * a, e, alpha=b)
    lse = torch.logsumexp(z, dim=1)
    picked = xy * a if ey is None else xy * a + ey * b
    f = float((lse - picked).mean())
    if order == 0:
        return f, None, None
    q = (z - lse[:, None]).exp_()
    feats = [x] if e is None else [x, e]
    means = [(q * v).sum(dim=1) for v in feats]
    targets = [xy] if ey is None else [xy, ey]
    g = torch.stack([(m - t).mean() for m, t in zip(means, targets, strict=True)])
    n = len(feats)
    H = torch.empty(n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(i, n):
            H[i, j] = H[j, i] = ((q * feats[i] * feats[j]).sum(dim=1) - means[i] * means[j]).mean()
    # from (a, b) to (log a, b): the scale of the temperature spans twelve orders of magnitude
    H[0, :] *= a
    H[:, 0] *= a
    H[0, 0] += a * g[0]
    g[0] *= a
    return f, g, H


def _solve(x: Tensor, e: Tensor | None, y: Tensor) -> tuple[float, float]:
    """``argmin`` of the mean NLL of ``softmax(a x + b e)`` over ``a`` in ``[1/T_MAX, 1/T_MIN]``, ``b >= 0``.

    Projected Newton in ``(log a, b)`` from ``(0, 0)`` (``T = 1``, no evidence), falling back to
    the gradient where the Hessian is not positive definite, with a backtracking line search that
    also expands the step (along a flat tail Newton's steps grow only additively).
    Deterministic; at most 100 iterations.
    """
    xy = x.gather(1, y[:, None]).squeeze(1)
    ey = None if e is None else e.gather(1, y[:, None]).squeeze(1)
    lo = (-math.log(T_MAX), 0.0)
    hi = (-math.log(T_MIN), _SCALED_WEIGHT_MAX)

    def along(theta: tuple[float, float], step: list[float], t: float) -> tuple[tuple[float, float], float]:
        """The projected point ``theta + t * step`` and the NLL there."""
        r = min(max(theta[0] + t * step[0], lo[0]), hi[0])
        b = 0.0 if e is None else min(max(theta[1] + t * step[1], lo[1]), hi[1])
        return (r, b), _nll_parts((r, b), x, e, xy, ey, 0)[0]

    theta = (0.0, 0.0)
    f, g, H = _nll_parts(theta, x, e, xy, ey, 2)
    for _ in range(_MAX_ITER):
        assert g is not None and H is not None
        n = g.numel()
        # a variable held at a bound by a gradient pointing outwards stays there (projected Newton)
        free = [i for i in range(n) if not ((theta[i] <= lo[i] and g[i] > 0) or (theta[i] >= hi[i] and g[i] < 0))]
        if not free:
            break
        gf, Hf = g[free], H[free][:, free]
        step_f = torch.linalg.solve_ex(Hf, -gf).result
        if not (bool(torch.isfinite(step_f).all()) and float(step_f @ gf) < 0):
            step_f = -gf / Hf.diagonal().abs().clamp_min(1e-12)  # not positive definite here: scaled gradient
        step = [0.0, 0.0]
        for k, i in enumerate(free):
            step[i] = float(step_f[k])
        slope = sum(float(g[i]) * step[i] for i in free)
        t = 1.0
        cand, fc = along(theta, step, t)
        while fc > f + 1e-4 * t * slope and t > 1e-12:  # Armijo backtracking
            t *= 0.5
            cand, fc = along(theta, step, t)
        if fc >= f:  # no descent left: the minimum, to machine precision
            break
        if t == 1.0:  # a full step helped: longer ones while they help
            for _ in range(60):
                longer, fl = along(theta, step, 2 * t)
                if fl >= fc or longer == cand:
                    break
                t, cand, fc = 2 * t, longer, fl
        moved = max(abs(cand[0] - theta[0]), abs(cand[1] - theta[1]))
        theta = cand
        f, g, H = _nll_parts(theta, x, e, xy, ey, 2)
        if moved < 1e-10 * (1 + max(abs(theta[0]), abs(theta[1]))):
            break
    a, b = math.exp(theta[0]), theta[1]
    z = x * a if e is None else x * a + e * b
    if bool((z.argmax(dim=1) == y).all()):
        # no finite minimiser: the likelihood rises without end as the probabilities sharpen
        rank_zero_warn(
            "The calibration's held-out data are separated by the logits (every instance is predicted right), so "
            "no temperature is best: the fit stopped where the likelihood stopped changing. Calibrate on more data."
        )
    elif theta[0] >= hi[0] - 1e-9:
        rank_zero_warn(
            f"The fitted temperature is at its lower bound ({T_MIN:g}): the logits are so small that the calibrated "
            "probabilities stay under-confident. Pass logits (not probabilities or scores scaled down)."
        )
    # at the upper bound of the temperature the logits are no better than uniform probabilities on
    # these data (a model in its first epochs): uniform probabilities are then the right answer
    return a, b


def _kept(logits: Tensor, target: Tensor, evidence: Tensor | None, ignore_index: int) -> list[Tensor]:
    keep = target != ignore_index
    rows = [logits.detach()[keep].float(), target[keep].long()]
    return rows if evidence is None else [*rows, evidence.detach()[keep].float()]


def _fit(logits: Tensor, target: Tensor, evidence: Tensor | None) -> tuple[float, float]:
    """``(T, w)`` on kept rows; ``(1, 0)`` when there are none."""
    if not len(target):
        return 1.0, 0.0
    x = logits.double()
    e = None if evidence is None else evidence.double()
    a, b = _solve(x - x.mean(dim=1, keepdim=True), None if e is None else e - e.mean(dim=1, keepdim=True), target)
    return 1.0 / a, b / a


def fit_temperature(logits: Tensor, target: Tensor, ignore_index: int = -100) -> float:
    """The temperature ``T`` that minimises the negative log-likelihood of ``softmax(logits / T)``.

    Temperature scaling (Guo et al., 2017): one scalar fitted on held-out data; it changes the
    probabilities, never the predicted class. Exact (Newton's method in float64), within
    ``[1e-6, 1e6]``: at the top the logits are no better than uniform probabilities on these
    data, and the fit gives uniform probabilities; a warning says when the data are separated (no
    best temperature) or the logits so small that the bottom is reached. ``1`` when every target
    is ``ignore_index``.

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
    ignore = V.check_ignore_index(ignore_index, optional=False)
    _check_inputs(logits, target, None, ignore, True)
    return _fit(*_kept(logits, target, None, ignore), None)[0]


def fit_decision(logits: Tensor, evidence: Tensor, target: Tensor, ignore_index: int = -100) -> tuple[float, float]:
    """The temperature ``T`` and evidence weight ``w >= 0`` minimising the NLL of ``softmax((logits + w E) / T)``.

    Fitted together, so that sharpening and calibration are one fit: the NLL is convex in
    ``(1 / T, w / T)`` and is minimised exactly (projected Newton in float64). With ``w = 0`` at
    the minimum this is :func:`fit_temperature`; a warning says when a bound is reached and why.

    Args:
        logits: ``(N, C)`` the decision's logits before the evidence, e.g. the MultiModal loss's
            raw fused logits.
        evidence: ``(N, C)`` the evidence term at weight 1, e.g. the heads' mean floored
            log-probability (:func:`~lightning_mmloss.functional.log_evidence_logits` with
            ``log_evidence=1``).
        target: ``(N,)`` class indices.
        ignore_index: targets with this value are skipped.

    Returns:
        ``(temperature, evidence_weight)``; ``(1.0, 0.0)`` when every target is ignored.

    Example::

        >>> import torch
        >>> from lightning_mmloss.metrics import fit_decision
        >>> _ = torch.manual_seed(0)
        >>> target = torch.randint(0, 3, (4000,))
        >>> signal = torch.nn.functional.one_hot(target, 3).float()
        >>> weak, strong = signal + 2 * torch.randn(4000, 3), 2 * signal + torch.randn(4000, 3)
        >>> temperature, weight = fit_decision(weak, strong, target)
        >>> weight > 1.0   # the stronger evidence gets the larger weight
        True
        >>> temperature, weight = fit_decision(strong, 0.0 * strong, target)   # no evidence: no weight
        >>> weight
        0.0
    """
    ignore = V.check_ignore_index(ignore_index, optional=False)
    if evidence is None:
        raise ValueError("Expected argument `evidence` to be an (N, C) tensor, but got None.")
    _check_inputs(logits, target, evidence, ignore, True)
    x, y, e = _kept(logits, target, evidence, ignore)
    return _fit(x, y, e)


class TemperatureFit(Metric):
    """Collects held-out fused logits over batches and processes; ``compute`` gives the fitted temperature.

    The states are the kept logits and targets (``dist_reduce_fx="cat"``: DDP gathers them, and
    every process fits the same temperature); ``compute`` runs :func:`fit_temperature` once.
    Memory: ``N * C`` float32 values for ``N`` held-out instances.

    Args:
        ignore_index: targets with this value are skipped.
        validate_args: check that the values are finite and the targets in ``[0, C)`` (one host
            sync per batch); shapes and dtypes are always checked.
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

    is_differentiable = False
    higher_is_better = None
    full_state_update = False
    _with_evidence = False

    def __init__(self, ignore_index: int = -100, validate_args: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.validate_args = V.check_bool("validate_args", validate_args)
        self.ignore_index = V.check_ignore_index(ignore_index, optional=False)
        for name in ("logits", "target") + (("evidence",) if self._with_evidence else ()):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, logits: Tensor, target: Tensor) -> None:
        """Add a batch of fused logits ``(B, C)`` and targets ``(B,)``."""
        self._update(logits, target, None)

    def _update(self, logits: Tensor, target: Tensor, evidence: Tensor | None) -> None:
        _check_inputs(logits, target, evidence, self.ignore_index, self.validate_args)
        kept = _kept(logits, target, evidence, self.ignore_index)
        for name, value in zip(("logits", "target", "evidence"), kept, strict=False):
            getattr(self, name).append(value)

    @property
    def num_samples(self) -> int:
        """Kept (not ignored) instances collected by this process so far."""
        return sum(len(t) for t in self.target) if isinstance(self.target, list) else len(self.target)

    def _fitted(self) -> tuple[float, float]:
        if not self.num_samples:
            return 1.0, 0.0
        # lists of batches, or one tensor once synchronised across processes
        e = dim_zero_cat(self.evidence) if self._with_evidence else None
        return _fit(dim_zero_cat(self.logits), dim_zero_cat(self.target), e)

    def compute(self) -> Tensor:
        """The fitted temperature (``1`` when nothing was kept)."""
        return torch.tensor(self._fitted()[0], dtype=torch.float64)


class DecisionFit(TemperatureFit):
    """Collects held-out logits and evidence; ``compute`` gives :func:`fit_decision`'s temperature and weight.

    The fit-time calibration of :class:`~lightning_mmloss.MultiModalLossMixin`: the decision's
    logits become ``(logits + w * evidence) / T``. States as :class:`TemperatureFit`'s plus the
    evidence (``2 * N * C`` float32 values in all).

    Args:
        ignore_index: targets with this value are skipped.
        validate_args: as in :class:`TemperatureFit`.
        kwargs: passed to :class:`torchmetrics.Metric`.

    Example::

        >>> import torch
        >>> from lightning_mmloss.metrics import DecisionFit
        >>> _ = torch.manual_seed(0)
        >>> fit = DecisionFit()
        >>> target = torch.randint(0, 3, (4000,))
        >>> signal = torch.nn.functional.one_hot(target, 3).float()
        >>> fit.update(signal + 2 * torch.randn(4000, 3), target, evidence=2 * signal + torch.randn(4000, 3))
        >>> sorted(fit.compute())
        ['evidence_weight', 'temperature']
    """

    _with_evidence = True

    def update(self, logits: Tensor, target: Tensor, evidence: Tensor | None = None) -> None:  # type: ignore[override]
        """Add a batch of logits ``(B, C)``, targets ``(B,)`` and the evidence ``(B, C)`` at weight 1."""
        if evidence is None:
            raise ValueError("Expected argument `evidence` to be a (B, C) tensor for DecisionFit, but got None.")
        self._update(logits, target, evidence)

    def compute(self) -> dict[str, Tensor]:  # type: ignore[override]
        """``{"temperature": T, "evidence_weight": w}`` (``1`` and ``0`` when nothing was kept)."""
        t, w = self._fitted()
        return {
            "temperature": torch.tensor(t, dtype=torch.float64),
            "evidence_weight": torch.tensor(w, dtype=torch.float64),
        }
