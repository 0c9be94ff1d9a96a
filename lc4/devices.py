"""The ``--device`` check shared by the commands."""
from __future__ import annotations

import torch


def check_device(device: str, argument: str = "--device") -> None:
    """A ValueError naming ``argument`` when torch cannot use ``device`` here (an unknown name,
    or e.g. ``cuda`` on a CPU-only build), before any model is loaded."""
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as error:
        raise ValueError(f"{argument}: cannot use {device!r} here ({error})") from None
