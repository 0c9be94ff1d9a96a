"""Temporally deformable attention (TDA), seed Sec. 3.2, Eq. 1-3.

Hidden states arrive with frames folded into the batch, ``(B*F, H*W, C)``, as diffusers'
temporal layers take them. Per clip of ``F`` frames:

1. a uniform grid of reference points with stride ``spatial_stride`` (Nrs) in x, y and
   ``temporal_stride`` (Nrt) in t: ``Nk = ceil(H/Nrs) * ceil(W/Nrs) * ceil(F/Nrt)`` points;
2. offsets ``alpha * tanh(delta_offset(h W_o))``, where ``delta_offset`` is a strided depthwise
   3D conv (one output per reference point), GELU and a pointwise conv to 3 values (dx, dy, dt)
   per offset group;
3. ``lc4_kernels.tda_attention``: every position of every frame attends to keys and values
   sampled trilinearly at the deformed points; then ``W_h`` and a residual connection.

k and v are projected *before* sampling (the op samples full-resolution key/value maps). As the
projections are linear without bias and Eq. 2 is linear in ``h``, this equals Eq. 1's
projection of the sampled ``h``.

Defaults. ``alpha = 4`` (the paper's default; its ablation tries 2 and 8). Strides: the paper
leaves Nrs and Nrt open. With ``Nrs = 4`` and ``Nrt = 2`` an 8-frame clip at the first UNet
level of a 512 px video (64x64 latents) has ``16 * 16 * 4 = 1024`` key points: a quarter of
the 4096 keys each query sees in the spatial self-attention at that level, so TDA adds at most
about a quarter of the attention cost, and with ``alpha = Nrs`` an offset reaches exactly the
neighbouring reference point, so the deformed points can cover every pixel. ``TDAAdapter``
halves the spatial stride at each coarser UNet level (4, 2, 1, 1), which keeps ``Nk = 1024``
at 64, 32 and 16 latent pixels (512 px input) instead of collapsing to 2x2 grids.

Initialisation: ``W_h`` and the last offset conv start at zero, so a fresh block returns its
input exactly (and the offsets are zero until trained).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

import lc4_kernels


@dataclass(frozen=True)
class TemporalContext:
    """How the frames folded into a batch are laid out, passed to every TDA block.

    num_frames: frames per video (the batch holds ``B * num_frames`` images, video-major).
    latent_size: ``(h, w)`` of the UNet input; each UNet level's size follows from it.
    clip_plan: a :class:`lc4.ccf.ClipPlan` for cross-clip fusion, or ``None`` for one clip
    holding all ``num_frames`` frames.
    """

    num_frames: int
    latent_size: tuple[int, int]
    clip_plan: Optional[object] = None

    def level_size(self, num_tokens: int) -> tuple[int, int]:
        """``(H, W)`` of the UNet level with ``num_tokens = H * W``; diffusers' stride-2 convs
        map a side L to ceil(L / 2)."""
        height, width = self.latent_size
        while height * width > num_tokens:
            height, width = math.ceil(height / 2), math.ceil(width / 2)
        if height * width != num_tokens:
            raise ValueError(
                f"hidden_states: {num_tokens} tokens per frame match no level of a "
                f"{self.latent_size} latent (sides halve with rounding up)")
        return height, width


def reference_grid(frames: int, height: int, width: int, strides: tuple[int, int, int],
                   device=None, dtype=torch.float32) -> torch.Tensor:
    """Reference points ``(frames' * height' * width', 3)`` as (x, y, t), t-major.

    ``strides`` is ``(st, ss, ss)``; point ``j`` along an axis sits at ``j * stride``, the centre
    of the offset conv's window there (odd kernel, padding ``kernel // 2``), so the grid has
    ``ceil(L / stride)`` points per axis and never leaves the volume.
    """
    st, sy, sx = strides
    t = torch.arange(0, frames, st, device=device, dtype=dtype)
    y = torch.arange(0, height, sy, device=device, dtype=dtype)
    x = torch.arange(0, width, sx, device=device, dtype=dtype)
    grid_t, grid_y, grid_x = torch.meshgrid(t, y, x, indexing="ij")
    return torch.stack([grid_x, grid_y, grid_t], dim=-1).reshape(-1, 3)


class TemporallyDeformableAttention(nn.Module):
    """One TDA layer (pre-norm, residual). See the module docstring for the defaults."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        offset_groups: int = 1,
        spatial_stride: int = 4,
        temporal_stride: int = 2,
        alpha: float = 4.0,
        offset_dim: Optional[int] = None,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim: expected a multiple of num_heads={num_heads}, got {dim}")
        if num_heads % offset_groups:
            raise ValueError(f"offset_groups: expected a divisor of num_heads={num_heads}, got {offset_groups}")
        if spatial_stride < 1 or temporal_stride < 1:
            raise ValueError(f"strides: expected >= 1, got spatial {spatial_stride}, temporal {temporal_stride}")
        self.dim, self.num_heads, self.offset_groups = dim, num_heads, offset_groups
        self.spatial_stride, self.temporal_stride, self.alpha = spatial_stride, temporal_stride, float(alpha)
        offset_dim = offset_dim or dim
        # None: lc4_kernels picks; set by the pipeline's ``backend=`` or ``set_tda_backend``.
        self.backend: Optional[str] = None

        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_offset_features = nn.Linear(dim, offset_dim)  # W_o
        kernel = (2 * temporal_stride + 1, 2 * spatial_stride + 1, 2 * spatial_stride + 1)
        self.offset_conv = nn.Conv3d(
            offset_dim, offset_dim, kernel, stride=(temporal_stride, spatial_stride, spatial_stride),
            padding=tuple(k // 2 for k in kernel), groups=offset_dim)
        self.offset_act = nn.GELU()
        self.offset_out = nn.Conv3d(offset_dim, 3 * offset_groups, kernel_size=1)
        self.to_out = nn.Linear(dim, dim)  # W_h
        for layer in (self.offset_out, self.to_out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    # -- pieces ---------------------------------------------------------------------------
    def deformed_points(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` normed features ``(B, F, H, W, C)`` -> points ``(B, Nk, G, 3)`` as (x, y, t)."""
        B, frames, height, width, _ = x.shape
        features = self.to_offset_features(x).permute(0, 4, 1, 2, 3)  # (B, C_o, F, H, W)
        offsets = self.offset_out(self.offset_act(self.offset_conv(features)))
        _, _, fp, hp, wp = offsets.shape
        # Coordinates stay float32 for half inputs: fp16 would move a point by 0.25 px at x = 500.
        coord_dtype = torch.float32 if offsets.dtype in (torch.float16, torch.bfloat16) else offsets.dtype
        offsets = self.alpha * torch.tanh(offsets.to(coord_dtype))
        offsets = offsets.view(B, self.offset_groups, 3, fp * hp * wp).permute(0, 3, 1, 2)
        grid = reference_grid(frames, height, width,
                              (self.temporal_stride, self.spatial_stride, self.spatial_stride),
                              device=x.device, dtype=coord_dtype)
        return grid[None, :, None, :] + offsets

    def _qkv(self, x: torch.Tensor):
        B, frames, height, width, C = x.shape
        heads, head_dim = self.num_heads, C // self.num_heads
        q = self.to_q(x).view(B, frames, height, width, heads, head_dim)
        k = self.to_k(x).view(B, frames, height, width, heads, head_dim)
        v = self.to_v(x).view(B, frames, height, width, heads, head_dim)
        return q, k, v

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """The attention branch for clips ``x`` ``(B, F, H, W, C)`` (not normed), before the
        residual: ``W_h(Concat_i softmax(q_i k~_i^T / sqrt(d)) v~_i)``, shape ``(B, F, H, W, C)``."""
        x = self.norm(x)
        q, k, v = self._qkv(x)
        points = self.deformed_points(x)
        B, frames, height, width, heads, head_dim = q.shape
        out = lc4_kernels.tda_attention(q.reshape(B, -1, heads, head_dim), k, v, points, backend=self.backend)
        return self.to_out(out.reshape(B, frames, height, width, heads * head_dim))

    def compress(self, x: torch.Tensor) -> torch.Tensor:
        """TDA as a compressor (CMPF's ``TDA(y_lum)``): the queries are the features at the
        reference points, so a clip ``(B, F, H, W, C)`` becomes ``(B, Nk, C)`` tokens."""
        if x.dim() != 5 or x.shape[-1] != self.dim:
            raise ValueError(f"x: expected (B, F, H, W, {self.dim}), got {tuple(x.shape)}")
        normed = self.norm(x)
        q, k, v = self._qkv(normed)
        points = self.deformed_points(normed)
        st, ss = self.temporal_stride, self.spatial_stride
        q = q[:, ::st, ::ss, ::ss]
        B, heads, head_dim = q.shape[0], q.shape[-2], q.shape[-1]
        out = lc4_kernels.tda_attention(q.reshape(B, -1, heads, head_dim), k, v, points, backend=self.backend)
        residual = x[:, ::st, ::ss, ::ss].reshape(B, -1, self.dim)
        return residual + self.to_out(out.reshape(B, -1, heads * head_dim))

    # -- the layer ------------------------------------------------------------------------
    def forward(self, hidden_states: torch.Tensor, temporal: TemporalContext) -> torch.Tensor:
        """``hidden_states`` ``(B*F, H*W, C)`` -> same shape, ``h + TDA(h)`` per clip; with a
        clip plan, the per-clip outputs of each frame are fused by the plan's weights (CCF)."""
        if hidden_states.dim() != 3 or hidden_states.shape[-1] != self.dim:
            raise ValueError(f"hidden_states: expected (B*F, H*W, {self.dim}), got {tuple(hidden_states.shape)}")
        frames = temporal.num_frames
        if frames < 1 or hidden_states.shape[0] % frames:
            raise ValueError(
                f"hidden_states: batch {hidden_states.shape[0]} is not a multiple of num_frames={frames}")
        height, width = temporal.level_size(hidden_states.shape[1])
        x = hidden_states.view(hidden_states.shape[0] // frames, frames, height, width, self.dim)
        if temporal.clip_plan is None:
            delta = self.attend(x)
        else:
            delta = temporal.clip_plan.fuse(x, self.attend)
        return hidden_states + delta.reshape_as(hidden_states)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, heads={self.num_heads}, groups={self.offset_groups}, "
                f"Nrs={self.spatial_stride}, Nrt={self.temporal_stride}, alpha={self.alpha}")


def set_tda_backend(module: nn.Module, backend: Optional[str]) -> None:
    """Forces an ``lc4_kernels`` backend (``None``: automatic) in every TDA layer of ``module``."""
    if backend is not None and backend.strip().lower() == "auto":
        backend = None
    if backend is not None:
        lc4_kernels.get_backend(backend)  # ValueError for an unknown name, before any work
    for layer in module.modules():
        if isinstance(layer, TemporallyDeformableAttention):
            layer.backend = backend
