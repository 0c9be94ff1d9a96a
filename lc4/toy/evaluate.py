"""The paper's three claims measured on toy clips.

1. Colour accuracy: each object's output colour, named by the palette hue nearest the mean
   chroma of the pixels it shows (eroded by one pixel against edge bleeding), against the
   colour its caption names (:func:`color_accuracy`).
2. Controllability: the same grey clip colorized with two objects' colours swapped in the
   prompt must show them swapped (:func:`swap_succeeded`); how far the swapped words move each
   object's hue is the graded form of the same claim (:func:`swap_hue_shifts`).
3. Temporal consistency: CDC (:func:`lc4.metrics.cdc.cdc`) with TDA against TDA bypassed, and
   on long clips with CCF against clip-by-clip inference (:func:`compare_cdc`).

Outputs are ``(F, H, W, 3)`` uint8 RGB frames at the clip's size.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from scipy.ndimage import binary_erosion

from ..metrics.cdc import cdc
from .generator import ClipSpec, ToyClip
from .palette import MIN_CHROMA, OBJECT_COLORS, PALETTE_HUES, chroma_of, hue_angle, hue_distance, name_of_chroma


def object_pixels(masks: np.ndarray, k: int) -> np.ndarray:
    """``(F, H, W)`` bool: object ``k``'s visible pixels, each frame's mask eroded by one pixel
    where that leaves any."""
    kept = []
    for mask in masks[:, k]:
        eroded = binary_erosion(mask)
        kept.append(eroded if eroded.any() else mask)
    return np.stack(kept)


def object_mean_chromas(frames: np.ndarray, masks: np.ndarray) -> list[Optional[np.ndarray]]:
    """The mean output ``(Cb, Cr)`` of each object's pixels (``None``: not visible)."""
    chroma = chroma_of(frames)  # (F, H, W, 2)
    means = []
    for k in range(masks.shape[1]):
        pixels = object_pixels(masks, k)
        means.append(chroma[pixels].mean(axis=0) if pixels.any() else None)
    return means


def object_color_names(frames: np.ndarray, masks: np.ndarray) -> list[Optional[str]]:
    """The palette name of each object's mean output colour (``None``: grey or not visible)."""
    return [None if mean is None else name_of_chroma(mean) for mean in object_mean_chromas(frames, masks)]


def object_hits(frames: np.ndarray, clip: ToyClip, spec: Optional[ClipSpec] = None) -> list[bool]:
    """Per object: does its output colour match the colour ``spec`` (default: the clip's own)
    names for it?"""
    spec = spec or clip.spec
    return [name == obj.color for name, obj in zip(object_color_names(frames, clip.masks), spec.objects)]


def color_accuracy(outputs: Sequence[np.ndarray], clips: Sequence[ToyClip]) -> float:
    """Fraction of all objects of ``clips`` whose output colour matches their caption."""
    hits = [hit for frames, clip in zip(outputs, clips, strict=True) for hit in object_hits(frames, clip)]
    if not hits:
        raise ValueError("clips: no objects to score")
    return float(np.mean(hits))


def color_accuracy_by_object_count(outputs: Sequence[np.ndarray], clips: Sequence[ToyClip]) -> dict[int, float]:
    """:func:`color_accuracy` over the clips of each object count (1, 2, 3, ...): with one
    object any colour word of the caption is the right one; with more, the colour must also
    land on the object the caption gives it to."""
    counts = sorted({len(clip.spec.objects) for clip in clips})
    return {n: color_accuracy(*zip(*[(o, c) for o, c in zip(outputs, clips, strict=True) if len(c.spec.objects) == n]))
            for n in counts}


def color_accuracy_by_color(outputs: Sequence[np.ndarray], clips: Sequence[ToyClip]) -> dict[str, float]:
    """:func:`color_accuracy` over the objects of each colour the captions name, in palette
    order (colours no caption names are left out): colours whose hues lie close to a palette
    neighbour's are named right only while the output's hue stays within half that gap."""
    hits: dict[str, list[bool]] = {}
    for frames, clip in zip(outputs, clips, strict=True):
        for obj, hit in zip(clip.spec.objects, object_hits(frames, clip)):
            hits.setdefault(obj.color, []).append(hit)
    return {color: float(np.mean(hits[color])) for color in OBJECT_COLORS if color in hits}


def swapped_spec(spec: ClipSpec, first: int = 0, second: int = 1) -> ClipSpec:
    """``spec`` with the colours of objects ``first`` and ``second`` exchanged."""
    colors = [o.color for o in spec.objects]
    colors[first], colors[second] = colors[second], colors[first]
    return spec.with_colors(colors)


def swap_succeeded(original: np.ndarray, swapped: np.ndarray, clip: ToyClip, first: int = 0, second: int = 1) -> bool:
    """Both swapped objects take their own caption colour under the original prompt and the
    other's under the swapped prompt."""
    names_original = object_color_names(original, clip.masks)
    names_swapped = object_color_names(swapped, clip.masks)
    a, b = clip.spec.objects[first].color, clip.spec.objects[second].color
    return (names_original[first], names_original[second], names_swapped[first], names_swapped[second]) == (a, b, b, a)


def swap_hue_shifts(original: np.ndarray, swapped: np.ndarray, clip: ToyClip, first: int = 0,
                    second: int = 1) -> list[float]:
    """For each of the two swapped objects, the share of the hue distance between the two named
    colours that its output hue moves towards its new colour when the prompt is swapped: 1 is
    the full swap, 0 an object the words do not steer (a model that paints every object the
    caption's mean colour, or by its shape, whatever the words say), negative a move away.
    :func:`swap_succeeded` asks for the full swap of both; this says how much of it there is.
    An object too grey to have a hue under either prompt scores 0."""
    means_original = object_mean_chromas(original, clip.masks)
    means_swapped = object_mean_chromas(swapped, clip.masks)
    old = [clip.spec.objects[first].color, clip.spec.objects[second].color]
    shifts = []
    for k, before, after in ((first, old[0], old[1]), (second, old[1], old[0])):
        chromas = (means_original[k], means_swapped[k])
        if any(c is None or float(np.hypot(*c)) < MIN_CHROMA for c in chromas):
            shifts.append(0.0)
            continue
        hue_original, hue_swapped = (float(hue_angle(c)) for c in chromas)
        target = PALETTE_HUES[after]
        shifts.append((hue_distance(hue_original, target) - hue_distance(hue_swapped, target))
                      / hue_distance(PALETTE_HUES[before], target))
    return shifts


def mean_cdc(outputs: Sequence[np.ndarray]) -> float:
    """Mean CDC (x1000, lower is more consistent) of ``(F, H, W, 3)`` uint8 clips."""
    scores = [float(cdc(torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)[None])[0])
              for frames in outputs]
    return float(np.mean(scores))


@dataclass
class CDCComparison:
    """CDC of the same clips under a method and its ablation, clip by clip; the paper claims
    ``method`` is lower (more consistent)."""

    method_scores: list[float]
    ablation_scores: list[float]

    @property
    def method(self) -> float:
        return float(np.mean(self.method_scores))

    @property
    def ablation(self) -> float:
        return float(np.mean(self.ablation_scores))

    @property
    def method_is_better(self) -> bool:
        return self.method < self.ablation

    @property
    def clips_method_lower(self) -> int:
        """How many clips score lower (steadier) under the method than under the ablation."""
        return sum(m < a for m, a in zip(self.method_scores, self.ablation_scores))


def compare_cdc(colorize_with: Callable[[ToyClip], np.ndarray], colorize_without: Callable[[ToyClip], np.ndarray],
                clips: Sequence[ToyClip]) -> CDCComparison:
    return CDCComparison([mean_cdc([colorize_with(c)]) for c in clips], [mean_cdc([colorize_without(c)]) for c in clips])
