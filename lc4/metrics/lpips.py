"""LPIPS v0.1 with the AlexNet trunk (Zhang et al. 2018), written in plain torch.

Weights come from local files, named by ``--lpips-weights`` or ``$LC4_LPIPS_WEIGHTS``:

- a folder holding torchvision's AlexNet checkpoint ``alexnet-owt-7be5be79.pth`` and the LPIPS
  linear layers ``alex.pth`` (shipped in the ``lpips`` package as ``lpips/weights/v0.1/alex.pth``);
- or one file saved from ``LPIPS().state_dict()``.
"""
from __future__ import annotations

import functools
import os
import re
from pathlib import Path

import torch
from torch import nn

from ._inputs import as_frames, check_same_shape
from .weights import load_into, load_state_dict, require_file, resolve_weights_path

ENV_VAR = "LC4_LPIPS_WEIGHTS"
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
LINEAR_FILE = "alex.pth"
_WHAT = f"a folder with {ALEXNET_FILE} and {LINEAR_FILE}, or an LPIPS state dict file"

_CHANNELS = (64, 192, 384, 256, 256)
_TAPS = (1, 4, 7, 9, 11)  # indices in AlexNet.features of the ReLUs whose outputs are compared
# LPIPS v0.1 input scaling, applied to images in [-1, 1].
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


class AlexNetFeatures(nn.Module):
    """torchvision's ``alexnet().features`` up to relu5, with the same indices so its
    checkpoint loads unchanged; returns the five ReLU outputs."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in _TAPS:
                outputs.append(x)
        return outputs


class LPIPS(nn.Module):
    """Distance between images in [-1, 1], ``(N, 3, H, W)`` each; returns ``(N,)``."""

    def __init__(self):
        super().__init__()
        self.alexnet = AlexNetFeatures()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in _CHANNELS)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self.eval()

    @staticmethod
    def _unit_normalize(features: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
        return features / (features.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        features_x = self.alexnet((x - self.shift) / self.scale)
        features_y = self.alexnet((y - self.shift) / self.scale)
        distance = 0.0
        for lin, fx, fy in zip(self.lins, features_x, features_y):
            squared = (self._unit_normalize(fx) - self._unit_normalize(fy)) ** 2
            distance = distance + lin(squared).mean(dim=(1, 2, 3))
        return distance


def _state_from_published_files(folder: Path) -> dict[str, torch.Tensor]:
    backbone = load_state_dict(require_file(folder / ALEXNET_FILE, "torchvision's AlexNet checkpoint"))
    linear = load_state_dict(require_file(folder / LINEAR_FILE, "the LPIPS v0.1 AlexNet linear layers"))
    state = {f"alexnet.{k}": v for k, v in backbone.items() if k.startswith("features.")}
    for key, value in linear.items():
        match = re.fullmatch(r"lin(\d)\.model\.\d\.weight", key)
        if match:
            state[f"lins.{match.group(1)}.weight"] = value
    return state


@functools.lru_cache(maxsize=2)
def _load_cached(path: Path) -> LPIPS:
    model = LPIPS()
    if path.is_dir():
        state, source = _state_from_published_files(path), path
    else:
        state, source = load_state_dict(path), path
    load_into(model, state, source)
    return model.requires_grad_(False).eval()


# AlexNet's strided convolution and three max-pools leave nothing of a smaller frame.
MIN_SIZE = 31


def load_lpips(weights: str | os.PathLike | None = None) -> LPIPS:
    """Loads LPIPS from ``weights`` (or ``$LC4_LPIPS_WEIGHTS``); cached per path.

    Raises ``MissingWeightsError`` naming the missing file, ``ValueError`` for weights that
    do not fit.
    """
    path = resolve_weights_path(weights, ENV_VAR, _WHAT).resolve()
    return _load_cached(path)


def lpips(
    pred: torch.Tensor,
    target: torch.Tensor,
    model: LPIPS | None = None,
    weights: str | os.PathLike | None = None,
) -> torch.Tensor:
    """LPIPS (AlexNet, v0.1) of each frame pair; ``(N, 3, H, W)`` RGB in 0-255; returns ``(N,)``.

    ``model`` defaults to :func:`load_lpips` of ``weights``. Runs on the model's device.
    """
    pred = as_frames(pred, "pred")
    target = as_frames(target, "target")
    check_same_shape(pred, target)
    if min(pred.shape[-2:]) < MIN_SIZE:
        raise ValueError(f"pred, target: LPIPS's AlexNet needs frames of at least {MIN_SIZE}x{MIN_SIZE} pixels, "
                         f"got {tuple(pred.shape[-2:])}")
    model = model if model is not None else load_lpips(weights)
    device = next(model.parameters()).device
    with torch.no_grad():
        distance = model(pred.to(device) / 127.5 - 1.0, target.to(device) / 127.5 - 1.0)
    return distance.to(pred.device, torch.float64)
