"""``vmap`` rules of the registered ops (forward and backward), so that ``torch.func.vmap`` runs
one kernel launch over the whole mapped batch instead of PyTorch's per-sample fallback loop.

Every tensor argument and every output of the four ops has the batch as its first dimension and
the batch items are independent, so the mapped dimension is folded into the batch: ``(V, B, ...)``
becomes ``(V * B, ...)`` for the call and is split again after it. An unmapped tensor argument is
then repeated V times. The forward ops avoid that copy where only the query side is mapped: the
queries (tda_attention's q) or the points (trilinear_sample's) of one batch item are independent
too, so V sets of them against one shared volume are folded into Nq (or P) instead.
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


def _into_rows(arg: torch.Tensor, dim: int) -> torch.Tensor:
    """``(..V at dim.., B, N, ...)`` -> ``(B, V * N, ...)``."""
    arg = arg.movedim(dim, 1)
    return arg.reshape(arg.shape[0], arg.shape[1] * arg.shape[2], *arg.shape[3:]).contiguous()


def _batch_rule(call: Callable):
    def rule(info, in_dims, *args):
        size = info.batch_size
        arg, dim = args[0], in_dims[0]  # every op's first argument is a tensor
        batch = arg.shape[0] if dim is None else arg.movedim(dim, 0).shape[1]
        out = call(*(_fold(arg, dim, size) for arg, dim in zip(args, in_dims)))
        if isinstance(out, torch.Tensor):
            return out.unflatten(0, (size, batch)), 0
        return tuple(t.unflatten(0, (size, batch)) for t in out), (0,) * len(out)
    return rule


def _sample_rule(call: Callable):
    """trilinear_sample(value, points): only the points mapped -> V point sets per batch item."""
    batch_rule = _batch_rule(call)

    def rule(info, in_dims, value, points):
        if in_dims[0] is not None or in_dims[1] is None:
            return batch_rule(info, in_dims, value, points)
        out = call(value, _into_rows(points, in_dims[1]))  # (B, V * P, G, C)
        return out.unflatten(1, (info.batch_size, -1)), 1
    return rule


def _attention_rule(call: Callable):
    """tda_attention(q, k, v, points, scale): only q mapped -> V query sets per batch item."""
    batch_rule = _batch_rule(call)

    def rule(info, in_dims, q, k, v, points, scale):
        if in_dims[0] is None or any(dim is not None for dim in in_dims[1:4]):
            return batch_rule(info, in_dims, q, k, v, points, scale)
        out, lse = call(_into_rows(q, in_dims[0]), k, v, points, scale)  # (B, V * Nq, ...), (B, heads, V * Nq)
        size = info.batch_size
        return (out.unflatten(1, (size, -1)), lse.unflatten(2, (size, -1))), (1, 2)
    return rule


_RULES = {"trilinear_sample": _sample_rule, "tda_attention": _attention_rule}


def register(op, name: str, call: Callable) -> None:
    """Registers the vmap rule of ``op`` (a qualified name or a ``custom_op``), the op ``name``
    (``tda_attention``, ``tda_attention_backward``, ...), which runs ``call``."""
    torch.library.register_vmap(op, _RULES.get(name, _batch_rule)(call))
