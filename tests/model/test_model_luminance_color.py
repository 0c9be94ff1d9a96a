"""Colour space (Rec. 601 YCbCr) and the luminance encoder (seed Sec. 3.1)."""
from __future__ import annotations

import pytest
import torch

from lc4.color import merge_luma_chroma, rgb_to_luma, rgb_to_ycbcr, to_uint8, ycbcr_to_rgb
from lc4.luminance import LuminanceEncoder, decode_latents

from model_helpers import randomize_


def test_ycbcr_round_trip_and_rec601_luma():
    rgb = torch.rand(2, 3, 5, 7, dtype=torch.float64)
    assert torch.allclose(ycbcr_to_rgb(rgb_to_ycbcr(rgb)), rgb, atol=1e-12)
    pure = torch.eye(3, dtype=torch.float64).view(3, 3, 1, 1)  # red, green, blue pixels
    assert torch.allclose(rgb_to_luma(pure).flatten(), torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64))
    gray = torch.rand(1, 1, 4, 4).expand(1, 3, 4, 4)
    assert torch.allclose(rgb_to_ycbcr(gray)[:, 1:], torch.zeros(1, 2, 4, 4), atol=1e-6)


def test_out_of_gamut_chroma_is_desaturated_keeping_luma():
    generator = torch.Generator().manual_seed(0)
    luma = torch.rand(1, 1, 16, 16, generator=generator, dtype=torch.float64)
    chroma = torch.rand(1, 2, 16, 16, generator=generator, dtype=torch.float64) * 2 - 1  # far outside
    rgb = ycbcr_to_rgb(torch.cat([luma, chroma], 1))
    assert rgb.min() >= 0 and rgb.max() <= 1
    assert torch.allclose(rgb_to_luma(rgb), luma, atol=1e-12)
    clipped = ycbcr_to_rgb(torch.cat([luma, chroma], 1), fit_gamut=False)
    assert (rgb_to_luma(clipped) - luma).abs().max() > 0.05  # what clipping would have done


def test_merge_luma_chroma_keeps_full_resolution_luma():
    luma = torch.rand(3, 1, 45, 61)
    chroma = (torch.rand(3, 2, 16, 16) - 0.5) * 0.4
    rgb = merge_luma_chroma(luma, chroma)
    assert rgb.shape == (3, 3, 45, 61)
    assert (rgb_to_luma(rgb) - luma).abs().max() < 1e-5
    assert (rgb_to_luma(to_uint8(rgb).float() / 255) - luma).abs().max() <= 0.5 / 255 + 1e-6
    with pytest.raises(ValueError, match=r"chroma: expected a float tensor \(\.\.\., 2, H, W\)"):
        merge_luma_chroma(luma, torch.rand(3, 3, 16, 16))


def test_fresh_luminance_encoder_changes_neither_latents_nor_decoding(components):
    vae, encoder = components["vae"], components["luminance_encoder"]
    luma = torch.rand(3, 1, 32, 32) * 2 - 1
    latents = torch.randn(3, 4, 16, 16)
    with torch.no_grad():
        features = encoder(luma)
        plain = vae.decode(latents / vae.config.scaling_factor).sample
        guided = decode_latents(vae, latents, features.skips)
    assert torch.equal(features.latent_residual, torch.zeros_like(features.latent_residual))
    assert features.features.shape == (3, 8, 16, 16)  # y_lum: the VAE encoder's 2 x latent channels
    assert torch.equal(guided, plain)
    # Trained projections carry luminance detail into the decoder at every scale.
    randomize_(encoder)
    with torch.no_grad():
        features = encoder(luma)
        assert features.latent_residual.abs().sum() > 0
        assert [tuple(s.shape[-2:]) for s in features.skips] == [(16, 16), (32, 32)]
        assert not torch.allclose(decode_latents(vae, latents, features.skips), plain)


def test_luminance_encoder_follows_the_sd15_vae_structure():
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL
    from lc4.luminance import SD15_VAE_CONFIG
    with init_empty_weights():
        vae = AutoencoderKL(**SD15_VAE_CONFIG)
        encoder = LuminanceEncoder.from_vae(vae)
    assert encoder.encoder.conv_in.in_channels == 1
    vae_shapes = {k: v.shape for k, v in vae.encoder.state_dict().items() if k != "conv_in.weight"}
    ours = {k: v.shape for k, v in encoder.encoder.state_dict().items() if k != "conv_in.weight"}
    assert ours == vae_shapes
    # Skip projections into the decoder's up blocks: 512 ch at 64, 512 at 128, 512 at 256, 256 at 512 px.
    assert [(p.in_channels, p.out_channels) for p in encoder.skip_projs] == [(512, 512), (256, 512), (128, 512), (128, 256)]


def test_luminance_encoder_rejects_rgb_input(components):
    with pytest.raises(ValueError, match=r"luminance: expected \(N, 1, H, W\)"):
        components["luminance_encoder"](torch.rand(2, 3, 32, 32))


def test_decoding_moves_an_offloaded_vae_as_vae_decode_does(components):
    """Under diffusers' model CPU offload an accelerate hook moves the VAE to the GPU when its
    ``forward`` or ``decode`` runs; :func:`decode_latents` calls its blocks one by one, so it must
    ask the hook itself, as ``vae.decode`` does."""
    from accelerate.hooks import ModelHook, add_hook_to_module

    vae = components["vae"]
    moves = []

    class RecordingOffload(ModelHook):
        def pre_forward(self, module, *args, **kwargs):
            moves.append(module)
            return args, kwargs

    add_hook_to_module(vae, RecordingOffload())
    latents = torch.randn(1, 4, 16, 16)
    with torch.no_grad():
        vae.decode(latents / vae.config.scaling_factor)
        assert moves == [vae]  # what vae.decode does
        decode_latents(vae, latents)
    assert moves == [vae, vae]


def test_chroma_axes_follow_jfif():
    """Cb = B - Y and Cr = R - Y, scaled to [-0.5, 0.5] (JFIF / ITU-T T.871): pure blue has
    Cb = 0.5, pure red Cr = 0.5; round trips without gamut fitting too."""
    pure = torch.eye(3, dtype=torch.float64).view(3, 3, 1, 1)  # red, green, blue pixels
    ycbcr = rgb_to_ycbcr(pure).flatten(1)
    luma = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64)
    expected_cb = (torch.eye(3, dtype=torch.float64)[:, 2] - luma) / (2 * (1 - 0.114))
    expected_cr = (torch.eye(3, dtype=torch.float64)[:, 0] - luma) / (2 * (1 - 0.299))
    assert torch.allclose(ycbcr[:, 1], expected_cb, atol=1e-8)
    assert torch.allclose(ycbcr[:, 2], expected_cr, atol=1e-8)
    rgb = torch.rand(2, 3, 5, 7, dtype=torch.float64)
    assert torch.allclose(ycbcr_to_rgb(rgb_to_ycbcr(rgb), fit_gamut=False), rgb, atol=1e-12)


def test_merged_chroma_is_upsampled_smoothly():
    """Low-resolution chroma is interpolated (bilinear), not repeated in blocks."""
    luma = torch.full((1, 1, 1, 16), 0.5, dtype=torch.float64)
    chroma = torch.zeros(1, 2, 1, 2, dtype=torch.float64)
    chroma[0, 0, 0] = torch.tensor([-0.1, 0.1])  # a Cb ramp from left to right
    cb = rgb_to_ycbcr(merge_luma_chroma(luma, chroma))[0, 1, 0]
    assert (cb.diff() >= -1e-12).all() and cb.min() >= -0.1 - 1e-6 and cb.max() <= 0.1 + 1e-6
    assert len(set(cb.round(decimals=6).tolist())) > 4  # intermediate values, not two blocks


def test_integer_frames_are_scaled_by_their_full_range():
    from lc4.color import to_unit
    eight = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(to_unit(eight), eight.float() / 255)
    sixteen = torch.tensor([0, 257, 32768, 65535], dtype=torch.int32).to(torch.uint16)
    assert to_unit(sixteen)[-1] == 1.0 and to_unit(sixteen)[0] == 0.0
    assert to_unit(sixteen)[1] == to_unit(torch.tensor([1], dtype=torch.uint8))[0]


def test_skips_come_from_the_deepest_encoder_stage_of_their_size(components):
    """Per decoder up block, the luminance encoder's features of the same size (conv_in, a down
    block or the mid block; the deepest where two have one size) through its 1x1 projection."""
    encoder = randomize_(components["luminance_encoder"])
    stages, handles = [], []
    inner = encoder.encoder
    for module in (inner.conv_in, *inner.down_blocks, inner.mid_block):
        handles.append(module.register_forward_hook(lambda m, args, out: stages.append(out)))
    luma = torch.rand(2, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        skips = encoder(luma).skips
        for handle in handles:
            handle.remove()
        assert len(stages) == len(inner.down_blocks) + 2
        for level, skip in enumerate(skips):
            same_size = [s for s in stages if s.shape[-2:] == skip.shape[-2:]]
            assert same_size, level
            torch.testing.assert_close(skip, encoder.skip_projs[level](same_size[-1]), rtol=0, atol=0)


def test_the_encoder_input_maps_luma_to_the_vae_pixel_range():
    from lc4.luminance import luminance_input
    luma = torch.tensor([0.0, 0.25, 0.5, 1.0])
    assert torch.equal(luminance_input(luma), torch.tensor([-1.0, -0.5, 0.0, 1.0]))
