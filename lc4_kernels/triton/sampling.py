"""Launchers of the trilinear kernels: ``sample`` (forward) and ``sample_backward``."""
from __future__ import annotations

import os

import torch
import triton

from . import trilinear_kernels as kernels
from .tuning import channel_block

CORNERS = kernels.CORNERS.value


def _coordinates(points: torch.Tensor) -> torch.Tensor:
    # The corner math runs in the coordinates' dtype, at least float32.
    return points.contiguous() if points.dtype in (torch.float32, torch.float64) else points.float().contiguous()


def _geometry(value: torch.Tensor, points: torch.Tensor):
    B, T, H, W, G, C = value.shape
    P = points.shape[1]
    return dict(rows=B * P * G, rows_per_batch=P * G, G=G, C=C, T=T, H=H, W=W)


def sample(value: torch.Tensor, points: torch.Tensor, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Eq. 2: value ``(B, T, H, W, G, C)`` at points ``(B, P, G, 3)`` -> ``(B, P, G, C)``."""
    value = value.contiguous()
    coords = _coordinates(points)
    B, _, _, _, G, C = value.shape
    out = torch.empty((B, points.shape[1], G, C), dtype=out_dtype or value.dtype, device=value.device)
    geometry = _geometry(value, coords)
    if out.numel() == 0:
        return out
    block_c = channel_block(C)
    grid = lambda meta: (triton.cdiv(geometry["rows"], meta["BLOCK_P"]), triton.cdiv(C, block_c))  # noqa: E731
    kernels.sample_forward_kernel[grid](value, coords, out, **geometry, BLOCK_C=block_c)
    return out


SCATTER_MODES = ("atomic", "sorted")
SCATTER_ENV = "LC4_TRITON_SCATTER"


def scatter_mode() -> str:
    """How ``dvalue`` is scattered: ``sorted`` (no atomics, the same bits on every run) when
    deterministic algorithms are enabled, else ``atomic``; ``LC4_TRITON_SCATTER`` forces one
    (for benchmarks), though never atomics under deterministic algorithms."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    forced = os.environ.get(SCATTER_ENV, "").strip().lower()
    if forced and forced not in SCATTER_MODES:
        raise ValueError(f"{SCATTER_ENV}: expected one of {SCATTER_MODES}, got {forced!r}")
    if forced == "atomic" and deterministic:
        raise RuntimeError(f"{SCATTER_ENV}=atomic: the atomic dvalue scatter is not deterministic, but "
                           "torch.use_deterministic_algorithms(True) is set; unset one of them")
    return forced or ("sorted" if deterministic else "atomic")


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


def _points_gradient(value, grad, coords, dpoints, *, accumulate: bool, table_out=None):
    geometry = _geometry(value, coords)
    keys, weights = table_out if table_out is not None else (dpoints, dpoints)  # unused when not written
    block_c = channel_block(geometry["C"])
    grid = lambda meta: (triton.cdiv(geometry["rows"], meta["BLOCK_P"]),)  # noqa: E731
    kernels.sample_backward_points_kernel[grid](value, grad, coords, dpoints, keys, weights, **geometry,
                                                ACCUMULATE=accumulate, WRITE_CORNERS=table_out is not None,
                                                BLOCK_C=block_c)


def _scatter(grad: torch.Tensor, table: CornerTable, like: torch.Tensor) -> torch.Tensor:
    B, T, H, W, G, C = like.shape
    entries = table.keys.numel()
    if C == 0:
        return torch.zeros_like(like)
    block_c = channel_block(C)
    grid = lambda meta: (triton.cdiv(entries, meta["BLOCK_S"]), triton.cdiv(C, block_c))  # noqa: E731
    if table.mode == "sorted":
        dvalue = torch.zeros_like(like)
        kernels.scatter_segments_kernel[grid](grad, table.weights, table.order, table.sorted_keys, table.segment_ends,
                                              dvalue, entries, G, C, T * H * W, BLOCK_C=block_c)
        return dvalue
    dvalue = torch.zeros(like.shape, dtype=torch.float32, device=like.device)  # atomics add in float32
    kernels.scatter_atomic_kernel[grid](grad, table.keys, table.weights, dvalue, entries, G, C, T * H * W,
                                        BLOCK_C=block_c)
    return dvalue.to(like.dtype)


def sample_backward(grads, values, points: torch.Tensor):
    """Gradients of ``sum_i <grads[i], sample(values[i], points)>``: one ``dvalue`` per value and
    one ``dpoints``. All values share the points' shape ``(B, T, H, W, G, C)``."""
    coords = _coordinates(points)
    values = [v.contiguous() for v in values]
    grads = [g.contiguous() for g in grads]
    dpoints = torch.empty(coords.shape, dtype=coords.dtype, device=coords.device)
    if coords.numel() == 0:
        return [torch.zeros_like(v) for v in values], dpoints.zero_().to(points.dtype)
    entries = coords.shape[0] * coords.shape[1] * coords.shape[2] * CORNERS
    keys = torch.empty(entries, dtype=torch.int64, device=coords.device)
    weights = torch.empty(entries, dtype=torch.float32, device=coords.device)
    for i, (value, grad) in enumerate(zip(values, grads)):
        _points_gradient(value, grad, coords, dpoints, accumulate=i > 0, table_out=(keys, weights) if i == 0 else None)
    table = CornerTable(keys, weights, scatter_mode())
    dvalues = [_scatter(grad, table, value) for value, grad in zip(values, grads)]
    return dvalues, dpoints.to(points.dtype)
