"""Named shape sets for the benchmarks.

The TDA layers of the SD1.5 UNet: the latent is ``px / 8`` and the transformer blocks run at
four levels, ``latent``, ``latent/2``, ``latent/4`` (down and up blocks, 320/640/1280 channels)
and ``latent/8`` (mid block, 1280 channels), always with 8 heads (d = channels / 8) and 8
frames. Every pixel of every frame is a query: ``Nq = frames * h * w``.

Key points follow the lc4 model (``lc4/tda.py``, ``lc4/unet.py``): a reference grid with
points at ``j * stride`` along each axis plus offsets ``alpha * tanh(.)``, so
``Nk = ceil(h/Nrs) * ceil(w/Nrs) * ceil(frames/Nrt)``. ``Nrt = 2``; ``Nrs = 4`` at the first
UNet level and halves at each coarser level (4, 2, 1, 1). At 512 px that gives Nk = 1024 at
64x64, 32x32 and 16x16 and 256 at 8x8; at 256 px, 256, 256, 256 and 64. The CPU set adds the
issue-2 performance case: a 32x32 latent with d = 40 and Nk = 1024.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

FRAMES = 8
HEADS = 8
SPATIAL_STRIDE = 4  # Nrs at the first UNet level
TEMPORAL_STRIDE = 2  # Nrt
OFFSET_GROUPS = 1  # G: offset groups sharing key points (heads % G == 0)
OFFSET_RANGE = 4.0  # alpha: offsets are alpha * tanh(.) pixels/frames around the grid
SD15_LEVEL_CHANNELS = (320, 640, 1280, 1280)  # latent, latent/2, latent/4, latent/8 (mid block)


def key_point_count(h: int, w: int, frames: int, spatial_stride: int, temporal_stride: int) -> int:
    return math.ceil(h / spatial_stride) * math.ceil(w / spatial_stride) * math.ceil(frames / temporal_stride)


@dataclass(frozen=True)
class Case:
    """One TDA layer call: q ``(B, Nq, heads, d)``, k/v ``(B, T, H, W, heads, d)``, points
    ``(B, Nk, G, 3)``. The sampling op is benchmarked on the same k map and points:
    value ``(B, T, H, W, G, heads*d/G)`` at ``(B, Nk, G, 3)``."""
    name: str
    height: int
    width: int
    head_dim: int
    spatial_stride: int = SPATIAL_STRIDE
    temporal_stride: int = TEMPORAL_STRIDE
    frames: int = FRAMES
    heads: int = HEADS
    groups: int = OFFSET_GROUPS
    batch: int = 1
    queries: int | None = None  # None: one query per pixel of every frame

    @property
    def nq(self) -> int:
        return self.queries if self.queries is not None else self.frames * self.height * self.width

    @property
    def nk(self) -> int:
        return key_point_count(self.height, self.width, self.frames, self.spatial_stride, self.temporal_stride)

    @property
    def channels(self) -> int:
        return self.heads * self.head_dim

    def describe(self) -> dict:
        return {**asdict(self), "nq": self.nq, "nk": self.nk, "channels": self.channels}


def level_spatial_stride(level: int) -> int:
    return max(1, SPATIAL_STRIDE >> level)


def sd15_levels(pixels: int) -> list[Case]:
    latent = pixels // 8
    return [Case(f"sd15-{pixels}px-{latent >> level}x{latent >> level}", height=latent >> level,
                 width=latent >> level, head_dim=channels // HEADS, spatial_stride=level_spatial_stride(level))
            for level, channels in enumerate(SD15_LEVEL_CHANNELS)]


ISSUE2_CPU_CASE = Case("cpu-32x32-nk1024", height=32, width=32, head_dim=40, spatial_stride=2)

SHAPE_SETS: dict[str, list[Case]] = {
    "sd15-256": sd15_levels(256),
    "sd15-512": sd15_levels(512),
    # CPU default: the 256 px levels and the issue-2 performance case; under 5 minutes on 2 cores.
    "cpu": [*sd15_levels(256), ISSUE2_CPU_CASE],
    # CI smoke test: small enough that the whole report runs in seconds.
    "quick": [Case("quick-8x8", height=8, width=8, head_dim=40, spatial_stride=2),
              Case("quick-4x4-d80", height=4, width=4, head_dim=80, frames=4, spatial_stride=2)],
}
# 512 px first: the training resolution, and the shapes the speed targets are set at.
SHAPE_SETS["sd15"] = SHAPE_SETS["sd15-512"] + SHAPE_SETS["sd15-256"]

# Memory scaling: fixed k/v map and Nk = 1024, growing Nq.
MEMORY_SCALING = {
    "gpu": (Case("scaling-64x64", height=64, width=64, head_dim=40), (2048, 4096, 8192, 16384, 32768)),
    "cpu": (ISSUE2_CPU_CASE, (2048, 4096, 8192, 16384)),
    # Nk = 256 so that a score row (8 KiB per query) stands out of the allocator noise.
    "quick": (Case("quick-8x8-nk256", height=8, width=8, head_dim=40, spatial_stride=1), (512, 1024, 2048)),
}


def default_set(device_type: str, quick: bool) -> str:
    if quick:
        return "quick"
    return "sd15" if device_type == "cuda" else "cpu"


def memory_scaling_cases(profile: str) -> list[Case]:
    base, query_counts = MEMORY_SCALING[profile]
    return [replace(base, name=f"{base.name}-nq{nq}", queries=nq) for nq in query_counts]


def resolve(spec: str) -> list[Case]:
    """Cases named by a comma-separated list of set names and case names, in order, no repeats."""
    by_name = {case.name: case for cases in SHAPE_SETS.values() for case in cases}
    chosen: dict[str, Case] = {}
    for token in (t.strip() for t in spec.split(",") if t.strip()):
        if token in SHAPE_SETS:
            chosen.update((c.name, c) for c in SHAPE_SETS[token])
        elif token in by_name:
            chosen[token] = by_name[token]
        else:
            raise ValueError(f"unknown shape set or case {token!r}; sets: {', '.join(SHAPE_SETS)}; "
                             f"cases: {', '.join(by_name)}")
    if not chosen:
        raise ValueError("no shapes selected")
    return list(chosen.values())
