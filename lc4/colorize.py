"""``lc4 colorize INPUT --prompt "..." --model DIR -o OUTPUT``: colorizes a grayscale video.

INPUT is a video file or a folder of frames; OUTPUT is a video file (by its suffix, e.g.
``.mp4``) or a folder, which receives ``00000.png``, ``00001.png``, ... The model runs at
``--resolution`` (square; default: the model's own, 512 for SD1.5); its chroma is carried onto
each input frame's own full-resolution luminance, so the output has the input's size, frame
count, frame rate and display transform (rotation and mirroring; and its audio track, when the
output's format can hold it). Input frames are read twice, once shrunk to the model resolution
and once streamed at full resolution while writing, so a long video is never held in memory at
full resolution. Nothing is downloaded.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import warnings
from pathlib import Path

import av
import torch
from tqdm import tqdm

from . import video as video_io
from .devices import check_device
from .init_model import check_model_folder

DEFAULT_FPS = 25
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _check_input(path: Path) -> None:
    """A ValueError when INPUT is missing or its first frame cannot be decoded."""
    if not path.exists():
        raise ValueError(f"INPUT: {str(path)!r} does not exist")
    if not video_io.is_video_source(path):
        raise ValueError(f"INPUT: expected a video file ({', '.join(sorted(video_io.VIDEO_SUFFIXES))}) "
                         f"or a folder of frames, got {str(path)!r}")
    try:
        next(iter(video_io.iter_frames(path, size=16)))
    except StopIteration:
        raise ValueError(f"INPUT: {str(path)!r} holds no frames") from None
    except (av.FFmpegError, OSError) as error:
        raise ValueError(f"INPUT: cannot decode {str(path)!r} as video ({error})") from error


def _check_output(input_path: Path, output_path: Path) -> None:
    """A ValueError when writing OUTPUT would overwrite INPUT while it is still being read."""
    if output_path.resolve() == input_path.resolve():
        raise ValueError(f"-o/--output: {str(output_path)!r} is the input itself; the input is read while the "
                         "output is written, so give another path")


def colorize(input_path, output_path, prompt: str, model_dir, resolution=None, steps: int = 25,
             guidance_scale: float = 7.5, guidance_rescale: float = 0.0, scheduler: str | None = None, eta: float = 0.0,
             seed: int | None = 0, frames_per_clip: int = 8,
             clip_mode: str = "skip", device: str = "cpu", backend: str | None = None,
             negative_prompt: str = "", fps=None, progress: bool = True, dtype: str = "float32") -> Path:
    from .pipeline import LC4Pipeline, scheduler_named, transfer_chroma_to_frames

    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("--prompt: expected a non-empty description of the colours, e.g. 'a red car on a road'")
    if not 0.0 <= guidance_rescale <= 1.0:
        raise ValueError(f"--guidance-rescale: expected a value in [0, 1], got {guidance_rescale}")
    if eta < 0:
        raise ValueError(f"--eta: expected >= 0, got {eta}")
    if dtype not in DTYPES:
        raise ValueError(f"--dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
    input_path, output_path = Path(input_path), Path(output_path)
    _check_input(input_path)
    _check_output(input_path, output_path)
    check_device(device)
    # What the output can hold is settled before the model runs: the input's display transform
    # (rotation and mirroring; the pixels are colorized as stored) and its audio track.
    writes_video = output_path.suffix.lower() in video_io.VIDEO_SUFFIXES
    if writes_video:
        video_options = dict(fps=fps or video_io.read_fps(input_path) or DEFAULT_FPS,
                             display_matrix=video_io.read_display_matrix(input_path))
        try:
            video_io.VideoWriter(output_path, **video_options)  # checks suffix, codec, transform; writes nothing
        except ValueError as error:
            raise ValueError(f"-o/--output: {error}") from None
        keeps_audio = video_io.has_audio(input_path)
        if keeps_audio and not video_io.can_copy_audio(input_path, output_path):
            warnings.warn(f"{output_path.suffix} files cannot hold the input's audio track; writing the video "
                          "without it", stacklevel=2)
            keeps_audio = False
    elif video_io.read_display_matrix(input_path) is not None:
        warnings.warn("a frame folder cannot hold the input's display rotation or mirroring; the frames are "
                      "written as stored", stacklevel=2)
    pipeline = LC4Pipeline.from_pretrained(check_model_folder(model_dir)).to(device, DTYPES[dtype])
    if scheduler:
        pipeline.scheduler = scheduler_named(scheduler, pipeline.scheduler, argument="--scheduler")
    pipeline.set_progress_bar_config(disable=not progress, desc="denoising")
    resolution = resolution or pipeline.default_resolution
    frames = video_io.read_video(input_path, size=resolution)
    result = pipeline(frames, prompt, num_inference_steps=steps, guidance_scale=guidance_scale,
                      guidance_rescale=guidance_rescale, eta=eta, seed=seed,
                      negative_prompt=negative_prompt, resolution=resolution, frames_per_clip=frames_per_clip,
                      clip_mode=clip_mode, full_resolution=False, backend=backend)
    chroma = result.chroma

    colorized = (transfer_chroma_to_frames(frame, chroma[i])
                 for i, frame in enumerate(video_io.iter_frames(input_path)))
    colorized = tqdm(colorized, total=len(chroma), desc="writing", disable=not progress)
    if writes_video:
        if keeps_audio:
            with tempfile.TemporaryDirectory() as tmp:
                silent = Path(tmp) / f"video{output_path.suffix}"
                video_io.write_video(silent, colorized, **video_options)
                video_io.mux_audio(silent, input_path, output_path)
        else:
            video_io.write_video(output_path, colorized, **video_options)
    else:
        video_io.write_frame_folder(output_path, colorized)
    return output_path


def _run(args: argparse.Namespace) -> int:
    if args.backend:
        import lc4_kernels
        if args.backend != "auto":
            lc4_kernels.get_backend(args.backend)
    output = colorize(args.input, args.output, args.prompt, args.model, resolution=args.resolution,
                      steps=args.steps, guidance_scale=args.guidance_scale,
                      guidance_rescale=args.guidance_rescale, scheduler=args.scheduler, eta=args.eta,
                      seed=args.seed,
                      frames_per_clip=args.frames_per_clip, clip_mode=args.clip_mode, device=args.device,
                      backend=args.backend, negative_prompt=args.negative_prompt, fps=args.fps,
                      progress=not args.quiet, dtype=args.dtype)
    print(f"wrote {output}")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("colorize", help="colorize a grayscale video from a text prompt",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", metavar="INPUT", help="video file or folder of frames")
    parser.add_argument("--prompt", required=True, help="description of the colours")
    parser.add_argument("--model", required=True, metavar="DIR", help="model folder (see `lc4 init-model`)")
    parser.add_argument("-o", "--output", required=True, metavar="OUTPUT", help="video file (.mp4) or folder for PNGs")
    parser.add_argument("--resolution", type=int, default=None, help="model resolution (default: the model's)")
    parser.add_argument("--steps", type=int, default=25, help="denoising steps (default 25)")
    parser.add_argument("--scheduler", default=None, metavar="NAME",
                        help="a diffusers scheduler class compatible with the model's, configured from the "
                             "model's scheduler config, e.g. DPMSolverMultistepScheduler (default: the model's)")
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM's eta: 0 deterministic (default), 1 DDPM-like")
    parser.add_argument("--guidance-scale", type=float, default=7.5)
    parser.add_argument("--guidance-rescale", type=float, default=0.0,
                        help="0-1: the guided prediction scaled back to the conditional one's spread "
                             "(against over-saturation at high guidance; default 0, off)")
    parser.add_argument("--negative-prompt", default="")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frames-per-clip", type=int, default=8, help="N^f, frames per TDA clip (default 8)")
    parser.add_argument("--clip-mode", choices=("skip", "sliding", "disjoint"), default="skip",
                        help="cross-clip fusion: skip windows (paper), sliding windows, or none")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32",
                        help="the model's weights and activations: float16 or bfloat16 for a GPU (half "
                             "the weights' memory; V100s have no bfloat16), bfloat16 also on a CPU; "
                             "default float32")
    parser.add_argument("--backend", default=None, help="lc4_kernels backend (default: automatic)")
    parser.add_argument("--fps", type=float, default=None, help="output frame rate for frame-folder input")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(handler=_run)
