"""Latent normalisation from the VAE config (lc4.latents): diffusers' three conventions, the
decoder and the training encoder both using it, and the toy VAE's per-channel statistics."""
from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKL

from lc4.latents import normalization_stats, scale_latents, unscale_latents
from lc4.luminance import decode_latents
from lc4.train.models import encode_frames


def tiny_vae(**config) -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=3, norm_num_groups=4,
                         layers_per_block=1, sample_size=16, **config).eval()


def test_each_config_convention_is_diffusers_formula_and_inverts():
    z = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    mean, std = [0.5, -1.0, 2.0], [2.0, 0.5, 4.0]
    cases = {
        "SD1.5": (tiny_vae(scaling_factor=0.18215), lambda z: z * 0.18215),
        "SD3 shift": (tiny_vae(scaling_factor=1.5, shift_factor=0.25), lambda z: (z - 0.25) * 1.5),
        "per channel": (tiny_vae(scaling_factor=0.75, latents_mean=mean, latents_std=std),
                        lambda z: torch.stack([(z[:, c] - mean[c]) * 0.75 / std[c] for c in range(3)], 1)),
    }
    for name, (vae, formula) in cases.items():
        scaled = scale_latents(vae, z)
        torch.testing.assert_close(scaled, formula(z), msg=name)
        torch.testing.assert_close(unscale_latents(vae, scaled), z, msg=name)
    video = torch.randn(2, 3, 4, 6, 6, dtype=torch.float64)  # (N, C, F, H, W): channels stay dim 1
    vae = cases["per channel"][0]
    torch.testing.assert_close(scale_latents(vae, video)[:, 1], (video[:, 1] + 1.0) * 0.75 / 0.5)


def test_per_channel_stats_of_the_wrong_length_name_the_config_entry():
    vae = tiny_vae(latents_mean=[0.0, 0.0], latents_std=[1.0, 1.0])
    with pytest.raises(ValueError, match=r"vae.config.latents_mean: expected 3 values.*got 2"):
        scale_latents(vae, torch.zeros(1, 3, 2, 2))


def test_normalization_stats_give_unit_latents_globally_or_per_channel():
    spread, offset = torch.tensor([0.2, 1.0, 3.0]).view(1, 3, 1, 1), torch.tensor([1.0, 0.0, -2.0]).view(1, 3, 1, 1)
    raw = torch.randn(64, 3, 8, 8) * spread + offset
    per_channel = tiny_vae(**normalization_stats(raw, per_channel=True))
    scaled = scale_latents(per_channel, raw)
    torch.testing.assert_close(scaled.mean((0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(scaled.std((0, 2, 3)), torch.ones(3), atol=1e-4, rtol=0)
    single = tiny_vae(**normalization_stats(raw, per_channel=False))
    assert single.config.latents_mean is None
    assert scale_latents(single, raw).std().item() == pytest.approx(1.0, rel=1e-4)
    assert scale_latents(single, raw).std((0, 2, 3))[0] < 0.2  # one factor leaves channels unequal


def test_decoding_and_training_encodings_use_the_per_channel_stats(tmp_path):
    vae = tiny_vae(scaling_factor=0.9, latents_mean=[0.3, -0.2, 0.1], latents_std=[0.5, 2.0, 1.5])
    vae.save_pretrained(tmp_path)
    loaded = AutoencoderKL.from_pretrained(tmp_path)
    assert list(loaded.config.latents_std) == [0.5, 2.0, 1.5]
    pixels = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        raw = loaded.encode(pixels).latent_dist
        torch.testing.assert_close(decode_latents(loaded, scale_latents(loaded, raw.mean)),
                                   loaded.decode(raw.mean).sample)
        generator = torch.Generator().manual_seed(3)
        encoded = encode_frames(loaded, pixels, generator=generator)
        expected = scale_latents(loaded, raw.sample(generator=torch.Generator().manual_seed(3)))
    torch.testing.assert_close(encoded, expected)
