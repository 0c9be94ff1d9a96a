"""Helpers for the training tests (a unique module name: other test folders have their own)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

CAPTIONS = ("a red car on a road", "a blue bird in the sky", "a green tree in a field",
            "a yellow dog on the grass", "a man wearing a pink shirt", "a white horse by the river")
COLORS = ((220, 40, 40), (40, 60, 220), (40, 180, 60), (230, 210, 40), (240, 120, 180), (235, 235, 235))


def make_clip(index: int, num_frames: int = 12, height: int = 40, width: int = 48) -> np.ndarray:
    """``(T, H, W, 3)`` uint8: a coloured square moving over a tinted background."""
    rng = np.random.default_rng(index)
    background = rng.integers(40, 200, size=3)
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    color = np.array(COLORS[index % len(COLORS)])
    for t in range(num_frames):
        frame = np.broadcast_to(background, (height, width, 3)).copy()
        top, left = 4 + t % (height - 20), 2 + (2 * t) % (width - 20)
        frame[top:top + 14, left:left + 14] = color
        frames[t] = frame
    return frames


def make_dataset(folder: Path, count: int = 4, num_frames: int = 12, layout: str = "folder") -> Path:
    """``count`` small mp4 clips with captions, as a folder (``NAME.txt`` beside ``NAME.mp4``),
    a ``.csv`` or a ``.jsonl`` list; returns the data source path."""
    from lc4.video import write_video

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(count):
        name = f"clip{index:02d}"
        write_video(folder / f"{name}.mp4", make_clip(index, num_frames), fps=8, crf=10)
        caption = CAPTIONS[index % len(CAPTIONS)]
        rows.append({"video": f"{name}.mp4", "caption": caption})
        if layout == "folder":
            (folder / f"{name}.txt").write_text(caption + "\n")
    if layout == "csv":
        lines = ["video,caption", *(f"{row['video']},\"{row['caption']}\"" for row in rows)]
        (folder / "list.csv").write_text("\n".join(lines) + "\n")
        return folder / "list.csv"
    if layout == "jsonl":
        (folder / "list.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        return folder / "list.jsonl"
    return folder


def tiny_config_values(model_dir: Path, data_source: Path, output_dir: Path, **overrides) -> dict:
    """A configuration a CPU trains in seconds: the tiny model, 32 px, 8-frame clips."""
    values = {
        "stage": 1,
        "model": {"path": str(model_dir)},
        "data": {"source": str(data_source), "resolution": 32, "num_frames": 8, "num_workers": 0,
                 "caption_dropout": 0.1},
        "optimizer": {"lr": 1e-3},
        "output_dir": str(output_dir),
        "batch_size": 1,
        "max_steps": 4,
        "mixed_precision": "no",
        "gradient_checkpointing": False,
        "checkpointing": {"every_steps": 100, "keep_last": None},
        "logging": {"every_steps": 1, "progress_bar": False},
        "seed": 0,
    }
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split("__")
        section = values
        for key in parents:
            section = section.setdefault(key, {})
        section[leaf] = value
    return values


PALETTE = np.array([[30, 30, 30], [200, 40, 40], [40, 40, 200]], dtype=np.uint8)  # class -> colour


def labelled_source(folder: Path, count: int = 3, num_frames: int = 10, height: int = 32, width: int = 40,
                    captions=None) -> Path:
    """Frame folders whose colour is their class (``PALETTE``, 8x8 blocks), with the class maps
    as label PNGs, listed in a ``.jsonl`` (captions "clip 0", ... unless ``captions`` are given)."""
    rows = []
    for index in range(count):
        rng = np.random.default_rng(index)
        frames_dir, labels_dir = folder / f"clip{index}", folder / f"clip{index}_labels"
        frames_dir.mkdir(parents=True)
        labels_dir.mkdir()
        for t in range(num_frames):
            blocks = rng.choice(3, size=(height // 8, width // 8), p=(0.5, 0.3, 0.2))
            labels = np.kron(blocks, np.ones((8, 8), dtype=np.int64))
            Image.fromarray(PALETTE[labels]).save(frames_dir / f"{t:03d}.png")
            Image.fromarray(labels.astype(np.uint8)).save(labels_dir / f"{t:03d}.png")
        caption = captions[index % len(captions)] if captions else f"clip {index}"
        rows.append({"video": frames_dir.name, "caption": caption, "segmentation": labels_dir.name})
    (folder / "list.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder / "list.jsonl"


def classes_of(pixel_values: torch.Tensor) -> torch.Tensor:
    """The class of each pixel of ``(F, 3, H, W)`` frames in [-1, 1], by nearest palette colour."""
    rgb = ((pixel_values + 1) * 127.5).round().permute(0, 2, 3, 1)
    distances = ((rgb[..., None, :] - torch.from_numpy(PALETTE).float()) ** 2).sum(-1)
    return distances.argmin(-1)
