"""Helpers shared by the model tests (a unique module name: other test folders have their own)."""
from __future__ import annotations

import contextlib

import torch

import lc4_kernels


def randomize_(module: torch.nn.Module, std: float = 0.2, seed: int = 0) -> torch.nn.Module:
    """Gives every zero-initialised output layer (TDA's W_h and last offset conv, CMPF's W_e,
    the luminance projections) random weights, as training would, so they have an effect."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if any(key in name for key in ("to_out", "offset_out", "proj_out", "latent_proj", "skip_projs")):
                param.copy_(std * torch.randn(param.shape, generator=generator))
    return module


@contextlib.contextmanager
def recorded_tda_calls():
    """Records the (q, k, points) shapes, q's dtype and the backend asked for of every
    ``lc4_kernels.tda_attention`` call."""
    calls = []
    original = lc4_kernels.tda_attention

    def recording(q, k, v, points, scale=None, *, backend=None):
        calls.append({"q": tuple(q.shape), "k": tuple(k.shape), "points": tuple(points.shape), "backend": backend,
                      "dtype": q.dtype})
        return original(q, k, v, points, scale, backend=backend)

    lc4_kernels.tda_attention = recording
    try:
        yield calls
    finally:
        lc4_kernels.tda_attention = original
