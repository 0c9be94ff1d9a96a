"""The toy model: its components at the configured sizes, the VAE's schedule and the
pre-training of the luminance encoder (L-CAD's role in the paper)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lc4.color import rgb_to_luma
from lc4.latents import scale_latents
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
            latents = scale_latents(vae, vae.encode(frames).latent_dist.mean)
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


def test_toy_components_follow_the_configured_sizes():
    """Latent channels reach the VAE, the UNet's input and output, the luminance encoder's
    residual and CMPF's visual input; ``attention_heads`` is the UNet's head count."""
    from lc4.toy.model import ToyModelSizes, toy_components
    from lc4.train.models import LC4Denoiser

    sizes = ToyModelSizes(vae_channels=[8, 16], unet_channels=[16, 32], attention_heads=2, latent_channels=6,
                          text_dim=16)
    parts = toy_components(sizes, resolution=16)
    assert parts["vae"].config.latent_channels == 6
    assert (parts["unet"].config.in_channels, parts["unet"].config.out_channels) == (6, 6)
    assert parts["cmpf"].config.luminance_channels == 12  # the encoder's doubled (mean, logvar) width
    heads = {m.heads for name, m in parts["unet"].named_modules() if name.endswith("attn2")}
    assert heads == {2}
    denoiser = LC4Denoiser(parts["unet"], parts["luminance_encoder"], parts["cmpf"])
    ids = parts["tokenizer"](["a red circle"], padding="max_length", return_tensors="pt").input_ids
    text = parts["text_encoder"](ids)[0]
    with torch.no_grad():
        out = denoiser(torch.randn(8, 6, 8, 8), torch.full((8,), 500), text, torch.rand(8, 1, 16, 16) * 2 - 1, 8)
    assert out.shape == (8, 6, 8, 8)


def test_vae_learning_rate_schedule():
    from lc4.toy.model import VAETraining, _lr_schedule

    def rates(schedule_name):
        param = torch.nn.Parameter(torch.zeros(1))
        optimizer = torch.optim.SGD([param], lr=1.0)
        schedule = _lr_schedule(optimizer, VAETraining(steps=100, lr_schedule=schedule_name, lr_warmup_steps=10))
        seen = []
        for _ in range(100):
            seen.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            schedule.step()
        return seen

    cosine, constant = rates("cosine"), rates("constant")
    assert cosine[0] == constant[0] == 0.0 and cosine[10] == constant[10] == pytest.approx(1.0)
    assert cosine[-1] < 0.01 and constant[-1] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="vae.lr_schedule"):
        rates("linear")


def test_vae_training_sets_the_chosen_latent_normalization(tmp_path):
    from lc4.toy.model import ToyModelSizes, VAETraining, toy_components, train_vae

    listing = write_split(tmp_path, "train", 4, size=32, num_frames=2)
    sizes = ToyModelSizes(vae_channels=[8, 8], latent_channels=3)
    quick = dict(steps=2, batch_size=4, pool_frames=8, lr_warmup_steps=1)
    vae = toy_components(sizes, resolution=32)["vae"]
    train_vae(vae, listing, VAETraining(**quick, latent_normalization="per_channel"), log_every=1)
    assert vae.config.scaling_factor == 1.0
    assert len(vae.config.latents_mean) == len(vae.config.latents_std) == 3
    assert min(vae.config.latents_std) > 0 and len(set(vae.config.latents_std)) == 3
    vae = toy_components(sizes, resolution=32)["vae"]
    train_vae(vae, listing, VAETraining(**quick), log_every=1)
    assert vae.config.latents_mean is None and vae.config.scaling_factor != 1.0

    def scaled_mean_latents_std(vae):  # over the pool train_vae draws
        pool = training_frames(listing, quick["pool_frames"], np.random.default_rng(0))
        with torch.no_grad():
            return scale_latents(vae, vae.encode(pool).latent_dist.mean).std().item()

    assert scaled_mean_latents_std(vae) < 0.9  # measured on draws, which add the posterior's noise
    vae = toy_components(sizes, resolution=32)["vae"]
    train_vae(vae, listing, VAETraining(**quick, latents="mode"), log_every=1)
    assert scaled_mean_latents_std(vae) == pytest.approx(1.0, rel=1e-4)
    with pytest.raises(ValueError, match="vae.latent_normalization"):
        train_vae(vae, listing, VAETraining(**quick, latent_normalization="per-channel"))
    with pytest.raises(ValueError, match="vae.latents"):
        train_vae(vae, listing, VAETraining(**quick, latents="mean"))
