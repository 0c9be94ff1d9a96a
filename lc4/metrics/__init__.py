"""The seed paper's six evaluation metrics (Sec. 4.1, Tab. 1), batched, on RGB tensors in 0-255.

Frame metrics take ``(N, 3, H, W)`` and return ``(N,)``; video metrics take
``(B, T, 3, H, W)``. LPIPS and FVD load network weights from local files only.
"""
from .cdc import cdc, channel_histograms, cdc_from_histograms, js_divergence
from .colorfulness import COLORFULNESS_VARIANTS, colorfulness
from .fvd import ClipFeatures, frechet_distance, fvd, i3d_features, load_i3d
from .lpips import LPIPS, load_lpips, lpips
from .psnr import psnr
from .ssim import ssim
from .weights import MissingWeightsError

__all__ = [
    "COLORFULNESS_VARIANTS", "ClipFeatures", "LPIPS", "MissingWeightsError",
    "cdc", "cdc_from_histograms", "channel_histograms", "colorfulness", "frechet_distance",
    "fvd", "i3d_features", "js_divergence", "load_i3d", "load_lpips", "lpips", "psnr", "ssim",
]
