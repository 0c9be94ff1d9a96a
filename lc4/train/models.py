"""The L-C4 components as training sees them, and the loss of one step (Eq. 9).

:class:`LC4Denoiser` holds what gradients flow through (the UNet with TDA, the luminance
encoder, in stage 2 CMPF, and the text encoder when it trains) so that accelerate wraps one
module in DDP; the frozen VAE and a frozen text encoder stay outside (in fp16 on a GPU).
:func:`diffusion_loss` is Eq. 9's MSE: frames to
latents with the VAE, noise at a random DDPM timestep, the luminance residual added to the
noisy latent as the pipeline adds it at inference, the UNet (under CLIP embeddings in stage 1,
under CMPF's instance-aware embeddings in stage 2) predicts the noise. The target follows the
model folder's scheduler, as diffusers' training scripts do: ``epsilon`` (the paper's, for
SD1.5), or ``v_prediction`` / ``sample`` for models trained from scratch on a zero-terminal-SNR
schedule (the toy model, :mod:`lc4.toy`), where the noise target carries no signal at t = T.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..cmpf import CrossModalityPreFusion, color_token_mask
from ..latents import scale_latents
from ..luminance import LuminanceEncoder, LuminanceFeatures
from ..unet import TDAAdapter, load_unet_with_tda, temporal_kwargs

if TYPE_CHECKING:
    from .encoding_cache import FrozenEncodingCache


PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


@dataclass
class Components:
    """Every part of an L-C4 model folder, loaded for training."""

    vae: nn.Module
    text_encoder: nn.Module
    tokenizer: object
    unet: nn.Module  # with the TDA layers inserted
    tda: TDAAdapter  # the same TDA modules, for saving them in their own folder
    luminance_encoder: LuminanceEncoder
    cmpf: CrossModalityPreFusion
    noise_scheduler: object  # DDPMScheduler
    scheduler_config: dict  # the folder's own (inference) scheduler config


def load_components(model_dir: str | Path) -> Components:
    from diffusers import AutoencoderKL, DDPMScheduler
    from transformers import CLIPTextModel, CLIPTokenizer

    from ..init_model import check_model_folder

    folder = check_model_folder(model_dir)
    scheduler_config = DDPMScheduler.load_config(folder / "scheduler")
    noise_scheduler = DDPMScheduler.from_config(scheduler_config)
    if noise_scheduler.config.prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"model: scheduler/prediction_type is {noise_scheduler.config.prediction_type!r}; "
                         f"expected one of {PREDICTION_TYPES}")
    unet, tda = load_unet_with_tda(folder / "unet", folder / "tda")
    return Components(
        vae=AutoencoderKL.from_pretrained(folder / "vae", local_files_only=True),
        text_encoder=CLIPTextModel.from_pretrained(folder / "text_encoder", local_files_only=True),
        tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True),
        unet=unet, tda=tda,
        luminance_encoder=LuminanceEncoder.from_pretrained(folder / "luminance_encoder", local_files_only=True),
        cmpf=CrossModalityPreFusion.from_pretrained(folder / "cmpf", local_files_only=True),
        noise_scheduler=noise_scheduler, scheduler_config=dict(scheduler_config),
    )


def trainable_parameters(components: Components, parts: tuple[str, ...]) -> dict[str, list[nn.Parameter]]:
    """Parameters of each trainable part. ``unet`` means the SD1.5 UNet's own weights and
    ``tda`` the TDA layers in it, so either can train without the other. The luminance
    encoder's ``skip_projs`` feed only the VAE decoder, which Eq. 9 never runs: they get no
    gradient, so they are left out (DDP insists that every trained parameter gets one)."""
    tda_ids = {id(p) for p in components.tda.parameters()}
    groups = {
        "unet": [p for p in components.unet.parameters() if id(p) not in tda_ids],
        "tda": list(components.tda.parameters()),
        "luminance_encoder": [p for name, p in components.luminance_encoder.named_parameters()
                              if not name.startswith("skip_projs.")],
        "cmpf": list(components.cmpf.parameters()),
        "text_encoder": list(components.text_encoder.parameters()),
    }
    return {part: groups[part] for part in parts}


def freeze_all_but(components: Components, parts: tuple[str, ...]) -> list[nn.Parameter]:
    """Sets ``requires_grad`` so exactly ``parts`` train; returns their parameters."""
    for module in (components.vae, components.text_encoder, components.unet, components.luminance_encoder,
                   components.cmpf):
        module.requires_grad_(False)
    params = [p for group in trainable_parameters(components, parts).values() for p in group]
    for param in params:
        param.requires_grad_(True)
    return params


def use_channels_last(components: Components) -> None:
    """Puts the weights of every 2D convolution in channels-last memory format (in place)."""
    for module in (components.vae, components.unet, components.luminance_encoder, components.cmpf):
        for layer in module.modules():
            if isinstance(layer, nn.Conv2d):
                layer.to(memory_format=torch.channels_last)


class LC4Denoiser(nn.Module):
    """``epsilon_theta(z_t, t, y_tex, y_lum)``: the UNet with TDA, conditioned on the luminance
    (residual added to ``z_t``) and on the caption embeddings, refined by CMPF when ``cmpf``
    is given (stage 2). With a ``text_encoder`` (one that trains) it takes the captions' token
    ids and embeds them itself."""

    def __init__(self, unet: nn.Module, luminance_encoder: LuminanceEncoder,
                 cmpf: Optional[CrossModalityPreFusion] = None, text_encoder: Optional[nn.Module] = None):
        super().__init__()
        self.unet, self.luminance_encoder, self.cmpf = unet, luminance_encoder, cmpf
        self.text_encoder = text_encoder

    def forward(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, text: torch.Tensor,
                luminance: torch.Tensor | LuminanceFeatures, num_frames: int,
                color_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``noisy_latents`` ``(B*F, 4, h, w)``, ``timesteps`` ``(B*F,)``, ``text`` the caption
        embeddings ``(B, L, D)`` or, with a ``text_encoder``, their token ids ``(B, L)``;
        ``luminance`` ``(B*F, 1, H, W)`` in ``[-1, 1]``, or the frozen luminance encoder's output
        for it (:class:`lc4.train.encoding_cache.FrozenEncodingCache`)."""
        if self.text_encoder is not None:
            if text.dim() != 2 or text.is_floating_point():
                raise ValueError(f"text: this denoiser embeds captions itself and expects token ids (B, L), "
                                 f"got {tuple(text.shape)} {text.dtype}")
            text_embeds = self.text_encoder(text)[0].float()
        else:
            text_embeds = text
        if isinstance(luminance, LuminanceFeatures):
            lum = luminance
        else:
            lum = self.luminance_encoder(luminance, return_skips=False)
        if self.cmpf is not None:
            text_embeds = self.cmpf(text_embeds, lum.features, num_frames, color_mask)
        text_embeds = text_embeds.repeat_interleave(num_frames, dim=0)
        model_in = noisy_latents + lum.latent_residual.to(noisy_latents.dtype)
        return self.unet(model_in, timesteps, encoder_hidden_states=text_embeds,
                         cross_attention_kwargs=temporal_kwargs(model_in, num_frames)).sample


def tokenize_captions(tokenizer, captions: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids ``(B, L)`` padded to the tokenizer's length, and the colour-word mask ``(B, L)`` of CMPF."""
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    return ids.to(device), color_token_mask(tokenizer, ids).to(device)


@torch.no_grad()
def encode_captions(tokenizer, text_encoder, captions: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP embeddings ``(B, L, D)`` (float32) and the colour-word mask ``(B, L)`` of CMPF."""
    ids, color_mask = tokenize_captions(tokenizer, captions, device)
    return text_encoder(ids)[0].float(), color_mask


@torch.no_grad()
def encode_frames(vae, pixel_values: torch.Tensor, generator: Optional[torch.Generator] = None,
                  mode: bool = False) -> torch.Tensor:
    """``(N, 3, H, W)`` in ``[-1, 1]`` -> scaled latents ``(N, 4, H/8, W/8)`` (float32), sampled
    from the VAE's posterior (its mean with ``mode``)."""
    return sample_latents(vae, vae.encode(pixel_values.to(vae.dtype)).latent_dist, generator, mode)


def sample_latents(vae, posterior, generator: Optional[torch.Generator] = None, mode: bool = False) -> torch.Tensor:
    """A scaled float32 latent drawn from ``posterior`` (the VAE's ``latent_dist``, or its
    ``parameters`` as :class:`lc4.train.encoding_cache.FrozenEncodingCache` keeps them), or with
    ``mode`` its mean."""
    if isinstance(posterior, torch.Tensor):
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        posterior = DiagonalGaussianDistribution(posterior)
    latents = posterior.mode() if mode else posterior.sample(generator=generator)
    return scale_latents(vae, latents.float())


def boundary_cell_weights(labels: torch.Tensor, latent_size: tuple[int, int], boundary_weight: float) -> torch.Tensor:
    """``(N, 1, h, w)`` loss weights for ``(N, H, W)`` label maps: ``1 + boundary_weight`` on
    the latent cells whose ``H/h x W/w`` pixels hold two or more labels, 1 elsewhere, scaled so
    that each frame's weights average 1 (the loss keeps its size; only its spread changes)."""
    height, width = latent_size
    if labels.dim() != 3 or labels.shape[-2] % height or labels.shape[-1] % width:
        raise ValueError(f"segmentation: expected (N, H, W) label maps with H, W multiples of the latent's "
                         f"{height} x {width}, got {tuple(labels.shape)}")
    cell = (labels.shape[-2] // height, labels.shape[-1] // width)
    labels = labels.unsqueeze(1).float()
    mixed = F.max_pool2d(labels, cell) != -F.max_pool2d(-labels, cell)
    weights = 1 + boundary_weight * mixed.float()
    return weights / weights.mean(dim=(-2, -1), keepdim=True)


def diffusion_loss(denoiser: nn.Module, components: Components, batch: dict,
                   generator: Optional[torch.Generator] = None, timesteps: Optional[torch.Tensor] = None,
                   with_cmpf: bool = False, snr_gamma: Optional[float] = None,
                   train_text_encoder: bool = False,
                   encodings: Optional["FrozenEncodingCache"] = None, boundary_weight: float = 0.0,
                   latents_from_mode: bool = False) -> torch.Tensor:
    """Eq. 9 on one batch of clips. Noise and timesteps come from the global RNG unless a
    ``generator`` (for a fixed evaluation loss) or ``timesteps`` ``(B,)`` are given. With
    ``snr_gamma`` each clip's MSE is weighted by Min-SNR's ``min(SNR(t), gamma)`` over the
    target's own weight: ``SNR(t)`` (epsilon), ``SNR(t) + 1`` (v), ``1`` (sample). With
    ``train_text_encoder`` the denoiser holds the text encoder and gets token ids. With
    ``encodings`` (a :class:`lc4.train.encoding_cache.FrozenEncodingCache`) the frozen VAE's
    posterior and luminance features come from it, by the batch's ``frame_keys``. With
    ``boundary_weight`` > 0 each frame's squared errors are weighted by
    :func:`boundary_cell_weights` of the batch's ``segmentation`` label maps. With
    ``latents_from_mode`` the denoiser learns the posterior's mean instead of a draw from it."""
    pixel_values, luminance = batch["pixel_values"], batch["luminance"]
    batch_size, num_frames = pixel_values.shape[:2]
    device = pixel_values.device
    if encodings is None:
        latents = encode_frames(components.vae, pixel_values.flatten(0, 1), generator, latents_from_mode)
        luminance = luminance.flatten(0, 1)
    else:
        if "frame_keys" not in batch:
            raise ValueError("data.cache_encodings: the batch has no frame_keys (TextVideoDataset gives them)")
        posterior, luminance = encodings.lookup(pixel_values.flatten(0, 1), luminance.flatten(0, 1),
                                                batch["frame_keys"].flatten(0, 1))
        latents = sample_latents(components.vae, posterior, generator, latents_from_mode)
    noise = torch.randn(latents.shape, generator=generator, device=generator.device if generator else device)
    noise = noise.to(device)
    if timesteps is None:
        steps = components.noise_scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, steps, (batch_size,), generator=generator,
                                  device=generator.device if generator else device)
    # One timestep per clip: the frames of a clip are denoised together, as at inference.
    timesteps = timesteps.to(device).long().repeat_interleave(num_frames)
    noisy = components.noise_scheduler.add_noise(latents, noise, timesteps)
    if train_text_encoder:
        text, color_mask = tokenize_captions(components.tokenizer, batch["captions"], device)
    else:
        text, color_mask = encode_captions(components.tokenizer, components.text_encoder, batch["captions"], device)
    prediction = denoiser(noisy, timesteps, text, luminance, num_frames,
                          color_mask if with_cmpf else None)
    prediction_type = components.noise_scheduler.config.prediction_type
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "v_prediction":
        target = components.noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = latents
    if snr_gamma is None and boundary_weight == 0:
        return F.mse_loss(prediction.float(), target, reduction="mean")
    errors = F.mse_loss(prediction.float(), target, reduction="none")
    if boundary_weight > 0:
        if "segmentation" not in batch:
            raise ValueError("boundary_weight > 0: the batch has no segmentation label maps")
        weights = boundary_cell_weights(batch["segmentation"].flatten(0, 1), errors.shape[-2:], boundary_weight)
        errors = errors * weights.to(errors.device)
    if snr_gamma is None:
        return errors.mean()
    per_clip = errors.unflatten(0, (batch_size, num_frames))
    per_clip = per_clip.mean(dim=tuple(range(1, per_clip.dim())))
    alphas = components.noise_scheduler.alphas_cumprod.to(device)[timesteps[::num_frames]]
    snr = alphas / (1 - alphas)
    target_weight = {"epsilon": snr, "v_prediction": snr + 1, "sample": torch.ones_like(snr)}[prediction_type]
    return (per_clip * torch.clamp(snr, max=snr_gamma) / target_weight).mean()
