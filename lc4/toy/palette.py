"""The toy domain's named colours and shapes, and how a predicted colour is read back as a name.

Object colours are chromatic only, chosen so that their hues (the angle of the Rec. 601 chroma
vector ``(Cb, Cr)``, :mod:`lc4.color`, the colour space the model predicts in) lie at least
about 30 degrees apart: a colour is then named by the nearest palette hue, and a grey output
(no chroma) names none. Backgrounds may also be achromatic.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..color import rgb_to_ycbcr

OBJECT_COLORS: dict[str, tuple[int, int, int]] = {
    "red": (225, 30, 30),
    "orange": (250, 125, 10),
    "yellow": (245, 230, 30),
    "lime": (140, 235, 30),
    "green": (20, 160, 30),
    "teal": (0, 160, 150),
    "blue": (30, 90, 240),
    "purple": (120, 30, 210),
    "pink": (250, 80, 200),
}
BACKGROUND_COLORS: dict[str, tuple[int, int, int]] = {
    **OBJECT_COLORS, "white": (235, 235, 235), "gray": (128, 128, 128), "black": (25, 25, 25),
}
SHAPES = ("circle", "square", "triangle", "star", "diamond", "hexagon")
TEXTURES = ("plain", "stripes", "checker", "noise")

# Below this chroma magnitude (Cb, Cr in [-0.5, 0.5]) a mean colour counts as grey: no name.
MIN_CHROMA = 0.04


def chroma_of(rgb) -> np.ndarray:
    """``(..., 3)`` RGB (0-255) -> ``(..., 2)`` Rec. 601 ``(Cb, Cr)``."""
    rgb = torch.as_tensor(np.asarray(rgb, dtype=np.float32) / 255.0)
    flat = rgb.reshape(-1, 3, 1, 1)
    return rgb_to_ycbcr(flat)[:, 1:, 0, 0].reshape(*rgb.shape[:-1], 2).numpy()


def hue_angle(chroma) -> np.ndarray:
    """Degrees in [0, 360) of ``(..., 2)`` chroma vectors."""
    chroma = np.asarray(chroma, dtype=np.float64)
    return np.degrees(np.arctan2(chroma[..., 1], chroma[..., 0])) % 360


PALETTE_HUES: dict[str, float] = {name: float(hue_angle(chroma_of(rgb))) for name, rgb in OBJECT_COLORS.items()}


def hue_distance(a: float, b: float) -> float:
    return abs((a - b + 180) % 360 - 180)


def name_of_chroma(mean_chroma) -> str | None:
    """The palette colour whose hue is nearest the hue of ``mean_chroma`` ``(Cb, Cr)``, or
    ``None`` when it is too grey to have a hue."""
    if math.hypot(*np.asarray(mean_chroma, dtype=np.float64)) < MIN_CHROMA:
        return None
    hue = float(hue_angle(mean_chroma))
    return min(PALETTE_HUES, key=lambda name: hue_distance(hue, PALETTE_HUES[name]))
