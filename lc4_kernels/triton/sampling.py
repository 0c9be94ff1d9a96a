"""Launchers of the trilinear kernels: ``sample`` (forward) and ``sample_backward``."""
from __future__ import annotations

import os

import torch

from . import trilinear_kernels as kernels
from .tuning import cdiv, channel_block

CORNERS = kernels.CORNERS.value


def _coordinates(points: torch.Tensor) -> torch.Tensor:
    # The corner math runs in the coordinates' dtype, at least float32.
    return points.contiguous() if points.dtype in (torch.float32, torch.float64) else points.float().contiguous()


def _geometry(value: torch.Tensor, points: torch.Tensor):
    B, T, H, W, G, C = value.shape
    P = points.shape[1]
    return dict(rows=B * P * G, rows_per_batch=P * G, G=G, C=C, T=T, H=H, W=W)


def _pair(tensors):
    """A list of one or two same-shaped tensors as the kernels' pair (a single one twice)."""
    if not 1 <= len(tensors) <= 2:
        raise ValueError(f"the trilinear kernels take one value or a pair, got {len(tensors)}")
    first, last = tensors[0], tensors[-1]
    if first.shape != last.shape or first.dtype != last.dtype:
        raise ValueError(f"a pair must share shape and dtype, got {tuple(first.shape)} {first.dtype} and "
                         f"{tuple(last.shape)} {last.dtype}")
    return first, last


def sample_values(values, points: torch.Tensor):
    """Eq. 2 for one value or a pair sampled at the same points (one launch): each value
    ``(B, T, H, W, G, C)`` at points ``(B, P, G, 3)`` -> ``(B, P, G, C)``."""
    values = [value.contiguous() for value in values]
    coords = _coordinates(points)
    B, _, _, _, G, C = values[0].shape
    outs = [torch.empty((B, points.shape[1], G, C), dtype=value.dtype, device=value.device) for value in values]
    if outs[0].numel() == 0:
        return outs
    geometry = _geometry(values[0], coords)
    block_c = channel_block(C)
    grid = lambda meta: (cdiv(geometry["rows"], meta["BLOCK_P"]), cdiv(C, block_c), len(values))  # noqa: E731
    value, value2 = _pair(values)
    out, out2 = _pair(outs)
    kernels.sample_forward_kernel[grid](value, value2, coords, out, out2, **geometry, BLOCK_C=block_c)
    return outs


def sample(value: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Eq. 2: value ``(B, T, H, W, G, C)`` at points ``(B, P, G, 3)`` -> ``(B, P, G, C)``."""
    return sample_values([value], points)[0]


SCATTER_MODES = ("atomic", "sorted")
SCATTER_ENV = "LC4_TRITON_SCATTER"


def scatter_mode(default: str = "atomic") -> str:
    """How ``dvalue`` is scattered: ``sorted`` (no atomics, each element written once in the
    value's dtype, the same bits on every run) when deterministic algorithms are enabled, else
    ``default``; ``LC4_TRITON_SCATTER`` forces one (for benchmarks), though never atomics under
    deterministic algorithms."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    forced = os.environ.get(SCATTER_ENV, "").strip().lower()
    if forced and forced not in SCATTER_MODES:
        raise ValueError(f"{SCATTER_ENV}: expected one of {SCATTER_MODES}, got {forced!r}")
    if forced == "atomic" and deterministic:
        raise RuntimeError(f"{SCATTER_ENV}=atomic: the atomic dvalue scatter is not deterministic, but "
                           "torch.use_deterministic_algorithms(True) is set; unset one of them")
    return forced or ("sorted" if deterministic else default)


class CornerTable:
    """Every (row, corner) of a set of points as a voxel key and a weight; for the sorted
    scatter also sorted by key, with the end of each position's run of equal keys. Built once
    and shared by every value sampled at those points."""

    def __init__(self, keys: torch.Tensor, weights: torch.Tensor, mode: str):
        self.keys, self.weights, self.mode = keys, weights, mode
        if mode == "sorted":
            # Fixed-size outputs only (no unique/counts): nothing waits for the device.
            self.sorted_keys, self.order = torch.sort(keys, stable=True)
            self.segment_ends = torch.searchsorted(self.sorted_keys, self.sorted_keys, right=True)


def _points_gradient(values, grads, coords, dpoints, keys, weights):
    geometry = _geometry(values[0], coords)
    block_c = channel_block(geometry["C"])
    grid = lambda meta: (cdiv(geometry["rows"], meta["BLOCK_P"]),)  # noqa: E731
    value, value2 = _pair(values)
    grad, grad2 = _pair(grads)
    kernels.sample_backward_points_kernel[grid](value, grad, value2, grad2, coords, dpoints, keys, weights,
                                                **geometry, PAIR=len(values) == 2, BLOCK_C=block_c)


def _scatter(grads, table: CornerTable, like: torch.Tensor):
    """dvalue of each grad (one or a pair) through the corner table, in like's dtype."""
    B, T, H, W, G, C = like.shape
    entries = table.keys.numel()
    if C == 0:
        return [torch.zeros_like(like) for _ in grads]
    block_c = channel_block(C)
    grid = lambda meta: (cdiv(entries, meta["BLOCK_S"]), cdiv(C, block_c), len(grads))  # noqa: E731
    grad, grad2 = _pair(grads)
    # One buffer per value: outputs of a custom op may not share storage.
    if table.mode == "sorted":
        dvalues = [torch.zeros_like(like) for _ in grads]
        dvalue, dvalue2 = _pair(dvalues)
        kernels.scatter_segments_kernel[grid](grad, grad2, table.weights, table.order, table.sorted_keys,
                                              table.segment_ends, dvalue, dvalue2, entries, G, C, T * H * W,
                                              BLOCK_C=block_c)
        return dvalues
    dvalues = [torch.zeros(like.shape, dtype=torch.float32, device=like.device) for _ in grads]  # atomics add in float32
    dvalue, dvalue2 = _pair(dvalues)
    kernels.scatter_atomic_kernel[grid](grad, grad2, table.keys, table.weights, dvalue, dvalue2, entries, G, C,
                                        T * H * W, BLOCK_C=block_c)
    return [d.to(like.dtype) for d in dvalues]


def sample_backward(grads, values, points: torch.Tensor, scatter: str = "atomic"):
    """Gradients of ``sum_i <grads[i], sample(values[i], points)>`` for one value or a pair of
    the same shape ``(B, T, H, W, G, C)``: one ``dvalue`` per value and one ``dpoints``.
    ``scatter`` is the dvalue scatter outside deterministic mode (see ``scatter_mode``)."""
    coords = _coordinates(points)
    values = [v.contiguous() for v in values]
    grads = [g.contiguous() for g in grads]
    dpoints = torch.empty(coords.shape, dtype=coords.dtype, device=coords.device)
    if coords.numel() == 0:
        return [torch.zeros_like(v) for v in values], dpoints.zero_().to(points.dtype)
    entries = coords.shape[0] * coords.shape[1] * coords.shape[2] * CORNERS
    keys = torch.empty(entries, dtype=torch.int64, device=coords.device)
    weights = torch.empty(entries, dtype=torch.float32, device=coords.device)
    _points_gradient(values, grads, coords, dpoints, keys, weights)
    table = CornerTable(keys, weights, scatter_mode(scatter))
    return _scatter(grads, table, values[0]), dpoints.to(points.dtype)
