"""Count what one forward + backward launches: aten operators on CPU, kernels on CUDA.

Shared by ``loss_speed.py`` and ``embedding_step.py``. On CPU every operator call costs a
dispatch (a few microseconds), on CUDA every kernel a launch: at small sizes these counts, not
the arithmetic, set the time.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# aten operators that make a new view or return their input; ``contiguous``, ``reshape`` and ``to``
# copy only sometimes, and then call a data-touching operator (clone, _to_copy), which counts
METADATA_OPS = frozenset(
    "aten::" + name
    for name in (
        "view",
        "reshape",
        "_reshape_alias",
        "t",
        "mT",
        "movedim",
        "select",
        "slice",
        "permute",
        "transpose",
        "unsqueeze",
        "squeeze",
        "expand",
        "as_strided",
        "alias",
        "detach",
        "to",
        "promote_types",
        "resolve_conj",
        "resolve_neg",
        "contiguous",
        "result_type",
        "lift_fresh",
        "_unsafe_view",
    )
)


def count_ops(fn: Callable[[], None], device: str) -> tuple[int, int]:
    """``(all, compute)`` for one call of ``fn`` (after one warm-up call).

    CPU: aten operators not called by another aten operator (forward ones, and those the autograd
    engine or a custom Function's backward calls), and of those the ones that touch data: not in
    :data:`METADATA_OPS`, or one of those that called a data-touching operator (a ``contiguous``
    that copied). CUDA: kernels, both numbers the same.
    """
    from torch.profiler import ProfilerActivity, profile

    fn()  # warm-up
    activity = ProfilerActivity.CUDA if device == "cuda" else ProfilerActivity.CPU
    with profile(activities=[activity]) as prof:
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
    events = prof.events()
    if device == "cuda":
        n = sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
        return n, n
    top = [
        e
        for e in events
        if e.name.startswith("aten::") and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))
    ]
    return len(top), sum(1 for e in top if _touches_data(e))


def _touches_data(event: torch.autograd.profiler_util.FunctionEvent) -> bool:
    if event.name not in METADATA_OPS:
        return True
    return any(_touches_data(c) for c in event.cpu_children if c.name.startswith("aten::"))
