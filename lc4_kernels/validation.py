"""Argument checks shared by every backend: a ValueError that names the argument and the
shape, dtype or device expected, before any kernel sees the data."""
from __future__ import annotations

import torch

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _describe(t: torch.Tensor) -> str:
    return f"shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device}"


def _require_tensor(name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"{name} must be a floating tensor (float16, bfloat16, float32, float64); got {_describe(t)}")


def _require_same_device(names_and_tensors) -> None:
    (first_name, first), *rest = names_and_tensors
    for name, t in rest:
        if t.device != first.device:
            raise ValueError(f"{name} must be on the same device as {first_name} ({first.device}); got {_describe(t)}")


def _require_volume(name: str, t: torch.Tensor, layout: str) -> None:
    if any(s == 0 for s in t.shape[1:4]):
        raise ValueError(f"{name} must have non-empty T, H, W axes ({layout}); got {_describe(t)}")


def normalize_sample_args(value: torch.Tensor, points: torch.Tensor):
    """Returns (value6, points4, grouped): value as (B, T, H, W, G, C), points as (B, P, G, 3);
    ``grouped`` is False when the caller used the 5-D/3-D form, whose output drops the G axis."""
    _require_tensor("value", value)
    _require_tensor("points", points)
    _require_same_device([("value", value), ("points", points)])
    if value.dim() == 5:
        grouped = False
        layout, points_layout = "(B, T, H, W, C)", "(B, P, 3)"
        if points.dim() != 3:
            raise ValueError(f"points must be {points_layout} for a 5-D value {layout}; got {_describe(points)}")
        value6, points4 = value.unsqueeze(4), points.unsqueeze(2)
    elif value.dim() == 6:
        grouped = True
        layout, points_layout = "(B, T, H, W, G, C)", "(B, P, G, 3)"
        if points.dim() != 4:
            raise ValueError(f"points must be {points_layout} for a 6-D value {layout}; got {_describe(points)}")
        value6, points4 = value, points
    else:
        raise ValueError(f"value must be (B, T, H, W, G, C) or (B, T, H, W, C); got {_describe(value)}")
    _require_volume("value", value6, layout)
    B, _, _, _, G, _ = value6.shape
    if points4.shape[-1] != 3:
        raise ValueError(f"points must end in a coordinate axis of size 3 (x, y, t), {points_layout}; got {_describe(points)}")
    if points4.shape[0] != B or points4.shape[2] != G:
        raise ValueError(
            f"points must be {points_layout} with B={B}" + (f", G={G}" if grouped else "")
            + f" to match value {tuple(value.shape)}; got {_describe(points)}")
    return value6, points4, grouped


def check_attention_args(q, k, v, points) -> None:
    for name, t in (("q", q), ("k", k), ("v", v), ("points", points)):
        _require_tensor(name, t)
    _require_same_device([("q", q), ("k", k), ("v", v), ("points", points)])
    if q.dim() != 4:
        raise ValueError(f"q must be (B, Nq, heads, d); got {_describe(q)}")
    B, _, heads, d = q.shape
    for name, t in (("k", k), ("v", v)):
        if t.dim() != 6:
            raise ValueError(f"{name} must be (B, T, H, W, heads, d); got {_describe(t)}")
        _require_volume(name, t, "(B, T, H, W, heads, d)")
        if t.shape[0] != B or t.shape[4] != heads or t.shape[5] != d:
            raise ValueError(f"{name} must be (B, T, H, W, heads, d) with B={B}, heads={heads}, d={d} "
                             f"to match q; got {_describe(t)}")
    if v.shape != k.shape:
        raise ValueError(f"v must have the shape of k {tuple(k.shape)}; got {_describe(v)}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k and v must share one dtype; got q {q.dtype}, k {k.dtype}, v {v.dtype}")
    if points.dim() != 4 or points.shape[-1] != 3:
        raise ValueError(f"points must be (B, Nk, G, 3) with (x, y, t) last; got {_describe(points)}")
    if points.shape[0] != B:
        raise ValueError(f"points must be (B, Nk, G, 3) with B={B}; got {_describe(points)}")
    if points.shape[1] == 0:
        raise ValueError(f"points must hold at least one key point (Nk > 0), (B, Nk, G, 3); got {_describe(points)}")
    groups = points.shape[2]
    if groups == 0 or heads % groups != 0:
        raise ValueError(f"points must be (B, Nk, G, 3) with G dividing heads={heads}; got G={groups}")
