"""Luminance and chroma: Rec. 601 full-range YCbCr (JFIF), used in training and inference.

Why this space rather than CIE-Lab: luma ``Y = 0.299 R + 0.587 G + 0.114 B`` is linear in RGB,
and it is the Y that video codecs store (PyAV/libswscale convert RGB with BT.601 by default),
so a grayscale film's Y plane is the model's input as it is, and an output made of the input's
full-resolution Y plus predicted Cb/Cr keeps its luminance through a yuv420p encode (4:2:0
subsampling touches only chroma). Because the chroma-to-RGB offsets have zero luma, chroma that
would leave the RGB cube is scaled down per pixel (:func:`ycbcr_to_rgb`'s ``fit_gamut``),
which keeps ``Y`` exactly instead of clipping channels and shifting it.

Tensors are float in ``[0, 1]`` (``Y``) and ``[-0.5, 0.5]`` (Cb, Cr), channels at dim -3.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

LUMA_WEIGHTS = (0.299, 0.587, 0.114)
_RGB_TO_YCBCR = torch.tensor([
    [0.299, 0.587, 0.114],
    [-0.168735892, -0.331264108, 0.5],
    [0.5, -0.418687589, -0.081312411],
], dtype=torch.float64)
_YCBCR_TO_RGB = torch.linalg.inv(_RGB_TO_YCBCR)


def _check_channels(name: str, tensor: torch.Tensor, channels: int) -> None:
    if not isinstance(tensor, torch.Tensor) or tensor.dim() < 3 or tensor.shape[-3] != channels:
        shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise ValueError(f"{name}: expected a float tensor (..., {channels}, H, W), got {shape}")


def _apply(matrix: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,...jhw->...ihw", matrix.to(x.dtype).to(x.device), x)


_INTEGER_RANGES = {torch.uint8: 255.0, torch.uint16: 65535.0}


def to_unit(frames: torch.Tensor) -> torch.Tensor:
    """uint8 ``[0, 255]`` or uint16 ``[0, 65535]`` -> float32 ``[0, 1]`` (floats pass through as
    float32); other dtypes are a ValueError."""
    if frames.dtype in _INTEGER_RANGES:
        return frames.float() / _INTEGER_RANGES[frames.dtype]
    if not frames.is_floating_point():
        raise ValueError(f"frames: expected uint8, uint16 or float in [0, 1], got {frames.dtype}")
    return frames.float()


def to_uint8(frames: torch.Tensor) -> torch.Tensor:
    return (frames.clamp(0, 1) * 255.0).round().to(torch.uint8)


def rgb_to_luma(rgb: torch.Tensor) -> torch.Tensor:
    """``(..., 3, H, W)`` RGB -> ``(..., 1, H, W)`` Rec. 601 luma."""
    _check_channels("rgb", rgb, 3)
    return _apply(_RGB_TO_YCBCR[:1], rgb)


def rgb_to_ycbcr(rgb: torch.Tensor) -> torch.Tensor:
    _check_channels("rgb", rgb, 3)
    return _apply(_RGB_TO_YCBCR, rgb)


def ycbcr_to_rgb(ycbcr: torch.Tensor, fit_gamut: bool = True) -> torch.Tensor:
    """``(..., 3, H, W)`` YCbCr -> RGB in ``[0, 1]``. With ``fit_gamut`` chroma is scaled down
    where needed so the result stays in the RGB cube with the same luma; otherwise clipped."""
    _check_channels("ycbcr", ycbcr, 3)
    luma = ycbcr[..., :1, :, :].clamp(0, 1)
    offsets = _apply(_YCBCR_TO_RGB[:, 1:], ycbcr[..., 1:, :, :])  # RGB minus luma; luma(offsets) = 0
    if not fit_gamut:
        return (luma + offsets).clamp(0, 1)
    tiny = torch.finfo(offsets.dtype).tiny
    room = torch.where(offsets > 0, (1 - luma) / offsets.clamp_min(tiny),
                       torch.where(offsets < 0, luma / (-offsets).clamp_min(tiny), torch.ones_like(offsets)))
    scale = room.amin(dim=-3, keepdim=True).clamp(0, 1)
    return (luma + scale * offsets).clamp(0, 1)


def merge_luma_chroma(luma: torch.Tensor, chroma: torch.Tensor, fit_gamut: bool = True) -> torch.Tensor:
    """Full-resolution luma ``(N, 1, H, W)`` plus chroma ``(N, 2, h, w)`` (resized bilinearly to
    ``H x W``) -> RGB ``(N, 3, H, W)``: the chroma transfer onto the original luminance."""
    _check_channels("luma", luma, 1)
    _check_channels("chroma", chroma, 2)
    if luma.dim() != 4 or chroma.dim() != 4 or luma.shape[0] != chroma.shape[0]:
        raise ValueError(f"luma, chroma: expected (N, 1, H, W) and (N, 2, h, w) with one N, "
                         f"got {tuple(luma.shape)} and {tuple(chroma.shape)}")
    if chroma.shape[-2:] != luma.shape[-2:]:
        chroma = F.interpolate(chroma.to(luma.dtype), size=luma.shape[-2:], mode="bilinear", align_corners=False)
    return ycbcr_to_rgb(torch.cat([luma, chroma.to(luma.dtype)], dim=-3), fit_gamut=fit_gamut)
