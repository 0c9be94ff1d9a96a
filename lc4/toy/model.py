"""The toy L-C4: every component of the real architecture (``lc4.init_model``'s tiny layout:
VAE, luminance encoder, UNet with TDA, CLIP text encoder + tokenizer, CMPF, DDIM scheduler) at
sizes read from the toy config, a word-level tokenizer spelling the toy vocabulary, a VAE
trained on toy frames first (the diffusion stages train in its latent space and never train
it, as SD1.5's VAE comes pretrained) and then a luminance encoder trained against that VAE
(:func:`train_luminance_encoder`, standing in for the paper's L-CAD weights)."""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .dataset import clip_of_row, read_rows
from .palette import BACKGROUND_COLORS, SHAPES

logger = logging.getLogger(__name__)
TOY_WORDS = ("a", "an", "and", "on", "background", *BACKGROUND_COLORS, *SHAPES)


@dataclass
class ToyModelSizes:
    vae_channels: list[int] = field(default_factory=lambda: [16, 32])  # levels - 1 halvings: latents at 1/2 the side
    unet_channels: list[int] = field(default_factory=lambda: [32, 64])
    unet_layers_per_block: int = 1
    # Heads of the UNet's attention layers (diffusers' UNet2DConditionModel takes the head count
    # under the name ``attention_head_dim``); each head is ``channels / attention_heads`` wide.
    attention_heads: int = 2
    latent_channels: int = 4
    text_dim: int = 32
    text_layers: int = 2
    cmpf_layers: int = 1
    tda_spatial_stride: int = 2
    tda_temporal_stride: int = 2


@dataclass
class VAETraining:
    steps: int = 1500
    batch_size: int = 32  # frames
    lr: float = 1e-3
    lr_schedule: str = "cosine"  # or "constant"; both after a linear warm-up
    lr_warmup_steps: int = 100
    kl_weight: float = 1e-6
    pool_frames: int = 2048  # frames drawn once from the training clips, batches drawn from them
    # How the latents are normalised for the denoiser (lc4.latents): one scaling_factor as SD1.5
    # ("global"), or each channel to zero mean and unit variance ("per_channel").
    latent_normalization: str = "global"
    # The latents that normalisation is measured on: those the diffusion stages learn (lc4 train's
    # ``latents``), draws from the posterior ("sample") or its mean ("mode").
    latents: str = "sample"
    seed: int = 0


def toy_components(sizes: ToyModelSizes, resolution: int = 64, seed: int = 0) -> dict:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from ..cmpf import CrossModalityPreFusion
    from ..init_model import write_tiny_tokenizer
    from ..luminance import LuminanceEncoder
    from ..unet import TDAAdapter

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as folder:
        tokenizer = write_tiny_tokenizer(folder, words=TOY_WORDS, model_max_length=24)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=sizes.text_dim, intermediate_size=2 * sizes.text_dim,
        num_hidden_layers=sizes.text_layers, num_attention_heads=4, max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    levels = len(sizes.vae_channels)
    vae = AutoencoderKL(block_out_channels=tuple(sizes.vae_channels), down_block_types=("DownEncoderBlock2D",) * levels,
                        up_block_types=("UpDecoderBlock2D",) * levels, latent_channels=sizes.latent_channels, norm_num_groups=8,
                        layers_per_block=1, sample_size=resolution)
    unet_levels = len(sizes.unet_channels)
    unet = UNet2DConditionModel(
        sample_size=resolution // 2 ** (levels - 1), in_channels=sizes.latent_channels,
        out_channels=sizes.latent_channels,
        layers_per_block=sizes.unet_layers_per_block, block_out_channels=tuple(sizes.unet_channels),
        down_block_types=("CrossAttnDownBlock2D",) * unet_levels, up_block_types=("CrossAttnUpBlock2D",) * unet_levels,
        cross_attention_dim=sizes.text_dim, attention_head_dim=sizes.attention_heads, norm_num_groups=8)
    return dict(
        vae=vae, luminance_encoder=LuminanceEncoder.from_vae(vae), unet=unet,
        tda=TDAAdapter.from_unet(unet, spatial_stride=sizes.tda_spatial_stride, temporal_stride=sizes.tda_temporal_stride),
        text_encoder=text_encoder, tokenizer=tokenizer,
        cmpf=CrossModalityPreFusion(text_dim=sizes.text_dim, num_layers=sizes.cmpf_layers, num_heads=4,
                                    luminance_channels=2 * sizes.latent_channels, spatial_stride=sizes.tda_spatial_stride,
                                    temporal_stride=sizes.tda_temporal_stride),
        # SD1.5's betas, rescaled to zero terminal SNR, with v-prediction and trailing timesteps
        # (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed").
        # Trained from scratch with SD1.5's epsilon target, the toy denoiser learnt to ignore the
        # luminance and the caption at high noise (x0 error at t = 900 as large as the latents'
        # variance): the epsilon loss barely weighs x0 there, and the signal left in z_T hands
        # it the mean colour. SD1.5 itself keeps its pretrained epsilon schedule.
        scheduler=DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                clip_sample=False, set_alpha_to_one=False, prediction_type="v_prediction",
                                rescale_betas_zero_snr=True, timestep_spacing="trailing"),
    )


def training_frames(listing: str | Path, count: int, generator: np.random.Generator) -> torch.Tensor:
    """``(count, 3, H, W)`` in [-1, 1]: random frames of random clips of the list (regenerated
    from their seeds, which is faster than decoding the PNGs)."""
    rows = read_rows(listing)
    frames = []
    for index in generator.integers(len(rows), size=count):
        clip = clip_of_row(rows[int(index)])
        frames.append(clip.frames[int(generator.integers(len(clip.frames)))])
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1


def _lr_schedule(optimizer, settings: VAETraining):
    from diffusers.optimization import get_scheduler

    if settings.lr_schedule not in ("cosine", "constant"):
        raise ValueError(f"vae.lr_schedule: expected 'cosine' or 'constant', got {settings.lr_schedule!r}")
    name = "constant_with_warmup" if settings.lr_schedule == "constant" else "cosine"
    return get_scheduler(name, optimizer, num_warmup_steps=settings.lr_warmup_steps, num_training_steps=settings.steps)


def train_vae(vae, listing: str | Path, settings: VAETraining, log_every: int = 50) -> list[dict]:
    """Trains the VAE to reconstruct toy frames (MSE + a small KL term), then sets its
    normalisation (``settings.latent_normalization``): a ``scaling_factor`` so latents have unit
    variance, as SD1.5's 0.18215 does for its data, or per-channel ``latents_mean``/``latents_std``,
    measured on the latents ``settings.latents`` names."""
    from ..latents import normalization_stats
    from ..train.config import LATENT_CHOICES

    if settings.latent_normalization not in ("global", "per_channel"):
        raise ValueError(f"vae.latent_normalization: expected 'global' or 'per_channel', "
                         f"got {settings.latent_normalization!r}")
    if settings.latents not in LATENT_CHOICES:
        raise ValueError(f"vae.latents: expected one of {LATENT_CHOICES}, got {settings.latents!r}")
    torch.manual_seed(settings.seed)
    generator = np.random.default_rng(settings.seed)
    pool = training_frames(listing, max(settings.pool_frames, settings.batch_size), generator)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=settings.lr, weight_decay=0.0)
    schedule = _lr_schedule(optimizer, settings)
    curve = []
    vae.train()
    for step in range(1, settings.steps + 1):
        batch = pool[torch.randint(len(pool), (settings.batch_size,))]
        posterior = vae.encode(batch).latent_dist
        reconstruction = vae.decode(posterior.sample()).sample
        loss = F.mse_loss(reconstruction, batch) + settings.kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % log_every == 0 or step == settings.steps:
            value = loss.item()
            curve.append({"step": step, "loss": value})
            logger.info("vae step %d loss %.5f", step, value)
    vae.eval()
    with torch.no_grad():
        posteriors = [vae.encode(pool[i:i + 64]).latent_dist for i in range(0, len(pool), 64)]
        latents = torch.cat([p.mode() if settings.latents == "mode" else p.sample() for p in posteriors])
    vae.register_to_config(**normalization_stats(latents, settings.latent_normalization == "per_channel"))
    return curve


@dataclass
class LuminanceTraining:
    """The luminance encoder's pre-training (the paper takes it from L-CAD, whose weights are
    not public). 0 steps keeps the fresh, zero-initialised projections."""

    steps: int = 600
    batch_size: int = 32  # frames
    lr: float = 1e-3
    blur_factors: list[int] = field(default_factory=lambda: [1, 2, 4])  # latent degradation: avg-pool side
    latent_noise: float = 0.3  # std of the noise added to the degraded latent (unit-variance latents)
    seed: int = 0


def degrade_latents(latents: torch.Tensor, factors: list[int], noise: float, generator: torch.Generator) -> torch.Tensor:
    """Each latent average-pooled by a random factor of ``factors``, upsampled back, plus
    Gaussian noise: the coarse, blurred colour layout a denoiser hands the decoder."""
    out = []
    for latent in latents:
        factor = factors[int(torch.randint(len(factors), (1,), generator=generator))]
        coarse = F.avg_pool2d(latent[None], factor) if factor > 1 else latent[None]
        out.append(F.interpolate(coarse, size=latent.shape[-2:], mode="bilinear", align_corners=False)[0])
    degraded = torch.stack(out)
    return degraded + noise * torch.randn(degraded.shape, generator=generator)


def train_luminance_encoder(vae, luminance_encoder, listing: str | Path, settings: LuminanceTraining,
                            log_every: int = 50) -> list[dict]:
    """Trains both outputs of the luminance encoder against the frozen VAE, as L-CAD trains its
    luminance-aware decoder: the skips so that the decoder, given a degraded latent
    (:func:`degrade_latents`), restores the frame's shapes from the luma; ``latent_proj`` so
    that the residual it adds to the noisy latent predicts the clean latent from the luma alone
    (the structure a denoiser at high noise cannot see otherwise)."""
    from ..color import rgb_to_luma
    from ..latents import scale_latents
    from ..luminance import decode_latents, luminance_input

    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    pool = training_frames(listing, max(512, settings.batch_size * 16), np.random.default_rng(settings.seed))
    vae.requires_grad_(False)
    optimizer = torch.optim.AdamW(luminance_encoder.parameters(), lr=settings.lr, weight_decay=0.0)
    curve = []
    luminance_encoder.train()
    for step in range(1, settings.steps + 1):
        batch = pool[torch.randint(len(pool), (settings.batch_size,), generator=generator)]
        with torch.no_grad():
            latents = scale_latents(vae, vae.encode(batch).latent_dist.sample(generator=generator))
        features = luminance_encoder(luminance_input(rgb_to_luma((batch + 1) / 2)))
        degraded = degrade_latents(latents, settings.blur_factors, settings.latent_noise, generator)
        decode_loss = F.mse_loss(decode_latents(vae, degraded, features.skips), batch)
        latent_loss = F.mse_loss(features.latent_residual, latents)
        loss = decode_loss + latent_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % log_every == 0 or step == settings.steps:
            curve.append({"step": step, "loss": loss.item(), "decode_loss": decode_loss.item(),
                          "latent_loss": latent_loss.item()})
            logger.info("luminance encoder step %d decode %.5f latent %.5f", step, decode_loss.item(),
                        latent_loss.item())
    luminance_encoder.eval()
    return curve
