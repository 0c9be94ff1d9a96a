"""The optimizer of a training run: torch's AdamW (fused on a GPU) or bitsandbytes' AdamW8bit."""
from __future__ import annotations

import torch

from .config import OptimizerConfig


def build_optimizer(params, optim: OptimizerConfig, device: torch.device) -> torch.optim.Optimizer:
    """``optimizer.name: adamw``: ``torch.optim.AdamW``, fused on a GPU (the foreach version makes
    a temporary as large as the AdamW states). ``adamw8bit``: ``bitsandbytes.optim.AdamW8bit``
    (blockwise-quantised uint8 moments: 2 bytes of state per parameter instead of 8), an
    optional dependency."""
    kwargs = dict(lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay, eps=optim.eps)
    if optim.name == "adamw8bit":
        try:
            import bitsandbytes
        except ImportError as error:
            raise ValueError("optimizer.name: adamw8bit needs bitsandbytes, which is not installed "
                             f"(pip install bitsandbytes; {error}); or use optimizer.name: adamw") from None
        return bitsandbytes.optim.AdamW8bit(params, **kwargs)
    if optim.name != "adamw":
        raise ValueError(f"optimizer.name: expected adamw or adamw8bit, got {optim.name!r}")
    return torch.optim.AdamW(params, fused=device.type == "cuda", **kwargs)
