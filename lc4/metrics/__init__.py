"""The seed paper's evaluation metrics (Sec. 4.1, Tab. 1), batched, on RGB tensors in 0-255.

Frame metrics take ``(N, 3, H, W)`` and return ``(N,)``; video metrics take
``(B, T, 3, H, W)``.
"""
from .cdc import cdc, cdc_from_histograms, channel_histograms, js_divergence
from .colorfulness import COLORFULNESS_VARIANTS, colorfulness
from .psnr import psnr
from .ssim import ssim

__all__ = [
    "COLORFULNESS_VARIANTS", "cdc", "cdc_from_histograms", "channel_histograms", "colorfulness",
    "js_divergence", "psnr", "ssim",
]
