"""Pure-PyTorch reference path, written straight from the seed's Eq. 2 and Eq. 3.

It is the oracle every other backend is tested against, so it favours being obviously right
over being fast: an explicit eight-corner gather and a materialised softmax. Autograd provides
its gradients. Inputs are already validated and normalised to the grouped layouts:
value ``(B, T, H, W, G, C)``, points ``(B, P, G, 3)``.
"""
from __future__ import annotations

import torch


def axis_corners(coord: torch.Tensor, size: int):
    """The two integer neighbours of ``coord`` on an axis of ``size``, their Eq. 2 weights
    ``g(coord, r) = max(0, 1 - |coord - r|)`` and whether they count: neighbours outside
    ``[0, size)`` do not (their clamped index reads a voxel that must not enter the sum, not
    even as 0 times an infinite value).

    Non-finite or far-away coordinates weigh zero everywhere and, because they are replaced
    before any arithmetic, get exactly zero gradient. ``floor`` makes the gradient at an exact
    integer the right-hand one, as ``grid_sample`` does.
    """
    usable = torch.isfinite(coord) & (coord >= -1) & (coord < size)
    safe = torch.where(usable, coord, torch.zeros_like(coord))
    lower = torch.floor(safe).detach()
    frac = safe - lower
    index0 = lower.long()
    index1 = index0 + 1
    zero = torch.zeros_like(frac)
    inside0, inside1 = usable & (index0 >= 0), usable & (index1 < size)
    weight0 = torch.where(inside0, 1 - frac, zero)
    weight1 = torch.where(inside1, frac, zero)
    return (index0.clamp(0, size - 1), weight0, inside0), (index1.clamp(0, size - 1), weight1, inside1)


def trilinear_sample(value: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Eq. 2 for value ``(B, T, H, W, G, C)`` at points ``(B, P, G, 3)`` -> ``(B, P, G, C)``."""
    B, T, H, W, G, C = value.shape
    P = points.shape[1]
    # Weights and sums in the wider of the two dtypes: float32 coordinates stay exact under a
    # half-precision value, and the eight products accumulate in at least float32.
    compute = torch.promote_types(torch.promote_types(value.dtype, points.dtype), torch.float32)
    points = points.to(compute)
    flat = value.reshape(B, T * H * W, G, C)
    x_corners = axis_corners(points[..., 0], W)
    y_corners = axis_corners(points[..., 1], H)
    t_corners = axis_corners(points[..., 2], T)
    out = value.new_zeros(B, P, G, C, dtype=compute)
    for t_index, t_weight, t_inside in t_corners:
        for y_index, y_weight, y_inside in y_corners:
            for x_index, x_weight, x_inside in x_corners:
                voxel = (t_index * H + y_index) * W + x_index  # (B, P, G)
                gathered = flat.gather(1, voxel.unsqueeze(-1).expand(B, P, G, C))
                gathered = torch.where((t_inside & y_inside & x_inside).unsqueeze(-1), gathered, 0)
                out = out + (t_weight * y_weight * x_weight).unsqueeze(-1) * gathered
    return out.to(value.dtype)


def tda_attention(q, k, v, points, scale: float) -> torch.Tensor:
    """Eq. 3 (before ``W_h``): ``softmax(scale * q k~^T) v~`` per batch and head, with
    ``k~``/``v~`` sampled by Eq. 2 at the points of the head's group.

    Shapes: q ``(B, Nq, heads, d)``, k/v ``(B, T, H, W, heads, d)``, points ``(B, Nk, G, 3)``.
    Scores, softmax and products run in at least float32 and the result is cast back.
    """
    heads = q.shape[2]
    groups = points.shape[2]
    compute = torch.promote_types(q.dtype, torch.float32)
    per_head_points = points.repeat_interleave(heads // groups, dim=2)  # (B, Nk, heads, 3)
    k_sampled = trilinear_sample(k.to(compute), per_head_points)  # (B, Nk, heads, d)
    v_sampled = trilinear_sample(v.to(compute), per_head_points)
    return attention_on_sampled(q, k_sampled, v_sampled, scale)


def attention_on_sampled(q, k_sampled, v_sampled, scale: float) -> torch.Tensor:
    """Eq. 3's softmax attention of q ``(B, Nq, heads, d)`` over keys and values already sampled,
    ``(B, Nk, heads, d)`` in the compute dtype; the result in q's dtype."""
    scores = torch.einsum("bqhd,bkhd->bhqk", q.to(k_sampled.dtype), k_sampled) * scale
    probs = torch.softmax(scores, dim=-1)
    out = torch.einsum("bhqk,bkhd->bqhd", probs, v_sampled)
    return out.to(q.dtype)
