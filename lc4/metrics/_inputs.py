"""Shape and range checks shared by the metrics: frames are ``(N, 3, H, W)`` and videos
``(B, T, 3, H, W)``, RGB with values in 0-255 (uint8, or floats on that scale)."""
from __future__ import annotations

import torch


def _check_range(tensor: torch.Tensor, name: str) -> None:
    if tensor.dtype == torch.uint8 or tensor.numel() == 0:
        return
    if not tensor.is_floating_point():
        tensor = tensor.to(torch.float64)  # min/max exist for no unsigned type but uint8
    if torch.isnan(tensor).any():
        raise ValueError(f"{name}: expected RGB values in 0-255, got NaN")
    low, high = tensor.min().item(), tensor.max().item()
    if low < 0 or high > 255:
        raise ValueError(f"{name}: expected RGB values in 0-255, got the range [{low:g}, {high:g}]")


def as_frames(tensor: torch.Tensor, name: str, dtype: torch.dtype | None = torch.float32) -> torch.Tensor:
    """Checks an ``(N, 3, H, W)`` batch of RGB frames in 0-255 and returns it as ``dtype``
    (``None``: unchanged)."""
    if not isinstance(tensor, torch.Tensor) or tensor.dim() != 4 or tensor.shape[1] != 3:
        shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise ValueError(f"{name}: expected RGB frames of shape (N, 3, H, W) in 0-255, got {shape}")
    if tensor.shape[0] == 0:
        raise ValueError(f"{name}: expected at least one frame, got shape {tuple(tensor.shape)}")
    _check_range(tensor, name)
    return tensor if dtype is None else tensor.to(dtype)


def as_videos(tensor: torch.Tensor, name: str, dtype: torch.dtype | None = torch.float32) -> torch.Tensor:
    """Checks a ``(B, T, 3, H, W)`` batch of RGB videos in 0-255 and returns it as ``dtype``
    (``None``: unchanged)."""
    if not isinstance(tensor, torch.Tensor) or tensor.dim() != 5 or tensor.shape[2] != 3:
        shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise ValueError(f"{name}: expected RGB videos of shape (B, T, 3, H, W) in 0-255, got {shape}")
    if tensor.shape[0] == 0 or tensor.shape[1] == 0:
        raise ValueError(f"{name}: expected at least one video of one frame, got shape {tuple(tensor.shape)}")
    _check_range(tensor, name)
    return tensor if dtype is None else tensor.to(dtype)


def check_same_shape(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(
            f"target: expected the same shape as pred {tuple(pred.shape)}, got {tuple(target.shape)}"
        )
