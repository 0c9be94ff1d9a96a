"""PSNR per frame, from torchmetrics."""
from __future__ import annotations

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio

from ._inputs import as_frames, check_same_shape


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of each frame pair, over all three RGB channels, with a peak of 255.

    ``pred`` and ``target``: ``(N, 3, H, W)`` in 0-255. Returns ``(N,)``; identical frames give
    ``inf``. A video's PSNR is the mean over its frames (as in the seed's Tab. 1).
    """
    pred = as_frames(pred, "pred", torch.float64)
    target = as_frames(target, "target", torch.float64)
    check_same_shape(pred, target)
    return peak_signal_noise_ratio(pred, target, data_range=255.0, reduction="none", dim=(1, 2, 3))
