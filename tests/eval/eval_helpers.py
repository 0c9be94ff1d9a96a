"""Helpers shared by the eval tests (a unique module name: other test folders have conftests)."""
from __future__ import annotations

import numpy as np
import torch

BIKES_SIZE = (68, 160)  # a quarter of bikes.mp4's 272x640, keeping the aspect
BIKES_FRAMES = 12


def degrade(frames: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A plausibly bad colorization: blurred, noisy, and with a colour cast that flickers
    from frame to frame. ``(T, 3, H, W)`` uint8 in and out."""
    generator = torch.Generator().manual_seed(seed)
    x = frames.float()
    kernel = torch.ones(3, 1, 5, 5) / 25
    x = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (2, 2, 2, 2), mode="replicate"), kernel, groups=3)
    gains = 1 + 0.4 * (torch.rand(x.shape[0], 3, 1, 1, generator=generator) - 0.5)
    x = x * gains + 6 * torch.randn(x.shape, generator=generator)
    return x.round().clamp(0, 255).to(torch.uint8)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 -> ``(1, 3, H, W)``."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).unsqueeze(0)
