"""Writes the toy domain as a data source ``lc4 train`` reads: ``train.jsonl`` and
``heldout.jsonl`` (one row per clip: ``video``, a folder of PNG frames relative to the list,
``caption``, ``segmentation``, a folder of per-frame label maps (:func:`label_maps`) for the
segmentation heads of `lc4 train`, and what the evaluation needs to regenerate the clip and
its masks: ``seed``, ``split``, ``size``, ``num_frames``). PNG keeps the palette colours and the
labels exact."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from .generator import ToyClip, generate_clip
from .palette import SHAPES

NUM_LABEL_CLASSES = 1 + len(SHAPES)  # background, then one class per shape


def write_clip(folder: Path, clip: ToyClip) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index, frame in enumerate(clip.frames):
        Image.fromarray(frame).save(folder / f"{index:05d}.png", compress_level=1)
    return folder


def label_maps(clip: ToyClip) -> np.ndarray:
    """``(F, H, W)`` uint8: 0 where no object shows, else 1 + the index in ``SHAPES`` of the
    shape of the object that shows there (the generator's visible masks)."""
    labels = np.zeros(clip.masks.shape[:1] + clip.masks.shape[2:], dtype=np.uint8)
    for k, obj in enumerate(clip.spec.objects):
        labels[clip.masks[:, k]] = 1 + SHAPES.index(obj.shape)
    return labels


def write_labels(folder: Path, clip: ToyClip) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index, labels in enumerate(label_maps(clip)):
        Image.fromarray(labels).save(folder / f"{index:05d}.png", compress_level=1)
    return folder


def write_split(root: str | Path, split: str, count: int, size: int = 64, num_frames: int = 8,
                first_seed: int = 0) -> Path:
    """Clips ``first_seed .. first_seed + count - 1`` of ``split`` under ``root/split/`` and
    their list ``root/split.jsonl``; returns the list's path."""
    root = Path(root)
    rows = []
    for seed in range(first_seed, first_seed + count):
        clip = generate_clip(seed, split, size, num_frames)
        name = f"{split}/{seed:06d}"
        write_clip(root / name, clip)
        labels = f"{split}_labels/{seed:06d}"
        write_labels(root / labels, clip)
        rows.append({"video": name, "caption": clip.caption, "segmentation": labels, "seed": seed, "split": split,
                     "size": size, "num_frames": num_frames})
    listing = root / f"{split}.jsonl"
    listing.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return listing


def write_dataset(root: str | Path, num_train: int, num_heldout: int, size: int = 64, num_frames: int = 8) -> Path:
    write_split(root, "train", num_train, size, num_frames)
    write_split(root, "heldout", num_heldout, size, num_frames)
    return Path(root)


def read_rows(listing: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(listing).read_text().splitlines() if line.strip()]


def clip_of_row(row: dict) -> ToyClip:
    """The clip a list row describes, regenerated from its seed (frames and masks)."""
    return generate_clip(int(row["seed"]), row["split"], int(row["size"]), int(row["num_frames"]))
