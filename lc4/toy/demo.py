"""``make demo``: one held-out clip colorized under its caption and under a prompt with two
colours swapped; a side-by-side video and a PNG contact sheet (rows: grey input, prompt A,
prompt B, ground truth; columns: frames)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..video import write_video
from .evaluate import swapped_spec
from .generator import ToyClip
from .run import colorize
from .settings import ToyEvaluation

LABEL_WIDTH = 190


def _labelled_row(frames: np.ndarray, label: str, scale: int) -> np.ndarray:
    row = np.concatenate(list(frames), axis=1)
    row = np.asarray(Image.fromarray(row).resize((row.shape[1] * scale, row.shape[0] * scale), Image.NEAREST))
    panel = Image.new("RGB", (LABEL_WIDTH, row.shape[0]), "white")
    ImageDraw.Draw(panel).multiline_text((4, 4), label, fill="black")
    return np.concatenate([np.asarray(panel), row], axis=1)


def _wrap(text: str, width: int = 30) -> str:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + len(word) >= width:
            lines.append(line)
            line = ""
        line = f"{line} {word}".strip()
    return "\n".join([*lines, line])


def write_demo(pipeline, clip: ToyClip, settings: ToyEvaluation, out: Path, scale: int = 2) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    prompt_a = clip.caption
    prompt_b = swapped_spec(clip.spec).caption if len(clip.spec.objects) >= 2 else prompt_a.replace(
        clip.spec.objects[0].color, next(c for c in ("blue", "red") if c != clip.spec.objects[0].color), 1)
    gray = np.repeat(np.asarray(Image.fromarray(clip.frames.reshape(-1, clip.frames.shape[2], 3)).convert("L"))
                     .reshape(clip.frames.shape[:3])[..., None], 3, axis=-1)
    output_a = colorize(pipeline, clip, prompt_a, settings)
    output_b = colorize(pipeline, clip, prompt_b, settings)
    rows = [("grayscale input", gray), (f"A: {prompt_a}", output_a), (f"B: {prompt_b}", output_b),
            ("ground truth", clip.frames)]
    sheet = np.concatenate([_labelled_row(frames, _wrap(label), scale) for label, frames in rows], axis=0)
    sheet_path = out / "contact_sheet.png"
    Image.fromarray(sheet).save(sheet_path)
    side_by_side = np.concatenate([gray, output_a, output_b, clip.frames], axis=2)
    video_path = write_video(out / "side_by_side.mp4", np.repeat(side_by_side, scale, axis=1).repeat(scale, axis=2),
                             fps=4)
    (out / "prompts.txt").write_text(f"A: {prompt_a}\nB: {prompt_b}\n")
    return [sheet_path, video_path]
