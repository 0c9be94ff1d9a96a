"""LC4Pipeline on a CUDA GPU (skipped without one): the same colours as on the CPU with every
GPU backend of the TDA op, in half precision, with diffusers' model CPU offload, and the noise
drawn by a CUDA generator."""
from __future__ import annotations

import pytest
import torch

import lc4_kernels
from lc4.pipeline import LC4Pipeline

from model_helpers import randomize_

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# Two clips fused by CCF, two prompts in one batch, classifier-free guidance.
RUN = dict(num_inference_steps=3, guidance_scale=3.0, seed=0, resolution=16, frames_per_clip=4,
           negative_prompt=["a grey car", ""])
PROMPTS = ["a red car", "a blue car on a green road"]


def trained_like(folder) -> LC4Pipeline:
    """The tiny model with its zero-initialised output layers given (seeded) random weights."""
    pipe = LC4Pipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    for module in (pipe.tda, pipe.cmpf, pipe.luminance_encoder):
        randomize_(module, std=0.1)
    return pipe


def gray_frames(frames=6, height=20, width=28):
    generator = torch.Generator().manual_seed(5)
    return torch.randint(0, 256, (frames, 1, height, width), generator=generator, dtype=torch.uint8).expand(-1, 3, -1, -1)


@pytest.fixture(scope="module")
def on_cpu(tiny_model_dir):
    return trained_like(tiny_model_dir)(gray_frames(), PROMPTS, **RUN)


@pytest.fixture
def no_tf32():
    """Full float32 matmuls and convolutions (cuDNN takes TF32 by default), for a strict comparison."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("backend", ["auto", "cuda", "triton", "reference"])
def test_the_pipeline_on_cuda_gives_the_cpu_colours(tiny_model_dir, on_cpu, no_tf32, backend):
    if backend not in ("auto", "reference") and backend not in lc4_kernels.available_backends():
        pytest.skip(f"the {backend} backend is not available here")
    pipe = trained_like(tiny_model_dir).to("cuda")
    output = pipe(gray_frames(), PROMPTS, **RUN, backend=backend)
    assert output.frames.device.type == "cpu" and output.frames.shape == on_cpu.frames.shape
    for got, expected in zip((output.frames, output.chroma, output.full_resolution_frames),
                             (on_cpu.frames, on_cpu.chroma, on_cpu.full_resolution_frames)):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)


def test_half_precision_on_cuda_stays_near_float32(tiny_model_dir, no_tf32):
    full = trained_like(tiny_model_dir).to("cuda")
    half = trained_like(tiny_model_dir).to("cuda", torch.float16)
    assert half.unet.dtype == half.vae.dtype == half.cmpf.dtype == torch.float16
    expected = full(gray_frames(), PROMPTS, **RUN).frames
    got = half(gray_frames(), PROMPTS, **RUN).frames
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-2)


def test_model_cpu_offload_gives_the_same_colours(tiny_model_dir, no_tf32):
    pytest.importorskip("accelerate")
    expected = trained_like(tiny_model_dir).to("cuda")(gray_frames(), PROMPTS, **RUN).frames
    offloaded = trained_like(tiny_model_dir)
    offloaded.enable_model_cpu_offload()
    got = offloaded(gray_frames(), PROMPTS, **RUN).frames
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert all(p.device.type == "cpu" for p in offloaded.unet.parameters())  # moved back after the call


def test_a_cuda_generator_draws_the_noise_on_the_gpu(tiny_model_dir):
    pipe = trained_like(tiny_model_dir).to("cuda")
    unseeded = {key: value for key, value in RUN.items() if key != "seed"}

    def run(seed):
        return pipe(gray_frames(), PROMPTS, **unseeded, generator=torch.Generator("cuda").manual_seed(seed)).frames

    first = run(0)
    torch.testing.assert_close(run(0), first, rtol=0, atol=1e-6)
    assert not torch.allclose(run(1), first, atol=1e-3)
