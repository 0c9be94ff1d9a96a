"""Deterministic inputs for a benchmark case: queries, key/value maps and key points."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .shapes import OFFSET_RANGE, Case


@dataclass
class AttentionInputs:
    q: torch.Tensor  # (B, Nq, heads, d)
    k: torch.Tensor  # (B, T, H, W, heads, d)
    v: torch.Tensor
    points: torch.Tensor  # (B, Nk, G, 3), float32 (x, y, t) in pixel units
    grad_out: torch.Tensor  # (B, Nq, heads, d)

    @property
    def scale(self) -> float:
        return self.q.shape[-1] ** -0.5


@dataclass
class SampleInputs:
    value: torch.Tensor  # (B, T, H, W, G, C)
    points: torch.Tensor  # (B, P, G, 3)
    grad_out: torch.Tensor  # (B, P, G, C)


def reference_grid(case: Case) -> torch.Tensor:
    """``(Nk, 3)`` points (x, y, t) at ``j * stride`` along each axis, t-major, as the lc4 TDA
    module places them."""
    t = torch.arange(0, case.frames, case.temporal_stride, dtype=torch.float32)
    y = torch.arange(0, case.height, case.spatial_stride, dtype=torch.float32)
    x = torch.arange(0, case.width, case.spatial_stride, dtype=torch.float32)
    grid_t, grid_y, grid_x = torch.meshgrid(t, y, x, indexing="ij")
    return torch.stack([grid_x, grid_y, grid_t], dim=-1).reshape(-1, 3)


def key_points(case: Case, generator: torch.Generator) -> torch.Tensor:
    """``(B, Nk, G, 3)``: the reference grid plus offsets ``alpha * tanh(.)`` as a trained TDA
    module produces them; some points land outside the volume, as trained offsets do."""
    grid = reference_grid(case).reshape(1, -1, 1, 3)
    assert grid.shape[1] == case.nk
    offsets = OFFSET_RANGE * torch.tanh(0.5 * torch.randn(case.batch, case.nk, case.groups, 3, generator=generator))
    return grid + offsets


def attention_inputs(case: Case, device: torch.device, dtype: torch.dtype, seed: int = 0) -> AttentionInputs:
    gen = torch.Generator().manual_seed(seed)
    B, heads, d = case.batch, case.heads, case.head_dim
    volume = (B, case.frames, case.height, case.width, heads, d)

    def normal(*shape):
        return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

    return AttentionInputs(q=normal(B, case.nq, heads, d), k=normal(*volume), v=normal(*volume),
                           points=key_points(case, gen).to(device), grad_out=normal(B, case.nq, heads, d))


def sample_inputs(case: Case, device: torch.device, dtype: torch.dtype, seed: int = 0) -> SampleInputs:
    """The sampling op on the TDA layer's k map (channels split into the G offset groups)."""
    gen = torch.Generator().manual_seed(seed)
    G = case.groups
    C = case.channels // G
    value = torch.randn(case.batch, case.frames, case.height, case.width, G, C, generator=gen)
    points = key_points(case, gen)
    grad_out = torch.randn(case.batch, case.nk, G, C, generator=gen)
    return SampleInputs(value=value.to(device=device, dtype=dtype), points=points.to(device),
                        grad_out=grad_out.to(device=device, dtype=dtype))
