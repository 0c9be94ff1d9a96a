"""The map between a VAE's raw latents and the normalised latents the denoiser works on, read from
the VAE's config as diffusers defines it: ``scaling_factor`` (SD1.5's 0.18215), an optional scalar
``shift_factor`` (SD3, Flux) and optional per-channel ``latents_mean`` / ``latents_std`` (SDXL's
and the video VAEs' convention: ``(z - mean) * scaling_factor / std``)."""
from __future__ import annotations

from typing import Optional

import torch


def _channel_stats(vae, latents: torch.Tensor) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    config = vae.config
    mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
    if mean is None and std is None:
        return None, None
    channels = latents.shape[1]
    shape = (1, channels) + (1,) * (latents.dim() - 2)
    stats = []
    for name, values, default in (("latents_mean", mean, 0.0), ("latents_std", std, 1.0)):
        values = [default] * channels if values is None else list(values)
        if len(values) != channels:
            raise ValueError(f"vae.config.{name}: expected {channels} values, one per latent channel, "
                             f"got {len(values)}")
        stats.append(torch.tensor(values, dtype=latents.dtype, device=latents.device).view(shape))
    return stats[0], stats[1]


def scale_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """Raw VAE latents ``(N, C, ...)`` -> the denoiser's normalised latents."""
    config = vae.config
    mean, std = _channel_stats(vae, latents)
    if mean is not None:
        return (latents - mean) * config.scaling_factor / std
    shift = getattr(config, "shift_factor", None)
    return (latents - (shift or 0.0)) * config.scaling_factor


def unscale_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`scale_latents`: normalised latents -> what ``vae.decode`` takes."""
    config = vae.config
    mean, std = _channel_stats(vae, latents)
    if mean is not None:
        return latents * std / config.scaling_factor + mean
    shift = getattr(config, "shift_factor", None)
    return latents / config.scaling_factor + (shift or 0.0)


def normalization_stats(latents: torch.Tensor, per_channel: bool) -> dict:
    """The VAE config entries that make ``latents`` (raw, ``(N, C, ...)``) zero-mean unit-variance
    under :func:`scale_latents`: per channel (``latents_mean``, ``latents_std``, scaling 1) or,
    as SD1.5 does, one ``scaling_factor`` for all (no shift: SD1.5 does not centre its latents)."""
    if not per_channel:
        return {"scaling_factor": float(1.0 / latents.std()), "latents_mean": None, "latents_std": None}
    flat = latents.transpose(0, 1).reshape(latents.shape[1], -1).double()
    return {"scaling_factor": 1.0, "latents_mean": flat.mean(1).tolist(), "latents_std": flat.std(1).tolist()}
