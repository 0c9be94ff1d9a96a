"""The toy domain's named colours and shapes, and how a predicted colour is read back as a name.

Object colours are chromatic only, chosen so that their hues (the angle of the Rec. 601 chroma
vector ``(Cb, Cr)``, :mod:`lc4.color`, the colour space the model predicts in) lie at least
about 30 degrees apart: a colour is then named by the nearest palette hue, and a grey output
(no chroma) names none. Backgrounds may also be achromatic.

An object is drawn in its colour's hue at a luma of its own (:func:`object_rgb`): were every
colour drawn at its palette RGB, each would have its own grey level (purple 77 ... yellow 212
of 255) and the grey input alone would name it, so a model could ignore the caption.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..color import rgb_to_luma, rgb_to_ycbcr, ycbcr_to_rgb

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
# Shapes a 16x16 latent still tells apart (a hexagon or a diamond drawn a few latent pixels wide
# looked like a circle or a square, and the caption binds colours to objects by shape).
SHAPES = ("circle", "square", "triangle", "star")
TEXTURES = ("plain", "stripes", "checker", "noise")

# An object's luma is drawn from this range; its chroma has this magnitude (Cb, Cr in [-0.5, 0.5]),
# less where the RGB cube is narrower at that luma.
OBJECT_LUMA_RANGE = (0.3, 0.7)
OBJECT_CHROMA = 0.24

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


def object_rgb(color: str, luma: float) -> np.ndarray:
    """``(3,)`` RGB (0-255, float) of palette colour ``color`` drawn at ``luma`` (0-1): its hue,
    chroma :data:`OBJECT_CHROMA` (scaled down to fit the RGB cube, keeping luma and hue)."""
    chroma = chroma_of(OBJECT_COLORS[color])
    chroma = OBJECT_CHROMA * chroma / np.linalg.norm(chroma)
    ycbcr = torch.tensor([luma, *chroma], dtype=torch.float32).reshape(1, 3, 1, 1)
    return ycbcr_to_rgb(ycbcr)[0, :, 0, 0].double().numpy() * 255.0


def luma_of(rgb) -> float:
    """Rec. 601 luma (0-1) of one RGB colour (0-255)."""
    rgb = torch.as_tensor(np.asarray(rgb, dtype=np.float32) / 255.0).reshape(1, 3, 1, 1)
    return float(rgb_to_luma(rgb))
