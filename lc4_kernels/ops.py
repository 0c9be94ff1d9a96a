"""The two public ops: validation, autocast policy, backend choice, then the backend's kernel."""
from __future__ import annotations

from typing import Optional

import torch

from . import backends, validation


_AUTOCAST_ELIGIBLE = (torch.float32, torch.float16, torch.bfloat16)


def _autocast_dtype(device: torch.device) -> Optional[torch.dtype]:
    if device.type in ("cpu", "cuda") and torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return None


def _autocast(cast: Optional[torch.dtype], *tensors):
    """The tensors as autocast hands them to an op that runs in its dtype: floating tensors cast,
    float64 left alone (as PyTorch's own autocast does), anything else passed on for validation."""
    if cast is None:
        return tensors
    return tuple(t.to(cast) if isinstance(t, torch.Tensor) and t.dtype in _AUTOCAST_ELIGIBLE else t
                 for t in tensors)


def _coordinates(points: torch.Tensor, under_autocast: bool) -> torch.Tensor:
    # Coordinates stay float32 under autocast: half precision would move a point by up to
    # 0.25 pixel at x = 500.
    return points.float() if under_autocast and points.dtype in (torch.float16, torch.bfloat16) else points


def _autocast_attention_inputs(q, k, v):
    cast = _autocast_dtype(q.device) if isinstance(q, torch.Tensor) else None  # else validation names q
    return (*_autocast(cast, q, k, v), cast is not None)


def backend_for(op: str, *tensors, backend: Optional[str] = None) -> str:
    """Name of the backend a call to ``op`` ('trilinear_sample' or 'tda_attention') with these
    inputs would run, without running it."""
    if op == "trilinear_sample":
        value, _, _ = validation.normalize_sample_args(*tensors)
        (value,) = _autocast(_autocast_dtype(value.device), value)
        return backends.select(backend, value.device, value.dtype, None).name
    if op == "tda_attention":
        if len(tensors) != 4:
            raise TypeError(f"tda_attention takes q, k, v and points, got {len(tensors)} tensors")
        q, k, v, _ = _autocast_attention_inputs(*tensors[:3])
        validation.check_attention_args(q, k, v, tensors[3])
        return backends.select(backend, q.device, q.dtype, q.shape[-1]).name
    raise ValueError(f"op must be 'trilinear_sample' or 'tda_attention', got {op!r}")


def trilinear_sample(value: torch.Tensor, points: torch.Tensor, *, backend: Optional[str] = None) -> torch.Tensor:
    """Samples ``value`` at ``points`` by trilinear interpolation (seed Eq. 2, zeros outside).

    value: ``(B, T, H, W, G, C)`` channels-last volume, or ``(B, T, H, W, C)`` for G = 1.
    points: ``(B, P, G, 3)`` (or ``(B, P, 3)``) holding (x, y, t) in pixel-index units:
    x in [0, W-1], y in [0, H-1], t in [0, T-1]. Returns ``(B, P, G, C)`` (or ``(B, P, C)``),
    differentiable w.r.t. ``value`` and ``points``.
    """
    value6, points4, grouped = validation.normalize_sample_args(value, points)
    cast = _autocast_dtype(value6.device)
    (value6,) = _autocast(cast, value6)
    points4 = _coordinates(points4, cast is not None)
    chosen = backends.select(backend, value6.device, value6.dtype, None)
    out = chosen.trilinear_sample(value6, points4)
    return out if grouped else out.squeeze(2)


def tda_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, points: torch.Tensor,
                  scale: Optional[float] = None, *, backend: Optional[str] = None) -> torch.Tensor:
    """Temporally deformable attention (seed Eq. 1-3 without the projections).

    q ``(B, Nq, heads, d)``; k, v ``(B, T, H, W, heads, d)`` full-resolution key/value maps;
    points ``(B, Nk, G, 3)`` with heads % G == 0 (head h uses group h // (heads // G)).
    Returns ``softmax(scale * q @ k~^T) @ v~`` as ``(B, Nq, heads, d)``, where k~, v~ are k, v
    sampled at the points by Eq. 2 and ``scale`` defaults to ``d ** -0.5``.
    """
    q, k, v, under_autocast = _autocast_attention_inputs(q, k, v)
    validation.check_attention_args(q, k, v, points)
    if scale is None:
        # d = 0 leaves every logit 0 whatever the scale.
        scale = q.shape[-1] ** -0.5 if q.shape[-1] > 0 else 1.0
    points = _coordinates(points, under_autocast)
    chosen = backends.select(backend, q.device, q.dtype, q.shape[-1])
    return chosen.tda_attention(q, k, v, points, float(scale))
