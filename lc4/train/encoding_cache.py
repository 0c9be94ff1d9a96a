"""The frozen encoders' outputs per training frame, computed once and kept (``data.cache_encodings``).

In stage 1 as the toy model trains it (lc4.toy) the VAE and the luminance encoder are frozen, and
on small frames they cost as much as a fifth of a step: every frame's VAE posterior and
luminance features are the same each time the frame comes back, so they are computed the first
time and looked up after, as diffusers' training scripts cache latents. The VAE's *posterior* is
kept, not a latent, so each step still draws its own latent from it.

With ``data.encoding_cache_file`` the entries outlive the run: read at its start, written at its
end, so that the next stage of the same model (same frozen encoders, same data) starts with every
frame its predecessor saw. A file written for other encoder weights, data, resolution or device
type is not used (its fingerprint differs).
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import nn

from .. import video as video_io
from ..luminance import LuminanceEncoder, LuminanceFeatures

logger = logging.getLogger(__name__)
FILE_FORMAT = "1"


def cache_fingerprint(vae: nn.Module, luminance_encoder: nn.Module, paths: Sequence[str | os.PathLike],
                      resolution: int) -> str:
    """What the cached values depend on besides the frame key: both encoders' weights and
    configs, their dtype and device type, the data's items (each video file, or each frame of a
    frame folder, with its size and modification time, so regenerated data does not match) and
    the resolution."""
    digest = hashlib.sha256(f"lc4 encoding cache {FILE_FORMAT} resolution {resolution}".encode())
    for name, module in (("vae", vae), ("luminance_encoder", luminance_encoder)):
        parameter = next(module.parameters())
        config = {key: value for key, value in dict(getattr(module, "config", {})).items()
                  if not key.startswith("_")}  # not "_name_or_path": the stages' copies live in other folders
        digest.update(f"{name} {parameter.dtype} {parameter.device.type} {sorted(config.items())}".encode())
        for key, tensor in sorted(module.state_dict().items()):
            digest.update(f"{key} {tuple(tensor.shape)} {tensor.dtype}".encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    for path in paths:
        # A frame folder's own stat does not change when its frames are rewritten in place.
        files = video_io.list_frame_files(path) if os.path.isdir(path) else [path]
        for file in files:
            stat = os.stat(file)
            digest.update(f"{os.fspath(file)} {stat.st_size} {stat.st_mtime_ns}".encode())
    return digest.hexdigest()


class FrozenEncodingCache:
    """The VAE posterior's parameters and the luminance encoder's latent residual and features
    (returned by :meth:`lookup` when ``with_features``: CMPF's input) of each frame, by its key: the
    ``(index, source frame, crop top, crop left)`` rows of the batch's ``frame_keys``
    (:class:`lc4.train.data.TextVideoDataset`), which fix its pixels.

    A frame is encoded alone when it first comes: the encoders' float results vary (by ~1e-6)
    with the other frames of a batch, and encoded alone a frame's entry does not depend on which
    batch first brought it, so a resumed run, or a run starting from a file (:meth:`load`), sees
    the values an uninterrupted one does. Entries live on the CPU, features included whether or
    not this run asks for them (a later stage with CMPF may); :meth:`lookup` returns them on the
    batch's device.
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
        return posterior, lum.latent_residual[0].cpu(), lum.features[0].cpu()

    def save(self, path: str | os.PathLike, fingerprint: str) -> None:
        """Writes every entry to ``path`` (safetensors; replaced atomically) under ``fingerprint``
        (:func:`cache_fingerprint`). Nothing is written while the cache is empty."""
        from safetensors.torch import save_file

        if not self._entries:
            return
        keys = list(self._entries)
        tensors = {"frame_keys": torch.tensor(keys, dtype=torch.int64)}
        for position, name in enumerate(("posterior", "latent_residual", "features")):
            tensors[name] = torch.stack([self._entries[key][position] for key in keys])
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        save_file(tensors, str(partial), metadata={"fingerprint": fingerprint, "format": FILE_FORMAT})
        os.replace(partial, path)

    def load(self, path: str | os.PathLike, fingerprint: str) -> int:
        """Adds the entries of a file :meth:`save` wrote under the same ``fingerprint``; returns
        how many. A missing file, or one written for other encoders or data, adds none (logged)."""
        from safetensors import safe_open

        path = Path(path)
        if not path.exists():
            logger.info("encoding cache: %s does not exist yet; starting empty", path)
            return 0
        with safe_open(str(path), framework="pt") as file:
            metadata = file.metadata() or {}
            if metadata.get("format") != FILE_FORMAT or metadata.get("fingerprint") != fingerprint:
                logger.warning("encoding cache: %s was written for other encoder weights, data, resolution "
                               "or device; not used (it is replaced at the end of this run)", path)
                return 0
            keys, posterior, residual, features = (file.get_tensor(name) for name in
                                                   ("frame_keys", "posterior", "latent_residual", "features"))
        for key, entry in zip(map(tuple, keys.tolist()), zip(posterior, residual, features)):
            self._entries.setdefault(key, entry)
        logger.info("encoding cache: %d frames read from %s", len(keys), path)
        return len(keys)
