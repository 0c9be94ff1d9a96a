"""``vmap`` rules of the registered ops (forward and backward), so that ``torch.func.vmap`` runs
one kernel launch over the whole mapped batch instead of PyTorch's per-sample fallback loop.

Every tensor argument and every output of the four ops has the batch as its first dimension and
the batch items are independent, so the mapped dimension is folded into the batch: ``(V, B, ...)``
becomes ``(V * B, ...)`` for the call and is split again after it. An unmapped tensor argument is
repeated V times (a shared k/v map is thus copied; fold the mapped queries into Nq by hand where
that copy matters).
"""
from __future__ import annotations

from typing import Callable

import torch


def _fold(arg, dim, size: int):
    """``arg`` with the mapped dimension (or V repeats, where unmapped) folded into its first."""
    if not isinstance(arg, torch.Tensor):
        return arg
    arg = arg.expand(size, *arg.shape) if dim is None else arg.movedim(dim, 0)
    return arg.reshape(size * arg.shape[1], *arg.shape[2:]).contiguous()


def _rule(call: Callable):
    def rule(info, in_dims, *args):
        size = info.batch_size
        arg, dim = args[0], in_dims[0]  # every op's first argument is a tensor
        batch = arg.shape[0] if dim is None else arg.movedim(dim, 0).shape[1]
        out = call(*(_fold(arg, dim, size) for arg, dim in zip(args, in_dims)))
        if isinstance(out, torch.Tensor):
            return out.unflatten(0, (size, batch)), 0
        return tuple(t.unflatten(0, (size, batch)) for t in out), (0,) * len(out)
    return rule


def register(op, call: Callable) -> None:
    """Registers the vmap rule of ``op`` (a qualified name or a ``custom_op``), which runs ``call``."""
    torch.library.register_vmap(op, _rule(call))
