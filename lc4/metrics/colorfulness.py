"""Colorfulness (Hasler and Suesstrunk 2003, metric M3), per frame."""
from __future__ import annotations

import torch

from ._inputs import as_frames

COLORFULNESS_VARIANTS = ("abs", "hasler")


def colorfulness(frames: torch.Tensor, variant: str = "abs") -> torch.Tensor:
    """Colorfulness of each frame of an ``(N, 3, H, W)`` RGB batch in 0-255; returns ``(N,)``.

    With ``rg = R - G`` and ``yb = (R + G) / 2 - B`` over a frame's pixels,
    ``M = sqrt(std(rg)^2 + std(yb)^2) + 0.3 * sqrt(mean(rg)^2 + mean(yb)^2)``
    (population standard deviation). Two variants:

    - ``"hasler"``: the formula as published, on the signed opponent values.
    - ``"abs"``: ``rg`` and ``yb`` replaced by their absolute values first, as in the
      pyimagesearch code that colorization evaluation scripts (e.g. DDColor's) copy.

    ``lc4 eval`` reports ``"abs"`` by default: the seed paper does not say which it used, and
    its baselines' published numbers come from that common code. A grey frame scores 0 in both.
    """
    if variant not in COLORFULNESS_VARIANTS:
        raise ValueError(f"variant: expected one of {COLORFULNESS_VARIANTS}, got {variant!r}")
    rgb = as_frames(frames, "frames", dtype=torch.float64)
    red, green, blue = rgb.unbind(1)
    rg = red - green
    yb = 0.5 * (red + green) - blue
    if variant == "abs":
        rg, yb = rg.abs(), yb.abs()
    dims = (1, 2)
    std_root = torch.sqrt(rg.var(dim=dims, correction=0) + yb.var(dim=dims, correction=0))
    mean_root = torch.sqrt(rg.mean(dim=dims) ** 2 + yb.mean(dim=dims) ** 2)
    return std_root + 0.3 * mean_root
