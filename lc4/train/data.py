"""Text-video training data: random ``N^f``-frame clips with their captions.

A data source is one of

* a folder of videos (any :data:`lc4.video.VIDEO_SUFFIXES` file, or a sub-folder of frames),
  each with its caption in a text file of the same stem (``clip.mp4`` + ``clip.txt``);
* a ``.csv`` with a header naming a video column (``video``, ``path``, ``video_path`` or
  ``file``) and a caption column (``caption``, ``text`` or ``prompt``);
* a ``.jsonl`` file, one object per line with the same keys.

A ``.csv`` or ``.jsonl`` row may also name a ``segmentation`` folder: PNG label maps (class
indices), one per frame of the video, for the segmentation heads (``segmentation.weight``).

Relative video paths are taken relative to the list file's folder, as InternVid-style lists ship.

Randomness: every sample's choices (clip start, crop, caption dropout) come from a seed the
sampler hands out with its index (:class:`ClipSampler`), never from global or worker RNG, so a
sample is the same whichever worker decodes it and whenever a run resumes.

A video that cannot be decoded, or has fewer frames than a clip needs, is skipped with a
logged warning and the next one is taken in its place; a run stops only after
``max_skips`` unreadable videos in a row (then the data itself is broken).
"""
from __future__ import annotations

import csv
import glob
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import av
import numpy as np
import torch
from PIL import Image

from .. import video as video_io
from ..cmpf import without_color_words
from ..color import rgb_to_luma
from ..luminance import luminance_input

logger = logging.getLogger(__name__)

VIDEO_KEYS = ("video", "path", "video_path", "file")
CAPTION_KEYS = ("caption", "text", "prompt")


@dataclass(frozen=True)
class VideoItem:
    path: Path
    caption: str
    segmentation: Optional[Path] = None  # a folder of per-frame label maps


def _pick(row: dict, keys: tuple[str, ...], what: str, where: str, allow_empty: bool = False) -> str:
    for key in keys:
        if row.get(key) not in (None, ""):
            return str(row[key])
    if allow_empty and any(row.get(key) == "" for key in keys):
        return ""
    raise ValueError(f"{where}: no {what} column/key (expected one of {', '.join(keys)}), got {sorted(row)}")


def _items_from_rows(rows, base: Path, where: str) -> list[VideoItem]:
    items = []
    for number, row in enumerate(rows, start=1):
        path = Path(_pick(row, VIDEO_KEYS, "video", f"{where} row {number}"))
        # An empty caption is the unconditional one, as an empty NAME.txt is in a folder source.
        caption = _pick(row, CAPTION_KEYS, "caption", f"{where} row {number}", allow_empty=True)
        labels = Path(row["segmentation"]) if row.get("segmentation") else None
        if labels is not None and not labels.is_absolute():
            labels = base / labels
        items.append(VideoItem(path if path.is_absolute() else base / path, caption.strip(), labels))
    return items


def list_videos(source: str | Path) -> list[VideoItem]:
    """The (video, caption) pairs of a data source, in a stable order."""
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"data.source: {str(source)!r} does not exist")
    if source.is_dir():
        items = []
        for caption_file in sorted(source.glob("*.txt")):
            stem = caption_file.with_suffix("")
            candidates = [p for p in sorted(source.glob(f"{glob.escape(stem.name)}.*")) if p.suffix.lower() in video_io.VIDEO_SUFFIXES]
            if stem.is_dir():
                candidates.append(stem)
            if candidates:
                items.append(VideoItem(candidates[0], caption_file.read_text().strip()))
    elif source.suffix.lower() == ".csv":
        with open(source, newline="") as handle:
            items = _items_from_rows(csv.DictReader(handle), source.parent, str(source))
    elif source.suffix.lower() in (".jsonl", ".json"):
        lines = [line for line in source.read_text().splitlines() if line.strip()]
        items = _items_from_rows((json.loads(line) for line in lines), source.parent, str(source))
    else:
        raise ValueError(f"data.source: expected a folder, .csv or .jsonl, got {str(source)!r}")
    if not items:
        raise ValueError(f"data.source: {str(source)!r} lists no (video, caption) pairs "
                         "(a folder needs NAME.txt captions beside its videos)")
    return items


def probe(path: Path) -> tuple[int, int, int]:
    """``(frame count, height, width)`` of a video file or frame folder."""
    if path.is_dir():
        files = video_io.list_frame_files(path)
        if not files:
            raise ValueError(f"{str(path)!r} holds no frames")
        with Image.open(files[0]) as first:  # reads the header only
            width, height = first.size
        return len(files), height, width
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError(f"{str(path)!r} has no video stream")
        stream = container.streams.video[0]
        count, height, width = stream.frames, stream.codec_context.height, stream.codec_context.width
        if count <= 0:  # no count in the header (some webm/mkv): count packets instead
            count = sum(1 for packet in container.demux(stream) if packet.size)
    if count <= 0 or height <= 0 or width <= 0:
        raise ValueError(f"{str(path)!r} has no decodable frames")
    return count, height, width


def resized_size(height: int, width: int, side: int) -> tuple[int, int]:
    """Aspect-preserving size whose shorter side is ``side``."""
    scale = side / min(height, width)
    return max(side, round(height * scale)), max(side, round(width * scale))


class TextVideoDataset(torch.utils.data.Dataset):
    """Random clips of ``num_frames`` frames, resized (shorter side to ``resolution``) and
    cropped square. Items are ``dataset[(index, seed)]`` as :class:`ClipSampler` yields them
    (``dataset[index]`` uses seed 0) and hold:

    * ``pixel_values``: ``(F, 3, r, r)`` RGB in ``[-1, 1]``, the colour target (VAE input);
    * ``luminance``: ``(F, 1, r, r)`` Rec. 601 luma in ``[-1, 1]`` (:mod:`lc4.color`), the input;
    * ``caption``: the caption, or ``""`` when dropped for classifier-free guidance;
    * ``index``: the item actually used (another one when the asked one was skipped);
    * ``segmentation``: ``(F, r, r)`` int64 class maps of the same frames and crop (resized by
      nearest neighbour), with ``segmentation=True`` when the item names a label folder;
    * ``frame_keys``: ``(F, 4)`` int64 ``(index, source frame, crop top, crop left)``, which fix
      each frame's pixels within this dataset (:class:`lc4.train.encoding_cache.FrozenEncodingCache`).

    With ``cache_frames`` every video is decoded (resized, all its frames) and its label maps
    read once, on first use, and kept in memory: for small data sets seen over many epochs, where
    decoding would otherwise take a large share of a step. Each data-loader worker keeps its own
    copy. Samples are the same with and without it.
    """

    def __init__(self, items: list[VideoItem], resolution: int = 256, num_frames: int = 8, frame_stride: int = 1,
                 random_crop: bool = True, caption_dropout: float = 0.0, max_skips: int = 32,
                 segmentation: bool = False, cache_frames: bool = False, color_word_dropout: float = 0.0):
        if not items:
            raise ValueError("items: expected at least one (video, caption) pair")
        self.items = list(items)
        self.resolution, self.num_frames, self.frame_stride = resolution, num_frames, frame_stride
        self.random_crop, self.caption_dropout, self.max_skips = random_crop, caption_dropout, max_skips
        self.segmentation, self.color_word_dropout = segmentation, color_word_dropout
        self.cache_frames = cache_frames
        # index -> ((frame count, height, width) as probed, (count, 3, h, w) uint8 frames and
        # (count, h, w) label maps or None, at the resized size (h, w))
        self._decoded: dict[int, tuple[tuple[int, int, int], torch.Tensor, Optional[torch.Tensor]]] = {}

    def __len__(self) -> int:
        return len(self.items)

    def load_clip(self, item: VideoItem, generator: torch.Generator,
                  index: Optional[int] = None) -> tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
        """``(F, 3, r, r)`` uint8 frames of one random clip of ``item``, when it has labels their
        ``(F, r, r)`` class maps, and the clip's ``(F, 4)`` frame keys (``index`` is the item's,
        the cache's key under ``cache_frames``); raises for bad videos."""
        cached = self._decoded.get(index) if self.cache_frames else None
        count, height, width = probe(item.path) if cached is None else cached[0]
        span = (self.num_frames - 1) * self.frame_stride + 1
        if count < span:
            raise ValueError(f"{count} frames, a clip needs {span}")
        start = int(torch.randint(0, count - span + 1, (1,), generator=generator))
        picked = range(start, start + span, self.frame_stride)
        size = resized_size(height, width, self.resolution)
        if self.cache_frames and cached is None:
            frames = video_io.frames_to_tensor(list(video_io.iter_frames(item.path, size)))
            labels = None
            if self.segmentation and item.segmentation is not None:
                labels = load_label_maps(item.segmentation, count, size, range(count), dtype=None)
            cached = self._decoded[index] = ((count, height, width), frames, labels)
        if cached is not None:
            clip = cached[1][start:start + span:self.frame_stride]
            labels = None if cached[2] is None else cached[2][start:start + span:self.frame_stride].long()
        else:
            clip = video_io.frames_to_tensor(list(video_io.iter_frames(item.path, size, start, start + span,
                                                                       self.frame_stride)))
            labels = None
            if self.segmentation and item.segmentation is not None:
                labels = load_label_maps(item.segmentation, count, size, picked)
        if len(clip) != self.num_frames:  # the header promised more frames than there are
            raise ValueError(f"decoded {len(clip)} of the {self.num_frames} frames from frame {start}")
        top, left = self._crop_origin(clip.shape[-2], clip.shape[-1], generator)
        window = (..., slice(top, top + self.resolution), slice(left, left + self.resolution))
        keys = torch.tensor([[-1 if index is None else index, frame, top, left] for frame in picked])
        return clip[window], None if labels is None else labels[window], keys

    def _crop_origin(self, height: int, width: int, generator: torch.Generator) -> tuple[int, int]:
        if not self.random_crop:
            return (height - self.resolution) // 2, (width - self.resolution) // 2
        top = int(torch.randint(0, height - self.resolution + 1, (1,), generator=generator))
        left = int(torch.randint(0, width - self.resolution + 1, (1,), generator=generator))
        return top, left

    def __getitem__(self, key) -> dict:
        index, seed = key if isinstance(key, tuple) else (key, 0)
        generator = torch.Generator().manual_seed(int(seed))
        for attempt in range(self.max_skips + 1):
            current = (index + attempt) % len(self.items)
            item = self.items[current]
            try:
                clip, labels, keys = self.load_clip(item, generator, current)
                break
            except (av.FFmpegError, OSError, ValueError, RuntimeError) as error:
                logger.warning("skipping unreadable video %s: %s", item.path, error)
        else:
            raise RuntimeError(f"data: {self.max_skips + 1} videos in a row could not be read, "
                               f"from {self.items[index].path}; check the data source")
        rgb = clip.float() / 255.0
        draw = float(torch.rand((), generator=generator))
        if draw < self.caption_dropout:
            caption = ""
        elif draw < self.caption_dropout + (1 - self.caption_dropout) * self.color_word_dropout:
            caption = without_color_words(item.caption)
        else:
            caption = item.caption
        sample = {
            "pixel_values": rgb * 2 - 1,
            "luminance": luminance_input(rgb_to_luma(rgb).clamp(0, 1)),
            "caption": caption,
            "index": current,
            "frame_keys": keys,
        }
        if labels is not None:
            sample["segmentation"] = labels
        return sample


def load_label_maps(folder: Path, num_frames: int, size: tuple[int, int], indices,
                    dtype: Optional[np.dtype] = np.int64) -> torch.Tensor:
    """``(len(indices), h, w)`` class maps: the label PNGs of ``folder`` (one per video frame,
    natural order) at ``indices``, resized to ``size`` ``(h, w)`` by nearest neighbour, as
    ``dtype`` (``None``: the image's own, e.g. uint8 for 8-bit maps)."""
    files = video_io.list_frame_files(folder)
    if len(files) != num_frames:
        raise ValueError(f"segmentation {str(folder)!r}: {len(files)} label maps for a video of {num_frames} frames")
    maps = []
    for index in indices:
        with Image.open(files[index]) as image:
            if image.mode not in ("L", "P", "I", "I;16"):
                raise ValueError(f"segmentation {str(files[index])!r}: expected a single-channel label map, "
                                 f"got mode {image.mode}")
            image = image.resize((size[1], size[0]), Image.NEAREST) if image.size != (size[1], size[0]) else image
            maps.append(torch.from_numpy(np.array(image, dtype=dtype)))
    return torch.stack(maps)


def collate(samples: list[dict]) -> dict:
    batch = {
        "pixel_values": torch.stack([s["pixel_values"] for s in samples]),
        "luminance": torch.stack([s["luminance"] for s in samples]),
        "captions": [s["caption"] for s in samples],
        "indices": torch.tensor([s["index"] for s in samples]),
        "frame_keys": torch.stack([s["frame_keys"] for s in samples]),
    }
    labelled = ["segmentation" in s for s in samples]
    if all(labelled):
        batch["segmentation"] = torch.stack([s["segmentation"] for s in samples])
    elif any(labelled):
        raise ValueError("data.source: some clips have segmentation labels and some do not; "
                         "give every row a segmentation folder or none")
    return batch


class ClipSampler(torch.utils.data.Sampler):
    """A shuffled order of the dataset per epoch, each index with its own sample seed, both
    functions of ``(seed, epoch)`` only: :meth:`set_epoch_seed` before iterating. (Not named
    ``set_epoch``: accelerate's data loader calls that with its own count of passes, which
    restarts at 0 in a resumed run.)"""

    def __init__(self, size: int, seed: int = 0, shuffle: bool = True):
        self.size, self.seed, self.shuffle, self.epoch = size, seed, shuffle, 0

    def set_epoch_seed(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator) if self.shuffle else torch.arange(self.size)
        seeds = torch.randint(0, 2**62, (self.size,), generator=generator)
        return iter(zip(order.tolist(), seeds.tolist()))


def split_holdout(items: list[VideoItem], holdout: bool) -> tuple[list[VideoItem], Optional[VideoItem]]:
    """Training items and the held-out validation item (the last one) when ``holdout``."""
    if not holdout:
        return items, None
    if len(items) < 2:
        raise ValueError("validation: holding out a clip needs at least 2 videos in data.source "
                         "(or give validation.video and validation.caption)")
    return items[:-1], items[-1]


def steps_per_epoch(num_items: int, batch_size: int, num_processes: int, accumulation: int) -> int:
    """Optimizer steps in one pass over the data (incomplete batches are kept)."""
    batches = math.ceil(num_items / (batch_size * num_processes))
    return max(1, math.ceil(batches / accumulation))


def validation_clip(item: VideoItem, resolution: int, num_frames: int) -> torch.Tensor:
    """The first ``num_frames`` frames of ``item``, centre-cropped: ``(F, 3, r, r)`` uint8."""
    count, height, width = probe(item.path)
    size = resized_size(height, width, resolution)
    frames = np.stack(list(video_io.iter_frames(item.path, size, stop=min(count, num_frames))))
    top, left = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    return torch.from_numpy(frames[:, top:top + resolution, left:left + resolution]).permute(0, 3, 1, 2).contiguous()
