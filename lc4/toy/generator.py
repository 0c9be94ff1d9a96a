"""Procedural text-video clips: one to three coloured shapes moving, rotating and scaling over a
coloured (plain or textured) background, with a caption naming every colour and per-object
masks of the pixels each object shows in each frame.

Each object has a luma of its own (:func:`~lc4.toy.palette.object_rgb`), apart from the
background's and from the other objects' so every shape shows in the grey input, and unrelated
to its colour's name, so the grey input does not give the colour away.

Everything is a function of a seed: :func:`sample_spec` draws a :class:`ClipSpec` from
``numpy.random.default_rng(seed)`` and :func:`render` draws it without further randomness, so
a clip is regenerated exactly from its seed (the evaluation keeps only seeds).

Held-out split: a fixed set of (colour, shape) pairs (:data:`HELDOUT_PAIRS`) never appears in
training clips; every held-out clip shows at least one of them. Each colour and each shape
still appears in training, only not in those combinations.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Optional

import numpy as np
from skimage.draw import polygon as fill_polygon
from skimage.transform import resize

from .palette import BACKGROUND_COLORS, OBJECT_COLORS, OBJECT_LUMA_RANGE, SHAPES, TEXTURES, luma_of, object_rgb

COLOR_NAMES = tuple(OBJECT_COLORS)
SPLITS = ("train", "heldout")
# One shape per colour (a quarter of the pairs), spread so every shape has two or three colours.
HELDOUT_PAIRS = frozenset((color, shape) for ci, color in enumerate(COLOR_NAMES) for si, shape in enumerate(SHAPES)
                          if (ci + si) % len(SHAPES) == 0)
# A clip is redrawn until every object shows at least this fraction of the frame area, summed
# over its frames (objects may still leave the frame or hide behind others for a while).
MIN_VISIBLE_FRACTION = 0.02
# Least luma difference (0-1) between an object and any shade of the background, and between
# two objects of a clip; textures darken the background colour down to this factor.
MIN_LUMA_CONTRAST = 0.08
DARKEST_TEXTURE_SHADE = 0.75


@dataclass(frozen=True)
class ObjectSpec:
    shape: str
    color: str
    center: tuple[float, float]  # (x, y) at frame 0, in units of the frame side
    velocity: tuple[float, float]  # per frame, same units
    radius: float  # at frame 0, in units of the frame side
    growth: float  # radius factor per frame
    angle: float  # degrees at frame 0
    spin: float  # degrees per frame
    luma: float  # Rec. 601 luma (0-1) the object is drawn at, in its colour's hue


@dataclass(frozen=True)
class ClipSpec:
    objects: tuple[ObjectSpec, ...]  # in drawing order (later ones occlude earlier ones)
    background: str
    texture: str
    texture_seed: int

    @property
    def caption(self) -> str:
        return caption_for(self)

    def with_colors(self, colors: list[str]) -> "ClipSpec":
        """The same clip with its objects recoloured (e.g. two colours swapped)."""
        return replace(self, objects=tuple(replace(o, color=c) for o, c in zip(self.objects, colors, strict=True)))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ClipSpec":
        objects = tuple(ObjectSpec(**{**o, "center": tuple(o["center"]), "velocity": tuple(o["velocity"])})
                        for o in data["objects"])
        return cls(objects, data["background"], data["texture"], int(data["texture_seed"]))


@dataclass
class ToyClip:
    spec: ClipSpec
    frames: np.ndarray  # (F, H, W, 3) uint8
    masks: np.ndarray  # (F, K, H, W) bool: the pixels object k shows in each frame
    seed: Optional[int] = None
    split: Optional[str] = None
    caption: str = field(init=False)

    def __post_init__(self):
        self.caption = self.spec.caption


def caption_for(spec: ClipSpec, with_colors: bool = True) -> str:
    """"a red circle, a blue star and a green square on a yellow background", or without the
    colour words "a circle, a star and a square on a background" (``with_colors=False``)."""
    names = [f"a {o.color} {o.shape}" if with_colors else f"a {o.shape}" for o in spec.objects]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return f"{listed} on a {spec.background + ' ' if with_colors else ''}background"


def is_heldout_pair(color: str, shape: str) -> bool:
    return (color, shape) in HELDOUT_PAIRS


def _draw_lumas(rng: np.random.Generator, count: int, background: str) -> list[float] | None:
    """``count`` object lumas apart from every shade of ``background`` and from each other, or
    ``None`` when a few hundred draws find none."""
    brightest = luma_of(BACKGROUND_COLORS[background])
    low, high = DARKEST_TEXTURE_SHADE * brightest - MIN_LUMA_CONTRAST, brightest + MIN_LUMA_CONTRAST
    lumas: list[float] = []
    for _ in range(300):
        luma = float(rng.uniform(*OBJECT_LUMA_RANGE))
        if low < luma < high or any(abs(luma - other) < MIN_LUMA_CONTRAST for other in lumas):
            continue
        lumas.append(luma)
        if len(lumas) == count:
            return lumas
    return None


def _draw_object(rng: np.random.Generator, shape: str, color: str, luma: float) -> ObjectSpec:
    entering = rng.random() < 0.3  # starts partly outside and moves in (or passes through)
    center = rng.uniform(-0.1, 1.1, 2) if entering else rng.uniform(0.2, 0.8, 2)
    speed = rng.uniform(0.0, 0.07)
    heading = rng.uniform(0, 2 * np.pi)
    if entering:  # head roughly towards the middle
        heading = np.arctan2(0.5 - center[1], 0.5 - center[0]) + rng.uniform(-0.6, 0.6)
    return ObjectSpec(
        shape=shape, color=color, center=(float(center[0]), float(center[1])),
        velocity=(float(speed * np.cos(heading)), float(speed * np.sin(heading))),
        radius=float(rng.uniform(0.16, 0.26)), growth=float(rng.uniform(0.95, 1.05)),
        angle=float(rng.uniform(0, 360)), spin=float(rng.uniform(-15, 15)), luma=luma)


def sample_spec(rng: np.random.Generator, split: str = "train", max_objects: int = 3) -> ClipSpec:
    """A random clip description of ``split`` (colours and shapes distinct within a clip, so
    the caption tells the objects apart; the background colour differs from theirs and leaves
    room for their lumas)."""
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    count = int(rng.integers(1, max_objects + 1))
    pairs: list[tuple[str, str]] = []
    if split == "heldout":
        heldout = sorted(HELDOUT_PAIRS)
        pairs.append(heldout[int(rng.integers(len(heldout)))])
    while len(pairs) < count:
        color, shape = COLOR_NAMES[int(rng.integers(len(COLOR_NAMES)))], SHAPES[int(rng.integers(len(SHAPES)))]
        if any(color == c or shape == s for c, s in pairs):
            continue
        if split == "train" and is_heldout_pair(color, shape):
            continue
        pairs.append((color, shape))
    order = rng.permutation(len(pairs))
    used = {color for color, _ in pairs}
    backgrounds = [name for name in BACKGROUND_COLORS if name not in used]
    for index in rng.permutation(len(backgrounds)):
        lumas = _draw_lumas(rng, len(pairs), backgrounds[index])
        if lumas is not None:
            break
    else:  # pragma: no cover - black and white leave room for any three objects
        raise RuntimeError("no background leaves room for the objects' lumas")
    objects = tuple(_draw_object(rng, shape, color, luma)
                    for (color, shape), luma in zip((pairs[i] for i in order), lumas))
    return ClipSpec(objects, backgrounds[index], TEXTURES[int(rng.integers(len(TEXTURES)))], int(rng.integers(2**31)))


def _outline(shape: str) -> np.ndarray:
    """Unit outline ``(N, 2)`` of a shape centred at 0, radius about 1."""
    def ring(count, radii=(1.0,), start=90.0):
        angles = np.radians(start + np.arange(count) * 360.0 / count)
        r = np.resize(np.asarray(radii), count)
        return np.stack([r * np.cos(angles), r * np.sin(angles)], axis=1)

    outlines = {
        "circle": lambda: ring(48),
        "square": lambda: ring(4, start=45.0) * 1.1,
        "triangle": lambda: ring(3) * 1.15,
        "star": lambda: ring(10, radii=(1.2, 0.5)),
    }
    if shape not in outlines:
        raise ValueError(f"shape: expected one of {SHAPES}, got {shape!r}")
    return outlines[shape]()


def object_mask(obj: ObjectSpec, frame: int, size: int) -> np.ndarray:
    """``(size, size)`` bool: where ``obj`` covers the frame (before occlusion)."""
    theta = np.radians(obj.angle + obj.spin * frame)
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    radius = obj.radius * obj.growth ** frame
    center = np.asarray(obj.center) + frame * np.asarray(obj.velocity)
    points = (_outline(obj.shape) @ rotation.T * radius + center) * size
    mask = np.zeros((size, size), dtype=bool)
    rows, cols = fill_polygon(points[:, 1], points[:, 0], shape=mask.shape)
    mask[rows, cols] = True
    return mask


def background_image(spec: ClipSpec, size: int) -> np.ndarray:
    """``(size, size, 3)`` float RGB (0-255): the background colour, plain or textured with
    darker shades of itself (so its name stays right)."""
    rng = np.random.default_rng(spec.texture_seed)
    base = np.asarray(BACKGROUND_COLORS[spec.background], dtype=np.float64)
    y, x = np.mgrid[0:size, 0:size] / size
    if spec.texture == "plain":
        shade = np.ones((size, size))
    elif spec.texture == "stripes":
        angle, period = rng.uniform(0, np.pi), rng.uniform(0.12, 0.3)
        shade = np.where(((x * np.cos(angle) + y * np.sin(angle)) / period) % 1 < 0.5, 1.0, 0.75)
    elif spec.texture == "checker":
        cell = rng.uniform(0.1, 0.25)
        shade = np.where(((x // cell) + (y // cell)) % 2 == 0, 1.0, 0.8)
    elif spec.texture == "noise":
        coarse = rng.uniform(0.75, 1.0, (6, 6))
        shade = resize(coarse, (size, size), order=3, mode="reflect")
    else:
        raise ValueError(f"texture: expected one of {TEXTURES}, got {spec.texture!r}")
    return shade[..., None] * base


def render(spec: ClipSpec, size: int = 64, num_frames: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Frames ``(F, size, size, 3)`` uint8 and visible masks ``(F, K, size, size)`` bool."""
    background = background_image(spec, size)
    frames = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    masks = np.zeros((num_frames, len(spec.objects), size, size), dtype=bool)
    for t in range(num_frames):
        image = background.copy()
        owner = np.full((size, size), -1)
        for k, obj in enumerate(spec.objects):
            covered = object_mask(obj, t, size)
            image[covered] = object_rgb(obj.color, obj.luma)
            owner[covered] = k
        frames[t] = np.clip(np.round(image), 0, 255).astype(np.uint8)
        for k in range(len(spec.objects)):
            masks[t, k] = owner == k
    return frames, masks


def generate_clip(seed: int, split: str = "train", size: int = 64, num_frames: int = 8,
                  max_objects: int = 3) -> ToyClip:
    """The clip of ``seed`` in ``split``; redrawn (from the same generator) until every object
    is visible enough, so the result depends on the seed alone."""
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    for _ in range(100):
        spec = sample_spec(rng, split, max_objects)
        frames, masks = render(spec, size, num_frames)
        if (masks.sum(axis=(0, 2, 3)) >= MIN_VISIBLE_FRACTION * size * size).all():
            return ToyClip(spec, frames, masks, seed, split)
    raise RuntimeError(f"seed {seed}: no clip with every object visible in 100 draws (frames too few or small?)")
