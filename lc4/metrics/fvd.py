"""Frechet Video Distance (Unterthiner et al. 2019) on I3D logits.

Each video is cut into non-overlapping clips of ``clip_length`` frames (16 by default; a
shorter tail is dropped), each clip is resized to 224x224 and scaled to [-1, 1], and I3D
(Kinetics-400) maps it to 400 logits. FVD is the Frechet distance between the Gaussians
fitted to the clip features of the predicted and of the ground-truth set. It describes a set
of videos, not one video. Weights: ``--i3d-weights`` or ``$LC4_I3D_WEIGHTS``, naming the
state dict of the PyTorch I3D port (``rgb_imagenet.pt``, Kinetics-400).
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ._inputs import as_frames, as_videos
from .i3d import InceptionI3d
from .weights import load_into, load_state_dict, resolve_weights_path

ENV_VAR = "LC4_I3D_WEIGHTS"
_WHAT = "an I3D Kinetics-400 state dict such as rgb_imagenet.pt"
DEFAULT_CLIP_LENGTH = 16
DEFAULT_INPUT_SIZE = 224


@functools.lru_cache(maxsize=2)
def _load_cached(path: Path) -> InceptionI3d:
    model = InceptionI3d()
    load_into(model, load_state_dict(path), path)
    return model.requires_grad_(False).eval()


def load_i3d(weights: str | os.PathLike | None = None) -> InceptionI3d:
    """Loads I3D from ``weights`` (or ``$LC4_I3D_WEIGHTS``); cached per path.

    Raises ``MissingWeightsError`` naming the missing file, ``ValueError`` for weights that
    do not fit.
    """
    path = resolve_weights_path(weights, ENV_VAR, _WHAT).resolve()
    if not path.is_file():
        raise ValueError(f"{path}: expected a file ({_WHAT}), got a folder")
    return _load_cached(path)


class ClipFeatures:
    """Turns a stream of frames into I3D features of consecutive, non-overlapping clips.

    ``add(frames)`` takes ``(n, 3, H, W)`` RGB in 0-255 in any chunk sizes; ``end_video()``
    drops the unfinished clip and returns that video's features ``(num_clips, D)``.
    """

    def __init__(self, model: InceptionI3d, clip_length: int = DEFAULT_CLIP_LENGTH,
                 input_size: int = DEFAULT_INPUT_SIZE):
        if clip_length <= 0 or input_size <= 0:
            raise ValueError(f"clip_length, input_size: expected positive ints, got {clip_length}, {input_size}")
        self.model, self.clip_length, self.input_size = model, clip_length, input_size
        self._pending: list[torch.Tensor] = []  # resized frames of the clip being filled
        self._features: list[torch.Tensor] = []

    def add(self, frames: torch.Tensor) -> None:
        frames = as_frames(frames, "frames")
        resized = F.interpolate(frames, size=(self.input_size,) * 2, mode="bilinear", align_corners=False)
        for frame in resized:
            self._pending.append(frame)
            if len(self._pending) == self.clip_length:
                self._features.append(self._embed(torch.stack(self._pending)))
                self._pending = []

    def _embed(self, clip: torch.Tensor) -> torch.Tensor:
        device = next(self.model.parameters()).device
        clip = (clip.permute(1, 0, 2, 3).unsqueeze(0) / 127.5 - 1.0).clamp(-1, 1)  # (1, 3, T, H, W)
        with torch.no_grad():
            return self.model(clip.to(device)).squeeze(0).to("cpu", torch.float64)

    def end_video(self) -> torch.Tensor:
        features = torch.stack(self._features) if self._features else torch.empty(0, 0, dtype=torch.float64)
        self._pending, self._features = [], []
        return features


def i3d_features(videos: torch.Tensor, model: InceptionI3d, clip_length: int = DEFAULT_CLIP_LENGTH,
                 input_size: int = DEFAULT_INPUT_SIZE) -> torch.Tensor:
    """Clip features of a ``(B, T, 3, H, W)`` batch of videos in 0-255: ``(B * (T // clip_length), D)``."""
    videos = as_videos(videos, "videos", dtype=None)
    if videos.shape[1] < clip_length:
        raise ValueError(f"videos: expected at least clip_length={clip_length} frames, got shape {tuple(videos.shape)}")
    extractor = ClipFeatures(model, clip_length, input_size)
    per_video = []
    for video in videos:
        extractor.add(video)
        per_video.append(extractor.end_video())
    return torch.cat(per_video)


def frechet_distance(features_a: torch.Tensor | np.ndarray, features_b: torch.Tensor | np.ndarray) -> float:
    """``|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` of Gaussians fitted to ``(N, D)``
    feature sets (sample covariance, N - 1). Needs at least two rows in each set."""
    a = np.asarray(features_a, dtype=np.float64)
    b = np.asarray(features_b, dtype=np.float64)
    for name, f in (("features_a", a), ("features_b", b)):
        if f.ndim != 2 or f.shape[0] < 2:
            raise ValueError(f"{name}: expected (N, D) features with N >= 2, got shape {f.shape}")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"features_b: expected {a.shape[1]} columns like features_a, got shape {b.shape}")
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    distance = ((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2.0 * _trace_sqrt_product(cov_a, cov_b)
    return float(max(distance, 0.0))


def _trace_sqrt_product(cov_a: np.ndarray, cov_b: np.ndarray) -> float:
    """``Tr((A B)^(1/2))`` for covariance matrices A and B.

    A B has the eigenvalues of the symmetric ``A^(1/2) B A^(1/2)``, so two symmetric
    eigendecompositions replace a general matrix square root: exact for the singular
    covariances of fewer clips than feature dimensions, and much faster.
    """
    values, vectors = np.linalg.eigh(cov_a)
    sqrt_a = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    product_eigenvalues = np.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a)
    return float(np.sqrt(np.clip(product_eigenvalues, 0, None)).sum())


def fvd(
    pred_videos: torch.Tensor,
    target_videos: torch.Tensor,
    model: InceptionI3d | None = None,
    weights: str | os.PathLike | None = None,
    clip_length: int = DEFAULT_CLIP_LENGTH,
    input_size: int = DEFAULT_INPUT_SIZE,
) -> float:
    """FVD between two ``(B, T, 3, H, W)`` batches of RGB videos in 0-255 (B may differ).

    Needs at least two clips in each set. ``model`` defaults to :func:`load_i3d` of ``weights``.
    """
    model = model if model is not None else load_i3d(weights)
    pred_features = i3d_features(pred_videos, model, clip_length, input_size)
    target_features = i3d_features(target_videos, model, clip_length, input_size)
    return frechet_distance(pred_features, target_features)
