"""The toy model's pre-training of the luminance encoder (L-CAD's role in the paper)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lc4.color import rgb_to_luma
from lc4.luminance import decode_latents, luminance_input
from lc4.toy.dataset import write_split
from lc4.toy.model import LuminanceTraining, degrade_latents, train_luminance_encoder, training_frames

SHIPPED_VAE = Path(__file__).resolve().parents[2] / "models" / "toy" / "vae"


def test_degraded_latents_lose_detail_but_keep_the_layout():
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(3, 4, 16, 16, generator=generator)
    kept = degrade_latents(latents, [1], 0.0, generator)
    torch.testing.assert_close(kept, latents)
    coarse = degrade_latents(latents, [4], 0.0, generator)
    pooled = F.avg_pool2d(latents, 4)
    layout = torch.corrcoef(torch.stack([F.avg_pool2d(coarse, 4).flatten(), pooled.flatten()]))[0, 1]
    assert layout > 0.8  # the same 4x4 layout
    flat = torch.ones(1, 4, 16, 16) * torch.arange(4.0)[:, None, None]
    torch.testing.assert_close(degrade_latents(flat, [4], 0.0, generator), flat)
    assert coarse.var() < 0.5 * latents.var()  # detail gone
    noisy = degrade_latents(latents, [1], 0.5, generator)
    assert (noisy - latents).std().item() == pytest.approx(0.5, rel=0.1)


def test_luminance_pretraining_makes_skips_restore_the_frame(tmp_path):
    """A fresh luminance encoder pre-trained briefly against the shipped toy VAE: the decoder,
    handed blurred latents of held-out frames, reconstructs them better with the luminance
    skips than without, and the latent residual moves from zero (the fresh encoder's) towards
    the clean latent. The VAE stays frozen."""
    from diffusers import AutoencoderKL

    from lc4.luminance import LuminanceEncoder

    if not (SHIPPED_VAE / "config.json").is_file():
        pytest.fail(f"{SHIPPED_VAE} is missing: the toy model is committed (make toy-model rebuilds it)")
    torch.manual_seed(0)
    torch.set_num_threads(2)
    vae = AutoencoderKL.from_pretrained(SHIPPED_VAE, local_files_only=True)
    before = {name: p.clone() for name, p in vae.state_dict().items()}
    encoder = LuminanceEncoder.from_vae(vae)
    listing = write_split(tmp_path, "train", 64, size=64, num_frames=4)
    heldout = write_split(tmp_path, "heldout", 4, size=64, num_frames=4)
    frames = training_frames(heldout, 16, np.random.default_rng(1))
    luma = luminance_input(rgb_to_luma((frames + 1) / 2))

    def losses():
        with torch.no_grad():
            latents = vae.encode(frames).latent_dist.mean * vae.config.scaling_factor
            blurred = degrade_latents(latents, [4], 0.0, torch.Generator().manual_seed(0))
            features = encoder(luma)
            return (F.mse_loss(decode_latents(vae, blurred), frames).item(),
                    F.mse_loss(decode_latents(vae, blurred, features.skips), frames).item(),
                    F.mse_loss(features.latent_residual, latents).item())

    without_skips, fresh_skips, fresh_latent = losses()
    assert fresh_skips == pytest.approx(without_skips)  # zero-initialised skips change nothing
    curve = train_luminance_encoder(vae, encoder, listing, LuminanceTraining(steps=150, batch_size=16), log_every=75)
    assert [row["step"] for row in curve] == [75, 150]
    _, trained_skips, trained_latent = losses()
    assert trained_skips < 0.8 * without_skips
    assert trained_latent < 0.85 * fresh_latent
    assert all(torch.equal(before[name], p) for name, p in vae.state_dict().items())
