"""Color Distribution Consistency (CDC; Liu et al., TCVC), a temporal-consistency score."""
from __future__ import annotations

from typing import Sequence

import torch

from ._inputs import as_frames, as_videos

DEFAULT_DILATIONS = (1, 2, 4)
NUM_BINS = 256


def channel_histograms(frames: torch.Tensor) -> torch.Tensor:
    """Per-channel 256-bin histograms of ``(N, 3, H, W)`` RGB frames, divided by the pixel count.

    Float inputs are rounded to the nearest integer level. Returns ``(N, 3, 256)`` float64,
    each histogram summing to 1.
    """
    frames = as_frames(frames, "frames", dtype=None)
    levels = frames.long() if frames.dtype == torch.uint8 else frames.round().long()
    num_frames, channels, height, width = levels.shape
    # Offset each (frame, channel) into its own run of 256 bins so one bincount does them all.
    offsets = torch.arange(num_frames * channels, device=levels.device).view(num_frames, channels, 1, 1) * NUM_BINS
    counts = torch.bincount((levels + offsets).flatten(), minlength=num_frames * channels * NUM_BINS)
    return counts.view(num_frames, channels, NUM_BINS).to(torch.float64) / (height * width)


def js_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence in nats (natural log, as ``scipy.stats.entropy``) between
    distributions along the last dimension; ``0 log 0`` counts as 0. Range: 0 to ln 2."""
    if p.shape != q.shape:
        raise ValueError(f"q: expected the same shape as p {tuple(p.shape)}, got {tuple(q.shape)}")
    mixture = 0.5 * (p + q)

    def kl_to_mixture(r: torch.Tensor) -> torch.Tensor:
        return (torch.xlogy(r, r) - torch.xlogy(r, mixture)).sum(dim=-1)

    return 0.5 * kl_to_mixture(p) + 0.5 * kl_to_mixture(q)


def cdc_from_histograms(histograms: torch.Tensor, dilations: Sequence[int] = DEFAULT_DILATIONS) -> torch.Tensor:
    """CDC of one video from its ``(T, 3, 256)`` per-frame histograms (raw JS, not scaled).

    For each dilation ``d``: the JS divergence between frames ``i`` and ``i + d``, averaged over
    the pairs; then averaged over the dilations (each weighted equally) and the channels.
    Dilations longer than the video are left out of the average; a single frame is an error.
    """
    if histograms.dim() != 3 or histograms.shape[1:] != (3, NUM_BINS):
        raise ValueError(f"histograms: expected shape (T, 3, {NUM_BINS}), got {tuple(histograms.shape)}")
    if not dilations or min(dilations) <= 0:
        raise ValueError(f"dilations: expected positive frame distances, got {tuple(dilations)}")
    num_frames = histograms.shape[0]
    per_dilation = [
        js_divergence(histograms[:-d], histograms[d:]).mean(dim=0)  # (3,): mean over pairs
        for d in dilations
        if d < num_frames
    ]
    if not per_dilation:
        raise ValueError(f"histograms: CDC needs at least 2 frames, got {num_frames}")
    return torch.stack(per_dilation).mean()


def cdc(videos: torch.Tensor, dilations: Sequence[int] = DEFAULT_DILATIONS, scale: float = 1000.0) -> torch.Tensor:
    """Color Distribution Consistency of each video in a ``(B, T, 3, H, W)`` RGB batch in 0-255.

    Per channel, each frame's 256-bin histogram normalised by the pixel count; the
    Jensen-Shannon divergence (natural log) between frames ``i`` and ``i + d`` for each ``d`` in
    ``dilations`` (default 1, 2, 4, each weighted 1/3), averaged over the pairs and the RGB
    channels. Returns ``(B,)``, multiplied by ``scale`` (1000, as the seed's tables report it;
    pass 1 for the raw divergence). Lower is more consistent; identical frames give 0. The
    score of a set of clips is the mean of the clips' scores.
    """
    videos = as_videos(videos, "videos", dtype=None)
    scores = [cdc_from_histograms(channel_histograms(video), dilations) for video in videos]
    return torch.stack(scores) * scale
