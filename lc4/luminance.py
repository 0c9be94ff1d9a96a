"""The luminance encoder (seed Sec. 3.1) and the VAE decoding it guides.

:class:`LuminanceEncoder` has the structure of the SD VAE encoder (diffusers ``Encoder``) with a
one-channel input: Rec. 601 luma (see :mod:`lc4.color`) scaled to ``[-1, 1]``. Its output
``y_lum`` (the encoder's ``conv_out`` features at latent size) serves two uses:

* through ``latent_proj`` (a zero-initialised 3x3 conv) it is added to the noisy latent before
  every UNet call, aligning the global structure with the monochrome frames;
* it is CMPF's visual prompt.

Its multi-scale features (``conv_in``, the down blocks, the mid block) go through
zero-initialised 1x1 convs (``skip_projs``) and are added to the inputs of the VAE decoder's up
blocks of the same size (:func:`decode_latents`), preserving local detail. A fresh encoder
therefore changes nothing: UNet inputs and decoded frames are those of plain SD1.5.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from diffusers import AutoencoderKL
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import Encoder
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .latents import unscale_latents

# The SD1.5 VAE's structure (block widths, depth), shared by the luminance encoder.
SD15_VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
    block_out_channels=(128, 256, 512, 512), sample_size=512, scaling_factor=0.18215,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
)


def luminance_input(luma: torch.Tensor) -> torch.Tensor:
    """Luma in ``[0, 1]`` -> the encoder's input range ``[-1, 1]`` (the VAE's pixel range)."""
    return luma * 2 - 1


def _source_index(level: int, num_levels: int) -> int:
    """Index into the encoder stages ``[conv_in, down_0, ..., down_{n-1}, mid]`` of the one at
    the size of decoder up block ``level`` (latent size * 2**level)."""
    if level == 0:
        return num_levels + 1  # mid block, at latent size
    if level == num_levels - 1:
        return 0  # conv_in, at full size
    return num_levels - 1 - level  # down block n - 2 - level (it halves the size), stage + 1


@dataclass
class LuminanceFeatures:
    """latent_residual: ``(N, latent_channels, h, w)``, added to the noisy latent.
    features: ``(N, C, h, w)`` encoder output ``y_lum`` (CMPF's visual prompt).
    skips: per VAE decoder up block, ``(N, C_i, h * 2**i, w * 2**i)``, or ``None`` when not asked for."""

    latent_residual: torch.Tensor
    features: torch.Tensor
    skips: Optional[list[torch.Tensor]] = None


class LuminanceEncoder(ModelMixin, ConfigMixin):
    config_name = "config.json"
    _supports_gradient_checkpointing = True  # checkpoints the encoder's blocks, as diffusers' Encoder does
    checkpoint_chunk_frames: Optional[int] = None  # frames per chunk under gradient checkpointing; None: all

    @register_to_config
    def __init__(
        self,
        in_channels: int = 1,
        latent_channels: int = 4,
        block_out_channels: Sequence[int] = (128, 256, 512, 512),
        down_block_types: Sequence[str] = ("DownEncoderBlock2D",) * 4,
        layers_per_block: int = 2,
        norm_num_groups: int = 32,
        act_fn: str = "silu",
        double_z: bool = True,
    ):
        super().__init__()
        self.encoder = Encoder(
            in_channels=in_channels, out_channels=latent_channels, down_block_types=tuple(down_block_types),
            block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
            norm_num_groups=norm_num_groups, act_fn=act_fn, double_z=double_z)
        feature_channels = 2 * latent_channels if double_z else latent_channels
        self.latent_proj = nn.Conv2d(feature_channels, latent_channels, kernel_size=3, padding=1)
        # Decoder up block i takes (reversed widths)[max(i - 1, 0)] channels at latent size * 2**i.
        widths = list(block_out_channels)
        stage_widths = [widths[0], *widths, widths[-1]]  # conv_in, down blocks, mid block
        self.skip_projs = nn.ModuleList(
            nn.Conv2d(stage_widths[_source_index(level, len(widths))], widths[::-1][max(level - 1, 0)], 1)
            for level in range(len(widths)))
        for layer in [self.latent_proj, *self.skip_projs]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    @classmethod
    def from_vae(cls, vae: AutoencoderKL) -> "LuminanceEncoder":
        """A fresh encoder with the VAE's structure (the paper initialises it from L-CAD; no
        public weights are available here, so it starts from scratch)."""
        config = vae.config
        return cls(latent_channels=config.latent_channels, block_out_channels=tuple(config.block_out_channels),
                   down_block_types=tuple(config.down_block_types), layers_per_block=config.layers_per_block,
                   norm_num_groups=config.norm_num_groups, act_fn=config.act_fn)

    def forward(self, luminance: torch.Tensor, return_skips: bool = True) -> LuminanceFeatures:
        """``luminance`` ``(N, 1, H, W)`` in ``[-1, 1]``."""
        if luminance.dim() != 4 or luminance.shape[1] != self.config.in_channels:
            raise ValueError(f"luminance: expected (N, {self.config.in_channels}, H, W) in [-1, 1], "
                             f"got {tuple(luminance.shape)}")
        checkpointing = torch.is_grad_enabled() and self.encoder.gradient_checkpointing
        # Under checkpointing, frames go through in chunks (lc4.train: luminance_chunk_frames): a
        # block's recomputation in the backward then holds one chunk's activations. Frames are
        # independent (convs, group norms per sample), so outputs and gradients are the same.
        chunk = self.checkpoint_chunk_frames if checkpointing and self.checkpoint_chunk_frames else len(luminance)
        parts = [self._encode(part, checkpointing) for part in luminance.split(chunk)]
        features = parts[0][0] if len(parts) == 1 else torch.cat([p[0] for p in parts])
        skips = None
        if return_skips:
            stages = parts[0][1] if len(parts) == 1 else [torch.cat(s) for s in zip(*(p[1] for p in parts))]
            skips = [proj(stages[_source_index(level, len(self.skip_projs))]) for level, proj in enumerate(self.skip_projs)]
        return LuminanceFeatures(self.latent_proj(features), features, skips)

    def _encode(self, luminance: torch.Tensor, checkpointing: bool):
        encoder = self.encoder
        sample = encoder.conv_in(luminance.to(self.dtype))
        stages = [sample]
        run = encoder._gradient_checkpointing_func if checkpointing else (lambda block, x: block(x))
        for down_block in encoder.down_blocks:
            sample = run(down_block, sample)
            stages.append(sample)
        sample = run(encoder.mid_block, sample)
        stages.append(sample)
        return encoder.conv_out(encoder.conv_act(encoder.conv_norm_out(sample))), stages


def decode_latents(vae: AutoencoderKL, latents: torch.Tensor, skips: Optional[Sequence[torch.Tensor]] = None) -> torch.Tensor:
    """``vae.decode`` of normalised latents (:func:`lc4.latents.unscale_latents`) with the
    luminance skips added to the decoder's up-block inputs; returns images in ``[-1, 1]``.
    ``skips=None`` is the plain VAE decode."""
    hook = getattr(vae, "_hf_hook", None)
    if hook is not None and hasattr(hook, "pre_forward"):
        # Under model CPU offload the VAE moves to the GPU when its forward or decode is called;
        # its blocks are called here one by one, so the move is asked for as vae.decode asks for it.
        hook.pre_forward(vae)
    z = unscale_latents(vae, latents)
    if vae.post_quant_conv is not None:
        z = vae.post_quant_conv(z)
    decoder = vae.decoder
    sample = decoder.mid_block(decoder.conv_in(z), None)
    if skips is not None and len(skips) != len(decoder.up_blocks):
        raise ValueError(f"skips: expected {len(decoder.up_blocks)} feature maps, one per decoder up block, "
                         f"got {len(skips)}")
    for level, up_block in enumerate(decoder.up_blocks):
        if skips is not None:
            if skips[level].shape != sample.shape:
                raise ValueError(f"skips[{level}]: expected shape {tuple(sample.shape)}, got {tuple(skips[level].shape)}")
            sample = sample + skips[level].to(sample.dtype)
        sample = up_block(sample, None)
    sample = decoder.conv_act(decoder.conv_norm_out(sample))
    return decoder.conv_out(sample)
