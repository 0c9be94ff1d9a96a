"""The frozen encoders' outputs per training frame, computed once and kept (``data.cache_encodings``).

In stage 1 as the toy model trains it (lc4.toy) the VAE and the luminance encoder are frozen, and
on small frames they cost as much as a fifth of a step: every frame's VAE posterior and
luminance features are the same each time the frame comes back, so they are computed the first
time and looked up after, as diffusers' training scripts cache latents. The VAE's *posterior* is
kept, not a latent, so each step still draws its own latent from it.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..luminance import LuminanceEncoder, LuminanceFeatures


class FrozenEncodingCache:
    """The VAE posterior's parameters and the luminance encoder's latent residual (and, when
    ``with_features``, its features for CMPF) of each frame, by the frame's key: the
    ``(index, source frame, crop top, crop left)`` rows of the batch's ``frame_keys``
    (:class:`lc4.train.data.TextVideoDataset`), which fix its pixels.

    A frame is encoded alone when it first comes: the encoders' float results vary (by ~1e-6)
    with the other frames of a batch, and encoded alone a frame's entry does not depend on which
    batch first brought it, so a resumed run sees the values an uninterrupted one does. Entries
    live on the CPU; :meth:`lookup` returns them on the batch's device.
    """

    def __init__(self, vae: nn.Module, luminance_encoder: LuminanceEncoder, with_features: bool = False):
        self.vae, self.luminance_encoder, self.with_features = vae, luminance_encoder, with_features
        self._entries: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]] = {}
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    @torch.no_grad()
    def lookup(self, pixel_values: torch.Tensor, luminance: torch.Tensor,
               frame_keys: torch.Tensor) -> tuple[torch.Tensor, LuminanceFeatures]:
        """``pixel_values`` ``(N, 3, H, W)`` and ``luminance`` ``(N, 1, H, W)`` in ``[-1, 1]``, their
        ``frame_keys`` ``(N, 4)`` -> the VAE posterior's parameters ``(N, 2 * latent_channels, h, w)``
        (mean and log-variance, as ``latent_dist.parameters``) and the luminance encoder's output
        without skips."""
        if frame_keys.dim() != 2 or len(frame_keys) != len(pixel_values) or frame_keys.is_floating_point():
            raise ValueError(f"frame_keys: expected ({len(pixel_values)}, K) integer keys, one row per frame, "
                             f"got {tuple(frame_keys.shape)} {frame_keys.dtype}")
        if (frame_keys[:, 0] < 0).any():
            raise ValueError("frame_keys: a negative item index; the samples did not come from "
                             "TextVideoDataset[(index, seed)]")
        entries = []
        for row, key in enumerate(map(tuple, frame_keys.tolist())):
            entry = self._entries.get(key)
            if entry is None:
                entry = self._encode(pixel_values[row:row + 1], luminance[row:row + 1])
                self._entries[key] = entry
                self.misses += 1
            else:
                self.hits += 1
            entries.append(entry)
        device = pixel_values.device
        posterior, residual = (torch.stack([e[i] for e in entries]).to(device) for i in (0, 1))
        features = torch.stack([e[2] for e in entries]).to(device) if self.with_features else None
        return posterior, LuminanceFeatures(residual, features)

    def _encode(self, pixels: torch.Tensor, luminance: torch.Tensor):
        posterior = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist.parameters[0].cpu()
        lum = self.luminance_encoder(luminance, return_skips=False)
        features = lum.features[0].cpu() if self.with_features else None
        return posterior, lum.latent_residual[0].cpu(), features
