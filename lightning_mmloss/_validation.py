"""Argument checks shared by the functional layer and the modules.

Every check raises before any torch kernel sees the bad value, with a message of the form
"Expected argument `name` to be <expected>, but got <received>." so that a user can fix the
call without reading a traceback into torch internals.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

POOLINGS = ("reference", "softtriple")
BACKENDS = ("fused", "autograd")
ACTIVATIONS = ("softmax", "identity")
REDUCTIONS = ("mean", "sum", "none")
MAX_GAMMA = 1e6
MIN_GAMMA = 1e-6
MAX_PROXY_ELEMENTS = 2**32  # 16 GiB of float32 proxies: a typo, not a model


def _shape(t: Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def check_int(name: str, value: Any, minimum: int) -> int:
    """Return ``value`` if it is an ``int`` (not a ``bool``) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"Expected argument `{name}` to be an int, but got {type(value).__name__} {value!r}.")
    if value < minimum:
        raise ValueError(f"Expected argument `{name}` to be an int >= {minimum}, but got {value}.")
    return value


def check_bool(name: str, value: Any) -> bool:
    """``value`` if it is a bool (``"no"`` and ``1`` are not)."""
    if not isinstance(value, bool):
        raise TypeError(f"Expected argument `{name}` to be a bool, but got {type(value).__name__} {value!r}.")
    return value


def check_ignore_index(value: Any, optional: bool = True) -> int | None:
    """``ignore_index`` as an int (``None`` allowed where ``optional``); ``1.9`` or ``True`` are refused."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"Expected argument `ignore_index` to be an int, but got {type(value).__name__} {value!r}.")
    return value


def check_nonnegative(name: str, value: Any) -> float:
    """A finite real number ``>= 0`` (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"Expected argument `{name}` to be a finite float >= 0, but got {value!r}.")
    return float(value)


def check_positive(name: str, value: Any) -> float:
    """A finite real number ``> 0`` (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"Expected argument `{name}` to be a finite float > 0, but got {value!r}.")
    return float(value)


#: the largest log-evidence weight: ``w * log(1e-4)`` must stay finite in float32 with room for a sum
MAX_LOG_EVIDENCE = 1e6


def check_log_evidence(value: Any) -> float:
    """The log-evidence weight: a finite real number in ``[0, MAX_LOG_EVIDENCE]``."""
    w = check_nonnegative("log_evidence", value)
    if w > MAX_LOG_EVIDENCE:  # w * log(floor) overflows float32 long before 1e39
        raise ValueError(f"Expected argument `log_evidence` to be at most {MAX_LOG_EVIDENCE:g}, but got {value!r}.")
    return w


def check_unit_interval(name: str, value: Any) -> float:
    """A real number in ``(0, 1]`` (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"Expected argument `{name}` to be a float in (0, 1], but got {type(value).__name__} {value!r}."
        )
    if not math.isfinite(value) or not 0 < value <= 1:
        raise ValueError(f"Expected argument `{name}` to be a float in (0, 1], but got {value!r}.")
    return float(value)


def check_gamma(gamma: Any) -> float:
    """Return ``gamma`` as a float after checking that it is a finite positive number."""
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)):
        raise TypeError(f"Expected argument `gamma` to be a positive float, but got {type(gamma).__name__} {gamma!r}.")
    if not math.isfinite(gamma) or gamma <= 0:
        raise ValueError(f"Expected argument `gamma` to be a finite float > 0, but got {gamma!r}.")
    if gamma > MAX_GAMMA:  # gamma**2 enters the normalisation; beyond this the attention is uniform anyway
        raise ValueError(f"Expected argument `gamma` to be at most {MAX_GAMMA:g}, but got {gamma!r}.")
    if gamma < MIN_GAMMA:  # S / gamma must stay finite in float32 (the attention is one-hot long before)
        raise ValueError(f"Expected argument `gamma` to be at least {MIN_GAMMA:g}, but got {gamma!r}.")
    return float(gamma)


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"Expected argument `{name}` to be one of {tuple(choices)}, but got {value!r}.")
    return value


def check_modalities(
    num_modalities: int | Sequence[str], arg: str = "num_modalities"
) -> tuple[int, tuple[str, ...] | None]:
    """Return the number of modalities and their names (``None`` when only a count was given)."""
    if isinstance(num_modalities, str):
        raise TypeError(
            f"Expected argument `{arg}` to be an int or a sequence of modality names, "
            f"but got the string {num_modalities!r}; pass a list such as [{num_modalities!r}, ...]."
        )
    if isinstance(num_modalities, Sequence):
        names = tuple(num_modalities)
        if not names:
            raise ValueError(f"Expected argument `{arg}` to name at least one modality, but got an empty list.")
        for n in names:
            if not isinstance(n, str) or not n:
                raise TypeError(f"Expected argument `{arg}` to hold non-empty strings, but got {n!r}.")
        if len(set(names)) != len(names):
            raise ValueError(f"Expected argument `{arg}` to hold unique names, but got {list(names)}.")
        return len(names), names
    return check_int(arg, num_modalities, 1), None


def check_names(name: str, names: Sequence[str] | None) -> tuple[str, ...] | None:
    """``names`` (modality names given to a function) as a tuple of unique non-empty strings."""
    if names is None:
        return None
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise TypeError(f"Expected argument `{name}` to be a sequence of modality names, but got {names!r}.")
    return check_modalities(list(names), name)[1]


def check_label_smoothing(value: Any) -> float:
    """Return ``label_smoothing`` as a float in ``[0, 1]``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"Expected argument `label_smoothing` to be a float in [0, 1], but got {value!r}.")
    return float(value)


def check_class_weight(class_weight: Tensor | Sequence[float] | None, num_classes: int) -> Tensor | None:
    """Return ``class_weight`` as a float tensor of shape ``(C,)`` with finite non-negative entries."""
    if class_weight is None:
        return None
    if isinstance(class_weight, (str, bytes)) or not isinstance(class_weight, (Tensor, Sequence)):
        raise TypeError(
            f"Expected argument `class_weight` to be a tensor or sequence of {num_classes} floats, but got "
            f"{type(class_weight).__name__} {class_weight!r}."
        )
    try:
        w = torch.as_tensor(class_weight)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(
            f"Expected argument `class_weight` to hold {num_classes} numbers, but got {class_weight!r}."
        ) from err
    if w.is_complex() or w.dtype == torch.bool:
        raise TypeError(f"Expected argument `class_weight` to hold real numbers, but got dtype {w.dtype}.")
    if not w.is_floating_point():
        w = w.to(torch.get_default_dtype())
    if w.shape != (num_classes,):
        raise ValueError(
            f"Expected argument `class_weight` to have shape ({num_classes},) (one weight per class), "
            f"but got shape {_shape(w)}."
        )
    if not torch.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"Expected argument `class_weight` to be finite and non-negative, but got {w.tolist()}.")
    if not (w > 0).any():
        raise ValueError(
            f"Expected argument `class_weight` to have at least one positive entry, but got {w.tolist()} "
            "(every instance would weigh zero and the mean loss would be 0/0)."
        )
    return w


def coerce_unimodal(
    unimodal_logits: Tensor | Sequence[Tensor] | Mapping[str, Tensor],
    names: tuple[str, ...] | None,
    num_modalities: int | None = None,
) -> Tensor:
    """Stack the accepted input forms into one ``(B, M, C)`` tensor.

    Accepted: a ``(B, M, C)`` tensor, a sequence of ``M`` tensors ``(B, C)``, or a mapping from
    modality name to ``(B, C)``, ordered by ``names``.
    """
    if isinstance(unimodal_logits, Tensor):
        return unimodal_logits
    if isinstance(unimodal_logits, Mapping):
        if names is None:
            raise TypeError(
                "Got argument `unimodal_logits` as a mapping, but no modality names are configured; "
                "name them so the mapping can be ordered: `MultiModalLoss(num_modalities=[name, ...])`, "
                "`configure_multimodal(modalities=[name, ...])` in the mixin, or `modality_names=[...]` in the "
                "functions."
            )
        keys = list(unimodal_logits.keys())
        missing = [n for n in names if n not in unimodal_logits]
        unknown = [k for k in keys if k not in names]
        if missing or unknown:
            raise ValueError(
                f"Expected argument `unimodal_logits` to have exactly the keys {list(names)}, but got {keys} "
                f"(missing: {missing}, unknown: {unknown})."
            )
        parts = [unimodal_logits[n] for n in names]
        label = [f"`unimodal_logits[{n!r}]`" for n in names]
    elif isinstance(unimodal_logits, Sequence) and not isinstance(unimodal_logits, (str, bytes)):
        parts = list(unimodal_logits)
        if num_modalities is not None and len(parts) != num_modalities:
            raise ValueError(
                f"Expected argument `unimodal_logits` to hold M={num_modalities} tensors (one per modality), "
                f"but got {len(parts)}."
            )
        label = [f"`unimodal_logits[{i}]`" for i in range(len(parts))]
    else:
        raise TypeError(
            "Expected argument `unimodal_logits` to be a (B, M, C) tensor, a sequence of (B, C) tensors or a "
            f"mapping name -> (B, C) tensor, but got {type(unimodal_logits).__name__}."
        )
    if not parts:
        raise ValueError("Expected argument `unimodal_logits` to hold at least one modality, but got none.")
    for lab, t in zip(label, parts, strict=True):
        if not isinstance(t, Tensor):
            raise TypeError(f"Expected {lab} to be a tensor of shape (B, C), but got {type(t).__name__}.")
        if t.dim() == 3:
            raise ValueError(
                f"Expected {lab} to have shape (B, C), but got shape {_shape(t)}, which looks token- or frame-level "
                "(B, T, C). The fusion is per instance: flatten tokens into instances, "
                "`{name: u.flatten(0, 1) for name, u in logits.items()}` and `target.flatten()`, with padded "
                "positions' targets set to `ignore_index` (or pool over T first for one label per sequence)."
            )
        if t.dim() != 2:
            raise ValueError(f"Expected {lab} to have shape (B, C), but got shape {_shape(t)}.")
    first = parts[0]
    for lab, t in zip(label, parts, strict=True):
        if t.shape != first.shape:
            raise ValueError(
                f"Expected every modality's logits to share one shape (B, C), but {label[0]} has shape "
                f"{_shape(first)} and {lab} has shape {_shape(t)}."
            )
    return torch.stack(parts, dim=1)


def stack_checked(
    unimodal_logits: Tensor | Sequence[Tensor] | Mapping[str, Tensor],
    names: tuple[str, ...] | None,
    num_modalities: int,
    num_classes: int,
    modality_mask: Tensor | None,
) -> tuple[Tensor, Tensor | None]:
    """``(u, mask)``: any accepted input form as a checked ``(B, M, C)`` tensor, and the checked mask."""
    u = coerce_unimodal(unimodal_logits, names, num_modalities)
    check_unimodal_tensor(u, num_modalities, num_classes)
    return u, check_mask(modality_mask, u.shape[0], num_modalities, u.device)


def check_unimodal_tensor(u: Tensor, num_modalities: int | None, num_classes: int | None) -> None:
    """Check rank, dtype, ``M`` and ``C`` of a stacked ``(B, M, C)`` input."""
    m = "M" if num_modalities is None else f"M={num_modalities}"
    c = "C" if num_classes is None else f"C={num_classes}"
    if u.dim() == 4:
        raise ValueError(
            f"Expected argument `unimodal_logits` to have shape (B, {m}, {c}), but got shape {_shape(u)}, which looks "
            "token- or frame-level (B, T, M, C). The fusion is per instance: flatten tokens into instances, "
            "`u.flatten(0, 1)` and `target.flatten()`, with padded positions' targets set to `ignore_index`."
        )
    if u.dim() != 3:
        raise ValueError(f"Expected argument `unimodal_logits` to have shape (B, {m}, {c}), but got shape {_shape(u)}.")
    if not u.is_floating_point():
        raise TypeError(f"Expected argument `unimodal_logits` to be a floating point tensor, but got dtype {u.dtype}.")
    if (num_modalities is not None and u.shape[1] != num_modalities) or (
        num_classes is not None and u.shape[2] != num_classes
    ):
        raise ValueError(f"Expected argument `unimodal_logits` to have shape (B, {m}, {c}), but got shape {_shape(u)}.")


def check_weight(weight: Tensor, num_modalities: int, num_classes: int) -> int:
    """Check the proxy parameter's shape against the input and return ``K``."""
    if not isinstance(weight, Tensor) or weight.dim() != 2:
        got = _shape(weight) if isinstance(weight, Tensor) else type(weight).__name__
        raise ValueError(f"Expected argument `weight` to have shape (C*K, M*C), but got {got}.")
    rows, cols = weight.shape
    if cols != num_modalities * num_classes or rows % num_classes != 0 or rows == 0:
        raise ValueError(
            f"Expected argument `weight` to have shape (C*K, M*C) = ({num_classes}*K, {num_modalities * num_classes}) "
            f"for M={num_modalities}, C={num_classes}, but got shape {_shape(weight)}."
        )
    return rows // num_classes


def check_mask(mask: Tensor | None, batch: int, num_modalities: int, device: torch.device) -> Tensor | None:
    """Check ``modality_mask``: bool, shape ``(B, M)``; ``True`` marks a modality that is present."""
    if mask is None:
        return None
    if not isinstance(mask, Tensor):
        raise TypeError(f"Expected argument `modality_mask` to be a bool tensor, but got {type(mask).__name__}.")
    if mask.dtype != torch.bool:
        raise TypeError(
            f"Expected argument `modality_mask` to have dtype torch.bool (True = modality present), "
            f"but got {mask.dtype}."
        )
    if mask.shape != (batch, num_modalities):
        raise ValueError(
            f"Expected argument `modality_mask` to have shape (B, M) = ({batch}, {num_modalities}), "
            f"but got shape {_shape(mask)}."
        )
    _check_device("modality_mask", mask, device)
    return mask.to(device)


def _check_device(name: str, t: Tensor, device: torch.device) -> None:
    if t.device.type == "meta" and device.type != "meta":
        raise ValueError(
            f"Expected argument `{name}` to hold data on {device} like the logits, but got a tensor on the meta "
            "device (no data): materialise it first."
        )


def check_target_shape(target: Any, batch: int, device: torch.device | None = None) -> Tensor:
    """Check that ``target`` is an integer tensor of shape ``(B,)`` on ``device``; returns it as int64."""
    if not isinstance(target, Tensor):
        raise TypeError(f"Expected argument `target` to be a tensor of class indices, but got {type(target).__name__}.")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(f"Expected argument `target` to hold integer class indices, but got dtype {target.dtype}.")
    if target.shape != (batch,):
        raise ValueError(f"Expected argument `target` to have shape (B,) = ({batch},), but got shape {_shape(target)}.")
    if device is not None and target.device != device:
        _check_device("target", target, device)
        raise ValueError(
            f"Expected argument `target` on the logits' device {device}, but got it on {target.device}; "
            "move it with `.to(logits.device)`."
        )
    return target.long()  # int32/uint8 class indices work too; cross-entropy wants int64


def functorch_active() -> bool:
    """True inside ``torch.func`` transforms (``vmap``, ``grad``, ...): values cannot be read back there.

    Not asked while ``torch.compile`` traces (the query would break the graph; compiled code runs
    the fused path).
    """
    return not torch.compiler.is_compiling() and torch._C._functorch.peek_interpreter_stack() is not None


def _compiling() -> bool:
    """True while ``torch.compile`` traces, a CUDA graph is captured or a ``torch.func`` transform runs.

    Value checks need a host sync (under ``torch.func`` a read-back of batched values).

    A sync would break the compiled graph (``fullgraph=True`` fails) or the capture (CUDA refuses
    it), so the checks are skipped there; run the model eagerly once to have them.
    """
    if torch.compiler.is_compiling() or functorch_active():
        return True
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def check_values(
    u: Tensor,
    mask: Tensor | None,
    activation: str,
    names: tuple[str, ...] | None,
    target: Tensor | None = None,
    num_classes: int = 0,
    ignore_index: int = -100,
    weight: Tensor | None = None,
) -> int | None:
    """Check finiteness (and sign, for ``identity``) of the logits, the proxies and the range of ``target``.

    The common case costs a few reductions and one synchronisation: the sum of the logits is
    finite when every entry is (a huge finite sum that overflows only triggers the exact
    count), ``aminmax`` of the targets settles the range, and the proxy parameter's minimum and
    maximum (all proxies dead iff it is <= 0) come along. The exact counts behind an
    error message are only computed when a fast check fails. Entries of masked (absent)
    modalities are not checked: they never enter the computation. Under ``torch.compile`` the
    checks are skipped (they would force a graph break); shapes are still checked.

    Returns:
        The number of targets that are not ``ignore_index`` (``0`` when ``target`` is ``None``;
        ``None`` when the checks were skipped under compilation).

    Raises:
        ValueError: non-finite logits or proxies, negative or overflowing ``identity`` scores,
            out-of-range targets.
    """
    if _compiling():
        return None
    present = None if mask is None else mask[:, :, None]
    vals = u if present is None else torch.where(present, u, u.new_zeros(()))
    flags = [vals.sum()]
    identity = activation == "identity" and vals.numel() > 0
    if identity:
        # the fusion normalises the scores: their squares must not overflow either
        flags.extend([vals.amin(), vals.float().square().sum()])
    has_weight = weight is not None and weight.numel() > 0
    if has_weight:
        # min and max (one op; both propagate NaN): finite iff every entry is; max <= 0 iff every
        # proxy is clamped to zero (dead)
        flags.extend(torch.aminmax(weight.detach()))
    has_target = target is not None and target.numel() > 0
    if has_target:
        flags.extend(torch.aminmax(target.to(torch.float64 if vals.dtype == torch.float64 else torch.float32)))
    # at least float32: class indices are exact up to 2^24 there (bf16 loses them above 256)
    dtype = torch.float64 if vals.dtype == torch.float64 else torch.float32
    values = torch.stack([f if f.dtype == dtype else f.to(dtype) for f in flags]).tolist()
    if not math.isfinite(values[0]):
        _raise_if_nonfinite(u, present, names)
    if identity:
        if values[1] < 0:
            negative = vals < 0
            raise ValueError(
                "Expected argument `unimodal_logits` to hold non-negative scores with activation='identity', "
                f"but got {int(negative.sum())} negative values (min {values[1]:.4g}); use activation='softmax' for "
                "raw logits."
            )
        if not math.isfinite(values[2]):
            raise ValueError(
                "Expected argument `unimodal_logits` to hold scores whose squares are finite with "
                f"activation='identity' (the fusion normalises them), but got values up to {float(vals.amax()):.4g}; "
                "rescale the scores (e.g. to probabilities)."
            )
    if has_weight:
        i = 3 if identity else 1
        _check_proxies(weight, values[i] + values[i + 1], values[i + 1])
    if not has_target:
        return 0
    tmin, tmax = values[-2], values[-1]
    if tmin >= 0 and tmax < num_classes and not 0 <= ignore_index < num_classes:
        return target.numel()  # every target is a class index, none is ignored
    valid = target != ignore_index
    bad = valid & ((target < 0) | (target >= num_classes))
    n_bad, n_valid = torch.stack([bad.sum(), valid.sum()]).tolist()
    if n_bad:
        raise ValueError(
            f"Expected argument `target` to hold class indices in [0, {num_classes - 1}] (or ignore_index="
            f"{ignore_index}), but got {n_bad} out-of-range values, e.g. {target[bad][:5].tolist()}."
        )
    return int(n_valid)


def _check_proxies(weight: Tensor, total: float, largest: float) -> None:
    """Non-finite proxies are an error (the proxies' fault, not the encoder's); all-dead ones a warning."""
    if not math.isfinite(total):
        w = weight.detach()
        n_nan, n_inf = int(torch.isnan(w).sum()), int(torch.isinf(w).sum())
        if n_nan or n_inf:
            raise ValueError(
                f"Expected the MultiModal loss's proxy parameter `weight` {tuple(weight.shape)} to be finite, but got "
                f"{n_nan} NaN and {n_inf} infinite values: the proxies diverged (lower the proxies' learning rate, "
                "clip gradients) or were overwritten; call `reset_parameters()` or reload a checkpoint."
            )
    if largest <= 0:
        warnings.warn(
            f"Every proxy of the MultiModal loss is <= 0 (all {weight.shape[0]} rows of `weight`): after the clamp "
            "they are zero, get no gradient and the fusion is a plain sum of the unimodal scores. Re-initialise them "
            "(`reset_parameters()`) and lower the proxies' weight decay.",
            UserWarning,
            stacklevel=4,
        )


def _raise_if_nonfinite(u: Tensor, present: Tensor | None, names: tuple[str, ...] | None) -> None:
    """Count NaN and infinite entries per modality and raise if there are any."""
    nonfinite = ~torch.isfinite(u)
    nan = torch.isnan(u)
    if present is not None:
        nonfinite, nan = nonfinite & present, nan & present
    n_nonfinite, n_nan = int(nonfinite.sum()), int(nan.sum())
    if not n_nonfinite:
        return  # the sum overflowed, every entry is finite
    per_mod = nonfinite.sum(dim=(0, 2)).tolist()
    mods = names or tuple(str(i) for i in range(u.shape[1]))
    where = ", ".join(f"{n}: {k}" for n, k in zip(mods, per_mod, strict=True) if k)
    raise ValueError(
        "Expected argument `unimodal_logits` to be finite, but got "
        f"{n_nan} NaN and {n_nonfinite - n_nan} infinite values (per modality: {where}). "
        "Check the encoder for divergence, or mark absent modalities with `modality_mask`."
    )


def check_metric_inputs(
    unimodal_probs: Tensor, fused_probs: Tensor, target: Tensor, modality_mask: Tensor | None = None
) -> tuple[int, int, int]:
    """Shapes and dtypes shared by the metrics (no value checks, no sync); returns ``(B, M, C)``.

    As for the loss: a wrong shape is a ``ValueError``, a wrong kind of tensor a ``TypeError``.
    """
    if not isinstance(unimodal_probs, Tensor) or unimodal_probs.dim() != 3:
        got = _shape(unimodal_probs) if isinstance(unimodal_probs, Tensor) else type(unimodal_probs).__name__
        raise ValueError(f"Expected argument `unimodal_probs` to have shape (B, M, C), but got {got}.")
    B, M, C = unimodal_probs.shape
    if not isinstance(fused_probs, Tensor) or fused_probs.shape != (B, C):
        got = _shape(fused_probs) if isinstance(fused_probs, Tensor) else type(fused_probs).__name__
        raise ValueError(f"Expected argument `fused_probs` to have shape (B, C) = ({B}, {C}), but got {got}.")
    check_target_shape(target, B)
    check_mask(modality_mask, B, M, unimodal_probs.device)
    return B, M, C


def check_probabilities(**tensors: Tensor) -> None:
    """Every named tensor holds finite values in ``[0, 1]`` (one host sync for all of them)."""
    names = list(tensors)
    stats = []
    for t in tensors.values():
        if t.numel():
            stats.extend([t.amin().float(), t.amax().float()])
        else:
            stats.extend([t.new_zeros((), dtype=torch.float32), t.new_zeros((), dtype=torch.float32)])
    values = torch.stack(stats).tolist()
    for i, name in enumerate(names):
        lo, hi = values[2 * i], values[2 * i + 1]
        if not (math.isfinite(lo) and math.isfinite(hi) and lo >= 0 and hi <= 1):
            raise ValueError(
                f"Expected argument `{name}` to hold probabilities in [0, 1], but got values in [{lo:.4g}, {hi:.4g}] "
                "(pass softmax scores, not logits; `validate_args=False` skips this check)."
            )


def check_class_names(value: Any) -> list[str] | None:
    """``class_names`` as a list of str (``None`` allowed); a single string is refused."""
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, Sequence) or not all(isinstance(c, str) for c in value):
        raise TypeError(f"Expected argument `class_names` to be a list of str, but got {value!r}.")
    return list(value)


def check_class_names_count(names: list[str] | None, num_classes: int) -> None:
    """``class_names`` must name the model's classes, once each."""
    if names is not None and len(names) != num_classes:
        raise ValueError(
            f"Expected argument `class_names` to name the model's {num_classes} classes, but got {len(names)}: {names}."
        )


def check_state_scalar(state_dict: dict[str, Any], key: str, current: Tensor, positive: bool) -> None:
    """A calibration buffer of a state being loaded: one finite value, ``> 0`` or ``>= 0``.

    Missing, it keeps the module's ``current`` value (a partial state, or one from before the
    buffer existed, never resets a fitted calibration).
    """
    value = state_dict.setdefault(key, current.detach().clone())
    ok = isinstance(value, Tensor) and value.numel() == 1 and bool(torch.isfinite(value).all())
    if not ok or (float(value) <= 0 if positive else float(value) < 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(
            f"Expected the state's `{key}` to be one finite value {bound}, but got {value!r}; it would flip or "
            "break the fused probabilities."
        )
